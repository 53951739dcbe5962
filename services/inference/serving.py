"""The inference core: requests in, events out, no gRPC.

`Serving.start(call, request)` answers through `emit(call, event)`: the deltas of every
candidate (or the turns of a simulation), then `Done` with the request's typed result, or
`Failed`. Work never blocks the caller's thread for long, because that thread is the one reading
requests: a request for a loaded model is tokenised and queued at once (the engine thread does
the rest), a model load or a query runs in a small pool, and a simulation, which waits for each
turn before writing the next, has a thread of its own.

Errors keep their meaning: a `DoppelError` is the caller's to hear as it is; an out-of-memory
becomes `OutOfMemory`; anything else is a bug, logged here and reported as `Internal`.

`InProcessEngine` is the `EngineClient` over a `Serving` in this process; the service runs the
same core in a process of its own (`engine_process`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from doppel.config import Settings
from doppel.errors import DoppelError, Internal, OutOfMemory
from doppel.store import Store, open_store
from doppel.transcript import Transcript, Turn

from . import modes
from .cache import ModelCache, Served
from .client import RoutingClient
from .engine import Job
from .modes import Persona, chat_job, complete_job, split_speaker, turn_job
from .outbox import Outbox
from .protocol import (
    ChatArgs,
    CompleteArgs,
    Delta,
    Done,
    Event,
    Failed,
    Finish,
    GetStats,
    Health,
    Healthy,
    Listing,
    ListModels,
    Loaded,
    LoadModel,
    Request,
    Result,
    Sampling,
    ServedInfo,
    SimulateArgs,
    Spoke,
    TurnDone,
    Unloaded,
    UnloadModel,
)

log = logging.getLogger(__name__)
DEFAULT_TURNS = 10
Emit = Callable[[int, Event], None]


@dataclass
class _Work:
    """A call the core is working on."""

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
        self._calls: dict[int, _Work] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(8, thread_name_prefix="inference-load")

    def start(self, call_id: int, request: Request) -> None:
        call = _Work(call_id)
        with self._lock:
            self._calls[call_id] = call
        match request:
            case ChatArgs() | CompleteArgs():
                if (served := self.cache.hold_if_loaded(request.model_id)) is not None:
                    self._guard(call, self._generate, request, served)
                else:
                    self._pool.submit(self._guard, call, self._generate, request, None)
            case SimulateArgs():
                threading.Thread(target=self._guard, args=(call, self._simulate, request), daemon=True,
                                 name=f"simulate-{call_id}").start()
            case Health():
                self._end(call, Done(Healthy(os.getpid(), len(self.cache.loaded()))))
            case _:
                self._pool.submit(self._guard, call, self._answer, request)

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

    def _end(self, call: _Work, event: Done | Failed) -> None:
        with self._lock:
            self._calls.pop(call.id, None)
        self.emit(call.id, event)

    def _guard(self, call: _Work, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(call, *args)`; an error it raises ends the call as `Failed`."""
        try:
            fn(call, *args)
        except Exception as e:  # noqa: BLE001 - a bug: logged here, and the caller hears of it
            self._end(call, Failed(failure(e, f"inference call {call.id}")))

    def _answer(self, call: _Work, request: ListModels | LoadModel | UnloadModel | GetStats) -> None:
        result: Result
        match request:
            case ListModels():
                result = Listing(tuple(_info(m, s) for m, s in self.cache.listing()))
            case LoadModel(model_id):
                served, seconds = self.cache.load(model_id)
                result = Loaded(_info(served.manifest, served), seconds)
            case UnloadModel(model_id):
                result = Unloaded(self.cache.unload(model_id))
            case GetStats():
                result = self.cache.stats()
        self._end(call, Done(result))

    def _generate(self, call: _Work, request: ChatArgs | CompleteArgs, served: Served | None) -> None:
        """Queue a chat or completion job; its sink reports each candidate and ends the call."""
        served = served or self.cache.hold(request.model_id)
        job: Job | None = None
        left = request.sampling.n

        def sink(index: int, delta: str, finish: Finish | None) -> None:
            nonlocal left
            assert job is not None
            if finish is None:
                return self.emit(call.id, Delta(index, delta))
            self.emit(call.id, Delta(index, delta, finish, job.tokens.get(index, 0), len(job.prompt_ids)))
            left -= 1
            if not left:
                self.cache.release(request.model_id)
                self._end(call, Failed(job.error) if job.error else Done(result))

        try:
            p = self._persona(served)
            if isinstance(request, ChatArgs):
                speaker = request.speaker or p.speakers[0]
                result: Spoke | None = Spoke(speaker)
                job = chat_job(p, request.history, speaker, request.user, request.sampling, sink)
            else:
                result = None
                job = complete_job(p, request.prompt, request.speaker, request.sampling, sink)
            job.cancelled = call.cancelled
            served.engine.submit(job)
        except BaseException:
            self.cache.release(request.model_id)
            raise

    def _simulate(self, call: _Work, request: SimulateArgs) -> None:
        """Turn after turn, each written once the one before it is done."""
        served = self.cache.hold(request.model_id)
        try:
            p = self._persona(served)
            names = p.simulated(request.participants, request.first_speaker)
            history = list(request.opening)
            for index in range(request.turns or DEFAULT_TURNS):
                takers = modes.takers(history, names)
                speaker = request.first_speaker if index == 0 else ""
                opening = request.first_prompt if index == 0 else ""
                if opening and not speaker:  # the prompt opens somebody's turn
                    speaker = modes.rotation(history, takers)
                sample = partial(self._written, call, served, p, history, names, takers, speaker, opening,
                                 request.sampling, index)
                turn = modes.fresh_turn(sample, history, [speaker] if speaker else takers)
                history.append(Turn(turn.speaker, turn.text))
                self.emit(call.id, TurnDone(index, turn.speaker, turn.text, turn.finish))
                if turn.finish is Finish.CANCELLED or any(s in turn.text for s in request.stop):
                    break
        finally:
            self.cache.release(request.model_id)
        self._end(call, Done())

    def _written(self, call: _Work, served: Served, p: Persona, history: list[Turn], names: list[str],
                 takers: list[str], speaker: str, opening: str, sampling: Sampling, index: int,
                 attempt: int) -> modes.Written:
        """Try `attempt` at turn `index`: by `speaker`, its text opening with `opening`, or (no `speaker`)
        by whichever of `takers` the model names."""
        text, finish = self._turn(call, served, p, history, takers, speaker, opening,
                                  modes.resampling(sampling, index, attempt))
        if speaker:
            return modes.Written(speaker, f"{opening} {text}".strip() if opening else text, finish)
        found, text = split_speaker(text, names)
        return modes.Written(found or modes.rotation(history, takers), text, finish)

    def _turn(self, call: _Work, served: Served, p: Persona, history: list[Turn], names: list[str], speaker: str,
              opening: str, sampling: Sampling) -> tuple[str, Finish]:
        parts: list[str] = []
        ended: list[Finish] = []
        done = threading.Event()

        def sink(index: int, delta: str, finish: Finish | None) -> None:
            parts.append(delta)
            if finish is not None:
                ended.append(finish)
                done.set()

        job = turn_job(p, history, names, speaker, opening, sampling, sink)
        job.cancelled = call.cancelled
        served.engine.submit(job)
        done.wait()
        if job.error:
            raise job.error
        return "".join(parts).strip(), ended[0]

    def _persona(self, served: Served) -> Persona:
        key = (served.model_id, id(served))
        with self._lock:
            if key not in self._personas:
                m = served.manifest
                config = served.engine.model.config
                positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048
                self._personas = {k: v for k, v in self._personas.items() if k[0] != served.model_id}
                self._personas[key] = Persona(served.model_id, list(m.speakers), list(m.participants),
                                              Transcript(served.tokenizer, m.speakers, m.transcript), int(positions),
                                              served.adapter, m.dataset_id)
            return self._personas[key]


def _info(m: Any, s: Served | None) -> ServedInfo:
    return ServedInfo(m.id, m.base_model, m.is_adapter, tuple(m.speakers), tuple(m.participants),
                      loaded=s is not None, memory_bytes=s.memory_bytes if s else 0, last_used=s.last_used if s else None,
                      created=m.created_at, name=m.name)


def _budget(settings: Settings) -> int:
    if settings.inference_cache_mb:
        return settings.inference_cache_mb * 2**20
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free * 0.8)
    return 4096 * 2**20


def failure(e: Exception, where: str) -> DoppelError:
    """What the caller hears of an error: a `DoppelError` as it is, an out-of-memory as
    `OutOfMemory`, anything else as `Internal` (a bug, logged here with its traceback)."""
    if isinstance(e, DoppelError):
        return e
    if isinstance(e, torch.OutOfMemoryError):
        log.warning("%s ran out of memory: %s", where, e)
        return OutOfMemory(f"out of memory: {e}; retry with fewer or shorter candidates, or load fewer models")
    log.exception("%s failed", where)
    return Internal(f"{where} failed with {type(e).__name__}: {e} (a bug; the engine's log has the traceback)")


class InProcessEngine(RoutingClient):
    """The serving core in this process, as an `EngineClient`: for tests, and wherever the
    engine need not run beside the event loop in a process of its own."""

    def __init__(self, settings: Settings, store: Store | None = None):
        super().__init__()
        self._outbox = Outbox(self.deliver_soon, name="engine-outbox")
        self.serving = Serving(settings, store or open_store(settings.store_url), self._outbox.put)

    def _start(self, call_id: int, request: Request) -> None:
        self.serving.start(call_id, request)

    def _cancel(self, call_id: int) -> None:
        self.serving.cancel(call_id)

    def close(self) -> None:
        self.serving.close()
        self._outbox.close()
