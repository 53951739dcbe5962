"""bench/fidelity.py runs end to end on the tiny model and ends with its JSON line (no timing asserted);
bench/hardchat.py makes the chat it claims: styles apart, multi-line messages, emoji, replies on topic."""

import json
import math
import os
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "fidelity.py"
sys.path.insert(0, str(ROOT))

from bench import hardchat  # noqa: E402


@pytest.fixture(scope="module")
def chat() -> list:
    return hardchat.conversations(8000, seed=0)


def test_the_hard_chat_is_deterministic_per_seed(chat: list) -> None:
    again = hardchat.conversations(8000, seed=0)
    other = hardchat.conversations(8000, seed=1)
    texts = [[(m.sender, m.text, m.timestamp) for m in c.messages] for c in chat]
    assert texts == [[(m.sender, m.text, m.timestamp) for m in c.messages] for c in again]
    assert texts != [[(m.sender, m.text, m.timestamp) for m in c.messages] for c in other]
    assert 7800 <= sum(len(c.messages) for c in chat) <= 8300


def test_the_hard_chat_has_four_voices_with_their_habits(chat: list) -> None:
    props = hardchat.properties(chat)
    people = props["people"]
    assert set(people) == set(hardchat.PEOPLE)
    for p in people.values():
        assert p["vocabulary"] >= 300  # hundreds of words each, not a phrase bank
        assert p["repeated"] < 0.2  # seldom the same message twice
    ines, tomasz, priya, otis = (people[n] for n in hardchat.PEOPLE)
    assert tomasz["multi_line"] > 0.25 and ines["multi_line"] > 0.05 and priya["multi_line"] > 0.05
    assert ines["emoji"] > 0.4 and priya["emoji"] > 0.2 and tomasz["emoji"] == 0
    assert tomasz["mean_words"] > 2 * ines["mean_words"] > 4 * otis["mean_words"]
    texts = {n: [m.text for c in chat for m in c.messages if m.sender == n] for n in hardchat.PEOPLE}
    assert all(t == t.lower() for t in texts[hardchat.INES])  # Ines never capitalises
    assert sum(t[0].isupper() for t in texts[hardchat.TOMASZ]) > 0.9 * len(texts[hardchat.TOMASZ])
    assert sum(any(w.isupper() and len(w) > 1 for w in t.split()) for t in texts[hardchat.PRIYA]) > 0.1 * len(texts[hardchat.PRIYA])
    assert any(line.startswith("- ") for t in texts[hardchat.TOMASZ] for line in t.splitlines())  # lists


def test_replies_follow_the_topic_of_the_message_they_answer(chat: list) -> None:
    props = hardchat.properties(chat)
    assert props["reply_pairs"] > 2000
    assert props["reply_same_topic"] > 0.75  # the answered message's topic, most of the time
    assert props["reply_same_topic_chance"] < 0.25  # against a reply from elsewhere
    # topics are told apart by their words: each topic's own words point back to it
    for topic, (nouns, verbs, adjectives) in hardchat.TOPICS.items():
        assert hardchat.topic_of(f"the {nouns[0]} was {adjectives[0]}, {verbs[0]} it") == topic


def test_every_person_has_held_out_turns_to_answer(chat: list) -> None:
    from services.trainer.samples import split_sessions

    for person in hardchat.PEOPLE:
        split = split_sessions(chat, [person], session_gap=timedelta(hours=6), held_out_fraction=0.1)
        train, held = split.turns([person])
        assert held >= 100 and train > 5 * held, (person, train, held)
        speakers = Counter(t.speaker for s in split.held_out for t in s.turns)
        assert len(speakers) >= 2  # their held-out turns answer someone


def test_fidelity_bench_prints_its_figures(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    args = ["--base-model", "tiny", "--steps", "2", "--limit", "8", "--messages", "2000", "--threads", "1",
            "--persona", "Jonah", "--persona", "Tomasz Wilk", "--cache-dir", str(tmp_path)]
    done = subprocess.run([sys.executable, str(BENCH), *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("personas", "replies", "tuned_eval_s", "base_eval_s", "eval_s_per_200_replies", "train_s",
                "beats_base_style", "beats_base_who_said_it", "chats"):
        assert key in figures, key
    assert set(figures["chats"]) == {"demo", "hard"}
    assert list(figures["chats"]["demo"]["personas"]) == ["Jonah Pell"]
    assert list(figures["chats"]["hard"]["personas"]) == ["Tomasz Wilk"]
    assert figures["personas"] == 2 and figures["replies"] == 16 and figures["limit"] == 8
    for chat in figures["chats"].values():
        assert chat["properties"]["messages"] > 0
        for p in chat["personas"].values():
            assert p["replies"] == 8 and p["steps"] == 2
            for which in ("tuned", "base"):
                f = p[which]
                assert 0 <= f["style_distance"] <= 1
                for share in ("who_said_it_real", "who_said_it_model", "real_or_generated", "exact_copies"):
                    assert 0 <= f[share] <= 1, (which, share)
                assert f["style"] and set(f["style"]) == set(p["person_style"])
            for key in ("train_s", "tuned_eval_s", "base_eval_s"):
                assert math.isfinite(p[key]) and p[key] > 0, key
            assert 0 <= p["real_exact_copies"] == p["real"]["exact_copies"] <= 1
            assert 0 < p["real"]["distinct_2"] <= 1
            assert isinstance(p["beats_base_style"], bool) and isinstance(p["beats_base_who_said_it"], bool)
    topics = figures["chats"]["hard"]["personas"]["Tomasz Wilk"]["topics"]  # the hard chat's own figure
    for key in ("real_same_topic", "tuned_same_topic", "base_same_topic", "tuned_with_topic", "base_with_topic"):
        assert topics[key] is None or 0 <= topics[key] <= 1, key
    assert topics["real_pairs"] > 0 and topics["real_same_topic"] > 0.5  # the real replies follow the topic
    assert "topics" not in figures["chats"]["demo"]["personas"]["Jonah Pell"]
    # the demo's phrase banks: its people's messages repeat far more than the hard chat's
    demo_people = figures["chats"]["demo"]["properties"]["people"]
    hard_people = figures["chats"]["hard"]["properties"]["people"]
    assert min(p["repeated"] for p in demo_people.values()) > max(p["repeated"] for p in hard_people.values())
    assert "Tuned against base alone" in done.stdout and "## Fidelity of Jonah Pell" in done.stdout
