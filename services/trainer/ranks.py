"""One training run on several devices: the job the flow hands its processes, their launch, what comes back.

The flow (flow.py) loads, tokenises and fits as for one device, then writes a job folder (the base
model as loaded, and a `Job`: samples, recipe, the checkpoint to resume from) and launches PyTorch's
own launcher, `python -m torch.distributed.run --nproc-per-node N -m services.trainer.ranks JOB`:
torchrun starts a process a device, makes them meet, and when one dies stops the others and exits
with the failure. Every rank loads the base and trains its share of each batch (finetune.py;
parallel.py shares the gradients, and for a full fine-tune the model too); rank 0 alone writes:
progress and sample lines to `events.jsonl`, checkpoints and at the end the trained weights to
files. The flow reads them as they come and hands them to the callbacks a one-device run calls,
so a run on N devices is watched, checkpointed, retried and resumed the same way.

Several machines: the job folder is on storage they all mount (DOPPEL_TRAIN_JOBS); the trainer's
launcher serves torchrun's rendezvous (DOPPEL_TRAIN_RENDEZVOUS) and writes `launch.json` beside
the job, and `doppel train-node` on each other machine (`join`) runs the same launch on every job
that appears, so that all of them meet there and train as one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from doppel.config import Malloc
from doppel.errors import DoppelError
from doppel.model import SampleText
from doppel.transcript import Transcript

from . import finetune, heap, parallel, previews
from .basemodels import from_folder
from .recipe import Recipe
from .samples import Sample

EVENTS, TRAINED, LAUNCH_LOG, LAUNCH = "events.jsonl", "trained.pt", "launch.log", "launch.json"
JOIN_TIMEOUT_S = 300  # how long the machines of a run wait for each other


@dataclass(frozen=True)
class Meeting:
    """Where a run's machines meet: `nodes` machines at `rendezvous` (host:port), under an id of this attempt's."""

    nodes: int = 1
    rendezvous: str = ""
    id: str = ""


def command(folder: Path, devices: int, meeting: Meeting) -> list[str]:
    """torchrun training the job in `folder` on `devices` processes here, alone or with the meeting's other machines."""
    where = ["--standalone"] if meeting.nodes == 1 else [
        f"--nnodes={meeting.nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={meeting.rendezvous}", f"--rdzv-id={meeting.id}",
        f"--rdzv-conf=join_timeout={JOIN_TIMEOUT_S}"]
    return [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc-per-node={devices}", "--max-restarts=0",
            "-m", __name__, str(folder)]


@dataclass
class Job:
    """What every rank needs besides the base model (`base/` beside it)."""

    samples: list[Sample]
    held_out: list[Sample]  # scored at sampling points (the flow's EVAL_DURING)
    openings: list[previews.Opening]  # sampled from at sampling points
    recipe: Recipe
    pad_id: int
    checkpoint: bytes | None


def save_base(folder: Path, model: Any, tokenizer: Any) -> None:
    """The base as the flow loaded it, before any adapter: every rank starts from it."""
    model.save_pretrained(folder / "base")
    tokenizer.save_pretrained(folder / "base")


OnSamples = Callable[[int, list[SampleText], float], None]  # (step, texts, held-out loss) at a sampling point


def train(folder: Path, job: Job, devices: int, callbacks: finetune.Callbacks, on_samples: OnSamples, *,
          threads: int | None = None, malloc: Malloc = "auto", meeting: Meeting = Meeting()
          ) -> tuple[finetune.Result, dict[str, torch.Tensor]]:
    """Train on `devices` processes here (and as many on each other machine of `meeting`); (the result, the
    trained weights). Progress, checkpoints and samples reach `callbacks` and `on_samples` as rank 0 makes
    them; a rank that fails fails this, with torchrun's reason."""
    torch.save(job, folder / "job.pt")
    if meeting.nodes > 1:  # for `doppel train-node` on the other machines
        _whole(folder / LAUNCH, lambda path: path.write_text(json.dumps(asdict(meeting))))
    with (folder / LAUNCH_LOG).open("wb") as log:
        proc = subprocess.Popen(command(folder, devices, meeting), env=_env(devices, threads, malloc), stdout=log,
                                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    relay = _Relay(folder, callbacks, on_samples)
    try:
        while proc.poll() is None:
            relay.read()
            time.sleep(0.2)
        relay.read()
    finally:
        if proc.poll() is None:  # this process is being stopped (a cancel): take the ranks with it
            proc.terminate()
            proc.wait()
    if proc.returncode != 0:
        raise DoppelError(f"training on {devices * meeting.nodes} devices failed: {_reason(folder / LAUNCH_LOG)}")
    out = torch.load(folder / TRAINED, map_location="cpu", weights_only=False)
    return finetune.Result(step=out["step"], total=out["total"], losses=out["losses"], stopped=out["stopped"]), out["weights"]


def _whole(path: Path, write: Callable[[Path], object]) -> None:
    """`write` a file that its readers (the flow, `doppel train-node`) see whole or not at all."""
    part = path.with_name(f"{path.name}.part")
    write(part)
    part.rename(path)


def _env(devices: int, threads: int | None, malloc: Malloc) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads or max(1, (os.cpu_count() or 1) // devices))}
    return heap.environment(env, malloc)


def join(jobs: Path, devices: int, logs: Path, *, threads: int | None = None, malloc: Malloc = "auto",
         say: Callable[[str], object] = print) -> None:
    """Join, with `devices` processes here, every run another machine's trainer launches in `jobs` from now
    on, one after the other, for ever (`doppel train-node`); torchrun's output goes to `logs`. A run that
    fails here fails there too."""
    seen = {p.parent for p in jobs.glob(f"*/{LAUNCH}")}  # launched before this machine came: not waiting for it
    logs.mkdir(parents=True, exist_ok=True)
    while True:
        for path in sorted(jobs.glob(f"*/{LAUNCH}")):
            if path.parent in seen:
                continue
            seen.add(path.parent)
            try:
                meeting = Meeting(**json.loads(path.read_text()))
            except OSError:  # gone already: that run ended before this machine came to it
                continue
            say(f"joining run {meeting.id} ({meeting.nodes} machines, at {meeting.rendezvous})")
            log = logs / f"{meeting.id}.log"
            with log.open("wb") as out:
                done = subprocess.run(command(path.parent, devices, meeting), env=_env(devices, threads, malloc), stdout=out,
                                      stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, check=False)
            say(f"run {meeting.id}: " + ("done" if done.returncode == 0 else f"failed: {_reason(log)} (all of it: {log})"))
        time.sleep(1)


def _die_with_parent() -> None:
    """In torchrun's process: SIGTERM (which it passes on to the ranks) if the flow's process dies."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _reason(log: Path) -> str:
    """What failed first, from torchrun's report: the rank, its exit code or signal, and its error's last line.

    torchrun's own "root cause" is the earliest failure to the second, so a survivor that lost its peer in the
    same second may take the place of the rank that died; a rank torchrun stopped (SIGTERM) or one that lost its
    peer is the root cause only when no other is."""
    text = log.read_text(errors="replace")
    others, _, root = text.rsplit("Failures:", 1)[-1].partition("Root Cause (first observed failure):")
    failures = [_failure(block) for part in (root.split("\n=====")[0], others)
                for block in _FAILURE.split(part)[1:]] if root else []
    if not failures:  # no report: torchrun itself failed (its last line says why), or it was killed
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else "no output"
    first = next((f for f in failures if not _after_another(f)), failures[0])
    return f"rank {first.get('rank', '?')} exited with {first.get('exitcode', '?')}: {first.get('error', '')}"


_FAILURE = re.compile(r"^\[\d+\]:$", re.M)  # each failure in torchrun's report starts with its index: "[0]:"
_FIELD = re.compile(r"^  (time|host|rank|exitcode|error_file|traceback)\s*: (.*)$")
_LOST_PEER = re.compile(r"Connection (reset|closed) by peer|remote process exited|Broken pipe")


def _failure(block: str) -> dict[str, str]:
    """One failure of torchrun's report: its fields, and `error`, the traceback's last line when a rank raised."""
    fields: dict[str, str] = {}
    trace: list[str] = []
    for line in block.strip("\n-").splitlines():
        field = _FIELD.match(line)
        if field and field[1] not in fields:
            fields[field[1]] = " ".join(field[2].split())
        elif "traceback" in fields:
            trace.append(line)
    error = fields.get("traceback", "")
    if error.startswith("Traceback"):  # a rank's exception (`record`): its last line says what
        error = next((line.strip() for line in reversed(trace) if re.match(r"\s*[\w.]+(Error|Exception)\b", line)), error)
    return {**fields, "error": error}


def _after_another(failure: dict[str, str]) -> bool:
    """Whether a rank failed because another did: torchrun stopped it, or it lost its peer in a collective."""
    return failure.get("exitcode", "").startswith("-15 ") or bool(_LOST_PEER.search(failure["error"]))


class _Relay:
    """Rank 0's lines, read as they are written, handed to the flow's callbacks."""

    def __init__(self, folder: Path, callbacks: finetune.Callbacks, on_samples: OnSamples):
        self.folder, self.callbacks, self.on_samples, self.at = folder, callbacks, on_samples, 0

    def read(self) -> None:
        path = self.folder / EVENTS
        if not path.exists():
            return
        with path.open("rb") as f:
            f.seek(self.at)
            data = f.read()
        done = data.rfind(b"\n") + 1  # a line still being written waits for the next read
        self.at += done
        for line in data[:done].splitlines():
            self.handle(json.loads(line))

    def handle(self, event: dict[str, Any]) -> None:
        if "progress" in event:
            self.callbacks.on_step(finetune.Progress(**event["progress"]))
        elif "checkpoint" in event:
            path = self.folder / event["path"]
            self.callbacks.on_checkpoint(event["checkpoint"], path.read_bytes())
            path.unlink()
        elif "samples" in event:
            self.on_samples(event["samples"], [SampleText(**t) for t in event["texts"]], event["loss"])


def _rank_zero_callbacks(folder: Path, job: Job, tokenizer: Any) -> finetune.Callbacks:
    """Callbacks that write what rank 0 makes for the flow to relay."""
    out = (folder / EVENTS).open("a", encoding="utf-8")
    transcript = Transcript(tokenizer, job.recipe.speakers)

    def write(event: dict[str, Any]) -> None:
        out.write(json.dumps(event) + "\n")
        out.flush()

    def checkpoint(step: int, blob: bytes) -> None:
        name = f"checkpoint-{step}.pt"
        _whole(folder / name, lambda path: path.write_bytes(blob))
        write({"checkpoint": step, "path": name})

    def sample(model: Any, step: int) -> None:
        texts, loss = previews.sampling_point(model, tokenizer, transcript, job.openings, job.held_out, pad_id=job.pad_id,
                                              step=step, seed=job.recipe.seed)
        write({"samples": step, "texts": [t.model_dump() for t in texts], "loss": loss})

    return finetune.Callbacks(on_step=lambda p: write({"progress": asdict(p)}), on_checkpoint=checkpoint, on_sample=sample)


@record  # a rank's exception reaches torchrun's summary, and so the run's message
def main(folder: Path) -> None:
    """One rank (run by torchrun, which sets RANK, LOCAL_RANK and WORLD_SIZE)."""
    from torch import distributed as dist

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        job: Job = torch.load(folder / "job.pt", weights_only=False)
        model, tokenizer = from_folder(folder / "base", finetune.weights_dtype(job.recipe, device))
        if job.recipe.method != "full":  # a full fine-tune's ranks each take their share to the device (parallel.py)
            model.to(device)  # type: ignore[arg-type]  # stub: @wraps(Module.to) loses the bound self
        torch.manual_seed(job.recipe.seed)  # the adapter a one-device run makes (DistributedDataParallel copies rank 0's to all)
        model = finetune.prepare_model(model, job.recipe)
        first = dist.get_rank() == 0
        callbacks = _rank_zero_callbacks(folder, job, tokenizer) if first else finetune.Callbacks()
        result = finetune.train(model, job.samples, job.recipe, pad_id=job.pad_id, callbacks=callbacks, checkpoint=job.checkpoint)
        weights = parallel.trainable_state(model)  # sharded: gathered from every rank to rank 0
        if first:
            _whole(folder / TRAINED, lambda path: torch.save({**asdict(result), "weights": weights}, path))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
