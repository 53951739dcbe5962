"""Local files that the services and their clients share: a file's sha256, and files received as parts."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from doppel.errors import InvalidArgument
from doppel.layout import validate_name

CHUNK = 1 << 20


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read a MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


NAME_MAX = 255  # bytes in one file or folder name on Linux's file systems


class Received:
    """The files of an upload (or a download) as they arrive: a header first (where there is one), then
    each file's path, size and sha256 followed by its bytes. Checks every file whole before the next
    starts, each path inside the folder; `files` holds them, `received` counts their bytes."""

    def __init__(self, folder: Path, what: str = "base model name", *, header: bool = True):
        self.files, self.what = Path(folder), what
        self.name = self.source = ""
        self._started = not header  # an export's files come with no header
        self._current: tuple[str, int, str] | None = None
        self._out: Any = None
        self._digest = hashlib.sha256()
        self._size = 0
        self.received = 0

    def header(self, name: str, source: str) -> None:
        if self._started:
            raise InvalidArgument("an upload has exactly one header, first")
        self._started, self.name, self.source = True, validate_name(name, self.what) if self.what else name, source or name

    def start(self, path: str, size: int, sha256: str) -> None:
        if not self._started:
            raise InvalidArgument("an upload must start with its header")
        self._end()
        parts = path.split("/")
        if not path or path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts):
            raise InvalidArgument(f"upload: {path!r} is not a relative path inside the uploaded folder")
        if any(len(p.encode()) > NAME_MAX for p in parts):  # the file system would refuse it (ENAMETOOLONG)
            raise InvalidArgument(f"upload: {path[:80]!r}... has a name longer than {NAME_MAX} bytes")
        target = self.files.joinpath(*parts)
        if target.exists():
            raise InvalidArgument(f"upload: {path} was sent twice")
        target.parent.mkdir(parents=True, exist_ok=True)
        self._current, self._out, self._digest, self._size = (path, size, sha256.lower()), target.open("wb"), hashlib.sha256(), 0

    def write(self, chunk: bytes) -> None:
        if self._current is None:
            raise InvalidArgument("upload: bytes came before the file they belong to")
        self._out.write(chunk)
        self._digest.update(chunk)
        self._size += len(chunk)
        self.received += len(chunk)

    def finish(self) -> None:
        """Check the last file; InvalidArgument if nothing (or no header) came."""
        self._end()
        if not self._started:
            raise InvalidArgument("empty upload: send a header, then the files")

    def _end(self) -> None:
        if self._current is None:
            return
        path, size, sha = self._current
        self._out.close()
        self._current = None
        if self._size != size:
            raise InvalidArgument(f"upload: {path} has {self._size} bytes, not the {size} announced")
        if sha and self._digest.hexdigest() != sha:
            raise InvalidArgument(f"upload: {path} was damaged in transit (sha256 {self._digest.hexdigest()}, expected {sha})")

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
