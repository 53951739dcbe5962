"""Publishing persona models: the trainer writes a model's files, then its manifest; and deletes models.

What a published model looks like in the store, its manifest and the reads of it are the
library's (`doppel.model`), so the inference service reads models without importing the
trainer. Writing them is the trainer's: `publish` uploads what `save_pretrained` wrote (and,
for a base that lives nowhere else, the base weights under `models/<id>/base/`), then the
manifest, which makes the model exist.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from doppel.layout import model_prefix, new_id
from doppel.model import MODELS, ModelManifest
from doppel.store.base import Store


def _upload(store: Store, folder: Path, prefix: str) -> tuple[list[str], int]:
    names, size = [], 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        size += store.put_file(prefix + name, path).size
        names.append(name)
    return names, size


def publish(store: Store, manifest: ModelManifest, model: Any, tokenizer: Any, base_folder: Path | None = None) -> ModelManifest:
    """Write the model's files, then its manifest; on failure remove what was written."""
    prefix = model_prefix(manifest.id)
    try:
        with tempfile.TemporaryDirectory(prefix="doppel-publish-") as tmp:
            out = Path(tmp)
            model.save_pretrained(out, safe_serialization=True)
            tokenizer.save_pretrained(out)
            files, size = _upload(store, out, prefix)
        if base_folder is not None:
            base_files, base_size = _upload(store, base_folder, prefix + "base/")
            files += [f"base/{f}" for f in base_files]
            size += base_size
            manifest.base_store_prefix = prefix + "base/"
        manifest.files, manifest.size_bytes = files, size
        MODELS.put(store, manifest)
    except BaseException:
        store.delete_prefix(prefix)
        raise
    return manifest


def new_model_id() -> str:
    return new_id("model")


def delete(store: Store, model_id: str) -> int:
    """Remove a model, manifest first (so it stops existing at once); the number of objects removed."""
    return MODELS.delete(store, model_id)[1]
