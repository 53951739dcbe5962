"""Personal data out before anything is stored: typed placeholders such as `<EMAIL>`.

One combined pattern scans each text once. Candidates are checked before they are replaced
(Luhn for cards, mod-97 for IBANs, digit counts and date shapes for phone numbers), so
ordinary numbers, dates and times stay as written. URLs are matched first even when they
are kept, so digits inside a link are never taken for a phone number.
"""

from __future__ import annotations

import re

from .options import Redaction

_PATTERN = re.compile(
    r"(?P<url>\b(?:https?://|www\.)[^\s<>\"]+)"
    r"|(?P<email>\b[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b)"
    r"|(?P<iban>\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b)"
    r"|(?P<number>(?<![\w+(])(?:\+|\()?[0-9][0-9 \-().]{5,}[0-9](?!\w))"
)
_MAYBE = re.compile(r"[0-9@]")  # a cheap scan first: most messages hold no digit, '@' or link
_DATE = re.compile(r"[0-9]{1,4}([./-])[0-9]{1,2}\1[0-9]{1,4}")
_TRAILING = ".,;:!?)]}'\""


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban(candidate: str) -> bool:
    s = candidate.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _number(s: str) -> str | None:
    """The placeholder for a digit run that is a card or phone number, else None."""
    digits = "".join(c for c in s if "0" <= c <= "9")
    if 13 <= len(digits) <= 19 and _luhn(digits) and not any(c in s for c in "()+"):
        return "<CARD>"
    if _DATE.match(s) or not 7 <= len(digits) <= 15:
        return None
    international = s.startswith(("+", "00"))
    grouped = any(c in s for c in " -().")
    if international or (grouped and len(digits) >= 7) or len(digits) >= 10:
        return "<PHONE>"
    return None


class Redactor:
    """Replaces personal data in texts according to a `Redaction` level."""

    def __init__(self, level: Redaction):
        self.level = level
        self._urls = level is Redaction.personal_and_urls

    def __call__(self, text: str) -> str:
        if self.level is Redaction.off:
            return text
        if _MAYBE.search(text) is None and "://" not in text and "www." not in text:
            return text
        return _PATTERN.sub(self._replace, text)

    def _replace(self, m: re.Match[str]) -> str:
        kind = m.lastgroup
        found = m.group()
        if kind == "url":
            body = found.rstrip(_TRAILING)
            return "<URL>" + found[len(body) :] if self._urls else found
        if kind == "email":
            return "<EMAIL>"
        if kind == "iban":
            return "<IBAN>" if _iban(found) else found
        return _number(found) or found
