"""The inference core as the engine process runs it: requests in, events out, no gRPC.

`Serving.start(call, request)` answers through `emit(call, event)`: the deltas of every
candidate, then `Done` (or `Failed`). Work never blocks the caller's thread for long, because
that thread is the one reading requests: a request for a loaded model is tokenised and queued
at once (the engine thread does the rest), a model load or a query runs in a small pool, and a
simulation, which waits for each turn before writing the next, has a thread of its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from doppel.config import Settings
from doppel.errors import DoppelError, FailedPrecondition
from doppel.store import Store
from doppel.transcript import Transcript, Turn

from .cache import ModelCache, Served
from .engine import Job
from .modes import Persona, chat_job, complete_job, split_speaker, turn_job
from .protocol import (
    ChatArgs,
    CompleteArgs,
    Delta,
    Done,
    EngineCounts,
    Event,
    Failed,
    Finish,
    Query,
    Request,
    ServedInfo,
    SimulateArgs,
    TurnDone,
)

log = logging.getLogger(__name__)
DEFAULT_TURNS = 10
Emit = Callable[[int, Event], None]


@dataclass
class _Call:
    id: int
    cancelled: threading.Event = field(default_factory=threading.Event)  # shared by the call's jobs


class Serving:
    """The model cache, the personas of its models, and the modes over them."""

    def __init__(self, settings: Settings, store: Store, emit: Emit):
        self.emit = emit
        self.cache = ModelCache(
            store, cache_dir=settings.home / "cache", budget_bytes=_budget(settings),
            max_batch=settings.inference_max_batch, queue_capacity=settings.inference_queue,
        )
        self._personas: dict[tuple[str, int], Persona] = {}
        self._calls: dict[int, _Call] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="inference-load")

    def start(self, call_id: int, request: Request) -> None:
        call = _Call(call_id)
        with self._lock:
            self._calls[call_id] = call
        if isinstance(request, Query):
            self._pool.submit(self._guard, call, self._query, request)
        elif isinstance(request, SimulateArgs):
            threading.Thread(target=self._guard, args=(call, self._simulate, request), daemon=True,
                             name=f"simulate-{call_id}").start()
        elif (served := self.cache.hold_if_loaded(request.model_id)) is not None:
            self._guard(call, self._generate, request, served)
        else:
            self._pool.submit(self._guard, call, self._generate, request, None)

    def cancel(self, call_id: int) -> None:
        """Stop a call: its rows leave the batch at the engine's next step."""
        with self._lock:
            call = self._calls.get(call_id)
        if call is not None:
            call.cancelled.set()

    def close(self) -> None:
        with self._lock:
            calls = list(self._calls.values())
        for call in calls:
            call.cancelled.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.cache.close()

    # --- calls -----------------------------------------------------------------------------

    def _end(self, call: _Call, event: Done | Failed) -> None:
        with self._lock:
            self._calls.pop(call.id, None)
        self.emit(call.id, event)

    def _guard(self, call: _Call, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(call, *args)`; an error it raises ends the call as `Failed`."""
        try:
            fn(call, *args)
        except DoppelError as e:
            self._end(call, Failed(e))
        except Exception as e:  # noqa: BLE001 - a bug: logged here, and the caller hears of it
            log.exception("inference call %d failed", call.id)
            self._end(call, Failed(FailedPrecondition(f"inference failed: {type(e).__name__}: {e}")))

    def _query(self, call: _Call, q: Query) -> None:
        if q.method == "listing":
            value: Any = [_info(m, s) for m, s in self.cache.listing()]
        elif q.method == "load":
            served, seconds = self.cache.load(q.model_id)
            value = (_info(served.manifest, served), seconds)
        elif q.method == "unload":
            value = self.cache.unload(q.model_id)
        elif q.method == "stats":
            s = self.cache.engine_stats()
            value = EngineCounts(s.forward_passes, s.tokens_generated, s.requests_completed, s.running, s.queued,
                                 len(self.cache.loaded()), self.cache.bytes, self.cache.budget_bytes)
        else:
            raise FailedPrecondition(f"unknown query {q.method!r}")
        self._end(call, Done(value))

    def _generate(self, call: _Call, request: ChatArgs | CompleteArgs, served: Served | None) -> None:
        """Queue a chat or completion job; its sink reports each candidate and ends the call."""
        served = served or self.cache.hold(request.model_id)
        job: Job | None = None
        left = request.sampling.n

        def sink(index: int, delta: str, finish: Finish | None) -> None:
            nonlocal left
            assert job is not None
            if finish is None:
                return self.emit(call.id, Delta(index, delta))
            self.emit(call.id, Delta(index, delta, finish, job.tokens.get(index, 0)))
            left -= 1
            if not left:
                self.cache.release(request.model_id)
                self._end(call, Failed(FailedPrecondition(job.error)) if job.error else Done(speaker))

        try:
            p = self._persona(served)
            if isinstance(request, ChatArgs):
                speaker = request.speaker or p.speakers[0]
                job = chat_job(p, request.history, speaker, request.user, request.sampling, sink)
            else:
                speaker = request.speaker
                job = complete_job(p, request.prompt, request.speaker, request.sampling, sink)
            job.cancelled = call.cancelled
            served.engine.submit(job)
        except BaseException:
            self.cache.release(request.model_id)
            raise

    def _simulate(self, call: _Call, request: SimulateArgs) -> None:
        """Turn after turn, each written once the one before it is done."""
        served = self.cache.hold(request.model_id)
        try:
            p = self._persona(served)
            names = [p.check_speaker(n, "participant") for n in request.participants] or list(p.speakers)
            first = p.check_speaker(request.first_speaker, "first_speaker") if request.first_speaker else ""
            history = list(request.opening)
            for index in range(request.turns or DEFAULT_TURNS):
                speaker = first if index == 0 else ""
                opening = request.first_prompt if index == 0 else ""
                if not speaker and not history and opening:
                    speaker = names[0]
                text, finish = self._turn(call, served, p, history, names, speaker, opening, request)
                if speaker:
                    text = f"{opening} {text}".strip() if opening else text
                else:
                    found, text = split_speaker(text, names)
                    speaker = found or names[index % len(names)]
                history.append(Turn(speaker, text))
                self.emit(call.id, TurnDone(index, speaker, text, finish))
                if finish is Finish.CANCELLED or any(s in text for s in request.stop):
                    break
        finally:
            self.cache.release(request.model_id)
        self._end(call, Done())

    def _turn(self, call: _Call, served: Served, p: Persona, history: list[Turn], names: list[str], speaker: str,
              opening: str, request: SimulateArgs) -> tuple[str, Finish]:
        parts: list[str] = []
        ended: list[Finish] = []
        done = threading.Event()

        def sink(index: int, delta: str, finish: Finish | None) -> None:
            parts.append(delta)
            if finish is not None:
                ended.append(finish)
                done.set()

        job = turn_job(p, history, names, speaker, opening, request.sampling, sink)
        job.cancelled = call.cancelled
        served.engine.submit(job)
        done.wait()
        if job.error:
            raise FailedPrecondition(job.error)
        return "".join(parts).strip(), ended[0]

    def _persona(self, served: Served) -> Persona:
        key = (served.model_id, id(served))
        with self._lock:
            if key not in self._personas:
                m = served.manifest
                config = served.engine.model.config
                positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 2048)
                self._personas = {k: v for k, v in self._personas.items() if k[0] != served.model_id}
                self._personas[key] = Persona(served.model_id, list(m.speakers), list(m.participants),
                                              Transcript(served.tokenizer, m.speakers), int(positions), served.adapter)
            return self._personas[key]


def _info(m: Any, s: Served | None) -> ServedInfo:
    return ServedInfo(m.id, m.base_model, m.method == "lora", tuple(m.speakers), tuple(m.participants),
                      loaded=s is not None, memory_bytes=s.memory_bytes if s else 0, last_used=s.last_used if s else None)


def _budget(settings: Settings) -> int:
    if settings.inference_cache_mb:
        return settings.inference_cache_mb * 2**20
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free * 0.8)
    return 4096 * 2**20
