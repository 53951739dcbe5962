"""Slack workspace exports (FORMATS.md section 6): every variant, detection, damage."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from doppel.errors import ParseError
from services.ingest.parsers import detect, parser_for
from services.ingest.parsers.slack import detect as slack_detect
from services.ingest.source import open_source
from support.parsing import MemorySource, mutations, parse_all, parse_or_parse_error, write_zip

DATA = Path(__file__).parent / "data" / "slack" / "workspace"  # PHP json_encode bytes: `\/`, `\ud83d\ude00`
WORKSPACE = {p.relative_to(DATA).as_posix(): p.read_bytes() for p in sorted(DATA.rglob("*.json"))}


def ts(seconds: int, micro: int = 0) -> datetime:
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=micro)


def parse(files: dict[str, bytes]):
    return list(parser_for("slack").parse(MemorySource(files)))


USERS = orjson.dumps([{"id": "U1", "name": "ann", "real_name": "Ann Lee", "profile": {"real_name": "Ann Lee"}}])


def export(*messages: dict, users: bytes = USERS) -> dict[str, bytes]:
    return {"channels.json": b'[{"id": "C1", "name": "general", "created": 1}]', "users.json": users,
            "general/2024-01-01.json": orjson.dumps(list(messages))}


def m(text, t: str = "1704103200.000100", **extra) -> dict:
    return {"type": "message", "user": "U1", "text": text, "ts": t, **extra}


# --- the fixture workspace ------------------------------------------------------------------


def test_the_workspace_export_counts_senders_texts_and_times():
    fmt, convs = parse_all(MemorySource(WORKSPACE))
    assert fmt == "slack"
    assert [(c.id, c.title, c.source_format) for c in convs] == [
        ("slack-D0DM12345", "Alice Ångström, Bob Sample", "slack"),  # DM: folder is the DM id
        ("slack-general", "general", "slack"),
        ("slack-mpdm-alice--bob--carol-1", "Alice Ångström, Bob Sample, Carol Old", "slack"),
        ("slack-secret-plans", "secret-plans", "slack"),  # groups.json (private channel)
    ]  # random holds only a join: skipped
    dm, general, mpim, secret = convs
    assert [(x.sender, x.text, x.timestamp) for x in dm.messages] == [
        ("Alice Ångström", "hey", ts(1704200000)),
        ("Bob Sample", "yo", ts(1704200060)),
    ]
    assert [(x.id, x.sender, x.text, x.timestamp, x.reply_to) for x in general.messages] == [
        ("1704197100.000200", "Alice Ångström",
         "Hello & welcome <3 :wave: <@U02BOB> see <https://example.com/a?b=1&c=2|the doc>",
         ts(1704197100, 200), None),
        # from the next day's file, but earlier: day files are concatenated and sorted by ts
        ("1704197105.500000", "Carol Old", "written late at night (day file is local time)", ts(1704197105, 500000),
         None),
        ("1704197160.123456", "Bob Sample", "Thanks 😀 — naïve", ts(1704197160, 123456), "1704197100.000200"),
        ("1704197220.000001", "Bob Sample", "Also sending this to the channel", ts(1704197220, 1),
         "1704197100.000200"),  # thread_broadcast
        ("1704197250.000000", "Carol Old", "waves at everyone", ts(1704197250), None),  # me_message
        ("1704197260.000000", "Alice Ångström", "Here's the plan", ts(1704197260), None),  # file_share with text
        ("1704197300.000000", "Alice Ångström", "I typed &lt;b&gt; literally", ts(1704197300), None),  # once
        ("1704197310.000000", "Dana Message", "real name empty in users.json", ts(1704197310), None),
        ("1704197320.000000", "Erin External", "from a shared workspace", ts(1704197320), None),
        ("1704197330.000000", "U10GHOST", "nobody knows me", ts(1704197330), None),
        ("1704272400.000000", "Carol Old", "next day", ts(1704272400), None),
    ]  # dropped: join, leave, topic, purpose, tombstone, bot_message, bot_id, is_bot user, USLACKBOT,
    # file_share without text, a link unfurl with empty text
    assert general.participants == [
        "Alice Ångström", "Carol Old", "Bob Sample", "Dana Message", "Erin External", "U10GHOST"]
    assert [(x.sender, x.text) for x in mpim.messages] == [("Carol Old", "group hello")]
    assert [(x.sender, x.text, x.timestamp) for x in secret.messages] == [("Bob Sample", "psst", ts(1704369600))]


def test_the_fixture_bytes_are_php_escaped():
    day = WORKSPACE["general/2024-01-02.json"]
    assert rb"<https:\/\/example.com\/a?b=1&amp;c=2|the doc>" in day
    assert rb"Thanks \ud83d\ude00 \u2014 na\u00efve" in day
    assert b'"created": "1449252889"' in WORKSPACE["channels.json"]  # old string `created`


def test_a_zip_with_a_top_folder_and_an_unpacked_folder(tmp_path):
    zpath = write_zip(tmp_path / "Cabin Slack export Jan 1 2024 - Jan 5 2024.zip",
                      {f"Cabin export/{k}": v for k, v in WORKSPACE.items()})
    for path in (zpath, DATA):
        with open_source(path) as s:
            fmt, convs = parse_all(s)
            assert fmt == "slack"
            assert [c.id for c in convs] == ["slack-D0DM12345", "slack-general", "slack-mpdm-alice--bob--carol-1",
                                             "slack-secret-plans"]
            assert sum(len(c.messages) for c in convs) == 15


# --- variants -----------------------------------------------------------------------------


def test_enterprise_grid_org_users_json():
    files = export(m("hi"))
    files["org_users.json"] = files.pop("users.json")
    [c] = parse_all(MemorySource(files))[1]
    assert c.messages[0].sender == "Ann Lee"


def test_real_name_from_profile_then_top_level_then_user_profile_then_id():
    users = orjson.dumps([
        {"id": "U1", "real_name": "Top Level", "profile": {"real_name": "From Profile"}},
        {"id": "U2", "real_name": "Only Top", "profile": {}},
        {"id": "U3", "profile": {"real_name": ""}},
    ])
    msgs = [m("a", "1.000001"), m("b", "1.000002", user="U2"),
            m("c", "1.000003", user="U3", user_profile={"real_name": "Msg Profile"}),
            m("d", "1.000004", user="U4")]
    [c] = parse(export(*msgs, users=users))
    assert [x.sender for x in c.messages] == ["From Profile", "Only Top", "Msg Profile", "U4"]


def test_entities_are_unescaped_once_and_markup_kept():
    [c] = parse(export(m("a &amp;amp; b &lt;@U1&gt; <@U1|ann> <#C1|general> <!here> :+1: &quot;")))
    assert c.messages[0].text == "a &amp; b <@U1> <@U1|ann> <#C1|general> <!here> :+1: &quot;"


def test_ts_is_exact_to_the_microsecond_and_sorts_across_files():
    files = export(m("b", "1704103200.999999"), m("a", "1704103200.000001"))
    files["general/2024-01-02.json"] = orjson.dumps([m("c", "1704103200.5"), m("d", "1704103201")])
    [c] = parse(files)
    assert [(x.text, x.timestamp) for x in c.messages] == [
        ("a", datetime(2024, 1, 1, 10, 0, 0, 1, tzinfo=UTC)),
        ("c", datetime(2024, 1, 1, 10, 0, 0, 500000, tzinfo=UTC)),
        ("b", datetime(2024, 1, 1, 10, 0, 0, 999999, tzinfo=UTC)),
        ("d", datetime(2024, 1, 1, 10, 0, 1, tzinfo=UTC)),
    ]


def test_other_files_in_folders_are_ignored_and_whitespace_text_kept():
    files = export(m("  spaced  \n"))
    files["general/canvas_in_the_conversation.json"] = b"not json"
    files["integration_logs.json"] = b"{}"
    [c] = parse(files)
    assert c.messages[0].text == "  spaced  \n"


# --- malformed input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({**export(m("x")), "general/2024-01-01.json": b'[{"type": "message", "text": "x", "ts": "1.0"'},
         r"export:general/2024-01-01\.json, line 1: the file is cut off"),
        ({**export(m("x")), "general/2024-01-01.json": b'{"messages": []}'},
         r"general/2024-01-01\.json: must be a JSON array, not dict"),
        (export(m(5)), r"general/2024-01-01\.json, entry \[0\]: 'text' must be a string, not int"),
        (export(m("x", t=1704103200)), r"entry \[0\]: 'ts' must be a string"),
        (export(m("x", t="17041O3200.1")), r"entry \[0\]: 'ts' is not seconds\.microseconds"),
        (export(m("x", t="1.1234567")), r"'ts' is not seconds\.microseconds"),
        (export(m("x", t="9" * 40)), r"entry \[0\]"),
        (export(m("x"), m("y", user=None)), r"entry \[1\]: the message has no 'user'"),
        (export(5), r"entry \[0\]: a message must be a JSON object, not int"),
        (export(m("x", subtype=["x"])), r"entry \[0\]"),
        (export(m("x"), users=b'[{"name": "no id"}]'), r"export:users\.json, entry \[0\]: a user must be"),
        (export(m("x"), users=b'{"members": []}'), r"users\.json: must be a JSON array"),
        ({**export(m("x")), "channels.json": b'[{"id": 5}]'}, r"channels\.json, entry \[0\]: .*string 'id'"),
        ({**export(m("x")), "channels.json": b'[{"id": "C1", "name": 3}]'}, r"'name' must be a string"),
        ({**export(m("x")), "dms.json": b'[{"id": "D1", "members": [1, 2]}]'}, r"dms\.json, entry \[0\]: 'members'"),
        ({**export(m("x")), "general/2024-01-01.json": b'[{"text": "caf\xe9", "ts": "1.0"}]'},
         r"general/2024-01-01\.json, line 1: not UTF-8 text \(byte 0xe9\)"),
    ],
)
def test_malformed_exports_are_parse_errors_naming_the_file_and_entry(files, match):
    with pytest.raises(ParseError, match=match):
        parse(files)


def test_forcing_slack_on_something_else_is_a_parse_error():
    with pytest.raises(ParseError, match="not a Slack export: no channels.json"):
        parse({"result.json": b"{}"})


def test_errors_name_the_zip_entry(tmp_path):
    files = export(m("x"), m(5))
    zpath = write_zip(tmp_path / "s.zip", files)
    with open_source(zpath) as s, pytest.raises(ParseError) as e:
        parse_all(s)
    assert str(e.value) == f"{zpath}:general/2024-01-01.json, entry [1]: 'text' must be a string, not int"


# --- detection ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "files",
    [
        WORKSPACE,
        {f"odd name/{k}": v for k, v in WORKSPACE.items()},
        {"channels.json": b"[]", "org_users.json": b"\xef\xbb\xbf[\n]"},
        {"channels.json": b'[\n    {\n        "id": "C1",', "users.json": b"["},  # cut off: parse will say so
    ],
)
def test_detected_from_content(files):
    source = MemorySource(files)
    assert slack_detect(source)
    assert detect(source).format == "slack"


@pytest.mark.parametrize(
    "files",
    [
        {"channels.json": b'{"channels": []}', "users.json": b"[]"},  # right names, wrong content
        {"channels.json": b"[]", "users.json": b'"x"'},
        {"channels.json": b"[1, 2]", "users.json": b"[]"},
        {"a/channels.json": b"[]", "b/users.json": b"[]"},  # not side by side
        {"channels.json": b"[]", "general/2024-01-01.json": b"[]"},  # no users file
        {"result.json": orjson.dumps({"name": "A", "type": "personal_chat", "id": 1, "messages": []})},
        {"messages/inbox/a_1/message_1.json": b'{"participants": [{"name": "A"}], "messages": []}'},
        {"chat.csv": b"AuthorID,Author,Date,Content,Attachments,Reactions\n"},
    ],
)
def test_not_detected_for_other_content(files):
    assert not slack_detect(MemorySource(files))


def test_detect_never_raises():
    class Broken(MemorySource):
        def head(self, path, n=0):
            raise OSError("disk on fire")

    assert not slack_detect(Broken(WORKSPACE))


# --- robustness ---------------------------------------------------------------------------

SMALL = export(m("a &amp; b", "1.5", thread_ts="1.0"), m("c", "2.000001", subtype="me_message"),
               m("d", "3", subtype="channel_join"), m("e", "4", bot_id="B1"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["general/2024-01-02.json", "users.json", "channels.json", "dms.json", "mpims.json"]),
       st.data())
def test_mutated_files_parse_or_raise_parse_error(path, data):
    files = dict(WORKSPACE)
    files[path] = data.draw(mutations(files[path]))
    result = parse_or_parse_error(MemorySource(files), "slack")
    assert isinstance(result, (list, ParseError))
    slack_detect(MemorySource(files))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["general/2024-01-01.json", "users.json", "channels.json"]), st.binary(max_size=200))
def test_random_bytes_parse_or_raise_parse_error(path, data):
    files = {**SMALL, path: data}
    parse_or_parse_error(MemorySource(files), "slack")
    slack_detect(MemorySource(files))


def test_the_small_export_is_parsed_as_expected():
    [c] = parse(SMALL)
    assert [(x.text, x.reply_to, x.timestamp) for x in c.messages] == [
        ("a & b", "1.0", datetime(1970, 1, 1, 0, 0, 1, 500000, tzinfo=UTC)),
        ("c", None, datetime(1970, 1, 1, 0, 0, 2, 1, tzinfo=UTC)),
    ]
