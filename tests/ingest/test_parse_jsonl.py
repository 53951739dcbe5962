"""Doppel's own JSONL: exactly what `inspect --messages` prints, read back."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from doppel.errors import ParseError
from support.parsing import MemorySource, jsonl_export, mutations, parse_all, parse_or_parse_error

VALID = jsonl_export(
    ("family", "Mum", "dinner at 7?", "2024-05-01T17:00:00+02:00"),
    ("family", "Leo", "yes 👍\nbring dessert?", "2024-05-01T15:01:00Z"),
    ("work", "Leo", "naïve local time", "2024-05-02T09:00:00"),
    ("family", "Mum", "sure", "2024-05-01T15:00:30Z"),
)


def test_lines_group_into_conversations_sorted_with_exact_times():
    fmt, convs = parse_all(MemorySource({"mine.jsonl": VALID}))
    assert fmt == "jsonl"
    assert [(c.id, c.title, c.source_format) for c in convs] == [("family", "family", "jsonl"), ("work", "work", "jsonl")]
    assert [(m.sender, m.text, m.timestamp) for m in convs[0].messages] == [
        ("Mum", "dinner at 7?", datetime(2024, 5, 1, 15, 0, tzinfo=UTC)),
        ("Mum", "sure", datetime(2024, 5, 1, 15, 0, 30, tzinfo=UTC)),
        ("Leo", "yes 👍\nbring dessert?", datetime(2024, 5, 1, 15, 1, tzinfo=UTC)),
    ]
    assert convs[1].messages[0].timestamp == datetime(2024, 5, 2, 9, 0)  # naive stays naive
    assert convs[0].participants == ["Mum", "Leo"]


def test_optional_keys_bom_and_blank_lines():
    data = b"\xef\xbb\xbf" + b'{"conversation":"c","title":"Trip","sender":"A","text":"x","timestamp":"2024-01-01T00:00:00Z","id":"1"}\n\n'
    data += b'{"conversation":"c","sender":"B","text":"y","timestamp":"2024-01-01T00:01:00Z","reply_to":"1"}'
    _, [c] = parse_all(MemorySource({"x.txt": data}))
    assert c.title == "Trip" and c.messages[0].id == "1" and c.messages[1].reply_to == "1"


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"[1, 2]", "must be a JSON object, not list"),
        (b'{"conversation":"c","sender":"A","timestamp":"2024-01-01T00:00:00Z"}', "'text' is missing"),
        (b'{"conversation":"c","sender":5,"text":"x","timestamp":"2024-01-01T00:00:00Z"}', "'sender' must be a string"),
        (b'{"conversation":"c","sender":"A","text":"","timestamp":"2024-01-01T00:00:00Z"}', "'text' is empty"),
        (b'{"conversation":"c","sender":"A","text":"x","timestamp":"yesterday"}', "is not ISO-8601"),
        (b'{"conversation":"c","sender":"A","text":"x",', "invalid JSON"),
    ],
)
def test_a_bad_line_is_an_error_naming_file_and_line(line, reason):
    with pytest.raises(ParseError, match=reason) as err:
        parse_all(MemorySource({"mine.jsonl": VALID + line + b"\n"}), "jsonl")
    assert err.value.file == "export:mine.jsonl" and err.value.line == 5


def test_a_cut_off_file_says_so():
    with pytest.raises(ParseError, match="cut off") as err:
        parse_all(MemorySource({"mine.jsonl": VALID[:-15]}), "jsonl")
    assert err.value.line == 4


def test_detection_needs_the_fields_not_the_name():
    assert parse_all(MemorySource({"notes.jsonl": VALID}))[0] == "jsonl"
    other = b'{"event": "login", "user": "x"}\n'
    with pytest.raises(Exception, match="not a supported chat export"):
        parse_all(MemorySource({"log.jsonl": other}))


@settings(max_examples=200, deadline=None)
@given(data=mutations(VALID))
def test_damaged_files_parse_or_fail_cleanly(data):
    parse_or_parse_error(MemorySource({"x.jsonl": data}), "jsonl")


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes_parse_or_fail_cleanly(data):
    parse_or_parse_error(MemorySource({"x.jsonl": data}), "jsonl")
