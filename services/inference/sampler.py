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

from doppel.errors import InvalidArgument


@dataclass(frozen=True)
class Sampling:
    """How a request samples; `n` rows per request."""

    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 0.95
    repetition_penalty: float = 1.0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    n: int = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.temperature >= 0, "temperature must be >= 0"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (1 <= self.max_new_tokens <= 4096, "max_new_tokens must be in 1-4096"),
            (1 <= self.n <= 64, "n must be in 1-64"),
            (all(self.stop), "stop strings must not be empty"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise InvalidArgument("invalid sampling: " + "; ".join(problems))


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

    Each row draws one uniform number from its own generator and inverts its filtered CDF with it,
    so a seeded row samples the same tokens whichever rows share its batch.
    """
    logits = logits.float()
    for k, (sampler, generated) in enumerate(rows):
        sampler.adjust(logits[k], generated)
    device, width = logits.device, logits.shape[1]
    temperature = torch.tensor([r.sampling.temperature for r, _ in rows], device=device)
    top_k = torch.tensor([r.sampling.top_k or width for r, _ in rows], device=device)
    top_p = torch.tensor([r.sampling.top_p for r, _ in rows], device=device)
    greedy = temperature == 0
    ordered, order = torch.sort(logits / temperature.clamp(min=1e-6)[:, None], dim=1, descending=True)
    ordered = ordered.masked_fill(torch.arange(width, device=device)[None, :] >= top_k[:, None], -torch.inf)
    probs = torch.softmax(ordered, dim=1)
    cdf = probs.cumsum(1)
    probs = probs.masked_fill(cdf - probs >= top_p[:, None], 0.0)  # past the smallest set that reaches p
    cdf = probs.cumsum(1)
    u = torch.tensor([r.uniform() for r, _ in rows], device=device) * cdf[:, -1]
    at = torch.searchsorted(cdf, u[:, None]).clamp(max=width - 1)
    tokens = order.gather(1, at).squeeze(1)
    tokens = torch.where(greedy, logits.argmax(1), tokens)
    return tokens.tolist()
