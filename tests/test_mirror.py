"""Mirroring a store prefix to a local folder (doppel.store.mirror): a complete copy or none, a re-run
that copies nothing, a copy redone when the store changes, one copier at a time."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from doppel.errors import InvalidKey
from doppel.store import Store, open_store
from doppel.store.mirror import MARKER, lock_file, locked, mirror

FILES = {"config.json": b"{}", "model.safetensors": b"\0" * 1000, "sub/tokenizer.json": b'{"v": 1}'}


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = f"file://{tmp_path}/store" if request.param == "file" else request.getfixturevalue("s3_store_url")
    with open_store(url) as s:
        for name, data in FILES.items():
            s.put("models/m1/" + name, data)
        s.put("models/m10/other.bin", b"another model's")  # shares the prefix's text, not its folder
        yield s


class Counting:
    """A store that counts downloads and can make each one slow."""

    def __init__(self, store: Store, delay: float = 0.0):
        self._store, self.delay, self.downloads = store, delay, 0
        self._lock = threading.Lock()

    def get_file(self, key: str, path: Any) -> None:
        with self._lock:
            self.downloads += 1
        time.sleep(self.delay)
        self._store.get_file(key, path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != MARKER}


def test_mirror_copies_the_prefix_and_marks_it_complete(store: Store, tmp_path: Path) -> None:
    local = tmp_path / "cache/models/m1"
    assert mirror(store, "models/m1/", local) == local
    assert files(local) == FILES
    listing = json.loads((local / MARKER).read_text())
    assert [row[0] for row in listing] == sorted(FILES)
    assert lock_file(local) == tmp_path / "cache/models/.m1.lock" and lock_file(local).exists()


def test_a_rerun_is_a_no_op(store: Store, tmp_path: Path) -> None:
    local = tmp_path / "m1"
    mirror(store, "models/m1/", local)
    inode = (local / "model.safetensors").stat().st_ino
    counting = Counting(store)
    mirror(counting, "models/m1/", local)  # type: ignore[arg-type]
    assert counting.downloads == 0 and (local / "model.safetensors").stat().st_ino == inode


def test_a_change_in_the_store_is_copied_again(store: Store, tmp_path: Path) -> None:
    local = tmp_path / "m1"
    mirror(store, "models/m1/", local)
    store.put("models/m1/model.safetensors", b"\1" * 999)
    store.delete("models/m1/sub/tokenizer.json")
    mirror(store, "models/m1/", local)
    assert files(local) == {"config.json": b"{}", "model.safetensors": b"\1" * 999}


def test_a_copy_without_its_marker_is_redone(store: Store, tmp_path: Path) -> None:
    local = tmp_path / "m1"
    local.mkdir()
    (local / "config.json").write_text("{ cut short")  # a crash mid-copy: no marker
    (local / "stray.txt").write_text("from something else")
    mirror(store, "models/m1/", local)
    assert files(local) == FILES
    (local / MARKER).write_text("not json")  # a damaged marker is no marker
    counting = Counting(store)
    mirror(counting, "models/m1/", local)  # type: ignore[arg-type]
    assert counting.downloads == len(FILES) and files(local) == FILES


def test_one_copier_at_a_time(store: Store, tmp_path: Path) -> None:
    local = tmp_path / "m1"
    slow = Counting(store, delay=0.05)
    threads = [threading.Thread(target=mirror, args=(slow, "models/m1/", local)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert slow.downloads == len(FILES), "the others waited, then found the copy complete"
    assert files(local) == FILES


def test_mirror_waits_for_the_lock(store: Store, tmp_path: Path) -> None:
    local = tmp_path / "m1"
    done = threading.Event()
    with locked(lock_file(local)):  # as another process copying it would hold it
        worker = threading.Thread(target=lambda: (mirror(store, "models/m1/", local), done.set()))
        worker.start()
        assert not done.wait(0.3) and not local.exists()
    worker.join(30)
    assert done.is_set() and files(local) == FILES


def test_the_prefix_must_name_a_folder(store: Store, tmp_path: Path) -> None:
    with pytest.raises(InvalidKey, match="ends with '/'"):
        mirror(store, "models/m1", tmp_path / "m1")
    with pytest.raises(InvalidKey):
        mirror(store, "../models/", tmp_path / "m1")
