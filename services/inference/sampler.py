"""Per-row sampling settings and the choice of one row's next token.

Every row of a batch carries its own settings and its own random generator, so requests with
different temperatures share a forward pass and a seeded request samples the same tokens
whatever else is in the batch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .protocol import Sampling


@dataclass
class RowSampler:
    """Picks one row's tokens: penalties, bans, temperature, top-k, top-p, its own generator."""

    sampling: Sampling
    index: int = 0
    banned_first: frozenset[int] = frozenset()
    allowed_first: frozenset[int] = frozenset()
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        seed = self.sampling.seed if self.sampling.seed is not None else random.getrandbits(62)
        self.generator = torch.Generator().manual_seed((seed * 1_000_003 + self.index) % (2**63 - 1))

    def adjust(self, logits: torch.Tensor, generated: list[int]) -> None:
        """This row's own changes to its logits, in place: repetition penalty, first-token bans."""
        s = self.sampling
        if s.repetition_penalty != 1.0 and generated:
            ids = torch.tensor(sorted(set(generated)), device=logits.device)
            seen = logits[ids]
            logits[ids] = torch.where(seen > 0, seen / s.repetition_penalty, seen * s.repetition_penalty)
        if not generated and self.banned_first:
            logits[list(self.banned_first)] = -torch.inf
        if not generated and self.allowed_first:
            ids = list(self.allowed_first)
            keep = logits[ids].clone()
            logits.fill_(-torch.inf)
            logits[ids] = keep

    def uniform(self) -> float:
        return float(torch.rand(1, generator=self.generator))


def pick(rows: Sequence[tuple[RowSampler, list[int]]], logits: torch.Tensor) -> list[int]:
    """The next token of every row, from one [rows, vocabulary] tensor, with tensor ops for the whole batch.

    Each row draws one uniform number from its own generator and inverts its CDF with it, so a
    seeded row samples the same tokens whichever rows share its batch. Nothing sorts the whole
    vocabulary (64 rows of a 49k vocabulary take ~0.2 s to sort on a CPU): rows without top-k or
    top-p invert the CDF in vocabulary order, the others look at their `CANDIDATES` most likely
    tokens, and only a row whose nucleus reaches past those is sorted whole.
    """
    logits = logits.float()
    for k, (sampler, generated) in enumerate(rows):
        sampler.adjust(logits[k], generated)
    device = logits.device
    temperature = torch.tensor([r.sampling.temperature for r, _ in rows], device=device)
    top_k = torch.tensor([r.sampling.top_k for r, _ in rows], device=device)
    top_p = torch.tensor([r.sampling.top_p for r, _ in rows], device=device)
    u = torch.tensor([r.uniform() for r, _ in rows], device=device)
    probs = torch.softmax(logits / temperature.clamp(min=1e-6)[:, None], dim=1)
    tokens = torch.zeros(len(rows), dtype=torch.long, device=device)
    greedy = _where(temperature == 0)
    if greedy is not None:
        tokens[greedy] = logits[greedy].argmax(1)
    plain = _where((temperature > 0) & (top_k == 0) & (top_p >= 1))
    if plain is not None:
        tokens[plain] = _invert(probs[plain], u[plain])
    narrowed = _where((temperature > 0) & ((top_k > 0) | (top_p < 1)))
    if narrowed is not None:
        probs, u, top_k, top_p = probs[narrowed], u[narrowed], top_k[narrowed], top_p[narrowed]
        width = probs.shape[1]
        if width <= 8 * CANDIDATES:  # a small vocabulary: sorting it whole costs no more
            vals, order = probs.sort(dim=1, descending=True)
        else:
            vals, order = probs.topk(min(width, max(CANDIDATES, int(top_k.max()))), dim=1)
        picked = order.gather(1, _invert(_nucleus(vals, top_k, top_p), u)[:, None]).squeeze(1)
        wide = _where((top_k == 0) & (vals.sum(1) < top_p))  # the nucleus reaches past the candidates
        if wide is not None:
            vals, order = probs[wide].sort(dim=1, descending=True)
            picked[wide] = order.gather(1, _invert(_nucleus(vals, top_k[wide], top_p[wide]), u[wide])[:, None]).squeeze(1)
        tokens[narrowed] = picked
    return tokens.tolist()


CANDIDATES = 256  # the most likely tokens a top-k/top-p row looks at first


def _where(mask: torch.Tensor) -> torch.Tensor | slice | None:
    """Index of the rows where `mask` holds: every row as a slice (no copies), none as None."""
    if bool(mask.all()):
        return slice(None)
    return mask.nonzero().squeeze(1) if bool(mask.any()) else None


def _nucleus(vals: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Sorted probabilities (each row's most likely first) with those outside top-k, then outside
    top-p of what top-k kept, set to 0: the smallest set whose mass reaches p."""
    width = vals.shape[1]
    vals = vals.masked_fill(torch.arange(width, device=vals.device)[None, :] >= torch.where(top_k > 0, top_k, width)[:, None], 0.0)
    kept = torch.where(top_k > 0, vals.sum(1), torch.ones_like(top_p))  # top-k renormalises; else the whole vocabulary's mass
    cdf = vals.cumsum(1)
    return vals.masked_fill(cdf - vals >= (top_p * kept)[:, None], 0.0)


def _invert(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The index at which each row's CDF passes u (in [0, 1)) times its total: never a zero-probability one."""
    cdf = probs.cumsum(1)
    at = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1)
    return torch.where(at < probs.shape[1], at, probs.argmax(1))  # u * total rounded up to the total
