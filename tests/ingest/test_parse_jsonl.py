"""Doppel's own JSONL: exactly what `inspect --messages` prints, read back."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from doppel.errors import ParseError
from services.ingest.parsers import detect, parser_for
from services.ingest.source import open_source
from support.parsing import MemorySource, jsonl_export, mutations, parse_all, parse_or_parse_error, write_zip

DATA = Path(__file__).parent / "data"

VALID = jsonl_export(
    ("family", "Mum", "dinner at 7?", "2024-05-01T17:00:00+02:00"),
    ("family", "Leo", "yes 👍\nbring dessert?", "2024-05-01T15:01:00Z"),
    ("work", "Leo", "naïve local time", "2024-05-02T09:00:00"),
    ("family", "Mum", "sure", "2024-05-01T15:00:30Z"),
)


def test_lines_group_into_conversations_sorted_with_exact_times():
    fmt, convs = parse_all(MemorySource({"mine.jsonl": VALID}))
    assert fmt == "jsonl"
    # a conversation is handed on when its last line is read: "work" ends on line 3, "family" on 4
    assert [(c.id, c.title, c.source_format) for c in convs] == [("work", "work", "jsonl"), ("family", "family", "jsonl")]
    work, family = convs
    assert [(m.sender, m.text, m.timestamp) for m in family.messages] == [
        ("Mum", "dinner at 7?", datetime(2024, 5, 1, 15, 0, tzinfo=UTC)),
        ("Mum", "sure", datetime(2024, 5, 1, 15, 0, 30, tzinfo=UTC)),
        ("Leo", "yes 👍\nbring dessert?", datetime(2024, 5, 1, 15, 1, tzinfo=UTC)),
    ]
    assert work.messages[0].timestamp == datetime(2024, 5, 2, 9, 0)  # naive stays naive
    assert family.participants == ["Mum", "Leo"]


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


def test_a_conversation_that_reappears_later_is_merged_and_titled_by_its_first_title():
    data = jsonl_export(
        ("a", "Ann", "one", "2024-01-01T10:00:00Z"),
        ("b", "Bo", "other", "2024-01-01T09:00:00Z"),
        ("a", "Bo", "zero", "2024-01-01T09:59:00Z"),
    ) + b'{"conversation":"a","title":"Late title","sender":"Ann","text":"two","timestamp":"2024-01-01T10:01:00Z"}\n'
    data += b'{"conversation":"a","title":"Ignored","sender":"Ann","text":"three","timestamp":"2024-01-01T10:02:00Z"}\n'
    convs = list(parser_for("jsonl").parse(MemorySource({"x.jsonl": data})))
    assert [(c.id, c.title, [m.text for m in c.messages]) for c in convs] == [
        ("b", "b", ["other"]), ("a", "Late title", ["zero", "one", "two", "three"])]


def test_conversations_spanning_several_files_merge_and_ids_stay_unique(tmp_path):
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "1.jsonl").write_bytes(jsonl_export(("a", "Ann", "x", "2024-01-01T10:00:00Z")))
    (tmp_path / "exports" / "2.jsonl").write_bytes(
        jsonl_export(("a", "Bo", "y", "2024-01-01T09:00:00Z"), ("b", "Bo", "z", "2024-01-01T09:00:00")))
    with open_source(tmp_path / "exports") as source:
        fmt, convs = parse_all(source)
    assert fmt == "jsonl"
    assert [(c.id, [(m.sender, m.text) for m in c.messages]) for c in convs] == [
        ("a", [("Bo", "y"), ("Ann", "x")]), ("b", [("Bo", "z")])]
    with open_source(write_zip(tmp_path / "e.zip", {"in/x.jsonl": VALID, "in/photo.jpg": b"\xff\xd8"})) as source:
        assert [c.id for c in parse_all(source)[1]] == ["work", "family"]


class _Stream(io.BytesIO):
    """Remembers how far it was read when closed."""

    read_to = -1

    def close(self):
        if not self.closed:
            self.read_to = self.tell()
        super().close()

    def position(self) -> int:
        return self.read_to if self.closed else self.tell()


class _Counting(MemorySource):
    """Keeps every stream it opens, to see how far parsing has read."""

    def __init__(self, files):
        super().__init__(files)
        self.streams: list[_Stream] = []

    def open(self, path):
        stream = _Stream(self._get(path))
        self.streams.append(stream)
        return stream


def test_contiguous_conversations_are_handed_on_before_the_rest_is_read():
    rows = [(f"c{i}", "Ann", f"m{j}", f"2024-01-01T10:0{j}:00Z") for i in range(50) for j in range(3)]
    data = jsonl_export(*rows)
    source = _Counting({"x.jsonl": data})
    conversations = parser_for("jsonl").parse(source)
    first = next(conversations)
    assert first.id == "c0" and [m.text for m in first.messages] == ["m0", "m1", "m2"]
    checked, building = source.streams[-2:]  # (before them: detection's peek at the head)
    assert checked.position() == len(data)  # the first pass checked everything before anything was yielded
    assert building.position() < len(data) // 4  # the second pass is still near the start
    assert len(list(conversations)) == 49


def test_a_bad_line_at_the_end_yields_nothing_at_all():
    conversations = parser_for("jsonl").parse(MemorySource({"x.jsonl": VALID + b'{"conversation": 1}\n'}))
    with pytest.raises(ParseError, match="'conversation' must be a string") as err:
        next(conversations)
    assert err.value.line == 5


def test_crlf_lines_and_optional_nulls_are_accepted():
    data = (b'{"conversation":"c","sender":"A","text":"x\\r\\ny","timestamp":"2024-01-01T00:00:00+00:00",'
            b'"title":null,"reply_to":null,"id":null}\r\n\r\n')
    [c] = list(parser_for("jsonl").parse(MemorySource({"x.jsonl": data})))
    assert (c.title, c.messages[0].text, c.messages[0].reply_to) == ("c", "x\r\ny", None)
    assert c.messages[0].timestamp == datetime(2024, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("key, value", [("title", 5), ("reply_to", ["x"]), ("id", 7), ("conversation", None)])
def test_wrong_types_of_optional_and_required_keys_are_errors(key, value):
    import orjson

    line = {"conversation": "c", "sender": "A", "text": "x", "timestamp": "2024-01-01T00:00:00Z", key: value}
    with pytest.raises(ParseError, match=f"'{key}' must be a string") as err:
        list(parser_for("jsonl").parse(MemorySource({"x.jsonl": VALID + orjson.dumps(line) + b"\n"})))
    assert err.value.line == 5 and err.value.file == "export:x.jsonl"


def test_bad_utf8_is_an_error_naming_the_line():
    with pytest.raises(ParseError, match="invalid JSON") as err:
        list(parser_for("jsonl").parse(MemorySource({"x.jsonl": VALID.replace(b"sure", b"s\xffre")})))
    assert err.value.line == 4


def test_forcing_jsonl_on_something_else_is_an_error_not_an_empty_result():
    with pytest.raises(ParseError, match="no Doppel JSONL"):
        list(parser_for("jsonl").parse(MemorySource({"x.txt": b"hello\n"})))


@pytest.mark.parametrize(
    "path",
    ["discord_json/Plant Club - Text Channels - general [900000000000000010].json",
     "discord_csv/Plant Club - Text Channels - general [900000000000000010].csv",
     "reddit_pairs/toastme_pairs.csv", "telegram/full_export.json", "whatsapp/WhatsApp Chat with Ann Lee.txt"],
)
def test_other_formats_are_not_claimed_and_jsonl_is_not_claimed_by_them(path):
    assert not parser_for("jsonl").detect(MemorySource({"x": (DATA / path).read_bytes()}))
    assert detect(MemorySource({"discord.json": VALID})).format == "jsonl"


@pytest.mark.parametrize("export", ["discord_json", "discord_csv", "reddit_pairs"])
def test_what_inspect_messages_prints_reads_back_as_the_same_messages(export, tmp_path):
    from typer.testing import CliRunner

    from doppel.cli.main import app

    with open_source(DATA / export) as source:
        original = parse_all(source)[1]
    result = CliRunner().invoke(app, ["inspect", str(DATA / export), "--messages"])
    assert result.exit_code == 0, result.output
    (tmp_path / "out.jsonl").write_text(result.stdout, encoding="utf-8")
    with open_source(tmp_path / "out.jsonl") as source:
        fmt, back = parse_all(source)
    assert fmt == "jsonl"
    assert {c.id: [(m.sender, m.text, m.timestamp) for m in c.messages] for c in back} == {
        c.id: [(m.sender, m.text, m.timestamp) for m in c.messages] for c in original}


@settings(max_examples=200, deadline=None)
@given(data=mutations(VALID))
def test_damaged_files_parse_or_fail_cleanly(data):
    parse_or_parse_error(MemorySource({"x.jsonl": data}), "jsonl")


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes_parse_or_fail_cleanly(data):
    parse_or_parse_error(MemorySource({"x.jsonl": data}), "jsonl")
