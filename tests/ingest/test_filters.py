"""The processing options, each on its own and in their fixed order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from doppel.conversation import Conversation, Message
from doppel.errors import InvalidArgument
from services.ingest.dedupe import SeenIndex
from services.ingest.filters import Filters
from services.ingest.options import IngestOptions, Redaction

T0 = datetime(2024, 3, 1, 12, 0)


def conv(*turns: tuple[str, str, int], cid: str = "c1", title: str = "Chat", participants=None) -> Conversation:
    """A conversation from (sender, text, minutes after T0) turns, naive times."""
    msgs = [Message(s, t, T0 + timedelta(minutes=m)) for s, t, m in turns]
    return Conversation(cid, title, "jsonl", msgs, participants)


def run(c: Conversation, seen: SeenIndex | None = None, **options) -> tuple[list[Conversation], Filters]:
    seen = SeenIndex() if seen is None else seen
    f = Filters(IngestOptions.build(**{"min_messages": 1, "redaction": "off", **options}), seen)
    return list(f.apply(c)), f


def texts(convs):
    return [[(m.sender, m.text) for m in c.messages] for c in convs]


def test_defaults_are_what_the_service_promises():
    o = IngestOptions()
    assert (o.min_messages, o.redaction, o.keep_duplicates, o.session_gap, o.merge_window) == (
        2, Redaction.personal, False, None, None,
    )


def test_exclude_conversations_by_title_or_participant_case_insensitively():
    c = conv(("Ann", "hi", 0), ("Bob", "yo", 1), title="Family", participants=["Ann", "Bob", "Carl"])
    assert run(c, exclude_conversations=["family"])[0] == []
    assert run(c, exclude_conversations=["CARL"])[0] == []
    out, f = run(c, exclude_conversations=["Dora"])
    assert len(out) == 1 and f.counts.excluded_conversations == 0


def test_exclude_senders_drops_their_messages_and_participants():
    out, f = run(conv(("Ann", "a", 0), ("Bob", "b", 1), ("ann", "c", 2)), exclude_senders=["ANN"])
    assert texts(out) == [[("Bob", "b")]]
    assert out[0].participants == ["Bob"]
    assert f.counts.excluded_messages == 2


def test_min_messages_counts_after_filtering():
    out, f = run(conv(("Ann", "a", 0), ("Bob", "b", 1)), min_messages=3)
    assert out == [] and f.counts.too_short == 1


def test_session_gap_splits_and_names_sessions_by_their_first_message():
    c = conv(("Ann", "a", 0), ("Bob", "b", 5), ("Ann", "c", 200), ("Bob", "d", 201))
    out, _ = run(c, session_gap=timedelta(hours=1))
    assert texts(out) == [[("Ann", "a"), ("Bob", "b")], [("Ann", "c"), ("Bob", "d")]]
    assert [s.id for s in out] == ["c1@2024-03-01T12:00:00", "c1@2024-03-01T15:20:00"]


def test_merge_window_joins_one_senders_run_with_newlines():
    c = conv(("Ann", "a", 0), ("Ann", "b", 1), ("Ann", "c", 10), ("Bob", "d", 11), ("Ann", "e", 12))
    out, f = run(c, merge_window=timedelta(minutes=2))
    assert texts(out) == [[("Ann", "a\nb"), ("Ann", "c"), ("Bob", "d"), ("Ann", "e")]]
    assert out[0].messages[0].timestamp == T0
    assert f.counts.merged_messages == 1


def test_scripts_keep_conversations_mostly_in_them():
    latin = conv(("Ann", "hello there friend", 0), ("Bob", "привет", 1))
    cyrillic = conv(("Ann", "привет как дела", 0), ("Bob", "ok", 1))
    assert len(run(latin, scripts=["Latin"])[0]) == 1
    assert run(cyrillic, scripts=["Latin"])[0] == []
    assert len(run(cyrillic, scripts=["Latin", "Cyrillic"])[0]) == 1
    assert run(latin, scripts=["Latin"], script_min_fraction=0.9)[0] == []


def test_timezone_turns_naive_local_time_into_utc():
    out, _ = run(conv(("Ann", "a", 0)), timezone="Europe/Berlin")
    assert out[0].messages[0].timestamp == datetime(2024, 3, 1, 11, 0, tzinfo=UTC)


def test_redaction_happens_before_dedupe_and_storage():
    seen = SeenIndex()
    out, _ = run(conv(("Ann", "mail bob@example.com", 0)), seen, redaction="personal")
    assert texts(out) == [[("Ann", "mail <EMAIL>")]]
    again, f = run(conv(("Ann", "mail bob@example.com", 0)), seen, redaction="personal")
    assert again == [] and f.counts.duplicate_messages == 1


def test_dedupe_drops_what_was_seen_and_repeats_within_one_export():
    seen = SeenIndex()
    first, _ = run(conv(("Ann", "a", 0), ("Bob", "b", 1)), seen)
    overlap, f = run(conv(("Ann", "a", 0), ("Bob", "b", 1), ("Bob", "b", 1), ("Ann", "new", 2)), seen)
    assert texts(overlap) == [[("Ann", "new")]]
    assert f.counts.duplicate_messages == 3
    kept, _ = run(conv(("Ann", "a", 0)), seen, keep_duplicates=True)
    assert texts(kept) == [[("Ann", "a")]]
    other_chat, _ = run(conv(("Ann", "a", 0), cid="c2"), seen)
    assert texts(other_chat) == [[("Ann", "a")]]


def test_seen_index_round_trips_and_rejects_damage():
    seen = SeenIndex()
    seen.admit("c", [Message("A", "x", T0), Message("B", "y", T0)], keep_duplicates=False)
    back = SeenIndex.from_bytes(seen.to_bytes(), name="seen")
    assert len(back) == 2
    assert back.admit("c", [Message("A", "x", T0)], keep_duplicates=False) == []
    with pytest.raises(Exception, match="damaged dedupe index"):
        SeenIndex.from_bytes(b"garbage", name="seen")


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"min_messages": 0}, "min_messages"),
        ({"session_gap": timedelta(0)}, "session_gap"),
        ({"timezone": "Mars/Base"}, "timezone"),
        ({"scripts": ["Klingon"]}, "scripts"),
        ({"format": "myspace"}, "format"),
        ({"redaction": "some"}, "redaction"),
        ({"script_min_fraction": 1.5}, "script_min_fraction"),
    ],
)
def test_bad_options_name_the_option(bad, where):
    with pytest.raises(InvalidArgument, match=f"invalid ingest options: {where}"):
        IngestOptions.build(**bad)


def test_dedupe_tells_naive_from_aware_and_microseconds_apart():
    seen = SeenIndex()
    naive = Message("A", "x", datetime(2024, 1, 1, 12, 0))
    aware = Message("A", "x", datetime(2024, 1, 1, 12, 0, tzinfo=UTC))
    later = Message("A", "x", datetime(2024, 1, 1, 12, 0, 0, 1, tzinfo=UTC))
    assert seen.admit("c", [naive, aware, later], keep_duplicates=False) == [naive, aware, later]
    assert seen.admit("c", [Message("A", "x", datetime(2024, 1, 1, 12, 0))], keep_duplicates=False) == []
