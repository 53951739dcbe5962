"""The object store contract every backend implements, and the parts written once.

Object storage is Doppel's system of record, and the rest of the code must not care
whether it is a local folder or an S3 bucket. `Store` fixes the interface; backends
implement the five primitives (`open_write`, `open_read`, `stat`, `list`, `delete`) and
inherit the rest. Key validation lives here so both backends refuse exactly the same keys.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from doppel.errors import InvalidArgument, InvalidKey, NotFound

MAX_KEY_BYTES = 1024
RESERVED_SEGMENT = ".doppel-staging"  # the local backend's staging folder; never a key
COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object."""

    key: str  # relative to the store root
    size: int
    modified: datetime  # aware UTC
    etag: str = ""


def _check(name: str, kind: str, *, prefix: bool) -> str:
    if not isinstance(name, str):
        raise InvalidKey(f"a store {kind} must be a string, not {type(name).__name__}")
    if name == "" and prefix:
        return name
    what = f"invalid store {kind} {name!r}"
    if name == "":
        raise InvalidKey(f"{what}: it is empty")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKey(f"{what}: it is not valid Unicode text") from None
    if size > MAX_KEY_BYTES:
        raise InvalidKey(f"{what}: it is {size} UTF-8 bytes long; the limit is {MAX_KEY_BYTES}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidKey(f"{what}: it contains a control character")
    if "\\" in name:
        raise InvalidKey(f"{what}: it contains a backslash; use '/' between segments")
    if name.startswith("/"):
        raise InvalidKey(f"{what}: it is absolute; keys are relative to the store root")
    segments = name.split("/")
    if prefix and name.endswith("/"):
        segments = segments[:-1]
    if any(s in (".", "..") for s in segments):
        raise InvalidKey(f"{what}: '.' and '..' segments are not allowed")
    if "" in segments:
        raise InvalidKey(f"{what}: it has an empty segment ('//' or a trailing '/')")
    if segments[0] == RESERVED_SEGMENT:
        raise InvalidKey(f"{what}: {RESERVED_SEGMENT!r} is reserved for the store itself")
    return name


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a safe object key, else raise InvalidKey."""
    return _check(key, "key", prefix=False)


def validate_prefix(prefix: str) -> str:
    """Like `validate_key`, but "" is allowed and a trailing "/" too."""
    return _check(prefix, "prefix", prefix=True)


def create_exclusive(folder: str | Path, stem: str) -> tuple[str, io.BufferedWriter]:
    """Create a new uniquely named `.part` file in `folder`; the umask decides its mode."""
    for _ in range(100):
        path = os.path.join(folder, f".{stem}.{secrets.token_hex(6)}.part")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        return path, os.fdopen(fd, "wb")
    raise FileExistsError(f"could not create a temporary file in {folder}")


def unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class Store(ABC):
    """An object store: flat keys with '/' separators, whole-object writes, streamed reads."""

    url: str  # the URL it was opened from, without secrets

    # -- primitives every backend implements ---------------------------------------

    @abstractmethod
    def open_write(
        self, key: str, *, content_type: str = "application/octet-stream"
    ) -> AbstractContextManager[BinaryIO]:
        """Stream an object in; it appears atomically on clean exit and not at all on error."""

    @abstractmethod
    def open_read(self, key: str) -> AbstractContextManager[BinaryIO]:
        """Stream an object out without loading it whole; NotFound if missing."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size, time and etag of an object; NotFound if missing."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix` (a plain string prefix), sorted by key."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove an object; True if it existed."""

    # -- written once on top of the primitives ---------------------------------------

    def put(self, key: str, data: bytes | BinaryIO, *, content_type: str = "application/octet-stream") -> ObjectInfo:
        """Store `data` (bytes or a readable binary stream) under `key`, replacing any object."""
        with self.open_write(key, content_type=content_type) as out:
            if isinstance(data, (bytes, bytearray, memoryview)):
                out.write(data)
            else:
                shutil.copyfileobj(data, out, COPY_CHUNK)
        return self.stat(key)

    def put_file(self, key: str, path: str | Path) -> ObjectInfo:
        """Upload a local file."""
        validate_key(key)
        try:
            src = open(path, "rb")
        except FileNotFoundError:
            raise NotFound(f"cannot upload {str(path)!r} to {key!r}: no such local file") from None
        except IsADirectoryError:
            raise InvalidArgument(f"cannot upload {str(path)!r} to {key!r}: it is a folder") from None
        with src:
            return self.put(key, src)

    def get(self, key: str, *, missing: str = "") -> bytes:
        """The whole object as bytes; when there is none, NotFound with `missing` as its message if given
        (say what the key stands for: "no dataset 'x'"), else one naming the key."""
        try:
            with self.open_read(key) as src:
                return src.read()
        except NotFound:
            if missing:
                raise NotFound(missing) from None
            raise

    def get_file(self, key: str, path: str | Path) -> None:
        """Download to a local file; the file appears complete or not at all."""
        dest = Path(path)
        with self.open_read(key) as src:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp, out = create_exclusive(dest.parent, dest.name)
            try:
                with out:
                    shutil.copyfileobj(src, out, COPY_CHUNK)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, dest)
            except BaseException:
                unlink_quietly(tmp)
                raise

    def exists(self, key: str) -> bool:
        """True if an object is stored under `key`."""
        try:
            self.stat(key)
        except NotFound:
            return False
        return True

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix` (not ""); return how many went."""
        self._check_delete_prefix(prefix)
        return sum(1 for info in self.list(prefix) if self.delete(info.key))

    def close(self) -> None:  # noqa: B027 - most stores hold nothing to close
        """Release connections; the store is not used afterwards."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # -- for backends ------------------------------------------------------------

    def _check_delete_prefix(self, prefix: str) -> None:
        validate_prefix(prefix)
        if prefix == "":
            raise InvalidKey(
                f"refusing to delete every object in {self.url}: delete_prefix needs a non-empty prefix"
            )

    def _not_found(self, key: str) -> NotFound:
        return NotFound(f"no object {key!r} in store {self.url}")

