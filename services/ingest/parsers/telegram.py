"""Telegram Desktop JSON export (`result.json`), FORMATS.md section 5.

Two shapes: a single-chat export, whose top level is the dialog itself (`{name?, type, id,
messages}`), and a full account export, whose dialogs sit in `chats.list` and `left_chats.list`.
Each dialog becomes one conversation. Only `type: "message"` entries with non-empty text count;
`text` is a string or an array of strings and entity objects, flattened by concatenating every
part's `text` (a `text_link` keeps its visible text). Timestamps come from `date_unixtime`
(an absolute instant) or, in exports before v4.0, from `date`, which is the exporter's local
wall-clock time and so stays naive.

Memory: a full export is one JSON document of hundreds of MB to several GB, so it is streamed
with ijson (yajl, in C): each dialog is built, converted and released before the next, and
memory is bounded by the largest dialog. ijson follows one path per pass, so `left_chats` takes
a second pass, made only when the bytes `"left_chats"` occurred in the first, and starting at
that key where the exporter's layout shows where it is; a section key that gave no dialog is
checked by a slow pass that says what is wrong with it. A single-chat export is one dialog: it
is loaded whole, with orjson.

The exporter's `\\xNN` escapes (not JSON) are repaired as the bytes stream past: see
`telegram_stream`.

Conversation ids are `telegram-<dialog id>`; a nameless peer (`name: null`) is titled
"Deleted account", and saved messages / replies (no `name`) by their type.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from doppel.conversation import Conversation, Message
from doppel.errors import ParseError

from ..source import Source
from .base import BOM, Parser, load_json, sort_messages
from .telegram_stream import CHUNK, SECTIONS, WATCHED, ResultStream

FORMAT = "telegram"
DETECT_HEADS = 16  # at most this many files are peeked at by `detect`

_DIALOG_TYPES = (
    "saved_messages|replies|verification_codes|personal_chat|bot_chat|private_group|"
    "private_supergroup|public_supergroup|private_channel|public_channel"
)
_ABOUT = re.compile(rb'"about"\s*:\s*"')  # a full export opens with it; a single chat has none
_FULL_EXPORT = re.compile(rb'"(?:personal_information|chats|left_chats)"\s*:\s*\{')
_MESSAGES = re.compile(rb'"messages"\s*:\s*\[')
_TELEGRAM_KEY = re.compile(
    rb'"(?:date_unixtime|from_id|actor_id|text_entities)"\s*:|"type"\s*:\s*"(?:' + _DIALOG_TYPES.encode() + rb')"'
)
_NO_NAME = "Deleted account"
_NEITHER = (
    "neither a single-chat export (no 'messages') nor a full export with chats (no 'chats'); "
    "export again with chats selected"
)


# --- detection ----------------------------------------------------------------------------


def _looks_telegram(head: bytes) -> bool:
    """A JSON object with Telegram's top-level keys (full export) or its message keys."""
    if head.startswith(BOM):
        head = head[3:]
    if not head.lstrip().startswith(b"{"):
        return False
    if _ABOUT.search(head) and _FULL_EXPORT.search(head):
        return True
    return _MESSAGES.search(head) is not None and _TELEGRAM_KEY.search(head) is not None


def _is_result_json(path: str) -> bool:
    return path.rsplit("/", 1)[-1].lower() == "result.json"


def _candidates(source: Source) -> list[str]:
    """JSON files that may be a result.json: any named so first, then other shallow `.json` files."""
    files = source.files()
    if len(files) == 1:
        return files
    named = [f for f in files if _is_result_json(f)]
    other = [f for f in files if f.lower().endswith(".json") and f.count("/") <= 1 and not _is_result_json(f)]
    return named + other


def _head_is_telegram(source: Source, path: str) -> bool:
    try:
        return _looks_telegram(source.head(path))
    except Exception:  # noqa: BLE001 - detect never raises; parse reports damage
        return False


def _head(source: Source, path: str) -> bytes:
    try:
        return source.head(path)
    except OSError as e:
        raise ParseError(source.where(path), f"cannot read the file ({e})") from None


def detect(source: Source) -> bool:
    """True when a result.json-like file (whatever its name) holds a Telegram export."""
    try:
        candidates = _candidates(source)
    except Exception:  # noqa: BLE001 - detect never raises; parse reports damage
        return False
    return any(_head_is_telegram(source, p) for p in candidates[:DETECT_HEADS])


# --- parsing ------------------------------------------------------------------------------


def parse(source: Source) -> Iterator[Conversation]:
    """Every dialog of every Telegram JSON file in `source`, one conversation each."""
    files = source.files()
    if len(files) == 1:
        paths = files
    else:  # every result.json (a damaged one is reported, not skipped), and other JSON that looks like one
        paths = [p for p in _candidates(source) if _is_result_json(p) or _looks_telegram(_head(source, p))]
        if not paths:
            raise ParseError(source.name, "no Telegram export found (no result.json with chats or messages)")
    seen: dict[str, int] = {}
    for path in paths:
        for conversation in _parse_file(source, path):
            n = seen.get(conversation.id, 0) + 1
            seen[conversation.id] = n
            if n > 1:  # the same chat exported twice into one upload: keep ids unique
                conversation.id = f"{conversation.id}-{n}"
            yield conversation


def _parse_file(source: Source, path: str) -> Iterator[Conversation]:
    where = source.where(path)
    with ResultStream(source, path) as stream:
        shape = _shape(stream)
    if shape == "messages":  # a single-chat export: one dialog, loaded whole (orjson is faster at that)
        with ResultStream(source, path) as stream:
            data = b"".join(iter(lambda: stream.read(CHUNK), b""))
        conversation = _dialog(load_json(data, where), where, "")
        if conversation is not None:
            yield conversation
    else:
        yield from _full_export(source, path, where)


def _shape(stream: ResultStream) -> str:
    """The first top-level key that tells the shape: `messages`, `chats` or `left_chats`."""
    for prefix, event, value in stream.events():
        if prefix or event == "start_map":
            continue
        if event == "map_key":
            if value == "messages" or value in SECTIONS:
                return str(value)
        elif event == "end_map":
            break
        else:
            kind = "list" if event == "start_array" else _kind(value)
            raise ParseError(stream.where, f"the top level must be a JSON object, not {kind}")
    raise ParseError(stream.where, _NEITHER)


def _full_export(source: Source, path: str, where: str) -> Iterator[Conversation]:
    """The dialogs of `chats.list`, then of `left_chats.list`: one pass over the file each.

    The first pass notes whether the bytes `"left_chats"` occur at all, and where the exporter's
    layout shows the key at the top level (`\\n "left_chats":`, one space in): the second pass
    then reads `{` + the file from there instead of parsing all of it again.
    """
    watched: set[bytes] = set()
    left_at: tuple[int, int] | None = None
    empty = []  # sections whose key occurred in the file but which gave no dialog
    for key, watch in zip(SECTIONS, WATCHED, strict=True):
        first = key == SECTIONS[0]
        if not first and watch not in watched:
            continue  # no `"left_chats"` anywhere: no such section
        with ResultStream(source, path, watch=first, start=None if first else left_at) as stream:
            n = 0
            for d in stream.items(f"{key}.list.item"):
                conversation = _dialog(d, where, f"{key}.list[{n}].")
                n += 1
                del d  # one dialog in memory, not two, while the next is built
                if conversation is not None:
                    yield conversation
                    conversation = None
            if first:
                watched, left_at = stream.watched, stream.left_at
        if n == 0 and watch in watched:
            empty.append(key)
    if empty:  # malformed (`"chats": []`), or empty, or the word merely occurred in a text
        with ResultStream(source, path) as stream:
            _check_sections(stream)


def _check_sections(stream: ResultStream) -> None:
    """Raise unless every top-level `chats` / `left_chats` is an object with a `list` array.

    Every event of the file passes through Python here, which is slow: only for files where a
    section key occurred but gave no dialog, which the exporter never writes.
    """
    listed: dict[str, bool] = {}
    expect = ("", "")  # a section, and the event its value (or its `list`) must open with
    for prefix, event, value in stream.events():
        if expect[0]:
            if event != expect[1]:
                raise ParseError(stream.where, f"'{expect[0]}' must be an object with a 'list' array", entry=expect[0])
            listed[expect[0]] = listed[expect[0]] or event == "start_array"
            expect = ("", "")
        if event == "map_key" and not prefix and value in SECTIONS:
            expect = (value, "start_map")
            listed.setdefault(value, False)
        elif event == "map_key" and prefix in SECTIONS and value == "list":
            expect = (prefix, "start_array")
    for key, ok in listed.items():
        if not ok:
            raise ParseError(stream.where, f"'{key}' must be an object with a 'list' array", entry=key)
    if not listed:
        raise ParseError(stream.where, _NEITHER)


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _dialog(d: Any, where: str, entry: str) -> Conversation | None:
    """One dialog as a conversation (None when it has no counted message)."""
    if type(d) is not dict:
        raise ParseError(where, f"a chat must be a JSON object, not {_kind(d)}", entry=entry.rstrip(".") or None)
    did, dtype, messages = d.get("id"), d.get("type"), d.get("messages")
    if type(did) not in (int, str):
        raise ParseError(where, f"the chat has no valid 'id' ({_kind(did)})", entry=f"{entry}id")
    if type(dtype) is not str:
        raise ParseError(where, f"the chat's 'type' must be a string, not {_kind(dtype)}", entry=f"{entry}type")
    if type(messages) is not list:
        raise ParseError(where, f"'messages' must be an array, not {_kind(messages)}", entry=f"{entry}messages")
    name = d.get("name", dtype)  # absent for saved_messages, replies
    if name is None or name == "":
        name = _NO_NAME
    elif type(name) is not str:
        raise ParseError(where, f"the chat's 'name' must be a string, not {_kind(name)}", entry=f"{entry}name")
    channel = dtype.endswith("_channel")
    out: list[Message] = []
    for i, m in enumerate(messages):
        try:
            message = _message(m, name if channel else None)
        except (ValueError, TypeError, KeyError, OverflowError, OSError) as e:
            raise ParseError(where, str(e), entry=f"{entry}messages[{i}]") from None
        if message is not None:
            out.append(message)
    if not out:
        return None
    return Conversation(f"telegram-{did}", name, FORMAT, sort_messages(out))


def _message(m: Any, channel: str | None) -> Message | None:
    """A counted message, or None for service/unsupported/empty ones. ValueError says what is wrong."""
    if type(m) is not dict:
        raise ValueError(f"a message must be a JSON object, not {_kind(m)}")
    mtype = m.get("type")
    if mtype != "message":
        if type(mtype) is not str:
            raise ValueError(f"the message's 'type' must be a string, not {_kind(mtype)}")
        return None  # service, unsupported, or a type this parser does not know
    text = m.get("text")
    if type(text) is not str:
        if "text" not in m:
            raise ValueError("the message has no 'text'")
        text = _flatten(text)
    if not text:
        return None  # media without a caption, stickers, polls
    name = m.get("from")
    sender = name if type(name) is str and name else _sender(m, channel)
    mid, reply, unix = m.get("id"), m.get("reply_to_message_id"), m.get("date_unixtime")
    mid = str(mid) if type(mid) is int else _opt_id(mid, "id")
    reply = None if reply is None else _opt_id(reply, "reply_to_message_id")
    if type(unix) is str and unix.isdigit() and unix.isascii():  # the usual case, inline: millions of calls
        return Message(sender, text, datetime.fromtimestamp(int(unix), UTC), reply, mid)
    return Message(sender, text, _timestamp(m), reply, mid)


def _flatten(t: Any) -> str:
    """`text` as a string: itself, or the concatenation of every part's text."""
    if type(t) is str:
        return t
    if type(t) is not list:
        raise ValueError(f"'text' must be a string or an array, not {_kind(t)}")
    parts = []
    for part in t:
        if type(part) is str:
            parts.append(part)
        elif type(part) is dict and type(part.get("text")) is str:
            parts.append(part["text"])
        else:
            raise ValueError("a 'text' part must be a string or an object with a string 'text'")
    return "".join(parts)


def _sender(m: dict[str, Any], channel: str | None) -> str:
    """Where `from` is null (a deleted account): `from_id`; else a channel post's signature or channel."""
    fid = m.get("from_id")
    if type(fid) is str and fid:
        return fid
    if type(fid) is int:  # exports before v2.7.2 wrote a bare user id
        return str(fid)
    author = m.get("author")
    if type(author) is str and author:
        return author
    if channel is not None and "from" not in m:  # old exports wrote no sender for channel posts
        return channel
    raise ValueError("the message has neither 'from' nor 'from_id'")


def _timestamp(m: dict[str, Any]) -> datetime:
    """`date_unixtime` as UTC; else `date` as naive local time, exactly as written."""
    unix = m.get("date_unixtime")
    if unix is not None:
        if type(unix) is not str or not (unix.isascii() and unix.isdigit()):
            raise ValueError(f"'date_unixtime' must be a string of seconds, not {unix!r}")
        return datetime.fromtimestamp(int(unix), UTC)
    date = m.get("date")
    if type(date) is not str:
        raise ValueError("the message has no 'date'")
    try:
        return datetime.fromisoformat(date)
    except ValueError:
        raise ValueError(f"'date' is not an ISO date: {date!r}") from None


def _opt_id(v: Any, key: str) -> str | None:
    """A message id (a number in the export) as a string."""
    if v is None:
        return None
    if type(v) is int or type(v) is str:
        return str(v)
    raise ValueError(f"'{key}' must be a number, not {_kind(v)}")


PARSERS = [Parser(FORMAT, detect, parse)]
