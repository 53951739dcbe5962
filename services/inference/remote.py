"""The front end's handle on the engine process: start it, send it requests, route its events.

Each call gets an id; the worker's events for it pile up here and wake the call's coroutine at
most once per `PILE_S` (the first pile at once), so 64 streams cost the event loop a few
wake-ups a step, not one per token each. A reader thread waits on the socket and hands each
message to the event loop in one go.

If the engine process dies, every call in flight fails with `Unavailable` and the next call
starts a new one.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from doppel.config import Settings
from doppel.errors import Unavailable

from .protocol import Cancel, Done, Event, Failed, Query, Request, Start

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]  # where `services` is importable from


@dataclass
class _Call:
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    events: list[Event] = field(default_factory=list)
    nap: asyncio.Future | None = None  # while the call waits for a pile to grow: an end cuts it short


def _wake(nap: asyncio.Future) -> None:
    if not nap.done():
        nap.set_result(None)


class EngineProcess:
    """The engine process and the calls in flight on it."""

    PILE_S = 0.05

    def __init__(self, settings: Settings):
        self.settings = settings
        self._ids = itertools.count(1)
        self._calls: dict[int, _Call] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()  # the process, its connection and sends
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None
        with self._lock:
            self._start()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def close(self) -> None:
        """Stop the engine process (it stops its engines), waiting a little for it."""
        with self._lock:
            process, conn = self._process, self._conn
            self._process = self._conn = None
        if process is None or conn is None:
            return
        try:
            conn.send(None)
        except OSError:
            pass
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        conn.close()

    async def events(self, request: Request) -> AsyncIterator[list[Event]]:
        """The call's events, a pile at a time, until `Done`; `Failed` is raised; the call is
        cancelled in the engine if the caller stops early."""
        call_id, call = self._open(request)
        ended = False
        try:
            while True:
                await call.ready.wait()
                call.ready.clear()
                pile, call.events = call.events, []
                for event in pile:
                    if isinstance(event, Failed):
                        ended = True
                        raise event.error
                    ended = isinstance(event, Done)
                yield pile
                if ended:
                    return
                call.nap = asyncio.get_running_loop().create_future()
                timer = asyncio.get_running_loop().call_later(self.PILE_S, _wake, call.nap)
                await call.nap
                timer.cancel()
        finally:
            self._calls.pop(call_id, None)
            if not ended:
                self._send(Cancel(call_id))

    async def query(self, method: str, model_id: str = "") -> Any:
        """A call on the engine's model cache; its answer."""
        async for pile in self.events(Query(method, model_id)):
            if isinstance(pile[-1], Done):
                return pile[-1].value
        raise AssertionError("unreachable: events end with Done or raise")

    # --- the process ---------------------------------------------------------------------

    def _open(self, request: Request) -> tuple[int, _Call]:
        self._loop = asyncio.get_running_loop()
        call_id, call = next(self._ids), _Call()
        self._calls[call_id] = call
        with self._lock:
            if self._process is None:
                self._start()
        if not self._send(Start(call_id, request)):
            self._calls.pop(call_id, None)
            raise Unavailable("the inference engine process is not running; retry shortly")
        return call_id, call

    def _send(self, message: Any) -> bool:
        with self._lock:
            if self._conn is None:
                return False
            try:
                self._conn.send(message)
                return True
            except OSError:
                return False

    def _start(self) -> None:
        """Start the engine process (the lock held)."""
        mine, theirs = socket.socketpair()
        env = {**os.environ, **self.settings.environment()}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        with theirs:
            process = subprocess.Popen([sys.executable, "-m", "services.inference.worker", str(theirs.fileno())],
                                       pass_fds=(theirs.fileno(),), env=env)
        conn = Connection(mine.detach())
        self._process, self._conn = process, conn
        threading.Thread(target=self._read, args=(process, conn), name="engine-reader", daemon=True).start()
        log.info("started the inference engine process %d", process.pid)

    def _read(self, process: subprocess.Popen, conn: Connection) -> None:
        """Hand the worker's messages to the event loop until it goes away."""
        while True:
            try:
                items = conn.recv()
            except (EOFError, OSError):
                break
            self._deliver_soon(items)
        code = process.wait()
        with self._lock:
            current = self._process is process
            if current:
                self._process = self._conn = None
        if current:  # not closed by us: it died
            log.error("the inference engine process %d exited with code %s; the next call starts a new one",
                      process.pid, code)
            error = Unavailable(f"the inference engine process stopped (exit code {code}); "
                                "the service starts a new one with the next request")
        else:
            error = Unavailable("the inference service is stopping")
        self._deliver_soon([(call_id, Failed(error)) for call_id in list(self._calls)])

    def _deliver_soon(self, items: list[tuple[int, Event]]) -> None:
        if self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._deliver, items)
        except RuntimeError:  # the loop is closed: nobody waits for these
            pass

    def _deliver(self, items: list[tuple[int, Event]]) -> None:
        for call_id, event in items:
            call = self._calls.get(call_id)
            if call is not None:
                call.events.append(event)
                call.ready.set()
                if call.nap is not None and isinstance(event, Done | Failed):
                    _wake(call.nap)
