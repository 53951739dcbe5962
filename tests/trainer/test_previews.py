"""Preview samples during training: openings to sample from, one turn each, and the caller's RNG untouched."""

from __future__ import annotations

import torch

from doppel.tiny import tiny_model
from doppel.transcript import Transcript, Turn
from services.trainer.previews import generate, openings
from services.trainer.samples import Session


def test_openings_are_prompts_said_to_the_persona_or_held_out_starts():
    s1 = Session("c", ["Bob", "Alice"], [Turn("Alice", "hi"), Turn("Bob", "yo"), Turn("Alice", "sup")])
    s2 = Session("c", ["Bob", "Alice"], [Turn("Bob", "x")])
    [o] = openings([s1, s2], ["Alice"], [])
    assert o.turns == [Turn("Alice", "hi"), Turn("Bob", "yo")] and o.speaker == "Alice"
    given = openings([s1], ["Alice"], ["how was work", "and you?"])
    assert [(o.turns, o.speaker) for o in given] == [([Turn("Bob", "how was work")], "Alice"), ([Turn("Bob", "and you?")], "Alice")]


def test_generate_gives_one_sample_per_opening_shown_with_its_prompt():
    model, tok = tiny_model(["Bob: how was work", "Alice: haha yes"], seed=0, block_size=128)
    transcript = Transcript(tok, ["Alice"])
    found = openings([], ["Alice"], ["how was work"])
    [s] = generate(model, tok, transcript, found, step=3, max_new_tokens=8)
    assert s.prompt == "User: how was work" and s.speaker == "Alice" and s.step == 3
    assert "\n" not in s.text  # plain turns end at a newline: the sample is cut there


def test_generate_is_seeded_and_leaves_the_global_rng_as_it_was():
    model, tok = tiny_model(["Bob: how was work", "Alice: haha yes"], seed=0, block_size=128)
    transcript = Transcript(tok, ["Alice"])
    found = openings([], ["Alice"], ["how was work", "and you?"])
    torch.manual_seed(1234)
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    first = generate(model, tok, transcript, found, step=2, seed=7, max_new_tokens=8)
    assert torch.equal(torch.get_rng_state(), cpu)
    if torch.cuda.is_available():
        assert all(torch.equal(a, b) for a, b in zip(torch.cuda.get_rng_state_all(), cuda, strict=True))
    torch.manual_seed(99)  # another caller state: the samples depend only on seed + step
    assert generate(model, tok, transcript, found, step=2, seed=7, max_new_tokens=8) == first
