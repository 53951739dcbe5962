"""The `train-persona` Prefect flow: dataset -> samples -> tokens -> training -> evaluation -> model.

The trainer process serves it as the `train-persona/train-persona` deployment (see `runner.py`);
every run, whoever started it, is a flow run of that deployment, executed in a process of its
own. The flow writes its record and progress events to the store (`runs.py`), a checkpoint every
`save_every` steps, and Prefect artifacts: a progress bar and, at the end, a markdown report
with the evaluation, samples and loss table. A run that is retried, or rescheduled after its
process died, starts again here and resumes training from the latest checkpoint.

Tasks that touch the store retry; tasks pass models and samples in memory (no caching, no
persisted results: they are large and only mean something inside this run).
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import torch
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from doppel import dataset
from doppel import fidelity as shown
from doppel.config import Malloc, Settings
from doppel.conversation import Conversation
from doppel.errors import FailedPrecondition, InvalidArgument
from doppel.layout import new_id
from doppel.model import Evaluation, FidelityFigures, ModelManifest, SampleText
from doppel.store import open_store
from doppel.store.base import Store
from doppel.transcript import Transcript

from . import basemodels, fidelity, finetune, fitting, heap, models, previews, quantization, ranks, runs
from .checks import check_request
from .hub import PullProgress
from .recipe import Recipe, TrainRequest
from .runs import Event, RunLog, RunRecord
from .samples import Sample, Split, split_sessions, tokenise

FLOW = "train-persona"
DEPLOYMENT = f"{FLOW}/{FLOW}"
EVAL_DURING = 64  # held-out windows scored at each sampling point (all of them at the end)
RETRIES = 1  # a failed attempt is retried once, resuming from its checkpoint
STORE_RETRIES: dict[str, Any] = dict(retries=3, retry_delay_seconds=2, cache_policy=NO_CACHE)


@task(**STORE_RETRIES)
def load_dataset(store: Store, dataset_id: str) -> list[Conversation]:
    return list(dataset.conversations(store, dataset.DATASETS.get(store, dataset_id)))


@task(cache_policy=NO_CACHE)
def build_samples(conversations: list[Conversation], recipe: Recipe) -> Split:
    return split_sessions(
        conversations,
        recipe.speakers,
        session_gap=timedelta(seconds=recipe.session_gap_s),
        held_out_fraction=recipe.held_out_fraction,
    )


@task(**STORE_RETRIES)
def load_base(store: Store, recipe: Recipe, split: Split, cache_dir: Path, say: Callable[[str], object],
              device: torch.device, scratch: Path) -> basemodels.LoadedBase:
    """The base model, pulled from the hub first if it is a curated one not in the store (said every
    tenth); for QLoRA loaded on `device` in 4 bits, else on the CPU."""
    texts = (t.text for s in split.train for t in s.turns)
    said = ("", -1)

    def pulling(p: PullProgress) -> None:
        nonlocal said
        tenth = 10 * p.done_bytes // p.total_bytes if p.total_bytes else -1
        if (p.message, tenth) != said:
            said = (p.message, tenth)
            say(f"{p.message}: {10 * tenth}%" if tenth >= 0 else p.message)

    return basemodels.load_base_model(
        recipe.base_model, store, cache_dir=cache_dir, texts=texts, seed=recipe.seed, block_size=recipe.block_size,
        progress=pulling, dtype=finetune.weights_dtype(recipe, device),
        quantize_on=device if recipe.method == "qlora" else None, scratch=scratch,
    )


@task(cache_policy=NO_CACHE)
def tokenise_samples(split: Split, transcript: Transcript, block_size: int) -> tuple[list[Sample], list[Sample]]:
    train = tokenise(split.train, transcript, block_size)
    if not train:
        raise ValueError("no training samples: the chosen speakers have no turns outside the held-out part")
    return train, tokenise(split.held_out, transcript, block_size)


@task(cache_policy=NO_CACHE)
def train_model(model: Any, train: list[Sample], recipe: Recipe, pad_id: int, callbacks: finetune.Callbacks,
                checkpoint: bytes | None) -> finetune.Result:
    return finetune.train(model, train, recipe, pad_id=pad_id, callbacks=callbacks, checkpoint=checkpoint)


@task(cache_policy=NO_CACHE)
def train_on_devices(model: Any, folder: Path, job: ranks.Job, devices: int, meeting: ranks.Meeting,
                     callbacks: finetune.Callbacks, on_samples: ranks.OnSamples, threads: int | None,
                     malloc: Malloc) -> finetune.Result:
    """Train on `devices` processes here and as many on each other machine of `meeting` (ranks.py), then
    load what they trained into `model`; the job folder goes when they are done."""
    where = next(model.parameters()).device
    model.to("cpu")  # the ranks need the device's memory
    try:
        result, weights = ranks.train(folder, job, devices, callbacks, on_samples, threads=threads, malloc=malloc,
                                      meeting=meeting)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    model.load_state_dict(weights, strict=False)
    model.to(where)
    return result


def devices_for(request: TrainRequest, device: torch.device) -> int:
    """How many devices of this machine a run trains on: as asked, else every GPU this trainer was given
    (QLoRA: one; on a CPU one, or as asked: processes sharing its cores)."""
    given = torch.cuda.device_count() if device.type == "cuda" else 1
    devices = request.devices or (1 if request.method == "qlora" else given)
    if device.type == "cuda" and devices > given:
        raise InvalidArgument(f"devices={devices}, but this trainer was given {given} GPU{'s' * (given != 1)} (CUDA_VISIBLE_DEVICES)")
    return devices


def meeting_for(settings: Settings, run_id: str, method: str) -> ranks.Meeting:
    """Where the machines of this attempt meet: this one alone unless DOPPEL_TRAIN_NODES says more."""
    if settings.train_nodes == 1:
        return ranks.Meeting()
    if not settings.train_rendezvous or settings.train_jobs is None:
        raise FailedPrecondition(f"DOPPEL_TRAIN_NODES={settings.train_nodes} needs DOPPEL_TRAIN_RENDEZVOUS (this trainer's "
                                 "host:port, for the other machines) and DOPPEL_TRAIN_JOBS (a folder they all mount)")
    if method == "qlora":
        raise InvalidArgument("QLoRA trains on one device; use LoRA to train on several machines")
    return ranks.Meeting(settings.train_nodes, settings.train_rendezvous, f"{run_id}-{flow_run.run_count or 1}")


@task(cache_policy=NO_CACHE)
def evaluate(model: Any, held_out: list[Sample], pad_id: int, base_loss: float) -> Evaluation:
    loss, tokens = finetune.held_out_loss(model, held_out, pad_id=pad_id)
    return Evaluation.of(loss, base_loss, tokens)


@task(cache_policy=NO_CACHE)
def sample(model: Any, tokenizer: Any, transcript: Transcript, found: list[previews.Opening], step: int, seed: int) -> list[SampleText]:
    return previews.generate(model, tokenizer, transcript, found, step=step, seed=seed)


@task(cache_policy=NO_CACHE)
def evaluate_fidelity(model: Any, tokenizer: Any, transcript: Transcript, split: Split, recipe: Recipe) -> list[FidelityFigures]:
    """How much the model sounds like each chosen speaker: a markdown artifact each, the figures for the manifest."""
    found = [fidelity.figures(f, recipe.dataset_id)
             for f in fidelity.evaluate(model, tokenizer, transcript, split, recipe.speakers, seed=recipe.seed)]
    for f in found:
        create_markdown_artifact(shown.markdown(f), description=f"{recipe.model_name}: fidelity of {f.speaker}")
    return found


@task(**STORE_RETRIES)
def publish(store: Store, manifest: ModelManifest, model: Any, tokenizer: Any, base_folder: Path | None) -> ModelManifest:
    return models.publish(store, manifest, model, tokenizer, base_folder)


class _Progress:
    """Step events to the run log and the Prefect progress artifact, checkpoints to the store."""

    def __init__(self, store: Store, log: RunLog, artifact: Any, sample_at: Callable[[Any, int], None]):
        self.store, self.log, self.artifact, self.sample_at = store, log, artifact, sample_at
        self._shown, self._shown_at = -1.0, 0.0

    def callbacks(self) -> finetune.Callbacks:
        return finetune.Callbacks(on_step=self.on_step, on_checkpoint=self.on_checkpoint, on_sample=self.sample_at)

    def on_samples(self, step: int, texts: list[SampleText], loss: float) -> None:
        self.log.emit(Event(step=step, total=self.log.record.total, samples=texts, held_out_loss=None if math.isnan(loss) else loss))

    def on_step(self, p: finetune.Progress) -> None:
        self.log.emit(Event(step=p.step, total=p.total, loss=p.loss, learning_rate=p.learning_rate,
                            eta_s=p.eta_s, tokens_per_s=p.tokens_per_s))
        fraction = p.step / p.total
        if self.artifact and (fraction - self._shown >= 0.02 or time.monotonic() - self._shown_at > 5 or p.step == p.total):
            update_progress_artifact(self.artifact, progress=100 * fraction)
            self._shown, self._shown_at = fraction, time.monotonic()

    def on_checkpoint(self, step: int, blob: bytes) -> None:
        old = runs.latest_checkpoint(self.store, self.log.record.id)
        self.store.put(runs.checkpoint_key(self.log.record.id, step), blob)
        if old and old[0] != step:
            self.store.delete(old[1])
        get_run_logger().info("checkpoint at step %d (%.1f MB)", step, len(blob) / 1e6)


def _report(record: RunRecord, evaluation: Evaluation, samples: list[SampleText], losses: list[tuple[int, float]]) -> str:
    every = max(1, len(losses) // 20)
    rows = [f"| {s} | {loss:.4f} |" for s, loss in losses[::every]]
    if losses and losses[-1] not in losses[::every]:
        rows.append(f"| {losses[-1][0]} | {losses[-1][1]:.4f} |")
    shown = "\n\n".join(f"**{s.speaker}**, after\n\n> " + s.prompt.replace("\n", "\n> ") + f"\n\n{s.text}" for s in samples)
    return (
        f"# {record.recipe.model_name if record.recipe else record.id}\n\n"
        f"Model `{record.model_id}` on dataset `{record.request.dataset_id}`.\n\n"
        "| | held-out loss | perplexity |\n|---|---|---|\n"
        f"| trained | {evaluation.held_out_loss:.4f} | {evaluation.perplexity:.2f} |\n"
        f"| base | {evaluation.base_held_out_loss:.4f} | {evaluation.base_perplexity:.2f} |\n\n"
        f"over {evaluation.held_out_tokens} held-out tokens.\n\n## Samples\n\n{shown or '(none)'}\n\n"
        "## Loss\n\n| step | loss |\n|---|---|\n" + "\n".join(rows) + "\n"
    )


def _start(store: Store, run_id: str, request: TrainRequest) -> RunLog:
    record = runs.find_record(store, run_id) or RunRecord(id=run_id, request=request)
    record.state, record.message, record.pid = "running", "", os.getpid()
    record.worker = f"{socket.gethostname()}:{os.getppid()}"  # the Prefect runner started this process
    record.started_at = record.started_at or datetime.now(UTC)
    record.finished_at = None
    return RunLog(store, record)


@flow(name=FLOW, retries=RETRIES, retry_delay_seconds=5, persist_result=False, validate_parameters=True)
def train_persona(request: TrainRequest) -> str:
    """Fine-tune a base model on a dataset so it talks like the chosen speakers; returns the model id."""
    settings = Settings()
    if settings.train_threads:
        torch.set_num_threads(settings.train_threads)
    run_id = str(flow_run.get_id() or new_id("run"))
    store = open_store(settings.store_url)
    log = _start(store, run_id, request)
    try:
        return _train(settings, store, log)
    except Exception as e:  # not a cancel or kill: Prefect says how those ended
        record, message = log.record, str(e) or type(e).__name__
        if (flow_run.run_count or 1) <= RETRIES:
            log.say(f"attempt {flow_run.run_count} failed ({message}); retrying")
        else:
            record.state, record.finished_at, record.pid, record.message = "failed", datetime.now(UTC), None, message
            log.emit(Event(state="failed", step=record.step, total=record.total, message=message), now=True)
        raise
    finally:
        store.close()


def _train(settings: Settings, store: Store, log: RunLog) -> str:
    record, logger = log.record, get_run_logger()
    log.say("checking the request")
    checked = check_request(store, record.request)
    previous = record.recipe  # a retried run's, as its first attempt fitted it to the device
    recipe = record.recipe = checked.recipe
    log.say("loading the dataset")
    conversations = load_dataset(store, recipe.dataset_id)
    log.say("building samples")
    split = build_samples(conversations, recipe)
    participants = list(checked.dataset.stats.participants)
    del conversations
    device = finetune.device_for()
    here, meeting = devices_for(checked.request, device), meeting_for(settings, log.record.id, recipe.method)
    devices = here * meeting.nodes
    with tempfile.TemporaryDirectory(prefix="doppel-run-") as tmp:
        log.say(f"loading base model {recipe.base_model}" + (" in 4 bits" if recipe.method == "qlora" else ""))
        base = load_base(store, recipe, split, settings.home / "cache", log.say, device, Path(tmp))
        transcript = Transcript(base.tokenizer, recipe.speakers)
        log.say("tokenising")
        train, held_out = tokenise_samples(split, transcript, recipe.block_size)
        pad_id = base.tokenizer.pad_token_id
        if previous is None or previous.gradient_checkpointing is None:  # not fitted yet (fitting sets it)
            asked = {k for k, v in checked.request.hyperparameters.model_dump().items() if v is not None}
            recipe, said = fitting.fit(base.model.config.to_dict(), recipe, fitting.device(device), asked=asked,
                                       dtype_bytes=4 if finetune.autocast_dtype(recipe.precision, device) is None else 2,
                                       device_type=device.type, ranks=devices)
            for line in said:
                log.say(line)
        else:  # fitted as before, so that a checkpoint resumes with the batches it was made with
            recipe = recipe.model_copy(update={k: getattr(previous, k) for k in fitting.FITTED})
        recipe = record.recipe = recipe.model_copy(update={"devices": devices})
        if not quantization.is_quantized(base.model):  # a 4-bit base is loaded on its device
            base.model.to(device)  # type: ignore[arg-type]  # stub: @wraps(Module.to) loses the bound self
        base_loss, _ = finetune.held_out_loss(base.model, held_out, pad_id=pad_id)
        base_folder = base.written
        if base_folder is None and recipe.method != "full" and base.store_prefix is None and base.source.startswith("registry:"):
            base_folder = Path(tmp) / "base"  # nowhere else holds these weights: publish them with the adapter
            base.model.save_pretrained(base_folder)
            base.tokenizer.save_pretrained(base_folder)
        job_folder = settings.train_jobs / meeting.id if meeting.nodes > 1 and settings.train_jobs else Path(tmp) / "job"
        if devices > 1:
            ranks.save_base(job_folder, base.model, base.tokenizer)
        model = finetune.prepare_model(base.model, recipe)
        found = previews.openings(split.held_out or split.train, recipe.speakers, recipe.sample_prompts)

        def sample_at(m: Any, step: int) -> None:
            progress.on_samples(step, *previews.sampling_point(m, base.tokenizer, transcript, found, held_out[:EVAL_DURING],
                                                               pad_id=pad_id, step=step, seed=recipe.seed))

        checkpoint = runs.latest_checkpoint(store, record.id)
        blob = None
        if checkpoint:
            record.resumed_from, blob = checkpoint[0], store.get(checkpoint[1])
            logger.info("resuming from the checkpoint at step %d", checkpoint[0])
        record.total = finetune.total_steps(len(train), recipe)
        machines = f" ({meeting.nodes} machines)" if meeting.nodes > 1 else ""
        on_cpu = f"; on the CPU: forward passes of at most {recipe.max_pass_tokens} tokens, {heap.allocator()} malloc"
        log.say(f"training: {len(train)} samples, {record.total} steps" + (f" on {devices} devices{machines}" if devices > 1 else "")
                + (f", resuming at step {record.resumed_from}" if blob else "")
                + (on_cpu if device.type == "cpu" and recipe.max_pass_tokens else ""))
        if devices > 1 and recipe.method == "full" and recipe.sample_every:
            log.say("the model is shared out over the devices (FSDP): it is sampled at the end, not during training")
        artifact = create_progress_artifact(progress=0.0, description=f"training {recipe.model_name}")
        progress = _Progress(store, log, artifact, sample_at)
        if devices > 1:
            job = ranks.Job(samples=train, held_out=held_out[:EVAL_DURING], openings=found, recipe=recipe, pad_id=pad_id, checkpoint=blob)
            threads = max(1, settings.train_threads // here) if settings.train_threads else None
            result = train_on_devices(model, job_folder, job, here, meeting, progress.callbacks(), progress.on_samples, threads,
                                      settings.train_malloc)
        else:
            result = train_model(model, train, recipe, pad_id, progress.callbacks(), blob)
        log.say("evaluating")
        evaluation = evaluate(model, held_out, pad_id, base_loss)
        log.say("sampling")
        samples = sample(model, base.tokenizer, transcript, found, result.step, recipe.seed)
        log.say("measuring fidelity")
        figures = evaluate_fidelity(model, base.tokenizer, transcript, split, recipe)
        log.say("publishing")
        manifest = ModelManifest(
            id=models.new_model_id(), name=recipe.model_name, base_model=recipe.base_model, base_source=base.source,
            base_store_prefix=base.store_prefix, method=recipe.method, transcript=transcript.kind,
            speakers=recipe.speakers, participants=participants, dataset_id=recipe.dataset_id, run_id=record.id,
            recipe=recipe, evaluation=evaluation, samples=samples, fidelity=figures,
        )
        manifest = publish(store, manifest, model, base.tokenizer, base_folder)
    record.model_id, record.state, record.finished_at, record.pid = manifest.id, "completed", datetime.now(UTC), None
    record.message = f"published model {manifest.id}"
    held = None if math.isnan(evaluation.held_out_loss) else evaluation.held_out_loss
    log.emit(Event(state="completed", step=result.step, total=result.total, held_out_loss=held, samples=samples,
                   message=record.message), now=True)
    create_markdown_artifact(_report(record, evaluation, samples, result.losses), description=f"{recipe.model_name}: report")
    store.delete_prefix(runs.checkpoints_prefix(record.id))  # the model is published: checkpoints are spent
    logger.info("published model %s: held-out loss %.4f (base %.4f)", manifest.id, evaluation.held_out_loss, base_loss)
    return manifest.id
