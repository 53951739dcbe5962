"""How requests become engine jobs: prompts, turn boundaries, speakers, and the speaker tag of a simulated turn."""

from __future__ import annotations

from dataclasses import replace

import pytest

from doppel.errors import InvalidArgument
from doppel.tiny import tiny_model
from doppel.transcript import Transcript, Turn
from services.inference import modes
from services.inference.modes import Persona, Written, chat_job, complete_job, split_speaker, turn_job
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
    assert prompt.endswith("Bob: yo 1<|endoftext|>\nDave: who am I<|endoftext|>\nAlice:")
    # a turn may span lines: it ends at EOS, or at a line opened as anyone
    assert set(job.end_strings) == {"<|endoftext|>", "\nAlice:", "\nBob:", "\nCarol:", "\nDave:"}
    assert job.banned_first == persona.openings(["Bob"]) and job.banned_first  # never opens as the user
    assert job.end_ids == {persona.tokenizer.eos_token_id} and not job.allowed_first


def test_a_model_published_before_eos_ended_plain_turns_is_prompted_and_stopped_as_it_was_trained(persona):
    old = replace(persona, transcript=Transcript(persona.tokenizer, ["Alice"], "plain"), _openings={})
    job = chat_job(old, [Turn("Bob", "yo 1")], "Alice", "Bob", Sampling(max_new_tokens=8), _sink)
    assert old.tokenizer.decode(job.prompt_ids).endswith("<|endoftext|>Bob: yo 1\nAlice:")
    assert set(job.end_strings) == {"\n", "\nAlice:", "\nBob:", "\nCarol:"}
    assert job.end_ids == {old.tokenizer.eos_token_id}


def test_a_chat_job_refuses_the_users_own_speaker_and_strangers(persona):
    with pytest.raises(InvalidArgument, match="user's participant"):
        chat_job(persona, [], "Bob", "Bob", Sampling(), _sink)
    with pytest.raises(InvalidArgument, match="Alice, Bob, Carol"):
        chat_job(persona, [], "Zed", "", Sampling(), _sink)


def test_a_long_history_keeps_its_latest_tokens_and_room_for_the_reply(persona):
    history = [Turn(PARTICIPANTS[i % 3], f"message number {i}") for i in range(200)]
    job = chat_job(persona, history, "Alice", "", Sampling(max_new_tokens=56), _sink)
    assert len(job.prompt_ids) == 256 - 56
    assert persona.tokenizer.decode(job.prompt_ids).endswith("message number 199<|endoftext|>\nAlice:")
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


# --- who a simulation may voice, who speaks next, and turns that loop ---------------------------


@pytest.fixture(scope="module")
def group(persona) -> Persona:
    return Persona("g", PARTICIPANTS, PARTICIPANTS, Transcript(persona.tokenizer, PARTICIPANTS), max_positions=256)


def test_a_simulation_refuses_a_speaker_the_model_never_learned_and_says_what_to_do(persona):
    with pytest.raises(InvalidArgument) as e:
        replace(persona, dataset_id="ds-1").simulated(["Alice", "Bob"])
    message = str(e.value)
    assert "did not learn to write as 'Bob'" in message and "learned 'Alice' only" in message
    assert "doppel train --dataset ds-1 --persona Alice --persona Bob" in message
    assert "doppel chat --model m --me Bob" in message
    with pytest.raises(InvalidArgument, match="'Carol'"):
        persona.simulated(["Alice"], first="Carol")
    with pytest.raises(InvalidArgument, match="is not a participant"):
        persona.simulated(["Zed"])
    assert persona.simulated([]) == ["Alice"]  # a persona model alone: a monologue, but its own


def test_a_group_model_simulates_its_speakers_and_the_first_one_among_them(group):
    assert group.simulated([]) == PARTICIPANTS
    assert group.simulated(["Bob", "Alice", "Bob"], first="Alice") == ["Bob", "Alice"]
    with pytest.raises(InvalidArgument, match="not one of the participants"):
        group.simulated(["Alice", "Bob"], first="Carol")


def test_nobody_writes_more_than_two_turns_in_a_row_while_another_can_speak():
    names = ["Alice", "Bob", "Carol"]
    assert modes.takers([Turn("Alice", "a")], names) == names
    assert modes.takers([Turn("Bob", "b"), Turn("Alice", "a"), Turn("Alice", "a2")], names) == ["Bob", "Carol"]
    assert modes.takers([Turn("Alice", "a"), Turn("Alice", "a2")], ["Alice"]) == ["Alice"]  # nobody else to speak
    assert modes.rotation([Turn("Bob", "b")], ["Alice", "Bob"]) == "Alice"
    assert modes.rotation([Turn("Dave", "d")], ["Alice", "Bob"]) == "Alice"
    assert modes.rotation([], ["Bob", "Carol"]) == "Bob"


def test_a_looping_turn_is_sampled_again_and_a_bounded_number_of_times():
    history = [Turn("Alice", "hi"), Turn("Bob", "I'll strim tomorrow")]
    tries: list[int] = []

    def engine(texts):  # a fake engine: the turn each try samples
        def sample(attempt: int) -> Written:
            tries.append(attempt)
            speaker, text = texts[min(attempt, len(texts) - 1)]
            return Written(speaker, text, Finish.END_OF_TURN)
        return sample

    turn = modes.fresh_turn(engine([("Alice", "i'll  STRIM tomorrow "), ("Alice", "  "), ("Alice", "ok")]), history, ["Alice"])
    assert turn.text == "ok" and tries == [0, 1, 2]
    tries.clear()
    assert modes.fresh_turn(engine([("Bob", "new"), ("Alice", "new")]), history, ["Alice"]).speaker == "Alice"
    tries.clear()
    turn = modes.fresh_turn(engine([("Alice", "hi")]), history, ["Alice"])  # it only ever loops: kept after 3 more tries
    assert turn.text == "hi" and tries == [0, 1, 2, 3]
    tries.clear()
    assert modes.fresh_turn(engine([("Alice", "HI")]), [*history, *[Turn("Bob", str(k)) for k in range(4)]], ["Alice"]).text == "HI"
    assert tries == [0]  # "hi" is further back than the last four turns
    cancelled = modes.fresh_turn(lambda attempt: Written("Alice", "hi", Finish.CANCELLED), history, ["Alice"])
    assert cancelled.finish is Finish.CANCELLED


def test_every_turn_and_every_try_samples_with_a_seed_of_its_own_and_a_retry_is_never_greedy():
    seeded, greedy = Sampling(seed=7), Sampling(temperature=0.0)
    seeds = {modes.resampling(seeded, index, attempt).seed for index in range(5) for attempt in range(4)}
    assert len(seeds) == 20 and modes.resampling(seeded, 0, 0) == seeded
    assert modes.resampling(greedy, 3, 0) == greedy and modes.resampling(greedy, 3, 1).temperature == modes.RETRY_TEMPERATURE
    assert modes.resampling(Sampling(temperature=1.2), 0, 2).temperature == 1.2
