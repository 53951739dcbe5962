"""services.trainer.samples: sessions, the held-out split by time, and token windows."""

from __future__ import annotations

import copy
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from doppel.conversation import Conversation, Message
from doppel.errors import InvalidArgument
from doppel.tiny import tiny_model
from doppel.transcript import Transcript, Turn
from services.trainer.samples import IGNORE, Sample, Session, Split, split_sessions, tokenise
from support.chats import CHATML, chat

GAP = timedelta(hours=6)
T0 = datetime(2024, 5, 1, 9, tzinfo=UTC)


def conv(cid: str, rows: list[tuple[str, str, datetime]]) -> Conversation:
    return Conversation(cid, f"title {cid}", "jsonl", [Message(s, t, at) for s, t, at in rows])


def numbered(cid: str, n: int, *, step: timedelta = timedelta(minutes=1)) -> Conversation:
    """Bob and Alice alternating, every text unique, `step` apart."""
    return conv(cid, [("Bob" if i % 2 == 0 else "Alice", f"{cid} message {i}", T0 + i * step) for i in range(n)])


def turns_of(sessions: list[Session], cid: str) -> list[Turn]:
    return [t for s in sessions if s.conversation_id == cid for t in s.turns]


def as_turns(messages: list[Message]) -> list[Turn]:
    return [Turn(m.sender, m.text) for m in messages]


# --- held-out split ------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.9])
def test_the_latest_floor_fraction_of_each_conversation_is_held_out(fraction: float) -> None:
    conversations = chat(conversations=3, messages=120) + [numbered("short", 7)]
    # both speakers chosen: no session is dropped, so every message is accounted for
    split = split_sessions(conversations, ["Alice", "Bob"], session_gap=GAP, held_out_fraction=fraction)
    for c in conversations:
        n = len(c.messages)
        k = math.floor(n * fraction)
        assert turns_of(split.train, c.id) == as_turns(c.messages[: n - k])
        assert turns_of(split.held_out, c.id) == as_turns(c.messages[n - k :])
    expected_held = sum(math.floor(len(c.messages) * fraction) for c in conversations)
    assert sum(len(s.turns) for s in split.held_out) == expected_held


def test_short_conversations_hold_out_floor() -> None:
    split = split_sessions([numbered("a", 7)], ["Alice", "Bob"], session_gap=GAP, held_out_fraction=0.1)
    assert split.held_out == []  # floor(0.7) = 0
    split = split_sessions([numbered("a", 7)], ["Alice", "Bob"], session_gap=GAP, held_out_fraction=0.3)
    assert [t.text for t in turns_of(split.held_out, "a")] == ["a message 5", "a message 6"]  # floor(2.1) = 2


def test_held_out_messages_never_appear_in_train() -> None:
    conversations = [numbered(f"c{i}", 50) for i in range(3)]
    split = split_sessions(conversations, ["Alice"], session_gap=GAP, held_out_fraction=0.2)
    train = {t.text for s in split.train for t in s.turns}
    held = {t.text for s in split.held_out for t in s.turns}
    assert len(held) == 3 * 10
    assert train.isdisjoint(held)
    assert train | held == {m.text for c in conversations for m in c.messages}
    for c in conversations:
        assert max(int(t.text.rsplit(" ", 1)[1]) for t in turns_of(split.train, c.id)) == 39
        assert min(int(t.text.rsplit(" ", 1)[1]) for t in turns_of(split.held_out, c.id)) == 40


def test_held_out_is_by_time_not_by_position_in_the_export() -> None:
    c = numbered("a", 10)
    shuffled = conv("a", [(m.sender, m.text, m.timestamp) for m in reversed(c.messages)])
    split = split_sessions([shuffled], ["Alice", "Bob"], session_gap=GAP, held_out_fraction=0.2)
    assert turns_of(split.train, "a") == as_turns(c.messages[:8])
    assert turns_of(split.held_out, "a") == as_turns(c.messages[8:])


def test_fraction_zero_holds_out_nothing() -> None:
    conversations = chat(conversations=2, messages=40)
    split = split_sessions(conversations, ["Alice", "Bob"], session_gap=GAP, held_out_fraction=0)
    assert split.held_out == []
    for c in conversations:
        assert turns_of(split.train, c.id) == as_turns(c.messages)


@pytest.mark.parametrize("fraction", [1, 1.0, 1.5, -0.1, -1])
def test_fraction_out_of_range_is_refused(fraction: float) -> None:
    with pytest.raises(InvalidArgument, match="held_out_fraction"):
        split_sessions(chat(conversations=1, messages=10), ["Alice"], session_gap=GAP, held_out_fraction=fraction)


# --- sessions ------------------------------------------------------------------------------


def test_sessions_split_only_at_gaps_longer_than_session_gap() -> None:
    gap = timedelta(hours=1)
    at = [T0, T0 + gap, T0 + 2 * gap, T0 + 3 * gap + timedelta(seconds=1), T0 + 3 * gap + timedelta(seconds=2),
          T0 + 10 * gap]
    c = conv("a", [("Alice" if i % 2 else "Bob", f"m{i}", t) for i, t in enumerate(at)])
    split = split_sessions([c], ["Alice", "Bob"], session_gap=gap, held_out_fraction=0)
    assert [[t.text for t in s.turns] for s in split.train] == [["m0", "m1", "m2"], ["m3", "m4"], ["m5"]]
    assert all(s.conversation_id == "a" and s.participants == ["Bob", "Alice"] for s in split.train)


def test_naive_and_aware_timestamps_mixed() -> None:
    """Naive local time sorts and splits as if it were UTC; nothing raises comparing the two."""
    naive = datetime(2024, 5, 1, 9, 30)
    rows = [
        ("Alice", "late naive", datetime(2024, 5, 1, 15, 0)),
        ("Bob", "aware 9:00", datetime(2024, 5, 1, 9, 0, tzinfo=UTC)),
        ("Alice", "naive 9:30", naive),
        ("Bob", "aware 10:00", datetime(2024, 5, 1, 10, 0, tzinfo=UTC)),
        ("Bob", "aware 15:10", datetime(2024, 5, 1, 15, 10, tzinfo=UTC)),
    ]
    split = split_sessions([conv("a", rows)], ["Alice"], session_gap=timedelta(hours=1), held_out_fraction=0)
    assert [[t.text for t in s.turns] for s in split.train] == [
        ["aware 9:00", "naive 9:30", "aware 10:00"],
        ["late naive", "aware 15:10"],
    ]


def test_empty_and_whitespace_messages_are_dropped_and_not_counted() -> None:
    rows = []
    for i in range(10):
        rows.append(("Bob" if i % 2 == 0 else "Alice", f"m{i}", T0 + timedelta(minutes=2 * i)))
        rows.append(("Alice", ["", " ", "\n\t", "  \n"][i % 4], T0 + timedelta(minutes=2 * i + 1)))
    split = split_sessions([conv("a", rows)], ["Alice", "Bob"], session_gap=GAP, held_out_fraction=0.2)
    # 10 non-empty messages: 2 held out (floor(20 * 0.2) = 4 would count the blanks)
    assert [t.text for t in turns_of(split.train, "a")] == [f"m{i}" for i in range(8)]
    assert [t.text for t in turns_of(split.held_out, "a")] == ["m8", "m9"]


def test_sessions_without_a_chosen_speaker_are_dropped() -> None:
    gap = timedelta(hours=1)
    rows = [
        ("Bob", "b0", T0),
        ("Carol", "c0", T0 + timedelta(minutes=5)),
        ("Bob", "b1", T0 + timedelta(hours=3)),
        ("Alice", "a0", T0 + timedelta(hours=3, minutes=1)),
        ("Carol", "c1", T0 + timedelta(hours=6)),
    ]
    for speakers, kept in (
        (["Alice"], [["b1", "a0"]]),
        (["Carol"], [["b0", "c0"], ["c1"]]),
        (["Bob", "Alice"], [["b0", "c0"], ["b1", "a0"]]),
        (["Dave"], []),
    ):
        split = split_sessions([conv("a", rows)], speakers, session_gap=gap, held_out_fraction=0)
        assert [[t.text for t in s.turns] for s in split.train] == kept, speakers


def test_split_counts_turns_by_speaker() -> None:
    split = split_sessions([numbered("a", 20)], ["Alice", "Bob"], session_gap=GAP, held_out_fraction=0.25)
    assert split.turns(["Alice"]) == (7, 3)  # Alice sends the odd ones: 1..13 train, 15, 17, 19 held out
    assert split.turns(["Bob"]) == (8, 2)
    assert split.turns(["Alice", "Bob"]) == (15, 5)



def pairs(n: int, *, prefix: str = "p", start: datetime = T0) -> list[Conversation]:
    """`n` two-message conversations (Bob asks, Alice answers), an hour apart: p0 is the earliest."""
    return [
        conv(f"{prefix}{i}", [("Bob", f"{prefix}{i} ask", start + timedelta(hours=i)),
                              ("Alice", f"{prefix}{i} answer", start + timedelta(hours=i, minutes=1))])
        for i in range(n)
    ]


def ids(sessions: list[Session]) -> set[str]:
    return {s.conversation_id for s in sessions}


def assert_whole(split: Split, conversations: list[Conversation]) -> None:
    """Each of `conversations` lies whole in exactly one part."""
    for c in conversations:
        assert (c.id in ids(split.train)) != (c.id in ids(split.held_out)), c.id
        part = split.held_out if c.id in ids(split.held_out) else split.train
        assert turns_of(part, c.id) == as_turns(c.messages)


@pytest.mark.parametrize(("fraction", "held"), [(0.01, 1), (0.1, 3), (0.25, 8), (0.3, 9), (0.5, 15), (0.9, 27)])
def test_two_message_conversations_hold_out_the_latest_whole(fraction: float, held: int) -> None:
    conversations = pairs(30)
    split = split_sessions(conversations, ["Alice"], session_gap=GAP, held_out_fraction=fraction)
    # about `fraction` of the 60 messages, whole conversations, the latest ones; at least one
    assert ids(split.held_out) == {f"p{i}" for i in range(30 - held, 30)}
    assert ids(split.train) == {f"p{i}" for i in range(30 - held)}
    assert_whole(split, conversations)
    assert split.turns(["Alice"]) == (30 - held, held)


def test_short_conversations_are_held_out_by_time_not_by_position_in_the_export() -> None:
    conversations = pairs(30)
    shuffled = conversations[::2] + conversations[1::2][::-1]
    split = split_sessions(shuffled, ["Alice"], session_gap=GAP, held_out_fraction=0.1)
    assert ids(split.held_out) == {"p27", "p28", "p29"}
    assert_whole(split, conversations)


def test_long_conversations_keep_the_tail_split_and_short_ones_go_whole() -> None:
    long = chat(conversations=2, messages=120)
    short = pairs(20, start=datetime(2024, 2, 1, tzinfo=UTC))  # before the long ones: still their latest go
    split = split_sessions(long + short, ["Alice"], session_gap=GAP, held_out_fraction=0.1)
    for c in long:
        train = [t for t in as_turns(c.messages[:108]) if t.speaker == "Alice"]
        held = [t for t in as_turns(c.messages[108:]) if t.speaker == "Alice"]
        assert [t for t in turns_of(split.train, c.id) if t.speaker == "Alice"] == train
        assert [t for t in turns_of(split.held_out, c.id) if t.speaker == "Alice"] == held
    assert ids(split.held_out) - {c.id for c in long} == {"p18", "p19"}  # 4 of the 40 short messages
    assert_whole(split, short)


def test_a_conversation_whose_tail_would_take_every_chosen_turn_is_short() -> None:
    # at 0.5 a pair spares one message: the answer, Alice's only turn there; train would keep none of hers
    split = split_sessions(pairs(30), ["Alice"], session_gap=GAP, held_out_fraction=0.5)
    assert split.turns(["Alice"]) == (15, 15)
    assert_whole(split, pairs(30))


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.99])
def test_train_keeps_a_chosen_turn(fraction: float) -> None:
    one_each = [conv(f"s{i}", [("Alice", f"s{i}", T0 + timedelta(hours=i))]) for i in range(3)]
    for conversations in (one_each, pairs(2), pairs(25), [numbered("a", 4), numbered("b", 2)]):
        split = split_sessions(conversations, ["Alice"], session_gap=GAP, held_out_fraction=fraction)
        train, held = split.turns(["Alice"])
        assert train > 0, (fraction, [c.id for c in conversations])
        assert held > 0, (fraction, [c.id for c in conversations])


def test_fraction_zero_holds_out_nothing_even_where_a_little_holds_out_some() -> None:
    conversations = chat(conversations=2, messages=40) + pairs(30) + [numbered("a", 41)]
    split = split_sessions(conversations, ["Alice"], session_gap=GAP, held_out_fraction=0)
    assert split.held_out == []
    assert split.turns(["Alice"]) == (2 * 20 + 30 + 20, 0)
    split = split_sessions(conversations, ["Alice"], session_gap=GAP, held_out_fraction=0.001)
    assert split.turns(["Alice"])[1] > 0


def test_the_split_is_deterministic() -> None:
    # every pair at the same time: ties broken by conversation id, not by the order given
    same_time = [conv(c.id, [(m.sender, m.text, T0) for m in c.messages]) for c in pairs(30)]
    shuffled = same_time[1::2] + same_time[::2][::-1]

    def held(conversations: list[Conversation]) -> list[tuple[str, list[Turn]]]:
        split = split_sessions(conversations, ["Alice"], session_gap=GAP, held_out_fraction=0.1)
        return sorted((s.conversation_id, s.turns) for s in split.held_out)

    first = held(same_time)
    assert [cid for cid, _ in first] == ["p7", "p8", "p9"]  # the greatest ids: "p9" > "p8" > "p7" > "p29"
    assert held(same_time) == first
    assert held(shuffled) == first


@pytest.mark.parametrize(("n", "held"), [(39, []), (40, ["a message 39"]), (41, ["a message 39", "a message 40"])])
def test_a_single_conversation_with_20_chosen_turns_holds_out_from_the_last(n: int, held: list[str]) -> None:
    # floor(n * 0.02) = 0: nothing to spare, but Alice (the odd messages) has 19, 20, 20 turns
    split = split_sessions([numbered("a", n)], ["Alice"], session_gap=GAP, held_out_fraction=0.02)
    assert [t.text for t in turns_of(split.held_out, "a")] == held
    assert [t.text for t in turns_of(split.train, "a")] == [f"a message {i}" for i in range(n - len(held))]


# --- tokenise ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Any]:
    lines = [f"{m.sender}: {m.text}" for c in chat() for m in c.messages] + [f"message {i}" for i in range(100)]
    chatml = [f"<|im_start|>{role}\n{line}<|im_end|>\n" for line in lines[:50] for role in ("user", "assistant")]
    chatml += ["<|im_start|>system\nA chat between Bob and Alice.<|im_end|>\n"] * 5
    _, plain = tiny_model(lines + chatml, block_size=512)
    templated = copy.deepcopy(plain)
    templated.chat_template = CHATML
    return {"plain": plain, "chat": templated}


@pytest.fixture(params=["plain-eos", "plain", "chat"])
def transcript(request: pytest.FixtureRequest, tokenizers: dict[str, Any]) -> Transcript:
    t = Transcript(tokenizers["chat" if request.param == "chat" else "plain"], ["Alice"], request.param)
    assert t.kind == request.param
    return t


def header_ids(transcript: Transcript, session: Session) -> list[int]:
    return transcript.encode(transcript.header(session.participants))


def labelled(sample: Sample) -> list[int]:
    assert len(sample.labels) == len(sample.input_ids)
    for i, label in enumerate(sample.labels):
        assert label in (IGNORE, sample.input_ids[i])  # a label is the token itself (the model shifts)
    return [label for label in sample.labels if label != IGNORE]


def trained_bodies(transcript: Transcript, session: Session, budget: int) -> list[int]:
    """What should carry the loss: each chosen speaker's turn (its first `budget` tokens) without its role header."""
    out: list[int] = []
    for t in session.turns:
        if transcript.trains(t):
            e = transcript.encode_turn(t)
            out += e.ids[e.n_head : budget]
    return out


@pytest.mark.parametrize("budget", [16, 40, 200])
def test_every_chosen_turn_is_trained_in_exactly_one_window(transcript: Transcript, budget: int) -> None:
    split = split_sessions(chat(conversations=2, messages=80), ["Alice"], session_gap=GAP, held_out_fraction=0.1)
    block_size = budget + len(header_ids(transcript, split.train[0]))
    total = 0
    for session in split.train + split.held_out:
        windows = tokenise([session], transcript, block_size)
        header = header_ids(transcript, session)
        assert windows
        for w in windows:
            assert len(w.input_ids) <= block_size
            assert w.input_ids[: len(header)] == header
            assert w.labels[: len(header)] == [IGNORE] * len(header)
        got = [token for w in windows for token in labelled(w)]
        assert got == trained_bodies(transcript, session, block_size - len(header))
        assert sum(w.trained_tokens for w in windows) == len(got)
        total += len(windows)
    # all sessions at once give the same windows, in order
    together = tokenise(split.train + split.held_out, transcript, block_size)
    assert len(together) == total


def test_chat_windows_open_with_the_system_message_and_train_no_headers(tokenizers: dict[str, Any]) -> None:
    transcript = Transcript(tokenizers["chat"], ["Alice"])
    session = Session("a", ["Bob", "Alice"], [Turn("Bob", "are you coming"), Turn("Alice", "haha yes"),
                                             Turn("Bob", "how was work"), Turn("Alice", "lol same")])
    [window] = tokenise([session], transcript, 512)
    decode = tokenizers["chat"].decode
    assert decode(window.input_ids) == transcript.text(session.turns, session.participants)
    assert decode(window.input_ids).startswith("<|im_start|>system\nA chat between Bob and Alice.<|im_end|>\n")
    assert decode(labelled(window)) == "Alice: haha yes<|im_end|>\nAlice: lol same<|im_end|>\n"


def test_plain_windows_train_the_chosen_turns_each_ended_by_eos(tokenizers: dict[str, Any]) -> None:
    transcript = Transcript(tokenizers["plain"], ["Alice"])
    assert transcript.kind == "plain-eos"
    session = Session("a", ["Bob", "Alice"], [Turn("Bob", "are you coming"), Turn("Alice", "haha yes"),
                                             Turn("Bob", "how was work"), Turn("Alice", "lol same")])
    [window] = tokenise([session], transcript, 512)
    assert tokenizers["plain"].decode(window.input_ids) == (
        "<|endoftext|>Bob: are you coming<|endoftext|>\nAlice: haha yes<|endoftext|>\n"
        "Bob: how was work<|endoftext|>\nAlice: lol same<|endoftext|>\n"
    )
    assert window.labels[0] == IGNORE  # the BOS opens every window: no trained token at position 0
    assert tokenizers["plain"].decode(labelled(window)) == "Alice: haha yes<|endoftext|>\nAlice: lol same<|endoftext|>\n"


def test_a_multi_line_message_is_one_plain_turn_trained_on_all_its_lines(tokenizers: dict[str, Any]) -> None:
    """Its later lines are no new turns, and the loss covers every line of it and the EOS that ends it."""
    tokenizer = tokenizers["plain"]
    transcript = Transcript(tokenizer, ["Alice"])
    session = Session("a", ["Bob", "Alice"], [Turn("Bob", "are you coming\nat 8?"),
                                             Turn("Alice", "haha yes\nsee you there\n\nbring snacks"),
                                             Turn("Bob", "ok")])
    [window] = tokenise([session], transcript, 512)
    assert tokenizer.decode(window.input_ids) == (
        "<|endoftext|>Bob: are you coming\nat 8?<|endoftext|>\n"
        "Alice: haha yes\nsee you there\n\nbring snacks<|endoftext|>\nBob: ok<|endoftext|>\n"
    )
    assert tokenizer.decode(labelled(window)) == "Alice: haha yes\nsee you there\n\nbring snacks<|endoftext|>\n"
    eos_at = window.input_ids.index(tokenizer.eos_token_id, 1)  # Bob's turn ends with EOS, not at its newline
    assert tokenizer.decode(window.input_ids[:eos_at]) == "<|endoftext|>Bob: are you coming\nat 8?"
    # the old "plain" rendering made "at 8?" and "see you there" look like turns of their own
    old = Transcript(tokenizer, ["Alice"], "plain")
    [window] = tokenise([session], old, 512)
    assert tokenizer.decode(labelled(window)) == "Alice: haha yes\nsee you there\n\nbring snacks\n"


def test_sessions_with_no_chosen_turn_give_no_windows(transcript: Transcript) -> None:
    session = Session("a", ["Bob", "Carol"], [Turn("Bob", "hi"), Turn("Carol", "hey")])
    assert tokenise([session], transcript, 64) == []


def _span(window: Sample, header: list[int], encoded: list[list[int]]) -> tuple[int, int]:
    """The turns [start, end) a window holds after its header (there must be exactly one match)."""
    body = window.input_ids[len(header) :]
    matches = [
        (s, e)
        for s in range(len(encoded))
        for e in range(s + 1, len(encoded) + 1)
        if sum(encoded[s:e], []) == body
    ]
    assert len(matches) == 1, matches
    return matches[0]


@pytest.mark.parametrize("turns_per_block", [2, 3, 5.5])
def test_windows_carry_as_much_earlier_context_as_fits(transcript: Transcript, turns_per_block: float) -> None:
    c = numbered("s", 40)
    [session] = split_sessions([c], ["Alice"], session_gap=GAP, held_out_fraction=0).train
    header = header_ids(transcript, session)
    encoded = [transcript.encode_turn(t).ids for t in session.turns]
    budget = int(turns_per_block * max(len(e) for e in encoded))
    block_size = budget + len(header)
    windows = tokenise([session], transcript, block_size)
    assert len(windows) > 3
    spans = [_span(w, header, encoded) for w in windows]
    for k, ((start, end), w) in enumerate(zip(spans, windows, strict=True)):
        # the window could not have taken one more earlier turn
        if start > 0:
            assert len(w.input_ids) + len(encoded[start - 1]) > block_size
        if k > 0:  # earlier turns exist and fit: the window opens with them, not with its first trained turn
            first = next(i for i, label in enumerate(w.labels) if label != IGNORE)
            assert first > len(header)
            assert len(w.input_ids) - len(header) >= budget // 2
            assert start < spans[k - 1][1] or turns_per_block < 3
        if k + 1 < len(spans):
            assert spans[k + 1][1] > end
    assert spans[0][0] == 0
    assert spans[-1][1] == len(session.turns) == 40  # the last turn is Alice's


def test_a_turn_longer_than_the_block_is_cut_not_dropped(transcript: Transcript) -> None:
    long_text = " ".join(f"word{i}" for i in range(400))
    session = Session("a", ["Bob", "Alice"], [
        Turn("Bob", "are you coming"), Turn("Alice", long_text), Turn("Bob", "how was work"), Turn("Alice", "lol same"),
    ])
    header = header_ids(transcript, session)
    budget = 48
    block_size = budget + len(header)
    windows = tokenise([session], transcript, block_size)
    assert all(len(w.input_ids) <= block_size for w in windows)
    full = transcript.encode_turn(session.turns[1])
    assert len(full.ids) > 3 * block_size
    cut = full.ids[:budget]
    # the long turn fills its window alone: header + its first `budget` tokens
    long_windows = [w for w in windows if w.input_ids[len(header) :][: len(cut)] == cut]
    assert len(long_windows) == 1
    assert long_windows[0].input_ids == header + cut
    assert labelled(long_windows[0]) == cut[full.n_head :]
    # and the turns after it are still trained
    last = transcript.encode_turn(session.turns[3])
    assert [t for w in windows for t in labelled(w)] == cut[full.n_head :] + last.ids[last.n_head :]


def test_a_block_too_small_for_the_header_is_refused(transcript: Transcript) -> None:
    session = Session("a", ["Bob", "Alice"], [Turn("Bob", "hi"), Turn("Alice", "yo")])
    n = len(header_ids(transcript, session))
    if transcript.kind == "chat":
        assert n > 8
    else:
        assert n == 1  # the BOS
    with pytest.raises(InvalidArgument, match="block size"):
        tokenise([session], transcript, n + 7)
    windows = tokenise([session], transcript, n + 8)  # eight tokens left for turns is the least allowed
    assert windows and all(len(w.input_ids) <= n + 8 for w in windows)
