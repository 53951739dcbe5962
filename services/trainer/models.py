"""Published persona models: a folder in the store that plain transformers/peft can load.

    models/<id>/adapter_config.json, adapter_model.safetensors   (LoRA)  or
    models/<id>/config.json, model.safetensors                   (full)
    models/<id>/tokenizer.json, tokenizer_config.json, ...
    models/<id>/base/...            the base weights, when they live nowhere else (`tiny`)
    models/<id>/manifest.json       written last: no manifest, no model

A LoRA model names its base in the manifest (`base_store_prefix`: `base-models/smollm2-135m/`
or `models/<id>/base/`); load the base from there, then `PeftModel.from_pretrained` on the
model folder. The manifest also says how its transcripts are rendered, so inference prompts
the model the way it was trained.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from doppel import paging
from doppel.layout import model_prefix, new_id
from doppel.store.base import Store

from .recipe import Recipe
from .runs import SampleText

MANIFEST = "manifest.json"


class Evaluation(BaseModel):
    """Held-out figures; NaN (stored as "NaN") when there was nothing held out."""

    model_config = ConfigDict(ser_json_inf_nan="strings")
    held_out_loss: float = math.nan
    perplexity: float = math.nan
    base_held_out_loss: float = math.nan
    base_perplexity: float = math.nan
    held_out_tokens: int = 0

    @classmethod
    def of(cls, loss: float, base_loss: float, tokens: int) -> Evaluation:
        return cls(
            held_out_loss=loss,
            perplexity=_exp(loss),
            base_held_out_loss=base_loss,
            base_perplexity=_exp(base_loss),
            held_out_tokens=tokens,
        )


def _exp(x: float) -> float:
    return math.exp(min(x, 700.0)) if not math.isnan(x) else math.nan


class ModelManifest(BaseModel):
    id: str
    name: str
    base_model: str  # as asked
    base_source: str  # where its weights came from
    base_store_prefix: str | None = None  # where to load the base of an adapter from
    method: Literal["lora", "full"]
    transcript: Literal["chat", "plain"]
    speakers: list[str]
    participants: list[str]
    dataset_id: str
    run_id: str
    recipe: Recipe
    evaluation: Evaluation = Field(default_factory=Evaluation)
    samples: list[SampleText] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    size_bytes: int = 0
    files: list[str] = Field(default_factory=list)


def manifest_key(model_id: str) -> str:
    return model_prefix(model_id) + MANIFEST


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
        store.put(prefix + MANIFEST, manifest.model_dump_json(indent=1).encode(), content_type="application/json")
    except BaseException:
        store.delete_prefix(prefix)
        raise
    return manifest


def new_model_id() -> str:
    return new_id("model")


def get(store: Store, model_id: str) -> ModelManifest:
    return ModelManifest.model_validate_json(store.get(manifest_key(model_id), missing=f"model {model_id!r} not found"))


def manifests(store: Store) -> Iterator[ModelManifest]:
    for info in store.list("models/"):
        parts = info.key.split("/")
        if len(parts) == 3 and parts[2] == MANIFEST:
            yield ModelManifest.model_validate_json(store.get(info.key))


def list_page(store: Store, page_size: int = 100, token: str = "") -> tuple[list[ModelManifest], str]:
    """A page of models, newest first, and the next page's token ('' on the last)."""
    every = sorted(manifests(store), key=lambda m: (m.created_at, m.id), reverse=True)
    return paging.page(every, page_size, token)


def delete(store: Store, model_id: str) -> int:
    """Remove a model, manifest first (so it stops existing at once); the number of objects removed."""
    get(store, model_id)
    store.delete(manifest_key(model_id))
    return 1 + store.delete_prefix(model_prefix(model_id))
