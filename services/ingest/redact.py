"""Personal data out before anything is stored: typed placeholders such as `<EMAIL>`.

What counts as personal data, and how it is checked, is `doppel.personal`'s (the trainer counts
leaks in generated replies by the same rule); this replaces it according to the import's
`Redaction` level. URLs are matched even when they are kept, so digits inside a link are never
taken for a phone number. Street addresses are looked for only at the level that replaces them
(they cost a look at every word). People's names are `pseudonyms`' work: they need the whole
export's participants, not one text.
"""

from __future__ import annotations

import re

from doppel import personal

from .options import Redaction

_TRAILING = ".,;:!?)]}'\""
_PLACEHOLDERS = {"email": "<EMAIL>", "iban": "<IBAN>", "card": "<CARD>", "phone": "<PHONE>", "address": "<ADDRESS>"}


class Redactor:
    """Replaces personal data in texts according to a `Redaction` level."""

    def __init__(self, level: Redaction):
        self.level = level
        self._urls = level in (Redaction.personal_and_urls, Redaction.personal_urls_and_names)
        self._pattern = personal.WITH_ADDRESSES if level is Redaction.personal_urls_and_names else personal.PATTERN

    def __call__(self, text: str) -> str:
        if self.level is Redaction.off or not personal.might_hold(text):
            return text
        return self._pattern.sub(self._replace, text)

    def _replace(self, m: re.Match[str]) -> str:
        found = m.group()
        kind = personal.kind_of(m)
        if kind == "url":
            body = found.rstrip(_TRAILING)
            return "<URL>" + found[len(body) :] if self._urls else found
        return _PLACEHOLDERS[kind] if kind else found
