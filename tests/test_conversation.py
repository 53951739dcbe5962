"""The conversation model and its zstd JSONL codec: exact round trips, streaming, broken input."""

from __future__ import annotations

import base64
import io
import random
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from doppel.conversation import (
    READ_CHUNK,
    Conversation,
    ConversationWriter,
    Message,
    conversation_to_dict,
    format_timestamp,
    message_from_dict,
    message_to_dict,
    parse_timestamp,
    read_conversations,
    write_conversations,
)
from doppel.errors import InvalidArgument, ParseError

TRICKY = [
    "👩\u200d👩\u200d👧 family",  # ZWJ sequence
    "50\u00a0km and 9\u202fam",  # NBSP, NNBSP
    "cafe\u0301 vs caf\u00e9",  # decomposed vs composed: never normalised
    "\u200eLTR mark \u202b embedding",
    "line one\nline two\r\nline three\r",
    'quotes " and \\ backslashes \t tab \x00 nul',
    "separators \u2028 \u2029 \x85 \x0b \x0c",
    "ﬁ ligature, Ｆｕｌｌｗｉｄｔｈ, ²",
]


def encode(convs: list[Conversation]) -> bytes:
    buf = io.BytesIO()
    write_conversations(buf, convs)
    return buf.getvalue()


def decode(data: bytes, name: str = "shard.jsonl.zst") -> list[Conversation]:
    return list(read_conversations(io.BytesIO(data), name=name))


def raw_zstd(payload: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(payload)


def sample() -> list[Conversation]:
    t = datetime(2024, 3, 1, 12, 0, 0, 123456)
    msgs = [
        Message(f"Sender {i % 3}", text, t + timedelta(minutes=i), id=f"m{i}") for i, text in enumerate(TRICKY)
    ]
    msgs[2].reply_to = "m1"
    aware = [
        Message("Zoë 👩\u200d💻", "hi", datetime(2023, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        Message("Bob", "yo", datetime(2024, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=5, minutes=30)))),
        Message("Bob", "no micro", datetime(2024, 1, 1, 2, 0, tzinfo=UTC), reply_to="x"),
    ]
    return [
        Conversation("wa-1", "Family 👪", "whatsapp", msgs),
        Conversation("m-2", "", "messenger", aware, participants=["Bob", "Zoë 👩\u200d💻", "Carol"]),
        Conversation("empty", "no messages", "telegram", []),
    ]


# --- the model -------------------------------------------------------------------------------


def test_aware_timestamps_become_utc_and_naive_stay_naive():
    ist = timezone(timedelta(hours=5, minutes=30))
    m = Message("a", "b", datetime(2024, 1, 1, 5, 30, tzinfo=ist))
    assert m.timestamp.tzinfo is UTC and m.timestamp == datetime(2024, 1, 1, 0, 0, tzinfo=UTC)
    n = Message("a", "b", datetime(2024, 1, 1, 5, 30))
    assert n.timestamp.tzinfo is None and n.timestamp == datetime(2024, 1, 1, 5, 30)


def test_participants_derived_in_first_appearance_order():
    t = datetime(2024, 1, 1)
    msgs = [Message(s, "x", t) for s in ["Cleo", "Abe", "Cleo", "Bea", "Abe"]]
    c = Conversation("c", "t", "slack", msgs)
    assert c.participants == ["Cleo", "Abe", "Bea"]
    given_list = Conversation("c", "t", "slack", msgs, participants=["Abe"])
    assert given_list.participants == ["Abe"] and given_list.senders() == ["Cleo", "Abe", "Bea"]


def test_messages_are_slotted():
    m = Message("a", "b", datetime(2024, 1, 1))
    with pytest.raises(AttributeError):
        m.extra = 1  # type: ignore[attr-defined]


# --- timestamps ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-02T03:04:05Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02T03:04:05.123456+00:00", datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)),
        ("2024-01-02T08:34:05+05:30", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-01T22:00:00-05:00", datetime(2024, 1, 2, 3, 0, tzinfo=UTC)),
        ("2024-01-02T03:04:05.000001", datetime(2024, 1, 2, 3, 4, 5, 1)),
    ],
)
def test_parse_timestamp(text, expected):
    got = parse_timestamp(text)
    assert got == expected
    assert (got.tzinfo is None) == (expected.tzinfo is None)
    assert got.tzinfo in (None, UTC)


@pytest.mark.parametrize(
    "bad",
    ["", "yesterday", "2024-13-01T00:00:00", "2024-01-02T25:00:00", "0001-01-01T00:00:00+01:00", 1704164645, None],
)
def test_parse_timestamp_rejects_garbage(bad):
    with pytest.raises(ValueError):
        parse_timestamp(bad)


def test_format_timestamp():
    assert format_timestamp(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2024-01-02T03:04:05Z"
    assert format_timestamp(datetime(2024, 1, 2, 3, 4, 5, 120)) == "2024-01-02T03:04:05.000120"
    plus_one = timezone(timedelta(hours=1))
    assert format_timestamp(datetime(2024, 1, 2, 4, 4, 5, tzinfo=plus_one)) == "2024-01-02T03:04:05Z"


# --- round trips ---------------------------------------------------------------------------


def test_codec_round_trip_is_exact():
    convs = sample()
    back = decode(encode(convs))
    assert back == convs
    for c, b in zip(convs, back, strict=True):
        assert b.participants == c.participants
        for m, n in zip(c.messages, b.messages, strict=True):
            assert n.text.encode() == m.text.encode()
            assert n.sender.encode() == m.sender.encode()
            assert n.timestamp.tzinfo is m.timestamp.tzinfo  # None or UTC, never mixed up
            assert n.timestamp.microsecond == m.timestamp.microsecond


def test_optional_fields_are_left_out_and_lines_match_message_to_dict():
    convs = sample()
    lines = zstandard.ZstdDecompressor().decompressobj().decompress(encode(convs)).split(b"\n")
    assert lines[-1] == b"" and len(lines) == len(convs) + 1
    for c, line in zip(convs, lines, strict=False):
        obj = orjson.loads(line)
        assert obj == conversation_to_dict(c)
    first = orjson.loads(lines[1])["messages"][0]
    assert set(first) == {"sender", "text", "timestamp"}
    assert first["timestamp"] == "2023-12-31T23:59:59.999999Z"
    assert orjson.loads(lines[0])["messages"][0]["timestamp"] == "2024-03-01T12:00:00.123456"


def test_message_dict_round_trip_ignores_unknown_keys():
    d = {"conversation": "chat", "sender": "A", "text": "hi", "timestamp": "2024-01-02T03:04:05+01:00"}
    m = message_from_dict(d)
    assert m == Message("A", "hi", datetime(2024, 1, 2, 2, 4, 5, tzinfo=UTC))
    assert message_to_dict(m) == {"sender": "A", "text": "hi", "timestamp": "2024-01-02T02:04:05Z"}


@pytest.mark.parametrize(
    ("obj", "words"),
    [
        ({"text": "x", "timestamp": "2024-01-01T00:00:00"}, "'sender'"),
        ({"sender": 3, "text": "x", "timestamp": "2024-01-01T00:00:00"}, "'sender' must be a string"),
        ({"sender": "a", "text": "x", "timestamp": "nope"}, "bad timestamp 'nope'"),
        ({"sender": "a", "text": "x", "timestamp": "2024-01-01T00:00:00", "id": 5}, "'id' must be a string"),
        (["a", "x"], "must be a JSON object"),
    ],
)
def test_message_from_dict_says_what_is_wrong(obj, words):
    with pytest.raises(ValueError, match=words):
        message_from_dict(obj)


texts = st.one_of(st.text(), st.text(alphabet="\u200d\u00a0\u202f\u2028👩👧e\u0301\n\r\t\"\\\x00 "))
offsets = st.timedeltas(min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59))
naive_times = st.datetimes()
aware_times = st.datetimes(
    min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.builds(timezone, offsets)
)
messages = st.builds(
    Message,
    sender=st.text(min_size=1),
    text=texts,
    timestamp=st.one_of(naive_times, aware_times),
    reply_to=st.none() | st.text(),
    id=st.none() | st.text(),
)


@given(st.lists(messages, max_size=20))
def test_property_message_round_trip(msgs):
    back = decode(encode([Conversation("c", "t", "jsonl", msgs)]))
    assert len(back) == 1 and back[0].messages == msgs
    for m, n in zip(msgs, back[0].messages, strict=True):
        assert n.timestamp.tzinfo is m.timestamp.tzinfo
        assert n.text.encode() == m.text.encode()
        assert message_from_dict(message_to_dict(m)) == m


@given(st.one_of(naive_times, aware_times))
def test_property_timestamp_round_trip_and_codec_agrees(dt):
    s = format_timestamp(dt)
    back = parse_timestamp(s)
    assert back == dt and (back.tzinfo is None) == (dt.tzinfo is None)
    # the codec lets orjson format datetimes; it must write exactly what format_timestamp does
    line = orjson.dumps(Message("a", "b", dt).timestamp, option=orjson.OPT_UTC_Z)
    assert orjson.loads(line) == s


# --- streaming -----------------------------------------------------------------------------


class CountingReader(io.RawIOBase):
    """A binary file object that counts the bytes handed out."""

    def __init__(self, data: bytes):
        self._buf = io.BytesIO(data)
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        b = self._buf.read(size)
        self.consumed += len(b)
        return b


def big_conversations(n: int) -> list[Conversation]:
    rng = random.Random(7)
    t = datetime(2022, 5, 1, tzinfo=UTC)
    return [
        Conversation(
            f"c{i}",
            f"chat {i}",
            "discord_json",
            [
                Message(f"p{j % 2}", base64.b64encode(rng.randbytes(150)).decode(), t + timedelta(seconds=j))
                for j in range(20)
            ],
        )
        for i in range(n)
    ]


def test_writer_streams_into_the_file_object():
    convs = big_conversations(200)
    out = io.BytesIO()
    seen_at_100 = []

    def produce():
        for i, c in enumerate(convs):
            if i == 100:
                seen_at_100.append(out.tell())
            yield c

    assert write_conversations(out, produce()) == 200
    assert seen_at_100[0] > 0, "nothing reached the file object before the input was exhausted"
    assert seen_at_100[0] < out.tell()
    assert decode(out.getvalue()) == convs


def test_reader_is_lazy():
    convs = big_conversations(200)
    data = encode(convs)
    assert len(data) > 4 * READ_CHUNK
    src = CountingReader(data)
    it = read_conversations(src, name="lazy")
    assert src.consumed == 0
    assert next(it) == convs[0]
    assert 0 < src.consumed <= len(data) // 2
    assert [convs[0], *it] == convs
    assert src.consumed == len(data)


def test_incremental_writer_counts_and_closes_once():
    out = io.BytesIO()
    convs = sample()
    with ConversationWriter(out, name="w") as w:
        for c in convs:
            w.write(c)
    assert (w.conversations, w.messages) == (3, len(TRICKY) + 3)
    assert not out.closed
    with pytest.raises(ValueError, match="closed"):
        w.write(convs[0])
    assert decode(out.getvalue()) == convs


def test_empty_and_concatenated_streams():
    assert decode(encode([])) == []
    a, b = sample()[:1], sample()[1:]
    assert decode(encode(a) + encode(b)) == a + b


def test_unwritable_text_is_an_invalid_argument():
    bad = Conversation("c-9", "t", "jsonl", [Message("a", "lone \ud800 surrogate", datetime(2024, 1, 1))])
    with pytest.raises(InvalidArgument, match="c-9"):
        encode([bad])


# --- broken input --------------------------------------------------------------------------


def read_until_error(data: bytes, name: str = "shard.jsonl.zst") -> tuple[list[Conversation], ParseError]:
    got: list[Conversation] = []
    with pytest.raises(ParseError) as info:
        for c in read_conversations(io.BytesIO(data), name=name):
            got.append(c)
    return got, info.value


@pytest.mark.parametrize("cut", [1, 4, 5, 1000, 0.5, 0.9])
def test_truncated_stream_names_the_line(cut):
    convs = big_conversations(40)
    data = encode(convs)
    keep = int(len(data) * cut) if isinstance(cut, float) else len(data) - cut
    got, err = read_until_error(data[:keep])
    assert got == convs[: len(got)]  # a cut checksum loses no line, but still fails at the end
    assert err.file == "shard.jsonl.zst" and err.line == len(got) + 1
    assert "shard.jsonl.zst" in str(err) and f"line {err.line}" in str(err)


def test_frame_cut_between_lines_is_still_truncated():
    out = io.BytesIO()
    w = zstandard.ZstdCompressor().stream_writer(out, closefd=False)
    w.write(orjson.dumps(conversation_to_dict(sample()[0])) + b"\n")
    w.flush(zstandard.FLUSH_BLOCK)  # every line complete, frame never ended
    got, err = read_until_error(out.getvalue())
    assert len(got) == 1 and err.line == 2 and "truncated" in err.reason


def test_writer_abandoned_by_an_exception_reads_as_truncated():
    out = io.BytesIO()
    with pytest.raises(RuntimeError), ConversationWriter(out) as w:
        w.write(sample()[0])
        raise RuntimeError("parser failed")
    with pytest.raises(ParseError, match="truncated"):
        decode(out.getvalue())


def test_corrupt_compressed_bytes():
    convs = big_conversations(40)
    data = bytearray(encode(convs))
    mid = len(data) // 2
    data[mid : mid + 8] = bytes(b ^ 0xFF for b in data[mid : mid + 8])
    got, err = read_until_error(bytes(data))
    assert got == convs[: len(got)] and len(got) < len(convs)
    assert err.line == len(got) + 1


def test_bad_json_and_bad_shape_name_the_line():
    good = orjson.dumps(conversation_to_dict(sample()[0])) + b"\n"
    got, err = read_until_error(raw_zstd(good + b'{"id": "x", "title": \n'))
    assert len(got) == 1 and err.line == 2 and "JSON" in err.reason
    no_sender = (
        b'{"id":"x","title":"t","source_format":"f","messages":[{"text":"a","timestamp":"2024-01-01T00:00:00"}]}\n'
    )
    got, err = read_until_error(raw_zstd(good + good + no_sender))
    assert len(got) == 2 and err.line == 3 and "'sender'" in err.reason and "'x'" in err.reason
    got, err = read_until_error(raw_zstd(b"[1, 2]\n"))
    assert err.line == 1 and "JSON object" in err.reason


def test_not_zstd_empty_and_trailing_garbage(tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_bytes(b'{"id": "x"}\n')
    with path.open("rb") as f, pytest.raises(ParseError) as info:
        list(read_conversations(f))
    assert info.value.file == str(path) and info.value.line == 1
    _, err = read_until_error(b"")
    assert err.line == 1 and "empty" in err.reason
    data = encode(sample())
    got, err = read_until_error(data + b"garbage")
    assert len(got) == 3 and err.line == 4
