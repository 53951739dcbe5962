"""What a user hands in, whatever its shape: a zip, an unpacked folder or a single file.

Parsers see one interface, `Source`: a sorted list of relative file paths they can open,
peek at and name in errors. Zip safety lives here, checked before any parser runs: entries
with `..` or absolute paths, symlinks, too many entries, too many bytes in all, or a
compression ratio no real export has are refused with an error naming the entry, so
nothing is ever extracted or written from such a file. A zip that is itself one of a source's
files (an export zipped beside another) opens as a source of its own (`open_inner_zip`).

A source also carries `warnings`: what a parser read past but the user should hear about.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO

from doppel.errors import InvalidArgument, NotFound, ParseError

HEAD_BYTES = 64 * 1024
SPOOL_BYTES = 64 << 20  # a zip inside a zip is copied out to memory up to this size, then to a temporary file


@dataclass(frozen=True)
class ZipLimits:
    """What a zip may hold before it is refused as a bomb (generous for real exports)."""

    max_entries: int = 200_000
    max_total_bytes: int = 64 << 30  # uncompressed, all entries together
    max_ratio: float = 200.0  # uncompressed / compressed, per entry above `ratio_floor` bytes
    ratio_floor: int = 1 << 20


class Source(ABC):
    """A set of files to parse, by relative POSIX path."""

    name: str  # how the user named it: the zip, folder or file path

    @abstractmethod
    def files(self) -> list[str]:
        """Every regular file's relative path, sorted."""

    @abstractmethod
    def size(self, path: str) -> int:
        """Uncompressed size of one file in bytes."""

    @abstractmethod
    def open(self, path: str) -> BinaryIO:
        """A binary stream of one file; the caller closes it."""

    def where(self, path: str) -> str:
        """How to name `path` in an error message: `export.zip:inbox/a/message_1.json`."""
        return f"{self.name}:{path}"

    def read(self, path: str) -> bytes:
        """A whole file (parsers call this per file, never for the whole source)."""
        with self.open(path) as f:
            return f.read()

    def head(self, path: str, n: int = HEAD_BYTES) -> bytes:
        """The first `n` bytes of a file, for detection."""
        with self.open(path) as f:
            return f.read(n)

    @property
    def warnings(self) -> list[str]:
        """Notes for the user, each naming the file it is about: what parsing read past (lines it
        could not place, repeats it dropped) instead of failing. Parsers append; the pipeline and
        `inspect` report them. Made on first use, so subclasses need no `__init__` for it."""
        notes: list[str] = self.__dict__.setdefault("_warnings", [])
        return notes

    def close(self) -> None:  # noqa: B027 - a no-op by default: most sources hold nothing open
        """Release what the source holds open."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileSource(Source):
    """A single file: `files()` is its base name."""

    def __init__(self, path: Path, name: str | None = None):
        self.path = path
        self.name = name or str(path)

    def files(self) -> list[str]:
        return [self.path.name]

    def size(self, path: str) -> int:
        self._check(path)
        return self.path.stat().st_size

    def open(self, path: str) -> BinaryIO:
        self._check(path)
        return open(self.path, "rb")

    def where(self, path: str) -> str:
        return self.name

    def _check(self, path: str) -> None:
        if path != self.path.name:
            raise NotFound(f"{self.name}: no file {path!r} in a single-file source")


class FolderSource(Source):
    """An unpacked export. Symlinks are refused: an export never needs one, and they can point anywhere."""

    def __init__(self, root: Path, name: str | None = None):
        self.root = root
        self.name = name or str(root)
        self._files: dict[str, int] = {}
        for folder, dirs, names in os.walk(root, followlinks=False):
            dirs.sort()
            for entry in [*dirs, *names]:
                full = os.path.join(folder, entry)
                rel = PurePosixPath(Path(full).relative_to(root)).as_posix()
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode):
                    raise InvalidArgument(f"{self.name}: {rel!r} is a symbolic link; exports never hold links")
                if stat.S_ISREG(st.st_mode):
                    self._files[rel] = st.st_size

    def files(self) -> list[str]:
        return sorted(self._files)

    def size(self, path: str) -> int:
        return self._files[self._check(path)]

    def open(self, path: str) -> BinaryIO:
        return open(self.root / self._check(path), "rb")

    def where(self, path: str) -> str:
        return f"{self.name}/{path}"

    def _check(self, path: str) -> str:
        if path not in self._files:
            raise NotFound(f"{self.name}: no file {path!r}")
        return path


class ZipSource(Source):
    """A zip archive, read in place (never extracted), checked against `ZipLimits` on open.

    `path` is a file name, or a seekable binary file that the source then owns and closes.
    """

    def __init__(self, path: Path | IO[bytes], limits: ZipLimits | None = None, name: str | None = None):
        self.path = path
        self.name = name or str(path)
        try:
            self._zip = zipfile.ZipFile(path)
        except zipfile.BadZipFile as e:
            self._close_file()
            raise ParseError(self.name, f"not a readable zip archive ({e})") from None
        try:
            self._entries = self._check_entries(limits or ZipLimits())
        except BaseException:
            self.close()
            raise

    def _check_entries(self, limits: ZipLimits) -> dict[str, zipfile.ZipInfo]:
        infos = self._zip.infolist()
        if len(infos) > limits.max_entries:
            raise InvalidArgument(
                f"{self.name}: refused, {len(infos)} entries is more than the limit of {limits.max_entries}"
            )
        entries: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in infos:
            name = info.filename
            bad = _bad_entry_name(name)
            if bad:
                raise InvalidArgument(f"{self.name}: refused, entry {name!r} {bad}")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise InvalidArgument(f"{self.name}: refused, entry {name!r} is a symbolic link")
            if info.is_dir():
                continue
            total += info.file_size
            if total > limits.max_total_bytes:
                raise InvalidArgument(
                    f"{self.name}: refused, its entries unpack to more than {limits.max_total_bytes} bytes"
                )
            if info.file_size > limits.ratio_floor and info.file_size > limits.max_ratio * max(info.compress_size, 1):
                raise InvalidArgument(
                    f"{self.name}: refused, entry {name!r} unpacks {info.compress_size} bytes to "
                    f"{info.file_size} (more than {limits.max_ratio:.0f} times): a zip bomb, not an export"
                )
            if name in entries:
                raise InvalidArgument(f"{self.name}: refused, entry {name!r} appears twice")
            entries[name] = info
        return entries

    def files(self) -> list[str]:
        return sorted(self._entries)

    def size(self, path: str) -> int:
        return self._info(path).file_size

    def open(self, path: str) -> BinaryIO:
        info = self._info(path)
        try:
            raw = self._zip.open(info)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, zlib.error) as e:
            raise ParseError(self.name, f"cannot read entry ({e})", entry=path) from None
        return io.BufferedReader(_Entry(raw, self.name, path))

    def _info(self, path: str) -> zipfile.ZipInfo:
        try:
            return self._entries[path]
        except KeyError:
            raise NotFound(f"{self.name}: no entry {path!r}") from None

    def close(self) -> None:
        self._zip.close()
        self._close_file()

    def _close_file(self) -> None:
        if not isinstance(self.path, Path):
            self.path.close()


class _Entry(io.RawIOBase):
    """A zip member's stream whose damage (bad CRC, cut-off data) is a ParseError naming it.

    Reads never go past the size the zip declares, so a member cannot unpack to more than
    `ZipLimits` allowed even when its header lies.
    """

    def __init__(self, raw: IO[bytes], zip_name: str, path: str):
        self._raw, self._zip_name, self._path = raw, zip_name, path

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._raw.read(len(buffer))
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
            raise ParseError(self._zip_name, f"entry is damaged ({e})", entry=self._path) from None
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def _bad_entry_name(name: str) -> str:
    """Why a zip entry name is unsafe, or ""."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    if "\\" in name:
        return "has a backslash in its path"
    if any(part == ".." for part in name.split("/")):
        return "has a '..' path segment"
    if any(ord(c) < 0x20 for c in name):
        return "has a control character in its name"
    return ""


def open_inner_zip(source: Source, path: str, limits: ZipLimits | None = None) -> ZipSource:
    """A zip that is one of `source`'s files, as a source of its own named `source.where(path)`.

    A folder's zip is read in place. Any other is copied out first (to memory, or a temporary
    file when large): reading a zip needs seeking, which a zip member's stream cannot do.
    Raises ParseError (not a zip, or damaged) or InvalidArgument (refused, as `ZipLimits` says).
    """
    name = source.where(path)
    if isinstance(source, FolderSource):
        return ZipSource(source.root / source._check(path), limits, name)
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    try:
        with source.open(path) as f:
            shutil.copyfileobj(f, spool)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return ZipSource(spool, limits, name)


def open_source(path: str | os.PathLike[str], limits: ZipLimits | None = None, *, name: str | None = None) -> Source:
    """A zip (recognised by its first bytes), a folder, or any other single file.

    `name` is what errors call it (the user's file name when `path` is a temporary copy).
    """
    p = Path(path)
    try:
        st = p.lstat()
    except FileNotFoundError:
        raise NotFound(f"{p}: no such file or folder") from None
    if stat.S_ISLNK(st.st_mode):
        p = p.resolve()
        st = p.stat()
    if stat.S_ISDIR(st.st_mode):
        return FolderSource(p, name)
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"{p}: not a regular file or folder")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic in (b"PK\x03\x04", b"PK\x05\x06"):  # a damaged zip is still a zip: say so, not "unknown"
        return ZipSource(p, limits, name)
    return FileSource(p, name)
