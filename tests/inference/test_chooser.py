"""The next-token chooser: top-k and top-p as a full sort would give them, without sorting the
vocabulary; per-row settings as tensors that follow their rows through joins and filters."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from doppel.errors import InvalidArgument
from services.inference.chooser import CANDIDATES, DRAWS, NextTokenChooser, first_token_bias
from services.inference.protocol import Sampling


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
    twin = NextTokenChooser.of([(s, index)])  # the same seed and index: the same uniforms
    return [float(twin.uniforms()[0]) for _ in range(count)]


def test_filtered_rows_pick_what_a_full_sort_picks():
    torch.manual_seed(0)
    vocab = 8 * CANDIDATES + 500  # wide enough for the candidate path
    settings = [Sampling(temperature=t, top_k=k, top_p=p, seed=7) for t in (0.7, 1.3) for k in (0, 1, 5, 400)
                for p in (0.5, 0.9, 1.0) if k or p < 1]
    logits = torch.randn(len(settings), vocab) * 4  # peaked: most nuclei lie within the candidates
    chooser = NextTokenChooser.of([(s, k) for k, s in enumerate(settings)])
    steps = 5
    picked = [chooser.choose(logits.clone()).tolist() for _ in range(steps)]
    for k, s in enumerate(settings):
        expected = [_reference(logits[k], s, u) for u in _draws(s, k, steps)]
        assert [p[k] for p in picked] == expected, s


def test_a_nucleus_wider_than_the_candidates_is_still_exact():
    vocab = 8 * CANDIDATES + 500
    logits = -torch.arange(vocab, dtype=torch.float) * 1e-3  # nearly flat: p=0.5 needs ~1000 tokens
    s = Sampling(temperature=1.0, top_k=0, top_p=0.5, seed=3)
    chooser = NextTokenChooser.of([(s, 0)])
    tokens = [int(chooser.choose(logits[None].clone())[0]) for _ in range(200)]  # past several rounds of draws
    expected = [_reference(logits, s, u) for u in _draws(s, 0, 200)]
    assert tokens == expected
    assert max(tokens) > CANDIDATES  # some fell past the candidates: the whole-row sort ran


def test_plain_rows_sample_in_proportion_and_never_a_banned_token():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2, 0.0]))  # the last token is impossible
    s = Sampling(temperature=1.0, top_k=0, top_p=1.0, seed=11)
    tokens = NextTokenChooser.of([(s, k) for k in range(400)]).choose(logits.repeat(400, 1)).tolist()
    counts = [tokens.count(t) for t in range(4)]
    assert counts[3] == 0
    assert abs(counts[0] / 400 - 0.5) < 0.1 and abs(counts[1] / 400 - 0.3) < 0.1 and abs(counts[2] / 400 - 0.2) < 0.1


def test_greedy_rows_take_the_most_likely_token_beside_sampled_rows():
    logits = torch.tensor([[0.0, 3.0, 1.0], [0.0, 3.0, 1.0]])
    chooser = NextTokenChooser.of([(Sampling(temperature=0.0), 0), (Sampling(temperature=1.0, top_k=1), 1)])
    assert chooser.choose(logits).tolist() == [1, 1]


def test_a_row_samples_the_same_tokens_whatever_joins_or_leaves_its_batch():
    """Each row's settings, generator and penalty memory go with it through concatenate and filter."""
    torch.manual_seed(0)
    vocab, steps = 50, 3 * DRAWS  # past several rounds of draws made ahead
    logits = torch.randn(steps, vocab)
    mine = Sampling(temperature=1.0, top_k=10, repetition_penalty=1.5, seed=5)
    alone = NextTokenChooser.of([(mine, 2)])
    expected = [int(alone.choose(logits[t][None].clone())[0]) for t in range(steps)]
    other = Sampling(temperature=0.9, top_p=0.8, seed=9)
    chooser = NextTokenChooser.of([(other, 0), (mine, 2)])
    got, at = [], 1  # where `mine` is in the batch
    for t in range(steps):
        if t == 10:  # a row without a penalty joins in front
            chooser, at = NextTokenChooser.concatenate([NextTokenChooser.of([(Sampling(temperature=0.0), 0)]), chooser]), 2
        if t == 40:  # the rows around it leave
            chooser, at = chooser.filter([2]), 0
        if t == 50:  # and a new one comes after it
            chooser = NextTokenChooser.concatenate([chooser, NextTokenChooser.of([(other, 1)])])
        if 20 <= t < 30:  # the others are done: only this row picks
            got.append(int(chooser.choose(logits[t][None], [at])[0]))
        else:
            got.append(int(chooser.choose(logits[t].repeat(len(chooser), 1))[at]))
    assert got == expected


def test_the_repetition_penalty_is_the_one_on_the_generated_tokens():
    logits = torch.tensor([[2.0, -1.0, 1.9, 0.5]])
    chooser = NextTokenChooser.of([(Sampling(temperature=0.0, repetition_penalty=2.0), 0)])
    assert chooser.choose(logits).tolist() == [0]
    assert chooser.choose(logits).tolist() == [2]  # 2.0 / 2 < 1.9
    assert chooser.choose(logits).tolist() == [0]  # 2.0 / 2 > 1.9 / 2 > 0.5
    assert _counts(chooser).tolist() == [[2.0, 0.0, 1.0, 0.0]]  # how often each token was generated


def _counts(chooser: NextTokenChooser) -> torch.Tensor:
    """How often each row generated each token."""
    assert chooser.seen is not None
    return chooser.seen


def _adjusted(chooser: NextTokenChooser, logits: torch.Tensor) -> torch.Tensor:
    """The logits `chooser` samples from: what greedy `_sample` is handed, caught on its way in."""
    import services.inference.chooser as module
    caught = []
    original = module._sample

    def spy(logits, *rest):
        caught.append(logits.clone())
        return original(logits, *rest)

    module._sample = spy
    try:
        chooser.choose(logits.clone())
    finally:
        module._sample = original
    return caught[0]


def test_a_presence_penalty_moves_greedy_decoding_off_a_dominant_token():
    logits = torch.tensor([[3.0, 2.5, 2.0, -1.0, 0.5]])  # token 0 dominates
    plain = NextTokenChooser.of([(Sampling(temperature=0.0), 0)])
    assert [int(plain.choose(logits)[0]) for _ in range(3)] == [0, 0, 0]
    presence, frequency = 1.5, 0.25
    chooser = NextTokenChooser.of([(Sampling(temperature=0.0, presence_penalty=presence, frequency_penalty=frequency), 0)])
    assert [int(chooser.choose(logits)[0]) for _ in range(3)] == [0, 1, 2]  # each token, once taken, falls behind
    assert int(chooser.choose(logits)[0]) == 0  # 3 - 1.75 = 1.25 beats 2.5 - 1.75, 2 - 1.75 and 0.5
    counts = torch.tensor([[2.0, 1.0, 1.0, 0.0, 0.0]])
    assert _counts(chooser).tolist() == counts.tolist()
    expected = logits - presence * (counts > 0).float() - frequency * counts
    torch.testing.assert_close(_adjusted(chooser, logits), expected)


def test_a_frequency_penalty_grows_with_the_count():
    logits = torch.tensor([[4.0, 0.0, 0.0]])  # token 0 stays the greedy choice for a few steps
    chooser = NextTokenChooser.of([(Sampling(temperature=0.0, frequency_penalty=1.5), 0)])
    assert chooser.choose(logits).tolist() == [0]
    torch.testing.assert_close(_adjusted(chooser, logits), torch.tensor([[2.5, 0.0, 0.0]]))  # once; and 0 is taken again
    torch.testing.assert_close(_adjusted(chooser, logits), torch.tensor([[1.0, 0.0, 0.0]]))  # twice
    assert _counts(chooser).tolist() == [[3.0, 0.0, 0.0]]
    assert chooser.choose(logits).tolist() == [1]  # 4 - 3 * 1.5 < 0
    negative = NextTokenChooser.of([(Sampling(temperature=0.0, frequency_penalty=-0.5), 0)])
    negative.choose(logits)
    negative.choose(logits)
    torch.testing.assert_close(_adjusted(negative, logits), torch.tensor([[5.0, 0.0, 0.0]]))  # a negative one rewards


def test_penalties_stay_with_their_rows_in_a_mixed_batch():
    """A penalty-free row samples as it would alone; concatenate and filter keep each row's penalties and counts."""
    torch.manual_seed(0)
    vocab, steps = 40, 2 * DRAWS
    logits = torch.randn(steps, vocab) * 2
    free = Sampling(temperature=1.0, top_k=0, top_p=1.0, seed=4)
    alone = NextTokenChooser.of([(free, 1)])
    expected = [int(alone.choose(logits[t][None].clone())[0]) for t in range(steps)]
    assert alone.seen is None and not alone.penalised
    heavy = Sampling(temperature=0.0, presence_penalty=2.0, frequency_penalty=2.0)
    light = Sampling(temperature=0.0, presence_penalty=-1.0)
    chooser = NextTokenChooser.concatenate([NextTokenChooser.of([(heavy, 0)]), NextTokenChooser.of([(free, 1), (light, 2)])])
    assert chooser.presence.tolist() == [2.0, 0.0, -1.0] and chooser.frequency.tolist() == [2.0, 0.0, 0.0]
    got, heavies, lights = [], [], []
    for t in range(steps):
        if t == steps // 2:  # the heavy row leaves; the others keep their own penalties and counts
            counts = _counts(chooser)[1:].clone()
            chooser = chooser.filter([2, 1])
            assert chooser.presence.tolist() == [-1.0, 0.0] and chooser.frequency.tolist() == [0.0, 0.0]
            assert torch.equal(_counts(chooser), counts.flip(0))
        tokens = chooser.choose(logits[t].repeat(len(chooser), 1)).tolist()
        if t < steps // 2:
            heavies.append(tokens[0])
            lights.append(tokens[2])
            got.append(tokens[1])
        else:
            lights.append(tokens[0])
            got.append(tokens[1])
    assert got == expected
    assert len(set(heavies)) == len(heavies)  # a presence penalty of 2 (plus 2 a time) never repeats in 32 steps here
    assert len(set(lights)) < len(lights) // 2  # a negative one keeps choosing what it chose
    assert _counts(chooser)[1].sum() == steps  # the free row's counts were kept too: one a step
    assert _counts(chooser)[0].tolist() == torch.bincount(torch.tensor(lights), minlength=vocab).float().tolist()


@pytest.mark.parametrize("field", ["presence_penalty", "frequency_penalty"])
@pytest.mark.parametrize("value", [-2.01, 2.5, float("nan")])
def test_penalties_outside_minus_two_to_two_are_refused(field: str, value: float):
    refused: dict[str, Any] = {field: value}
    with pytest.raises(InvalidArgument, match=f"{field} must be in \\[-2, 2\\]"):
        Sampling(**refused)
    for edge in (2.0, -2.0):  # the ends are allowed
        allowed: dict[str, Any] = {field: edge}
        assert getattr(Sampling(**allowed), field) == edge


def test_first_token_bias_bans_and_allows():
    bias = first_token_bias(frozenset({1}), frozenset(), 4)
    assert bias.tolist() == [0.0, -torch.inf, 0.0, 0.0]
    bias = first_token_bias(frozenset({1}), frozenset({1, 3}), 4)
    assert bias.tolist() == [-torch.inf, -torch.inf, -torch.inf, 0.0]
    chooser = NextTokenChooser.of([(Sampling(temperature=0.0), 0)])
    assert chooser.choose(torch.tensor([[0.0, 5.0, 1.0, 0.5]]), bias=bias[None]).tolist() == [3]
