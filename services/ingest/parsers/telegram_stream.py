"""A Telegram result.json as yajl reads it: streamed in chunks, `\\xNN` repaired, errors placed.

The exporter writes control characters other than \\n \\r \\t as `\\xNN`, which is not JSON.
`ResultStream` rewrites exactly that escape (`\\x0N`/`\\x1N` where the backslash starts an
escape, i.e. ends an odd run of backslashes) to `\\u00NN` as the bytes stream past, holding back
the few bytes at a chunk's end that could be a cut escape. Anything else that is not JSON is an
error naming the line, found from the excerpt of the failing chunk that yajl quotes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, BinaryIO

import ijson

from doppel.errors import ParseError

from ..source import Source
from .base import BOM

CHUNK = 1 << 20  # bytes handed to yajl at a time (tests lower it to cut escapes across chunks)
SECTIONS = ("chats", "left_chats")  # where a full export lists its dialogs, in this order
WATCHED = tuple(f'"{key}"'.encode() for key in SECTIONS)  # a section may exist only if these occur

# `\x0B` etc. where it begins an escape: preceded by an even run of backslashes.
_X_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\x([01][0-9A-F])")
_X_HINT = re.compile(rb"\\x[01]")  # cheaper to look for than `_X_ESCAPE`
_NEWLINES = bytes.maketrans(b"\n\r", b"  ")  # yajl's error excerpt shows them as spaces
_CONTINUATION = bytes(range(0x80, 0xC0))


class ResultStream:
    """A result.json as yajl reads it, one chunk at a time: the BOM dropped, `\\xNN` repaired.

    `last` (the chunk yajl is parsing) and `lines` (newlines before it) let an error name its
    line. With `watch` it notes which `WATCHED` keys occur, and `left_at`: the offset of
    `"left_chats"` where the exporter's layout shows it is a top-level key, and the newlines
    before it. With `start` it reads `{` and then the file from that offset.
    """

    def __init__(self, source: Source, path: str, *, watch: bool = False, start: tuple[int, int] | None = None):
        self.where = source.where(path)
        self.last, self.lines = b"", 0
        self.watched: set[bytes] = set()
        self.left_at: tuple[int, int] | None = None
        self._watch = self._layout = watch
        self._carry = self._out = self._tail = b""  # raw bytes held back; repaired bytes not read yet
        self._consumed = self._lines_out = 0  # raw bytes read; newlines handed out
        self._started = self._eof = self._content = False
        try:
            self._raw: BinaryIO = source.open(path)
            if start is not None:  # seek, or read up to it where the file cannot (a zip entry)
                offset, self._lines_out = start
                if self._raw.seekable():
                    self._raw.seek(offset)
                else:
                    while offset > 0 and (got := self._raw.read(min(offset, CHUNK))):
                        offset -= len(got)
                self._carry, self._started = b"{", True
        except OSError as e:
            raise ParseError(self.where, f"cannot read the file ({e})") from None

    def __enter__(self) -> ResultStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self._raw.close()

    def items(self, prefix: str) -> Iterator[Any]:
        """Each value at `prefix` (ijson's dotted path), built whole; errors are ParseErrors."""
        return self._guarded(ijson.items(self, prefix, use_float=True, buf_size=CHUNK))

    def events(self) -> Iterator[tuple[str, str, Any]]:
        """ijson's (prefix, event, value) events; each passes through Python, so for small work."""
        return self._guarded(ijson.parse(self, use_float=True, buf_size=CHUNK))

    def _guarded(self, it: Iterator[Any]) -> Iterator[Any]:
        while True:
            try:
                item = next(it)
            except StopIteration:
                return
            except (ijson.JSONError, ValueError, OSError) as e:  # ValueError: bad UTF-8, huge numbers
                raise self._error(e) from None
            yield item
            del item  # not held while the next one is built

    def read(self, n: int = -1) -> bytes:
        """At most `n` repaired bytes (yajl takes no more than it asked for); b"" at the end."""
        if n == 0:
            return b""
        while not self._out and not self._eof:
            self._fill()
        out = self._out
        if 0 < n < len(out):
            out, self._out = out[:n], out[n:]
        else:
            self._out = b""
        self.last, self.lines = out, self._lines_out
        self._lines_out += out.count(b"\n")
        return out

    def _fill(self) -> None:
        raw = self._raw.read(CHUNK)
        base = self._consumed - len(self._carry)  # the offset of `data` in the file
        self._consumed += len(raw)
        data = self._carry + raw if self._carry else raw
        if not self._started:
            if raw and len(data) < 4:
                self._carry = data
                return
            self._started = True
            if data.startswith(BOM):
                data, base = data[len(BOM) :], base + len(BOM)
            self._layout = self._layout and data.startswith(b'{\n "')  # the exporter's 1-space indent
        if raw:
            cut = _escape_safe_end(data)
            data, self._carry = data[:cut], data[cut:]
        else:
            self._eof, self._carry = True, b""
        if self._watch:
            self._look(data, base)
        if not self._content and data and not data.isspace():
            self._content = True
        self._out = _X_ESCAPE.sub(rb"\1\\u00\2", data) if _X_HINT.search(data) else data

    def _look(self, data: bytes, base: int) -> None:
        window, tail = self._tail + data, self._tail  # a key may be cut by the chunk's end
        self._tail = window[-16:]
        chats, left = WATCHED
        if chats not in self.watched and chats in window:
            self.watched.add(chats)
        at = -1 if self.left_at or (left in self.watched and not self._layout) else window.find(left)
        while at >= 0:
            self.watched.add(left)
            if self._layout and window[at - 2 : at] == b"\n ":
                lines = self._lines_out - tail.count(b"\n") + window.count(b"\n", 0, at)
                self.left_at = (base - len(tail) + at, lines)
                return
            at = window.find(left, at + 1) if self._layout else -1

    def _error(self, e: Exception) -> ParseError:
        """`e` as a ParseError naming the file and, where yajl's excerpt pins it down, the line."""
        if isinstance(e, OSError):
            return ParseError(self.where, f"cannot read the file ({e})")
        if isinstance(e, UnicodeDecodeError):  # bytes yajl let through but Python refuses (a surrogate)
            return ParseError(self.where, f"not UTF-8 text (byte 0x{e.object[e.start]:02x})")
        if not isinstance(e, ijson.JSONError):
            return ParseError(self.where, f"invalid JSON ({e})")
        message = e.args[0] if e.args else b""
        lines = (message if isinstance(message, bytes) else str(message).encode()).split(b"\n")
        what = lines[0].decode("utf-8", "replace").partition(": ")[2].rstrip(".")
        if what == "premature EOF":
            if not self._content:
                return ParseError(self.where, "the file is empty")
            return ParseError(self.where, "the file is cut off (truncated JSON)", line=self._lines_out + 1)
        excerpt = lines[1] if len(lines) > 1 else b""
        at = _error_offset(excerpt, self.last)
        line = None if at is None else self.lines + self.last.count(b"\n", 0, at) + 1
        near = "" if at is not None else f" near {excerpt.strip().decode('utf-8', 'replace')!r}"  # for a search
        if what.startswith("invalid bytes in UTF8"):
            return ParseError(self.where, f"not UTF-8 text{_bad_byte(self.last, at)}{near}", line=line)
        return ParseError(self.where, f"invalid JSON ({what}){near}", line=line)


def _escape_safe_end(data: bytes) -> int:
    """Where to cut `data` so that no `\\xNN`, nor the run of backslashes before it, is cut in two.

    A backslash in the last four bytes may begin a cut escape: cut before it, and before the
    backslashes right in front of it (their count decides whether it begins one at all).
    """
    k = data.find(b"\\", max(0, len(data) - 4))
    return len(data) if k < 0 else len(data[:k].rstrip(b"\\"))


def _error_offset(excerpt: bytes, chunk: bytes) -> int | None:
    """Where in `chunk` yajl failed, from its excerpt; None if the excerpt occurs twice.

    yajl quotes up to 30 bytes either side of the error (newlines as spaces), padded so that the
    error is at column 40: 10 spaces, or more when the error is near the chunk's start.
    """
    text = chunk.translate(_NEWLINES)
    for at in range(min(30, len(text) + 1)):
        if excerpt == b" " * (40 - at) + text[: at + 30]:
            return at
    around = excerpt[10:]
    at = text.find(around)
    return None if not around or at < 0 or text.find(around, at + 1) >= 0 else at + 30


def _bad_byte(chunk: bytes, at: int | None) -> str:
    """` (byte 0xNN)`: the first byte that is not UTF-8 on the line up to `at`, if any."""
    if not at:
        return ""
    start = chunk.rfind(b"\n", 0, at) + 1
    line = chunk[start:at] if start else chunk[:at].lstrip(_CONTINUATION)  # a chunk may begin mid-character
    try:
        line.decode()
    except UnicodeDecodeError as e:
        return f" (byte 0x{line[e.start]:02x})"
    return ""
