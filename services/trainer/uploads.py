"""Adding a base model someone has: a folder written by `save_pretrained`, or a single GGUF file.

The files arrive in a staging folder (the AddBaseModel RPC writes them there, checking each
one's size and sha256); what a stored base keeps is taken from it (`doppel.bases.kept`), checked
as a pulled base is (config, safetensors weights, a tokenizer, an architecture Doppel runs) and
stored under `base-models/<name>/` with `base.json` last. A GGUF file is converted as the shipped
SmolLM2 is: dequantised to bf16 safetensors with its tokenizer.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

from doppel.bases import BASES, BaseManifest, kept
from doppel.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from doppel.layout import validate_name
from doppel.store.base import Store

from .basemodels import gguf_to_folder
from .hub import check_files, describe, store_folder


def add(store: Store, folder: Path, *, name: str, source: str, cache_dir: Path) -> BaseManifest:
    """Store the base in `folder` (a model folder, or one `.gguf` file) as `name`; its manifest."""
    validate_name(name, "base model name")
    if BASES.find(store, name) is not None:
        raise AlreadyExists(f"base model {name!r} already exists: add it under another name, or delete it first")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    ggufs = [f for f in files if f.endswith(".gguf")]
    if not ggufs:
        return _add_folder(store, folder, files, name=name, source=source)
    if len(files) != 1:
        raise InvalidArgument(f"a GGUF base is one .gguf file alone, not {len(files)} files ({', '.join(files[:5])})")
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".gguf-") as tmp:
        try:
            gguf_to_folder(folder / ggufs[0], Path(tmp))
        except Exception as e:  # transformers' reasons for refusing a GGUF are many; say which one it gave
            raise InvalidArgument(f"cannot read {ggufs[0]} as a model: {type(e).__name__}: {e}") from e
        converted = sorted(p.name for p in Path(tmp).iterdir() if p.is_file())
        return _add_folder(store, Path(tmp), converted, name=name, source=source)


def _add_folder(store: Store, folder: Path, files: list[str], *, name: str, source: str) -> BaseManifest:
    chosen = [f for f in files if kept(f)]
    try:
        check_files(chosen)
    except FailedPrecondition as e:
        raise InvalidArgument(f"{source}: {e}") from None
    manifest = describe(folder, chosen, id=name, source=f"upload:{source}")
    store_folder(store, folder, manifest)
    return manifest


class Received:
    """The files of an upload as they arrive: a header first, then each file's path, size and sha256
    followed by its bytes. Checks every file whole before the next starts; `files` holds them."""

    def __init__(self, folder: Path, what: str = "base model name"):
        self.files, self.what = Path(folder), what
        self.name = self.source = ""
        self._started = False
        self._current: tuple[str, int, str] | None = None
        self._out: Any = None
        self._digest = hashlib.sha256()
        self._size = 0

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
