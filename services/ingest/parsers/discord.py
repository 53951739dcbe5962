"""Discord channels exported by Tyrrrz/DiscordChatExporter (DCE), as JSON or CSV: FORMATS.md 3.

One exported channel is one conversation. DCE names a file
`{Guild} - {Category} - {Channel} [{channelId}]` plus an optional ` ({after} to {before})` date
range and ` [part N]` partition suffix, so every file carrying the same `[channelId]` is one
channel and its messages are merged (and sorted) into one conversation `discord-<channelId>`.

JSON holds absolute instants (ISO-8601 with an offset, stored as UTC), the message kind, the
author with discriminator, the message id and the replied-to id. Only `Default` and `Reply`
messages from people (not `isBot`) with non-empty `content` count, each id once per channel:
a repeat (within a file, or in an overlapping export of the channel) is dropped, the first kept,
and the count noted in the source's warnings. DCE writes `messageCount` last, so a file without
it was cut off. orjson reads both the upper-case surrogate escapes of current exports and the
all-escaped text of pre-2021 ones.

CSV has no kind column: system notifications are recognised by DCE's exact fallback texts
(FORMATS.md 3.1), and attachment-only rows have empty `Content`. The `Date` column changed four
times; only the ISO form (DCE >= 2.42.3) is an instant, the others are naive local time kept as
written. Which formats are understood is listed at `_csv_date`; the culture-dependent "g" form
is read as en-US when it has AM/PM, and day-first when it has not (en-GB, fr, de style): an
inference, since the file does not say its locale.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson

from doppel.conversation import Conversation, Message, parse_timestamp
from doppel.errors import ParseError

from ..source import Source
from .base import BOM, Parser, load_json, sort_messages
from .csvfile import DETECT_HEADS, candidates, crlf_to_lf, field_count_error, first_line, peek, read_head, read_rows

JSON_FORMAT = "discord_json"
CSV_FORMAT = "discord_csv"

# header line -> delimiter, newest first (FORMATS.md 3.1)
_CSV_HEADERS = {
    "AuthorID,Author,Date,Content,Attachments,Reactions": ",",
    "AuthorID;Author;Date;Content;Attachments;Reactions;": ";",
    "Author;Date;Content;Attachments;Reactions;": ";",
}
_FILE_NAME = re.compile(
    r"(?P<title>.*) \[(?P<id>[0-9]+)\](?: \([^()]*\))?(?: \[part [0-9]+\])?\.(?:csv|json)", re.IGNORECASE
)
_JSON_KEYS = (re.compile(rb'"guild"\s*:\s*\{'), re.compile(rb'"channel"\s*:\s*\{'), re.compile(rb'"messages"\s*:\s*\['))
_MESSAGES_OPEN = b'\n  "messages": ['
_MESSAGES_CLOSE = b"\n  ]"
_ITEM_END = b"\n    },"
_USER_KINDS = frozenset({"Default", "Reply"})
_MONTHS = {m: i for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)}

# DCE's GetFallbackContent texts, the only trace of a system notification in CSV
_SYSTEM_TEXTS = frozenset(
    {
        "Added a recipient.",
        "Left the group.",
        "Removed a recipient.",
        "Changed the channel name.",
        "Changed the channel icon.",
        "Pinned a message.",
        "Started a thread.",
        "Joined the server.",
    }
)
_SYSTEM_AFFIXES = (  # (prefix, suffix) around a name or number
    ("Added ", " to the group."),
    ("Removed ", " from the group."),
    ("Started a call that lasted ", " minutes."),
)
_SYSTEM_PREFIX = "Changed the channel name: "
_SYSTEM_FIRST = frozenset("ALRSCPJ")  # first letters of all of the above: a cheap pre-check


# --- files and detection --------------------------------------------------------------------


def _csv_delimiter(head: bytes) -> str | None:
    """The delimiter when the first line is one of DCE's CSV headers, else None."""
    line = first_line(head)
    return _CSV_HEADERS.get(line) if line is not None else None


def _is_json_head(head: bytes) -> bool:
    """A JSON object whose head has DCE's root keys `guild`, `channel` and `messages`."""
    if head.startswith(BOM):
        head = head[3:]
    return head.lstrip().startswith(b"{") and all(k.search(head) for k in _JSON_KEYS)


def _detect_csv(source: Source) -> bool:
    try:
        paths = candidates(source, ".csv")[:DETECT_HEADS]
        return any(_csv_delimiter(peek(source, p)) for p in paths)
    except Exception:  # noqa: BLE001 - detect never raises; parse reports damage
        return False


def _detect_json(source: Source) -> bool:
    try:
        paths = candidates(source, ".json")[:DETECT_HEADS]
        return any(_is_json_head(peek(source, p)) for p in paths)
    except Exception:  # noqa: BLE001 - detect never raises; parse reports damage
        return False


def _base_name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _channels(paths: list[str]) -> list[tuple[str | None, str, list[str]]]:
    """(channel id from the file name or None, title from the file name, files) per channel."""
    groups: dict[tuple[bool, str], tuple[str | None, str, list[str]]] = {}
    for path in paths:
        name = _base_name(path)
        m = _FILE_NAME.fullmatch(name)
        if m:
            groups.setdefault((True, m["id"]), (m["id"], m["title"], []))[2].append(path)
        else:
            groups[(False, path)] = (None, name.rsplit(".", 1)[0] if "." in name else name, [path])
    return list(groups.values())


def _unique(cid: str, seen: dict[str, int]) -> str:
    """`cid`, or `cid-2`, `cid-3`, ... when the same id was already used in this export."""
    n = seen.get(cid, 0) + 1
    seen[cid] = n
    return cid if n == 1 else f"{cid}-{n}"


# --- CSV ------------------------------------------------------------------------------------


def _is_system(text: str) -> bool:
    """True for DCE's fallback text of a system notification (FORMATS.md 3.1)."""
    if text[0] not in _SYSTEM_FIRST:
        return False
    if text in _SYSTEM_TEXTS or text.startswith(_SYSTEM_PREFIX):
        return True
    return any(text.startswith(p) and text.endswith(s) and len(text) > len(p) + len(s) for p, s in _SYSTEM_AFFIXES)


def _clock(time: str, ampm: str) -> tuple[int, int, int]:
    """Hour, minute, second of `h:mm[:ss]` with an optional AM/PM."""
    parts = time.split(":")
    if len(parts) not in (2, 3):
        raise ValueError("no h:mm time")
    hour, minute = int(parts[0]), int(parts[1])
    second = int(parts[2]) if len(parts) == 3 else 0
    if ampm:
        marker = ampm.upper()
        if marker not in ("AM", "PM") or not 1 <= hour <= 12:
            raise ValueError("bad AM/PM time")
        hour = hour % 12 + (12 if marker == "PM" else 0)
    return hour, minute, second


def _year(y: str) -> int:
    return 2000 + int(y) if len(y) == 2 else int(y)


def _csv_date(s: str) -> datetime:
    """A DCE CSV `Date` in any of its historical formats (FORMATS.md 3.1).

    `2024-02-14T19:03:11.5230000+01:00` (ISO "o", an instant); `01-Jan-20 01:33 AM`
    (dd-MMM-yy hh:mm tt); `02/14/2023 7:03 PM` and `9/7/2023 2:34 PM` (M/d/yyyy h:mm tt, en-US);
    the 24-hour "g" forms `07/09/2023 14:34` (d/M/yyyy), `07.09.2023 14:34` (d.M.yyyy) and
    `2023-09-07 14:34` / `2023/09/07 14:34` (year first). All but ISO are naive local time.
    Raises ValueError on anything else.
    """
    if len(s) > 10 and s[10] == "T":
        return parse_timestamp(s)  # out-of-range instants are ValueErrors too
    return _local_date(s)


@lru_cache(maxsize=4096)  # minute-resolution dates repeat from message to message
def _local_date(s: str) -> datetime:
    date, _, rest = s.partition(" ")
    time, _, ampm = rest.partition(" ")
    hour, minute, second = _clock(time, ampm)
    for sep in "/-.":
        if sep in date:
            a, b, c = date.split(sep)
            break
    else:
        raise ValueError("no date")
    if len(a) == 4:
        year, month, day = int(a), int(b), int(c)
    elif b[:1].isalpha():
        day, month, year = int(a), _MONTHS[b.lower()], _year(c)
    elif sep == "/" and ampm:
        month, day, year = int(a), int(b), _year(c)
    else:
        day, month, year = int(a), int(b), _year(c)
    return datetime(year, month, day, hour, minute, second)


def _csv_messages(source: Source, path: str, delimiter: str) -> list[Message]:
    """The counted messages of one DCE CSV file."""
    where = source.where(path)
    rows = read_rows(source, path, delimiter)
    _, header = next(rows, (1, []))
    try:
        author_at, date_at, content_at = header.index("Author"), header.index("Date"), header.index("Content")
    except ValueError:
        raise ParseError(where, "not a DiscordChatExporter CSV header", line=1) from None
    width = len(header)
    short = width - 1 if header[-1] == "" else width  # `;` exports end every row with a `;`
    messages: list[Message] = []
    for line, row in rows:
        if len(row) != width and len(row) != short:
            raise field_count_error(where, line, len(row), width)
        text = row[content_at]
        if not text or _is_system(text):
            continue
        date = row[date_at]
        try:
            timestamp = _csv_date(date)
        except (ValueError, KeyError, OverflowError):
            raise ParseError(where, f"unrecognised Date {date!r}", line=line) from None
        messages.append(Message(row[author_at], crlf_to_lf(text), timestamp))
    return messages


def parse_csv(source: Source) -> Iterator[Conversation]:
    """One conversation per channel of DCE CSV files in `source`."""
    files = []
    for path in candidates(source, ".csv"):
        delimiter = _csv_delimiter(read_head(source, path))
        if delimiter:
            files.append((path, delimiter))
    if not files:
        raise ParseError(source.name, "no DiscordChatExporter CSV found (no file starts with its header line)")
    delimiters = dict(files)
    seen: dict[str, int] = {}
    for channel_id, title, paths in _channels([p for p, _ in files]):
        messages: list[Message] = []
        for path in paths:
            messages += _csv_messages(source, path, delimiters[path])
        if messages:
            cid = _unique(f"discord-{channel_id}" if channel_id else f"discord-{paths[0]}", seen)
            yield Conversation(cid, title, CSV_FORMAT, sort_messages(messages))


# --- JSON -----------------------------------------------------------------------------------


def _json_message(m: Any) -> Message | None:
    """A counted message, or None for system, bot and empty ones. KeyError/TypeError/ValueError if malformed."""
    kind = m["type"]
    if kind not in _USER_KINDS:
        if type(kind) is not str:
            raise TypeError("'type' is not a string")
        return None
    text = m["content"]
    if type(text) is not str:
        raise TypeError("'content' is not a string")
    author = m["author"]
    if not text or author.get("isBot") is True:
        return None
    name, disc = author["name"], author.get("discriminator")
    if type(name) is not str or (disc is not None and type(disc) is not str):
        raise TypeError("the author's name or discriminator is not a string")
    sender = f"{name}#{disc}" if disc and disc != "0000" else name
    stamp = m["timestamp"]
    if type(stamp) is not str:
        raise TypeError("'timestamp' is not a string")
    try:
        timestamp = parse_timestamp(stamp)
    except ValueError:
        raise ValueError(f"bad timestamp {stamp!r}") from None
    reply_to = None
    ref = m.get("reference")
    if ref is not None and ref.get("type", "Default") == "Default":
        reply_to = ref.get("messageId")
    mid = m.get("id")
    if (reply_to is not None and type(reply_to) is not str) or (mid is not None and type(mid) is not str):
        raise TypeError("'id' or 'reference.messageId' is not a string")
    return Message(sender, text, timestamp, reply_to, mid)


def _problem(e: Exception) -> str:
    if isinstance(e, KeyError):
        return f"missing {e.args[0]!r}"
    return str(e) or type(e).__name__


class _Layout(Exception):
    """The file is not laid out the way DCE writes it: parse it whole instead."""


def _indented(data: bytes) -> tuple[Any, Iterator[memoryview]]:
    """DCE's 2-space indented layout, read piecewise: (root without messages, each message's bytes).

    Root keys sit at 2 spaces and messages at 4, and JSON strings hold no raw newline, so
    `\\n  "messages": [` opens the array, `\\n    },` ends each message and `\\n  ]` closes it.
    Parsing message by message keeps memory at the file plus the kept messages instead of a
    whole JSON tree (several times the file), and is faster. Raises `_Layout` otherwise.
    """
    start, end = data.find(_MESSAGES_OPEN), data.rfind(_MESSAGES_CLOSE)
    first = start + len(_MESSAGES_OPEN)  # then the first message, after CRLF on Windows (.NET's NewLine)
    if start < 0 or end < start or not data.startswith(b"\n    {", first + (data[first : first + 1] == b"\r")):
        raise _Layout
    try:
        root = orjson.loads(data[:start] + b'\n  "messages": []' + data[end + len(_MESSAGES_CLOSE) :])
    except orjson.JSONDecodeError:
        raise _Layout from None
    return root, _items(data, start + len(_MESSAGES_OPEN), end)


def _items(data: bytes, pos: int, end: int) -> Iterator[memoryview]:
    view = memoryview(data)
    while True:
        cut = data.find(_ITEM_END, pos, end)
        if cut < 0:
            yield view[pos:end]
            return
        yield view[pos : cut + len(_ITEM_END) - 1]
        pos = cut + len(_ITEM_END)


def _loads(chunk: memoryview) -> Any:
    try:
        return orjson.loads(chunk)
    except orjson.JSONDecodeError:
        raise _Layout from None


def _header(doc: Any, where: str) -> tuple[str, str]:
    """(channel id, "Guild / channel") of the root object; ParseError if it is not DCE's."""
    if type(doc) is not dict or type(doc.get("messages")) is not list:
        raise ParseError(where, "not a DiscordChatExporter export (no 'messages' list)")
    if "messageCount" not in doc:
        raise ParseError(where, "no 'messageCount' after the messages: the file is cut off (truncated export)")
    try:
        guild, channel = doc["guild"], doc["channel"]
        channel_id, guild_name, channel_name = channel["id"], guild["name"], channel["name"]
        if not (type(channel_id) is type(guild_name) is type(channel_name) is str) or not channel_id:
            raise TypeError("the channel id, channel name or guild name is not a string")
    except (KeyError, TypeError) as e:
        raise ParseError(where, f"bad guild/channel header ({_problem(e)})") from None
    return channel_id, f"{guild_name} / {channel_name}"


def _collect(raw: Iterable[Any], where: str) -> list[Message]:
    messages = []
    for i, m in enumerate(raw):
        try:
            message = _json_message(m)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ParseError(where, f"malformed message ({_problem(e)})", entry=f"messages[{i}]") from None
        if message is not None:
            messages.append(message)
    return messages


def _json_file(source: Source, path: str) -> tuple[str, str, list[Message]]:
    """(channel id, "Guild / channel" title, counted messages) of one DCE JSON file."""
    where = source.where(path)
    data = source.read(path)
    if data.startswith(BOM):
        data = data[3:]
    try:
        root, items = _indented(data)
        try:
            channel_id, title = _header(root, where)
        except ParseError:  # let the whole-file parse have the last word on a bad root
            raise _Layout from None
        return channel_id, title, _collect(map(_loads, items), where)
    except _Layout:  # another layout, or damage: the whole-file parse reads it or says what is wrong
        doc = load_json(data, where)
        channel_id, title = _header(doc, where)
        return channel_id, title, _collect(doc["messages"], where)


def _first_of_each_id(messages: list[Message], ids: set[str]) -> list[Message]:
    """`messages` without those whose id is in `ids` or came earlier; `ids` takes the new ones."""
    kept = []
    for m in messages:
        if m.id is not None:
            if m.id in ids:
                continue
            ids.add(m.id)
        kept.append(m)
    return kept


def parse_json(source: Source) -> Iterator[Conversation]:
    """One conversation per channel of DCE JSON files in `source`."""
    paths = [p for p in candidates(source, ".json") if _is_json_head(read_head(source, p))]
    if not paths:
        raise ParseError(source.name, "no DiscordChatExporter JSON found (no object with guild, channel and messages)")
    seen: dict[str, int] = {}
    for _, _, group in _channels(paths):
        channel_id, title, messages = "", "", []
        ids: set[str] = set()
        for path in group:
            cid, name, found = _json_file(source, path)
            channel_id, title = channel_id or cid, title or name
            kept = _first_of_each_id(found, ids)
            if len(kept) < len(found):
                repeats = len(found) - len(kept)
                source.warnings.append(
                    f"{source.where(path)}: {repeats} messages dropped whose id an earlier message has (the first kept)"
                )
            messages += kept
        if messages:
            yield Conversation(_unique(f"discord-{channel_id}", seen), title, JSON_FORMAT, sort_messages(messages))


PARSERS = [Parser(JSON_FORMAT, _detect_json, parse_json), Parser(CSV_FORMAT, _detect_csv, parse_csv)]
