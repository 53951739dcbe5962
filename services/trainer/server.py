"""Entry point of the trainer service: its gRPC bindings for `doppel serve trainer`.

A thin adapter: requests are checked by `checks`, runs are created, read and cancelled through
`orchestrator` (Prefect), progress and models are read from the store (`runs`, `models`). The
process also serves the `train-persona` deployment (`runner`), so a run started here, from the
CLI or from the Prefect dashboard is picked up by the same runner.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from doppel import enums, model, paging
from doppel.bases import BaseManifest
from doppel.config import Settings
from doppel.errors import InvalidArgument, NotFound
from doppel.files import Received, sha256_of
from doppel.model import Recipe
from doppel.rpc.server import Service
from doppel.store import STARTUP_WAIT_S, Store, open_store
from doppel.v1 import trainer_pb2, trainer_pb2_grpc

from . import basemodels, evaluation, export, finetune, fitting, hub, models, registry, runs, uploads
from .checks import check_request
from .convert import (
    STATE_NAMES,
    base_model_to_proto,
    base_models_to_proto,
    evaluation_to_proto,
    event_to_proto,
    model_to_proto,
    request_from_spec,
    run_to_proto,
)
from .orchestrator import FlowRunView, Orchestrator, dashboard_url, merge
from .runner import DeploymentRunner
from .runs import TERMINAL, Event, RunRecord

log = logging.getLogger(__name__)
POLL_S = 0.5  # how often a watch looks for new events
STATE_S = 5.0  # how often a watch asks Prefect for the run's state (each ask costs the Prefect server a query)
PROGRESS_S = 0.25  # how often a pull reports its byte count
EXPORT_CHUNK = 1 << 20  # bytes of an exported file a message carries
DEFAULTS = Recipe(dataset_id="", speakers=[], base_model="", method="lora", preset="default", model_name="")


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """Thin adapter from `doppel.v1.TrainerService` to the trainer core."""

    def __init__(self, settings: Settings, store: Store | None = None, *, serve_runs: bool = True):
        self.settings = settings
        self.store = store or open_store(settings.store_url, wait_s=STARTUP_WAIT_S)
        self.prefect = Orchestrator(settings.prefect_api_url)
        self.runner = DeploymentRunner(settings) if serve_runs else None
        self._evaluating = asyncio.Lock()  # one evaluation at a time: each loads a whole model
        if self.runner:
            self.runner.start()
            if settings.prepare_base:
                threading.Thread(target=self._prepare_base, name="prepare-base", daemon=True).start()

    def _prepare_base(self) -> None:
        """The default base made ready in the background (a run that needs it meanwhile waits, under the same lock)."""
        try:
            log.info("the default base model is ready: %s", basemodels.prepare_default(self.store, self.settings.home / "cache"))
        except Exception as e:  # noqa: BLE001 - a background nicety: a first run tries again, and says why it fails
            log.warning("could not prepare the default base model: %s", e)

    def close(self) -> None:
        if self.runner:
            self.runner.stop()

    def _run(self, record: RunRecord) -> trainer_pb2.Run:
        return run_to_proto(record, dashboard_url(self.settings.dashboard_url(), record.id))

    async def _record(self, run_id: str, view: FlowRunView | None = None) -> RunRecord:
        record = await asyncio.to_thread(runs.find_record, self.store, run_id) if run_id else None
        view = view or await self.prefect.read(run_id)
        if view is None:
            if record is None:
                raise NotFound(f"run {run_id!r} not found")
            return record
        return merge(record, view)

    async def StartRun(self, request, context):
        checked = await asyncio.to_thread(check_request, self.store, request_from_spec(request.spec))
        view = await self.prefect.create(checked.request)
        record = merge(None, view)
        record.recipe = checked.recipe
        return trainer_pb2.StartRunResponse(run=self._run(record))

    async def GetRun(self, request, context):
        return trainer_pb2.GetRunResponse(run=self._run(await self._record(request.run_id)))

    async def ListRuns(self, request, context):
        size, offset = paging.size(request.page_size), paging.offset(request.page_token)
        unknown = [s for s in request.states if s not in STATE_NAMES]
        if unknown:
            raise InvalidArgument(f"unknown run states {unknown}; use {', '.join(f'{v} ({k})' for k, v in STATE_NAMES.items())}")
        states = {STATE_NAMES[s] for s in request.states}
        out: list[trainer_pb2.Run] = []
        while len(out) < size:
            views = await self.prefect.list(limit=100, offset=offset)
            for k, view in enumerate(views):
                record = await self._record(view.id, view)
                if (not states or record.state in states) and (
                    not request.dataset_id or record.request.dataset_id == request.dataset_id
                ):
                    out.append(self._run(record))
                    if len(out) == size:
                        offset += k + 1
                        more = bool(await self.prefect.list(limit=1, offset=offset))
                        return trainer_pb2.ListRunsResponse(runs=out, next_page_token=str(offset) if more else "")
            if len(views) < 100:
                break
            offset += len(views)
        return trainer_pb2.ListRunsResponse(runs=out)

    async def CancelRun(self, request, context):
        await self.prefect.cancel(request.run_id)
        return trainer_pb2.CancelRunResponse(run=self._run(await self._record(request.run_id)))

    async def WatchRun(self, request, context) -> AsyncIterator[trainer_pb2.WatchRunResponse]:
        record = await self._record(request.run_id)
        seen = await asyncio.to_thread(runs.read_events, self.store, record.id)
        last = seen[-1] if seen else None
        if request.from_start:
            for e in seen:
                yield event_to_proto(e)
        elif last is not None:
            yield event_to_proto(last)
        if last is None:
            yield event_to_proto(Event(state=record.state, step=record.step, total=record.total, message=record.message))
        after = last.seq if last else -1
        asked = 0.0
        while True:
            # the run's own events say how it goes; Prefect is asked every STATE_S (and when they say
            # it ended), for a run whose process died without a word
            view, ended = None, False
            if (last is not None and last.state in TERMINAL) or time.monotonic() - asked >= STATE_S:
                view, asked = await self.prefect.read(record.id), time.monotonic()
                ended = view is None or view.state in TERMINAL
            for e in await asyncio.to_thread(runs.read_events, self.store, record.id, after):
                after, last = e.seq, e
                yield event_to_proto(e)
            if ended:
                final = await self._record(record.id, view)
                if last is None or last.state != final.state:  # the process died or was killed: say how it ended
                    yield event_to_proto(Event(time=final.finished_at or datetime.now(UTC), state=final.state,
                                               step=final.step, total=final.total, message=final.message))
                return
            await asyncio.sleep(POLL_S)

    async def ListBaseModels(self, request, context):
        infos = await asyncio.to_thread(basemodels.catalog, self.store)
        device = fitting.device(finetune.device_for())
        return base_models_to_proto(infos, device, batch_size=DEFAULTS.batch_size, block_size=DEFAULTS.block_size)

    async def AddBaseModel(self, request_iterator, context):
        cache = self.settings.home / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=".base-upload-") as tmp:
            received = await _receive(request_iterator, Received(Path(tmp)))
            manifest = await asyncio.to_thread(uploads.add, self.store, received.files, name=received.name,
                                               source=received.source, cache_dir=cache)
        return trainer_pb2.AddBaseModelResponse(base_model=await self._base(manifest.id))

    async def _base(self, name: str) -> trainer_pb2.BaseModel:
        info = next(i for i in await asyncio.to_thread(basemodels.catalog, self.store) if i.name == name)
        return base_model_to_proto(info, batch_size=DEFAULTS.batch_size, block_size=DEFAULTS.block_size)

    async def PullBaseModel(self, request, context) -> AsyncIterator[trainer_pb2.PullBaseModelResponse]:
        entry = registry.BY_NAME.get(request.model)
        hub_id = entry.hub_id if entry else request.model
        name = request.name or (entry.name if entry else "")
        loop, events = asyncio.get_running_loop(), asyncio.Queue[hub.PullProgress | None]()
        stop = threading.Event()  # the caller went away: the download stops with it

        def report(p: hub.PullProgress) -> None:
            loop.call_soon_threadsafe(events.put_nowait, p)

        def work() -> BaseManifest:
            try:
                return hub.pull(self.store, hub_id, cache_dir=self.settings.home / "cache", revision=request.revision or None,
                                name=name or None, progress=report, should_stop=stop.is_set)
            finally:
                loop.call_soon_threadsafe(events.put_nowait, None)

        pulling = asyncio.ensure_future(asyncio.to_thread(work))
        last = 0.0
        try:
            while (p := await events.get()) is not None:
                if p.done_bytes < p.total_bytes and time.monotonic() - last < PROGRESS_S:
                    continue  # a byte count at most every PROGRESS_S; every message and the end get through
                last = time.monotonic()
                yield trainer_pb2.PullBaseModelResponse(message=p.message, done_bytes=p.done_bytes, total_bytes=p.total_bytes)
        finally:
            stop.set()
            pulling.add_done_callback(lambda f: f.cancelled() or f.exception())  # a caller that left reads no error
        manifest = await pulling
        yield trainer_pb2.PullBaseModelResponse(message=f"stored as {manifest.id}", done_bytes=manifest.size_bytes,
                                                total_bytes=manifest.size_bytes, base_model=await self._base(manifest.id))

    async def ListModels(self, request, context):
        page, token = await asyncio.to_thread(model.MODELS.page, self.store, request.page_size, request.page_token)
        return trainer_pb2.ListModelsResponse(models=[model_to_proto(m) for m in page], next_page_token=token)

    async def GetModel(self, request, context):
        return trainer_pb2.GetModelResponse(model=model_to_proto(await asyncio.to_thread(model.MODELS.get, self.store, request.model_id)))

    async def ExportModel(self, request, context) -> AsyncIterator[trainer_pb2.ExportModelResponse]:
        """The export is made in a folder under the cache, then sent file by file, and removed."""
        fmt = enums.name(trainer_pb2.ModelExportFormat, request.format)
        if fmt not in export.FORMATS:
            raise InvalidArgument(f"format must be one of {', '.join(export.FORMATS)}, not {fmt!r}")
        manifest = await asyncio.to_thread(model.MODELS.get, self.store, request.model_id)
        cache = self.settings.home / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=".export-") as tmp:
            out = Path(tmp) / "export"
            files = await asyncio.to_thread(export.export, self.store, manifest, fmt, out, cache_dir=cache,
                                            dtype=request.dtype or "f32", quant=request.quant)
            paths = [out / f for f in files]
            yield trainer_pb2.ExportModelResponse(summary=trainer_pb2.ExportSummary(
                files=len(files), total_bytes=sum(p.stat().st_size for p in paths)))
            for name, path in zip(files, paths, strict=True):
                yield trainer_pb2.ExportModelResponse(file=trainer_pb2.UploadedFile(
                    path=name, size_bytes=path.stat().st_size, sha256=await asyncio.to_thread(sha256_of, path)))
                with path.open("rb") as f:
                    while chunk := await asyncio.to_thread(f.read, EXPORT_CHUNK):
                        yield trainer_pb2.ExportModelResponse(chunk=chunk)

    async def ImportModel(self, request_iterator, context):
        cache = self.settings.home / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache, prefix=".model-upload-") as tmp:
            received = await _receive(request_iterator, Received(Path(tmp), what=""))
            made = await asyncio.to_thread(export.import_model, self.store, Path(tmp), name=received.name)
        return trainer_pb2.ImportModelResponse(model=model_to_proto(made))

    async def DeleteModel(self, request, context):
        """The model and the run that made it, everywhere: Prefect first (if it is down nothing is
        deleted and the call can be repeated), then the run's objects and the model's in the store."""
        manifest = await asyncio.to_thread(model.MODELS.get, self.store, request.model_id)
        n = await self.prefect.delete(manifest.run_id) if manifest.run_id else 0
        n += await asyncio.to_thread(models.delete, self.store, request.model_id)
        if manifest.run_id:
            n += await asyncio.to_thread(runs.delete, self.store, manifest.run_id)
        return trainer_pb2.DeleteModelResponse(objects_deleted=n)

    async def EvaluateModel(self, request, context) -> AsyncIterator[trainer_pb2.EvaluateModelResponse]:
        asked = evaluation.Request(model_id=request.model_id, dataset_id=request.dataset_id, samples=request.samples,
                                   seed=request.seed if request.HasField("seed") else None,
                                   include_base=request.include_base)
        await asyncio.to_thread(evaluation.check, self.store, asked)  # a bad request fails before a process starts
        if self._evaluating.locked():
            yield trainer_pb2.EvaluateModelResponse(message="waiting for another evaluation to end")
        async with self._evaluating:
            async for item in evaluation.run(asked, self.settings):
                yield evaluation_to_proto(item)


async def _receive(requests: AsyncIterator[Any], received: Received) -> Received:
    """An upload's parts (a header, then each file's header and bytes) written by `received`, checked."""
    try:
        async for r in requests:
            part = r.WhichOneof("part")
            if part == "header":
                received.header(r.header.name, getattr(r.header, "source", ""))
            elif part == "file":
                received.start(r.file.path, r.file.size_bytes, r.file.sha256)
            else:
                received.write(r.chunk)
        received.finish()
    finally:
        received.close()
    return received


def build(settings: Settings) -> list[Service]:
    """The services this process serves."""
    return [Service.of(trainer_pb2, trainer_pb2_grpc, "TrainerService", TrainerServicer(settings))]
