"""Dataset stats, the manifest's JSON form, and the store layout's keys and ids."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from doppel import layout
from doppel.conversation import Conversation, Message, read_conversations, write_conversations
from doppel.dataset import DatasetManifest, DatasetStats, ParticipantStat, SourceExport, StatsAccumulator
from doppel.errors import InvalidArgument, ParseError, quote


def conv(cid: str, *msgs: tuple[str, datetime]) -> Conversation:
    return Conversation(cid, cid, "whatsapp", [Message(s, "text", t) for s, t in msgs])


def hand_made() -> list[Conversation]:
    return [
        conv(
            "a",
            ("Ann", datetime(2023, 12, 31, 23, 30)),  # naive local time
            ("Bob", datetime(2024, 1, 1, 0, 30)),
            ("Ann", datetime(2024, 1, 5, 9, 0)),
        ),
        conv(
            "b",
            ("Cy", datetime(2024, 3, 1, 8, 0, tzinfo=UTC)),
            ("Bob", datetime(2024, 2, 29, 23, 0, tzinfo=UTC)),  # out of order on purpose
            ("Ann", datetime(2024, 3, 2, 1, 0, tzinfo=timezone(timedelta(hours=2)))),  # 2024-03-01T23:00Z
            ("Cy", datetime(2024, 3, 2, 0, 0, 0, 1, tzinfo=UTC)),
        ),
        conv("empty"),
    ]


def test_stats_accumulator_exact_counts():
    acc = StatsAccumulator()
    for c in hand_made():
        acc.add(c)
    stats = acc.result()
    assert stats == DatasetStats(
        conversations=3,
        messages=7,
        participants={"Ann": 3, "Bob": 2, "Cy": 2},
        first=datetime(2023, 12, 31, 23, 30),
        last=datetime(2024, 3, 2, 0, 0, 0, 1, tzinfo=UTC),
        timeline={"2023-12": 1, "2024-01": 2, "2024-02": 1, "2024-03": 3},
    )
    assert list(stats.participants) == ["Ann", "Bob", "Cy"]  # ties broken by name
    assert list(stats.timeline) == ["2023-12", "2024-01", "2024-02", "2024-03"]
    assert stats.first.tzinfo is None and stats.last.tzinfo is UTC
    assert stats.participant_list() == [
        ParticipantStat(name="Ann", messages=3),
        ParticipantStat(name="Bob", messages=2),
        ParticipantStat(name="Cy", messages=2),
    ]


def test_stats_from_a_streamed_shard_match():
    buf = io.BytesIO()
    write_conversations(buf, hand_made())
    buf.seek(0)
    acc = StatsAccumulator()
    for c in read_conversations(buf, name="s"):
        acc.add(c)
    direct = StatsAccumulator()
    for c in hand_made():
        direct.add(c)
    assert acc.result() == direct.result()


def test_mixed_naive_and_aware_compare_naive_as_utc():
    acc = StatsAccumulator()
    acc.add(conv("x", ("A", datetime(2024, 1, 1, 12, 0)), ("B", datetime(2024, 1, 1, 11, 0, tzinfo=UTC))))
    acc.add(conv("y", ("A", datetime(2024, 1, 1, 13, 0, tzinfo=UTC)), ("B", datetime(2024, 1, 1, 14, 0))))
    stats = acc.result()
    assert stats.first == datetime(2024, 1, 1, 11, 0, tzinfo=UTC) and stats.first.tzinfo is UTC
    assert stats.last == datetime(2024, 1, 1, 14, 0) and stats.last.tzinfo is None


def test_empty_stats():
    stats = StatsAccumulator().result()
    assert stats == DatasetStats() and stats.first is None and stats.messages == 0


def test_stats_sort_what_they_are_given():
    stats = DatasetStats(participants={"z": 1, "m": 5, "a": 5}, timeline={"2024-02": 1, "2023-11": 2})
    assert list(stats.participants) == ["a", "m", "z"]
    assert list(stats.timeline) == ["2023-11", "2024-02"]


# --- the manifest --------------------------------------------------------------------------


def manifest() -> DatasetManifest:
    acc = StatsAccumulator()
    for c in hand_made():
        acc.add(c)
    sha = "ab" * 32
    return DatasetManifest(
        id="ds-20240101-000000-abcdef01",
        name="Family chat 👪",
        created_at=datetime(2024, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        updated_at=datetime(2024, 1, 2, 3, 0, tzinfo=timezone(timedelta(hours=3))),
        sources=[
            SourceExport(
                key=layout.raw_export_key(sha), sha256=sha, size_bytes=1234, filename="Chat.zip", format="whatsapp"
            )
        ],
        parser_version="whatsapp/1",
        options={"min_messages": 2, "exclude_senders": ["Meta AI"], "session_gap_s": 3600.0},
        stats=acc.result(),
        files=[layout.shard_name(0), layout.shard_name(1)],
        warnings=["line 12: unknown system message kept as text"],
    )


def test_manifest_json_round_trip():
    m = manifest()
    back = DatasetManifest.from_json(m.to_json(), name="datasets/x/manifest.json")
    assert back == m
    assert back.updated_at == datetime(2024, 1, 2, 0, 0, tzinfo=UTC) and back.updated_at.tzinfo is UTC
    assert back.stats.first.tzinfo is None and back.stats.last.tzinfo is UTC
    assert list(back.stats.participants) == list(m.stats.participants)
    assert back.files == ["conversations-00000.jsonl.zst", "conversations-00001.jsonl.zst"]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "Invalid JSON"),
        (b'{"id": "ds-1", "name": ', "Invalid JSON"),
        (b"[]", "should be an object"),
        (b'{"id": "ds-1"}', "name: Field required"),
        (b"REPLACE_ID", "invalid dataset id '../etc'"),
        (b"REPLACE_MESSAGES", "stats.messages"),
        (b"REPLACE_FILES", "not a key relative"),
    ],
)
def test_broken_manifest_is_a_parse_error_naming_the_file(data, words):
    good = manifest().to_json()
    replacements = {
        b"REPLACE_ID": good.replace(b'"ds-20240101-000000-abcdef01"', b'"../etc"'),
        b"REPLACE_MESSAGES": good.replace(b'"messages": 7', b'"messages": "seven"'),
        b"REPLACE_FILES": good.replace(b'"conversations-00001.jsonl.zst"', b'"../other/x.zst"'),
    }
    data = replacements.get(data, data)
    with pytest.raises(ParseError) as info:
        DatasetManifest.from_json(data, name="datasets/ds-1/manifest.json")
    err = info.value
    assert err.file == "datasets/ds-1/manifest.json" and str(err).startswith("datasets/ds-1/manifest.json: ")
    assert words in err.reason


# --- layout and ids ------------------------------------------------------------------------


def test_keys():
    assert layout.dataset_prefix("ds-1") == "datasets/ds-1/"
    assert layout.manifest_key("ds-1") == "datasets/ds-1/manifest.json"
    assert layout.shard_key("ds-1", 0) == "datasets/ds-1/conversations-00000.jsonl.zst"
    assert layout.shard_key("ds-1", 42) == "datasets/ds-1/conversations-00042.jsonl.zst"
    assert layout.raw_export_key("0f" * 32) == "raw/" + "0f" * 32
    assert layout.run_prefix("run_7") == "runs/run_7/"
    assert layout.model_prefix("M-1") == "models/M-1/"
    assert layout.validate_id("a" * 64) == "a" * 64


@pytest.mark.parametrize("bad", ["", "a" * 65, "a/b", "..", "a b", "café", "x\n", "a.b", None])
@pytest.mark.parametrize(
    "fn", [layout.dataset_prefix, layout.manifest_key, layout.run_prefix, layout.model_prefix, layout.validate_id]
)
def test_bad_ids_are_rejected_by_name(fn, bad):
    with pytest.raises(InvalidArgument) as info:
        fn(bad)
    assert quote(bad) in str(info.value)  # a long one shortened, with its length


@pytest.mark.parametrize("bad", ["AB" * 32, "ab" * 31, "../" + "a" * 61, ""])
def test_bad_sha256_is_rejected(bad):
    with pytest.raises(InvalidArgument, match="sha256"):
        layout.raw_export_key(bad)


def test_bad_shard_number():
    with pytest.raises(InvalidArgument, match="-1"):
        layout.shard_key("ds", -1)


def test_new_id_shape_and_uniqueness():
    ids = {layout.new_id("ds") for _ in range(2000)}
    assert len(ids) == 2000
    for i in ids:
        assert re.fullmatch(r"ds-\d{8}-\d{6}-[0-9a-f]{8}", i)
        assert layout.validate_id(i) == i
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{8}", layout.new_id())
    with pytest.raises(InvalidArgument, match="prefix"):
        layout.new_id("bad prefix")
    with pytest.raises(InvalidArgument, match="too long"):
        layout.new_id("x" * 50)


def test_new_ids_sort_by_creation_time(monkeypatch):
    times = iter(
        [
            datetime(2026, 11, 22, 5, 30, 12, tzinfo=UTC),
            datetime(2026, 11, 22, 5, 30, 13, tzinfo=UTC),
            datetime(2027, 1, 1, tzinfo=UTC),
        ]
    )

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):
            return next(times)

    monkeypatch.setattr(layout, "datetime", Clock)
    made = [layout.new_id("run") for _ in range(3)]
    assert made[0].startswith("run-20261122-053012-")
    assert sorted(made) == made
