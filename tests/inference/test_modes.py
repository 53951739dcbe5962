"""How requests become engine jobs: prompts, turn boundaries, speakers, and the speaker tag of a simulated turn."""

from __future__ import annotations

import pytest

from doppel.errors import InvalidArgument
from doppel.tiny import tiny_model
from doppel.transcript import Transcript, Turn
from services.inference.modes import Persona, chat_job, complete_job, split_speaker, turn_job
from services.inference.protocol import Finish, Sampling


def test_a_simulated_turn_names_its_speaker_with_or_without_the_colon():
    names = ["Ann", "Annabel", "Bob"]
    assert split_speaker(" Annabel: hi there", names) == ("Annabel", "hi there")
    assert split_speaker("Bob what's up", names) == ("Bob", "what's up")
    assert split_speaker("Ann", names) == ("Ann", "")
    assert split_speaker("Annie: hello", names) == (None, "Annie: hello")


# --- jobs, built from a real (tiny, plain-transcript) tokenizer; no engine runs -----------------

PARTICIPANTS = ["Alice", "Bob", "Carol"]


@pytest.fixture(scope="module")
def persona() -> Persona:
    _, tokenizer = tiny_model([f"Alice: hi {i}\nBob: yo {i}\nCarol: hey {i}" for i in range(50)], block_size=256)
    return Persona("m", ["Alice"], PARTICIPANTS, Transcript(tokenizer, ["Alice"]), max_positions=256)


def _sink(index: int, delta: str, finish: Finish | None) -> None:
    raise AssertionError("no engine runs here")


def test_a_chat_job_asks_for_the_speakers_turn_and_ends_where_anyone_else_starts(persona):
    history = [Turn("Bob", "yo 1"), Turn("Dave", "who am I")]  # a name the model never saw is still a boundary
    job = chat_job(persona, history, "Alice", "Bob", Sampling(max_new_tokens=8), _sink)
    prompt = persona.tokenizer.decode(job.prompt_ids)
    assert prompt.endswith("Bob: yo 1\nDave: who am I\nAlice:")
    assert set(job.end_strings) == {"\n", "\nAlice:", "\nBob:", "\nCarol:", "\nDave:"}
    assert job.banned_first == persona.openings(["Bob"]) and job.banned_first  # never opens as the user
    assert persona.tokenizer.eos_token_id in job.end_ids and not job.allowed_first


def test_a_chat_job_refuses_the_users_own_speaker_and_strangers(persona):
    with pytest.raises(InvalidArgument, match="user's participant"):
        chat_job(persona, [], "Bob", "Bob", Sampling(), _sink)
    with pytest.raises(InvalidArgument, match="Alice, Bob, Carol"):
        chat_job(persona, [], "Zed", "", Sampling(), _sink)


def test_a_long_history_keeps_its_latest_tokens_and_room_for_the_reply(persona):
    history = [Turn(PARTICIPANTS[i % 3], f"message number {i}") for i in range(200)]
    job = chat_job(persona, history, "Alice", "", Sampling(max_new_tokens=56), _sink)
    assert len(job.prompt_ids) == 256 - 56
    assert persona.tokenizer.decode(job.prompt_ids).endswith("message number 199\nAlice:")
    with pytest.raises(InvalidArgument, match="leaves no room"):
        chat_job(persona, history, "Alice", "", Sampling(max_new_tokens=250), _sink)


def test_a_raw_completion_runs_to_eos_and_a_speakers_completion_to_the_end_of_the_turn(persona):
    raw = complete_job(persona, "hi there", "", Sampling(), _sink)
    assert persona.tokenizer.decode(raw.prompt_ids) == "hi there" and raw.end_strings == ()
    assert raw.end_ids == {persona.tokenizer.eos_token_id}
    turn = complete_job(persona, "hi there", "Carol", Sampling(), _sink)
    assert persona.tokenizer.decode(turn.prompt_ids).endswith("Carol: hi there") and "\nBob:" in turn.end_strings
    with pytest.raises(InvalidArgument, match="empty"):
        complete_job(persona, "", "", Sampling(), _sink)


def test_a_simulated_turn_without_a_speaker_must_open_with_a_participants_name(persona):
    job = turn_job(persona, [Turn("Alice", "hi 1")], ["Alice", "Bob"], "", "", Sampling(), _sink)
    assert job.allowed_first == persona.openings(["Alice", "Bob"])
    assert not persona.tokenizer.decode(job.prompt_ids).rstrip().endswith(":")
    named = turn_job(persona, [], ["Alice", "Bob"], "Bob", "well", Sampling(), _sink)
    assert persona.tokenizer.decode(named.prompt_ids).endswith("Bob: well") and not named.allowed_first
