"""Personal data in a text: email addresses, card, phone and IBAN numbers, street addresses, and links.

One combined pattern scans a text once. Candidates are checked before they count (Luhn for
cards, mod-97 for IBANs, digit counts and date shapes for phone numbers), so ordinary numbers,
dates and times are not taken for personal data. URLs are matched first, so digits inside a link
are never taken for a phone number. The ingest service's redaction replaces what this finds; the
trainer's fidelity evaluation counts what a model's replies leak. One rule for both.

Street addresses are in `WITH_ADDRESSES` only (`PATTERN` plus them): they cost a look at every
word, so only what asks for them pays. They are the common written shapes, a house number
beside a street name that a street word marks: `12 Baker Street`, `221B Baker St`,
`Hauptstraße 5`, `Berliner Str. 12a`, `10 rue de Rivoli`, `Rue de Rivoli 10`, `Via Roma 3`,
`Calle Mayor, 7`. The name must be capitalised (in English also one lowercase word before a
spelled-out street word: `12 baker street`), so "5 miles down the road", "1 place de parking"
or "via WhatsApp 5 minutes ago" are not addresses. Postcodes and towns are left as they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_CAP = r"[A-ZÀ-ÖØ-Þ][\w'’.-]*"  # a capitalised word: Baker, Saint-Michel, O'Connell
_HOUSE = r"[0-9]{1,4}[A-Za-z]?(?:-[0-9]{1,4})?(?!\w)"  # after the street: 5, 12a, 12-14
_HOUSE_FIRST = r"(?<![\w.,/+-])[0-9]{1,4}[A-Za-z]?\s+"  # before it (221B), not the end of a longer number
_PARTICLE = r"(?:(?i:d[aeiou]s?|del|dei|della|delle|la|le|les|los|las)\s+|(?i:d|l|dell|dall|all)['’])"
_ROMANCE_NAME = rf"{_PARTICLE}*{_CAP}(?:[\s-]+{_PARTICLE}*{_CAP}){{0,3}}"  # de Rivoli, des Champs-Élysées
_STREET_EN = (r"(?:(?i:street|road|avenue|lane|drive|boulevard|court|place|terrace|crescent|close|square|way|"
              r"highway|parkway)|St|Rd|Ave|Ln|Dr|Blvd|Ct|Pl|Sq|Hwy)\b\.?")
_STREET_FIRST = r"(?i:rue|avenue|boulevard|place|chemin|impasse|quai|allée|calle|avenida)"  # 10 rue de Rivoli
_STREET_BEFORE_NAME = (r"(?:(?i:rue|avenue|boulevard|place|chemin|impasse|quai|allée|calle|avenida|paseo|plaza|"
                       r"carrer|rua|praça|travessa|viale|corso|piazza|vicolo|largo)|Via|C/)")  # "via" is English too
_STREET_DE = r"(?:Straße|Strasse|Str\.|Weg|Gasse|Platz|Allee|Damm|Ufer)"
_STREET_SUFFIX = r"(?:straße|strasse|str\.|gasse|allee|weg|damm|ufer|straat|laan|gracht|plein)"  # not -platz: Sitzplatz 12
ADDRESS = "|".join([
    rf"{_HOUSE_FIRST}(?:{_CAP}\s+){{1,3}}{_STREET_EN}",  # 12 Baker Street, 221B Baker St.
    rf"{_HOUSE_FIRST}(?!(?i:lane|way)\b)[^\W\d_]{{2,}}\s+(?i:street|road|avenue|boulevard)\b",  # 12 baker street
    rf"{_HOUSE_FIRST}(?:(?i:bis|ter),?\s+)?{_STREET_FIRST}\s+{_ROMANCE_NAME}",  # 10 rue de Rivoli
    rf"(?<![\w-]){_STREET_BEFORE_NAME}\s*{_ROMANCE_NAME},?\s+{_HOUSE}",  # Via Roma 3, Calle Mayor, 7
    rf"(?<![\w-])(?:{_CAP}\s+){{1,2}}{_STREET_DE}\s*{_HOUSE}",  # Berliner Straße 12a
    rf"(?<![\w-])[^\W\d_]{{2,}}{_STREET_SUFFIX}\s*{_HOUSE}",  # Hauptstraße 5, Kerkstraat 12
])
_URL = r"(?P<url>\b(?:https?://|www\.)[^\s<>\"]+)"
_EMAIL = r"(?P<email>\b[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b)"
_IBAN = r"(?P<iban>\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b)"
_NUMBER = r"(?P<number>(?<![\w+(])(?:\+|\()?[0-9][0-9 \-().]{5,}[0-9](?!\w))"
PATTERN = re.compile("|".join([_URL, _EMAIL, _IBAN, _NUMBER]))
WITH_ADDRESSES = re.compile("|".join([_URL, _EMAIL, _IBAN, f"(?P<address>{ADDRESS})", _NUMBER]))  # before numbers: 12 ...
_MAYBE = re.compile(r"[0-9@]")  # a cheap scan first: most messages hold no digit, '@' or link
_DATE = re.compile(r"[0-9]{1,4}([./-])[0-9]{1,2}\1[0-9]{1,4}")


def might_hold(text: str) -> bool:
    """False when `text` surely holds nothing `PATTERN` or `WITH_ADDRESSES` could match (most messages)."""
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
    """What a match of either pattern is: "url", "email", "iban", "address", "card" or "phone"; None when the check fails."""
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
    for m in WITH_ADDRESSES.finditer(text):
        if (kind := kind_of(m)) is not None:
            yield kind, m.group()
