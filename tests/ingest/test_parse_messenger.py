"""Messenger and Instagram DYI exports (FORMATS.md sections 0.2, 1 and 2): layouts, content, detection, damage."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from doppel.errors import ParseError
from services.ingest.parsers import detect, parser_for
from services.ingest.parsers.messenger import detect_instagram, detect_messenger, fix
from services.ingest.source import open_source
from support.parsing import MemorySource, jsonl_export, mutations, parse_all, parse_or_parse_error, write_zip

DATA = Path(__file__).parent / "data"
GROUP = (DATA / "messenger" / "message_1.json").read_bytes()  # 2024 group thread, exporter bytes (\u00XX mojibake)
OLD = (DATA / "messenger" / "message.json").read_bytes()  # 2018: `timestamp` in seconds, `type`
E2EE = (DATA / "messenger" / "Bob Sample_40.json").read_bytes()  # the separate E2EE download, proper UTF-8
IG = (DATA / "instagram" / "message_1.json").read_bytes()
IG_PROFILE = (DATA / "instagram" / "personal_information.json").read_bytes()
TELEGRAM = (DATA / "telegram" / "weekend_plans.json").read_bytes()

SECTIONS = ["inbox", "archived_threads", "filtered_threads", "message_requests", "e2ee_cutover"]
GROUP_PATH = "your_facebook_activity/messages/inbox/tripplanning_7700112233/message_1.json"
IG_PATH = "your_instagram_activity/messages/inbox/miarossi_17845500112233/message_1.json"
IG_MARKER = "personal_information/personal_information/personal_information.json"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def rows(c) -> list[tuple[str, str, datetime]]:
    return [(m.sender, m.text, m.timestamp) for m in c.messages]


def meta(doc: Any) -> bytes:
    """Bytes as Meta's exporter writes them: indent 2, each UTF-8 byte of a string as its own \\u00XX."""

    def moji(v: Any) -> Any:
        if isinstance(v, str):
            return v.encode("utf-8").decode("latin-1")
        if isinstance(v, list):
            return [moji(x) for x in v]
        if isinstance(v, dict):
            return {k: moji(x) for k, x in v.items()}
        return v

    return json.dumps(moji(doc), indent=2).encode()


T0 = 1717236000000  # 2024-06-01T10:00:00Z


def msg(sender: str, content: str | None, at: int = T0, **extra: Any) -> dict[str, Any]:
    m: dict[str, Any] = {"sender_name": sender, "timestamp_ms": at, **extra}
    if content is not None:
        m["content"] = content
    return m


def thread(*messages: dict[str, Any], title: str = "Angel Ruiz", **top: Any) -> bytes:
    """A thread file; `messages` in time order, written newest first as Meta does."""
    return meta({"participants": [{"name": "Angel Ruiz"}, {"name": "Owner Person"}], "messages": list(messages)[::-1],
                 "title": title, "is_still_participant": True, "thread_path": "inbox/angelruiz_42", **top})


def parse(files: dict[str, bytes], fmt: str = "messenger"):
    return list(parser_for(fmt).parse(MemorySource(files)))


# --- the 2024 group thread, every kind of message ------------------------------------------

GROUP_ROWS = [
    ("Alice Example", "Hi all! Café at 8? 😂", utc(2024, 1, 1, 10, 1, 0, 123000)),
    ("Zoë Müller", "Привет ❤️", utc(2024, 1, 1, 10, 2)),
    ("Owner Person", "https://example.org/trip?day=1", utc(2024, 1, 1, 10, 7)),  # a bare URL counts
    ("Owner Person", "I set the alarm for 6, don't be late.", utc(2024, 1, 1, 10, 11)),
    ("Alice Example", "who added him to the group?", utc(2024, 1, 1, 10, 12)),
    ("Zoë Müller", "  spaced  text\nsecond line ", utc(2024, 1, 1, 10, 14)),  # exact, not trimmed
    ("Zoë Müller", "naïve – ok", utc(2024, 1, 1, 10, 18)),  # a code point above U+00FF: left alone
    ("Alice Example", "été", utc(2024, 1, 1, 10, 19)),  # Latin-1 that is not UTF-8: left alone
    ("Alice Example", "same instant: first", utc(2024, 1, 1, 10, 21)),
    ("Zoë Müller", "same instant: second", utc(2024, 1, 1, 10, 21)),  # equal instants keep their order
    ("Facebook user", "I deleted my account but said this", utc(2024, 1, 1, 10, 22)),
]
# dropped from the fixture: created/added to the group, media only, "sent an attachment.", pseudo-reaction,
# call (call_duration), "You named the group", location, is_unsent with content, theme, "Liked a message",
# nickname, empty content, is_taken_down, sticker only


def test_group_thread_2024_from_a_zip(tmp_path):
    z = write_zip(tmp_path / "facebook-owner.zip", {GROUP_PATH: GROUP, "your_facebook_activity/messages/inbox/"
                  "tripplanning_7700112233/photos/1.jpg": b"\xff\xd8\xff\xe0 not a real jpeg"})
    with open_source(z) as src:
        fmt, convs = parse_all(src)
    assert fmt == "messenger"
    [c] = convs
    assert (c.id, c.title, c.source_format) == ("inbox/tripplanning_7700112233", "Trip Planning 🏔", "messenger")
    assert rows(c) == GROUP_ROWS
    assert c.participants == ["Alice Example", "Zoë Müller", "Owner Person", "Facebook user"]  # counted senders
    assert all(m.reply_to is None and m.id is None for m in c.messages)


@pytest.mark.parametrize("prefix", ["", "your_activity_across_facebook/", "your_facebook_activity/",
                                    "facebook-owner-2024-06-01/your_facebook_activity/"])
@pytest.mark.parametrize("section", SECTIONS)
def test_every_prefix_and_section_gives_the_same_thread_and_a_stable_id(prefix, section):
    src = MemorySource({f"{prefix}messages/{section}/tripplanning_7700112233/message_1.json": GROUP})
    assert detect(src).format == "messenger"
    [c] = parse_all(src)[1]
    assert c.id == f"{section}/tripplanning_7700112233"
    assert rows(c) == GROUP_ROWS


def test_all_sections_of_one_export_are_read():
    sections = ["archived_threads", "e2ee_cutover", "filtered_threads", "inbox", "legacy_threads", "message_requests"]
    files = {f"your_facebook_activity/messages/{s}/angelruiz_42/message_1.json": thread(msg("Angel Ruiz", s))
             for s in sections}
    convs = parse(files)
    assert [(c.id, c.messages[0].text) for c in convs] == [(f"{s}/angelruiz_42", s) for s in sections]


def test_multi_file_thread_is_merged_sorted_and_titled_from_message_1():
    base = "your_facebook_activity/messages/inbox/angelruiz_42/"
    files = {
        base + "message_1.json": thread(msg("Angel Ruiz", "C", T0 + 5000), msg("Owner Person", "D", T0 + 9000)),
        base + "message_2.json": thread(msg("Owner Person", "A", T0), msg("Angel Ruiz", "B", T0 + 5000), title="Old"),
        base + "message_10.json": thread(msg("Angel Ruiz", "first ever", T0 - 10**9), title="Older"),
        base + "message_final.json": thread(msg("Angel Ruiz", "must not be read", T0 + 1)),  # ignored
        "your_facebook_activity/messages/autofill_information.json": b'{"autofill_information_v2": {}}',
        "your_facebook_activity/messages/messaging_settings.json": b'{"messaging_settings": []}',
        "your_facebook_activity/messages/photos/x.jpg": b"\xff\xd8",
        "personal_information/profile_information/profile_information.json": b'{"profile_v2": {"name": {}}}',
    }
    src = MemorySource(files)
    assert detect(src).format == "messenger"
    [c] = parse_all(src)[1]
    assert (c.id, c.title) == ("inbox/angelruiz_42", "Angel Ruiz")
    assert [m.text for m in c.messages] == ["first ever", "A", "B", "C", "D"]  # B (older slice) before C
    assert c.messages[0].timestamp == utc(2024, 5, 20, 20, 13, 20)


def test_2018_layout_timestamps_in_seconds_and_types():
    src = MemorySource({"messages/bobsample_4455/message.json": OLD, "messages.htm": b"<html></html>"})
    assert detect(src).format == "messenger"
    [c] = parse_all(src)[1]
    assert (c.id, c.title) == ("bobsample_4455", "Bob Sample")
    assert rows(c) == [
        ("Bob Sample", "Ça va? 😀", utc(2018, 4, 24, 8, 21, 29)),
        ("Owner Person", "https://example.com/article", utc(2018, 4, 24, 8, 23, 20)),  # a Share with content
        ("Owner Person", "see you tomorrow", utc(2018, 4, 24, 8, 31, 40)),
    ]  # dropped: type Call, a Share with only share.link, Subscribe, Unsubscribe, a rename typed Generic


def test_dec_2018_inbox_message_json_without_number():
    files = {"messages/inbox/angelruiz_42/message.json": thread(msg("Angel Ruiz", "hola", 1545300000123))}
    [c] = parse(files)
    assert c.id == "inbox/angelruiz_42"
    assert rows(c) == [("Angel Ruiz", "hola", utc(2018, 12, 20, 10, 0, 0, 123000))]


def test_thread_with_no_counted_message_is_skipped():
    files = {
        "messages/inbox/a_1/message_1.json": thread(msg("Angel Ruiz", "Angel Ruiz sent an attachment.", photos=[])),
        "messages/inbox/b_2/message_1.json": thread(msg("Angel Ruiz", "kept")),
    }
    assert [c.id for c in parse(files)] == ["inbox/b_2"]


def test_ids_stay_unique_when_one_upload_holds_two_exports():
    files = {f"{who}/your_facebook_activity/messages/inbox/angelruiz_42/message_1.json": thread(msg("Angel Ruiz", who))
             for who in ("a", "b")}
    convs = parse(files)
    assert [c.id for c in convs] == ["inbox/angelruiz_42", "b/your_facebook_activity/messages/inbox/angelruiz_42"]


def test_timestamp_edge_values():
    at = [0, 1717236000123.0, 4102444800999]
    [c] = parse({"messages/inbox/a_1/message_1.json": thread(*(msg("Angel Ruiz", str(t), t) for t in at))})
    assert [m.timestamp for m in c.messages] == [utc(1970, 1, 1), utc(2024, 6, 1, 10, 0, 0, 123000),
                                                 utc(2100, 1, 1, 0, 0, 0, 999000)]


# --- what is dropped and what is kept (1.3, 2) ---------------------------------------------

DROPPED = [
    ("Angel Ruiz sent an attachment.", {}),
    ("Reacted 👍 to your message ", {}),
    ("Reacted 👍 to your message", {}),
    ("Liked a message", {}),
    ("Liked a message ", {}),
    ("You called Angel Ruiz.", {"call_duration": 18}),
    ("Angel Ruiz called you.", {"call_duration": 384}),
    ("You missed a call from Angel Ruiz.", {"call_duration": 0, "missed": True}),
    ("Angel Ruiz missed your call.", {"call_duration": 0}),
    ("The video call ended.", {"call_duration": 606}),
    ("Angel Ruiz called you.", {"type": "Call"}),
    ("Angel Ruiz added Jo Doe to the group.", {"type": "Subscribe"}),
    ("Angel Ruiz left the group.", {"type": "Unsubscribe"}),
    ("You joined the call.", {}),
    ("Angel Ruiz joined the video call.", {}),
    ("Angel Ruiz started sharing video", {}),
    ("A contact added Jo Doe and 3 others to the group.", {}),
    ("Angel Ruiz removed you from the group.", {}),
    ("You left the group.", {}),
    ("Angel Ruiz named the group Arjay · 2 beds 2 baths Room only.", {}),
    ("Angel Ruiz named the group Fun", {"type": "Generic"}),
    ("Angel Ruiz created the group.", {}),
    ("Angel Ruiz changed the group photo.", {}),
    ("Venessa Bratts is now an admin.", {}),
    ("You added participants.", {}),
    ("Angel Ruiz set the nickname for Katerina Koleva to Katerina Koleva.", {}),
    ("Angel Ruiz set his own nickname to Angie.", {}),
    ("Angel Ruiz changed the theme to Spain 🇪🇸", {}),
    ("Angel Ruiz set the emoji to 👍", {}),
    ("Мелинда unpinned a message.", {}),
    ("Angel Ruiz pinned a message.", {}),
    ("You are now connected on Messenger", {}),
    ("Say hi to your new Facebook friend, Angel.", {}),
    ("You waved at a contact!", {}),
    ("Angel Ruiz waved at you!", {}),
    ("Angel Ruiz sent a location.", {"share": {"link": "https://www.bing.com/maps/default.aspx?where1=42.6%2C+23.3"}}),
    ("Vladimir sent a live location.", {"share": {"share_text": "Vladimir sent a live location."}}),
    ("An admin, moderator or host removed Elly's message.", {}),
    ("This chat is read-only.", {}),
    ("Angel Ruiz created a poll: Pizza or tacos?", {}),
    ("Owner Person voted for Pizza in the poll.", {}),
    ("This poll is no longer available.", {}),
    ("Angel Ruiz's poll has multiple updates.", {}),
    ("oops", {"is_unsent": True}),
    ("This poll is no longer available.", {"is_unsent": True}),
    ("bad", {"is_taken_down": True, "is_unsent": True}),
    ("", {}),
    (None, {"photos": [{"uri": "photos/1.jpg", "creation_timestamp": 1717236000}]}),
    (None, {"share": {"link": "https://www.instagram.com/reel/abc/", "original_content_owner": "x"}}),
    (None, {}),  # only sender and timestamp
]
KEPT = [
    "see you at 8",
    "who added him to the group?",
    "look https://youtube.com/watch?v=x haha",
    "https://youtube.com/watch?v=RnlGqXD_cJc&feature=share",
    "You are the best.",
    "The movie was great!",
    "I left the group.",  # Meta writes "You", never "I"
    "Angel Ruiz sent an attachment.\nand then some",  # a typed message that merely contains such a line
    "Reacted to the news",
    "Liked a message?",
    "This is a long message, the call dropped.",
    " ",  # whitespace is text
]


@pytest.mark.parametrize(("content", "extra"), DROPPED)
def test_system_placeholder_and_non_text_messages_are_dropped(content, extra):
    sender = "Owner Person" if content and content.startswith("You ") else "Angel Ruiz"
    data = thread(msg(sender, content, **extra), msg("Angel Ruiz", "ok", T0 + 1))
    [c] = parse({"messages/inbox/a_1/message_1.json": data})
    assert [m.text for m in c.messages] == ["ok"]


@pytest.mark.parametrize("content", KEPT)
def test_typed_messages_that_look_like_events_are_kept(content):
    data = thread(msg("Angel Ruiz", content, type="Generic", is_unsent=False))
    [c] = parse({"messages/inbox/a_1/message_1.json": data})
    assert rows(c) == [("Angel Ruiz", content, utc(2024, 6, 1, 10))]


# --- mojibake (0.2) -----------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ("Zo\u00c3\u00ab", "Zoë"),
    ("\u00f0\u009f\u0098\u0082", "😂"),
    ("\u00d0\u009f\u00d1\u0080\u00d0\u00b8", "При"),
    ("na\u00efve \u2013 ok", "na\u00efve \u2013 ok"),  # above U+00FF: left as it is
    ("\u00e9t\u00e9", "\u00e9t\u00e9"),  # not UTF-8 once encoded: kept (the blind form would raise)
    ("Zo\u00eb", "Zo\u00eb"),  # already correct Latin-1 range text
    ("\u00c3", "\u00c3"),  # a cut-off sequence
    ("plain ascii", "plain ascii"),
    ("", ""),
])
def test_fix_is_the_safe_repair(raw, expected):
    assert fix(raw) == expected


FAMILY = "Grüße 👩\u200d👩\u200d👧"


def test_names_titles_and_contents_are_repaired():
    [c] = parse({"messages/inbox/a_1/message_1.json": meta({
        "participants": [{"name": "Zoë Müller"}], "title": "Café ☕ crew",
        "messages": [{"sender_name": "Zoë Müller", "timestamp_ms": T0, "content": FAMILY}]})})
    assert c.title == "Café ☕ crew"
    assert rows(c) == [("Zoë Müller", FAMILY, utc(2024, 6, 1, 10))]  # ZWJ kept, no normalisation


def test_title_falls_back_to_the_thread_folder():
    [c] = parse({"messages/inbox/angelruiz_42/message_1.json": meta({"participants": [], "messages": [msg("A", "x")]})})
    assert (c.id, c.title) == ("inbox/angelruiz_42", "angelruiz_42")


# --- the separate E2EE download (1.5) ------------------------------------------------------

E2EE_ROWS = [
    ("Owner Person", "earlier one", utc(2024, 6, 1, 9, 43, 20)),
    ("Bob Sample", "Zoë says hi 😂 café", utc(2024, 6, 1, 10, 0, 0, 500000)),  # proper UTF-8 stays as it is
    ("Owner Person", "https://example.org/x", utc(2024, 6, 1, 10, 1)),  # type link
    ("Bob Sample", "our cabin", utc(2024, 6, 1, 10, 3)),  # media with a caption
]  # dropped: media without text, placeholder "User unsent a message", isUnsent, failed media download


def test_e2ee_download_folder(tmp_path):
    root = tmp_path / "secure_storage"
    (root / "messages").mkdir(parents=True)
    (root / "media").mkdir()
    (root / "messages" / "Bob Sample_40.json").write_bytes(E2EE)
    (root / "messages" / "Carol Third_41.json").write_bytes(
        b'{"participants": ["Owner Person", "Carol Third"], "threadName": "Carol Third_41", "messages": []}')
    (root / "media" / "0b4f.jpg").write_bytes(b"\xff\xd8")
    with open_source(root) as src:
        fmt, convs = parse_all(src)
    assert fmt == "messenger"
    [c] = convs  # the empty thread is skipped
    assert (c.id, c.title, c.source_format) == ("Bob Sample_40", "Bob Sample", "messenger")
    assert rows(c) == E2EE_ROWS


def test_e2ee_single_file_at_the_root_and_id_from_the_file_stem():
    fmt, [c] = parse_all(MemorySource({"Bob Sample_40.json": E2EE}))
    assert fmt == "messenger" and rows(c) == E2EE_ROWS
    doc = orjson.loads(E2EE)
    del doc["threadName"]
    doc["participants"] = []
    [c] = parse({"Dana Doe_7.json": orjson.dumps(doc)})
    assert (c.id, c.title) == ("Dana Doe_7", "Dana Doe")


def test_e2ee_file_next_to_a_dyi_export():
    files = {GROUP_PATH: GROUP, "your_facebook_activity/messages/Bob Sample_40.json": E2EE}
    convs = parse(files)
    assert [c.id for c in convs] == ["inbox/tripplanning_7700112233", "Bob Sample_40"]


# --- standalone thread files ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["message_1.json", "thread.json", "download", "chat export.txt"])
def test_standalone_thread_file_is_messenger_whatever_its_name(name):
    src = MemorySource({name: GROUP})
    fmt, [c] = parse_all(src)
    assert fmt == "messenger"
    assert c.id == "inbox/tripplanning_7700112233"  # from thread_path: the same as in the full export
    assert rows(c) == GROUP_ROWS


def test_loose_thread_files_in_a_folder():
    no_path = meta({"participants": [], "messages": [msg("Angel Ruiz", "loose")]})
    files = {"old/message_1.json": no_path, "old/message_2.json": meta({"messages": [msg("Angel Ruiz", "older", 0)]}),
             "chat.json": no_path, "notes.txt": b"hello"}
    fmt, convs = parse_all(MemorySource(files))
    assert fmt == "messenger"
    assert [(c.id, [m.text for m in c.messages]) for c in convs] == [("chat", ["loose"]), ("old", ["older", "loose"])]


# --- Instagram (2) ------------------------------------------------------------------------

IG_ROWS = [
    ("Mia Rossi", "Ciao! 👋 però", utc(2024, 3, 1, 11)),
    ("owner.person", "look at this one", utc(2024, 3, 1, 11, 0, 9)),  # a share with text
    ("Mia Rossi", "ahah sì 😂", utc(2024, 3, 1, 11, 0, 10)),
]  # dropped: Liked a message, Reacted …, created a poll, voted … in the poll., poll updates, poll no longer
# available, "sent an attachment.", a shared post without content


def test_instagram_2025_layout(tmp_path):
    z = write_zip(tmp_path / "instagram-owner.person-2025-01-01.zip", {IG_PATH: IG, "media/posts/1.jpg": b"\xff\xd8"})
    with open_source(z) as src:
        fmt, [c] = parse_all(src)
    assert fmt == "instagram"
    assert (c.id, c.title, c.source_format) == ("inbox/miarossi_17845500112233", "Mia Rossi", "instagram")
    assert rows(c) == IG_ROWS


@pytest.mark.parametrize("marker", [IG_MARKER, "personal_information/personal_information.json"])
def test_instagram_bare_messages_folder_with_an_ig_profile(marker):
    for prefix in ("", "instagram-owner/"):
        path = f"{prefix}messages/inbox/miarossi_17845500112233/message_1.json"
        src = MemorySource({path: IG, prefix + marker: IG_PROFILE})
        fmt, [c] = parse_all(src)
        assert (fmt, c.id, c.source_format) == ("instagram", "inbox/miarossi_17845500112233", "instagram")
        assert rows(c) == IG_ROWS


def test_bare_messages_folder_without_ig_profile_is_messenger():
    thread_file = "messages/inbox/miarossi_17845500112233/message_1.json"
    assert detect(MemorySource({thread_file: IG})).format == "messenger"
    not_ig = MemorySource({thread_file: IG, IG_MARKER: b'{"profile_v2": {}}'})  # the right name, the wrong content
    assert detect(not_ig).format == "messenger"
    fb = MemorySource({"your_facebook_activity/" + thread_file: IG, "your_facebook_activity/" + IG_MARKER: IG_PROFILE})
    assert detect(fb).format == "messenger"


def test_instagram_parser_named_explicitly_reads_any_meta_thread():
    [c] = parse({GROUP_PATH: GROUP}, "instagram")
    assert (c.source_format, rows(c)) == ("instagram", GROUP_ROWS)


# --- detection ----------------------------------------------------------------------------

DISCORD_JSON = orjson.dumps({"guild": {"id": "1", "name": "G"}, "channel": {"id": "2", "name": "general"},
                             "messages": [{"id": "3", "type": "Default", "timestamp": "2024-01-01T10:00:00+00:00",
                                           "content": "hi", "author": {"id": "4", "name": "ann"}}], "messageCount": 1})
SLACK = {"channels.json": b'[{"id": "C1", "name": "general"}]', "users.json": b'[{"id": "U1", "name": "ann"}]',
         "general/2024-01-01.json": b'[{"type": "message", "user": "U1", "text": "hi", "ts": "1704103200.000100"}]'}
OTHERS = {
    "telegram": {"result.json": TELEGRAM},
    "discord_json": {"chat.json": DISCORD_JSON},
    "discord_csv": {"chat.csv": b"AuthorID,Author,Date,Content,Attachments,Reactions\n1,ann,2024-01-01,hi,,\n"},
    "slack": SLACK,
    "whatsapp": {"_chat.txt": b"[01/02/2024, 10:00:00] Ann: hi\n"},
    "reddit": {"pairs.csv": b"\xef\xbb\xbftitle,body,score\nhello,world,1\n"},
    "jsonl": {"export.jsonl": jsonl_export(("c1", "Ann", "hi", "2024-01-01T10:00:00Z"))},
}


@pytest.mark.parametrize("name", sorted(OTHERS))
def test_other_formats_are_not_claimed(name):
    src = MemorySource(OTHERS[name])
    assert not detect_instagram(src) and not detect_messenger(src)


@pytest.mark.parametrize("content", [TELEGRAM, DISCORD_JSON, b"not json at all", b"", b'[{"sender_name": "x"}]', E2EE])
def test_a_thread_path_with_the_wrong_content_is_not_detected(content):
    for path in (GROUP_PATH, IG_PATH, "messages/inbox/x_1/message_1.json"):
        src = MemorySource({path: content})
        assert not detect_instagram(src)
        assert not detect_messenger(src)


def test_detect_never_raises():
    class Broken(MemorySource):
        def open(self, path):
            raise OSError("disk on fire")

    src = Broken({GROUP_PATH: GROUP, "Bob Sample_40.json": E2EE})
    assert not detect_instagram(src) and not detect_messenger(src)


def test_truncated_thread_is_still_detected_so_parse_can_say_why():
    src = MemorySource({GROUP_PATH: GROUP[:300]})
    assert detect(src).format == "messenger"
    with pytest.raises(ParseError, match="truncated"):
        parse_all(src)


# --- malformed input ------------------------------------------------------------------------


def test_truncated_file_names_the_file_and_line():
    with pytest.raises(ParseError) as e:
        parse({GROUP_PATH: GROUP[: len(GROUP) // 2]})
    assert e.value.file == f"export:{GROUP_PATH}" and e.value.line is not None
    assert "truncated" in str(e.value)


def test_truncated_later_slice_of_a_thread_fails_the_whole_thread():
    base = "messages/inbox/a_1/"
    with pytest.raises(ParseError) as e:
        parse({base + "message_1.json": thread(msg("A", "fine")), base + "message_2.json": thread(msg("A", "x"))[:-5]})
    assert e.value.file == f"export:{base}message_2.json"


def test_bad_utf8_names_the_line():
    bad = GROUP.replace(b"same instant: first", b"same instant: \xff\xfe")
    with pytest.raises(ParseError, match="not UTF-8") as e:
        parse({GROUP_PATH: bad})
    assert e.value.file == f"export:{GROUP_PATH}"
    assert e.value.line == bad[: bad.index(b"\xff")].count(b"\n") + 1


def good(**extra: Any) -> dict[str, Any]:
    return {"sender_name": "A", "timestamp_ms": T0, "content": "x", **extra}


@pytest.mark.parametrize(("doc", "reason", "entry"), [
    ([], "must be a JSON object with 'messages', not list", None),
    ({"participants": []}, "'messages' must be a list, not null", "messages"),
    ({"messages": {"0": {}}}, "'messages' must be a list, not dict", "messages"),
    ({"messages": [good(), "hello"]}, "a message must be a JSON object, not str", "messages[1]"),
    ({"messages": [good(), good(sender_name=5)]}, "'sender_name' must be a string, not int", "messages[1]"),
    ({"messages": [good(sender_name=["A"])]}, "'sender_name' must be a string, not list", "messages[0]"),
    ({"messages": [{"timestamp_ms": T0, "content": "x"}]}, "the message has no 'sender_name'", "messages[0]"),
    ({"messages": [{"sender_name": "A", "content": "x"}]}, "the message has no 'timestamp_ms'", "messages[0]"),
    ({"messages": [good(timestamp_ms="1717236000000")]}, "'timestamp_ms' must be a number, not str", "messages[0]"),
    ({"messages": [good(timestamp_ms=10**18)]}, "'timestamp_ms' is not a valid instant", "messages[0]"),
    ({"messages": [good(timestamp_ms=None, timestamp="x")]}, "'timestamp' must be a number, not str", "messages[0]"),
    ({"messages": [good(content=12)]}, "'content' must be a string, not int", "messages[0]"),
    ({"messages": [good(type=["Generic"])]}, "'type' must be a string, not list", "messages[0]"),
    ({"messages": [good(type=5, timestamp_ms="x")]}, "'timestamp_ms' must be a number, not str", "messages[0]"),
    ({"messages": [good()], "title": 7}, "'title' must be a string, not int", "title"),
])
def test_wrong_structure_names_the_file_and_entry(doc, reason, entry):
    path = "messages/inbox/a_1/message_1.json"
    with pytest.raises(ParseError) as e:
        parse({path: orjson.dumps(doc)})
    assert (e.value.file, e.value.entry) == (f"export:{path}", entry)
    assert reason in e.value.reason


@pytest.mark.parametrize(("message", "reason"), [
    ({"text": "x", "timestamp": T0}, "the message has no 'senderName'"),
    ({"senderName": "B", "text": "x", "timestamp": "soon"}, "'timestamp' must be a number, not str"),
    ({"senderName": "B", "text": ["x"], "timestamp": T0}, "'text' must be a string, not list"),
    ({"senderName": "B", "text": "x", "timestamp": None, "type": 3}, "'timestamp' must be a number, not null"),
])
def test_e2ee_wrong_structure(message, reason):
    ok = {"senderName": "B", "text": "ok", "timestamp": T0}
    doc = {"participants": ["A", "B"], "threadName": "B_1", "messages": [ok, message]}
    with pytest.raises(ParseError) as e:
        parse({"B_1.json": orjson.dumps(doc)})
    assert (e.value.file, e.value.entry, e.value.reason) == ("export:B_1.json", "messages[1]", reason)


def test_named_parser_on_something_else_says_so():
    with pytest.raises(ParseError, match="no Messenger or Instagram conversations found") as e:
        parse({"notes.txt": b"hi", "data.json": b"[1, 2]"})
    assert e.value.file == "export"
    with pytest.raises(ParseError, match="not a Messenger or Instagram thread"):
        parse({"data.json": b'{"messages": []}'})


# --- robustness: a correct parse or a ParseError, nothing else ---------------------------------

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(mutations(GROUP))
def test_damaged_thread_file(data):
    parse_or_parse_error(MemorySource({GROUP_PATH: data}), "messenger")


@FUZZ
@given(mutations(OLD))
def test_damaged_standalone_2018_file(data):
    parse_or_parse_error(MemorySource({"message.json": data}), "messenger")


@FUZZ
@given(mutations(E2EE))
def test_damaged_e2ee_file(data):
    parse_or_parse_error(MemorySource({"messages/Bob Sample_40.json": data, "media/a.jpg": b"x"}), "messenger")


@FUZZ
@given(mutations(IG))
def test_damaged_instagram_file(data):
    parse_or_parse_error(MemorySource({IG_PATH: data}), "instagram")


@FUZZ
@given(st.binary(max_size=2000), st.sampled_from(["message_1.json", GROUP_PATH, "x.json"]))
def test_arbitrary_bytes(data, path):
    for fmt in ("messenger", "instagram"):
        parse_or_parse_error(MemorySource({path: data}), fmt)


KEYS = st.sampled_from(["sender_name", "timestamp_ms", "timestamp", "content", "type", "is_unsent", "call_duration"])
SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text()


@settings(max_examples=100, deadline=None)
@given(st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(KEYS, kids, max_size=5),
                    max_leaves=12))
def test_arbitrary_message_structures(message):
    doc = {"participants": [], "messages": [good(), message]}
    parse_or_parse_error(MemorySource({"messages/inbox/a_1/message_1.json": orjson.dumps(doc)}), "messenger")
