"""What a run trains, as asked (`TrainRequest`, the flow's typed parameters) and resolved (`Recipe`).

A request leaves any hyperparameter unset; a named preset fills what is unset, and the class
defaults fill the rest. The resolved recipe is stored with the run and the model, so a model
always says how it was made; being stored, its schema is the library's (`doppel.model`), while
presets, resolving and checking requests are the trainer's, here. Bounds are checked here, so a
bad value is refused before a run starts, whoever started it (gRPC, CLI or the Prefect
dashboard's form).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from doppel.errors import InvalidArgument
from doppel.model import Method, Precision, Recipe, Schedule

DEFAULT_BASE = "smollm2-135m"
MIN_MESSAGES = 20  # a speaker with fewer messages than this gives nothing to learn from


class LoraSettings(BaseModel):
    """LoRA adapter settings; unset takes the preset's or the default."""

    model_config = ConfigDict(extra="forbid")
    rank: int | None = Field(None, ge=1, le=1024, description="Adapter rank.")
    alpha: float | None = Field(None, gt=0, description="Scaling factor alpha.")
    dropout: float | None = Field(None, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] = Field(
        default_factory=list, description="Modules to adapt; empty: every linear layer of attention and MLP."
    )
    layers: int | None = Field(None, ge=1, description="Adapt only the last N layers (faster: the backward pass stops below them).")


class Hyperparameters(BaseModel):
    """Training hyperparameters; unset takes the preset's or the default."""

    model_config = ConfigDict(extra="forbid")
    learning_rate: float | None = Field(None, gt=0, le=1, description="Peak learning rate.")
    lr_schedule: Schedule | None = Field(None, description="Schedule after warmup.")
    warmup_ratio: float | None = Field(None, ge=0, lt=1, description="Fraction of the steps spent warming up.")
    epochs: float | None = Field(None, gt=0, le=1000, description="Passes over the samples (unless max_steps).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    batch_size: int | None = Field(None, ge=1, le=4096, description="Samples per forward pass.")
    gradient_accumulation_steps: int | None = Field(None, ge=1, le=4096, description="Forward passes per step.")
    block_size: int | None = Field(None, ge=16, le=131072, description="Most tokens in one sample.")
    weight_decay: float | None = Field(None, ge=0, le=1, description="AdamW weight decay.")
    seed: int | None = Field(None, ge=0, description="Seed for shuffling, initialisation and sampling.")
    held_out_fraction: float | None = Field(None, ge=0, lt=1, description="Latest part of each conversation held out.")
    save_every: int | None = Field(None, ge=1, description="Checkpoint to the store every N steps.")
    sample_every: int | None = Field(None, ge=0, description="Sample every N steps; 0: only at the end.")
    sample_prompts: list[str] = Field(default_factory=list, description="Prompts to sample; empty: held-out openings.")
    gradient_checkpointing: bool | None = Field(None, description="Trade compute for memory.")
    precision: Precision | None = Field(None, description="auto: bf16 on a GPU, fp32 on CPU.")
    session_gap_s: float | None = Field(None, gt=0, description="A pause longer than this starts a new session (s).")


class TrainRequest(BaseModel):
    """What to train: the parameters of the `train-persona` flow."""

    model_config = ConfigDict(extra="forbid")
    dataset_id: str = Field(description="Dataset to train on.")
    speakers: list[str] = Field(description="Speakers the model learns: one is a persona, several a group model.")
    base_model: str = Field(DEFAULT_BASE, description="Registry name, local path, store key or hub id.")
    method: Method = Field("lora", description="LoRA adapter, QLoRA (LoRA on a 4-bit base) or full fine-tuning.")
    preset: str = Field("default", description="Named recipe whose values fill what is unset.")
    model_name: str = Field("", description="Name of the published model; empty: from the speakers.")
    devices: int | None = Field(None, ge=1, le=1024, description="Devices to train on, a process each (torchrun); "
                                "unset: every GPU the trainer was given, or 1 on a CPU.")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)

    @field_validator("speakers")
    @classmethod
    def _some_speakers(cls, v: list[str]) -> list[str]:
        v = list(dict.fromkeys(s for s in v if s))
        if not v:
            raise ValueError("name at least one speaker")
        return v


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # a first persona in ~3 minutes on a 2-core CPU: short windows, 14 steps at a high learning rate,
    # adapters on the last 10 layers only (the backward pass stops there: 1.5x a step); measured
    # against the 60 steps of 5e-4 it replaced in bench/RESULTS.md ("First persona")
    "quick-cpu": {"max_steps": 14, "block_size": 256, "batch_size": 8, "learning_rate": 2e-3, "lora_layers": 10,
                  "save_every": 7},
    # a GPU run that reads the data three times with long context
    "quality": {"epochs": 3.0, "block_size": 1024, "learning_rate": 1e-4, "lora_rank": 32, "lora_alpha": 64.0},
}


def resolve(request: TrainRequest) -> Recipe:
    """The recipe `request` asks for: its values over its preset's over the defaults."""
    if request.preset not in PRESETS:
        raise InvalidArgument(f"unknown preset {request.preset!r}; presets: {', '.join(PRESETS)}")
    values: dict[str, Any] = dict(PRESETS[request.preset])
    values.update({f"lora_{k}": v for k, v in request.lora.model_dump().items() if v not in (None, [])})
    values.update({k: v for k, v in request.hyperparameters.model_dump().items() if v not in (None, [])})
    if request.method == "full" and "learning_rate" not in values:
        values["learning_rate"] = 5e-5  # full fine-tuning moves every weight: a gentler default
    name = request.model_name or "-".join(request.speakers)
    return Recipe(
        dataset_id=request.dataset_id,
        speakers=request.speakers,
        base_model=request.base_model or DEFAULT_BASE,
        method=request.method,
        preset=request.preset,
        model_name=name,
        **values,
    )


def parse_request(data: dict[str, Any] | TrainRequest) -> TrainRequest:
    """A TrainRequest from its JSON form; a bad field is an InvalidArgument naming it."""
    if isinstance(data, TrainRequest):
        return data
    try:
        return TrainRequest.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'request'}: {err['msg']}" for err in e.errors())
        raise InvalidArgument(f"invalid training request: {problems}") from None
