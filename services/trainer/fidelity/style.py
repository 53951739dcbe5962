"""How someone writes, as numbers: a style profile of a set of messages, and how far two are apart.

A profile holds distributions, not only means: for the per-message figures (length in
characters and words, emoji, `!`, `?`, `...`) it keeps the 10th, 50th and 90th percentiles
beside the mean, because two people with the same mean length can write very differently (one
mixes one-word replies with paragraphs). Shares (messages starting lowercase, all lowercase,
holding a link or a redaction placeholder) and messages per turn (bursts) complete it. The
distance between a person's and a model's profiles is the mean, over every figure, of their
relative difference |a - b| / max(|a|, |b|), so each figure counts alike whatever its unit and
the distance lies in [0, 1] (0: the same profile).

Distinctive words and phrases: the weighted log-odds ratio with an informative Dirichlet prior
(Monroe, Colaresi and Quinn 2008, "Fightin' Words"), of the person's words and word pairs
against the other participants': z-scores that do not favour rare words the way raw ratios do.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from doppel.model import StyleFigure

WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?|\d+", re.UNICODE)
URL = re.compile(r"\b(?:https?://|www\.)\S+")
PLACEHOLDER = re.compile(r"<(?:URL|EMAIL|PHONE|CARD|IBAN|MEDIA|[A-Z]+)>")
# Emoji and pictographs: the Unicode blocks people's emoji come from (flags count once per letter).
EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\U0001F1E6-\U0001F1FF]")
QUANTILES = (0.1, 0.5, 0.9)


def words(text: str) -> list[str]:
    """Lowercased words and numbers of `text`, apostrophes kept inside words."""
    return [w.lower() for w in WORD.findall(text)]


def quantile(values: Sequence[float], q: float) -> float:
    """The `q` quantile of `values` by linear interpolation (numpy's default); 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    at = q * (len(ordered) - 1)
    low = math.floor(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


@dataclass(frozen=True)
class Stat:
    """One figure of a profile."""

    name: str
    value: float


def _per_message(name: str, values: list[float]) -> list[Stat]:
    mean = sum(values) / len(values) if values else 0.0
    return [Stat(f"{name} mean", mean), *(Stat(f"{name} p{round(q * 100)}", quantile(values, q)) for q in QUANTILES)]


def _share(name: str, hits: Iterable[bool], total: int) -> Stat:
    return Stat(name, sum(hits) / total if total else 0.0)


def profile(messages: Sequence[str], turn_sizes: Sequence[int] = ()) -> list[Stat]:
    """The style figures of `messages` (one person's, or a model's replies); `turn_sizes`: how many
    messages each of their turns held (bursts), when known."""
    texts = [m.strip() for m in messages if m.strip()]
    n = len(texts)
    letters = [next((c for c in t if c.isalpha()), "") for t in texts]
    stats = [
        *_per_message("characters", [float(len(t)) for t in texts]),
        *_per_message("words", [float(len(words(t))) for t in texts]),
        *_per_message("emoji", [float(len(EMOJI.findall(t))) for t in texts]),
        Stat("! per message", sum(t.count("!") for t in texts) / n if n else 0.0),
        Stat("? per message", sum(t.count("?") for t in texts) / n if n else 0.0),
        Stat("... per message", sum(t.count("...") + t.count("…") for t in texts) / n if n else 0.0),
        _share("starts lowercase", (c.islower() for c in letters), n),
        _share("all lowercase", (any(c.isalpha() for c in t) and t == t.lower() for t in texts), n),
        _share("with a link", (URL.search(t) is not None for t in texts), n),
        _share("with a placeholder", (PLACEHOLDER.search(t) is not None for t in texts), n),
    ]
    if turn_sizes:
        stats.append(Stat("messages per turn", sum(turn_sizes) / len(turn_sizes)))
    return stats


def compare(person: Sequence[Stat], model: Sequence[Stat]) -> list[StyleFigure]:
    """The figures both profiles hold, side by side, in the person's order."""
    theirs = {s.name: s.value for s in model}
    return [StyleFigure(name=s.name, person=s.value, model=theirs[s.name]) for s in person if s.name in theirs]


def distance(rows: Sequence[StyleFigure]) -> float:
    """One number for how far two profiles are apart: the mean relative difference, in [0, 1]."""
    return sum(r.difference for r in rows) / len(rows) if rows else 0.0


@dataclass(frozen=True)
class Distinctive:
    term: str  # a word, or two words joined by a space
    z: float  # the weighted log-odds z-score: how much more the person uses it than the others
    count: int  # how often the person wrote it


def _terms(texts: Iterable[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for text in texts:
        w = words(text)
        counts.update(w)
        counts.update(f"{a} {b}" for a, b in zip(w, w[1:], strict=False))
    return counts


def distinctive(person: Iterable[str], others: Iterable[str], *, top: int = 15, min_count: int = 3) -> list[Distinctive]:
    """The person's most distinctive words and word pairs against the others' (highest z first)."""
    mine, theirs = _terms(person), _terms(others)
    prior = mine + theirs
    a0 = sum(prior.values())
    n_mine, n_theirs = sum(mine.values()), sum(theirs.values())
    if not n_mine or not n_theirs:
        return []
    out = []
    for term, count in mine.items():
        if count < min_count:
            continue
        alpha = prior[term]  # the prior: the pooled counts (alpha_w = y_w over both), as in the paper's section 3.5
        other = theirs[term]
        delta = (math.log((count + alpha) / (n_mine + a0 - count - alpha))
                 - math.log((other + alpha) / (n_theirs + a0 - other - alpha)))
        variance = 1 / (count + alpha) + 1 / (other + alpha)
        out.append(Distinctive(term, delta / math.sqrt(variance), count))
    out.sort(key=lambda d: (-d.z, d.term))
    return out[:top]
