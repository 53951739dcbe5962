"""Page tokens: offsets as strings, checked."""

import pytest

from doppel import paging
from doppel.errors import InvalidArgument


def test_pages_chain_until_the_last_has_no_token():
    items = list(range(7))
    got, token = [], ""
    while True:
        page, token = paging.page(items, 3, token)
        got.append(page)
        if not token:
            break
    assert got == [[0, 1, 2], [3, 4, 5], [6]]
    assert paging.page(items, 0, "") == (items, "")  # 0 means the default size


@pytest.mark.parametrize("token", ["x", "-1", "1.5"])
def test_bad_tokens_are_invalid_arguments(token):
    with pytest.raises(InvalidArgument, match="invalid page token"):
        paging.offset(token)


@pytest.mark.parametrize("size", [-1, 1001])
def test_page_sizes_out_of_range_are_invalid_arguments(size):
    with pytest.raises(InvalidArgument, match="out of range"):
        paging.size(size)
