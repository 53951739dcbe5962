"""One row's generated tokens turned into text as they come, in constant work per token.

A `RowDecoder` is TGI's `decode_token` with the engine's stop handling: it keeps two offsets
into the row's tokens, `prefix` and `read`, and each step decodes only the tokens from `prefix`
on, twice (with and without the new ones): the difference is the new text, with the tokens
before it as context, so a tokenizer that drops a leading space at the start of a decode still
gives the right text. When the decoded text ends in "\\ufffd" the last token ended inside a
character (an emoji split over byte-level tokens, say): nothing is said until a later token
completes it. Stop and end strings are looked for only in the new text and the
`max(len(stop)) - 1` characters before it, which are held back for that reason. So the deltas
a row sends add up to its full decode (cut at the first stop string), and none of them shows a
replacement character the final text lacks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .protocol import Finish

Decode = Callable[[list[int]], str]

# Tokens the decoder waits for a character to complete: a UTF-8 character is at most 4 bytes,
# so a window still ending in "\ufffd" after this many holds bytes no later token can mend (or
# tokens that decode to nothing); it is sent as it is, and the window moves on.
MAX_WAIT = 8


class RowDecoder:
    """The text of one row: feed it each token; it says what text to send and whether the row ended."""

    def __init__(self, decode: Decode, *, end_strings: tuple[str, ...] = (), stop: tuple[str, ...] = (),
                 end_ids: frozenset[int] = frozenset(), max_new_tokens: int = 1 << 30):
        self.decode, self.end_strings, self.stop = decode, end_strings, stop
        self.end_ids, self.max_new_tokens = end_ids, max_new_tokens
        self.hold = max((len(s) - 1 for s in (*end_strings, *stop)), default=0)
        self.ids: list[int] = []  # the row's tokens (an end token not included)
        self.prefix = self.read = 0  # ids[prefix:read]: context for the next decode; ids[read:]: not yet text
        self.pending = ""  # text not sent yet: it may be the start of a stop string

    @property
    def tokens(self) -> int:
        """Tokens of the text (an end token not counted)."""
        return len(self.ids)

    def add(self, token: int) -> tuple[str, Finish | None]:
        """The text to send now for this next `token`, and why the row ends (None: it goes on)."""
        if token in self.end_ids:
            return self.pending + self._rest(), Finish.END_OF_TURN
        self.ids.append(token)
        window = self.pending + self._new_text()
        cut, reason = first_stop(window, self.end_strings, self.stop)
        if cut is not None:
            return window[:cut], reason
        if len(self.ids) >= self.max_new_tokens:
            return window + self._rest(), Finish.LENGTH
        safe = max(len(window) - self.hold, 0)
        self.pending = window[safe:]
        return window[:safe], None

    def _new_text(self) -> str:
        """The text of the tokens since `read`, once it ends with a whole character; else ""."""
        ids = self.ids
        before = self.decode(ids[self.prefix : self.read]) if self.read > self.prefix else ""
        text = self.decode(ids[self.prefix :])
        if len(text) > len(before) and not text.endswith("\ufffd") or len(ids) - self.read >= MAX_WAIT:
            self.prefix, self.read = self.read, len(ids)
            return text[len(before) :]
        return ""

    def _rest(self) -> str:
        """The text of the tokens not yet made text (a trailing broken character as "\\ufffd"), at the end."""
        if self.read == len(self.ids):
            return ""
        before = self.decode(self.ids[self.prefix : self.read]) if self.read > self.prefix else ""
        return self.decode(self.ids[self.prefix :])[len(before) :]


def first_stop(text: str, ends: tuple[str, ...], stops: tuple[str, ...]) -> tuple[int | None, Finish]:
    """Where the first of `ends` (END_OF_TURN) or `stops` (STOP) starts in `text`, and which kind it is."""
    best: tuple[int | None, Finish] = (None, Finish.STOP)
    for strings, reason in ((ends, Finish.END_OF_TURN), (stops, Finish.STOP)):
        for s in strings:
            at = text.find(s)
            if at >= 0 and (best[0] is None or at < best[0]):
                best = (at, reason)
    return best


def decoder_of(tokenizer: Any) -> Decode:
    """`tokenizer.decode(ids, skip_special_tokens=False)`, as fast as it can be had: a fast
    tokenizer's Rust decode straight, when the Python layer would add nothing to it (a quarter
    of the cost for the few tokens a step decodes)."""
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    backend = getattr(tokenizer, "_tokenizer", None)
    plain = (isinstance(tokenizer, TokenizersBackend) and backend is not None
             and type(tokenizer).decode is PreTrainedTokenizerBase.decode
             and type(tokenizer)._decode is TokenizersBackend._decode
             and not getattr(tokenizer, "clean_up_tokenization_spaces", False))
    if plain and backend is not None:
        rust = backend.decode
        return lambda ids: rust(ids, skip_special_tokens=False)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=False)
