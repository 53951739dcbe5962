"""Reddit post/comment pairs in a CSV (r/toastme style), FORMATS.md section 7.

The file is project-defined: a header naming at least `title` (the post) and `body` (a reply
to it), found by name in any order and case (a UTF-8 BOM is dropped), maybe with `score`,
`created_utc` and a post id column. Each kept row is its own two-message conversation: `OP`
says the title, then `commenter` says the body. Rows whose title or body is empty, `[deleted]`
or `[removed]` are dropped. Reddit's API escapes `&amp; &lt; &gt;`; they are unescaped once, so
a typed `&gt;` (sent as `&amp;gt;`) stays `&gt;`. Embedded CRLF becomes `\\n`.

Time: with a `created_utc` value (epoch seconds, integer or float) the post is at that UTC
instant. Without one there is no time at all, and rather than invent a zone or an instant the
post gets a fixed naive `1970-01-01 00:00:00` (plainly not a real time). In both cases the
comment is one second after the post, so the pair keeps its order after sorting.

Ids: `reddit-<post id>` from a `post_id`, `link_id` (`t3_` dropped) or `id` column, with `-2`,
`-3`, ... for further rows of the same post; otherwise `reddit-<row>`, the 1-based data row.
When a source holds several such CSVs, the file path is put in front of the row number.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from doppel.conversation import Conversation, Message
from doppel.errors import ParseError

from ..source import Source
from .base import Parser
from .csvfile import (
    DETECT_HEADS,
    candidates,
    crlf_to_lf,
    field_count_error,
    first_line,
    header_fields,
    peek,
    read_head,
    read_rows,
)

FORMAT = "reddit_pairs"
NO_TIME = datetime(1970, 1, 1)  # naive: the file has no time, see the module docstring
_SECOND = timedelta(seconds=1)
_GONE = frozenset({"", "[deleted]", "[removed]"})
_ID_COLUMNS = ("post_id", "link_id", "id")


def _names(fields: list[str]) -> list[str]:
    return [f.strip().lower() for f in fields]


def _is_pairs_header(head: bytes) -> bool:
    line = first_line(head)
    if line is None:
        return False
    names = _names(header_fields(line))
    return "title" in names and "body" in names


def detect(source: Source) -> bool:
    """A CSV whose header names `title` and `body` columns."""
    try:
        return any(_is_pairs_header(peek(source, p)) for p in candidates(source, ".csv")[:DETECT_HEADS])
    except Exception:  # noqa: BLE001 - detect never raises; parse reports damage
        return False


def _unescape(s: str) -> str:
    """Reddit's `&lt; &gt; &amp;` undone exactly once (`&amp;` last, so `&amp;gt;` -> `&gt;`)."""
    if "&" not in s:
        return s
    return s.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _created(value: str) -> datetime:
    """Epoch seconds (`1577836800` or `1577836800.0`) as an aware UTC datetime; ValueError otherwise."""
    try:
        seconds = int(value) if value.isdigit() else float(value)
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError) as e:
        raise ValueError(str(e)) from None


def _post_id(value: str) -> str:
    return value[3:] if value.startswith("t3_") else value


def _parse_file(source: Source, path: str, prefix: str) -> Iterator[Conversation]:
    where = source.where(path)
    rows = read_rows(source, path)
    _, header = next(rows, (1, []))
    names = _names(header)
    if "title" not in names or "body" not in names:
        raise ParseError(where, "the header has no 'title' and 'body' columns", line=1)
    title_at, body_at = names.index("title"), names.index("body")
    created_at = names.index("created_utc") if "created_utc" in names else None
    id_at = next((names.index(c) for c in _ID_COLUMNS if c in names), None)
    width = len(header)
    seen: dict[str, int] = {}
    for number, (line, row) in enumerate(rows, 1):
        if len(row) != width:
            raise field_count_error(where, line, len(row), width)
        title, body = row[title_at], row[body_at]
        if title in _GONE or body in _GONE:
            continue
        title, body = crlf_to_lf(_unescape(title)), crlf_to_lf(_unescape(body))
        stamp = row[created_at].strip() if created_at is not None else ""
        try:
            posted = _created(stamp) if stamp else NO_TIME
            replied = posted + _SECOND
        except (ValueError, OverflowError):
            raise ParseError(where, f"bad created_utc {stamp!r} (expected epoch seconds)", line=line) from None
        key = _post_id(row[id_at].strip()) if id_at is not None else ""
        if key:
            n = seen[key] = seen.get(key, 0) + 1
            cid = f"reddit-{prefix}{key}" + (f"-{n}" if n > 1 else "")
        else:
            cid = f"reddit-{prefix}{number}"
        messages = [Message("OP", title, posted), Message("commenter", body, replied)]
        yield Conversation(cid, title, FORMAT, messages)


def parse(source: Source) -> Iterator[Conversation]:
    """One conversation per kept row of every pairs CSV in `source`."""
    paths = [p for p in candidates(source, ".csv") if _is_pairs_header(read_head(source, p))]
    if not paths:
        raise ParseError(source.name, "no Reddit pairs CSV found (no header with 'title' and 'body' columns)")
    for path in paths:
        yield from _parse_file(source, path, f"{path}:" if len(paths) > 1 else "")


PARSERS = [Parser(FORMAT, detect, parse)]
