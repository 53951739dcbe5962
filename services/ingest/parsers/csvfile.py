"""CSV reading shared by the Discord CSV and Reddit pair parsers: strict quoting, line numbers, BOM.

Python's `csv` silently returns a cut-off last row for an unterminated quote unless it runs
with `strict=True` (FORMATS.md 3.1), and a killed export leaves exactly that. So rows are read
strictly, from one physical line decoded at a time, which lets bad UTF-8 and broken quoting be
reported on the line where they are, and every row comes with the line it starts on (a quoted
field can span lines). A UTF-8 BOM on the first line is dropped. CSV exports are one file per
conversation (Discord) or one row per conversation (Reddit), so a file is streamed, never
loaded whole.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from doppel.errors import ParseError

from ..source import Source
from .base import BOM

DETECT_HEADS = 64  # how many candidate files a detector peeks into


def candidates(source: Source, extension: str) -> list[str]:
    """Files that may hold an export: a lone file whatever its name, else those ending in `extension`."""
    files = source.files()
    if len(files) == 1:
        return files
    return [f for f in files if f.lower().endswith(extension)]


def first_line(head: bytes) -> str | None:
    """The first line of a file's head without BOM or line ending; None if it is not UTF-8."""
    if head.startswith(BOM):
        head = head[3:]
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return None


def peek(source: Source, path: str) -> bytes:
    """`source.head(path)` for a detector, which never raises: b"" when the file cannot be read."""
    try:
        return source.head(path)
    except Exception:  # noqa: BLE001 - parse reports a file it cannot read
        return b""


def read_head(source: Source, path: str) -> bytes:
    """`source.head(path)` for a parser: an unreadable file is a ParseError naming it."""
    try:
        return source.head(path)
    except OSError as e:
        raise ParseError(source.where(path), f"cannot read the file ({e})") from None


def header_fields(line: str, delimiter: str = ",") -> list[str]:
    """A header line split as CSV (its names may be quoted); [] when it is not valid CSV."""
    try:
        return next(csv.reader([line], delimiter=delimiter, strict=True), [])
    except csv.Error:
        return []


def _lines(f: BinaryIO, where: str) -> Iterator[str]:
    """Decoded physical lines, line endings kept (csv needs them); bad UTF-8 names its line."""
    for lineno, raw in enumerate(f, 1):
        if lineno == 1 and raw.startswith(BOM):
            raw = raw[3:]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ParseError(where, f"not UTF-8 text (byte 0x{raw[e.start]:02x})", line=lineno) from None


def _reason(e: csv.Error) -> str:
    msg = str(e)
    if "unexpected end of data" in msg:
        return "a quoted field is never closed: the file is cut off (unterminated quote)"
    if "field larger than field limit" in msg:
        return f"a field is too long ({msg}); probably a quote that is never closed"
    return f"malformed CSV ({msg})"


def read_rows(source: Source, path: str, delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
    """(line the row starts on, fields) for every row of a CSV file, header included.

    Blank lines are skipped. Broken quoting, bad UTF-8 and unreadable data raise ParseError
    naming the file and line.
    """
    where = source.where(path)
    try:
        with source.open(path) as f:
            yield from _rows(_lines(f, where), where, delimiter)
    except OSError as e:
        raise ParseError(where, f"cannot read the file ({e})") from None


def _rows(lines: Iterable[str], where: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise ParseError(where, _reason(e), line=start) from None
        if row:
            yield start, row
        start = reader.line_num + 1


def field_count_error(where: str, line: int, got: int, want: int) -> ParseError:
    """The error for a row whose number of fields does not match the header."""
    return ParseError(where, f"row has {got} fields but the header has {want}", line=line)


def crlf_to_lf(s: str) -> str:
    """Embedded CRLF (a Windows export's newline inside a quoted field) as `\\n` (FORMATS.md 0.4)."""
    return s.replace("\r\n", "\n") if "\r" in s else s
