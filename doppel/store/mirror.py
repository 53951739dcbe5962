"""A local copy of a store prefix: weights are read from disk, but the store stays the record.

A model or base model lives in the store; transformers wants a folder. `mirror(store, prefix,
local)` makes `local` hold exactly the objects under `prefix` and is cheap to call again:

* **Complete or redone.** The last thing written is a marker file (`.doppel-complete`) holding
  the listing (key, size, etag of each object) the copy was made from. A folder without it, or
  with a listing that no longer matches the store's, is removed and copied again, so a copy cut
  short by a crash, or an object changed in the store since, never passes for complete.
* **One copier at a time.** An exclusive `flock` on a lock file beside `local` (`.<name>.lock`)
  serialises processes and threads that share the folder; the others wait, then find the copy
  complete and return at once.

    from doppel.store.mirror import mirror
    folder = mirror(store, "models/model-1/", cache_dir / "models" / "model-1")
"""

from __future__ import annotations

import fcntl
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from doppel.errors import InvalidKey

from .base import Store, validate_prefix

MARKER = ".doppel-complete"  # in a mirrored folder: the listing it was copied from


@contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """An exclusive lock on `lock_file` (created if missing), across processes and threads."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as f:  # one open file per holder: flock then excludes threads as well
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def lock_file(local: Path) -> Path:
    """The lock file `mirror` takes for `local`: a hidden sibling, so removing `local` keeps it."""
    local = Path(local)
    return local.parent / f".{local.name}.lock"


def mirror(store: Store, prefix: str, local: Path) -> Path:
    """Make `local` a complete copy of the objects under `prefix` (unless it already is); returns `local`.

    Keys below `prefix` become paths below `local`. Anything else in `local` is removed when it
    is copied again. Safe to call from several processes at once.
    """
    prefix, local = validate_prefix(prefix), Path(local)
    if not prefix.endswith("/"):
        raise InvalidKey(f"invalid store prefix {prefix!r} to mirror: a folder's prefix ends with '/'")
    with locked(lock_file(local)):
        listing = _listing(store, prefix)
        marker = local / MARKER
        try:
            if marker.is_file() and [tuple(row) for row in json.loads(marker.read_text())] == listing:
                return local
        except (OSError, ValueError, TypeError):
            pass  # a damaged marker: copy again
        shutil.rmtree(local, ignore_errors=True)  # a partial or outdated copy
        local.mkdir(parents=True, exist_ok=True)
        for rel, _, _ in listing:
            store.get_file(prefix + rel, local / rel)
        marker.write_text(json.dumps(listing))
    return local


def _listing(store: Store, prefix: str) -> list[tuple[str, int, str]]:
    """(key below `prefix`, size, etag) of every object under `prefix`, by key."""
    return sorted((i.key[len(prefix) :], i.size, i.etag) for i in store.list(prefix))
