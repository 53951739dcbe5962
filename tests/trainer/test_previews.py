"""Preview samples during training: openings to sample from, one turn each, and the caller's RNG untouched."""

from __future__ import annotations

import torch

from doppel.tiny import tiny_model
from doppel.transcript import Transcript, Turn
from services.trainer.previews import generate, openings
from services.trainer.samples import Session
from support.scripted import scripted_lm


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
    # one turn: cut at EOS (which ends plain turns) or at a line opened as a participant
    assert tok.eos_token not in s.text and not any(f"\n{p}:" in s.text for p in found[0].participants)


def test_a_preview_is_a_whole_multi_line_turn_ended_at_eos_or_another_participants_line():
    _, tok = tiny_model(["Bob: how was work", "Alice: haha yes\nlol"], seed=0, block_size=128)
    found = openings([], ["Alice"], ["how was work"])
    for script, turn in ((" line one\nline two<|endoftext|>\nUser: more", "line one\nline two"),
                         (" line one\nline two\nUser: I am not Alice", "line one\nline two"),
                         (" line one\nAlice: again<|endoftext|>", "line one")):
        [s] = generate(scripted_lm(tok, script), tok, Transcript(tok, ["Alice"]), found, max_new_tokens=24)
        assert s.text == turn, script
    # a model published before turns ended at EOS: its turn ends at the first newline, as it was trained
    [s] = generate(scripted_lm(tok, " line one\nline two<|endoftext|>"), tok, Transcript(tok, ["Alice"], "plain"), found,
                   max_new_tokens=24)
    assert s.text == "line one"


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
