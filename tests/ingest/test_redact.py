"""Redaction: personal data becomes typed placeholders; ordinary numbers, dates and links stay."""

from __future__ import annotations

import pytest

from doppel.personal import find
from services.ingest.options import Redaction
from services.ingest.redact import Redactor

personal = Redactor(Redaction.personal)
with_urls = Redactor(Redaction.personal_and_urls)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("mail me at bob.smith+x@example.co.uk!", "mail me at <EMAIL>!"),
        ("call +49 171 2345678 or (555) 123-4567", "call <PHONE> or <PHONE>"),
        ("tel 0171 2345678.", "tel <PHONE>."),
        ("ring 0044 20 7946 0958", "ring <PHONE>"),
        ("card 4111 1111 1111 1111 ok", "card <CARD> ok"),
        ("4111-1111-1111-1111", "<CARD>"),
        ("IBAN DE89 3704 0044 0532 0130 00.", "IBAN <IBAN>."),
        ("GB82WEST12345698765432", "<IBAN>"),
    ],
)
def test_personal_data_is_replaced(text, expected):
    assert personal(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "on 12.05.2023 at 10:30",
        "12.05.2023 10:30",
        "2024-01-02 1234",
        "I have 10000000 dollars",
        "room 1234567",
        "version 1.2.3",
        "4111 1111 1111 1112",  # fails Luhn
        "DE89 3704 0044 0532 0130 01",  # fails mod 97
        "see https://ex.com/a/1234567890 now",
        "naïve café 👩‍👩‍👧 — text stays exactly",
    ],
)
def test_ordinary_text_is_kept_exactly(text):
    assert personal(text) == text


def test_urls_are_replaced_only_when_asked_and_keep_trailing_punctuation():
    text = "look: https://example.com/x?a=1, and www.test.org/page."
    assert personal(text) == text
    assert with_urls(text) == "look: <URL>, and <URL>."
    assert with_urls("write to a@b.io") == "write to <EMAIL>"


def test_off_changes_nothing():
    assert Redactor(Redaction.off)("bob@example.com +49 171 2345678") == "bob@example.com +49 171 2345678"


names_level = Redactor(Redaction.personal_urls_and_names)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("I live at 12 Baker Street now", "I live at <ADDRESS> now"),
        ("221B Baker St. is famous", "<ADDRESS> is famous"),
        ("1600 Pennsylvania Avenue, Washington", "<ADDRESS>, Washington"),
        ("come to 12 baker street", "come to <ADDRESS>"),
        ("45 Elm Rd or 7 Sunset Blvd", "<ADDRESS> or <ADDRESS>"),
        ("Hauptstraße 5, 10115 Berlin", "<ADDRESS>, 10115 Berlin"),
        ("Berliner Str. 12a", "<ADDRESS>"),
        ("wir sind im Lindenweg 7", "wir sind im <ADDRESS>"),
        ("Rue de Rivoli 10 ou 10 rue de Rivoli", "<ADDRESS> ou <ADDRESS>"),
        ("12 avenue des Champs-Élysées", "<ADDRESS>"),
        ("Via Roma 3, Milano", "<ADDRESS>, Milano"),
        ("Calle Mayor 7 y Calle de Alcalá, 45", "<ADDRESS> y <ADDRESS>"),
        ("Kerkstraat 12 in Gent", "<ADDRESS> in Gent"),
        ("at 12 Baker Street, call +44 20 7946 0958", "at <ADDRESS>, call <PHONE>"),
    ],
)
def test_street_addresses_are_replaced_at_the_names_level(text, expected):
    assert names_level(text) == expected
    assert "<ADDRESS>" not in with_urls(text)  # the levels below leave addresses as written


@pytest.mark.parametrize(
    "text",
    [
        "I ran 5 miles down the road",
        "we had 3 big roads to cross",
        "a 4 lane road and a 2 way street",
        "I walked 3 blocks down the street",
        "meet at 5 on Main Street",
        "the 3rd Street is closed",
        "sent via WhatsApp 5 minutes ago",
        "il reste 1 place de parking",
        "nel corso di 2 anni",
        "Sitzplatz 12 im Zug",
        "Windows 10 Home, chapter 5, version 2 of the app",
        "on 12.05.2023 at 10:30",
        "https://maps.example.com/12-Baker-Street",
    ],
)
def test_ordinary_text_is_no_address(text):
    assert names_level(text) == (text if "://" not in text else "<URL>")


def test_the_leak_check_counts_addresses_by_the_same_rule():
    assert [k for k, _ in find("at 12 Baker Street, mail a@b.io")] == ["address", "email"]
    assert [k for k, _ in find("I ran 5 miles down the road")] == []
