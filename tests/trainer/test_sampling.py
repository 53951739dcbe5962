"""Openings to sample from, and one generated turn cut out of what the model writes."""

from __future__ import annotations

import torch

from doppel.transcript import Transcript, Turn
from services.trainer.basemodels import tiny_model
from services.trainer.sampling import _one_turn, generate, openings
from services.trainer.samples import Session


def test_a_generated_turn_stops_where_another_participant_speaks():
    assert _one_turn(" yes totally\nBob: ok\nAlice: no", ["Alice", "Bob"]) == "yes totally"
    assert _one_turn(" two\nlines", ["Alice", "Bob"]) == "two\nlines"
    assert _one_turn(" Bob: is not a new line", ["Alice", "Bob"]) == "Bob: is not a new line"


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
    torch.manual_seed(0)
    [s] = generate(model, tok, transcript, found, step=3, max_new_tokens=8)
    assert s.prompt == "User: how was work" and s.speaker == "Alice" and s.step == 3
    assert "\n" not in s.text  # plain turns end at a newline: the sample is cut there
