"""Stores for ingest tests: a local folder and a real SeaweedFS bucket, the same tests on both."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from doppel.store import Store, open_store


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path) -> Iterator[Store]:
    """The same tests against both backends."""
    url = f"file://{tmp_path}/store" if request.param == "file" else request.getfixturevalue("s3_store_url")
    with open_store(url) as s:
        yield s

