"""The parser contract, and the small pieces several parsers share.

A parser is two functions. `detect(source)` looks only at the file list and the first bytes
of files (`Source.head`), is cheap, and never raises: a damaged export of its format is still
its format, so that `parse` can say what is wrong with it. `parse(source)` yields
`Conversation`s, each with its messages in time order, holding only real text messages as
FORMATS.md 0.3 defines them, and raises `ParseError` (naming the file, and the line or entry
where known) on malformed input; never any other exception, never a partial result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from doppel.conversation import Conversation, Message
from doppel.dataset import order_key
from doppel.errors import ParseError

from ..source import Source

BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Parser:
    """One export format: its name (as `inspect` prints it), detector and parser."""

    format: str
    detect: Callable[[Source], bool]
    parse: Callable[[Source], Iterator[Conversation]]


def decode_text(data: bytes, where: str) -> str:
    """UTF-8 (a BOM is dropped); invalid bytes are a ParseError naming the line they are on."""
    if data.startswith(BOM):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ParseError(where, f"not UTF-8 text (byte 0x{data[e.start]:02x})", line=line) from None


def load_json(data: bytes, where: str) -> Any:
    """Parse a whole JSON document; errors name the line, and truncation says so."""
    if data.startswith(BOM):
        data = data[3:]
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        text = decode_text(data, where)  # bad UTF-8 is named with its own line
        cut = "unexpected end of data" in e.msg or e.pos >= len(text.rstrip())
        reason = "the file is cut off (truncated JSON)" if cut else f"invalid JSON ({e.msg})"
        raise ParseError(where, reason, line=e.lineno) from None


def sort_messages(messages: list[Message]) -> list[Message]:
    """Messages in time order (stable: equal timestamps keep file order), naive and aware alike."""
    messages.sort(key=lambda m: order_key(m.timestamp))
    return messages
