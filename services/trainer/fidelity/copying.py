"""Regurgitation: does a reply copy the training text verbatim?

An index of the training messages answers three questions about a reply: does it repeat a
training message exactly (after trimming and case folding), does it copy a span of >= 20
tokens of one, and a span of >= 8 words. Spans are found through n-gram hashes: every window of
`n` tokens (or words) of every training message is hashed (xxhash64) into one sorted numpy
array, and a reply copies a span when one of its own windows is in it (a binary search each).
On a 1M-message chat that is a few million 8-byte hashes (tens of MB) built in seconds, where a
Python set of the same would take several times the memory. A hash collision can report a copy
that is not one, at odds of about windows / 2^64.

Windows do not cross message boundaries: a reply that stitches the end of one training message
to the start of the next is not counted unless either part is long enough on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import xxhash

from .style import words

TOKEN_SPAN = 20
WORD_SPAN = 8
Tokenize = Callable[[str], Sequence[int]]


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()


def _digest(text: str) -> int:
    return xxhash.xxh64_intdigest(text.encode())


def _hash(items: Sequence[object], start: int, n: int) -> int:
    return _digest("\x1f".join(map(str, items[start : start + n])))


def _windows(items: Sequence[object], n: int) -> Iterable[int]:
    return (_hash(items, k, n) for k in range(len(items) - n + 1))


def _sorted_hashes(hashes: Iterable[int]) -> np.ndarray:
    return np.unique(np.fromiter(hashes, dtype=np.uint64))


def _contains(index: np.ndarray, hashes: Iterable[int]) -> bool:
    probe = np.fromiter(hashes, dtype=np.uint64)
    if not len(probe) or not len(index):
        return False
    at = np.searchsorted(index, probe).clip(max=len(index) - 1)
    return bool((index[at] == probe).any())


@dataclass(frozen=True)
class Copying:
    """Shares of the replies that copy the training text, and how many replies there were."""

    replies: int
    exact: float  # the whole reply is a training message
    token_span: float  # shares a span of >= TOKEN_SPAN tokens with a training message
    word_span: float  # shares a span of >= WORD_SPAN words with a training message


class TrainingIndex:
    """The training messages, indexed for exact copies and copied spans."""

    def __init__(self, messages: Iterable[str], tokenize: Tokenize, *, token_span: int = TOKEN_SPAN,
                 word_span: int = WORD_SPAN):
        self.tokenize, self.token_span, self.word_span = tokenize, token_span, word_span
        texts = [m for m in messages if m.strip()]
        self._exact = _sorted_hashes(_digest(_normal(t)) for t in texts)
        self._tokens = _sorted_hashes(h for t in texts for h in _windows(list(tokenize(t)), token_span))
        self._words = _sorted_hashes(h for t in texts for h in _windows(words(t), word_span))

    def is_exact_copy(self, reply: str) -> bool:
        return bool(reply.strip()) and _contains(self._exact, [_digest(_normal(reply))])

    def copies_tokens(self, reply: str) -> bool:
        return _contains(self._tokens, _windows(list(self.tokenize(reply)), self.token_span))

    def copies_words(self, reply: str) -> bool:
        return _contains(self._words, _windows(words(reply), self.word_span))

    def measure(self, replies: Sequence[str]) -> Copying:
        n = len(replies)

        def share(test: Callable[[str], bool]) -> float:
            return sum(map(test, replies)) / n if n else 0.0

        return Copying(n, share(self.is_exact_copy), share(self.copies_tokens), share(self.copies_words))
