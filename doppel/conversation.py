"""The normalised conversation model and its compressed JSONL codec.

Every parser produces `Conversation`s of `Message`s, the trainer reads them back, and a
dataset stores them as zstd-compressed JSONL shards, one conversation per line, so a reader
holds one conversation at a time. Millions of messages pass through here, hence plain slotted
dataclasses and orjson rather than pydantic per message.

Timestamps are either aware UTC instants or naive local wall-clock time (FORMATS.md 0.2). On
disk they are ISO-8601: aware as `2024-01-02T03:04:05.123456Z`, naive with no offset, so a
round trip keeps microseconds and naive-vs-aware exactly. Text is never normalised.

Run `python bench/jsonl.py` for the codec's throughput.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

import orjson
import zstandard

from doppel.errors import InvalidArgument, ParseError

__all__ = [
    "Conversation",
    "ConversationWriter",
    "Message",
    "conversation_from_dict",
    "conversation_to_dict",
    "format_timestamp",
    "message_from_dict",
    "message_to_dict",
    "parse_timestamp",
    "read_conversations",
    "write_conversations",
]

ZSTD_LEVEL = 3
READ_CHUNK = 64 * 1024  # compressed bytes read at a time; output per read is a few times that


def _to_utc(ts: datetime) -> datetime:
    """`ts` with any non-UTC zone converted to UTC; naive (or zone without offset) stays naive."""
    tz = ts.tzinfo
    if tz is None or tz is UTC:
        return ts
    if tz.utcoffset(ts) is None:
        return ts.replace(tzinfo=None)
    return ts.astimezone(UTC)


@dataclass(slots=True)
class Message:
    """One message: sender, exact text, timestamp (aware is normalised to UTC, naive kept naive)."""

    sender: str
    text: str
    timestamp: datetime
    reply_to: str | None = None
    id: str | None = None

    def __post_init__(self) -> None:
        tz = self.timestamp.tzinfo
        if tz is not None and tz is not UTC:
            self.timestamp = _to_utc(self.timestamp)


@dataclass(slots=True)
class Conversation:
    """A thread of messages in time order.

    `participants` defaults to the distinct senders in first-appearance order; after
    construction it is always a list. `senders()` recomputes it from the messages.
    """

    id: str
    title: str
    source_format: str
    messages: list[Message]
    participants: list[str] | None = None

    def __post_init__(self) -> None:
        if self.participants is None:
            self.participants = self.senders()

    def senders(self) -> list[str]:
        """Distinct senders of the messages, in order of first appearance."""
        return list(dict.fromkeys(m.sender for m in self.messages))


# --- timestamps ---------------------------------------------------------------------------


def format_timestamp(dt: datetime) -> str:
    """ISO-8601: aware as UTC with `Z`, naive with no offset; microseconds only when non-zero."""
    dt = _to_utc(dt)
    if dt.tzinfo is None:
        return dt.isoformat()
    return dt.replace(tzinfo=None).isoformat() + "Z"


def parse_timestamp(s: str) -> datetime:
    """Parse ISO-8601: `Z` or `+HH:MM` offsets give an aware UTC datetime, no offset a naive one.

    Raises ValueError on anything else (including non-strings and out-of-range instants).
    """
    if type(s) is not str:
        raise ValueError(f"timestamp must be a string, not {type(s).__name__}")
    dt = datetime.fromisoformat(s)
    try:
        return _to_utc(dt)
    except OverflowError:
        raise ValueError(f"timestamp out of range in UTC: {s!r}") from None


# --- dicts: the JSON shape of a message and of a conversation -----------------------------


def message_to_dict(m: Message) -> dict[str, Any]:
    """The JSON object of a message; `reply_to` and `id` are left out when None."""
    d: dict[str, Any] = {"sender": m.sender, "text": m.text, "timestamp": format_timestamp(m.timestamp)}
    if m.reply_to is not None:
        d["reply_to"] = m.reply_to
    if m.id is not None:
        d["id"] = m.id
    return d


def _str_field(d: dict[str, Any], key: str, what: str) -> str:
    try:
        v = d[key]
    except KeyError:
        raise ValueError(f"{what} has no {key!r}") from None
    if type(v) is not str:
        raise ValueError(f"{what}: {key!r} must be a string, not {type(v).__name__}")
    return v


def _opt_str_field(d: dict[str, Any], key: str, what: str) -> str | None:
    v = d.get(key)
    if v is not None and type(v) is not str:
        raise ValueError(f"{what}: {key!r} must be a string, not {type(v).__name__}")
    return v


def message_from_dict(d: Any, what: str = "message") -> Message:
    """Build a Message from its JSON object; unknown keys are ignored. ValueError says what is wrong."""
    if type(d) is not dict:
        raise ValueError(f"{what} must be a JSON object, not {type(d).__name__}")
    sender = d.get("sender")
    text = d.get("text")
    ts = d.get("timestamp")
    reply_to = d.get("reply_to")
    mid = d.get("id")
    if type(sender) is not str or type(text) is not str or type(ts) is not str:
        for key in ("sender", "text", "timestamp"):
            _str_field(d, key, what)  # raises, naming the first bad field
        raise AssertionError("unreachable: one of the three is not a string")
    if (reply_to is not None and type(reply_to) is not str) or (mid is not None and type(mid) is not str):
        for key in ("reply_to", "id"):
            _opt_str_field(d, key, what)
    try:
        timestamp = parse_timestamp(ts)
    except ValueError as e:
        raise ValueError(f"{what}: bad timestamp {ts!r} ({e})") from None
    return Message(sender, text, timestamp, reply_to, mid)


def conversation_to_dict(c: Conversation) -> dict[str, Any]:
    """The JSON object of a conversation (one line of a shard)."""
    return {
        "id": c.id,
        "title": c.title,
        "source_format": c.source_format,
        "participants": c.participants,
        "messages": [message_to_dict(m) for m in c.messages],
    }


def conversation_from_dict(d: Any) -> Conversation:
    """Build a Conversation from its JSON object. ValueError says what is wrong."""
    if type(d) is not dict:
        raise ValueError(f"a conversation must be a JSON object, not {type(d).__name__}")
    cid = _str_field(d, "id", "conversation")
    what = f"conversation {cid!r}"
    title = _str_field(d, "title", what)
    source_format = _str_field(d, "source_format", what)
    raw = d.get("messages")
    if type(raw) is not list:
        raise ValueError(f"{what}: 'messages' must be a list")
    participants = d.get("participants")
    if participants is not None and (
        type(participants) is not list or any(type(p) is not str for p in participants)
    ):
        raise ValueError(f"{what}: 'participants' must be a list of strings")
    messages = []
    for i, m in enumerate(raw):
        try:
            messages.append(message_from_dict(m))
        except ValueError as e:
            raise ValueError(f"{what}, message {i + 1}: {e}") from None
    return Conversation(cid, title, source_format, messages, participants)


# --- the compressed JSONL codec -----------------------------------------------------------


# orjson writes datetimes itself, exactly as format_timestamp does (`Z` for UTC, no offset when
# naive, microseconds only when non-zero) but without a Python call per message; tests hold
# the two to the same output.
_DUMPS_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_UTC_Z


def _row(c: Conversation) -> dict[str, Any]:
    """conversation_to_dict with datetime objects left for orjson to format."""
    messages = []
    for m in c.messages:
        d = {"sender": m.sender, "text": m.text, "timestamp": m.timestamp}
        if m.reply_to is not None:
            d["reply_to"] = m.reply_to
        if m.id is not None:
            d["id"] = m.id
        messages.append(d)
    return {
        "id": c.id,
        "title": c.title,
        "source_format": c.source_format,
        "participants": c.participants,
        "messages": messages,
    }


def _name_of(fileobj: object) -> str:
    name = getattr(fileobj, "name", None)
    return name if isinstance(name, str) and name else "<stream>"


class ConversationWriter:
    """Writes conversations as zstd-compressed JSONL into a binary file object, one at a time.

    Use as a context manager; `close()` ends the zstd frame but leaves `fileobj` open. When the
    `with` block raises, the frame is left unfinished so a reader sees a truncated stream rather
    than a short but valid one.
    """

    def __init__(self, fileobj: BinaryIO, *, name: str | None = None, level: int = ZSTD_LEVEL):
        self.name = name or _name_of(fileobj)
        self.conversations = 0
        self.messages = 0
        self._out = zstandard.ZstdCompressor(level=level, write_checksum=True).stream_writer(
            fileobj, closefd=False
        )
        self._closed = False

    def write(self, conversation: Conversation) -> None:
        """Append one conversation as one line."""
        if self._closed:
            raise ValueError(f"{self.name}: writer is closed")
        try:
            line = orjson.dumps(_row(conversation), option=_DUMPS_OPTIONS)
        except (orjson.JSONEncodeError, TypeError, AttributeError) as e:
            raise InvalidArgument(
                f"{self.name}: conversation {conversation.id!r} cannot be written: {e}"
            ) from None
        self._out.write(line)
        self.conversations += 1
        self.messages += len(conversation.messages)

    def close(self) -> None:
        """End the zstd frame and flush it to the file object (which stays open)."""
        if not self._closed:
            self._closed = True
            self._out.close()

    def __enter__(self) -> ConversationWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True  # abandon: no frame end, so the output reads as truncated


def write_conversations(
    fileobj: BinaryIO, conversations: Iterable[Conversation], *, name: str | None = None
) -> int:
    """Stream `conversations` into `fileobj` as zstd JSONL; returns how many were written."""
    with ConversationWriter(fileobj, name=name) as w:
        for c in conversations:
            w.write(c)
    return w.conversations


def _lines(fileobj: BinaryIO, name: str) -> Iterator[tuple[int, bytes]]:
    """Decompress `fileobj` lazily and yield (line number, line) for each non-empty line.

    Detects truncation (frame not finished, last line without a newline) and corruption
    (zstd errors, checksum mismatch), raising ParseError with the line being read.
    """
    lineno = 1
    pending: list[bytes] = []  # pieces of the line being assembled
    dctx = zstandard.ZstdDecompressor()
    dobj = dctx.decompressobj()
    seen_input = False
    in_frame = False
    while True:
        chunk = fileobj.read(READ_CHUNK)
        if not chunk:
            break
        seen_input = True
        while chunk:
            in_frame = True
            try:
                out = dobj.decompress(chunk)
            except zstandard.ZstdError as e:
                raise ParseError(name, f"corrupt zstd stream ({e})", line=lineno) from None
            chunk = b""
            if dobj.eof:  # a frame ended; anything after it is the next frame
                in_frame = False
                chunk = dobj.unused_data
                dobj = dctx.decompressobj()
            if not out:
                continue
            parts = out.split(b"\n")
            if len(parts) == 1:
                pending.append(out)
                continue
            if pending:
                pending.append(parts[0])
                parts[0] = b"".join(pending)
                pending = []
            last = parts.pop()
            if last:
                pending.append(last)
            for line in parts:
                if line:
                    yield lineno, line
                lineno += 1
    if not seen_input:
        raise ParseError(name, "empty file: no zstd frame (truncated?)", line=1)
    if in_frame:
        raise ParseError(name, "stream ends inside a zstd frame (truncated file)", line=lineno)
    if pending:
        raise ParseError(name, "last line has no newline (truncated file)", line=lineno)


def read_conversations(fileobj: BinaryIO, *, name: str | None = None) -> Iterator[Conversation]:
    """Stream conversations back from zstd JSONL, one line at a time.

    Raises ParseError naming `name` (default: the file object's name) and the line when the
    stream is truncated, corrupt, or a line is not a valid conversation.
    """
    name = name or _name_of(fileobj)
    for lineno, line in _lines(fileobj, name):
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            raise ParseError(name, f"not valid JSON ({e})", line=lineno) from None
        try:
            conversation = conversation_from_dict(obj)
        except ValueError as e:
            raise ParseError(name, str(e), line=lineno) from None
        yield conversation
