"""Between the wire and the core: trainer proto messages to and from the trainer's models."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, overload

from google.protobuf.timestamp_pb2 import Timestamp

from doppel import enums, fidelity
from doppel.model import ModelManifest, SampleText
from doppel.v1 import common_pb2, trainer_pb2

from . import basemodels, fitting, registry
from .evaluation import Progress, Result
from .loss import CHUNK
from .recipe import TrainRequest
from .runs import Event, RunRecord

# The recipe's and the run record's names are the enums' short names (`doppel.enums`); unset
# method, schedule and precision are left to the recipe's defaults.
METHODS = enums.names(trainer_pb2.Method)
METHOD_ENUMS = enums.values(trainer_pb2.Method)
SCHEDULES = enums.names(trainer_pb2.LrSchedule)
SCHEDULE_ENUMS = enums.values(trainer_pb2.LrSchedule)
PRECISIONS = enums.names(trainer_pb2.Precision)
PRECISION_ENUMS = enums.values(trainer_pb2.Precision)
STATES = enums.values(trainer_pb2.RunState)
STATE_NAMES = enums.names(trainer_pb2.RunState)
_HYPER_OPTIONAL = (
    "learning_rate", "warmup_ratio", "epochs", "max_steps", "batch_size", "gradient_accumulation_steps",
    "block_size", "weight_decay", "seed", "held_out_fraction", "save_every", "sample_every", "gradient_checkpointing",
)


@overload
def _ts(dt: datetime) -> Timestamp: ...


@overload
def _ts(dt: datetime | None) -> Timestamp | None: ...


def _ts(dt: datetime | None) -> Timestamp | None:
    if dt is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(dt.astimezone(UTC) if dt.tzinfo else dt)
    return ts


def request_from_spec(spec: trainer_pb2.TrainingSpec) -> dict[str, Any]:
    """The JSON form of a TrainRequest (validated by `recipe.parse_request`)."""
    h = spec.hyperparameters
    hyper: dict[str, Any] = {k: getattr(h, k) for k in _HYPER_OPTIONAL if h.HasField(k)}
    if h.lr_schedule in SCHEDULES:
        hyper["lr_schedule"] = SCHEDULES[h.lr_schedule]
    if h.precision in PRECISIONS:
        hyper["precision"] = PRECISIONS[h.precision]
    if h.HasField("session_gap"):
        hyper["session_gap_s"] = h.session_gap.ToTimedelta().total_seconds()
    if h.sample_prompts:
        hyper["sample_prompts"] = list(h.sample_prompts)
    lora: dict[str, Any] = {k: getattr(spec.lora, k) for k in ("rank", "alpha", "dropout") if spec.lora.HasField(k)}
    if spec.lora.target_modules:
        lora["target_modules"] = list(spec.lora.target_modules)
    out: dict[str, Any] = {
        "dataset_id": spec.dataset_id,
        "speakers": list(spec.speakers),
        "method": METHODS.get(spec.method, "lora"),
        "model_name": spec.model_name,
        "lora": lora,
        "hyperparameters": hyper,
    }
    if spec.base_model:
        out["base_model"] = spec.base_model
    if spec.preset:
        out["preset"] = spec.preset
    if spec.HasField("devices"):
        out["devices"] = spec.devices
    return out


def spec_from_request(r: TrainRequest) -> trainer_pb2.TrainingSpec:
    h = r.hyperparameters
    hyper = trainer_pb2.Hyperparameters(
        **{k: getattr(h, k) for k in _HYPER_OPTIONAL if getattr(h, k) is not None},
        sample_prompts=h.sample_prompts,
    )
    if h.lr_schedule:
        hyper.lr_schedule = SCHEDULE_ENUMS[h.lr_schedule]
    if h.precision and h.precision != "auto":
        hyper.precision = PRECISION_ENUMS[h.precision]
    if h.session_gap_s is not None:
        hyper.session_gap.FromSeconds(int(h.session_gap_s))
    lora = trainer_pb2.LoraConfig(
        **{k: getattr(r.lora, k) for k in ("rank", "alpha", "dropout") if getattr(r.lora, k) is not None},
        target_modules=r.lora.target_modules,
    )
    return trainer_pb2.TrainingSpec(
        dataset_id=r.dataset_id, speakers=r.speakers, base_model=r.base_model, method=METHOD_ENUMS[r.method],
        lora=lora, hyperparameters=hyper, model_name=r.model_name, preset=r.preset, devices=r.devices,
    )


def run_to_proto(record: RunRecord, dashboard_url: str) -> trainer_pb2.Run:
    run = trainer_pb2.Run(
        run_id=record.id, flow_run_id=record.id, dashboard_url=dashboard_url, spec=spec_from_request(record.request),
        state=STATES[record.state], message=record.message, step=record.step, total_steps=record.total,
        model_id=record.model_id, worker=record.worker, devices=record.recipe.devices if record.recipe else 0,
    )
    for name in ("created_at", "started_at", "finished_at"):
        ts = _ts(getattr(record, name))
        if ts is not None:
            getattr(run, name).CopyFrom(ts)
    return run


def sample_to_proto(s: SampleText) -> common_pb2.Sample:
    prompt = s.prompt + (f"\n{s.speaker}:" if s.speaker else "")
    return common_pb2.Sample(prompt=prompt, text=s.text, step=s.step)


def event_to_proto(e: Event) -> trainer_pb2.WatchRunResponse:
    out = trainer_pb2.WatchRunResponse(
        state=STATES[e.state], step=e.step, total_steps=e.total, samples=[sample_to_proto(s) for s in e.samples],
        message=e.message, tokens_per_second=e.tokens_per_s,
    )
    for name in ("loss", "learning_rate", "held_out_loss"):
        value = getattr(e, name)
        if value is not None and not math.isnan(value):
            setattr(out, name, value)
    if e.eta_s is not None:
        out.eta.FromMilliseconds(int(e.eta_s * 1000))
    out.time.CopyFrom(_ts(e.time))
    return out


def model_to_proto(m: ModelManifest) -> trainer_pb2.PersonaModel:
    ev = m.evaluation
    out = trainer_pb2.PersonaModel(
        id=m.id, name=m.name, base_model=m.base_model, method=METHOD_ENUMS[m.method], speakers=m.speakers,
        participants=m.participants, dataset_id=m.dataset_id, run_id=m.run_id,
        evaluation=trainer_pb2.Evaluation(
            held_out_loss=ev.held_out_loss, perplexity=ev.perplexity, base_held_out_loss=ev.base_held_out_loss,
            base_perplexity=ev.base_perplexity, held_out_tokens=ev.held_out_tokens,
        ),
        samples=[sample_to_proto(s) for s in m.samples], size_bytes=m.size_bytes, recipe_json=m.recipe.model_dump_json(),
        fidelity=[fidelity.to_proto(f) for f in m.fidelity], base_fidelity=[fidelity.to_proto(f) for f in m.base_fidelity],
    )
    out.created_at.CopyFrom(_ts(m.created_at))
    return out


def evaluation_to_proto(item: Progress | Result) -> trainer_pb2.EvaluateModelResponse:
    if isinstance(item, Progress):
        return trainer_pb2.EvaluateModelResponse(message=item.message, done=item.done, total=item.total)
    done = sum(f.replies for f in item.fidelity)
    return trainer_pb2.EvaluateModelResponse(
        message="saved as the model's figures" if item.saved else "done", done=done, total=done,
        fidelity=[fidelity.to_proto(f) for f in item.fidelity],
        base_fidelity=[fidelity.to_proto(f) for f in item.base_fidelity], saved=item.saved,
    )


def base_models_to_proto(infos: list[basemodels.BaseModelInfo], device: fitting.Device | None = None, *, batch_size: int,
                         block_size: int) -> trainer_pb2.ListBaseModelsResponse:
    return trainer_pb2.ListBaseModelsResponse(
        base_models=[base_model_to_proto(i, batch_size=batch_size, block_size=block_size) for i in infos],
        device=trainer_pb2.TrainerDevice(name=device.name, free_bytes=device.free_bytes, total_bytes=device.total_bytes)
        if device else None,
    )


def base_model_to_proto(i: basemodels.BaseModelInfo, *, batch_size: int, block_size: int) -> trainer_pb2.BaseModel:
    memory = [
        trainer_pb2.TrainingMemory(
            method=method, batch_size=batch_size, block_size=block_size,
            bytes=registry.training_memory(i.shape, method, batch_size=batch_size, block_size=block_size,
                                           loss_chunk=CHUNK),
            checkpointed_bytes=registry.training_memory(i.shape, method, batch_size=batch_size, block_size=block_size,
                                                        checkpointing=True, loss_chunk=CHUNK),
        )
        for method in ("lora", "qlora", "full")
    ] if i.shape else []
    return trainer_pb2.BaseModel(
        name=i.name, description=i.description, parameters=i.parameters, chat_template=i.chat_template, hub_id=i.hub_id,
        stored=i.stored, gated=i.gated, license=i.license, revision=i.revision, size_bytes=i.size_bytes,
        training_memory=memory,
    )
