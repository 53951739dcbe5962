"""A batch of rows decoding together, and the join and filter that change who is in it.

A `Batch` owns everything that has one entry a row: the rows themselves (a job's candidate and
its text so far), the KV cache, the attention mask (1 for real cache entries; each row's cache
is left-padded to the batch's width), each row's next position and last token, the adapter each
row goes through, and the rows' next-token chooser. `concatenate` joins batches (the running
one and freshly prefilled ones) with one copy of the cache whatever their number; `filter`
keeps some rows and drops the padding columns no row needs any more. This is TGI's
`CausalLMBatch` with its `concatenate` and `filter`, on transformers' cache objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from transformers import DynamicCache

from .chooser import NextTokenChooser
from .decoder import RowDecoder
from .kvcache import RoomyLayer

if TYPE_CHECKING:
    from .engine import Job


@dataclass(eq=False)
class Row:
    """One candidate of a job: the text it has made so far, and whether it is done."""

    job: Job
    index: int
    decoder: RowDecoder
    done: bool = False


class Batch:
    """Rows that share forward passes, with their cache and their per-row tensors."""

    def __init__(self, rows: list[Row], cache: DynamicCache, mask: torch.Tensor, positions: torch.Tensor,
                 tokens: torch.Tensor, adapters: list[str], chooser: NextTokenChooser):
        self.rows, self.cache, self.chooser, self.adapters = rows, cache, chooser, adapters
        self.mask = mask  # [rows, width]: 1 for real cache entries
        self.positions = positions  # [rows]: each row's next position (its real tokens in the cache)
        self.tokens = tokens  # [rows]: each row's last token, the next step's input

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def concatenate(cls, batches: Sequence[Batch]) -> Batch:
        """The rows of `batches` in order, each cache left-padded to the widest: one copy of the cache."""
        if len(batches) == 1:
            return batches[0]
        width = max(b.mask.shape[1] for b in batches)
        for layers in zip(*(b.cache.layers for b in batches), strict=True):
            layers[0].stack(layers, width)
        return cls([r for b in batches for r in b.rows], batches[0].cache,
                   torch.cat([_left_pad(b.mask, width) for b in batches]),
                   torch.cat([b.positions for b in batches]), torch.cat([b.tokens for b in batches]),
                   [a for b in batches for a in b.adapters], NextTokenChooser.concatenate([b.chooser for b in batches]))

    def filter(self, keep: list[int]) -> None:
        """Keep only the rows `keep` (in that order), and only the cache columns one of them uses."""
        index = torch.tensor(keep, device=self.mask.device)
        mask = self.mask[index]
        trim = int((mask.cumsum(1) == 0).sum(1).min())  # leading columns that are padding in every row
        for layer in self.cache.layers:
            cast(RoomyLayer, layer).select(index, trim)
        self.rows = [self.rows[k] for k in keep]
        self.adapters = [self.adapters[k] for k in keep]
        self.mask, self.positions, self.tokens = mask[:, trim:], self.positions[index], self.tokens[index]
        self.chooser = self.chooser.filter(keep)

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input ids, attention mask and positions of the next decoding step ([rows, 1], [rows, width + 1], [rows, 1]);
        the mask is the batch's from now on."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], 1)
        return self.tokens[:, None], self.mask, self.positions[:, None]

    def stepped(self) -> None:
        """A decoding step went through: each row's cache holds one more token."""
        self.positions += 1


def _left_pad(m: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - m.shape[1]
    return m if missing == 0 else torch.cat([m.new_zeros((m.shape[0], missing)), m], 1)
