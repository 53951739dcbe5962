"""The `file:///path` backend: a folder on local disk, for the embedded mode and tests.

Keys map to files under the root (`a/b` is `<root>/a/b`). Writes go to a temporary file
in `<root>/.doppel-staging/`, are fsynced, then renamed into place, so an object is
either complete or absent; a write the disk refuses (full, over quota) fails naming the
object and leaves no temporary file. Emptied folders are removed on delete, which keeps the tree
looking like S3's flat key space.
"""

from __future__ import annotations

import errno
import io
import os
import stat as statmod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import unquote, urlsplit

from doppel.errors import InvalidArgument, InvalidKey, StorageUnavailable

from .base import RESERVED_SEGMENT, ObjectInfo, Store, create_exclusive, unlink_quietly, validate_key, validate_prefix

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

EXAMPLE = "file:///var/lib/doppel/store"


class _Staged(io.BufferedWriter):
    """A staging file whose write errors (a full disk, a quota, a size limit) become the store's
    error naming the object, while an OSError from the caller's own stream stays what it is."""

    def __init__(self, raw: io.RawIOBase, error: Callable[[OSError], StorageUnavailable]):
        super().__init__(raw)
        self._error = error

    def write(self, data: ReadableBuffer, /) -> int:
        try:
            return super().write(data)
        except OSError as e:
            raise self._error(e) from None

    def flush(self) -> None:  # also what close() calls to write out the buffer
        try:
            super().flush()
        except OSError as e:
            raise self._error(e) from None


class LocalStore(Store):
    """Objects as files under one root folder."""

    def __init__(self, root: str | os.PathLike[str], *, url: str | None = None):
        try:
            os.makedirs(root, exist_ok=True)
        except FileExistsError:
            raise InvalidArgument(f"store root {os.fspath(root)!r} exists and is not a folder") from None
        except OSError as e:
            raise StorageUnavailable(f"cannot create store root {os.fspath(root)!r}: {e.strerror}") from None
        self._root = os.path.realpath(root)
        self._staging = os.path.join(self._root, RESERVED_SEGMENT)
        self.url = url or f"file://{self._root}"

    @classmethod
    def from_url(cls, url: str) -> LocalStore:
        """Open `file:///absolute/path` (percent-escapes allowed), creating the folder."""
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise InvalidArgument(
                f"store URL {url!r} names host {parts.netloc!r}; a file URL needs an absolute path "
                f"after three slashes, for example {EXAMPLE}"
            )
        if parts.query or parts.fragment:
            raise InvalidArgument(f"store URL {url!r}: file URLs take no options, for example {EXAMPLE}")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise InvalidArgument(f"store URL {url!r} needs an absolute path, for example {EXAMPLE}")
        return cls(path, url=url)

    # -- paths -------------------------------------------------------------------

    def _path(self, key: str, kind: str = "key") -> str:
        """The file for a validated key (or folder for a prefix's folder part), inside the root."""
        path = os.path.join(self._root, *key.split("/")) if key else self._root
        real = os.path.realpath(path)
        if real != path and not real.startswith(self._root + os.sep):
            raise InvalidKey(f"invalid store {kind} {key!r}: it resolves outside the store root {self._root}")
        return path

    def _conflict(self, key: str, path: str) -> InvalidArgument | None:
        """A clear error if `key` cannot be a file here because of the folder/file shape."""
        if os.path.isdir(path):
            return InvalidArgument(
                f"cannot store {key!r} in {self.url}: other objects live under {key + '/'!r}, "
                "and a local store cannot hold an object and a folder of the same name"
            )
        parts = key.split("/")
        for i in range(1, len(parts)):
            sub = "/".join(parts[:i])
            if os.path.isfile(os.path.join(self._root, *parts[:i])):
                return InvalidArgument(
                    f"cannot store {key!r} in {self.url}: {sub!r} is an object, "
                    "so a local store cannot also use it as a folder"
                )
        return None

    def _io_error(self, action: str, key: str, e: OSError) -> StorageUnavailable:
        return StorageUnavailable(f"cannot {action} {key!r} in {self.url}: {e.strerror or e}")

    # -- primitives --------------------------------------------------------------

    @contextmanager
    def open_write(self, key: str, *, content_type: str = "application/octet-stream") -> Iterator[BinaryIO]:
        path = self._path(validate_key(key))
        if conflict := self._conflict(key, path):
            raise conflict
        try:
            os.makedirs(self._staging, exist_ok=True)
            tmp, made = create_exclusive(self._staging, "w")
        except OSError as e:
            raise self._io_error("write", key, e) from None
        out = _Staged(made.detach(), lambda e: self._io_error("write", key, e))
        try:
            with out:
                yield out
                if not out.closed:
                    out.flush()
                    try:
                        os.fsync(out.fileno())
                    except OSError as e:
                        raise self._io_error("write", key, e) from None
            self._commit(tmp, path, key)
        except BaseException:
            unlink_quietly(tmp)
            raise

    def _commit(self, tmp: str, path: str, key: str) -> None:
        parent = os.path.dirname(path)
        for _ in range(5):
            try:
                os.makedirs(parent, exist_ok=True)
                os.replace(tmp, path)
                break
            except FileNotFoundError:  # a concurrent delete pruned the folder; try again
                continue
            except (FileExistsError, NotADirectoryError, IsADirectoryError) as e:
                raise self._conflict(key, path) or self._io_error("write", key, e) from None
            except OSError as e:
                raise self._io_error("write", key, e) from None
        else:
            raise StorageUnavailable(f"cannot write {key!r} in {self.url}: its folder keeps disappearing")
        try:
            fd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass

    @contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(validate_key(key))
        try:
            src = open(path, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise self._not_found(key) from None
        except OSError as e:
            raise self._io_error("read", key, e) from None
        with src:
            yield src

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(validate_key(key))
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise self._not_found(key) from None
        except OSError as e:
            raise self._io_error("stat", key, e) from None
        if not statmod.S_ISREG(st.st_mode):
            raise self._not_found(key)
        return self._info(key, st)

    @staticmethod
    def _info(key: str, st: os.stat_result) -> ObjectInfo:
        modified = datetime.fromtimestamp(st.st_mtime, tz=UTC)
        return ObjectInfo(key, st.st_size, modified, f"{st.st_mtime_ns:x}-{st.st_size:x}")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        folder = validate_prefix(prefix).rpartition("/")[0]
        self._path(folder, "prefix")
        return self._walk(folder, prefix)

    def _walk(self, folder: str, prefix: str) -> Iterator[ObjectInfo]:
        """Objects under `folder` (a key path, "" for the root) that match `prefix`, in key order."""
        try:
            with os.scandir(os.path.join(self._root, *folder.split("/"))) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as e:
            raise self._io_error("list", folder + "/", e) from None
        found = []
        for entry in entries:
            if not folder and entry.name == RESERVED_SEGMENT:
                continue
            key = f"{folder}/{entry.name}" if folder else entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            # A folder sorts as its name plus "/", which is where S3 puts its keys.
            order = key + "/" if is_dir else key
            if order.startswith(prefix) or (is_dir and prefix.startswith(order)):
                found.append((order, is_dir, key, entry))
        found.sort(key=lambda t: t[0])
        for _, is_dir, key, entry in found:
            if is_dir:
                yield from self._walk(key, prefix)
                continue
            try:
                st = entry.stat()
            except OSError:
                continue
            if statmod.S_ISREG(st.st_mode):
                yield self._info(key, st)

    def delete(self, key: str) -> bool:
        path = self._path(validate_key(key))
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return False
        except OSError as e:
            if e.errno == errno.EPERM and os.path.isdir(path):
                return False
            raise self._io_error("delete", key, e) from None
        self._prune(os.path.dirname(path))
        return True

    def _prune(self, folder: str) -> None:
        """Remove emptied folders from `folder` up to (not including) the root."""
        while folder.startswith(self._root + os.sep):
            try:
                os.rmdir(folder)
            except OSError:
                return
            folder = os.path.dirname(folder)
