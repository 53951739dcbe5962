"""What happens to each parsed conversation before it is stored, in one pass per conversation.

Order matters and is fixed here: exclusions (by the names as written), then time zone, then
redaction and pseudonyms (so nothing personal, and no name replaced, reaches the dedupe index,
the stats or the store), then dedupe (on the messages as parsed, so an overlapping import
matches whatever the merge and split options), then merging, session splitting and the size
and script filters on the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import regex

from doppel.conversation import Conversation, Message
from doppel.dataset import order_key

from .dedupe import SeenIndex
from .options import IngestOptions, Redaction
from .pseudonyms import Pseudonymiser
from .redact import Redactor

_LETTER = regex.compile(r"\p{L}")


def check_script(name: str) -> str:
    """`name` if it is a Unicode script name `regex` knows (e.g. "Latin", "Cyrillic")."""
    try:
        regex.compile(rf"\p{{Script={name}}}")
    except regex.error:
        raise ValueError(f"{name!r} is not a Unicode script name such as 'Latin' or 'Cyrillic'") from None
    return name


@dataclass
class FilterCounts:
    """What the filters removed, for the dataset's warnings."""

    excluded_conversations: int = 0
    excluded_messages: int = 0
    duplicate_messages: int = 0
    merged_messages: int = 0
    too_short: int = 0
    wrong_script: int = 0

    def warnings(self) -> list[str]:
        parts = [
            (self.excluded_conversations, "conversations excluded by name"),
            (self.excluded_messages, "messages from excluded senders dropped"),
            (self.duplicate_messages, "duplicate messages dropped (already in the dataset or repeated)"),
            (self.merged_messages, "messages merged into the message before them"),
            (self.too_short, "conversations dropped for having too few messages"),
            (self.wrong_script, "conversations dropped for their script"),
        ]
        return [f"{n} {what}" for n, what in parts if n]


class Filters:
    """Applies one import's options to conversations as they stream past."""

    def __init__(self, options: IngestOptions, seen: SeenIndex, pseudonyms: Pseudonymiser | None = None):
        """`pseudonyms` (`pseudonyms.for_import`) is what the names level replaces names with."""
        if (pseudonyms is not None) != (options.redaction is Redaction.personal_urls_and_names):
            raise ValueError("pseudonyms are needed at the names level, and only there")  # a caller's mistake
        self.options = options
        self.seen = seen
        self.pseudonyms = pseudonyms
        self.counts = FilterCounts()
        self._names = {n.casefold() for n in options.exclude_conversations}
        self._senders = {n.casefold() for n in options.exclude_senders}
        self._zone = options.zone()
        self._redact = Redactor(options.redaction)
        self._script = (
            regex.compile("|".join(rf"\p{{Script={s}}}" for s in options.scripts)) if options.scripts else None
        )

    def apply_all(self, conversations: Iterable[Conversation]) -> Iterator[Conversation]:
        """`apply` over a stream of parsed conversations."""
        for c in conversations:
            yield from self.apply(c)

    def apply(self, conversation: Conversation) -> Iterator[Conversation]:
        """The conversations (sessions) to store for one parsed conversation; maybe none."""
        c = conversation
        if self._names and self._excluded(c):
            self.counts.excluded_conversations += 1
            return
        messages = c.messages
        if self._senders:
            kept = [m for m in messages if m.sender.casefold() not in self._senders]
            self.counts.excluded_messages += len(messages) - len(kept)
            messages = kept
        if self._zone is not None:
            zone = self._zone
            for m in messages:
                if m.timestamp.tzinfo is None:
                    m.timestamp = m.timestamp.replace(tzinfo=zone).astimezone(UTC)
        redact = self._redact
        for m in messages:
            m.text = redact(m.text)
        if self.pseudonyms is not None:
            c = self.pseudonyms.conversation(c, messages)
        before = len(messages)
        messages = self.seen.admit(c.id, messages, keep_duplicates=self.options.keep_duplicates)
        self.counts.duplicate_messages += before - len(messages)
        if self.options.merge_window is not None:
            messages = self._merge(messages, self.options.merge_window)
        for session in self._sessions(c, messages):
            if len(session.messages) < self.options.min_messages:
                self.counts.too_short += 1
            elif self._script is not None and not self._in_scripts(session):
                self.counts.wrong_script += 1
            else:
                yield session

    def _excluded(self, c: Conversation) -> bool:
        names = self._names
        return c.title.casefold() in names or any(p.casefold() in names for p in c.participants or ())

    def _merge(self, messages: list[Message], window: timedelta) -> list[Message]:
        out: list[Message] = []
        last_time = datetime.min.replace(tzinfo=UTC)  # read only once `out` holds a message
        for m in messages:
            prev = out[-1] if out else None
            if prev is not None and prev.sender == m.sender and order_key(m.timestamp) - last_time <= window:
                prev.text += "\n" + m.text
                self.counts.merged_messages += 1
            else:
                out.append(m)
            last_time = order_key(m.timestamp)
        return out

    def _sessions(self, c: Conversation, messages: list[Message]) -> Iterator[Conversation]:
        gap = self.options.session_gap
        if gap is None or not messages:
            yield Conversation(c.id, c.title, c.source_format, messages)
            return
        start = 0
        for i in range(1, len(messages) + 1):
            if i == len(messages) or order_key(messages[i].timestamp) - order_key(messages[i - 1].timestamp) > gap:
                part = messages[start:i]
                # named by its first message, so the id stays the same when later imports add sessions
                sid = f"{c.id}@{part[0].timestamp.isoformat()}"
                yield Conversation(sid, c.title, c.source_format, part)
                start = i

    def _in_scripts(self, c: Conversation) -> bool:
        letters = wanted = 0
        for m in c.messages:
            letters += len(_LETTER.findall(m.text))
            wanted += len(self._script.findall(m.text))  # type: ignore[union-attr]
        return letters > 0 and wanted / letters >= self.options.script_min_fraction

