"""Adding a base model someone has: a folder written by `save_pretrained`, or a single GGUF file.

The files arrive in a staging folder (the AddBaseModel RPC writes them there, checking each
one's size and sha256); what a stored base keeps is taken from it (`doppel.bases.kept`), checked
as a pulled base is (config, safetensors weights, a tokenizer, an architecture Doppel runs) and
stored under `base-models/<name>/` with `base.json` last. A GGUF file is converted as the shipped
SmolLM2 is: dequantised to bf16 safetensors with its tokenizer.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

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
