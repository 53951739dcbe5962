"""The one way the gRPC front end reaches an engine: `EngineClient`, and the routing of events
that its two implementations share (`serving.InProcessEngine`, `remote.EngineProcess`).

A streaming call (`chat`, `complete`, `simulate`) is a `Call`: iterate it for piles of its
deltas or turns; its typed result is `call.result` once they end; a `Failed` event is raised as
its `DoppelError`. Leaving the iteration early aborts the call in the engine. Events reach a
call from any thread in piles (`outbox`), and wake its coroutine once a pile.
"""

from __future__ import annotations

import asyncio
import itertools
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable
from typing import Any, Generic, Protocol, TypeVar

from doppel.errors import DoppelError, Internal

from .outbox import Pile
from .protocol import (
    ChatArgs,
    CompleteArgs,
    Delta,
    Done,
    EngineStats,
    Event,
    Failed,
    GetStats,
    Health,
    Healthy,
    Listing,
    ListModels,
    Loaded,
    LoadModel,
    Request,
    ServedInfo,
    SimulateArgs,
    Spoke,
    TurnDone,
    Unloaded,
    UnloadModel,
)

E = TypeVar("E", Delta, TurnDone)
R = TypeVar("R")


class EngineClient(Protocol):
    """What the front end may ask of an engine."""

    def chat(self, request: ChatArgs) -> Call[Delta, Spoke]: ...
    def complete(self, request: CompleteArgs) -> Call[Delta, None]: ...
    def simulate(self, request: SimulateArgs) -> Call[TurnDone, None]: ...
    async def load(self, model_id: str) -> Loaded: ...
    async def unload(self, model_id: str) -> bool: ...
    async def listing(self) -> list[ServedInfo]: ...
    async def stats(self) -> EngineStats: ...
    async def health(self) -> Healthy: ...
    def abort(self, call_id: int) -> None: ...
    def close(self) -> None: ...


class Call(Generic[E, R]):
    """One call: started when iterated, aborted when left early."""

    def __init__(self, client: RoutingClient, request: Request, result: type[R]):
        self.id = next(client.ids)
        self.request, self.result_type = request, result
        self.result: R | None = None
        self._client = client
        self._events: list[Event] = []
        self._ready = asyncio.Event()
        self._ended = False

    def deliver(self, event: Event) -> None:
        self._events.append(event)
        self._ready.set()

    async def __aiter__(self) -> AsyncGenerator[list[E]]:
        self._client.begin(self)
        try:
            while not self._ended:
                await self._ready.wait()
                self._ready.clear()
                pile, self._events = self._events, []
                out: list[Any] = []
                for event in pile:
                    if isinstance(event, Failed):
                        self._ended = True
                        raise event.error
                    if isinstance(event, Done):
                        self._ended = True
                        self.result = self._check(event.result)
                    else:
                        out.append(event)
                if out:
                    yield out
        finally:
            self._client.forget(self.id)
            if not self._ended:
                self._client.abort(self.id)

    async def answer(self) -> R:
        """Run the call to its end; its result."""
        async for _ in self:
            pass
        return self.result  # type: ignore[return-value]  # checked by _check

    def _check(self, result: object) -> R:
        if not isinstance(result, self.result_type):
            raise Internal(f"the engine answered {type(result).__name__} to {type(self.request).__name__}, "
                           f"not {self.result_type.__name__}")
        return result


class RoutingClient(ABC):
    """An `EngineClient` over some way to start and cancel calls: it keeps the calls in flight
    and routes the piles delivered to it (from any thread) to them."""

    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self._calls: dict[int, Call[Any, Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @abstractmethod
    def _start(self, call_id: int, request: Request) -> None:
        """Have the engine start the call; raise `DoppelError` if it cannot."""

    @abstractmethod
    def _cancel(self, call_id: int) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    # --- EngineClient ---------------------------------------------------------------------

    def chat(self, request: ChatArgs) -> Call[Delta, Spoke]:
        return Call(self, request, Spoke)

    def complete(self, request: CompleteArgs) -> Call[Delta, None]:
        return Call(self, request, type(None))

    def simulate(self, request: SimulateArgs) -> Call[TurnDone, None]:
        return Call(self, request, type(None))

    async def load(self, model_id: str) -> Loaded:
        return await Call[Delta, Loaded](self, LoadModel(model_id), Loaded).answer()

    async def unload(self, model_id: str) -> bool:
        return (await Call[Delta, Unloaded](self, UnloadModel(model_id), Unloaded).answer()).was_loaded

    async def listing(self) -> list[ServedInfo]:
        return list((await Call[Delta, Listing](self, ListModels(), Listing).answer()).models)

    async def stats(self) -> EngineStats:
        return await Call[Delta, EngineStats](self, GetStats(), EngineStats).answer()

    async def health(self) -> Healthy:
        return await Call[Delta, Healthy](self, Health(), Healthy).answer()

    def abort(self, call_id: int) -> None:
        """Stop a call: its rows leave the batch at the engine's next step."""
        self.forget(call_id)
        self._cancel(call_id)

    # --- routing ------------------------------------------------------------------------

    def begin(self, call: Call[Any, Any]) -> None:
        self._loop = asyncio.get_running_loop()
        self._calls[call.id] = call
        try:
            self._start(call.id, call.request)
        except BaseException:
            self._calls.pop(call.id, None)
            raise

    def forget(self, call_id: int) -> None:
        self._calls.pop(call_id, None)

    def deliver_soon(self, pile: Pile) -> None:
        """From any thread: hand a pile of events to the event loop."""
        self._soon(self._deliver, pile)

    def fail_all_soon(self, error: DoppelError) -> None:
        """From any thread: end every call in flight with `error`."""
        self._soon(lambda: self._deliver([(call_id, Failed(error)) for call_id in self._calls]))

    def _soon(self, fn: Callable[..., None], *args: Any) -> None:
        if self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody waits for these
            pass

    def _deliver(self, pile: Pile) -> None:
        for call_id, event in pile:
            call = self._calls.get(call_id)
            if call is not None:
                call.deliver(event)
