"""Reddit post/comment pair CSV (FORMATS.md section 7): every rule, detection, damage."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from doppel.errors import ParseError
from services.ingest.parsers import detect, parser_for
from services.ingest.parsers.reddit import NO_TIME
from services.ingest.source import open_source
from support.parsing import MemorySource, mutations, parse_all, parse_or_parse_error, write_zip

DATA = Path(__file__).parent / "data"
TOAST = (DATA / "reddit_pairs" / "toastme_pairs.csv").read_bytes()  # BOM, CRLF, pandas-style quoting


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def parse(files: dict[str, bytes]):
    return list(parser_for("reddit_pairs").parse(MemorySource(files)))


def pairs(conv):
    return [(m.sender, m.text, m.timestamp) for m in conv.messages]


def test_the_fixture_keeps_real_pairs_with_exact_texts_and_times():
    fmt, convs = parse_all(MemorySource({"toastme_pairs.csv": TOAST}))
    assert fmt == "reddit_pairs"
    # rows 2 ([deleted] title), 3 ([removed] body), 5 (empty title), 6 (empty body) are dropped
    assert [(c.id, c.title, c.source_format, c.participants) for c in convs] == [
        ("reddit-1", "Finally finished my first 10k & I'm proud", "reddit_pairs", ["OP", "commenter"]),
        ("reddit-4", "New haircut, be nice", "reddit_pairs", ["OP", "commenter"]),
        ("reddit-7", "Tried baking again", "reddit_pairs", ["OP", "commenter"]),
    ]
    first, haircut, baking = convs
    assert pairs(first) == [
        ("OP", "Finally finished my first 10k & I'm proud", utc(2020, 1, 1)),
        ("commenter", "Amazing &gt; yesterday you! Keep going <3", utc(2020, 1, 1, 0, 0, 1)),
    ]
    assert pairs(haircut) == [  # created_utc written as a float; CRLF inside the quoted body
        ("OP", "New haircut, be nice", utc(2020, 1, 1, 0, 5)),
        ("commenter", "It suits you!\n\nSeriously.", utc(2020, 1, 1, 0, 5, 1)),
    ]
    assert pairs(baking) == [  # empty created_utc: no time, the fixed naive epoch
        ("OP", "Tried baking again", datetime(1970, 1, 1)),
        ("commenter", "Looks tasty", datetime(1970, 1, 1, 0, 0, 1)),
    ]
    assert baking.messages[0].timestamp.tzinfo is None


def test_folder_and_zip_through_open_source(tmp_path):
    with open_source(DATA / "reddit_pairs") as source:
        assert [c.id for c in parse_all(source)[1]] == ["reddit-1", "reddit-4", "reddit-7"]
    zipped = write_zip(tmp_path / "r.zip", {"data/toastme_pairs.csv": TOAST, "data/README.md": b"# pairs"})
    with open_source(zipped) as s:
        fmt, convs = parse_all(s)
    assert fmt == "reddit_pairs" and len(convs) == 3


def test_columns_are_found_by_name_in_any_order_and_case_without_time():
    data = b"Score,Body,id,Title,extra\r\n-7,\"nice, really\",abc,My cat,x\r\n12.0,second,,Dog,y\r\n"
    convs = parse({"p.csv": data})
    assert [(c.id, pairs(c)) for c in convs] == [
        ("reddit-abc", [("OP", "My cat", NO_TIME), ("commenter", "nice, really", datetime(1970, 1, 1, 0, 0, 1))]),
        ("reddit-2", [("OP", "Dog", NO_TIME), ("commenter", "second", datetime(1970, 1, 1, 0, 0, 1))]),
    ]


def test_post_id_column_names_conversations_and_repeats_are_numbered():
    data = (b"post_id,title,body,created_utc\n"
            b"t3_x1,Q,first answer,1600000000\nt3_x1,Q,second answer,1600000000\nx2,R,other,1600000060\n")
    convs = parse({"p.csv": data})
    assert [(c.id, c.messages[1].text) for c in convs] == [
        ("reddit-x1", "first answer"), ("reddit-x1-2", "second answer"), ("reddit-x2", "other")]
    assert convs[2].messages[0].timestamp == utc(2020, 9, 13, 12, 27, 40)


@pytest.mark.parametrize(
    "raw, text",
    [
        ("a &amp; b", "a & b"),
        ("&lt;3 &gt;_&lt;", "<3 >_<"),
        ("&amp;gt; typed literally", "&gt; typed literally"),
        ("&amp;amp;", "&amp;"),
        ("&quot;kept&quot; &#39;too&#39;", "&quot;kept&quot; &#39;too&#39;"),
        ("no entities", "no entities"),
    ],
)
def test_entities_are_unescaped_exactly_once(raw, text):
    [conv] = parse({"p.csv": f'title,body\n"{raw}","{raw}"\n'.encode()})
    assert [m.text for m in conv.messages] == [text, text]


@pytest.mark.parametrize(
    "title, body",
    [("[deleted]", "b"), ("t", "[deleted]"), ("[removed]", "b"), ("t", "[removed]"), ("", "b"), ("t", "")],
)
def test_deleted_removed_and_empty_rows_are_dropped(title, body):
    assert parse({"p.csv": f'title,body\n"{title}","{body}"\nkeep,this\n'.encode()})[0].id == "reddit-2"


def test_markers_inside_text_are_kept():
    [conv] = parse({"p.csv": b'title,body\n"[deleted] my old post","was [removed] by mods"\n'})
    assert [m.text for m in conv.messages] == ["[deleted] my old post", "was [removed] by mods"]


def test_no_unicode_normalisation_or_trimming():
    title = "  Cafe\u0301 \u00a0😀 "
    [conv] = parse({"p.csv": f'title,body\n"{title}",x\n'.encode()})
    assert conv.messages[0].text == title


def test_several_files_get_path_prefixed_ids():
    data = b"title,body\na,b\n"
    convs = parse({"one.csv": data, "two.csv": data, "notes.txt": b"title,body\nx,y\n"})
    assert [c.id for c in convs] == ["reddit-one.csv:1", "reddit-two.csv:1"]


def test_a_file_of_only_dropped_rows_gives_nothing():
    assert parse({"p.csv": b"title,body\n[deleted],x\n"}) == []


# --- damage ---------------------------------------------------------------------------------


def test_unterminated_quote_is_a_parse_error_naming_file_and_line():
    data = TOAST + b'"Cut off post","this body never\r\nends'
    with pytest.raises(ParseError, match="never closed") as err:
        parse({"toastme_pairs.csv": data})
    assert err.value.file == "export:toastme_pairs.csv" and err.value.line == 11


def test_a_row_with_missing_fields_is_an_error():
    with pytest.raises(ParseError, match="2 fields but the header has 4") as err:
        parse({"p.csv": b"title,body,score,created_utc\na,b,1,1600000000\nc,d\n"})
    assert err.value.line == 3


@pytest.mark.parametrize("stamp", ["yesterday", "1e400", "nan", "inf", "99999999999999999999", "253402300799", "-1e20"])
def test_a_bad_created_utc_is_an_error_with_the_line(stamp):
    with pytest.raises(ParseError, match="bad created_utc") as err:
        parse({"p.csv": f"title,body,created_utc\na,b,1600000000\nc,d,{stamp}\n".encode()})
    assert err.value.file == "export:p.csv" and err.value.line == 3


def test_bad_utf8_names_the_line():
    with pytest.raises(ParseError, match="not UTF-8") as err:
        parse({"p.csv": b"title,body\na,b\nc,caf\xe9\n"})
    assert err.value.line == 3


def test_a_header_without_title_and_body_is_not_this_format():
    with pytest.raises(ParseError, match="no Reddit pairs CSV"):
        parse({"p.csv": b"title,text\na,b\n"})


# --- detection ------------------------------------------------------------------------------


def test_detected_from_the_header_not_the_name():
    assert detect(MemorySource({"whatever.txt": TOAST})).format == "reddit_pairs"
    assert detect(MemorySource({"pairs": b"id,title,body\n1,a,b\n"})).format == "reddit_pairs"
    assert not parser_for("reddit_pairs").detect(MemorySource({"toastme_pairs.csv": b"name,age\nann,3\n"}))


@pytest.mark.parametrize(
    "path",
    [DATA / "discord_csv" / "Plant Club - Text Channels - general [900000000000000010].csv",
     DATA / "discord_csv" / "Direct Messages - Private - Birch [300000000000000050].csv",
     DATA / "whatsapp" / "WhatsApp Chat with Ann Lee.txt", DATA / "telegram" / "full_export.json",
     DATA / "messenger" / "message_1.json"],
    ids=lambda p: p.name,
)
def test_other_formats_are_not_claimed(path):
    assert not parser_for("reddit_pairs").detect(MemorySource({path.name: path.read_bytes()}))


def test_lookalike_headers_are_not_detected():
    for header in (b"titles,bodies\n", b"title;body\n", b"post_title,comment_body\n", b"\xff\xfetitle,body\n"):
        assert not parser_for("reddit_pairs").detect(MemorySource({"p.csv": header + b"a,b\n"}))


# --- robustness -----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(data=mutations(TOAST))
def test_damaged_files_parse_or_fail_cleanly(data):
    parse_or_parse_error(MemorySource({"p.csv": data}), "reddit_pairs")


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes_parse_or_fail_cleanly(data):
    parse_or_parse_error(MemorySource({"p.csv": b"title,body,created_utc\n" + data}), "reddit_pairs")
    parse_or_parse_error(MemorySource({"p.csv": data}), "reddit_pairs")
