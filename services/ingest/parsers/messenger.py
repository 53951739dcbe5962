"""Facebook Messenger and Instagram DMs: Meta "Download Your Information" JSON (FORMATS.md 1, 2).

One module for both because Instagram's thread files are Messenger's, field for field, and a
bare `messages/inbox/` export can be either: only a `your_instagram_activity/` prefix or a
sibling IG profile file tells them apart. The two parsers share everything but their name.

What is read:
* DYI thread folders `…/messages/[<section>/]<thread>/message_N.json`, or the 2018
  `message.json` whose `timestamp` is in seconds, under any prefix. A thread's files are merged
  into one conversation; `message_final.json` and the settings JSON in `messages/` are not
  threads. The id is the folder below `messages/` (`inbox/alice_123`), the same in every export.
* The separate end-to-end-encrypted download: one `{participants, threadName, messages}` file per
  chat (`senderName`, `timestamp` in ms, `text`, `type`, `isUnsent`). The id is its threadName.
* Any other JSON file whose content is one of these (the name decides nothing); a standalone
  DYI file's id is its `thread_path`.

Meta writes each UTF-8 byte of a string as its own code point; `fix` undoes that only where it
is safe (0.2). Messages nobody typed are dropped (1.3, 2): unsent or taken down, calls, the
`type`s of membership events, and, since 2024 when `type` went away, Meta's English sentences.

Speed: the per-message loops are the hot path. Keys are looked up once, names are repaired once
per thread, and the sentence regex runs only on texts whose start or end a cheap gate lets through.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from operator import attrgetter
from typing import Any

from doppel.conversation import Conversation, Message
from doppel.errors import ParseError

from ..source import Source
from .base import BOM, Parser, load_json

SNIFF_BYTES = 8192  # enough for the participants and the first messages of a thread file
DETECT_HEADS = 16  # at most this many loose JSON files are peeked at by `detect`
_SECTIONS = "inbox|archived_threads|filtered_threads|message_requests|e2ee_cutover|legacy_threads"
# group 1: the thread id (folder below messages/), group 2: N of message_N.json (absent: 2018's message.json)
_THREAD_FILE = re.compile(rf"(?:^|/)messages/((?:(?:{_SECTIONS})/)?[^/]+)/message(?:_([0-9]+))?\.json$")
_NUMBERED = re.compile(r"message_([0-9]+)\.json$")
_IG_MARKERS = (  # relative to the export root; each holds `profile_user`
    "personal_information/personal_information/personal_information.json",
    "personal_information/personal_information.json",
    "account_information/personal_information.json",
)
_DYI_HEAD = re.compile(rb'"sender_name"\s*:|"participants"\s*:\s*\[\s*\{\s*"name"\s*:')
_E2EE_HEAD = re.compile(rb'"threadName"\s*:')
_E2EE_KEYS = re.compile(rb'"senderName"\s*:|"participants"\s*:\s*\[\s*(?:"|\])')
_THREAD_SUFFIX = re.compile(r"_[0-9]+$")

_DROP_TYPES = frozenset({"Call", "Subscribe", "Unsubscribe"})  # `type` before 2024
# Sentences Meta writes for events (English exports, FORMATS.md 1.3 and 2). Most begin with the
# actor, who is the message's sender or "You"; those ending in "." have a fixed ending. Only texts
# passing that cheap gate (`_STARTS`, the sender's name, `_ENDS`) are matched against `_SYSTEM`.
_STARTS = ("You ", "A contact ", "An admin", "Reacted ", "Liked a message", "The ", "This ", "Say hi ", "Facebook user")
_FIRST = frozenset(s[0] for s in _STARTS)
_ENDS = (
    " an attachment.", " location.", " the group.", " group photo.", " an admin.", " participants.", " call.",
    " chat.", " ended.", " a message.", "'s message.", " the poll.", " available.", " updates.", " read-only.",
)
_SYSTEM = re.compile(
    r"""(?:Reacted\ .+\ to\ your\ message|Liked\ a\ message)\s*
    |You\ are\ now\ connected\ on\ Messenger.*|Say\ hi\ to\ your\ new\ Facebook\ friend.*
    |This\ chat\ is\ read-only\.|This\ poll\ is\ no\ longer\ available\.|.+'s\ poll\ has\ multiple\ updates\.
    |The\ (?:video\ |voice\ )?(?:call|chat)\ ended\.
    |(?!I\ ).+\ in\ the\ poll\.
    |(?!I\ ).+?\ (?:sent\ (?:an\ attachment|a\ (?:live\ )?location)\.
      |added\ .+\ to\ the\ group\.|removed\ .+\ from\ the\ group\.|(?:left|created)\ the\ group\.
      |named\ the\ group\ .+|changed\ the\ group\ photo\.
      |is\ now\ an\ admin\.|removed\ .+\ as\ an\ admin\.|added\ participants\.
      |(?:joined|left)\ the\ (?:video\ |voice\ )?(?:call|chat)\.
      |started\ (?:sharing\ video|a\ (?:video\ |voice\ )?(?:call|chat)).*
      |(?:set|cleared)\ (?:the\ nickname\ for|(?:his|her|their|your)\ own\ nickname|your\ nickname).*
      |(?:changed\ the\ (?:chat\ )?theme|set\ the\ emoji|(?:changed|set)\ the\ quick\ reaction).*
      |(?:un)?pinned\ a\ message\.|waved\ at\ .+|turned\ o(?:n|ff)\ (?:disappearing|end-to-end|member\ approval).*
      |removed\ .+'s\ message\.|created\ a\ poll:\ .*|voted\ for\ .+\ in\ the\ poll.*)""",
    re.X,  # no re.S: a typed message that merely holds such a line is not an event. Meta says "You", never "I".
)
_BY_TIME = attrgetter("timestamp")
_SENDER = attrgetter("sender")
_BAD_STRUCTURE = (KeyError, TypeError, AttributeError, ValueError, OverflowError, OSError)


def fix(s: str) -> str:
    """Undo Meta's mojibake safely: Latin-1 bytes that decode as UTF-8, else `s` unchanged."""
    if s.isascii():
        return s
    try:
        return s.encode("latin-1").decode("utf-8")
    except UnicodeError:  # a code point above U+00FF, or not UTF-8: not mojibake
        return s


def _name(raw: Any) -> str:
    if type(raw) is not str:
        raise TypeError(f"the sender name must be a string, not {_kind(raw)}")
    return fix(raw)


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


# --- the per-message loops (hot path) -----------------------------------------------------


def _dyi_messages(raw: list[Any], out: list[Message], names: dict[Any, str]) -> None:
    """Append one DYI file's counted messages to `out`, oldest first (the file is newest first).

    Bad structure raises KeyError/TypeError/...; the caller names the entry.
    """
    append, fromts, utc = out.append, datetime.fromtimestamp, UTC
    drop_types, first, starts, ends, system = _DROP_TYPES, _FIRST, _STARTS, _ENDS, _SYSTEM.fullmatch
    for m in reversed(raw):
        content = m.get("content")
        if content is None:  # media only, a share without text, or nothing at all
            continue
        if not content.isascii():
            content = fix(content)
        if not content or m.get("is_unsent") or m.get("is_taken_down") or "call_duration" in m:
            continue  # unsent, taken down, a call
        if m.get("type") in drop_types:
            continue
        sender = m["sender_name"]
        try:
            name = names[sender]
        except KeyError:
            name = names[sender] = _name(sender)
        if (
            content.startswith(name)
            or (content[0] in first and content.startswith(starts))
            or (content[-1] == "." and content.endswith(ends))
        ) and system(content):
            continue
        ms = m.get("timestamp_ms")  # absent in 2018's files, which have `timestamp` in seconds
        append(Message(name, content, fromts(ms / 1000 if ms is not None else m["timestamp"], utc)))


def _e2ee_messages(raw: list[Any], out: list[Message], names: dict[Any, str]) -> None:
    """Append one E2EE file's counted messages to `out`: typed text, not unsent, no placeholder."""
    append, fromts, utc = out.append, datetime.fromtimestamp, UTC
    for m in raw:
        text = m.get("text")
        if text is None:
            continue
        if not text.isascii():
            text = fix(text)
        if not text or m.get("isUnsent") or m.get("type") == "placeholder":
            continue
        sender = m["senderName"]
        try:
            name = names[sender]
        except KeyError:
            name = names[sender] = _name(sender)
        append(Message(name, text, fromts(m["timestamp"] / 1000, utc)))


_Loop = Callable[[list[Any], list[Message], dict[Any, str]], None]


def _messages(loop: _Loop, raw: list[Any], out: list[Message], names: dict[Any, str], where: str) -> None:
    """Run `loop`; on bad structure, find the first bad entry and raise a ParseError naming it."""
    try:
        loop(raw, out, names)
    except _BAD_STRUCTURE as error:
        for i, m in enumerate(raw):
            try:
                loop([m], [], {})
            except _BAD_STRUCTURE as e:
                raise ParseError(where, _describe(m, e, loop is _e2ee_messages), entry=f"messages[{i}]") from None
        raise ParseError(where, f"malformed messages ({error})", entry="messages") from None


def _describe(m: Any, e: BaseException, e2ee: bool) -> str:
    """What is wrong with one message, for a person."""
    if type(m) is not dict:
        return f"a message must be a JSON object, not {_kind(m)}"
    sender, text = ("senderName", "text") if e2ee else ("sender_name", "content")
    if m.get(text) is not None and type(m[text]) is not str:
        return f"'{text}' must be a string, not {_kind(m[text])}"
    if not e2ee and type(m.get("type")) in (list, dict):
        return f"'type' must be a string, not {_kind(m['type'])}"
    if isinstance(e, KeyError):
        key = e.args[0] if e.args else ""
        return "the message has no 'timestamp_ms'" if key == "timestamp" and not e2ee else f"the message has no '{key}'"
    if type(m.get(sender)) is not str:
        return f"'{sender}' must be a string, not {_kind(m.get(sender))}"
    key = "timestamp" if e2ee or m.get("timestamp_ms") is None else "timestamp_ms"
    if type(m[key]) not in (int, float):
        return f"'{key}' must be a number, not {_kind(m[key])}"
    return f"'{key}' is not a valid instant: {m[key]!r} ({e})"


# --- thread files -------------------------------------------------------------------------


def _load(source: Source, path: str) -> tuple[str, dict[str, Any], list[Any]]:
    """(where, the JSON object, its `messages` list) of one thread file."""
    where = source.where(path)
    try:
        data = source.read(path)
    except OSError as e:
        raise ParseError(where, f"cannot read the file ({e})") from None
    doc = load_json(data, where)
    if type(doc) is not dict:
        raise ParseError(where, f"a thread file must be a JSON object with 'messages', not {_kind(doc)}")
    raw = doc.get("messages")
    if type(raw) is not list:
        raise ParseError(where, f"'messages' must be a list, not {_kind(raw)}", entry="messages")
    return where, doc, raw


def _text_field(doc: dict[str, Any], key: str, where: str) -> str:
    v = doc.get(key)
    if v is None:
        return ""
    if type(v) is not str:
        raise ParseError(where, f"'{key}' must be a string, not {_kind(v)}", entry=key)
    return fix(v)


def _dyi_thread(source: Source, paths: list[str], fmt: str, cid: str = "", fallback: str = "") -> Conversation:
    """One DYI thread from its files (`paths` in order message_1, message_2, …): merged, sorted.

    Its id is `cid` (the folder below messages/), else its `thread_path`, else `fallback`.
    """
    out: list[Message] = []
    names: dict[Any, str] = {}
    title = thread_path = ""
    for path in reversed(paths):  # oldest slice first, so equal timestamps keep their order
        where, doc, raw = _load(source, path)
        _messages(_dyi_messages, raw, out, names, where)
        if path == paths[0]:
            title, thread_path = _text_field(doc, "title", where), _text_field(doc, "thread_path", where)
        del doc, raw
    cid = cid or thread_path or fallback or paths[0].removesuffix(".json")
    return _conversation(cid, title or cid.rsplit("/", 1)[-1], fmt, out)


def _e2ee_thread(source: Source, path: str, fmt: str) -> Conversation:
    where, doc, raw = _load(source, path)
    out: list[Message] = []
    _messages(_e2ee_messages, raw, out, {}, where)
    cid = _text_field(doc, "threadName", where) or path.rsplit("/", 1)[-1].removesuffix(".json")
    return _conversation(cid, _THREAD_SUFFIX.sub("", cid) or cid, fmt, out)


def _conversation(cid: str, title: str, fmt: str, messages: list[Message]) -> Conversation:
    """Messages in time order (stable: equal instants keep file order); participants = their senders."""
    messages.sort(key=_BY_TIME)  # all aware UTC, so no order_key needed
    return Conversation(cid, title, fmt, messages, list(dict.fromkeys(map(_SENDER, messages))))


# --- finding the threads ------------------------------------------------------------------


def _sniff(head: bytes) -> str:
    """"dyi", "e2ee" or "" from the first bytes of a JSON file."""
    if head.startswith(BOM):
        head = head[3:]
    if not head.lstrip().startswith(b"{"):
        return ""
    if _E2EE_HEAD.search(head) and _E2EE_KEYS.search(head):
        return "e2ee"
    return "dyi" if _DYI_HEAD.search(head) else ""


def _layout(files: list[str]) -> dict[str, tuple[str, str, list[tuple[int, str]]]]:
    """DYI thread folders: folder -> (export root, thread id, [(N, path)]), in folder order."""
    threads: dict[str, tuple[str, str, list[tuple[int, str]]]] = {}
    for path in files:
        m = _THREAD_FILE.search(path)
        if m:
            folder = path[: path.rfind("/")]
            root = path[: m.start(1) - len("messages/")]
            threads.setdefault(folder, (root, m.group(1), []))[2].append((int(m.group(2) or 0), path))
    return threads


def _loose(files: list[str], has_layout: bool) -> list[str]:
    """JSON files outside thread folders that may hold a thread (E2EE files, a standalone file).

    Next to DYI folders only those at the root or directly in a `messages/` folder: a full
    Facebook export holds thousands of other JSON files.
    """
    if len(files) == 1 and not _THREAD_FILE.search(files[0]):
        return files  # a single file: content decides, whatever its name
    out = []
    for path in files:
        name = path.rsplit("/", 1)[-1]
        if not name.lower().endswith(".json") or _THREAD_FILE.search(path):
            continue
        if name.startswith("message_") and not _NUMBERED.fullmatch(name):
            continue  # message_final.json and the like: not a slice of a thread
        parent = path[: path.rfind("/")] if "/" in path else ""
        if not has_layout or parent == "" or parent == "messages" or parent.endswith("/messages"):
            out.append(path)
    return out


def _head(source: Source, path: str) -> bytes:
    try:
        return source.head(path, SNIFF_BYTES)
    except OSError as e:
        raise ParseError(source.where(path), f"cannot read the file ({e})") from None


def _unique(cid: str, alt: str, seen: set[str]) -> str:
    """`cid`, or `alt` (a full path) when another thread of this upload already has that id."""
    cid = alt if cid in seen else cid
    seen.add(cid)
    return cid


def _parse(source: Source, fmt: str) -> Iterator[Conversation]:
    files = source.files()
    layout = _layout(files)
    seen: set[str] = set()
    found = bool(layout)
    for folder, (_root, tid, parts) in layout.items():
        parts.sort()
        c = _dyi_thread(source, [p for _, p in parts], fmt, tid)
        c.id = _unique(c.id, folder, seen)
        if c.messages:
            yield c
    loose = _loose(files, bool(layout))
    groups: dict[str, list[tuple[int, str]]] = {}  # numbered message_N.json outside messages/: one thread per folder
    for path in loose:
        kind = _sniff(_head(source, path)) or ("single" if len(files) == 1 else "")
        if not kind:
            continue
        found = True
        numbered = _NUMBERED.search(path)
        if kind == "dyi" and numbered and (numbered.start() == 0 or path[numbered.start() - 1] == "/"):
            groups.setdefault(path[: numbered.start()], []).append((int(numbered.group(1)), path))
            continue
        c = _single(source, path, fmt) if kind == "single" else (
            _e2ee_thread(source, path, fmt) if kind == "e2ee" else _dyi_thread(source, [path], fmt)
        )
        c.id = _unique(c.id, path.removesuffix(".json"), seen)
        if c.messages:
            yield c
    for folder, parts in groups.items():
        parts.sort()
        c = _dyi_thread(source, [p for _, p in parts], fmt, fallback=folder.rstrip("/"))
        c.id = _unique(c.id, folder + "message", seen)
        if c.messages:
            yield c
    if not found:
        raise ParseError(
            source.name,
            "no Messenger or Instagram conversations found (expected messages/inbox/<thread>/message_1.json "
            "or a JSON thread file with 'participants' and 'messages')",
        )


def _single(source: Source, path: str, fmt: str) -> Conversation:
    """A lone file whose first bytes do not look like a thread: its structure says what is wrong."""
    where, doc, raw = _load(source, path)
    if "threadName" in doc or any(type(m) is dict and "senderName" in m for m in raw[:1]):
        return _e2ee_thread(source, path, fmt)
    if "participants" not in doc and not raw:
        raise ParseError(where, "not a Messenger or Instagram thread: no 'participants' and no messages")
    return _dyi_thread(source, [path], fmt)


# --- detection ----------------------------------------------------------------------------


def _is_instagram(source: Source, files: set[str], root: str) -> bool:
    if root.endswith("your_instagram_activity/"):
        return True
    if root.endswith(("your_facebook_activity/", "your_activity_across_facebook/")):
        return False
    return any(root + marker in files and b'"profile_user"' in source.head(root + marker, SNIFF_BYTES) for marker in _IG_MARKERS)


def _detect(source: Source, instagram: bool) -> bool:
    try:
        files = source.files()
        layout = _layout(files)
        if layout:
            file_set, roots = set(files), {root for root, _, _ in layout.values()}
            if instagram:
                roots = {r for r in roots if _is_instagram(source, file_set, r)}
            heads = [parts[0][1] for root, _, parts in layout.values() if root in roots][:DETECT_HEADS]
            if any(_sniff(source.head(p, SNIFF_BYTES)) == "dyi" for p in heads):
                return True
        if instagram:
            return False
        loose = sorted(_loose(files, False), key=lambda p: (p.count("/"), p))[:DETECT_HEADS]
        return any(_sniff(source.head(p, SNIFF_BYTES)) for p in loose)
    except Exception:  # noqa: BLE001 - detect never raises: parse reports what is wrong
        return False


# instagram: thread folders under `your_instagram_activity/messages/`, or bare `messages/` beside an IG
# profile; messenger: any DYI thread, E2EE file or standalone thread file. Both parse every thread found.
detect_instagram = partial(_detect, instagram=True)
detect_messenger = partial(_detect, instagram=False)
parse_instagram = partial(_parse, fmt="instagram")
parse_messenger = partial(_parse, fmt="messenger")

PARSERS: list[Parser] = [
    Parser("instagram", detect_instagram, parse_instagram),
    Parser("messenger", detect_messenger, parse_messenger),
]
