"""Entry point of the inference service: its gRPC bindings for `doppel serve inference`.

A thin adapter: models come from the cache (`cache`), requests become engine jobs (`modes`),
and each job's text deltas cross from the engine thread to the call through an asyncio queue
(`JobStream`). A call that ends early (cancelled, deadline) cancels its job, which frees its
rows at the engine's next step.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import torch

from doppel.config import Settings
from doppel.errors import FailedPrecondition
from doppel.rpc.server import Service
from doppel.store import Store, open_store
from doppel.transcript import Transcript, Turn
from doppel.v1 import inference_pb2 as inf
from doppel.v1 import inference_pb2_grpc

from .cache import ModelCache, Served
from .engine import Finish, Job
from .modes import Persona, chat_job, complete_job, split_speaker, turn_job
from .sampler import Sampling

FINISH = {
    Finish.LENGTH: inf.FINISH_REASON_LENGTH,
    Finish.STOP: inf.FINISH_REASON_STOP,
    Finish.END_OF_TURN: inf.FINISH_REASON_END_OF_TURN,
    Finish.CANCELLED: inf.FINISH_REASON_CANCELLED,
}
DEFAULT_TURNS = 10


def sampling_from_proto(p: Any, *, n: bool = True) -> Sampling:
    fields = {k: getattr(p, k) for k in ("temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens", "seed") if p.HasField(k)}
    if n and p.HasField("n"):
        fields["n"] = p.n
    return Sampling(**fields, stop=tuple(p.stop))


class JobStream:
    """A job's deltas, from the engine thread to the event loop: (index, delta, finish) tuples.

    Deltas pile up under a lock and the loop is woken once per pile, not once per token, and at
    most once per `PILE_S`: a stream sends one message per candidate for what arrived since its
    last message, so 64 streams cost the loop (and the GIL the engine needs) a few messages a
    step instead of one per token each. The first pile goes at once.
    """

    PILE_S = 0.04

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self._lock = threading.Lock()
        self._pending: list[tuple[int, str, Finish | None]] = []
        self._woken = False

    def sink(self, index: int, delta: str, finish: Finish | None) -> None:
        with self._lock:
            self._pending.append((index, delta, finish))
            if self._woken:
                return
            self._woken = True
        try:
            self.loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the loop is closed: the server stopped and nobody waits for this job
            pass

    async def _piles(self) -> AsyncIterator[list[tuple[int, str, Finish | None]]]:
        while True:
            await self._ready.wait()
            with self._lock:
                pile, self._pending, self._woken = self._pending, [], False
                self._ready.clear()
            yield pile
            await asyncio.sleep(self.PILE_S)

    async def events(self, job: Job) -> AsyncIterator[tuple[int, str, Finish | None]]:
        """Until each of the job's candidates finished, what each one added since the last event
        (its deltas merged); the job is cancelled if the caller stops early."""
        left = job.sampling.n
        try:
            async for pile in self._piles():
                merged: dict[int, tuple[list[str], Finish | None]] = {}
                for index, delta, finish in pile:
                    parts, _ = merged.setdefault(index, ([], None))
                    parts.append(delta)
                    if finish is not None:
                        merged[index] = (parts, finish)
                        left -= 1
                for index, (parts, finish) in merged.items():
                    yield index, "".join(parts), finish
                if not left:
                    break
        finally:
            if left:
                job.cancel()
        if job.error:
            raise FailedPrecondition(job.error)


async def _texts(stream: JobStream, job: Job) -> list[tuple[str, Finish]]:
    parts: dict[int, list[str]] = {}
    ends: dict[int, Finish] = {}
    async for index, delta, finish in stream.events(job):
        parts.setdefault(index, []).append(delta)
        if finish is not None:
            ends[index] = finish
    return [("".join(parts.get(k, [])).strip(), ends.get(k, Finish.CANCELLED)) for k in range(job.sampling.n)]


def _turns(turns: Any) -> list[Turn]:
    return [Turn(t.speaker, t.text) for t in turns]


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Thin adapter from `doppel.v1.InferenceService` to the inference core."""

    def __init__(self, settings: Settings, store: Store | None = None):
        self.settings = settings
        if settings.inference_threads:
            torch.set_num_threads(settings.inference_threads)
        self.store = store or open_store(settings.store_url)
        self.cache = ModelCache(
            self.store, cache_dir=settings.home / "cache", budget_bytes=_budget(settings),
            max_batch=settings.inference_max_batch, queue_capacity=settings.inference_queue,
        )
        self._personas: dict[tuple[str, int], Persona] = {}

    def close(self) -> None:
        self.cache.close()

    @asynccontextmanager
    async def _serving(self, model_id: str) -> AsyncIterator[tuple[Served, Persona]]:
        """The model and its persona, kept from eviction while the call's jobs run; a model not
        loaded yet loads in a thread, one already loaded costs the loop no thread hop."""
        served = self.cache.hold_if_loaded(model_id) or await asyncio.to_thread(self.cache.hold, model_id)
        try:
            yield served, self._persona(served)
        finally:
            self.cache.release(model_id)

    def _persona(self, served: Served) -> Persona:
        key = (served.model_id, id(served))
        if key not in self._personas:
            m = served.manifest
            config = served.engine.model.config
            positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 2048)
            self._personas = {k: v for k, v in self._personas.items() if k[0] != served.model_id}
            self._personas[key] = Persona(served.model_id, list(m.speakers), list(m.participants),
                                          Transcript(served.tokenizer, m.speakers), int(positions), served.adapter)
        return self._personas[key]

    async def _run(self, served: Served, job: Job, stream: JobStream) -> list[tuple[str, Finish]]:
        served.engine.submit(job)
        return await _texts(stream, job)

    async def Chat(self, request, context):
        async with self._serving(request.model_id) as (served, p):
            speaker = request.as_speaker or p.speakers[0]
            stream = JobStream()
            job = chat_job(p, _turns(request.history), speaker, request.user_speaker,
                           sampling_from_proto(request.sampling), stream.sink)
            texts = await self._run(served, job, stream)
        candidates = [inf.Candidate(text=t, tokens=job.tokens.get(k, 0), finish_reason=FINISH[f]) for k, (t, f) in enumerate(texts)]
        return inf.ChatResponse(speaker=speaker, candidates=candidates)

    async def ChatStream(self, request, context):
        r = request.chat
        async with self._serving(r.model_id) as (served, p):
            stream = JobStream()
            job = chat_job(p, _turns(r.history), r.as_speaker or p.speakers[0], r.user_speaker,
                           sampling_from_proto(r.sampling), stream.sink)
            served.engine.submit(job)
            started: set[int] = set()
            async for index, delta, finish in stream.events(job):
                if index not in started:  # the reply follows `Name:`: drop the space that opens it
                    delta = delta.lstrip()
                    if delta or finish is not None:
                        started.add(index)
                if delta or finish is not None:
                    yield inf.ChatStreamResponse(index=index, delta=delta, finish_reason=FINISH[finish] if finish else 0)

    async def Complete(self, request, context):
        async with self._serving(request.model_id) as (served, p):
            stream = JobStream()
            job = complete_job(p, request.prompt, request.as_speaker, sampling_from_proto(request.sampling), stream.sink)
            served.engine.submit(job)
            parts: dict[int, list[str]] = {}
            ends: dict[int, Finish] = {}
            async for index, delta, finish in stream.events(job):  # raw continuations keep their leading space
                parts.setdefault(index, []).append(delta)
                if finish is not None:
                    ends[index] = finish
        return inf.CompleteResponse(candidates=[
            inf.Candidate(text="".join(parts.get(k, [])), tokens=job.tokens.get(k, 0), finish_reason=FINISH[ends.get(k, Finish.CANCELLED)])
            for k in range(job.sampling.n)
        ])

    async def Simulate(self, request, context):
        async with self._serving(request.model_id) as (served, p):
            async for turn in self._simulate(request, served, p):
                yield turn

    async def _simulate(self, request: Any, served: Served, p: Persona) -> AsyncIterator[inf.SimulateResponse]:
        names = [p.check_speaker(n, "participant") for n in request.participants] or list(p.speakers)
        history = _turns(request.opening)
        sampling = sampling_from_proto(request.sampling, n=False)
        first = p.check_speaker(request.first_speaker, "first_speaker") if request.first_speaker else ""
        turns = request.turns or DEFAULT_TURNS
        for index in range(turns):
            speaker = first if index == 0 else ""
            opening = request.first_prompt if index == 0 else ""
            if not speaker and not history and opening:
                speaker = names[0]
            stream = JobStream()
            job = turn_job(p, history, names, speaker, opening, sampling, stream.sink)
            [(text, finish)] = await self._run(served, job, stream)
            if speaker:
                text = f"{opening} {text}".strip() if opening else text
            else:
                found, text = split_speaker(text, names)
                speaker = found or names[index % len(names)]
            turn = Turn(speaker, text)
            history.append(turn)
            yield inf.SimulateResponse(index=index, turn=inf.Turn(speaker=speaker, text=text, timestamp=_now()),
                                       finish_reason=FINISH[finish])
            if finish is Finish.CANCELLED or any(s in text for s in request.stop):
                return

    async def ListServedModels(self, request, context):
        listing = await asyncio.to_thread(self.cache.listing)
        return inf.ListServedModelsResponse(models=[
            _served_proto(m, s) for m, s in listing if s is not None or not request.loaded_only
        ])

    async def LoadModel(self, request, context):
        served, seconds = await asyncio.to_thread(self.cache.load, request.model_id)
        out = inf.LoadModelResponse(model=_served_proto(served.manifest, served))
        out.load_time.FromMilliseconds(int(seconds * 1000))
        return out

    async def UnloadModel(self, request, context):
        return inf.UnloadModelResponse(was_loaded=await asyncio.to_thread(self.cache.unload, request.model_id))

    async def GetEngineStats(self, request, context):
        s = self.cache.engine_stats()
        return inf.GetEngineStatsResponse(
            queue_capacity=self.settings.inference_queue, loaded_models=len(self.cache.loaded()),
            cache_bytes=self.cache.bytes, cache_budget_bytes=self.cache.budget_bytes,
            forward_passes=s.forward_passes, tokens_generated=s.tokens_generated,
            requests_completed=s.requests_completed, running=s.running, queued=s.queued,
        )


def _now():
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.FromDatetime(datetime.now(UTC))
    return ts


def _served_proto(m: Any, s: Served | None) -> inf.ServedModel:
    out = inf.ServedModel(model_id=m.id, base_model=m.base_model, adapter=m.method == "lora", loaded=s is not None,
                          memory_bytes=s.memory_bytes if s else 0, speakers=m.speakers, participants=m.participants)
    if s is not None and s.last_used is not None:
        out.last_used.FromDatetime(s.last_used)
    return out


def _budget(settings: Settings) -> int:
    if settings.inference_cache_mb:
        return settings.inference_cache_mb * 2**20
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free * 0.8)
    return 4096 * 2**20


def build(settings: Settings) -> list[Service]:
    """The services this process serves."""
    return [Service.of(inf, inference_pb2_grpc, "InferenceService", InferenceServicer(settings))]

