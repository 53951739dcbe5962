"""A store that is full refuses the write that does not fit: the error names the object, and
nothing of it stays behind, not even a temporary file.

Both stores are made full for real: the local store's root is a small tmpfs (ENOSPC), and the
S3 store is a SeaweedFS of its own whose volumes live on one (the server answers 500).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from doppel.errors import StorageUnavailable
from doppel.store import Store, open_store
from support.seaweed import start_seaweed, stop_seaweed
from support.tmpfs import files_under, tmpfs

MiB = 1 << 20


@pytest.fixture
def full_local(tmp_path: Path) -> Iterator[tuple[Store, Path]]:
    """A local store on a 2 MiB tmpfs."""
    with tmpfs(tmp_path / "small", "2m") as root, open_store(root.as_uri()) as store:
        yield store, root


@pytest.fixture
def full_s3(tmp_path: Path) -> Iterator[Store]:
    """An S3 store whose server keeps its volumes on a 4 MiB tmpfs (its metadata elsewhere)."""
    folder = tmp_path / "weed"
    (folder / "master").mkdir(parents=True)
    # The filer's own database goes under the first -dir unless filer.toml (read from weed's cwd) says where.
    (folder / "filer.toml").write_text(f'[leveldb2]\nenabled = true\ndir = "{folder / "filer"}"\n')
    with tmpfs(tmp_path / "volumes", "4m") as volumes:
        server, proc = start_seaweed(folder, [f"-dir={volumes}", f"-master.dir={folder / 'master'}"])
        try:
            with open_store(server.store_url("full")) as store:
                yield store
        finally:
            stop_seaweed(server, proc)


def _refused(store: Store, key: str, size: int, *, stream: bool) -> StorageUnavailable:
    """The error of writing `size` bytes under `key`, by `put` or through `open_write` in chunks."""
    data = os.urandom(size)
    with pytest.raises(StorageUnavailable) as refused:
        if stream:
            with store.open_write(key) as out:
                for i in range(0, size, 64 << 10):
                    out.write(data[i : i + (64 << 10)])
        else:
            store.put(key, data)
    return refused.value


@pytest.mark.parametrize("stream", [False, True], ids=["put", "open_write"])
def test_a_full_local_store_names_the_object_and_keeps_nothing_of_it(full_local, stream: bool) -> None:
    store, root = full_local
    store.put("kept/small", b"x" * 1000)
    before, files, used = [i.key for i in store.list()], files_under(root), os.statvfs(root).f_bfree

    error = _refused(store, "datasets/d1/conversations-00000.jsonl.zst", 3 * MiB, stream=stream)
    assert "'datasets/d1/conversations-00000.jsonl.zst'" in str(error) and store.url in str(error), error
    assert "No space left on device" in str(error), error
    assert [i.key for i in store.list()] == before
    assert files_under(root) == files  # no temporary file in the staging folder either
    assert os.statvfs(root).f_bfree == used  # and none deleted while still open: the space is back
    assert store.get("kept/small") == b"x" * 1000
    store.put("after", b"fits")  # a write that fits still works
    assert [i.key for i in store.list()] == ["after", "kept/small"]


@pytest.mark.parametrize("stream", [False, True], ids=["put", "open_write"])
def test_a_full_s3_store_names_the_object_and_keeps_nothing_of_it(full_s3: Store, stream: bool) -> None:
    full_s3.put("kept/small", b"x" * 1000)
    before = [i.key for i in full_s3.list()]

    error = _refused(full_s3, "datasets/d1/conversations-00000.jsonl.zst", 6 * MiB, stream=stream)
    assert "'datasets/d1/conversations-00000.jsonl.zst'" in str(error) and "S3 endpoint http://127.0.0.1:" in str(error)
    assert [i.key for i in full_s3.list()] == before
    assert full_s3.get("kept/small") == b"x" * 1000
