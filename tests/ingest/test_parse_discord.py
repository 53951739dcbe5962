"""DiscordChatExporter JSON and CSV (FORMATS.md section 3): every variant, detection, damage."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from doppel.errors import ParseError
from services.ingest.parsers import REGISTRY, detect, parser_for
from services.ingest.source import open_source
from support.parsing import MemorySource, mutations, parse_all, parse_or_parse_error, write_zip

DATA = Path(__file__).parent / "data"
JSON_DIR, CSV_DIR = DATA / "discord_json", DATA / "discord_csv"
PLANT_JSON = "Plant Club - Text Channels - general [900000000000000010].json"
DM_JSON = "Direct Messages - Private - kveta [500000000000000020].json"
PLANT_CSV = "Plant Club - Text Channels - general [900000000000000010].csv"
DM_CSV = "Direct Messages - Private - Birch [300000000000000050].csv"
CSV_HEADER = b"AuthorID,Author,Date,Content,Attachments,Reactions\r\n"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def rows(m):
    return [(x.sender, x.text, x.timestamp) for x in m.messages]


def parse(fmt: str, files: dict[str, bytes]):
    return list(parser_for(fmt).parse(MemorySource(files)))


def channel(*messages: dict, count: bool = True, channel_id: str = "42") -> bytes:
    doc: dict = {
        "guild": {"id": "1", "name": "Guild", "iconUrl": ""},
        "channel": {"id": channel_id, "type": "GuildTextChat", "category": "Text", "name": "chat", "topic": None},
        "dateRange": {"after": None, "before": None},
        "exportedAt": "2024-01-01T00:00:00+00:00",
        "messages": list(messages),
    }
    if count:
        doc["messageCount"] = len(messages)
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2)


def msg(content="hi", kind="Default", ts="2024-01-01T10:00:00+00:00", name="ann", disc="0000", mid="7", **extra):
    return {"id": mid, "type": kind, "timestamp": ts, "content": content,
            "author": {"id": "9", "name": name, "discriminator": disc, "isBot": False}, **extra}


def csv_file(*lines: str, header: bytes = CSV_HEADER, eol: str = "\r\n") -> bytes:
    return header + "".join(line + eol for line in lines).encode()


def row(content: str, date: str = "2024-02-14T19:03:11.5230000+01:00", author: str = "ann") -> str:
    q = content.replace('"', '""')
    return f'"1","{author}","{date}","{q}","",""'


# --- JSON: the fixture exports ----------------------------------------------------------------


def test_json_folder_of_two_channels_gives_exact_messages():
    with open_source(JSON_DIR) as source:
        fmt, convs = parse_all(source)
    assert fmt == "discord_json"
    assert [(c.id, c.title, c.source_format, c.participants) for c in convs] == [
        ("discord-500000000000000020", "Direct Messages / kveta", "discord_json", ["Květa#7734", "Tomáš#0001"]),
        ("discord-900000000000000010", "Plant Club / general", "discord_json", ["fern", "moss#0420"]),
    ]
    dm, plant = convs
    # pre-2021 export: every non-ASCII character escaped (\u00E1, \u0161, surrogate pair for 😀); Call dropped
    assert rows(dm) == [
        ("Květa#7734", "Ahoj, jak se máš? 😀", utc(2020, 3, 15, 17, 4, 5, 123000)),
        ("Tomáš#0001", "Dobře, díky ❤️ „uvidíme“", utc(2020, 3, 15, 17, 11)),
    ]
    assert [m.id for m in dm.messages] == ["500000000000000101", "500000000000000103"]
    # current export: BMP raw, astral as upper-case surrogate escapes; join, pin, bot, "20", attachment-only dropped
    assert [(m.id, m.sender, m.text, m.timestamp, m.reply_to) for m in plant.messages] == [
        ("900000000000000101", "fern", "hi all, café ☕ 🌱", utc(2022, 5, 27, 3, 19, 27, 384000), None),
        ("900000000000000102", "moss#0420", "welcome @Fern! 😉", utc(2022, 5, 27, 3, 20), "900000000000000101"),
        ("900000000000000107", "fern", "line one\nline two  ", utc(2022, 5, 27, 3, 25, 0, 123456), None),
    ]
    assert all(m.timestamp.tzinfo is UTC for m in plant.messages)


def test_json_in_a_zip_through_open_source(tmp_path):
    files = {f"export/{p.name}": p.read_bytes() for p in JSON_DIR.iterdir()}
    with open_source(write_zip(tmp_path / "discord.zip", files)) as source:
        fmt, convs = parse_all(source)
    assert fmt == "discord_json"
    assert [(c.id, len(c.messages)) for c in convs] == [
        ("discord-500000000000000020", 2), ("discord-900000000000000010", 3)]


def test_json_single_file_under_any_name_is_detected(tmp_path):
    path = tmp_path / "backup.dat"
    path.write_bytes((JSON_DIR / PLANT_JSON).read_bytes())
    with open_source(path) as source:
        fmt, [conv] = parse_all(source)
    assert (fmt, conv.id, len(conv.messages)) == ("discord_json", "discord-900000000000000010", 3)


# --- JSON: variants -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    ["RecipientAdd", "RecipientRemove", "Call", "ChannelNameChange", "ChannelIconChange", "ChannelPinnedMessage",
     "GuildMemberJoin", "ThreadCreated", "20", "19", "46"],
)
def test_json_keeps_only_default_and_reply_kinds(kind):
    [conv] = parse("discord_json", {"c.json": channel(msg("kept", "Default", mid="1"), msg("x", kind, mid="2"),
                                                        msg("also", "Reply", mid="3"))})
    assert [m.text for m in conv.messages] == ["kept", "also"]


@pytest.mark.parametrize(
    "author, sender",
    [
        ({"name": "ann", "discriminator": "0000"}, "ann"),
        ({"name": "ann", "discriminator": "0420"}, "ann#0420"),
        ({"name": "ann", "discriminator": "0001", "nickname": "Annie"}, "ann#0001"),
        ({"name": "ann"}, "ann"),
    ],
)
def test_json_sender_is_name_plus_discriminator_unless_0000(author, sender):
    m = msg()
    m["author"] = {"id": "9", "isBot": False, **author}
    [conv] = parse("discord_json", {"c.json": channel(m)})
    assert conv.messages[0].sender == sender


@pytest.mark.parametrize(
    "ts, expected",
    [
        ("2020-07-04T15:49:15+00:00", utc(2020, 7, 4, 15, 49, 15)),
        ("2020-07-04T15:49:15.02+00:00", utc(2020, 7, 4, 15, 49, 15, 20000)),
        ("2022-05-26T23:19:27.384-04:00", utc(2022, 5, 27, 3, 19, 27, 384000)),
        ("2022-05-26T23:19:27.123456+05:30", utc(2022, 5, 26, 17, 49, 27, 123456)),
        ("2022-05-26T23:19:27.1234567+01:00", utc(2022, 5, 26, 22, 19, 27, 123456)),
        ("2022-05-26T23:19:27Z", utc(2022, 5, 26, 23, 19, 27)),
    ],
)
def test_json_timestamps_with_any_fraction_become_utc(ts, expected):
    [conv] = parse("discord_json", {"c.json": channel(msg(ts=ts))})
    assert conv.messages[0].timestamp == expected and conv.messages[0].timestamp.tzinfo is UTC


def test_json_surrogate_escapes_in_either_case_and_raw_utf8_decode_the_same():
    base = channel(msg("PLACEHOLDER"))
    for spelled in (b"\\uD83D\\uDE09 \\u010D", b"\\ud83d\\ude09 \\u010d", "😉 č".encode()):
        [conv] = parse("discord_json", {"c.json": base.replace(b"PLACEHOLDER", spelled)})
        assert conv.messages[0].text == "😉 č"


def test_json_messages_are_sorted_and_empty_bot_and_forward_messages_dropped():
    bot = msg("beep", mid="4")
    bot["author"]["isBot"] = True
    forward = msg("", mid="5", reference={"type": "Forward", "messageId": "99"})
    convs = parse("discord_json", {"c.json": channel(
        msg("second", ts="2024-01-01T10:05:00+00:00", mid="2"),
        msg("first", ts="2024-01-01T11:00:00+02:00", mid="1"),  # 09:00 UTC
        msg("", mid="3", attachments=[{"id": "1", "url": "u", "fileName": "a.png", "fileSizeBytes": 1}]),
        bot, forward,
        msg("reply", kind="Reply", ts="2024-01-01T10:06:00+00:00", mid="6", reference={"messageId": "2"}),
    )})
    assert [(m.id, m.text, m.reply_to) for m in convs[0].messages] == [
        ("1", "first", None), ("2", "second", None), ("6", "reply", "2")]


def test_json_a_channel_of_only_system_messages_gives_no_conversation():
    assert parse("discord_json", {"c.json": channel(msg("Joined the server.", "GuildMemberJoin"))}) == []


def test_json_partitions_of_one_channel_merge_into_one_conversation():
    files = {
        "G - C - chat [42].json": channel(msg("one", ts="2024-01-01T10:00:00+00:00", mid="1")),
        "G - C - chat [42] [part 2].json": channel(msg("two", ts="2024-01-02T10:00:00+00:00", mid="2")),
        "G - C - chat [42] (2024-01-03 to 2024-02-01) [part 3].json":
            channel(msg("three", ts="2024-01-03T10:00:00+00:00", mid="3")),
        "G - C - other [43].json": channel(msg("else", mid="4"), channel_id="43"),
    }
    convs = parse("discord_json", files)
    assert [(c.id, [m.text for m in c.messages]) for c in convs] == [
        ("discord-42", ["one", "two", "three"]), ("discord-43", ["else"])]


def test_json_a_repeated_message_id_counts_once_and_is_noted(tmp_path):
    """The first message of each id is kept, in a file and across the files of one channel."""
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "G - C - chat [42].json").write_bytes(channel(
        msg("first", ts="2024-01-01T10:00:00+00:00", mid="1"),
        msg("first, edited", ts="2024-01-01T10:00:00+00:00", mid="1"),
        msg("second", ts="2024-01-01T10:01:00+00:00", mid="2"),
        msg("first", ts="2024-01-01T10:00:00+00:00", mid="1"),
    ))
    (folder / "G - C - chat [42] (2024-01-01 to 2024-02-01).json").write_bytes(channel(
        msg("second", ts="2024-01-01T10:01:00+00:00", mid="2"), msg("third", ts="2024-01-02T10:00:00+00:00", mid="3"),
    ))
    with open_source(folder) as src:
        [c] = parser_for("discord_json").parse(src)
        warnings = list(src.warnings)
    assert [(m.id, m.text) for m in c.messages] == [("1", "first"), ("2", "second"), ("3", "third")]
    # files are read in path order: the date-range file first, so its "second" is the one kept
    assert warnings == [f"{folder}/G - C - chat [42].json: 3 messages dropped whose id an earlier message has (the first kept)"]

def test_json_the_same_channel_under_two_unrelated_names_keeps_ids_unique():
    convs = parse("discord_json", {"a.json": channel(msg("x")), "b.json": channel(msg("y"))})
    assert [c.id for c in convs] == ["discord-42", "discord-42-2"]


def test_json_is_read_message_by_message_in_dce_layout_and_whole_otherwise(monkeypatch):
    import json

    import services.ingest.parsers.discord as discord

    data = (JSON_DIR / PLANT_JSON).read_bytes()
    expected = parse("discord_json", {"c.json": data})
    doc = orjson.loads(data)
    others = [orjson.dumps(doc), json.dumps(doc, indent=4).encode(),
              json.dumps(doc, indent=2, ensure_ascii=False).encode(),
              data.replace(b'\n    {\n      "id": "900000000000000103"', b'\n    {"id": "900000000000000103"')]
    for other in others:  # compact, 4-space, Python's 2-space, a hand-edited message: same result
        assert [(c.id, c.title, c.messages) for c in parse("discord_json", {"c.json": other})] == [
            (c.id, c.title, c.messages) for c in expected]

    def whole(*args):
        raise AssertionError("DCE's own layout must not need the whole-file parse")

    monkeypatch.setattr(discord, "load_json", whole)
    assert [c.messages for c in parse("discord_json", {"c.json": data})] == [c.messages for c in expected]
    windows = data.replace(b"\n", b"\r\n")  # .NET writes Environment.NewLine: CRLF on Windows
    assert [c.messages for c in parse("discord_json", {"c.json": windows})] == [c.messages for c in expected]
    assert [c.messages for c in parse("discord_json", {"c.json": channel(msg("x"))})][0][0].text == "x"


def test_json_damage_inside_one_message_is_reported_by_the_whole_file_parse():
    data = (JSON_DIR / PLANT_JSON).read_bytes().replace(b'"content": "line one', b'"content": line one', 1)
    with pytest.raises(ParseError, match="invalid JSON") as err:
        parse("discord_json", {"c.json": data})
    assert err.value.line == data[: data.index(b'"content": line one')].count(b"\n") + 1


# --- JSON: damage ---------------------------------------------------------------------------


def test_json_without_message_count_is_truncated():
    with pytest.raises(ParseError, match="messageCount.*cut off") as err:
        parse("discord_json", {"c.json": channel(msg(), count=False)})
    assert err.value.file == "export:c.json"


def test_json_cut_off_in_the_middle_says_so():
    data = (JSON_DIR / PLANT_JSON).read_bytes()
    with pytest.raises(ParseError, match="cut off") as err:
        parse("discord_json", {PLANT_JSON: data[: len(data) // 2]})
    assert err.value.file == f"export:{PLANT_JSON}" and err.value.line is not None


@pytest.mark.parametrize(
    "bad, entry, reason",
    [
        ({"type": "Default", "timestamp": "2024-01-01T00:00:00+00:00", "content": "x"}, "messages[1]",
         "missing 'author'"),
        (msg(ts="yesterday"), "messages[1]", "bad timestamp 'yesterday'"),
        (msg(ts="0001-01-01T00:30:00+01:00"), "messages[1]", "bad timestamp '0001"),
        (msg(content=5), "messages[1]", "'content' is not a string"),
        ({**msg(), "author": "ann"}, "messages[1]", "malformed message"),
        ({**msg(), "author": {"name": 5}}, "messages[1]", "not a string"),
        ("just a string", "messages[1]", "malformed message"),
        (msg(kind=None), "messages[1]", "'type' is not a string"),
    ],
)
def test_json_a_malformed_message_names_file_and_entry(bad, entry, reason):
    with pytest.raises(ParseError, match=reason) as err:
        parse("discord_json", {"c.json": channel(msg(), bad)})
    assert err.value.file == "export:c.json" and err.value.entry == entry


def test_json_a_wrong_header_is_an_error():
    data = channel(msg()).replace(b'"name": "chat"', b'"name": null')
    with pytest.raises(ParseError, match="guild/channel") as err:
        parse("discord_json", {"c.json": data})
    assert err.value.file == "export:c.json"


def test_json_bad_utf8_names_file_and_line():
    data = channel(msg("PLACEHOLDER")).replace(b"PLACEHOLDER", b"caf\xe9")
    with pytest.raises(ParseError, match="not UTF-8") as err:
        parse("discord_json", {"c.json": data})
    assert err.value.file == "export:c.json" and err.value.line == data[: data.index(b"\xe9")].count(b"\n") + 1


def test_forcing_discord_json_on_something_else_is_an_error_not_an_empty_result():
    with pytest.raises(ParseError, match="no DiscordChatExporter JSON"):
        parse("discord_json", {"notes.json": b'{"hello": 1}'})


# --- CSV: the fixture exports ---------------------------------------------------------------


def test_csv_iso_dates_crlf_quotes_and_system_rows():
    fmt, [conv] = parse_all(MemorySource({PLANT_CSV: (CSV_DIR / PLANT_CSV).read_bytes()}))
    assert (fmt, conv.id, conv.title, conv.source_format) == (
        "discord_csv", "discord-900000000000000010", "Plant Club - Text Channels - general", "discord_csv")
    # dropped: "Joined the server.", attachment-only, the call, "Added … to the group.", channel rename
    assert rows(conv) == [
        ("fern", 'hi "plant people", how are you?', utc(2023, 11, 20, 20, 6)),
        ("moss#0420", "multi\nline\n\n  indented reply", utc(2023, 11, 20, 20, 7, 30, 500000)),
        ("Ivy 🌿", "Pinned a message. (not really, just saying)", utc(2023, 11, 20, 20, 12, 0, 999999)),
        ("Ivy 🌿", "sent with --utc", utc(2023, 11, 20, 20, 59)),
    ]
    assert conv.participants == ["fern", "moss#0420", "Ivy 🌿"]
    assert all(m.id is None and m.reply_to is None for m in conv.messages)


def test_csv_semicolon_header_of_dce_2_15_with_old_dates_is_naive_and_sorted():
    fmt, [conv] = parse_all(MemorySource({DM_CSV: (CSV_DIR / DM_CSV).read_bytes()}))
    assert (fmt, conv.id, conv.title) == (
        "discord_csv", "discord-300000000000000050", "Direct Messages - Private - Birch")
    assert rows(conv) == [
        ("Birch#2222", "almost\nthere", datetime(2019, 12, 31, 23, 59)),
        ("Rowan#1111", "happy new year; all", datetime(2020, 1, 1, 1, 33)),
        ("Birch#2222", 'same "to" you', datetime(2020, 1, 1, 12, 5)),
    ]  # "Left the group." dropped; 12:30 AM was 00:30 of Jan 2


def test_csv_folder_and_zip_through_open_source(tmp_path):
    with open_source(CSV_DIR) as source:
        fmt, convs = parse_all(source)
    assert fmt == "discord_csv" and [(c.id, len(c.messages)) for c in convs] == [
        ("discord-300000000000000050", 3), ("discord-900000000000000010", 4)]
    files = {f"dce/{p.name}": p.read_bytes() for p in CSV_DIR.iterdir()}
    files["dce/media/monstera.jpg"] = b"\xff\xd8\xff\xe0 not really a jpeg"
    with open_source(write_zip(tmp_path / "csv.zip", files)) as source:
        assert [(c.id, len(c.messages)) for c in parse_all(source)[1]] == [
            ("discord-300000000000000050", 3), ("discord-900000000000000010", 4)]


# --- CSV: variants --------------------------------------------------------------------------


def test_csv_oldest_header_without_author_id():
    data = b'Author;Date;Content;Attachments;Reactions;\n"Rowan#1111";"05-Mar-19 09:07 PM";"old; times";"";"";\n'
    [conv] = parse("discord_csv", {"log.csv": data})
    assert rows(conv) == [("Rowan#1111", "old; times", datetime(2019, 3, 5, 21, 7))]


def test_csv_semicolon_rows_without_the_trailing_separator_are_accepted():
    data = b'AuthorID;Author;Date;Content;Attachments;Reactions;\n"1";"a";"05-Mar-19 09:07 AM";"x";"";""\n'
    assert rows(parse("discord_csv", {"x.csv": data})[0]) == [("a", "x", datetime(2019, 3, 5, 9, 7))]


@pytest.mark.parametrize(
    "date, expected",
    [
        ("01-Jan-20 01:33 AM", datetime(2020, 1, 1, 1, 33)),  # <= 2.37 default dd-MMM-yy hh:mm tt
        ("15-Sep-21 12:00 AM", datetime(2021, 9, 15, 0, 0)),
        ("15-Sep-21 12:45 PM", datetime(2021, 9, 15, 12, 45)),
        ("02/14/2023 07:03 PM", datetime(2023, 2, 14, 19, 3)),  # 2.38-2.40 MM/dd/yyyy h:mm tt
        ("02/14/2023 7:03 PM", datetime(2023, 2, 14, 19, 3)),
        ("9/7/2023 2:34 PM", datetime(2023, 9, 7, 14, 34)),  # 2.41-2.42.2 culture "g", en-US
        ("07/09/2023 14:34", datetime(2023, 9, 7, 14, 34)),  # "g" en-GB: day first, 24 h
        ("07.09.2023 14:34", datetime(2023, 9, 7, 14, 34)),  # "g" de-DE
        ("2023-09-07 14:34", datetime(2023, 9, 7, 14, 34)),  # "g" sv-SE
        ("2023/09/07 14:34", datetime(2023, 9, 7, 14, 34)),  # "g" ja-JP
        ("2024-02-14T19:03:11.5230000+01:00", utc(2024, 2, 14, 18, 3, 11, 523000)),  # >= 2.42.3 ISO "o"
        ("2024-02-14T19:03:11.0000000-05:00", utc(2024, 2, 15, 0, 3, 11)),
        ("2024-02-14T19:03:11.1234567+00:00", utc(2024, 2, 14, 19, 3, 11, 123456)),
    ],
)
def test_csv_every_historical_date_format(date, expected):
    [conv] = parse("discord_csv", {"x.csv": csv_file(row("hey", date))})
    ts = conv.messages[0].timestamp
    assert ts == expected and ts.tzinfo is expected.tzinfo


def test_csv_lf_and_crlf_rows_give_the_same_messages():
    lines = (row("a\nb"), row("c", "2024-02-14T19:04:00.0000000+01:00"))
    crlf = parse("discord_csv", {"x.csv": csv_file(*lines)})
    lf = parse("discord_csv", {"x.csv": csv_file(*lines, header=CSV_HEADER.replace(b"\r\n", b"\n"), eol="\n")})
    assert rows(crlf[0]) == rows(lf[0]) == [("ann", "a\nb", utc(2024, 2, 14, 18, 3, 11, 523000)),
                                            ("ann", "c", utc(2024, 2, 14, 18, 4))]


def test_csv_embedded_crlf_becomes_lf_but_a_lone_cr_stays():
    [conv] = parse("discord_csv", {"x.csv": csv_file(row("a\r\nb\rc"))})
    assert conv.messages[0].text == "a\nb\rc"


@pytest.mark.parametrize(
    "text",
    ["Added a recipient.", "Added bob#0001 to the group.", "Left the group.", "Removed a recipient.",
     "Removed Bob Smith from the group.", "Started a call that lasted 0 minutes.",
     "Started a call that lasted 1,234 minutes.", "Changed the channel name: lounge 🛋", "Changed the channel name.",
     "Changed the channel icon.", "Pinned a message.", "Started a thread.", "Joined the server."],
)
def test_csv_system_fallback_texts_are_dropped(text):
    [conv] = parse("discord_csv", {"x.csv": csv_file(row(text), row("real"))})
    assert [m.text for m in conv.messages] == ["real"]


@pytest.mark.parametrize(
    "text",
    ["Pinned a message", "pinned a message.", "Left the group. bye", "Added to the group.", "Joined the server. yay",
     " Left the group.", "Started a call", "Changed the channel name"],
)
def test_csv_near_misses_of_system_texts_are_kept(text):
    [conv] = parse("discord_csv", {"x.csv": csv_file(row(text))})
    assert [m.text for m in conv.messages] == [text]


def test_csv_conversation_id_and_title_come_from_the_default_file_name():
    data = csv_file(row("x"))
    convs = parse("discord_csv", {
        "G - C - chat [42] (2024-01-01 to 2024-02-01).csv": data,
        "G - C - chat [42] (2024-01-01 to 2024-02-01) [part 2].csv": csv_file(row("y", "2024-03-01T00:00:00.0000000Z")),
        "exports/my own name.csv": data,
        "exports/readme": data,  # in a folder or zip only *.csv files are read
    })
    assert [(c.id, c.title, len(c.messages)) for c in convs] == [
        ("discord-42", "G - C - chat", 2), ("discord-exports/my own name.csv", "my own name", 1)]
    [alone] = parse("discord_csv", {"nameless": data})  # a single file is read whatever its name
    assert (alone.id, alone.title) == ("discord-nameless", "nameless")


def test_csv_with_only_attachments_and_system_rows_gives_no_conversation():
    assert parse("discord_csv", {"x.csv": csv_file(row(""), row("Joined the server."))}) == []


# --- CSV: damage ----------------------------------------------------------------------------


def test_csv_unterminated_quote_at_the_end_is_a_parse_error_with_the_line():
    data = csv_file(row("ok"), row("fine")) + b'"1","ann","2024-02-14T19:03:11.5230000+01:00","this was cut\r\nof'
    with pytest.raises(ParseError, match="never closed.*cut off") as err:
        parse("discord_csv", {"chan [5].csv": data})
    assert err.value.file == "export:chan [5].csv" and err.value.line == 4


def test_csv_row_cut_between_fields_is_a_parse_error():
    data = csv_file(row("ok")) + b'"1","ann","2024-02-14T19:03:11.5230000+01:00",'
    with pytest.raises(ParseError, match="4 fields but the header has 6") as err:
        parse("discord_csv", {"x.csv": data})
    assert err.value.line == 3


@pytest.mark.parametrize("date", ["", "yesterday", "32-Jan-20 01:33 AM", "01-Foo-20 01:33 AM", "13:00 PM 1/1/2020",
                                  "1/1/2020 13:00 PM", "2024-02-14T25:00:00+01:00", "1/1/99999999999999999999 1:00 PM",
                                  "1/1/2020 99999999999999999999:00", "1-2 3:4", "Jan/01/2020 1:00 PM",
                                  "0001-01-01T00:00:00.0000000+01:00"])
def test_csv_unknown_date_names_file_and_line(date):
    with pytest.raises(ParseError, match="unrecognised Date") as err:
        parse("discord_csv", {"x.csv": csv_file(row("ok"), row("bad", date))})
    assert err.value.file == "export:x.csv" and err.value.line == 3


def test_csv_garbage_after_a_closing_quote_is_a_parse_error():
    with pytest.raises(ParseError, match="malformed CSV") as err:
        parse("discord_csv", {"x.csv": csv_file(row("ok"), '"1","ann"x,"d","c","",""')})
    assert err.value.line == 3


def test_csv_bad_utf8_names_the_line():
    data = csv_file(row("ok"), row("ok")).replace(b'"ok"', b'"caf\xe9"', 1)
    with pytest.raises(ParseError, match="not UTF-8") as err:
        parse("discord_csv", {"x.csv": data})
    assert err.value.file == "export:x.csv" and err.value.line == 2


def test_forcing_discord_csv_on_something_else_is_an_error():
    with pytest.raises(ParseError, match="no DiscordChatExporter CSV"):
        parse("discord_csv", {"x.csv": b"title,body\na,b\n"})


# --- detection ------------------------------------------------------------------------------

OTHER_FORMATS = [DATA / "telegram" / "full_export.json", DATA / "messenger" / "message_1.json",
                 DATA / "whatsapp" / "WhatsApp Chat with Ann Lee.txt", DATA / "reddit_pairs" / "toastme_pairs.csv"]


@pytest.mark.parametrize("fmt", ["discord_json", "discord_csv"])
@pytest.mark.parametrize("path", OTHER_FORMATS, ids=lambda p: p.name)
def test_detectors_do_not_claim_other_formats(fmt, path):
    assert not parser_for(fmt).detect(MemorySource({path.name: path.read_bytes()}))
    assert not parser_for(fmt).detect(MemorySource({"a/" + path.name: path.read_bytes(), "b/x.txt": b"x"}))


def test_no_earlier_parser_claims_discord_exports():
    assert detect(MemorySource({PLANT_JSON: (JSON_DIR / PLANT_JSON).read_bytes()})).format == "discord_json"
    assert detect(MemorySource({PLANT_CSV: (CSV_DIR / PLANT_CSV).read_bytes()})).format == "discord_csv"
    assert detect(MemorySource({DM_CSV: (CSV_DIR / DM_CSV).read_bytes()})).format == "discord_csv"
    later = [p.format for p in REGISTRY[REGISTRY.index(parser_for("discord_csv")) + 1:]]
    for fmt in later:  # and no later one would have either
        assert not parser_for(fmt).detect(MemorySource({PLANT_CSV: (CSV_DIR / PLANT_CSV).read_bytes()}))


def test_the_name_alone_does_not_make_a_discord_export():
    fake = {"Guild - Cat - chan [123].csv": b"id,when,what\n1,2,3\n", "Guild - Cat - chan [124].json": b'{"a": 1}'}
    assert not parser_for("discord_csv").detect(MemorySource(fake))
    assert not parser_for("discord_json").detect(MemorySource(fake))


def test_content_under_unusual_names_is_detected():
    assert parser_for("discord_csv").detect(MemorySource({"notes.txt": csv_file(row("x"))}))
    assert parser_for("discord_json").detect(MemorySource({"dump": channel(msg())}))


@pytest.mark.parametrize(
    "data",
    [
        b"ID,Timestamp,Contents,Attachments\n1,2020-01-01 00:00:00.000000+00:00,hi,\n",  # Discord's own data package
        b'"AuthorID","Author","Date","Content","Attachments","Reactions"\n',  # quoted header: not DCE's
        b'{"channel": {"id": "1"}, "messages": []}',  # no guild
        b'[{"guild": {}, "channel": {}, "messages": []}]',  # not an object
    ],
)
def test_lookalikes_are_not_detected(data):
    assert not parser_for("discord_csv").detect(MemorySource({"x.csv": data}))
    assert not parser_for("discord_json").detect(MemorySource({"x.json": data}))


# --- robustness -----------------------------------------------------------------------------

VALID_JSON = channel(msg("hé 😉", mid="1"), msg("x", "Reply", mid="2", reference={"messageId": "1"}),
                     msg("Joined the server.", "GuildMemberJoin", mid="3"))
VALID_CSV = (CSV_DIR / PLANT_CSV).read_bytes()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutations(VALID_JSON))
def test_damaged_json_parses_or_fails_cleanly(data):
    parse_or_parse_error(MemorySource({"c.json": data}), "discord_json")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutations(VALID_CSV))
def test_damaged_csv_parses_or_fails_cleanly(data):
    parse_or_parse_error(MemorySource({"c.csv": data}), "discord_csv")


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=300), fmt=st.sampled_from(["discord_json", "discord_csv"]))
def test_random_bytes_parse_or_fail_cleanly(data, fmt):
    parse_or_parse_error(MemorySource({"x": data}), fmt)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_after_a_valid_header_parse_or_fail_cleanly(data):
    parse_or_parse_error(MemorySource({"x.csv": CSV_HEADER + data}), "discord_csv")
