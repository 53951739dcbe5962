"""Telegram Desktop JSON exports (FORMATS.md section 5): every variant, detection, damage."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from doppel.errors import ParseError
from services.ingest.parsers import detect, parser_for, telegram_stream
from services.ingest.parsers.telegram import detect as telegram_detect
from services.ingest.source import open_source
from support.parsing import MemorySource, mutations, parse_all, parse_or_parse_error, write_zip

DATA = Path(__file__).parent / "data" / "telegram"
SINGLE = (DATA / "weekend_plans.json").read_bytes()  # exporter bytes: 1-space indent, `\x0B` escapes
FULL = (DATA / "full_export.json").read_bytes()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def parse_bytes(data: bytes, name: str = "result.json"):
    return list(parser_for("telegram").parse(MemorySource({name: data})))


def chat(messages: list, **top) -> bytes:
    return orjson.dumps({"name": "Chat", "type": "personal_chat", "id": 7, **top, "messages": messages})


def msg(i: int, text, **extra) -> dict:
    base = {"id": i, "type": "message", "date": "2024-01-01T10:00:00", "date_unixtime": "1704103200",
            "from": "Ann", "from_id": "user1", "text": text}
    return {**base, **extra}


# --- the single-chat export, as the exporter writes it ------------------------------------


def test_single_chat_export_counts_senders_texts_and_times():
    fmt, convs = parse_all(MemorySource({"weekend_plans.json": SINGLE}))
    assert fmt == "telegram"
    [c] = convs
    assert (c.id, c.title, c.source_format) == ("telegram-4001", "Weekend Plans", "telegram")
    got = [(m.id, m.sender, m.text, m.timestamp, m.reply_to) for m in c.messages]
    assert got == [
        ("2", "Alice Example", "Привет, Bob 👋", utc(2024, 2, 20, 17, 2, 10), None),
        ("3", "Bob Sample", "Look at this page! Bookedhttps://example.org/x", utc(2024, 2, 20, 17, 3, 45), "2"),
        ("4", "Alice Example", "Our cabin\nview", utc(2024, 2, 20, 17, 5), None),  # photo with caption
        ("6", "Bob Sample", "Snow expected on Saturday", utc(2024, 2, 20, 17, 7), None),  # forwarded
        ("8", "user1003", "I left the app, bye", utc(2024, 2, 20, 17, 8), None),  # from: null
        ("9", "Alice Example", "tab\there\x0bvt and C:\\xfiles\\\x1f", utc(2024, 2, 20, 17, 9), None),
        ("11", "Bob Sample", "one\u2028two", utc(2024, 2, 20, 17, 11), None),
    ]
    # dropped: service (1, 12), sticker without caption (5), unsupported (7), poll with empty text (10)
    assert c.participants == ["Alice Example", "Bob Sample", "user1003"]


def test_the_exporters_x_escape_is_repaired_only_where_it_starts_an_escape():
    raw = b'{"name": "C", "type": "personal_chat", "id": 1, "messages": [' + orjson.dumps(msg(1, "X"))[:-1]
    raw = raw.replace(b'"text":"X"', rb'"text":"a\x0Bb \\x0B \\\x1Fc"') + b"}]}"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)
    [c] = parse_bytes(raw)
    assert c.messages[0].text == "a\x0bb \\x0B \\\x1fc"


def test_a_bad_escape_that_is_not_the_exporters_is_an_error_naming_the_line():
    raw = SINGLE.replace(b"Our cabin", b"Our \\q cabin")
    with pytest.raises(ParseError, match=r"weekend\.json, line 96: invalid JSON \(invalid escaped") as e:
        list(parser_for("telegram").parse(MemorySource({"weekend.json": raw}, name="weekend.json")))
    assert e.value.line == 96


# --- the full account export --------------------------------------------------------------


def assert_full_export(convs: list) -> None:
    """FULL's conversations, exactly."""
    assert [(c.id, c.title, c.source_format, c.participants) for c in convs] == [
        ("telegram-1001", "saved_messages", "telegram", ["Alice Example"]),
        ("telegram-1003", "Deleted account", "telegram", ["user1003", "Alice Example"]),
        ("telegram-9005", "Old Cabin Channel", "telegram", ["Old Cabin Channel"]),
    ]  # Bob's chat holds only a call, the bot chat nothing: both skipped
    assert [[(m.id, m.sender, m.text, m.timestamp, m.reply_to) for m in c.messages] for c in convs] == [
        [("100", "Alice Example", "note to self: buy milk", utc(2024, 3, 1, 9), None)],
        [("200", "user1003", "who am I now?", utc(2024, 3, 2, 10), None),
         ("201", "Alice Example", "a deleted account", utc(2024, 3, 2, 10, 1), "200")],
        [("5", "Old Cabin Channel", "#news cabin reopens", utc(2022, 1, 10, 8), None)],
    ]


def test_full_export_reads_chats_and_left_chats():
    fmt, convs = parse_all(MemorySource({"result.json": FULL}))
    assert fmt == "telegram"
    assert_full_export(convs)


@pytest.mark.parametrize("chunk", [1 << 20, 64, 5])
def test_full_export_streamed_from_a_zip_and_a_folder(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(telegram_stream, "CHUNK", chunk)  # many chunks: dialogs and keys cut across them
    files = {
        "DataExport_2024-03-04/result.json": FULL,
        "DataExport_2024-03-04/export_results.html": b"<html></html>",
        "DataExport_2024-03-04/chats/chat_001/photos/p.jpg": b"\xff\xd8\xff",
    }
    zpath = write_zip(tmp_path / "telegram.zip", files)
    folder = tmp_path / "DataExport"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "export.json").write_bytes(FULL)  # any name: detected from content
    for path in (zpath, folder):
        with open_source(path) as s:
            fmt, convs = parse_all(s)
            assert fmt == "telegram"
            assert_full_export(convs)


def test_a_chat_exported_twice_in_one_upload_keeps_ids_unique():
    source = MemorySource({"a/result.json": SINGLE, "b/result.json": SINGLE})
    assert [c.id for c in parser_for("telegram").parse(source)] == ["telegram-4001", "telegram-4001-2"]


def test_a_full_export_without_chats_says_so():
    raw = orjson.dumps({"about": "x", "personal_information": {"user_id": 1}, "contacts": {"about": "", "list": []}})
    with pytest.raises(ParseError, match="result.json: neither a single-chat export .* export again with chats"):
        parse_bytes(raw)


# --- message variants ---------------------------------------------------------------------


def test_old_exports_without_date_unixtime_keep_naive_local_time_and_integer_from_id():
    old = {"id": 3, "type": "message", "date": "2019-05-04T23:30:15", "from": None, "from_id": 123456, "text": "hi"}
    parts = ["a", {"type": "italic", "text": "b"}]
    named = {**old, "id": 4, "from": "Ann", "date": "2019-05-04T23:31:00", "text": parts}
    [c] = parse_bytes(chat([old, named]))
    assert [(m.sender, m.text, m.timestamp) for m in c.messages] == [
        ("123456", "hi", datetime(2019, 5, 4, 23, 30, 15)),
        ("Ann", "ab", datetime(2019, 5, 4, 23, 31)),
    ]
    assert c.messages[0].timestamp.tzinfo is None


def test_old_channel_posts_without_a_sender_are_the_channels_own():
    post = {"id": 1, "type": "message", "date": "2018-01-01T00:00:00", "text": "post"}
    [c] = parse_bytes(chat([post], name="Cabin Channel", type="public_channel"))
    assert c.messages[0].sender == "Cabin Channel"
    signed = {**post, "author": "Carol"}
    assert parse_bytes(chat([signed], name="Cabin Channel", type="private_channel"))[0].messages[0].sender == "Carol"
    with pytest.raises(ParseError, match=r"entry messages\[0\]: the message has neither 'from' nor 'from_id'"):
        parse_bytes(chat([post], type="private_group"))


def test_messages_are_sorted_by_time_and_empty_conversations_skipped():
    late = msg(1, "late", date_unixtime="1704103300")
    early = msg(2, "early", date_unixtime="1704103100")
    [c] = parse_bytes(chat([late, early, msg(3, ["", {"type": "plain", "text": ""}])]))
    assert [m.text for m in c.messages] == ["early", "late"]
    assert parse_bytes(chat([msg(1, ""), {"id": 2, "type": "unsupported"}])) == []


def test_saved_messages_and_replies_are_titled_by_type():
    raw = orjson.dumps({"type": "replies", "id": 9, "messages": [msg(1, "x")]})
    assert parse_bytes(raw)[0].title == "replies"


# --- malformed input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (SINGLE[: len(SINGLE) // 2], r"result\.json, line \d+: the file is cut off"),
        (b"[1, 2]", "top level must be a JSON object, not list"),
        (chat([msg(1, "x")]).replace(b'"messages":[', b'"messages":{"a":[') + b"}", "'messages' must be an array"),
        (chat([msg(1, 5)]), r"entry messages\[0\]: 'text' must be a string or an array, not int"),
        (chat([msg(1, [{"type": "bold"}])]), r"messages\[0\]: a 'text' part must be"),
        (chat([msg(1, "x", date_unixtime="soon")]), r"messages\[0\]: 'date_unixtime' must be a string of seconds"),
        (chat([msg(1, "x", date_unixtime=None, date=None)]), r"messages\[0\]: the message has no 'date'"),
        (chat([msg(1, "x", date_unixtime=None, date="yesterday")]), r"'date' is not an ISO date"),
        (chat([msg(1, "x", reply_to_message_id=[1])]), r"'reply_to_message_id' must be a number, not list"),
        (chat([{"id": 1, "type": "message", "date_unixtime": "1"}]), r"messages\[0\]: the message has no 'text'"),
        (chat(["hello"]), r"messages\[0\]: a message must be a JSON object, not str"),
        (chat([{"id": 1, "type": 3}]), r"the message's 'type' must be a string"),
        (chat([msg(1, "x", date_unixtime="9" * 30)]), r"messages\[0\]"),
        (orjson.dumps({"chats": {"about": "", "list": [{"id": 1, "type": "personal_chat", "messages": [5]}]}}),
         r"entry chats\.list\[0\]\.messages\[0\]: a message must be a JSON object"),
        (orjson.dumps({"chats": {"list": [3]}}), r"entry chats\.list\[0\]: a chat must be a JSON object"),
        (orjson.dumps({"chats": []}), r"entry chats: 'chats' must be an object with a 'list' array"),
        (orjson.dumps({"name": 5, "type": "personal_chat", "id": 1, "messages": []}), r"entry name"),
        (orjson.dumps({"type": "personal_chat", "messages": []}), r"entry id: the chat has no valid 'id'"),
        (SINGLE.replace("Привет".encode(), b"\xff\xfe"), r"result\.json, line 29: not UTF-8 text \(byte 0xff\)"),
    ],
)
def test_malformed_files_are_parse_errors_naming_the_file_and_place(data, match):
    with pytest.raises(ParseError, match=match) as e:
        parse_bytes(data)
    assert e.value.file == "export:result.json"


def test_errors_name_the_file_inside_a_zip(tmp_path):
    zpath = write_zip(tmp_path / "t.zip", {"ChatExport/result.json": chat([msg(1, 5)])})
    with open_source(zpath) as s, pytest.raises(ParseError) as e:
        parse_all(s)
    assert str(e.value) == (
        f"{zpath}:ChatExport/result.json, entry messages[0]: 'text' must be a string or an array, not int"
    )


def test_a_damaged_result_json_beside_a_good_one_is_reported_not_skipped():
    source = MemorySource({"a/result.json": SINGLE, "b/result.json": SINGLE[:3]})
    assert detect(source).format == "telegram"
    with pytest.raises(ParseError, match=r"export:b/result\.json, line 2: the file is cut off"):
        list(parser_for("telegram").parse(source))


def test_forcing_the_format_on_a_folder_without_telegram_files_is_a_parse_error():
    with pytest.raises(ParseError, match="no Telegram export found"):
        list(parser_for("telegram").parse(MemorySource({"a.json": b"{}", "b.txt": b"x"})))


# --- streaming a full export ------------------------------------------------------------------


class Counted(io.BytesIO):
    """A file that counts the bytes read from it."""

    n = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.n += len(data)
        return data


class StreamOnly(MemorySource):
    """Records the bytes read through each `open`; reading a whole file at once fails the test."""

    def __init__(self, files: dict[str, bytes]):
        super().__init__(files)
        self.opened: list[Counted] = []

    def open(self, path: str) -> Counted:
        f = Counted(super().open(path).getvalue())
        self.opened.append(f)
        return f

    def read(self, path: str) -> bytes:
        raise AssertionError("a whole file was read: memory would grow with the export")


def exporter_json(obj: object) -> bytes:
    """`obj` laid out as the exporter writes it (1-space indent, raw UTF-8); `<VT>` becomes its `\\x0B`."""
    return json.dumps(obj, indent=1, ensure_ascii=False).replace("<VT>", "\\x0B").encode()


def full(chats: list, left: list | None = None, **top) -> bytes:
    doc = {"about": "x", "personal_information": {"user_id": 1}, **top, "chats": {"about": "", "list": chats}}
    if left is not None:
        doc["left_chats"] = {"about": "", "list": left}
    return exporter_json(doc)


def dialog(i: int, *texts: str, kind: str = "personal_chat") -> dict:
    return {"name": f"D{i}", "type": kind, "id": i, "messages": [msg(n, t) for n, t in enumerate(texts, 1)]}


def test_a_full_export_is_streamed_never_read_whole_and_left_chats_read_from_their_key():
    source = StreamOnly({"result.json": FULL})
    assert_full_export(list(parser_for("telegram").parse(source)))
    _, chats, left = source.opened  # the shape, then one pass each for chats and left chats
    assert chats.n == len(FULL)
    assert left.n == len(FULL) - FULL.index(b'"left_chats"')  # exporter layout: starts at the key


def test_left_chats_of_an_export_in_another_layout_take_a_whole_second_pass():
    minified = orjson.dumps(orjson.loads(FULL))
    source = StreamOnly({"result.json": minified})
    assert_full_export(list(parser_for("telegram").parse(source)))
    assert [f.n for f in source.opened[1:]] == [len(minified), len(minified)]
    no_left = full([dialog(1, "hi")])
    source = StreamOnly({"result.json": no_left})
    assert [c.id for c in parser_for("telegram").parse(source)] == ["telegram-1"]
    assert len(source.opened) == 2  # no `"left_chats"` anywhere: no second pass


@pytest.mark.parametrize("chunk", [1 << 20, 64])
def test_a_full_export_cut_inside_its_second_dialog_fails_after_yielding_the_first(monkeypatch, chunk):
    monkeypatch.setattr(telegram_stream, "CHUNK", chunk)
    cut = FULL[: FULL.index(b'"who am I now?"')]  # inside chats.list[1]
    got = []
    with pytest.raises(ParseError, match=r"^export:result\.json, line 60: the file is cut off \(truncated JSON\)$"):
        for c in parser_for("telegram").parse(MemorySource({"result.json": cut})):
            got.append(c.id)
    assert cut.count(b"\n") + 1 == 60
    assert got == ["telegram-1001"]  # yielded before the end was reached; the parse still fails (nothing is kept)


ESCAPES = full([dialog(1, "a<VT>b", "\\<VT>", "\\\\x0B", "<VT><VT>", "\\\\\\<VT>end")])


@pytest.mark.parametrize("chunk", [*range(1, 10), 4096])
def test_the_x_escape_is_repaired_across_chunk_boundaries(monkeypatch, chunk):
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(ESCAPES)
    monkeypatch.setattr(telegram_stream, "CHUNK", chunk)
    [c] = parse_bytes(b"\xef\xbb\xbf" + ESCAPES)  # and a BOM, cut by small chunks too
    assert [m.text for m in c.messages] == ["a\x0bb", "\\\x0b", "\\\\x0B", "\x0b\x0b", "\\\\\\\x0bend"]


@settings(max_examples=300, deadline=None)
@given(st.text("\\x01AFaf\" ", max_size=40).map(str.encode), st.integers(1, 9))
def test_the_repair_is_the_whole_file_repair_wherever_chunks_end(data, chunk):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(telegram_stream, "CHUNK", chunk)
        with telegram_stream.ResultStream(MemorySource({"r.json": data}), "r.json") as stream:
            out = b"".join(iter(lambda: stream.read(chunk), b""))
    assert out == telegram_stream._X_ESCAPE.sub(rb"\1\\u00\2", data)


@pytest.mark.parametrize("chunk", [1 << 20, 64, 5])
def test_stream_errors_name_the_line(monkeypatch, chunk):
    monkeypatch.setattr(telegram_stream, "CHUNK", chunk)
    bad = FULL.replace(b'"reply_to_message_id": 200,', b'"reply_to_message_id": 200,,')
    with pytest.raises(ParseError, match=r"result\.json, line 75: invalid JSON \(invalid object key") as e:
        parse_bytes(bad)
    assert bad[: bad.index(b",,")].count(b"\n") + 1 == e.value.line == 75
    utf8 = FULL.replace(b"buy milk", b"buy \xff milk")
    with pytest.raises(ParseError, match=r"result\.json, line 38: not UTF-8 text \(byte 0xff\)$"):
        parse_bytes(utf8)


def test_an_error_whose_excerpt_repeats_in_the_chunk_is_quoted_instead_of_given_a_line():
    text = "pad " * 12 + "<LX>" + " pad" * 12  # `\\x1f`, lowercase: not the exporter's, not repaired
    raw = full([dialog(1, text, text)]).replace(b"<LX>", b"\\x1f")
    with pytest.raises(ParseError, match=r"result\.json: invalid JSON \(.*\) near 'pad pad") as e:
        parse_bytes(raw)
    assert e.value.line is None


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", r"result\.json: the file is empty$"),
        (b" \n\t", r"result\.json: the file is empty$"),
        (b'"x"', "the top level must be a JSON object, not str"),
        (b"5", "the top level must be a JSON object, not int"),
        (b"null", "the top level must be a JSON object, not null"),
        (b'{"name": "N"}', "neither a single-chat export"),
        (chat([msg(1, "x")]).replace(b'"id":7', b'"id":' + b"9" * 30), r"invalid JSON \(integer overflow\)"),
        (full([dialog(1, "x")]) + b" {}", r"line 27: invalid JSON \(trailing garbage\)"),
        (chat([msg(1, "<S>")]).replace(b"<S>", b"\xed\xa0\x80"), r"line 1: not UTF-8 text \(byte 0xed\)"),
        (full([dialog(1, "<S>")]).replace(b"<S>", b"\xed\xa0\x80"), r"result\.json: not UTF-8 text \(byte 0xed\)$"),
        (full([dialog(1, "x")])[:-5] + b"\\x0", r"result\.json, line \d+: invalid JSON"),
        (orjson.dumps({"chats": {"list": {}}}), r"entry chats: 'chats' must be an object with a 'list' array"),
        (orjson.dumps({"chats": {"about": "x"}}), r"entry chats: 'chats' must be an object with a 'list' array"),
        (orjson.dumps({"chats": {"list": []}, "left_chats": []}), "entry left_chats: 'left_chats' must be an"),
        (exporter_json({"about": "", "chats": {"list": [dialog(1, "x")]}, "left_chats": 5}), "entry left_chats: 'left"),
    ],
)
def test_malformed_streams_are_parse_errors(data, match):
    with pytest.raises(ParseError, match=match):
        parse_bytes(data)


def test_a_read_failure_mid_stream_is_a_parse_error_naming_the_file():
    class Failing(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            if self.tell() > 1000:
                raise OSError(5, "Input/output error")
            return super().read(100)

    class Source(MemorySource):
        def open(self, path: str) -> Failing:
            return Failing(super().open(path).getvalue())

    with pytest.raises(ParseError, match=r"^export:result\.json: cannot read the file \(\[Errno 5\] Input/output"):
        list(parser_for("telegram").parse(Source({"result.json": FULL})))


def test_section_keys_that_are_only_words_in_texts_or_empty_lists_are_fine():
    left_only = exporter_json({"about": "x", "left_chats": {"about": "", "list": [dialog(9, "chats", "left_chats")]}})
    assert [[m.text for m in c.messages] for c in parse_bytes(left_only)] == [["chats", "left_chats"]]
    assert parse_bytes(full([], left=[])) == []
    text_left = full([dialog(1, '"left_chats"')])  # the bytes `"left_chats"`, escaped in a text
    assert [c.id for c in parse_bytes(text_left)] == ["telegram-1"]


def test_chats_and_left_chats_in_any_order_around_the_other_keys():
    doc = {"left_chats": {"about": "", "list": [dialog(2, "l")]}, "about": "x", "chats": {"list": [dialog(1, "c")]},
           "personal_information": {"user_id": 1}}
    assert [c.id for c in parse_bytes(exporter_json(doc))] == ["telegram-1", "telegram-2"]



# --- detection ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "files",
    [
        {"weekend_plans.json": SINGLE},
        {"export.txt": SINGLE},  # unusual name, right content
        {"DataExport_2024/result.json": FULL, "DataExport_2024/export_results.html": b"<html/>"},
        {"result.json": b'{\n "about": "x",\n "personal_information": {\n  "user_id": 1'},  # cut-off head
        {"result.json": orjson.dumps({"name": "N", "type": "public_channel", "id": 1, "messages": []})},
        {"r.json": b"\xef\xbb\xbf" + chat([msg(1, "x")])},
    ],
)
def test_detected_from_content(files):
    source = MemorySource(files)
    assert telegram_detect(source)
    assert detect(source).format == "telegram"


DISCORD_JSON = orjson.dumps({
    "guild": {"id": "1", "name": "G"}, "channel": {"id": "2", "name": "general", "type": "GuildTextChat"},
    "messages": [{"id": "3", "type": "Default", "timestamp": "2024-01-01T00:00:00+00:00", "content": "hi",
                  "author": {"id": "4", "name": "ann", "discriminator": "0000"}}], "messageCount": 1,
})
MESSENGER = orjson.dumps({"participants": [{"name": "A"}], "messages": [
    {"sender_name": "A", "timestamp_ms": 1, "content": "x"}], "title": "A", "thread_path": "inbox/a_1"})
E2EE = orjson.dumps({"threadName": "A", "participants": ["A"], "messages": [
    {"senderName": "A", "text": "x", "timestamp": 1, "type": "text"}]})


@pytest.mark.parametrize(
    "files",
    [
        {"result.json": b'{"status": "ok", "result": [1, 2, 3]}'},  # right name, wrong content
        {"result.json": b'{"messages": [{"text": "hi", "date": "2024"}]}'},  # no Telegram key
        {"settings.json": b'{"chats": {"muted": true}, "theme": "dark"}'},  # a `chats` object, no `about`
        {"channel.json": DISCORD_JSON},
        {"messages/inbox/a_1/message_1.json": MESSENGER},
        {"A_1.json": E2EE},
        {"channels.json": b'[{"id": "C1", "name": "general"}]', "users.json": b"[]",
         "general/2024-01-01.json": b'[{"type": "message", "user": "U1", "text": "from_id", "ts": "1.0"}]'},
        {"_chat.txt": b"[01/02/2024, 10:00:00] Ann: hi\n"},
        {"data.jsonl": b'{"conversation": "c", "sender": "a", "text": "messages", "timestamp": "2024-01-01"}\n'},
    ],
)
def test_not_detected_for_other_content(files):
    assert not telegram_detect(MemorySource(files))


def test_detect_never_raises():
    class Broken(MemorySource):
        def head(self, path, n=0):
            raise OSError("disk on fire")

    assert not telegram_detect(Broken({"result.json": SINGLE}))


# --- robustness ---------------------------------------------------------------------------


SMALL = chat([msg(1, ["a ", {"type": "text_link", "text": "b", "href": "h"}], reply_to_message_id=1),
              {"id": 2, "type": "service", "date": "2024-01-01T10:00:00", "actor": "A", "text": ""},
              msg(3, "c\\x", date_unixtime=None, from_id=5, **{"from": None})])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(*map(mutations, (SMALL, SINGLE, FULL, ESCAPES))), st.sampled_from([1 << 20, 7]))
def test_mutated_exports_parse_or_raise_parse_error(data, chunk):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(telegram_stream, "CHUNK", chunk)
        result = parse_or_parse_error(MemorySource({"result.json": data}), "telegram")
    assert isinstance(result, (list, ParseError))
    telegram_detect(MemorySource({"result.json": data}))  # never raises


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_parse_or_raise_parse_error(data):
    parse_or_parse_error(MemorySource({"result.json": data}), "telegram")
    parse_or_parse_error(MemorySource({"a/result.json": data, "b.txt": b""}), "telegram")
