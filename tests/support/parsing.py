"""Helpers for parser tests: exports held in memory, and the robustness property every parser owes.

`MemorySource` is a `Source` over a dict of file contents, so hypothesis can try thousands of
mutated exports without touching disk. `mutations(data)` is a strategy of damaged versions of
a valid file: truncated, bytes flipped, inserted or removed. `parse_or_parse_error` is the
property itself: a parse either succeeds or raises the parser's own error, nothing else.
`jsonl_export` writes Doppel's own JSONL for pipeline and service tests; `keys` lists a store.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import BinaryIO

import orjson
from hypothesis import strategies as st

from doppel.conversation import Conversation
from doppel.errors import NotFound, ParseError
from doppel.store import Store
from services.ingest.parsers import detect, parser_for
from services.ingest.source import Source


class MemorySource(Source):
    """Files held in memory, by relative path."""

    def __init__(self, files: dict[str, bytes], name: str = "export"):
        self._files, self.name = dict(files), name

    def files(self) -> list[str]:
        return sorted(self._files)

    def size(self, path: str) -> int:
        return len(self._get(path))

    def open(self, path: str) -> BinaryIO:
        return io.BytesIO(self._get(path))

    def _get(self, path: str) -> bytes:
        try:
            return self._files[path]
        except KeyError:
            raise NotFound(f"{self.name}: no file {path!r}") from None


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    """A zip holding `files` (deflated), for tests that go through `open_source`."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def parse_all(source: Source, format: str = "") -> tuple[str, list[Conversation]]:
    """Detect (unless `format` is given) and parse everything."""
    parser = parser_for(format) if format else detect(source)
    return parser.format, list(parser.parse(source))


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` damaged one to three times: cut off, a byte changed, bytes inserted or removed."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete"]))
        at = draw(st.integers(0, max(len(out) - 1, 0)))
        if kind == "truncate":
            del out[at:]
        elif kind == "flip" and out:
            out[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del out[at : at + draw(st.integers(1, 8))]
    return bytes(out)


def parse_or_parse_error(source: Source, format: str) -> list[Conversation] | ParseError:
    """Parse with the named parser; the result, or the ParseError it raised. Any other exception escapes."""
    try:
        conversations = list(parser_for(format).parse(source))
    except ParseError as e:
        assert e.file, "a ParseError must name the file"
        return e
    for c in conversations:
        assert c.messages, f"conversation {c.id!r} was emitted with no messages"
        assert all(m.text for m in c.messages), "a message with empty text was emitted"
    return conversations


def jsonl_export(*rows: tuple[str, str, str, str]) -> bytes:
    """Doppel's JSONL from (conversation, sender, text, timestamp) rows."""
    return b"".join(
        orjson.dumps({"conversation": c, "sender": s, "text": t, "timestamp": ts}) + b"\n" for c, s, t, ts in rows
    )


def keys(store: Store) -> list[str]:
    """Every key in the store, sorted."""
    return [info.key for info in store.list()]
