"""Page tokens of the List RPCs: an offset into a listing, as a string ('' for the first page)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from doppel.errors import InvalidArgument, quote

T = TypeVar("T")
DEFAULT_SIZE = 100
MAX_SIZE = 1000
MAX_OFFSET = 2**31 - 1  # no listing is longer; Prefect fails (500) on offsets past 2**63


def offset(token: str) -> int:
    """The offset a page token stands for; InvalidArgument for anything but a non-negative integer."""
    try:
        start = int(token) if token else 0
    except ValueError:
        raise InvalidArgument(f"invalid page token {quote(token)}") from None
    if not 0 <= start <= MAX_OFFSET:
        raise InvalidArgument(f"invalid page token {quote(token)}")
    return start


def size(page_size: int) -> int:
    """The page size asked for: 0 means the default."""
    if page_size < 0 or page_size > MAX_SIZE:
        raise InvalidArgument(f"page size {page_size} is out of range 1-{MAX_SIZE} (0 means {DEFAULT_SIZE})")
    return page_size or DEFAULT_SIZE


def page(items: Sequence[T], page_size: int, token: str) -> tuple[list[T], str]:
    """One page of `items` and the next page's token ('' on the last page)."""
    n, start = size(page_size), offset(token)
    more = start + n < len(items)
    return list(items[start : start + n]), (str(start + n) if more else "")
