"""Doppel's own normalised JSONL: what `doppel inspect PATH --messages` prints.

One JSON object per line: `{"conversation", "sender", "text", "timestamp"}`, with optional
`title`, `reply_to` and `id`. Timestamps are ISO-8601: `Z` or an offset is an instant (kept as
UTC), no offset is naive local time. Users of any other messenger convert to this. Empty lines
are skipped; any other line that is not such an object, or has an empty text or a bad
timestamp, is a ParseError naming the file and line.

Messages are grouped by `conversation` wherever they appear (also across files of one
source), each conversation sorted by time and titled by its first non-empty `title` (else its
id). To keep memory bounded the files are read twice: the first pass checks every line and
notes the line where each conversation ends, the second builds the messages and hands a
conversation on as soon as its last line is read. So memory holds the conversations that are
"open" at a time: for the usual file, where each conversation's lines are contiguous, that is
just the largest conversation; a file that interleaves all its conversations holds them all.
Conversations come out in the order their last lines appear. Nothing is yielded before the
whole input has been checked, so a bad line never leaves a partial result.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from doppel.conversation import Conversation, Message, parse_timestamp
from doppel.errors import ParseError

from ..source import Source
from .base import BOM, Parser, sort_messages

FORMAT = "jsonl"
REQUIRED = ("conversation", "sender", "text", "timestamp")
OPTIONAL = ("title", "reply_to", "id")

Line = tuple[int, str, str, Message]  # (line number, conversation, title, message)


def _first_object(head: bytes) -> Any:
    for line in head.removeprefix(BOM).split(b"\n"):
        if line.strip():
            try:
                return orjson.loads(line)
            except orjson.JSONDecodeError:
                return None
    return None


def _is_jsonl_head(head: bytes) -> bool:
    first = _first_object(head)
    return type(first) is dict and all(k in first for k in REQUIRED)


def _files(source: Source) -> list[str]:
    """Files whose first non-empty line is a message object."""
    found = []
    for path in source.files():
        try:
            head = source.head(path)
        except OSError as e:
            raise ParseError(source.where(path), f"cannot read the file ({e})") from None
        if _is_jsonl_head(head):
            found.append(path)
    return found


def detect(source: Source) -> bool:
    """The first non-empty line of some file is a JSON object with the four required keys."""
    try:
        return any(_is_jsonl_head(source.head(path)) for path in source.files())
    except Exception:  # noqa: BLE001 - detect never raises; parse reports damage
        return False


def _message(d: Any, where: str, lineno: int) -> tuple[str, str, Message]:
    """(conversation, title, message) of one line; ParseError naming the line otherwise."""
    if type(d) is not dict:
        raise ParseError(where, f"a line must be a JSON object, not {type(d).__name__}", line=lineno)
    for key in REQUIRED:
        if type(d.get(key)) is not str:
            problem = "is missing" if key not in d else f"must be a string, not {type(d[key]).__name__}"
            raise ParseError(where, f"{key!r} {problem}", line=lineno)
    for key in OPTIONAL:
        if d.get(key) is not None and type(d[key]) is not str:
            raise ParseError(where, f"{key!r} must be a string, not {type(d[key]).__name__}", line=lineno)
    if not d["text"]:
        raise ParseError(where, "'text' is empty", line=lineno)
    try:
        ts = parse_timestamp(d["timestamp"])
    except ValueError:
        raise ParseError(where, f"'timestamp' {d['timestamp']!r} is not ISO-8601", line=lineno) from None
    return d["conversation"], d.get("title") or "", Message(d["sender"], d["text"], ts, d.get("reply_to"), d.get("id"))


def _lines(source: Source, path: str) -> Iterator[Line]:
    """Every non-empty line of one file as a checked message."""
    where = source.where(path)
    try:
        with source.open(path) as f:
            for lineno, raw in enumerate(f, 1):
                line = raw.removeprefix(BOM) if lineno == 1 else raw
                if not line.strip():
                    continue
                try:
                    d = orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    cut = not line.endswith(b"\n")  # only the last line can lack one
                    reason = "the file is cut off (truncated line)" if cut else f"invalid JSON ({e.msg})"
                    raise ParseError(where, reason, line=lineno) from None
                yield (lineno, *_message(d, where, lineno))
    except OSError as e:
        raise ParseError(where, f"cannot read the file ({e})") from None


def parse(source: Source) -> Iterator[Conversation]:
    """Conversations of every JSONL file in `source`, each as soon as its last line is read."""
    paths = _files(source)
    if not paths:
        raise ParseError(source.name, "no Doppel JSONL found (no line with conversation, sender, text, timestamp)")
    ends: dict[str, tuple[int, int]] = {}  # conversation -> (file index, line) of its last message
    titles: dict[str, str] = {}
    for i, path in enumerate(paths):  # first pass: check everything, note where conversations end
        for lineno, cid, title, _ in _lines(source, path):
            ends[cid] = (i, lineno)
            if title and cid not in titles:
                titles[cid] = title
    open_: dict[str, list[Message]] = {}
    for i, path in enumerate(paths):
        for lineno, cid, _, message in _lines(source, path):
            messages = open_.get(cid)
            if messages is None:
                messages = open_[cid] = []
            messages.append(message)
            if ends.get(cid) == (i, lineno):
                del open_[cid]
                yield Conversation(cid, titles.get(cid) or cid, FORMAT, sort_messages(messages))
    if open_:
        raise ParseError(source.name, "the export changed while it was being read; try again")


PARSERS = [Parser(FORMAT, detect, parse)]
