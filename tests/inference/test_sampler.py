"""`pick`: top-k and top-p as a full sort would give them, without sorting the vocabulary."""

from __future__ import annotations

import torch

from services.inference.sampler import CANDIDATES, RowSampler, Sampling, pick


def _reference(logits: torch.Tensor, s: Sampling, u: float) -> int:
    """The token a whole-vocabulary sort picks for uniform `u` (top-k, renormalise, then top-p)."""
    if s.temperature == 0:
        return int(logits.argmax())
    ordered, order = torch.sort(logits.float() / s.temperature, descending=True)
    if s.top_k:
        ordered[s.top_k:] = -torch.inf
    probs = torch.softmax(ordered, 0)
    probs = probs.masked_fill(probs.cumsum(0) - probs >= s.top_p, 0.0)
    cdf = probs.cumsum(0)
    at = int(torch.searchsorted(cdf, torch.tensor([u * float(cdf[-1])]), right=True))
    return int(order[min(at, len(order) - 1)])


def _draws(s: Sampling, index: int, count: int) -> list[float]:
    twin = RowSampler(s, index)  # the same seed and index: the same uniforms
    return [twin.uniform() for _ in range(count)]


def test_filtered_rows_pick_what_a_full_sort_picks():
    torch.manual_seed(0)
    vocab = 8 * CANDIDATES + 500  # wide enough for the candidate path
    settings = [Sampling(temperature=t, top_k=k, top_p=p, seed=7) for t in (0.7, 1.3) for k in (0, 1, 5, 400)
                for p in (0.5, 0.9, 1.0) if k or p < 1]
    logits = torch.randn(len(settings), vocab) * 4  # peaked: most nuclei lie within the candidates
    rows = [(RowSampler(s, k), []) for k, s in enumerate(settings)]
    steps = 5
    picked = [pick(rows, logits.clone()) for _ in range(steps)]
    for k, s in enumerate(settings):
        expected = [_reference(logits[k], s, u) for u in _draws(s, k, steps)]
        assert [p[k] for p in picked] == expected, s


def test_a_nucleus_wider_than_the_candidates_is_still_exact():
    vocab = 8 * CANDIDATES + 500
    logits = -torch.arange(vocab, dtype=torch.float) * 1e-3  # nearly flat: p=0.5 needs ~1000 tokens
    s = Sampling(temperature=1.0, top_k=0, top_p=0.5, seed=3)
    rows = [(RowSampler(s, 0), [])]
    tokens = [pick(rows, logits[None].clone())[0] for _ in range(200)]
    expected = [_reference(logits, s, u) for u in _draws(s, 0, 200)]
    assert tokens == expected
    assert max(tokens) > CANDIDATES  # some fell past the candidates: the whole-row sort ran


def test_plain_rows_sample_in_proportion_and_never_a_banned_token():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2, 0.0]))  # the last token is impossible
    s = Sampling(temperature=1.0, top_k=0, top_p=1.0, seed=11)
    rows = [(RowSampler(s, k), []) for k in range(400)]
    tokens = pick(rows, logits.repeat(400, 1))
    counts = [tokens.count(t) for t in range(4)]
    assert counts[3] == 0
    assert abs(counts[0] / 400 - 0.5) < 0.1 and abs(counts[1] / 400 - 0.3) < 0.1 and abs(counts[2] / 400 - 0.2) < 0.1


def test_greedy_rows_take_the_most_likely_token_beside_sampled_rows():
    logits = torch.tensor([[0.0, 3.0, 1.0], [0.0, 3.0, 1.0]])
    rows = [(RowSampler(Sampling(temperature=0.0), 0), []), (RowSampler(Sampling(temperature=1.0, top_k=1), 1), [])]
    assert pick(rows, logits) == [1, 1]
