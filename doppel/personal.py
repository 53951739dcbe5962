"""Personal data in a text: email addresses, card, phone and IBAN numbers, and links.

One combined pattern scans a text once. Candidates are checked before they count (Luhn for
cards, mod-97 for IBANs, digit counts and date shapes for phone numbers), so ordinary numbers,
dates and times are not taken for personal data. URLs are matched first, so digits inside a link
are never taken for a phone number. The ingest service's redaction replaces what this finds; the
trainer's fidelity evaluation counts what a model's replies leak. One rule for both.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

PATTERN = re.compile(
    r"(?P<url>\b(?:https?://|www\.)[^\s<>\"]+)"
    r"|(?P<email>\b[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b)"
    r"|(?P<iban>\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b)"
    r"|(?P<number>(?<![\w+(])(?:\+|\()?[0-9][0-9 \-().]{5,}[0-9](?!\w))"
)
_MAYBE = re.compile(r"[0-9@]")  # a cheap scan first: most messages hold no digit, '@' or link
_DATE = re.compile(r"[0-9]{1,4}([./-])[0-9]{1,2}\1[0-9]{1,4}")


def might_hold(text: str) -> bool:
    """False when `text` surely holds nothing `PATTERN` could match (most messages)."""
    return _MAYBE.search(text) is not None or "://" in text or "www." in text


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def is_iban(candidate: str) -> bool:
    s = candidate.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def number_kind(s: str) -> str | None:
    """"card" or "phone" for a digit run that is one, else None."""
    digits = "".join(c for c in s if "0" <= c <= "9")
    if 13 <= len(digits) <= 19 and luhn(digits) and not any(c in s for c in "()+"):
        return "card"
    if _DATE.match(s) or not 7 <= len(digits) <= 15:
        return None
    international = s.startswith(("+", "00"))
    grouped = any(c in s for c in " -().")
    if international or (grouped and len(digits) >= 7) or len(digits) >= 10:
        return "phone"
    return None


def kind_of(m: re.Match[str]) -> str | None:
    """What a `PATTERN` match is: "url", "email", "iban", "card" or "phone"; None when the check fails."""
    kind, found = m.lastgroup, m.group()
    if kind == "iban":
        return "iban" if is_iban(found) else None
    if kind == "number":
        return number_kind(found)
    return kind


def find(text: str) -> Iterator[tuple[str, str]]:
    """(kind, text) of each piece of personal data in `text`, links included, in order."""
    if not might_hold(text):
        return
    for m in PATTERN.finditer(text):
        if (kind := kind_of(m)) is not None:
            yield kind, m.group()
