"""WhatsApp "Export chat" text (FORMATS.md section 4): every variant, detection, damage."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from doppel.errors import ParseError
from services.ingest.parsers import detect, parser_for
from services.ingest.parsers.whatsapp import detect as wa_detect
from services.ingest.source import open_source
from support.parsing import MemorySource, jsonl_export, mutations, parse_all, parse_or_parse_error, write_zip

DATA = Path(__file__).parent / "data" / "whatsapp"
IOS = (DATA / "ios" / "_chat.txt").read_bytes()  # CRLF, U+200E, U+202F, U+202A/U+2011 phone, `~ ` name
ANDROID = (DATA / "WhatsApp Chat with Ann Lee.txt").read_bytes()  # month-first, 12-hour with U+202F
GERMAN = (DATA / "WhatsApp Chat mit Jonas.txt").read_bytes()  # day-first dots, German markers
LRM, NNBSP, NBSP = "\u200e", "\u202f", "\u00a0"


def parse(files: dict[str, bytes], name: str = "export"):
    return list(parser_for("whatsapp").parse(MemorySource(files, name)))


def rows(c):
    return [(m.sender, m.text, m.timestamp) for m in c.messages]


def one(text: str, name: str = "chat.txt") -> list[tuple[str, str, datetime]]:
    """The rows of a one-chat export whose file holds `text`."""
    [c] = parse({name: text.encode()})
    return rows(c)


def at(*args: int) -> datetime:
    return datetime(*args)


IOS_ROWS = [
    ("Boris Ivanov", "Hi all! Plan for Saturday:\n- bring water: 2 litres\n\n  see you there",
     at(2021, 10, 14, 15, 35, 2)),
    ("Nev", "Sounds good 👍🏽", at(2021, 10, 14, 15, 37)),
    ("+44 7700-900123", "Who is driving?", at(2021, 10, 14, 15, 38, 15)),
    ("Carla Núñez", "12:30 at the station: ok?", at(2021, 10, 15, 0, 1, 30)),
    ("Carla Núñez", "👩\u200d👩\u200d👧 noon", at(2021, 10, 15, 12)),
]
ANDROID_ROWS = [
    ("Ann Lee", "Morning! Are we still on for the hike?", at(2024, 1, 5, 9, 16)),
    ("Sam Okafor", "Yes - meet at 7", at(2024, 1, 5, 9, 17)),
    ("Ann Lee", "The map: trail 3 is closed", at(2024, 1, 5, 9, 18)),
    ("Ann Lee", "Plan:\n1/13/24, 07:00 at the trailhead\n- bring water: 2 litres\n\n   and snacks",
     at(2024, 1, 5, 9, 20)),
    ("Ann Lee", "See you there", at(2024, 1, 13, 18, 32)),
    ("Ann Lee", "https://example.com/trail?id=3", at(2024, 1, 13, 18, 34)),
]
GERMAN_ROWS = [
    ("Jonas Weber", "Frohe Weihnachten!", at(2023, 12, 24, 21, 6)),
    ("Mia", "Danke, dir auch!", at(2023, 12, 24, 21, 10)),
    ("Jonas Weber", "Die Einladung", at(2023, 12, 24, 21, 11)),
]


# --- the fixture exports, through open_source -----------------------------------------------


def test_ios_zip_with_media(tmp_path):
    """4.1 iOS: `_chat.txt` (CRLF) beside media; 4.3 iOS system lines; 4.4 iOS placeholders."""
    media = {"00000042-PHOTO-2021-10-14-15-40-00.jpg": b"\xff\xd8\xff\xe0",
             "00000043-AUDIO-2021-10-14-15-41-00.opus": b"OggS"}
    zip_path = write_zip(tmp_path / "WhatsApp Chat - Hiking Club.zip", {"_chat.txt": IOS, **media})
    with open_source(zip_path) as src:
        assert wa_detect(src)
        fmt, [c] = parse_all(src)
    assert (fmt, c.id, c.title, c.source_format) == ("whatsapp", "whatsapp-_chat.txt", "Hiking Club", "whatsapp")
    assert rows(c) == IOS_ROWS
    assert c.participants == ["Boris Ivanov", "Nev", "+44 7700-900123", "Carla Núñez"]
    assert all(m.timestamp.tzinfo is None for m in c.messages)  # naive local time, as written


def test_android_folder_with_two_chats_a_readme_and_media(tmp_path):
    """4.1: each .txt that is a chat is one conversation; other .txt files are not chats."""
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "WhatsApp Chat with Ann Lee.txt").write_bytes(ANDROID)
    (folder / "IMG-20240105-WA0001.jpg").write_bytes(b"\xff\xd8")
    (folder / "README.txt").write_bytes(b"Exported on 12/01/2024, 10:00 - see below.\nNothing else here.\n")
    (folder / "de").mkdir()
    (folder / "de" / "WhatsApp Chat mit Jonas.txt").write_bytes(GERMAN)
    with open_source(folder) as src:
        convs = list(parser_for("whatsapp").parse(src))
    assert [(c.id, c.title) for c in convs] == [
        ("whatsapp-WhatsApp Chat with Ann Lee.txt", "Ann Lee"),
        ("whatsapp-de/WhatsApp Chat mit Jonas.txt", "Jonas"),
    ]
    assert rows(convs[0]) == ANDROID_ROWS
    assert rows(convs[1]) == GERMAN_ROWS


def test_single_file_sources(tmp_path):
    path = tmp_path / "WhatsApp Chat with Ann Lee.txt"
    path.write_bytes(ANDROID)
    with open_source(path) as src:
        [c] = parse_all(src)[1]
    assert (c.id, c.title, rows(c)) == ("whatsapp-WhatsApp Chat with Ann Lee.txt", "Ann Lee", ANDROID_ROWS)
    path = tmp_path / "_chat.txt"
    path.write_bytes(IOS)
    with open_source(path) as src:
        [c] = parse_all(src)[1]
    assert (c.id, c.title) == ("whatsapp-_chat.txt", "WhatsApp chat")
    # the pipeline opens a temporary copy and passes the user's file name
    with open_source(path, name="uploads/WhatsApp Chat with Ann Lee.txt") as src:
        assert [c.title for c in parser_for("whatsapp").parse(src)] == ["Ann Lee"]


def test_registry_detects_whatsapp():
    for files in ({"_chat.txt": IOS}, {"WhatsApp Chat with Ann Lee.txt": ANDROID}, {"x/y.txt": GERMAN}):
        assert detect(MemorySource(files)).format == "whatsapp"


def test_ids_are_stable_and_unique_and_titles_follow_the_container():
    a = parse({"_chat.txt": IOS}, name="WhatsApp Chat - Hiking Club.zip")
    b = parse({"_chat.txt": IOS}, name="WhatsApp Chat - Hiking Club (1).zip")  # a second export of it
    assert [c.id for c in a] == [c.id for c in b] == ["whatsapp-_chat.txt"]
    convs = parse({"a/_chat.txt": IOS, "b/_chat.txt": IOS, "WhatsApp Chat - Trip/_chat.txt": GERMAN})
    assert [(c.id, c.title) for c in convs] == [
        ("whatsapp-WhatsApp Chat - Trip/_chat.txt", "Trip"),
        ("whatsapp-a/_chat.txt", "a"),
        ("whatsapp-b/_chat.txt", "b"),
    ]
    assert [c.title for c in parse({"_chat.txt": IOS}, name="/tmp/Family")] == ["Family"]
    assert [c.title for c in parse({"_chat.txt": IOS}, name="")] == ["WhatsApp chat"]


def test_a_chat_with_only_system_lines_is_skipped():
    system_only = ("12/01/2024, 10:00 - Messages and calls are end-to-end encrypted.\n"
                   '12/01/2024, 10:01 - You created group "X"\n')
    assert [c.id for c in parse({"a.txt": system_only.encode(), "b.txt": GERMAN})] == ["whatsapp-b.txt"]
    assert parse({"a.txt": system_only.encode()}) == []


# --- 4.2 line grammar -------------------------------------------------------------------------

JUNE3 = at(2018, 6, 3, 13, 55)
JUNE13 = at(2018, 6, 13, 21, 25, 15)


@pytest.mark.parametrize(
    "line, sender, text, when",
    [
        ("3/6/18, 1:55 p.m. - a: m", "a", "m", JUNE3),  # 12-hour with p.m., 2-digit year, day-first default
        ("03-06-2018, 01.55 PM - a: m", "a", "m", JUNE3),  # dashes, dotted time
        ("13.06.18 21.25.15: a: m", "a", "m", JUNE13),  # `: ` after the time
        ("[06.13.18 21:25:15] a: m", "a", "m", JUNE13),  # month-first, seen from the 13
        ("13.6.2018 klo 21.25.15 - a: m", "a", "m", JUNE13),  # Finnish `klo`
        ("13. 6. 2018. 21:25:15 a: m", "a", "m", JUNE13),  # dot-space separators, nothing after the time
        (f"[3/6/18 1:55:00 p.{NBSP}m.] a: m", "a", "m", JUNE3),  # NBSP inside `p. m.`
        ("[3/6/18 1:55:00 p. m.] a: m", "a", "m", JUNE3),
        (f"{LRM}[3/6/18 1:55:00 p. m.] a: m", "a", "m", JUNE3),  # U+200E before `[`
        ("[2018/06/13, 21:25:15] a: m", "a", "m", JUNE13),  # year first
        ("[06/2018/13, 21:25:15] a: m", "a", "m", JUNE13),  # year in the middle (Pustur's tests)
        ("[2026/7/9 02:28:09] Bob:Hi", "Bob", "Hi", at(2026, 7, 9, 2, 28, 9)),  # no space after the colon
        ("[14/10/2021, 3:34:09 PM] a: m", "a", "m", at(2021, 10, 14, 15, 34, 9)),
        (f"[14/10/2021, 3:34:09{NNBSP}PM] a: m", "a", "m", at(2021, 10, 14, 15, 34, 9)),  # U+202F before PM
        (f"1/5/24, 9:15{NNBSP}AM - a: m", "a", "m", at(2024, 5, 1, 9, 15)),  # ambiguous: day-first
        ("12/24/19, 11:23 - John Doe: x", "John Doe", "x", at(2019, 12, 24, 11, 23)),
        ("24/12/2019, 00:05 - a: x", "a", "x", at(2019, 12, 24, 0, 5)),
        ("1/2/20, 12:00 AM - a: x", "a", "x", at(2020, 2, 1, 0, 0)),  # 12 AM is midnight
        ("1/2/20, 12:30 pm - a: x", "a", "x", at(2020, 2, 1, 12, 30)),  # 12 PM is noon, lower case
        ("2020-01-15 21:25 - Sven: hej", "Sven", "hej", at(2020, 1, 15, 21, 25)),  # ISO-like (sv)
    ],
)
def test_header_variants(line, sender, text, when):
    assert one(line + "\n") == [(sender, text, when)]


def test_date_order_is_inferred_from_the_whole_file():
    # the first dates are ambiguous; a 13 in second place later makes the whole file month-first
    text = "1/5/24, 10:00 - a: one\n2/3/24, 10:00 - a: two\n1/13/24, 10:00 - a: three\n"
    assert one(text) == [("a", "one", at(2024, 1, 5, 10)), ("a", "three", at(2024, 1, 13, 10)),
                         ("a", "two", at(2024, 2, 3, 10))]
    # a 13 in first place makes it day-first, wherever it is
    text = "1/5/24, 10:00 - a: one\n2/3/24, 10:00 - a: two\n13/3/24, 10:00 - a: three\n"
    assert one(text) == [("a", "two", at(2024, 3, 2, 10)), ("a", "three", at(2024, 3, 13, 10)),
                         ("a", "one", at(2024, 5, 1, 10))]
    # nothing above 12: day-first
    assert one("01/02/03, 10:00 - a: x\n") == [("a", "x", at(2003, 2, 1, 10))]


def test_messages_are_sorted_by_time_stably():
    text = "[02/01/2024, 10:00:00] a: later\n[01/01/2024, 09:00:00] b: earlier\n[01/01/2024, 09:00:00] c: same time\n"
    assert one(text) == [
        ("b", "earlier", at(2024, 1, 1, 9)),
        ("c", "same time", at(2024, 1, 1, 9)),
        ("a", "later", at(2024, 1, 2, 10)),
    ]


@pytest.mark.parametrize(
    "raw, sender",
    [
        ("~\u202fNev", "Nev"),  # unsaved contact, narrow NBSP after `~`
        ("~ Nev", "Nev"),
        (f"~{NBSP}Nev Smith", "Nev Smith"),
        ("\u202a+44\u00a07700\u2011900123\u202c", "+44 7700-900123"),  # phone number: bidi marks, NBSP, U+2011
        (f"{LRM}Ann{NNBSP}Lee\u200f", "Ann Lee"),
        ("\u2066Zoë\u2069", "Zoë"),
        ("Ann~Lee", "Ann~Lee"),  # only a leading `~` is dropped
        ("🤓", "🤓"),
    ],
)
def test_sender_names(raw, sender):
    assert one(f"[01/02/2024, 10:00:00] {raw}: hi\n") == [(sender, "hi", at(2024, 2, 1, 10))]
    assert one(f"01/02/2024, 10:00 - {raw}: hi\n") == [(sender, "hi", at(2024, 2, 1, 10))]


# --- 4.3 system messages, 4.4 media / deleted / edited ------------------------------------------


def test_android_system_lines_have_no_author():
    text = (
        "12/01/2024, 10:00 - Messages and calls are end-to-end encrypted. No one outside of this chat can read them.\n"
        '12/01/2024, 10:01 - Boris created group "Trip"\n'
        "12/01/2024, 10:02 - Boris added you\n"
        "12/01/2024, 10:03 - Nev left\n"
        "12/01/2024, 10:04 - Sam joined using this group's invite link\n"
        "12/01/2024, 10:05 - Sam: hello\n"
    )
    assert one(text) == [("Sam", "hello", at(2024, 1, 12, 10, 5))]


def test_ios_system_lines_are_recognised_by_the_lrm_and_the_encryption_text():
    text = (
        f"[12/01/2024, 10:00:00] My Group: Messages and calls are end-to-end encrypted. Tap to learn more.\n"
        f"[12/01/2024, 10:00:01] Boris: Boris created group \"My Group\"\n"
        f"[12/01/2024, 10:00:02] My Group: {LRM}Rudi Anderson added you\n"
        f"[12/01/2024, 10:00:03] Boris: {LRM}Boris changed the group description\n"
        "[12/01/2024, 10:00:04] Nev: Nev left\n"
        "[12/01/2024, 10:00:05] Nev: Nev left early, Boris created group chats before\n"
        "[12/01/2024, 10:00:06] Boris: Messages to this group are now secured with end-to-end encryption.\n"
        "[12/01/2024, 10:00:07] Rudi: Nachrichten und Anrufe sind Ende-zu-Ende-verschlüsselt.\n"
        f"[12/01/2024, 10:00:08] Rudi: {LRM}Missed voice call\n"
        f"[12/01/2024, 10:00:09] Rudi: {LRM}Rudi changed this group's icon\n"
    )
    assert one(text) == [("Nev", "Nev left early, Boris created group chats before", at(2024, 1, 12, 10, 0, 5))]


@pytest.mark.parametrize(
    "body",
    [
        "<Media omitted>", "<Medien ausgeschlossen>",
        f"{LRM}image omitted", f"{LRM}video omitted", f"{LRM}audio omitted", f"{LRM}sticker omitted",
        f"{LRM}GIF omitted", f"{LRM}document omitted", f"{LRM}Contact card omitted",
        "image omitted", "Contact card omitted", "Bild weggelassen", "Sticker weggelassen",
        f"Trail map.pdf • {LRM}3 pages {LRM}document omitted",
        f"{LRM}<attached: 00000042-PHOTO-2020-06-07-15-13-20.jpg>",
        "<attached: 00000042-PHOTO-2020-06-07-15-13-20.jpg>",
        "<adjunto: 00000012-PHOTO-2020-06-07-15-13-20.jpg>", "<Anhang: 00000013-AUDIO-2020-06-07-15-13-20.opus>",
        f"2015-08-04-PHOTO-00004762.jpg <{LRM}attached>",
        "IMG-20210428-WA0001.jpg (file attached)", "DOC-20231224-WA0003.pdf (Datei angehängt)",
        "This message was deleted", "You deleted this message", f"{LRM}This message was deleted.",
        f"{LRM}You deleted this message.", "Diese Nachricht wurde gelöscht.", "Du hast diese Nachricht gelöscht.",
        "",
    ],
)  # fmt: skip
def test_placeholders_and_deleted_messages_do_not_count(body):
    for header in ("[01/02/2024, 10:00:00] Ann: ", "01/02/2024, 10:00 - Ann: "):
        assert parse({"c.txt": f"{header}{body}\n{header}kept\n".encode()})[0].messages[0].text == "kept"


@pytest.mark.parametrize(
    "body, text",
    [
        ("IMG-20210428-WA0001.jpg (file attached)\nLook: the view", "Look: the view"),  # Android caption
        ("VID-20210428-WA0002.mp4 (file attached)\nline one\n\nline three", "line one\n\nline three"),
        ("DOC-20231224-WA0003.pdf (Datei angehängt)\nDie Einladung", "Die Einladung"),
        ("See you there <This message was edited>", "See you there"),
        ("two\nlines <This message was edited>", "two\nlines"),
        ("Bis gleich <Diese Nachricht wurde bearbeitet.>", "Bis gleich"),
        ("<This message was edited>", "<This message was edited>"),  # no leading space: typed
        ("I said <3 and (file attached) jokes", "I said <3 and (file attached) jokes"),
        ("a <b>", "a <b>"),
        ("<attached: but with\na second line>", "<attached: but with\na second line>"),
        ("This message was deleted, he said", "This message was deleted, he said"),
        ("\u200fمرحبا", "مرحبا"),  # a bidi mark at the start of an Android body is dropped
        (f"x{LRM}y", f"x{LRM}y"),  # ... but nowhere else
        (".", "."),
    ],
)
def test_captions_edits_and_lookalikes(body, text):
    assert one(f"01/02/2024, 10:00 - Ann: {body}\n") == [("Ann", text, at(2024, 2, 1, 10))]


def test_view_once_messages_do_not_count():
    text = "[01/02/2024, 10:00:00] Ann:.\n[01/02/2024, 10:00:01] Ann: .\n"  # `Name:.` is view-once; ". " was typed
    assert one(text) == [("Ann", ".", at(2024, 2, 1, 10, 0, 1))]
    assert one("01/02/2024, 10:00 - Ann:.\n01/02/2024, 10:01 - Ann: ok\n") == [("Ann", "ok", at(2024, 2, 1, 10, 1))]


# --- 4.5 multi-line traps ---------------------------------------------------------------------


def test_continuation_lines_that_look_like_headers_stay_in_the_message():
    text = (
        "20/05/2023, 06:00 - Ann: Meet:\n"
        "20/05/2023, 07:00 at the trailhead\n"  # date and time, but no ` - `
        "20/05/2023, 07:30 -\n"  # no space after the dash
        "- bring: water\n"
        "2023-05-20 10:30:00\n"
        "[20/05/2023, 08:00:00] Bob: not an iOS header in an Android file\n"
        "\n"
        "  indented: kept\n"
        "\n"
        "20/05/2023, 09:00 - Bob: a - b: c: d\n"
    )
    assert one(text) == [
        ("Ann", "Meet:\n20/05/2023, 07:00 at the trailhead\n20/05/2023, 07:30 -\n- bring: water\n2023-05-20 10:30:00\n"
         "[20/05/2023, 08:00:00] Bob: not an iOS header in an Android file\n\n  indented: kept\n", at(2023, 5, 20, 6)),
        ("Bob", "a - b: c: d", at(2023, 5, 20, 9)),
    ]


def test_only_crlf_line_ends_lose_their_carriage_return():
    text = "[01/02/2024, 10:00:00] Ann: one\r\ntwo\rstill two\r\n\r\n[01/02/2024, 10:01:00] Bob: end\r\n"
    assert one(text) == [("Ann", "one\ntwo\rstill two\n", at(2024, 2, 1, 10)), ("Bob", "end", at(2024, 2, 1, 10, 1))]


def test_text_is_exact():
    body = "  Ａ　full-width, NBSP\u00a0here, ZWJ 👩\u200d💻, trailing spaces  "
    assert one(f"01/02/2024, 10:00 - Ann: {body}\n")[0][1] == body
    assert one(f"01/02/2024, 10:00 - Ann: {body}")[0][1] == body  # no newline at the end of the file


def test_bom_and_blank_lines_before_the_first_header():
    assert one("\ufeff\n  \n\u200e[01/02/2024, 10:00:00] Ann: hi\n") == [("Ann", "hi", at(2024, 2, 1, 10))]
    [c] = parse({"c.txt": b"\xef\xbb\xbf01/02/2024, 10:00 - Ann: hi\n"})
    assert rows(c) == [("Ann", "hi", at(2024, 2, 1, 10))]


# --- detection --------------------------------------------------------------------------------

README = b"Release notes\n\n12/01/2024, 10:00 - Ann: this line looks like a chat\nbut the file is not one.\n"
OTHERS = {
    "telegram": {"result.json": orjson.dumps({"name": "A", "type": "personal_chat", "id": 1, "messages": []})},
    "discord_csv": {"chat.csv": b"AuthorID,Author,Date,Content,Attachments,Reactions\n1,ann,2024-01-01,hi,,\n"},
    "discord_json": {"chat.json": b'{"guild": {"id": "1"}, "channel": {"id": "2"}, "messages": []}'},
    "reddit": {"pairs.csv": b"\xef\xbb\xbftitle,body,score\n12/01/2024, 10:00 - a: b,world,1\n"},
    "jsonl": {"export.jsonl": jsonl_export(("c1", "Ann", "hi", "2024-01-01T10:00:00Z"))},
    "slack": {"channels.json": b"[]", "users.json": b"[]", "general/2024-01-01.json": b"[]"},
    "messenger": {"messages/inbox/a_1/message_1.json": b'{"participants": [], "messages": []}'},
    "readme": {"README.txt": README, "notes.txt": b"Meeting 12/01/2024, 10:00 - all: agenda\n"},
    "log": {"app.txt": b"INFO starting\n2024-01-05 10:00:00 - INFO: started\n" + b"INFO more\n" * 10},
    "empty": {"_chat.txt": b""},
}


@pytest.mark.parametrize("name", sorted(OTHERS))
def test_other_files_are_not_claimed(name):
    assert not wa_detect(MemorySource(OTHERS[name]))


def test_a_chat_file_name_with_other_content_is_not_detected():
    for content in (README, b"just some text\n", b"\x00\x01\x02binary", b'{"messages": []}'):
        for path in ("_chat.txt", "WhatsApp Chat with Ann.txt", "zip/WhatsApp Chat with Ann.txt"):
            assert not wa_detect(MemorySource({path: content}))


def test_chat_content_under_any_name_is_detected():
    assert wa_detect(MemorySource({"notes (2).txt": ANDROID}))
    assert wa_detect(MemorySource({"chat.log": IOS}))  # a single file: any name
    assert wa_detect(MemorySource({"photos/IMG-1.jpg": b"\xff\xd8", "a/b/Export.TXT": GERMAN}))


def test_detection_rule_first_line_header_and_a_second_header_unless_short():
    header = b"12/01/2024, 10:00 - Ann: hi\n"
    assert wa_detect(MemorySource({"a.txt": header}))  # one line is enough
    assert wa_detect(MemorySource({"a.txt": header + b"more\n" * 5}))  # a few lines need no second header
    assert not wa_detect(MemorySource({"a.txt": header + b"more\n" * 6}))  # a page of text under one header
    assert wa_detect(MemorySource({"a.txt": header + b"more\n" * 100 + header}))
    assert wa_detect(MemorySource({"a.txt": b"\n\n" + header + header}))  # blank lines first
    assert not wa_detect(MemorySource({"a.txt": b"text\n" + header + header}))  # the first line must be a header
    assert not wa_detect(MemorySource({"a.txt": b"99/99/2024, 10:00 - Ann: hi\n"}))  # not a date
    assert not wa_detect(MemorySource({"a.txt": b"12/01/2024, 25:00 - Ann: hi\n"}))  # not a time
    assert wa_detect(MemorySource({"a.txt": b"[12/01/2024, 10:00:00] no author\n"}))  # brackets: enough
    assert not wa_detect(MemorySource({"a.txt": b"12/01/2024, 10:00: no author\n"}))  # weak: needs one
    assert not wa_detect(MemorySource({"a.txt": b"1.2.3 10:00 release notes\n"}))  # weak separator, no author


def test_detect_never_raises():
    class Broken(MemorySource):
        def head(self, path, n=0):
            raise OSError("disk on fire")

    assert not wa_detect(Broken({"_chat.txt": IOS}))


# --- nothing dropped without a word: zips beside chats, placeholder case, misfit headers ------


def parse_path(path: Path) -> tuple[list, list[str]]:
    """The conversations of the export at `path` (a real file or folder) and its source's warnings."""
    with open_source(path) as src:
        return list(parser_for("whatsapp").parse(src)), list(src.warnings)


def test_a_zipped_export_beside_a_chat_file_is_read_too(tmp_path):
    """A folder with a chat `.txt` and a zipped export: both are read, neither is dropped silently."""
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "WhatsApp Chat with Ann Lee.txt").write_bytes(ANDROID)
    write_zip(folder / "WhatsApp Chat - Hiking Club.zip", {"_chat.txt": IOS, "00000042-PHOTO-1.jpg": b"\xff\xd8"})
    convs, warnings = parse_path(folder)
    assert [(c.id, c.title) for c in convs] == [
        ("whatsapp-WhatsApp Chat with Ann Lee.txt", "Ann Lee"),
        ("whatsapp-_chat.txt", "Hiking Club"),  # the id the zip gets when imported alone
    ]
    assert rows(convs[0]) == ANDROID_ROWS and rows(convs[1]) == IOS_ROWS
    assert warnings == []


def test_the_same_chat_as_text_and_zipped_is_one_conversation(tmp_path):
    """The same file name under the same title, loose and zipped: one conversation, merged in time order."""
    folder = tmp_path / "Hiking Club"
    folder.mkdir()
    (folder / "_chat.txt").write_bytes(IOS)
    write_zip(folder / "WhatsApp Chat - Hiking Club.zip", {"_chat.txt": IOS})
    write_zip(folder / "WhatsApp Chat - Family.zip", {"_chat.txt": GERMAN})  # same path, another chat
    convs, _ = parse_path(folder)
    assert [(c.id, c.title) for c in convs] == [
        ("whatsapp-_chat.txt", "Hiking Club"), ("whatsapp-_chat.txt-2", "Family")
    ]
    assert rows(convs[0]) == sorted(IOS_ROWS * 2, key=lambda r: r[2])  # the pipeline's dedupe drops the repeats
    assert rows(convs[1]) == GERMAN_ROWS


def test_a_zip_that_is_no_chat_or_cannot_be_read_is_a_warning(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "WhatsApp Chat with Ann Lee.txt").write_bytes(ANDROID)
    write_zip(folder / "photos.zip", {"IMG-1.jpg": b"\xff\xd8", "notes.txt": b"hello\n"})
    (folder / "broken.zip").write_bytes(b"PK\x03\x04 cut off")
    convs, warnings = parse_path(folder)
    assert [c.title for c in convs] == ["Ann Lee"]
    assert warnings == [
        f"{folder}/broken.zip: a zip that was not read (not a readable zip archive (File is not a zip file))",
        f"{folder}/photos.zip: a zip with no WhatsApp chat in it, not read",
    ]


def test_a_folder_zipped_for_upload_reads_the_zip_inside_it_and_ingest_drops_the_repeats(store, tmp_path):
    """`doppel ingest <folder>` zips the folder: the chat zip is then a zip inside the upload."""
    from services.ingest.pipeline import ingest_file, local_export

    folder = tmp_path / "chats"
    folder.mkdir()
    (folder / "WhatsApp Chat with Ann Lee.txt").write_bytes(ANDROID)
    write_zip(folder / "WhatsApp Chat with Ann Lee.zip", {"WhatsApp Chat with Ann Lee.txt": ANDROID + (
        f"1/14/24, 8:00{NNBSP}AM - Sam Okafor: only in the newer export\n".encode())})
    with local_export(folder) as upload:
        m = ingest_file(store, upload, filename="chats.zip")
    assert (m.stats.conversations, m.stats.messages) == (1, len(ANDROID_ROWS) + 1)
    assert m.warnings == [f"chats.zip: {len(ANDROID_ROWS)} duplicate messages dropped (already in the dataset or repeated)"]


@pytest.mark.parametrize(
    "body",
    [
        "<media omitted>", "<MEDIA OMITTED>", "<medien ausgeschlossen>", "Image omitted", "GIF Omitted",
        "contact card omitted", "this message was deleted", "You Deleted This Message.", "bild weggelassen",
        f"Trail map.pdf • {LRM}3 pages {LRM}Document Omitted", "<Attached: 00000042-PHOTO-2020-06-07-15-13-20.jpg>",
        "<ANHANG: 00000013-AUDIO-2020-06-07-15-13-20.opus>", "IMG-20210428-WA0001.jpg (File Attached)",
    ],
)  # fmt: skip
def test_placeholders_do_not_count_whatever_their_case(tmp_path, body):
    path = tmp_path / "chat.txt"
    for header in ("[01/02/2024, 10:00:00] Ann: ", "01/02/2024, 10:00 - Ann: "):
        path.write_text(f"{header}{body}\n{header}kept\n", encoding="utf-8")
        [c], _ = parse_path(path)
        assert [m.text for m in c.messages] == ["kept"]


MISFITS = (
    "12/01/2024, 10:00 - Ann: hi\n"
    "2024-01-12 10:01 - Bob: another date format\n"  # line 2
    "12/01/2024, 10:02 - Bob: fine\n"
    "still Bob\n"
    "[12/01/2024, 10:03:00] Cy: an iOS header\n"  # line 5
    "12/01/2024, 10:04 - Ann: bye\n"
)


def test_lines_with_a_header_of_another_shape_are_kept_as_text_and_reported(tmp_path):
    path = tmp_path / "chat.txt"
    path.write_text(MISFITS, encoding="utf-8")
    [c], warnings = parse_path(path)
    assert [m.text for m in c.messages] == [
        "hi\n2024-01-12 10:01 - Bob: another date format", "fine\nstill Bob\n[12/01/2024, 10:03:00] Cy: an iOS header",
        "bye",
    ]
    assert warnings == [
        f"{path}: 2 lines start with a message header of another format than the file's first header "
        "and were read as text of the message before them (lines 2, 5)"
    ]
    many = "01/02/2024, 10:00 - Ann: x\n" + "2024-01-02 10:01 - Bob: y\n" * 7 + "01/13/2024, 10:02 - Ann: month-first\n"
    path.write_text(many, encoding="utf-8")  # month-first found late: the file is read twice, counted once
    _, warnings = parse_path(path)
    assert warnings == [
        f"{path}: 7 lines start with a message header of another format than the file's first header "
        "and were read as text of the message before them (lines 2, 3, 4, 5, 6, ...)"
    ]
    assert parse_path(_write(tmp_path / "ok.txt", ANDROID))[1] == []  # its `1/13/24, 07:00 at ...` line is no header


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_misfit_header_warnings_reach_inspect_and_the_dataset(store, tmp_path):
    from typer.testing import CliRunner

    from doppel.cli.main import app
    from services.ingest.pipeline import ingest_file

    path = _write(tmp_path / "WhatsApp Chat with Ann.txt", MISFITS.encode())
    note = "2 lines start with a message header of another format than the file's first header"
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    [warning] = orjson.loads(result.stdout)["warnings"]
    assert warning.startswith(f"{path}: {note}") and warning.endswith("(lines 2, 5)")
    result = CliRunner().invoke(app, ["inspect", str(path), "--messages"])
    assert result.exit_code == 0 and f"note: {path}: {note}" in result.stderr
    assert len(result.stdout.splitlines()) == 3
    m = ingest_file(store, path, filename="ann.txt")  # errors and warnings name the file as the user named it
    assert m.warnings[0].startswith(f"ann.txt: {note}")


# --- malformed input --------------------------------------------------------------------------


def error(files: dict[str, bytes], name: str = "export") -> ParseError:
    with pytest.raises(ParseError) as e:
        parse(files, name)
    return e.value


def test_truncated_inside_a_header_fails_naming_the_line():
    stamp = "[14/10/2021, 3:41:00"
    for cut in ("[14/10/2021, 3:4", stamp, f"{stamp}{NNBSP}P", f"{stamp}{NNBSP}PM]"):
        e = error({"_chat.txt": IOS + cut.encode()})
        assert (e.file, e.line) == ("export:_chat.txt", 18) and "cut off" in str(e)
    e = error({"WhatsApp Chat with Ann Lee.txt": ANDROID + "1/13/24, 6:35\u202fPM -".encode()})
    assert (e.file, e.line) == ("export:WhatsApp Chat with Ann Lee.txt", 18)
    cut_in_character = IOS + "[14/10/2021, 3:42:00\u202fPM] Nev: 👍".encode()[:-1]
    assert error({"_chat.txt": cut_in_character}).line == 18


def test_bad_utf8_names_file_and_line():
    e = error({"_chat.txt": IOS.replace(b"Sounds good", b"Sounds \xff good")})
    assert (e.file, e.line) == ("export:_chat.txt", 9)
    assert "not UTF-8" in str(e)
    for bad in (b"1/13/24, 10:00 - a: \xc3(\n", b"1/13/24, 10:00 - \xff: x\n", b"1/13/24, 10:00 - a left \xe2\x80\n"):
        text = b"1/5/24, 10:00 - a: x\n" * 3 + b"1/14/24, 10:00 - a: month-first from here\n" + bad
        e = error({"c.txt": text + b"1/15/24, 10:00 - a: y\n"})
        assert (e.file, e.line, e.reason[:9]) == ("export:c.txt", 5, "not UTF-8")
    assert error({"c.txt": b"\n1/5/24, 10:00 - a: x\n" * 2 + b"more \xff\n"}).line == 5  # in the head


@pytest.mark.parametrize(
    "text, line, words",
    [
        ("01/02/2024, 10:00 - a: x\n31/02/2024, 10:00 - a: y\n", 2, "bad date"),
        ("01/02/2024, 10:00 - a: x\n01/02/2024, 24:00 - a: y\n", 2, "bad time"),
        ("1/2/24, 1:00 PM - a: x\n1/2/24, 13:00 PM - a: y\n", 2, "bad time"),
        ("13/02/2024, 10:00 - a: x\n02/13/2024, 10:00 - a: y\n", 2, "month-first"),
        ("02/13/2024, 10:00 - a: x\n13/02/2024, 10:00 - a: y\n", 2, "day-first"),
        ("01/02/2024, 10:00 - a: x\n01/02/202, 10:00 - a: y\n", 2, "bad date"),
        ("[01/02/2024, 10:00:00] a: x\n[01/02/2024, 10:00:01] \u200e: y\n", 2, "empty author"),
    ],
)
def test_structurally_wrong_files_fail_naming_the_line(text, line, words):
    e = error({"c.txt": text.encode()})
    assert (e.file, e.line) == ("export:c.txt", line) and words in str(e)


def test_exports_without_a_chat_fail():
    e = error({"_chat.txt": README})
    assert (e.file, e.line) == ("export:_chat.txt", 1) and "not a WhatsApp chat" in str(e)
    e = error({"IMG-1.jpg": b"\xff\xd8", "README.txt": README, "notes.txt": b"hello\n"}, name="x.zip")
    assert e.file == "x.zip" and "no WhatsApp chat" in str(e)


def test_the_garbage_collector_is_left_as_it_was():
    import gc

    assert gc.isenabled()
    parse({"_chat.txt": IOS})
    assert gc.isenabled()
    gc.disable()
    try:
        parse({"_chat.txt": IOS})
        with pytest.raises(ParseError):
            parse({"c.txt": b"01/02/2024, 10:00 - a: x\n31/02/2024, 10:00 - a: y\n"})
        assert not gc.isenabled()
    finally:
        gc.enable()


# --- robustness properties --------------------------------------------------------------------

FIXTURES = {"_chat.txt": IOS, "WhatsApp Chat with Ann Lee.txt": ANDROID, "de.txt": GERMAN}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(FIXTURES)), data=st.data())
def test_mutated_exports_parse_or_fail_cleanly(name, data):
    damaged = data.draw(mutations(FIXTURES[name]))
    parse_or_parse_error(MemorySource({name: damaged}), "whatsapp")
    wa_detect(MemorySource({name: damaged}))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_parse_or_fail_cleanly(blob):
    parse_or_parse_error(MemorySource({"_chat.txt": blob}), "whatsapp")
    parse_or_parse_error(MemorySource({"_chat.txt": b"[01/02/2024, 10:00:00] Ann: hi\n" + blob}), "whatsapp")
    parse_or_parse_error(MemorySource({"c.txt": b"01/02/2024, 10:00 - Ann: hi\n" + blob}), "whatsapp")
