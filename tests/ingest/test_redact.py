"""Redaction: personal data becomes typed placeholders; ordinary numbers, dates and links stay."""

from __future__ import annotations

import pytest

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
