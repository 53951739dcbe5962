"""The next-token chooser of a batch: every row's own sampling settings, as tensors.

Every row of a batch carries its own settings (temperature, top-k, top-p, repetition, presence
and frequency penalties) and its own random generator, so requests with different settings share
a forward pass and a seeded request samples the same tokens whatever else is in the batch. The
settings are tensors with one entry a row, built once when rows are prefilled and joined or
filtered with the rows (TGI's `HeterogeneousNextTokenChooser`), so a step builds nothing from
Python lists; how often each row has generated each token is one [rows, vocabulary] tensor of
counts, kept only while a row has a penalty, which all three penalties read: the repetition
penalty where a count is above 0, the presence and frequency penalties as OpenAI's (subtracted
once for a token generated at all, and once for each time it was).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from .protocol import Sampling

CANDIDATES = 256  # the most likely tokens a top-k/top-p row looks at first
DRAWS = 32  # uniform numbers a row's generator makes at a time


class NextTokenChooser:
    """Picks the next token of every row from one [rows, vocabulary] tensor of logits."""

    def __init__(self, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, penalty: torch.Tensor,
                 presence: torch.Tensor, frequency: torch.Tensor, generators: list[torch.Generator], draws: torch.Tensor,
                 drawn: torch.Tensor, seen: torch.Tensor | None, penalised: bool):
        self.temperature, self.top_k, self.top_p, self.penalty = temperature, top_k, top_p, penalty
        self.presence, self.frequency = presence, frequency
        self.generators = generators  # each row's own, on the CPU
        self.draws, self.drawn = draws, drawn  # [rows, DRAWS] uniforms made ahead, [rows] used of them (CPU)
        self.seen = seen  # [rows, vocabulary] float: how often a row generated each token, while any row has a penalty
        self.penalised = penalised

    @classmethod
    def of(cls, rows: Sequence[tuple[Sampling, int]], device: torch.device | str = "cpu") -> NextTokenChooser:
        """Rows with these settings; a row's generator is seeded by its request's seed and its index."""
        generators = []
        for sampling, index in rows:
            seed = sampling.seed if sampling.seed is not None else random.getrandbits(62)
            generators.append(torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63 - 1)))
        draws = torch.stack([torch.rand(DRAWS, generator=g) for g in generators]) if rows else torch.zeros(0, DRAWS)
        penalised = any(s.repetition_penalty != 1.0 or s.presence_penalty or s.frequency_penalty for s, _ in rows)
        return cls(
            torch.tensor([s.temperature for s, _ in rows], dtype=torch.float, device=device),
            torch.tensor([s.top_k for s, _ in rows], dtype=torch.long, device=device),
            torch.tensor([s.top_p for s, _ in rows], dtype=torch.float, device=device),
            torch.tensor([s.repetition_penalty for s, _ in rows], dtype=torch.float, device=device),
            torch.tensor([s.presence_penalty for s, _ in rows], dtype=torch.float, device=device),
            torch.tensor([s.frequency_penalty for s, _ in rows], dtype=torch.float, device=device),
            generators, draws, torch.zeros(len(rows), dtype=torch.long), None, penalised,
        )

    def __len__(self) -> int:
        return len(self.generators)

    @classmethod
    def concatenate(cls, choosers: Sequence[NextTokenChooser]) -> NextTokenChooser:
        """The rows of `choosers`, in order."""
        if len(choosers) == 1:
            return choosers[0]
        seen = None
        widths = [c.seen.shape[1] for c in choosers if c.seen is not None]
        if widths:
            seen = torch.cat([c.seen if c.seen is not None else c.penalty.new_zeros((len(c), widths[0])) for c in choosers])
        return cls(torch.cat([c.temperature for c in choosers]), torch.cat([c.top_k for c in choosers]),
                   torch.cat([c.top_p for c in choosers]), torch.cat([c.penalty for c in choosers]),
                   torch.cat([c.presence for c in choosers]), torch.cat([c.frequency for c in choosers]),
                   [g for c in choosers for g in c.generators], torch.cat([c.draws for c in choosers]),
                   torch.cat([c.drawn for c in choosers]), seen, any(c.penalised for c in choosers))

    def filter(self, keep: list[int]) -> NextTokenChooser:
        """Only the rows `keep`, in that order."""
        index = torch.tensor(keep, device=self.temperature.device)
        cpu = torch.tensor(keep)
        penalty, presence, frequency = self.penalty[index], self.presence[index], self.frequency[index]
        penalised = self.penalised and bool(((penalty != 1) | (presence != 0) | (frequency != 0)).any())
        seen = self.seen[index] if penalised and self.seen is not None else None
        return NextTokenChooser(self.temperature[index], self.top_k[index], self.top_p[index], penalty, presence, frequency,
                                [self.generators[k] for k in keep], self.draws[cpu], self.drawn[cpu], seen, penalised)

    def uniforms(self, rows: list[int] | None = None) -> torch.Tensor:
        """The next uniform number of each of `rows` (None: every row) from its own generator, on the CPU."""
        at = slice(None) if rows is None else torch.tensor(rows, dtype=torch.long)
        used = self.drawn[at]
        if int(used.max()) >= DRAWS:  # some rows used up what they made ahead: they make more
            for k in (used >= DRAWS).nonzero().squeeze(1).tolist():
                row = k if rows is None else rows[k]
                self.draws[row] = torch.rand(DRAWS, generator=self.generators[row])
                self.drawn[row] = 0
            used = self.drawn[at]
        u = self.draws[at].gather(1, used[:, None]).squeeze(1)
        self.drawn[at] += 1
        return u

    def choose(self, logits: torch.Tensor, rows: list[int] | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
        """The next token of each of `rows` (None: every row), whose logits are the rows of `logits`.

        A row's penalties come first, on the tokens it generated: its repetition penalty divides a
        positive logit (multiplies a negative one), then its presence penalty is subtracted once
        and its frequency penalty once a time the token was generated. `bias` is added next (-inf
        for a token a row may not take), and the temperature divides the result. Each row draws
        one uniform number from its own generator and inverts its CDF with it, so a seeded row
        samples the same tokens whichever rows share its batch. Nothing sorts the whole
        vocabulary (64 rows of a 49k vocabulary take ~0.2 s to sort on a CPU): rows without top-k
        or top-p invert the CDF in vocabulary order, the others look at their `CANDIDATES` most
        likely tokens, and only a row whose nucleus reaches past those is sorted whole.
        """
        index = None if rows is None else torch.tensor(rows, dtype=torch.long, device=logits.device)
        temperature, top_k, top_p = (t if index is None else t[index] for t in (self.temperature, self.top_k, self.top_p))
        logits = logits.float()
        if self.penalised:
            if self.seen is None:
                self.seen = torch.zeros((len(self), logits.shape[1]), device=logits.device)
            counts = self.seen if index is None else self.seen[index]
            penalty, presence, frequency = ((t if index is None else t[index])[:, None]
                                            for t in (self.penalty, self.presence, self.frequency))
            seen = counts > 0
            logits = torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
            logits = logits - presence * seen - frequency * counts
        if bias is not None:
            logits = logits + bias
        u = self.uniforms(rows).to(logits.device)
        tokens = _sample(logits, temperature, top_k, top_p, u)
        if self.seen is not None:
            if index is None:
                self.seen.scatter_add_(1, tokens[:, None], torch.ones_like(tokens, dtype=self.seen.dtype)[:, None])
            else:
                self.seen.index_put_((index, tokens), torch.ones_like(tokens, dtype=self.seen.dtype), accumulate=True)
        return tokens


def first_token_bias(banned: frozenset[int], allowed: frozenset[int], vocabulary: int) -> torch.Tensor:
    """[vocabulary]: 0 where a first token may be, -inf where not (`banned`, or outside `allowed` when set)."""
    bias = torch.zeros(vocabulary)
    if allowed:
        bias.fill_(-torch.inf)
        bias[[t for t in allowed if t < vocabulary]] = 0.0
    if banned:
        bias[[t for t in banned if t < vocabulary]] = -torch.inf
    return bias


def _sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
            u: torch.Tensor) -> torch.Tensor:
    """Each row's token: greedy where its temperature is 0, else where `u` falls in its CDF after top-k and top-p."""
    probs = torch.softmax(logits / temperature.clamp(min=1e-6)[:, None], dim=1)
    tokens = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
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
    return tokens


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
