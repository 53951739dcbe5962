"""Fidelity on demand: a published model measured on a dataset's held-out turns (`EvaluateModel`, `doppel eval`).

The held-out turns are chosen as the model's run chose them (its recipe's split of the dataset),
so on the model's own dataset the figures are those of its training run, measured again: they
then replace the manifest's (more samples, another seed). On another dataset of the same person
everything is measured against that dataset (its training part trains the classifiers and is what
copies are looked for in), and the model's manifest is left as it was.

It runs in a child process (`python -m services.trainer.evaluation`, see `EvaluationProcess`):
an evaluation loads a whole model and samples for a minute or more, and in a process of its own
it cannot slow the trainer's gRPC server, gives its memory back when done, and is killed when
its caller goes away. The child reads the request as JSON on stdin and writes JSON lines: a
`progress` object per step, then one `result` or `error` (the error's class and message).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from doppel import dataset, errors
from doppel.config import Settings
from doppel.dataset import DatasetManifest
from doppel.errors import DoppelError, FailedPrecondition, Internal, InvalidArgument
from doppel.model import MODELS, FidelityFigures, ModelManifest, base_folder, model_folder
from doppel.store import open_store
from doppel.store.base import Store
from doppel.transcript import Transcript

from . import basemodels, fidelity
from .fidelity.evaluate import LIMIT
from .samples import split_sessions


class Request(BaseModel):
    model_id: str
    dataset_id: str = ""  # empty: the model's own
    samples: int = 0  # held-out turns answered per speaker; 0: the default
    seed: int | None = None  # None: the model's training seed
    include_base: bool = False


class Progress(BaseModel):
    message: str
    done: int = 0
    total: int = 0


class Result(BaseModel):
    fidelity: list[FidelityFigures]
    base_fidelity: list[FidelityFigures] = []
    saved: bool = False


def load_model(store: Store, manifest: ModelManifest, cache_dir: Path) -> tuple[Any, Any]:
    """A published model and its tokenizer, in fp32 on the trainer's device, ready to sample."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_folder(store, manifest, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if manifest.is_adapter:
        from peft import PeftModel

        weights = AutoModelForCausalLM.from_pretrained(base_folder(store, manifest, folder, cache_dir),
                                                       local_files_only=True, dtype=torch.float32)
        model: Any = PeftModel.from_pretrained(weights, folder)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer


@contextlib.contextmanager
def _base_alone(store: Store, manifest: ModelManifest, model: Any, cache_dir: Path) -> Iterator[Any]:
    """The model's base without what training changed: the adapter switched off, or a full model's base loaded."""
    if manifest.is_adapter:
        with model.disable_adapter():
            yield model
        return
    if manifest.base_source == "registry:tiny":
        raise FailedPrecondition(f"model {manifest.id!r} was fully trained from the random `tiny` base, "
                                 "which is not kept: its base cannot be measured")
    loaded = basemodels.load_base_model(manifest.base_model, store, cache_dir=cache_dir)
    yield loaded.model.to(next(model.parameters()).device).eval()


def check(store: Store, request: Request) -> tuple[ModelManifest, DatasetManifest]:
    """The model and the dataset to measure it on, or the error that stops the evaluation before it starts."""
    if request.samples < 0:
        raise InvalidArgument(f"samples must be positive, not {request.samples}")
    manifest = MODELS.get(store, request.model_id)
    found = dataset.DATASETS.get(store, request.dataset_id or manifest.dataset_id)
    missing = [s for s in manifest.speakers if s not in found.stats.participants]
    if missing:
        raise InvalidArgument(f"dataset {found.id!r} holds no messages of {', '.join(map(repr, missing))}, "
                              f"whom model {manifest.id!r} speaks as")
    return manifest, found


def evaluate_model(store: Store, request: Request, *, cache_dir: Path, progress: Callable[[Progress], None]) -> Result:
    """Measure the model on the dataset's held-out turns; keep the figures as the model's on its own dataset."""
    manifest, found = check(store, request)
    dataset_id, recipe = found.id, manifest.recipe
    progress(Progress(message=f"loading dataset {dataset_id}"))
    split = split_sessions(dataset.conversations(store, found), manifest.speakers,
                           session_gap=timedelta(seconds=recipe.session_gap_s), held_out_fraction=recipe.held_out_fraction)
    if not split.turns(manifest.speakers)[1]:
        raise FailedPrecondition(f"dataset {dataset_id!r} holds out no turns of {', '.join(manifest.speakers)} "
                                 "to answer (too few messages of them)")
    progress(Progress(message=f"loading model {manifest.id}"))
    model, tokenizer = load_model(store, manifest, cache_dir)
    transcript = Transcript(tokenizer, manifest.speakers, manifest.transcript)  # rendered as the model was trained
    seed = recipe.seed if request.seed is None else request.seed
    limit = request.samples or LIMIT

    def measure(who: str, m: Any) -> list[FidelityFigures]:
        def step(done: int, total: int) -> None:
            progress(Progress(message=f"{who}: writing replies", done=done, total=total))

        return [fidelity.figures(f, dataset_id)
                for f in fidelity.evaluate(m, tokenizer, transcript, split, manifest.speakers, limit=limit, seed=seed,
                                           progress=step)]

    figures = measure("model", model)
    base: list[FidelityFigures] = []
    if request.include_base:
        progress(Progress(message="loading the base model alone"))
        with _base_alone(store, manifest, model, cache_dir) as alone:
            base = measure("base model alone", alone)
    saved = dataset_id == manifest.dataset_id and MODELS.find(store, manifest.id) is not None
    if saved:
        update: dict[str, Any] = {"fidelity": figures}
        if request.include_base:
            update["base_fidelity"] = base
        MODELS.put(store, manifest.model_copy(update=update))
    return Result(fidelity=figures, base_fidelity=base, saved=saved)


# --- the child process ----------------------------------------------------------------------


def _line(**kwargs: Any) -> None:
    sys.stdout.write(json.dumps(kwargs, allow_nan=True) + "\n")
    sys.stdout.flush()


def main() -> int:
    """Evaluate the request on stdin with the settings in `DOPPEL_*`; JSON lines on stdout."""
    torch.set_num_threads(max(1, int(os.environ.get("DOPPEL_EVAL_THREADS", "0")) or torch.get_num_threads()))
    settings = Settings()
    store = open_store(settings.store_url)
    try:
        result = evaluate_model(store, Request.model_validate_json(sys.stdin.read()), cache_dir=settings.home / "cache",
                                progress=lambda p: _line(progress=p.model_dump()))
        _line(result=result.model_dump())
    except DoppelError as e:
        _line(error={"kind": type(e).__name__, "message": str(e)})
    except torch.OutOfMemoryError as e:
        _line(error={"kind": "OutOfMemory", "message": f"the evaluation ran out of memory: {e}"})
    except Exception as e:  # noqa: BLE001 - whatever it was, the caller gets it as an internal error
        _line(error={"kind": "Internal", "message": f"the evaluation failed: {type(e).__name__}: {e}"})
    finally:
        store.close()
    return 0


def _error(kind: str, message: str) -> DoppelError:
    found = getattr(errors, kind, None)
    cls = found if isinstance(found, type) and issubclass(found, DoppelError) else Internal
    try:
        return cls(message)
    except TypeError:  # an error class with other arguments (ParseError): keep the message
        return Internal(message)


async def run(request: Request, settings: Settings) -> AsyncIterator[Progress | Result]:
    """Run one evaluation in a child process: its progress, then its result; raises its error.
    The child is killed if the caller stops reading (a cancelled call)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.trainer.evaluation", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, **settings.environment()},
        limit=1 << 26,  # a result line holds every figure and reply pair
    )
    assert child.stdin and child.stdout and child.stderr
    stderr = asyncio.ensure_future(child.stderr.read())
    ended = False
    try:
        child.stdin.write(request.model_dump_json().encode())
        await child.stdin.drain()
        child.stdin.close()
        async for raw in child.stdout:
            line = json.loads(raw)
            if "progress" in line:
                yield Progress.model_validate(line["progress"])
            elif "result" in line:
                ended = True
                yield Result.model_validate(line["result"])
            elif "error" in line:
                ended = True
                raise _error(**line["error"])
        if not ended:
            code = await child.wait()
            tail = (await stderr).decode(errors="replace").strip().splitlines()[-5:]
            raise Internal(f"the evaluation process ended with code {code} before its result: {' / '.join(tail)}")
    finally:
        if child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
        stderr.cancel()


if __name__ == "__main__":
    sys.exit(main())
