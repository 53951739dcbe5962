"""Doppel's own normalised JSONL: what `doppel inspect PATH --messages` prints.

One JSON object per line: `{"conversation", "sender", "text", "timestamp"}`, with optional
`title`, `reply_to` and `id`. Timestamps are ISO-8601: `Z` or an offset is an instant, no
offset is naive local time. Users of any other messenger convert to this. Messages are grouped
by `conversation` wherever they appear in the file (so memory is the file's messages, which
for this hand-made format is the user's choice), each conversation sorted by time.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson

from doppel.conversation import Conversation, Message, parse_timestamp
from doppel.errors import ParseError

from ..source import Source
from .base import BOM, Parser, sort_messages

FORMAT = "jsonl"
REQUIRED = ("conversation", "sender", "text", "timestamp")


def _first_object(head: bytes) -> dict | None:
    for line in head.removeprefix(BOM).split(b"\n"):
        if line.strip():
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None
    return None


def _files(source: Source) -> list[str]:
    """Files whose first non-empty line is a message object."""
    found = []
    for path in source.files():
        first = _first_object(source.head(path))
        if first is not None and all(k in first for k in REQUIRED):
            found.append(path)
    return found


def detect(source: Source) -> bool:
    try:
        return bool(_files(source))
    except Exception:  # detect never raises; parse reports damage
        return False


def _message(d: object, where: str, lineno: int) -> tuple[str, str, Message]:
    """(conversation, title, message) of one line; ParseError naming the line otherwise."""
    if type(d) is not dict:
        raise ParseError(where, f"a line must be a JSON object, not {type(d).__name__}", line=lineno)
    for key in REQUIRED:
        if type(d.get(key)) is not str:
            problem = "is missing" if key not in d else f"must be a string, not {type(d[key]).__name__}"
            raise ParseError(where, f"{key!r} {problem}", line=lineno)
    for key in ("title", "reply_to", "id"):
        if d.get(key) is not None and type(d[key]) is not str:
            raise ParseError(where, f"{key!r} must be a string", line=lineno)
    if not d["text"]:
        raise ParseError(where, "'text' is empty", line=lineno)
    try:
        ts = parse_timestamp(d["timestamp"])
    except ValueError:
        raise ParseError(where, f"'timestamp' {d['timestamp']!r} is not ISO-8601", line=lineno) from None
    return d["conversation"], d.get("title") or "", Message(d["sender"], d["text"], ts, d.get("reply_to"), d.get("id"))


def parse(source: Source) -> Iterator[Conversation]:
    for path in _files(source):
        where = source.where(path)
        groups: dict[str, tuple[str, list[Message]]] = {}
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
                cid, title, message = _message(d, where, lineno)
                group = groups.setdefault(cid, (title, []))
                group[1].append(message)
        for cid, (title, messages) in groups.items():
            yield Conversation(cid, title or cid, FORMAT, sort_messages(messages))


PARSERS = [Parser(FORMAT, detect, parse)]
