"""WhatsApp "Export chat" text (.txt), FORMATS.md section 4.

Each chat is one `.txt` (iOS `_chat.txt`, Android `WhatsApp Chat with <Name>.txt`), alone or in a
zip or folder with media, maybe several side by side. A file is a chat by its content, never its
name: its first non-blank line is a full message header, and another header follows within the
first 64 KiB unless the file is only a few lines long. A header starts a line; any other line
continues the message before it. A line that starts with a header of another shape than the
file's first one (another date format, say) stays text too, but is reported in the source's
warnings with its line number. A zip beside the chats (an export zipped next to another) is read
as well; the same chat found twice, in the same file name under the same title, is one
conversation, whose repeated messages the pipeline's dedupe drops. A zip holding no chat is a
warning, not an error: Android exports carry zipped documents among their media.

Speed: the header grammar has many locale variants (`[d/m/y, h:mm:ss]`, `d.m.yy h.mm - `, `y/m/d`,
`klo`, 12-hour clocks with `p. m.` or U+202F, ...) but a file uses one. A loose probe matches the
first header; from its pieces one strict regex is compiled for the file and run with `finditer`
over the file's UTF-8 bytes. It starts with a literal newline, which `re` scans for in C, so
continuation lines cost no Python, and only bodies and authors are decoded (a chat full of emoji
is never held as a 4-bytes-a-character str; every byte is still checked). Timestamps come from
caches of parsed dates and times (no strptime); each distinct author spelling is normalised once.

Placeholders (`<Media omitted>`, `image omitted`, `This message was deleted`, ...) are matched
whatever their case: exports differ in it, and a placeholder kept as text would be learnt.

Timestamps are naive wall-clock time as written. Day/month order is not in the file: a component
above 12 decides it for the whole file. Day-first is assumed until then; a file that turns out
month-first is parsed again (`_MonthFirst`), which costs only the part already read.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date, datetime, time
from itertools import chain
from pathlib import PurePosixPath

from doppel.conversation import Conversation, Message
from doppel.errors import InvalidArgument, ParseError

from ..source import Source, open_inner_zip
from .base import BOM, Parser, decode_text, sort_messages

FORMAT = "whatsapp"
HEAD = 64 * 1024  # bytes of a file that detection and the is-it-a-chat test look at
DETECT_PEEKS = 32  # at most this many .txt files are peeked at by `detect`
SHORT_FILE = 5  # a head with at most this many non-blank lines needs no second header
SHOWN_LINES = 5  # line numbers a warning about misfit header lines lists

_BIDI = "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_LEAD = _BIDI + "\ufeff"  # allowed before the first header
_AMPM = r"[ \u202f\u00a0]?[AaPp]\.?[ \u00a0\u202f]?[Mm]\.?"
# the same two in UTF-8, for the regex that runs over a file's bytes
_BIDI_UTF8 = r"(?:\xe2\x80[\x8e\x8f\xaa-\xae]|\xe2\x81[\xa6-\xa9])*"
_AMPM_UTF8 = r"(?: |\xe2\x80\xaf|\xc2\xa0)?[AaPp]\.?(?: |\xc2\xa0|\xe2\x80\xaf)?[Mm]\.?"
_PROBE = re.compile(
    r"(?P<open>\[)?"
    r"(?P<date>\d{1,4}(?P<ds>[./-] ?)\d{1,4}(?P=ds)\d{1,4}(?P<dend>\.?))"
    r"(?P<dt>, ?| klo | )"
    r"(?P<time>\d{1,2}(?P<ts>[:.])\d{2}(?P<sec>(?P=ts)\d{2})?(?P<ampm>" + _AMPM + r")?)"
    r"(?P<close>(?(open)\] |(?: - |: | )))"
)
_HEADER_FIRST = frozenset("0123456789[")  # what a header starts with, bidi marks aside
_CONTENT_LINE = re.compile(rf"^(?:[^\S\n]|[{_LEAD}])*[^\s{_LEAD}].*", re.MULTILINE)  # a non-blank line
_DIGITS = re.compile(r"\d+")
_TIME = re.compile(r"(\d{1,2})[:.](\d{2})(?:[:.](\d{2}))?(?:\D*?([AaPp]))?")
_CHAT_WITH = re.compile(r"WhatsApp Chat (?:with|mit) (.+)\.txt", re.IGNORECASE)
_NOT_A_CHAT = "not a WhatsApp chat: it does not start with a header such as '31/12/2023, 21:05 - Name: text'"
_STEM_PREFIXES = ("WhatsApp Chat - ", "WhatsApp Chat with ", "WhatsApp Chat mit ")

# --- what is not typed text (FORMATS.md 4.3, 4.4) -----------------------------------------
# Placeholders are held lower-cased and matched against the lower-cased body.
_SKIP = frozenset(s.lower() for s in (
    "<Media omitted>", "<Medien ausgeschlossen>", "image omitted", "video omitted", "audio omitted",
    "sticker omitted", "GIF omitted", "document omitted", "Contact card omitted", "Bild weggelassen",
    "Video weggelassen", "Audio weggelassen", "Sticker weggelassen", "GIF weggelassen", "Dokument weggelassen",
    "This message was deleted", "This message was deleted.", "You deleted this message", "You deleted this message.",
    "Diese Nachricht wurde gelöscht", "Diese Nachricht wurde gelöscht.",
    "Du hast diese Nachricht gelöscht", "Du hast diese Nachricht gelöscht.",
))  # fmt: skip
_SKIP_LENGTHS = frozenset(map(len, _SKIP))  # a body of another length is no placeholder: it is not lower-cased
_SKIP_PREFIXES = (
    "Messages and calls are end-to-end encrypted", "Messages to this group are now secured with end-to-end encryption",
    "Messages to this chat and calls are now secured with end-to-end encryption",
    "Messages you send to this chat and calls are now secured with end-to-end encryption",
    "Messages you send to this group are now secured with end-to-end encryption",
    "Nachrichten und Anrufe sind Ende-zu-Ende-verschlüsselt",
)  # fmt: skip
_ATTACHMENT_PREFIXES = ("<attached: ", "<adjunto: ", "<anhang: ")  # lower-case, as `_SKIP`
_SKIP_SUFFIXES = ("document omitted", "dokument weggelassen", "<\u200eattached>", "<attached>")
_FILE_ATTACHED = (" (file attached)", " (datei angehängt)")
_EDITED = (
    " <This message was edited>", " \u200e<This message was edited>",
    " <Diese Nachricht wurde bearbeitet.>", " \u200e<Diese Nachricht wurde bearbeitet.>",
)  # fmt: skip
# sends a body to `_odd_text`: the last words of the suffix placeholders in their usual cases
_ODD_ENDINGS = (*_EDITED, ">", *(f(w) for w in ("omitted", "weggelassen", "attached)", "angehängt)")
                                 for f in (str.lower, str.capitalize, str.upper)))
# iOS system lines written as if by the person they are about ("Boris: Boris created group ...")
_SELF_EVENTS = (' created group "', ' changed the subject to "', ' changed the subject from "',
                ' changed the group name to "', " changed this group's icon", " deleted this group's icon",
                " changed the group description")  # fmt: skip
_SELF_EXACT = frozenset({" left", " joined using this group's invite link"})

_NO_BIDI = str.maketrans(dict.fromkeys(_BIDI))
_PLAIN = str.maketrans({"\u2011": "-", "\u00a0": " ", "\u202f": " "})


class _MonthFirst(Exception):
    """A date showed the file is month-first after day-first was assumed: parse it again."""


# --- the header grammar ---------------------------------------------------------------------


def _probe(line: str) -> re.Match[str] | None:
    """The loose header match of a line (bidi marks and BOM before it ignored), stamp valid."""
    line = line.lstrip(_LEAD)
    m = _PROBE.match(line)
    if m is None:
        return None
    if m["close"] in (": ", " ") and ": " not in line[m.end() :]:
        return None  # the weak `: ` and ` ` separators are believed with an author only
    try:
        _date_parts(m["date"])
        _time_of(m["time"])
    except ValueError:
        return None
    return m


def _header(m: re.Match[str], utf8: bool) -> str:
    """The strict header regex of a file whose first header the probe matched, for str or (with
    `utf8`) for the file's bytes. Groups: 1 stamp, 2 date, 3 time, 4 author, 5 author written
    with no space after the colon."""
    bidi, ampm = (_BIDI_UTF8, _AMPM_UTF8) if utf8 else (f"[{_BIDI}]*", _AMPM)
    ds, ts = re.escape(m["ds"]), re.escape(m["ts"])
    date_ = rf"\d{{1,4}}{ds}\d{{1,4}}{ds}\d{{1,4}}{re.escape(m['dend'])}"
    time_ = rf"\d{{1,2}}{ts}\d{{2}}" + (rf"{ts}\d{{2}}" if m["sec"] else "") + (ampm if m["ampm"] else "")
    stamp = rf"(({date_}){re.escape(m['dt'])}({time_}))"
    if m["open"]:
        return rf"{bidi}\[{stamp}\] (?:([^\n]*?): |([^\n:]*):)?"
    return rf"{bidi}{stamp}{re.escape(m['close'])}(?:([^\n]*?): )?((?!))?"


def _cut_header(m: re.Match[str]) -> re.Pattern[str]:
    """A line that is a header cut short: everything up to the hour, then any prefix of the rest."""
    ts = re.escape(m["ts"])
    rest = [ts, r"\d{1,2}"] + ([ts, r"\d{1,2}"] if m["sec"] else [])
    rest += [r"[ \u202f\u00a0]?", "[AaPp]", r"\.?", r"[ \u00a0\u202f]?", "[Mm]"] if m["ampm"] else []
    rest += [re.escape(c) for c in ("]" if m["open"] else m["close"].rstrip())]
    partial = "".join(f"(?:{r}" for r in rest) + ")?" * len(rest)
    date_ = rf"\d{{1,4}}{re.escape(m['ds'])}\d{{1,4}}{re.escape(m['ds'])}\d{{1,4}}{re.escape(m['dend'])}"
    return re.compile(rf"[{_BIDI}]*{re.escape(m['open'] or '')}{date_}{re.escape(m['dt'])}\d{{1,2}}{partial}\Z")


def _date_parts(s: str) -> tuple[int, int, int, bool]:
    """(year, first, second, order_unknown). With the year first or in the middle, `first` and
    `second` are month and day; with the year last, day and month in an order still unknown."""
    parts = _DIGITS.findall(s)
    if len(parts) != 3 or max(map(len, parts)) > 4:
        raise ValueError("not three numbers")
    a, b, c = parts
    if len(a) == 4:
        year, first, second, unknown = int(a), int(b), int(c), False
    elif len(b) == 4:  # m/y/d, in Pustur's tests
        year, first, second, unknown = int(b), int(a), int(c), False
    elif len(c) in (2, 4):
        year, first, second, unknown = int(c) + (2000 if len(c) == 2 else 0), int(a), int(b), True
    else:
        raise ValueError("no year")
    if not (0 < first <= 31 and 0 < second <= 31) or (first > 12 and second > 12):
        raise ValueError("not a day and a month")
    return year, first, second, unknown


def _time_of(s: str) -> time:
    """A header's time, 12-hour clocks converted; ValueError when out of range."""
    m = _TIME.match(s)
    if m is None:
        raise ValueError("no time")
    h, mi, sec = int(m[1]), int(m[2]), int(m[3] or 0)
    if m[4]:
        if not 1 <= h <= 12:
            raise ValueError("hour out of range for a 12-hour clock")
        h = h % 12 + (12 if m[4] in "Pp" else 0)
    return time(h, mi, sec)


def _sender(raw: str) -> str:
    """FORMATS.md 0.4: bidi marks out, a leading `~` and its space out, U+2011 and NBSPs plain."""
    s = raw.translate(_NO_BIDI)
    if s.startswith("~"):
        s = s[2:] if s[1:2] in (" ", "\u00a0", "\u202f") else s[1:]
    return s.translate(_PLAIN)


def _text(body: str, ios: bool) -> str | None:
    """The typed text of a message body, or None for a placeholder or system text."""
    if not body:
        return None
    if body[0] in _BIDI:
        if ios and body[0] == "\u200e":
            return None  # iOS marks media, deleted and system bodies this way
        body = body.lstrip(_BIDI)
    if (len(body) in _SKIP_LENGTHS and body.lower() in _SKIP) or body.startswith(_SKIP_PREFIXES):
        return None
    if body.endswith(_ODD_ENDINGS) or ")\n" in body:
        return _odd_text(body)
    return body


def _odd_text(body: str) -> str | None:
    """`_text` for the few bodies that may end with a marker or start with an attached file."""
    for suffix in _EDITED:
        if body.endswith(suffix):
            body = body[: -len(suffix)]
            break
    folded = body.lower()
    if not body or folded in _SKIP or folded.endswith(_SKIP_SUFFIXES):
        return None
    if body[0] == "<" and body[-1] == ">" and folded.startswith(_ATTACHMENT_PREFIXES) and "\n" not in body:
        return None
    first, _, caption = body.partition("\n")
    if first.lower().endswith(_FILE_ATTACHED):
        return caption or None  # the caption, on the lines after the file name
    return body


# --- one chat file --------------------------------------------------------------------------


class _Chat:
    """One chat file's bytes (BOM gone, CRLF made LF) and its header grammar; `messages()` parses it.

    After it, `misfits` counts the lines that start with a header of another shape than the
    file's (kept as text: the strict grammar is what keeps continuation lines apart from
    headers), and `misfit_lines` holds the first few of their line numbers.
    """

    def __init__(self, data: bytes, start: int, probe: re.Match[str], where: str, times: dict[bytes, time]):
        self.data, self.start, self.where = data, start, where
        self.ios = probe["open"] is not None
        header = _header(probe, True).encode("ascii")
        self.first_rx, self.rx, self.cut = re.compile(header), re.compile(b"\n" + header), _cut_header(probe)
        self.dayfirst, self.decided = True, False
        self.dates: dict[bytes, date] = {}
        self.times = times
        self.misfits = 0
        self.misfit_lines: list[int] = []

    def error(self, pos: int, reason: str) -> ParseError:
        return ParseError(self.where, reason, line=self.data.count(b"\n", 0, pos) + 1)

    def messages(self) -> list[Message]:
        # No cyclic GC while the messages are built: a million new `Message`s (which hold no
        # cycles) would set off collections that walk them all again and again, about a third of
        # the parse time. It is turned back on only if it was on, so threads and nesting are safe.
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._in_order()
        except UnicodeDecodeError:
            decode_text(self.data, self.where)  # raises, naming the line of the first bad byte
            raise
        finally:
            if enabled:
                gc.enable()

    def _in_order(self) -> list[Message]:
        try:
            return self._messages()
        except _MonthFirst:
            self.dayfirst, self.decided = False, True
            self.dates.clear()
            return self._messages()

    def _messages(self) -> list[Message]:
        data, ios = self.data, self.ios
        self.misfits, self.misfit_lines = 0, []
        dates, times = self.dates, self.times
        senders: dict[bytes, str] = {}
        out: list[Message] = []
        append = out.append
        first = self.first_rx.match(data, self.start)
        if first is None:
            raise self.error(self.start, "the first message header does not parse")
        end = len(data) - 1 if data.endswith(b"\n") else len(data)
        combine = datetime.combine
        last_stamp, last_date, day = b"", b"", date.min
        when, ordered = datetime.min, True
        sender: str | None = None  # of the message being read; None for a system line
        bare = False  # its author was written `Name:` with no space after the colon
        body_at = 0
        for m in chain((first,), self.rx.finditer(data, first.end()), (None,)):
            at = end if m is None else m.start()
            body = data[body_at:at].decode()  # system lines too: every byte is checked
            if "\n" in body:
                self._misfit(body, body_at)
            if sender is not None:
                typed = _text(body, ios)
                if typed and not (bare and typed == ".") and not (ios and _self_event(typed, sender)):
                    append(Message(sender, typed, when))
            if m is None:
                break
            stamp, date_s, time_s, author, bare_author = m.groups()
            if stamp != last_stamp:
                if date_s != last_date:
                    day = dates.get(date_s) or self._date(date_s, m.start(1))
                    last_date = date_s
                t = times.get(time_s) or self._time(time_s, m.start(1))
                previous, last_stamp, when = when, stamp, combine(day, t)
                if when < previous:
                    ordered = False
            body_at = m.end()
            bare = author is None
            if bare:
                author = bare_author
                if author is None:  # no author: a system line
                    sender = None
                    continue
            sender = senders.get(author)
            if sender is None:
                sender = senders[author] = _sender(author.decode())
                if not sender:
                    raise self.error(m.start(1), "a message header has an empty author name")
        self._check_last_line(end)
        return out if ordered else sort_messages(out)

    def _misfit(self, body: str, at: int) -> None:
        """Count the continuation lines of the body at byte `at` that start with a header of another
        shape than the file's, noting the first few line numbers."""
        for i, line in enumerate(body.split("\n")[1:], 1):
            if line.lstrip(_LEAD)[:1] in _HEADER_FIRST and _probe(line):
                self.misfits += 1
                if len(self.misfit_lines) < SHOWN_LINES:
                    self.misfit_lines.append(self.data.count(b"\n", 0, at) + 1 + i)

    def _date(self, raw: bytes, at: int) -> date:
        s = raw.decode()
        try:
            year, first, second, unknown = _date_parts(s)
            if unknown and (first > 12) != (second > 12):  # this date shows the order
                dayfirst = first > 12
                if self.decided and dayfirst != self.dayfirst:
                    order = "day" if dayfirst else "month"
                    raise self.error(at, f"date {s!r} is {order}-first, but other dates in the file are not")
                if self.dayfirst and not dayfirst:
                    raise _MonthFirst
                self.decided = True
            month, day = (second, first) if unknown and self.dayfirst else (first, second)
            d = self.dates[raw] = date(year, month, day)
        except ValueError as e:
            raise self.error(at, f"bad date {s!r} in a message header ({e})") from None
        return d

    def _time(self, raw: bytes, at: int) -> time:
        s = raw.decode()
        try:
            t = self.times[raw] = _time_of(s)
        except ValueError as e:
            raise self.error(at, f"bad time {s!r} in a message header ({e})") from None
        return t

    def _check_last_line(self, end: int) -> None:
        """A last line that is the start of a header, cut off, means a truncated file."""
        data = self.data
        while end and data[end - 1] == 10:  # "\n"
            end -= 1
        at = data.rfind(b"\n", 0, end) + 1
        if at > self.start and self.cut.match(data[at:end].decode()):
            raise self.error(at, "the file is cut off inside a message header (truncated export)")


def _self_event(text: str, sender: str) -> bool:
    """An iOS system line written as if by the person it is about: "Boris: Boris left"."""
    if not text.startswith(sender):
        return False
    rest = text[len(sender) :]
    return rest.startswith(_SELF_EVENTS) or rest in _SELF_EXACT


# --- files: which are chats, and their names --------------------------------------------------


def _chat_probe(head: str) -> tuple[int, re.Match[str]] | None:
    """Where a chat's first header starts and the probe's match of it, if `head` (the start of a
    file, whole lines) is a chat: its first non-blank line is a header, and another header
    follows unless the file is only a few lines long."""
    lines = _CONTENT_LINE.finditer(head)
    first = next(lines, None)
    probe = _probe(first[0]) if first else None
    if first is None or probe is None:
        return None
    rx, others = re.compile(_header(probe, False)), 0
    for others, line in enumerate(lines, 1):  # noqa: B007 - the count is read after the loop
        if rx.match(line[0]):
            break
    else:
        if others > SHORT_FILE:
            return None  # one header-like line atop a page of other text: not a chat
    return first.end() - len(first[0].lstrip(_LEAD)), probe


def _candidates(source: Source) -> list[str]:
    files = source.files()
    return files if len(files) == 1 else [f for f in files if f.lower().endswith(".txt")]


def _looks_like_chat(source: Source, path: str) -> bool:
    try:
        head = source.head(path, HEAD)
    except OSError as e:
        raise ParseError(source.where(path), f"cannot read the file ({e})") from None
    if len(head) == HEAD:
        head = head[: head.rfind(b"\n") + 1]  # whole lines only
    return _chat_probe(head.removeprefix(BOM).decode("utf-8", "replace")) is not None


def detect(source: Source) -> bool:
    """True when a .txt file (or the single file given) starts with WhatsApp message headers."""
    try:
        return any(_looks_like_chat(source, p) for p in _candidates(source)[:DETECT_PEEKS])
    except Exception:  # noqa: BLE001 - detect never raises; parse reports damage
        return False


def _title(container: str, path: str) -> str:
    """`<Name>` of `WhatsApp Chat with <Name>.txt`, else the folder or zip (`container`) holding the chat."""
    inner, outer = PurePosixPath(path), PurePosixPath(container.replace("\\", "/"))
    for name in (inner.name, outer.name):  # the outer name is the file's when it came alone
        if m := _CHAT_WITH.fullmatch(name):
            return m[1]
    if len(inner.parts) > 1:
        stem = inner.parent.name
    elif outer.name != inner.name:
        stem = outer.stem if outer.suffix.lower() in (".zip", ".txt") else outer.name
    else:
        stem = ""
    for prefix in _STEM_PREFIXES:
        stem = stem.removeprefix(prefix)
    return stem if stem and stem != "_chat" else "WhatsApp chat"


@dataclass(frozen=True)
class _ChatFile:
    """A chat file: in `source` (the export, or a zip in it) at `path`."""

    source: Source
    path: str
    title: str


def _parse_chat(chat: _ChatFile, times: dict[bytes, time], warnings: list[str]) -> list[Message]:
    source, path = chat.source, chat.path
    where = source.where(path)
    try:
        data = source.read(path).removeprefix(BOM)
    except OSError as e:
        raise ParseError(where, f"cannot read the file ({e})") from None
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")  # only CRLF line ends lose their \r
    head = data[: data.rfind(b"\n", 0, HEAD) + 1] if len(data) > HEAD else data
    found = _chat_probe(text := decode_text(head, where))
    if found is None:
        raise ParseError(where, _NOT_A_CHAT, line=1)
    start = len(text[: found[0]].encode())
    parsed = _Chat(data, start, found[1], where, times)
    messages = parsed.messages()
    if parsed.misfits:
        lines = ", ".join(map(str, parsed.misfit_lines)) + (", ..." if parsed.misfits > SHOWN_LINES else "")
        warnings.append(
            f"{where}: {parsed.misfits} lines start with a message header of another format than the "
            f"file's first header and were read as text of the message before them (lines {lines})"
        )
    return messages


def _zipped_chats(source: Source, path: str, stack: ExitStack) -> list[_ChatFile]:
    """The chats in a zip among the export's files; a zip that holds none, or cannot be read, is a warning."""
    where = source.where(path)
    try:
        inner = stack.enter_context(open_inner_zip(source, path))
        chats = [p for p in _candidates(inner) if _looks_like_chat(inner, p)]
    except InvalidArgument as e:  # ParseError too: not a zip, damaged, or refused by the zip limits
        source.warnings.append(f"{where}: a zip that was not read ({str(e).removeprefix(f'{where}: ')})")
        return []
    if not chats:
        source.warnings.append(f"{where}: a zip with no WhatsApp chat in it, not read")
    return [_ChatFile(inner, p, _title(path, p)) for p in chats]


def parse(source: Source) -> Iterator[Conversation]:
    """One conversation per chat file, in path order, then those of the zips among the files; a
    source without a chat is a ParseError. A chat found twice (the same path, in the export and in
    a zip, under the same title) is one conversation, its files' messages merged in time order."""
    candidates = _candidates(source)
    chats = [path for path in candidates if _looks_like_chat(source, path)]
    with ExitStack() as stack:
        files = [_ChatFile(source, path, _title(source.name, path)) for path in chats]
        read = set(chats)  # a chat under a .zip name (the content decides) is not a zip
        for path in source.files():
            if path.lower().endswith(".zip") and path not in read:
                files += _zipped_chats(source, path, stack)
        if not files and len(candidates) == 1:
            raise ParseError(source.where(candidates[0]), _NOT_A_CHAT, line=1)
        if not files:
            raise ParseError(source.name, "no WhatsApp chat found: no .txt file starts with a message header")
        same: dict[tuple[str, str], list[_ChatFile]] = {}
        for chat in files:
            same.setdefault((chat.path, chat.title), []).append(chat)
        times: dict[bytes, time] = {}  # shared by the chats: the same clock strings recur
        ids: dict[str, int] = {}
        for (path, title), group in same.items():
            messages = [m for chat in group for m in _parse_chat(chat, times, source.warnings)]
            if not messages:
                continue
            n = ids[path] = ids.get(path, 0) + 1  # another chat under the same path: keep ids unique
            cid = f"whatsapp-{path}" if n == 1 else f"whatsapp-{path}-{n}"
            yield Conversation(cid, title, FORMAT, sort_messages(messages) if len(group) > 1 else messages)


PARSERS = [Parser(FORMAT, detect, parse)]
