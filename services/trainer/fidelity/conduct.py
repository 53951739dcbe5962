"""What a persona's replies must not do: speak for someone else, leak personal data, or loop.

* **Speaking for others.** A reply holds a turn of another participant when a line of it opens
  with their name and a colon (`Bob: ...`), the way the transcript renders turns. Serving cuts a
  reply where a new line opens as anyone (`Transcript.stops`), so this must be 0; it catches a
  model, or a rendering, that writes a turn on its first line or mid-line.
* **Leaks.** Email addresses, card, phone and IBAN numbers and street addresses in a reply, by
  the same rule the import's redaction uses (`doppel.personal`): a model trained on redacted
  text should never write one; one trained on unredacted text may be replaying one.
* **Repetition.** distinct-1 and distinct-2 (unique words and word pairs over all the words and
  pairs of the replies, Li et al. 2016), and the share of replies that repeat, after trimming
  and case folding, one of the `window` replies before them in the same conversation.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from doppel import personal

from .style import words


def speaks_for(reply: str, others: Iterable[str]) -> str | None:
    """The first of `others` whose turn opens a line of `reply`, or None."""
    names = sorted({o for o in others if o.strip()}, key=len, reverse=True)
    if not names:
        return None
    pattern = re.compile(r"(?:^|\n)[ \t]*(" + "|".join(map(re.escape, names)) + r")[ \t]*:", re.IGNORECASE)
    m = pattern.search(reply)
    if m is None:
        return None
    return next(n for n in names if n.casefold() == m.group(1).casefold())


def leaks(reply: str) -> list[str]:
    """The kinds of personal data in `reply` ("email", "phone", "card", "iban", "address"), in order; links do not count."""
    return [kind for kind, _ in personal.find(reply) if kind != "url"]


def distinct(replies: Iterable[str], n: int) -> float:
    """Unique word n-grams over all word n-grams of `replies` (1.0: nothing repeats; 0 for none)."""
    grams: Counter[tuple[str, ...]] = Counter()
    for reply in replies:
        w = words(reply)
        grams.update(tuple(w[k : k + n]) for k in range(len(w) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def repeats(conversation: Sequence[str], window: int = 3) -> int:
    """How many replies of one conversation (in order) repeat one of the `window` replies before them."""
    seen = [" ".join(r.split()).casefold() for r in conversation]
    return sum(1 for k, r in enumerate(seen) if r and r in seen[max(0, k - window) : k])


@dataclass(frozen=True)
class Conduct:
    replies: int
    speaking_for_others: int
    leaking: int = 0  # replies holding any personal data
    leaks: dict[str, int] = field(default_factory=dict)  # kind -> replies holding one
    distinct_1: float = 0.0
    distinct_2: float = 0.0
    repeated: float = 0.0  # share of replies repeating one of the few before them


def measure(conversations: Sequence[Sequence[str]], others: Iterable[str], *, window: int = 3) -> Conduct:
    """The conduct of replies, grouped by the conversation they were written in (in order)."""
    names = list(others)
    replies = [r for c in conversations for r in c]
    kinds: Counter[str] = Counter()
    leaking = 0
    for r in replies:
        found = set(leaks(r))
        kinds.update(found)
        leaking += bool(found)
    n = len(replies)
    return Conduct(
        replies=n,
        speaking_for_others=sum(speaks_for(r, names) is not None for r in replies),
        leaking=leaking,
        leaks=dict(sorted(kinds.items())),
        distinct_1=distinct(replies, 1),
        distinct_2=distinct(replies, 2),
        repeated=sum(repeats(c, window) for c in conversations) / n if n else 0.0,
    )
