"""Base models in the store: `base-models/<name>/`, the system of record for every base weight.

A base model pulled from the Hugging Face Hub, uploaded, or converted from the shipped GGUF is a
folder that plain `transformers` loads (`config.json`, `*.safetensors`, the tokenizer files),
and `base.json`, written last, saying where it came from. The trainer and the inference service
read bases only from here, so they work across containers and machines without a hub cache.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field

from doppel.catalog import Catalog
from doppel.layout import validate_name

ROOT = "base-models/"
# What loading a base needs besides its `*.safetensors` weights: pulls and uploads keep only these.
KEPT = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja",
        "model.safetensors.index.json")


def kept(path: str) -> bool:
    """Whether a base's file (its path in the folder) is one a stored base keeps."""
    return "/" not in path and (path.endswith(".safetensors") or path in KEPT)


class BaseManifest(BaseModel):
    """`base-models/<name>/base.json`."""

    id: str  # the name, e.g. "qwen2.5-0.5b-instruct"
    source: str  # "hub:<id>@<commit>", "upload:<what was uploaded>", "gguf:<file>"
    hub_id: str = ""
    revision: str = ""  # the commit the hub resolved the asked revision to
    license: str = ""
    architecture: str  # config.json's model_type
    parameters: int
    dtype: str  # of the stored weights, e.g. "bfloat16"
    chat_template: bool
    size_bytes: int
    files: list[str] = Field(default_factory=list)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


BASES: Catalog[BaseManifest] = Catalog(BaseManifest, kind="base model", root=ROOT, record="base.json", valid=validate_name)


def prefix(name: str) -> str:
    """`base-models/<name>/`; InvalidArgument for a bad name."""
    return BASES.prefix(name)
