"""Durations as a person types them: `90s`, `30m` (or `30min`), `6h`, `1d`, or a bare number of seconds.

One parser for every place a person types one (the CLI's `--session-gap`, the UI's fields); each
caller names the field in its own words, so the error says which value is wrong and what would do.
"""

from __future__ import annotations

import re
from datetime import timedelta

EXAMPLES = "90s, 30m, 6h or 1d"
_DURATION = re.compile(r"(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>s|m|min|h|d)?", re.IGNORECASE)
_SECONDS = {None: 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | None, what: str = "") -> timedelta | None:
    """`text` as a timedelta; blank (None, empty or spaces) is None, meaning "not given".

    Anything else raises ValueError: `<what>: '<text>' is not a duration such as 90s, 30m, 6h or 1d`
    (without the `<what>: ` when `what` is empty).
    """
    if text is None or not text.strip():
        return None
    m = _DURATION.fullmatch(text.strip())
    if not m:
        prefix = f"{what}: " if what else ""
        raise ValueError(f"{prefix}{text.strip()!r} is not a duration such as {EXAMPLES}")
    unit = m["unit"].lower() if m["unit"] else None
    return timedelta(seconds=float(m["n"]) * _SECONDS[unit])
