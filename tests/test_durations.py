"""doppel.durations: the one parser of typed durations, for the CLI and the UI."""

from __future__ import annotations

from datetime import timedelta

import pytest

from doppel.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("2min", timedelta(minutes=2)),
        (" 6h ", timedelta(hours=6)),
        ("6 H", timedelta(hours=6)),
        ("1d", timedelta(days=1)),
        ("1.5h", timedelta(minutes=90)),
        ("45", timedelta(seconds=45)),
        ("0s", timedelta(0)),
    ],
)
def test_a_number_and_a_unit_is_a_timedelta(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", [None, "", "   "])
def test_blank_means_not_given(text: str | None) -> None:
    assert parse_duration(text, "session gap") is None


@pytest.mark.parametrize("text", ["soon", "6 hours", "-1h", "h", "1w", "1h30m", "1,5h"])
def test_anything_else_names_the_field_and_shows_what_would_do(text: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_duration(text, "merge window")
    assert str(e.value) == f"merge window: {text.strip()!r} is not a duration such as 90s, 30m, 6h or 1d"


def test_without_a_field_name_the_message_is_just_the_value() -> None:
    with pytest.raises(ValueError, match=r"^'later' is not a duration such as 90s, 30m, 6h or 1d$"):
        parse_duration("later")
