"""Persona models made on the spot: a tiny random base in the store, LoRA adapters on it, a full model.

Models are published the way the trainer publishes them (`publish`), so the tests of the services
that read models (inference, the UI) check what the trainer really writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model

from doppel.model import ModelManifest, Recipe
from doppel.store.base import Store
from doppel.tiny import tiny_model
from doppel.transcript import Kind
from services.trainer.models import publish

TEXTS = [f"Alice: message number {i} about things\nBob: reply {i} ok\nCarol: and {i}" for i in range(200)]
PARTICIPANTS = ["Alice", "Bob", "Carol"]
BASE_PREFIX = "base-models/tiny-test/"


def persona_manifest(model_id: str, method: str, speakers: list[str], base_prefix: str | None,
                     transcript: Kind = "plain-eos", *, base_model: str = "tiny",
                     base_source: str = "registry:tiny") -> ModelManifest:
    """The manifest the trainer would publish for such a model, trained on dataset "d"."""
    recipe = Recipe(dataset_id="d", speakers=speakers, base_model=base_model, method=method, preset="default",
                    model_name="-".join(speakers))
    return ModelManifest(
        id=model_id, name="-".join(speakers), base_model=base_model, base_source=base_source,
        base_store_prefix=base_prefix, method=method, transcript=transcript, speakers=speakers,
        participants=PARTICIPANTS, dataset_id="d", run_id="r", recipe=recipe,
    )


def publish_personas(store: Store, tmp: Path, adapters: int = 2) -> dict[str, str]:
    """Model ids by kind: "a0", "a1"... (adapters on one shared base, personas Alice, Bob...), "group" (an
    adapter for every participant) and "full" (full weights). Plain turns end with EOS ("plain-eos"),
    as the trainer writes them now, except the full model's: a model published before that, whose
    manifest says "plain" (a turn ends at a newline)."""
    base, tok = tiny_model(TEXTS, seed=0, block_size=1024)
    folder = tmp / "tiny-base"
    base.save_pretrained(folder)
    tok.save_pretrained(folder)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        store.put_file(BASE_PREFIX + path.relative_to(folder).as_posix(), path)
    ids: dict[str, str] = {}
    kinds = [(f"a{k}", [PARTICIPANTS[k % len(PARTICIPANTS)]]) for k in range(adapters)] + [("group", PARTICIPANTS)]
    for k, (kind, speakers) in enumerate(kinds):
        fresh, _ = tiny_model(TEXTS, seed=0, block_size=1024)
        torch.manual_seed(100 + k)
        peft = get_peft_model(fresh, LoraConfig(r=4, target_modules=["c_attn"], init_lora_weights=False))
        ids[kind] = publish(store, persona_manifest(f"model-{kind}", "lora", speakers, BASE_PREFIX), peft, tok).id
    full, _ = tiny_model(TEXTS, seed=5, block_size=1024)
    ids["full"] = publish(store, persona_manifest("model-full", "full", ["Alice"], None, "plain"), full, tok).id
    return ids


def publish_smollm2_persona(tmp: Path) -> tuple[Store, ModelManifest, Any]:
    """The default base (the shipped GGUF, converted) in a store under `tmp`, with Alice's persona: a LoRA of
    random non-zero weights on every projection, published as the trainer publishes it. (store, manifest,
    the loaded base)."""
    from doppel.store import open_store
    from services.trainer.basemodels import load_base_model

    store = open_store((tmp / "store").as_uri())
    base = load_base_model("smollm2-135m", store, cache_dir=tmp / "cache")
    torch.manual_seed(0)
    peft = get_peft_model(base.model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    manifest = persona_manifest("model-smol", "lora", ["Alice"], base.store_prefix, "chat", base_model="smollm2-135m",
                                base_source=base.source)
    return store, publish(store, manifest, peft, base.tokenizer), base
