"""Per-row sampling settings and the choice of one row's next token.

Every row of a batch carries its own settings and its own random generator, so requests with
different temperatures share a forward pass and a seeded request samples the same tokens
whatever else is in the batch.
"""

from __future__ import annotations

import random
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

    def pick(self, logits: torch.Tensor, generated: list[int]) -> int:
        s = self.sampling
        logits = logits.float().cpu()
        if s.repetition_penalty != 1.0 and generated:
            ids = torch.tensor(sorted(set(generated)))
            seen = logits[ids]
            logits[ids] = torch.where(seen > 0, seen / s.repetition_penalty, seen * s.repetition_penalty)
        if not generated and self.banned_first:
            logits[list(self.banned_first)] = -torch.inf
        if not generated and self.allowed_first:
            allowed = torch.full_like(logits, -torch.inf)
            ids = list(self.allowed_first)
            allowed[ids] = logits[ids]
            logits = allowed
        if s.temperature == 0:
            return int(torch.argmax(logits))
        logits = logits / s.temperature
        if s.top_k and s.top_k < logits.numel():
            kth = torch.topk(logits, s.top_k).values[-1]
            logits[logits < kth] = -torch.inf
        probs = torch.softmax(logits, dim=-1)
        if s.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, 0) - sorted_probs < s.top_p  # the smallest set reaching p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        return int(torch.multinomial(probs, 1, generator=self.generator))
