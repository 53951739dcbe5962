"""People's names out: every participant but the speakers kept becomes `<PERSON_n>`.

The `personal_urls_and_names` redaction needs the whole export's participants before the first
conversation is stored (a text may name someone whose first message comes later), so
`for_import` reads the export once more, first, keeping only the distinct senders. Each person
not kept gets a number, the same across conversations, and across imports into one dataset
through the salted digests of `doppel.dataset.Pseudonyms` in its manifest (never the names).

Where a name is written (message texts, titles, and what the manifest says about the export:
its file name, notes and exclusions) it is replaced case-insensitively between word boundaries
(letters and digits: `_` separates words), longest first: the full name (its words apart by
spaces, `_` or `.` too: `John.Smith`, `john_smith_3`), each part of 3+ letters (`John`, `Smith`,
`bob` of `bob#1234`) and the full name run together (`johnsmith`, as Messenger's folder names
write it). A part two people share becomes `<PERSON>`; a kept speaker's name, and each part of
it, stays. Conversation ids, which exports build from names and file names, become salted
digests too. Only this export's participants are known by name: someone pseudonymised by an
earlier import who is only mentioned in this one is not recognised.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from collections.abc import Iterable

from doppel.conversation import Conversation, Message
from doppel.dataset import Pseudonyms
from doppel.errors import InvalidArgument

from .options import IngestOptions, Redaction
from .parsers.base import Parser
from .source import Source

PERSON = "<PERSON_{}>"
SOMEONE = "<PERSON>"  # a name part more than one person has
_PUNCT = string.punctuation + "“”‘’«»"
_GAP = re.compile(r"[\s_.]+")  # between the words of a name: carol smith, carol_smith, carol.smith
_SHOWN = 30  # participants an error lists


def participants(parser: Parser, source: Source) -> list[str]:
    """Every distinct sender of the export, in order of first appearance (a first reading, its notes dropped)."""
    notes = len(source.warnings)
    found: dict[str, None] = {}
    for c in parser.parse(source):
        found.update(dict.fromkeys(m.sender for m in c.messages))
    del source.warnings[notes:]  # the second reading, which stores, notes them again
    return list(found)


def for_import(options: IngestOptions, parser: Parser, source: Source, state: Pseudonyms | None) -> Pseudonymiser | None:
    """The pseudonymiser of an import at the names level, `state` being the dataset's so far; None at other levels.

    A kept name that is no participant of the export is an InvalidArgument that lists them.
    """
    if options.redaction is not Redaction.personal_urls_and_names:
        return None
    people = participants(parser, source)
    folded = {p.casefold() for p in people}
    if missing := [k for k in options.keep_names if k.casefold() not in folded]:
        listed = sorted(people, key=str.casefold)
        more = f" and {len(listed) - _SHOWN} more" if len(listed) > _SHOWN else ""
        raise InvalidArgument(
            f"keep_names: {', '.join(map(repr, missing))} {'is' if len(missing) == 1 else 'are'} not a participant "
            f"of {source.name}; its participants are {', '.join(listed[:_SHOWN]) or 'none'}{more}"
        )
    keep = {k.casefold() for k in options.keep_names}
    return Pseudonymiser(people, [p for p in people if p.casefold() in keep], state or Pseudonyms(salt=secrets.token_hex(16)))


def _key(text: str) -> str:
    """How an alias and a match are compared: lower case, the words apart by one space."""
    return _GAP.sub(" ", text.lower()).strip()


def _parts(name: str) -> set[str]:
    """The parts of a name replaced on their own: its words (and a hyphenated word's halves) of 3+ letters."""
    words: set[str] = set()
    for chunk in re.split(r"[\s#]+", _key(name)):
        chunk = chunk.strip(_PUNCT)
        words.update([chunk, *chunk.split("-")])
    return {w for w in words if sum(c.isalpha() for c in w) >= 3} - {_key(name)}


class Pseudonymiser:
    """Replaces the people of one import, `participants` but the `kept`, by their dataset's placeholders."""

    def __init__(self, participants: Iterable[str], kept: Iterable[str], state: Pseudonyms):
        self.state = state.model_copy(deep=True)  # people grows as newcomers get numbers
        self._numbers = {digest: n for n, digest in enumerate(self.state.people, 1)}
        kept = list(kept)
        self._kept = {k.casefold() for k in kept}
        self._placeholders: dict[str, str] = {}  # casefolded name -> placeholder
        people = {name: self.sender(name) for name in participants if name.casefold() not in self._kept}
        self._aliases = _aliases(people, kept)
        self._pattern = re.compile(rf"(?<![^\W_]){_trie(self._aliases)}(?![^\W_])", re.IGNORECASE) if self._aliases else None

    def sender(self, name: str) -> str:
        """`name` if kept, else its placeholder (a newcomer to the dataset gets the next number)."""
        folded = name.casefold()
        if folded in self._kept:
            return name
        if (placeholder := self._placeholders.get(folded)) is None:
            digest = self.state.digest(name)
            if digest not in self._numbers:
                self.state.people.append(digest)
                self._numbers[digest] = len(self.state.people)
            placeholder = self._placeholders[folded] = PERSON.format(self._numbers[digest])
        return placeholder

    def text(self, text: str) -> str:
        """`text` with every pseudonymised person's name replaced."""
        return self._pattern.sub(self._replace, text) if self._pattern else text

    def _replace(self, m: re.Match[str]) -> str:
        placeholder = self._aliases.get(_key(m.group()), SOMEONE)
        return m.group() if placeholder is None else placeholder

    def conversation_id(self, cid: str) -> str:
        """A salted digest of a conversation id: the same in every import into the dataset, with no name in it."""
        return "c-" + hashlib.sha256(f"{self.state.salt}\0conversation\0{cid}".encode()).hexdigest()[:16]

    def conversation(self, c: Conversation, messages: list[Message]) -> Conversation:
        """`c` with `messages` (changed in place), id and title pseudonymised."""
        for m in messages:
            m.sender = self.sender(m.sender)
            m.text = self.text(m.text)
        return Conversation(self.conversation_id(c.id), self.text(c.title), c.source_format, messages)

    def options(self, options: IngestOptions) -> IngestOptions:
        """`options` as the manifest records them: names in the exclusions replaced too."""
        return options.model_copy(update={
            "exclude_conversations": [self.text(n) for n in options.exclude_conversations],
            "exclude_senders": [self.text(n) for n in options.exclude_senders],
        })


def _trie(aliases: Iterable[str]) -> str:
    """A pattern of the aliases as a tree of their letters: it matches the longest alias, as a list
    of alternatives longest first would, but looks at each letter of a text once, not once an alias."""
    root: dict[str, dict] = {}
    for alias in aliases:
        node = root
        for ch in alias:
            node = node.setdefault(ch, {})
        node[""] = {}  # an alias ends here

    def pattern(node: dict[str, dict]) -> str:
        branches = []
        for ch, child in sorted(node.items()):
            if ch:
                run = ch
                while len(child) == 1 and "" not in child:  # one way on: a run of letters, not a group each
                    [(ch, child)] = child.items()
                    run += ch
                branches.append("".join(_GAP.pattern if c == " " else re.escape(c) for c in run) + pattern(child))
        if not branches:
            return ""
        return "(?:" + "|".join(branches) + ")" + ("?" if "" in node else "")

    return pattern(root)


def _aliases(people: dict[str, str], kept: Iterable[str]) -> dict[str, str | None]:
    """Every way a name is written (`_key`) -> its placeholder, or None for a kept speaker's (left as written).

    Later entries win: parts, then kept names and their parts, then whole names.
    """
    owners: dict[str, set[str]] = {}
    for name, placeholder in people.items():
        for part in _parts(name):
            owners.setdefault(part, set()).add(placeholder)
    aliases: dict[str, str | None] = {part: next(iter(o)) if len(o) == 1 else SOMEONE for part, o in owners.items()}
    for name in kept:
        aliases.update(dict.fromkeys([_key(name), *_parts(name)]))
    for name, placeholder in people.items():
        run_together = "".join(c for c in name.lower() if c.isalnum())
        if sum(c.isalpha() for c in run_together) >= 3:
            aliases[run_together] = placeholder
        aliases[_key(name)] = placeholder
    aliases.pop("", None)
    return aliases
