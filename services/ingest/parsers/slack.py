"""Slack workspace export (zip or folder), FORMATS.md section 6.

The export holds `channels.json` and `users.json` (`org_users.json` on Enterprise Grid), maybe
`groups.json`, `dms.json` and `mpims.json`, and one folder per conversation of `YYYY-MM-DD.json`
day files. Each folder is one conversation: its day files are concatenated and sorted by `ts`,
which is an absolute UTC instant written as a `"seconds.micros"` string, parsed exactly (no
float rounding). People's messages count (no subtype, `thread_broadcast`, `me_message`,
`file_share` with text); bots and channel events do not. `text` is Slack's HTML-escaped
markup: `&amp; &lt; &gt;` are unescaped once and everything else (mentions, `:shortcode:`) kept.
The files are PHP `json_encode` output (`\\/`, `\\uXXXX` surrogate pairs), which orjson reads.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from doppel.conversation import Conversation, Message
from doppel.errors import ParseError

from ..source import Source
from .base import BOM, Parser, decode_text, load_json, sort_messages

FORMAT = "slack"
_KEPT_SUBTYPES = frozenset({"thread_broadcast", "me_message", "file_share"})
_DAY_FILE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\.json")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# conversation lists, and whether a conversation is titled by its members' names (DMs, group DMs)
_METADATA = (("channels.json", False), ("groups.json", False), ("mpims.json", True), ("dms.json", True))
_SLACKBOT = "USLACKBOT"  # Slack's own bot; not always in users.json, never flagged is_bot


# --- layout and detection -----------------------------------------------------------------


def _root(files: list[str]) -> str | None:
    """The folder prefix ("" or "name/") holding channels.json and a users file, shallowest first."""
    present = set(files)
    roots = sorted(
        (f[: -len("channels.json")] for f in files if f == "channels.json" or f.endswith("/channels.json")),
        key=lambda r: (r.count("/"), r),
    )
    for r in roots:
        if r + "users.json" in present or r + "org_users.json" in present:
            return r
    return None


def _users_files(root: str, files: list[str]) -> list[str]:
    present = set(files)
    return [root + n for n in ("users.json", "org_users.json") if root + n in present]


def _json_array_head(head: bytes) -> bool:
    """A head that starts a JSON array of objects (or an empty array)."""
    if head.startswith(BOM):
        head = head[3:]
    head = head.lstrip()
    if not head.startswith(b"["):
        return False
    rest = head[1:].lstrip()
    return rest.startswith((b"{", b"]")) or not rest


def detect(source: Source) -> bool:
    """channels.json and users.json / org_users.json side by side, both JSON arrays."""
    try:
        files = source.files()
        root = _root(files)
        if root is None:
            return False
        users = _users_files(root, files)
        return _json_array_head(source.head(root + "channels.json")) and _json_array_head(source.head(users[0]))
    except Exception:  # noqa: BLE001 - detect never raises; parse reports damage
        return False


# --- metadata: people and conversation names -------------------------------------------------


def _load_array(source: Source, path: str) -> list[Any]:
    where = source.where(path)
    try:
        raw = source.read(path)
    except OSError as e:
        raise ParseError(where, f"cannot read the file ({e})") from None
    try:
        data = load_json(raw, where)
    except ParseError:
        decode_text(raw, where)  # bad UTF-8: an error naming its line, not orjson's line 1
        raise
    if type(data) is not list:
        raise ParseError(where, f"must be a JSON array, not {type(data).__name__}")
    return data


def _users(source: Source, paths: list[str]) -> tuple[dict[str, str], set[str]]:
    """user id -> real name, and the ids of bots."""
    names: dict[str, str] = {}
    bots = {_SLACKBOT}
    for path in paths:
        for i, u in enumerate(_load_array(source, path)):
            uid = u.get("id") if type(u) is dict else None
            if type(uid) is not str:
                raise ParseError(source.where(path), "a user must be an object with a string 'id'", entry=f"[{i}]")
            profile = u.get("profile")
            name = profile.get("real_name") if type(profile) is dict else None
            if type(name) is not str or not name:
                name = u.get("real_name")
            if type(name) is str and name:
                names[uid] = name
            if u.get("is_bot") is True:
                bots.add(uid)
    return names, bots


def _titles(source: Source, root: str, files: list[str], names: dict[str, str]) -> dict[str, str]:
    """folder name -> title: channels by name, DMs and group DMs by their members' names."""
    present = set(files)
    titles: dict[str, str] = {}
    for meta, by_members in _METADATA:
        path = root + meta
        if path not in present:
            continue
        for i, c in enumerate(_load_array(source, path)):
            try:
                cid, folder, title = _title(c, by_members, names)
            except (ValueError, TypeError, AttributeError) as e:
                raise ParseError(source.where(path), str(e), entry=f"[{i}]") from None
            titles.setdefault(folder, title)
            titles.setdefault(cid, title)  # Grid exports may name folders by id
    return titles


def _title(c: Any, by_members: bool, names: dict[str, str]) -> tuple[str, str, str]:
    """(id, folder name, title) of one entry of channels/groups/mpims/dms.json."""
    if type(c) is not dict or type(c.get("id")) is not str:
        raise ValueError("a conversation must be an object with a string 'id'")
    cid = c["id"]
    name = c.get("name")
    if name is not None and type(name) is not str:
        raise ValueError(f"'name' must be a string, not {type(name).__name__}")
    folder = name or cid  # DMs have no name: their folder is the DM id
    members = c.get("members")
    if by_members and type(members) is list and members:
        ids: list[str] = members
        if any(type(m) is not str for m in ids):
            raise ValueError("'members' must be a list of user ids")
        return cid, folder, ", ".join(dict.fromkeys(names.get(m, m) for m in ids))
    return cid, folder, folder


def _folders(root: str, files: list[str]) -> dict[str, list[str]]:
    """conversation folder -> its day files, in date order."""
    folders: dict[str, list[str]] = {}
    n = len(root)
    for f in files:
        if not f.startswith(root):
            continue
        parts = f[n:].split("/")
        if len(parts) == 2 and _DAY_FILE.fullmatch(parts[1]):
            folders.setdefault(parts[0], []).append(f)
    return folders


# --- messages -----------------------------------------------------------------------------


def parse(source: Source) -> Iterator[Conversation]:
    """One conversation per channel, DM or group-DM folder, in folder-name order."""
    files = source.files()
    root = _root(files)
    if root is None:
        raise ParseError(source.name, "not a Slack export: no channels.json next to users.json or org_users.json")
    names, bots = _users(source, _users_files(root, files))
    titles = _titles(source, root, files, names)
    for folder, days in sorted(_folders(root, files).items()):
        messages: list[Message] = []
        for path in days:
            messages.extend(_day(source, path, names, bots))
        if messages:
            yield Conversation(f"slack-{folder}", titles.get(folder, folder), FORMAT, sort_messages(messages))


def _day(source: Source, path: str, names: dict[str, str], bots: set[str]) -> list[Message]:
    out = []
    for i, m in enumerate(_load_array(source, path)):
        try:
            message = _message(m, names, bots)
        except (ValueError, TypeError, AttributeError, OverflowError) as e:
            raise ParseError(source.where(path), str(e), entry=f"[{i}]") from None
        if message is not None:
            out.append(message)
    return out


def _message(m: Any, names: dict[str, str], bots: set[str]) -> Message | None:
    """A person's message, or None for events, bots and empty text. ValueError says what is wrong."""
    if type(m) is not dict:
        raise ValueError(f"a message must be a JSON object, not {type(m).__name__}")
    subtype = m.get("subtype")
    if subtype is not None and subtype not in _KEPT_SUBTYPES:
        return None
    if m.get("type", "message") != "message" or m.get("bot_id") is not None:
        return None
    user = m.get("user")
    if user in bots:
        return None
    text = m.get("text")
    if not text:
        return None
    if type(text) is not str:
        raise ValueError(f"'text' must be a string, not {type(text).__name__}")
    if "&" in text:
        text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    ts = m.get("ts")
    when = _instant(ts)
    thread = m.get("thread_ts")
    reply_to = thread if type(thread) is str and thread != ts else None
    return Message(_sender(m, user, names), text, when, reply_to, ts)


def _sender(m: dict[str, Any], user: Any, names: dict[str, str]) -> str:
    """users.json real name; else the message's own user_profile.real_name; else the raw id."""
    if type(user) is not str or not user:
        raise ValueError("the message has no 'user'")
    name = names.get(user)
    if name is not None:
        return name
    profile = m.get("user_profile")
    if type(profile) is dict:
        name = profile.get("real_name")
        if type(name) is str and name:
            return name
    return user


def _instant(ts: Any) -> datetime:
    """`"1704197100.000200"` as an aware UTC datetime, to the microsecond."""
    if type(ts) is not str:
        raise ValueError(f"'ts' must be a string like \"1704197100.000200\", not {ts!r}")
    secs, _, frac = ts.partition(".")
    digits = secs.isascii() and secs.isdigit() and (not frac or (frac.isascii() and frac.isdigit()))
    if not digits or len(frac) > 6:
        raise ValueError(f"'ts' is not seconds.microseconds: {ts!r}")
    return _EPOCH + timedelta(seconds=int(secs), microseconds=int(frac.ljust(6, "0")) if frac else 0)


PARSERS = [Parser(FORMAT, detect, parse)]
