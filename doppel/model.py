"""A persona model's manifest, the schemas it embeds, and the reads of models in the store.

A published persona model is a folder in the store that plain transformers/peft can load:

    models/<id>/adapter_config.json, adapter_model.safetensors   (LoRA)  or
    models/<id>/config.json, model.safetensors                   (full)
    models/<id>/tokenizer.json, tokenizer_config.json, ...
    models/<id>/base/...            the base weights, when they live nowhere else (`tiny`)
    models/<id>/manifest.json       written last: no manifest, no model

A LoRA model names its base in the manifest (`base_store_prefix`: `base-models/smollm2-135m/`
or `models/<id>/base/`); load the base from there, then `PeftModel.from_pretrained` on the
model folder. The manifest also says how its transcripts are rendered, so inference prompts
the model the way it was trained, and how the model was made: the resolved `Recipe`, the
held-out `Evaluation` and the `SampleText`s written at the end of training.

The trainer writes models (`services/trainer/models.py`); anyone reads them here, through the
manifest-indexed `MODELS` catalog (`get`, `records`, `page`).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from doppel.catalog import Catalog
from doppel.errors import FailedPrecondition
from doppel.layout import model_prefix
from doppel.store.base import Store
from doppel.store.mirror import mirror

Method = Literal["lora", "qlora", "full"]
ADAPTERS: tuple[Method, ...] = ("lora", "qlora")  # methods whose published model is an adapter on its base
Schedule = Literal["constant", "linear", "cosine"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
MANIFEST = "manifest.json"


class Recipe(BaseModel):
    """A fully resolved training recipe: every value set (the trainer resolves a request into one)."""

    dataset_id: str
    speakers: list[str]
    base_model: str
    method: Method
    preset: str
    model_name: str
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0  # dropout's random masks took a fifth of a CPU step (issue 18)
    lora_target_modules: list[str] = Field(default_factory=list)
    lora_layers: int | None = None  # adapt only the last N layers (the backward pass stops below them); None: all
    learning_rate: float = 2e-4
    lr_schedule: Schedule = "cosine"
    warmup_ratio: float = 0.05
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    block_size: int = 512
    weight_decay: float = 0.0
    seed: int = 0
    held_out_fraction: float = 0.1
    save_every: int = 100
    sample_every: int = 0
    sample_prompts: list[str] = Field(default_factory=list)
    gradient_checkpointing: bool | None = None  # None: the trainer chooses from the memory estimate (fitting.py)
    max_pass_tokens: int | None = None  # most tokens in a forward pass (a batch above is split); None: a batch at once (fitting.py)
    precision: Precision = "auto"
    session_gap_s: float = 6 * 3600.0
    devices: int = 1  # processes the run trained on, a device each (the trainer sets it)


class SampleText(BaseModel):
    """A text the model wrote from `prompt` at training step `step`, as `speaker` if one was asked."""

    prompt: str
    text: str
    step: int = 0
    speaker: str = ""


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


class StyleFigure(BaseModel):
    """One figure of a style profile, for the person's real replies and for the model's."""

    model_config = ConfigDict(ser_json_inf_nan="strings")
    name: str
    person: float
    model: float

    @property
    def difference(self) -> float:
        """|person - model| / max(|person|, |model|): 0 alike, 1 nothing alike."""
        top = max(abs(self.person), abs(self.model))
        return abs(self.person - self.model) / top if top > 1e-12 else 0.0


class ReplyPair(BaseModel):
    """A held-out turn the model answered: the turn before it, the person's real reply and the model's."""

    said: str  # "Name: text" of the turn answered
    real: str
    generated: str


class FidelityFigures(BaseModel):
    """How much one speaker's model sounds like them, on held-out turns (services/trainer/fidelity);
    NaN (stored as "NaN") where a figure could not be had."""

    model_config = ConfigDict(ser_json_inf_nan="strings")
    speaker: str
    dataset_id: str = ""  # the dataset whose held-out turns were answered
    replies: int = 0
    style_distance: float = math.nan  # 0: the same style profile; 1: nothing alike
    who_said_it_real: float = math.nan  # share of the person's real held-out replies attributed to them
    who_said_it_model: float = math.nan  # share of the model's replies attributed to the person
    real_or_generated: float = math.nan  # cross-validated accuracy; 0.5: indistinguishable
    exact_copies: float = 0.0  # share of replies that are a training message
    token_span_copies: float = 0.0  # share copying >= 20 tokens of one
    word_span_copies: float = 0.0  # share copying >= 8 words of one
    speaking_for_others: int = 0  # replies holding another participant's turn (must be 0)
    leaks: int = 0  # replies holding an email address, phone, card or IBAN number
    leak_kinds: dict[str, int] = Field(default_factory=dict)  # "email", "phone", ... -> replies holding one
    distinct_1: float = 0.0
    distinct_2: float = 0.0
    repeated: float = 0.0  # share of replies repeating one of the few before them
    style: list[StyleFigure] = Field(default_factory=list)
    distinctive: list[str] = Field(default_factory=list)  # the person's most distinctive words and phrases
    pairs: list[ReplyPair] = Field(default_factory=list)  # a few, for people to read side by side


def _exp(x: float) -> float:
    return math.exp(min(x, 700.0)) if not math.isnan(x) else math.nan


class ModelManifest(BaseModel):
    """`models/<id>/manifest.json`: written last, so a model without one does not exist."""

    id: str
    name: str
    base_model: str  # as asked
    base_source: str  # where its weights came from
    base_store_prefix: str | None = None  # where to load the base of an adapter from
    method: Method
    # how turns are rendered (doppel.transcript.Kind): "chat", "plain-eos" (EOS ends a plain turn),
    # or "plain" (a newline ends it: plain models published before "plain-eos" existed)
    transcript: Literal["chat", "plain-eos", "plain"]
    speakers: list[str]
    participants: list[str]
    dataset_id: str
    run_id: str
    recipe: Recipe
    evaluation: Evaluation = Field(default_factory=Evaluation)
    samples: list[SampleText] = Field(default_factory=list)
    fidelity: list[FidelityFigures] = Field(default_factory=list)  # one per speaker, the latest measured
    base_fidelity: list[FidelityFigures] = Field(default_factory=list)  # the base model's alone, when measured
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    size_bytes: int = 0
    files: list[str] = Field(default_factory=list)

    @property
    def is_adapter(self) -> bool:
        """An adapter to load on its base (LoRA, or QLoRA: served on the full-precision base)."""
        return self.method in ADAPTERS


MODELS: Catalog[ModelManifest] = Catalog(ModelManifest, kind="model", root="models/", record=MANIFEST)


def model_folder(store: Store, manifest: ModelManifest, cache_dir: Path) -> Path:
    """A local copy of a model's files, under `cache_dir/models/<id>/`, made again when the store's
    listing of them changes (locked across processes sharing `cache_dir`)."""
    return mirror(store, model_prefix(manifest.id), Path(cache_dir) / "models" / manifest.id)


def base_folder(store: Store, manifest: ModelManifest, folder: Path, cache_dir: Path) -> Path:
    """A local folder holding the base weights of an adapter whose files are in `folder`
    (bases from the store are copied under `cache_dir/store/<prefix>`, as the trainer caches them)."""
    prefix, own = manifest.base_store_prefix, model_prefix(manifest.id)
    if prefix is None:
        kind, _, where = manifest.base_source.partition(":")
        if kind == "path":
            return Path(where)
        if kind == "hub":
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(where, local_files_only=True))
        raise FailedPrecondition(f"model {manifest.id!r} names no base weights to load "
                                 f"(base {manifest.base_model!r} from {manifest.base_source!r})")
    if prefix.startswith(own):  # published with the adapter, so copied with it
        return folder / prefix[len(own):]
    if not store.exists(prefix + "config.json"):
        raise FailedPrecondition(f"the base model of {manifest.id!r} is missing from the store (no {prefix}config.json)")
    return mirror(store, prefix, Path(cache_dir) / "store" / prefix)
