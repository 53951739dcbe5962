"""The engine in a process of its own, as the service runs it: `EngineProcess`, an
`EngineClient` that starts `python -m services.inference.engine_process FD` and talks to it over a
socket pair. A reader thread waits on the socket and hands each pile to the event loop in one go.

If the engine process dies, every call in flight fails with `Unavailable` and the next call
starts a new one.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from doppel.config import Settings
from doppel.errors import Unavailable

from .client import RoutingClient
from .protocol import Cancel, Request, Start

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]  # where `services` is importable from


class EngineProcess(RoutingClient):
    """The engine process and the calls in flight on it."""

    def __init__(self, settings: Settings):
        super().__init__()
        self.settings = settings
        self._lock = threading.Lock()  # the process, its connection and sends
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None
        with self._lock:
            self._start_process()

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

    # --- the process ---------------------------------------------------------------------

    def _start(self, call_id: int, request: Request) -> None:
        with self._lock:
            if self._process is None:
                self._start_process()
        if not self._send(Start(call_id, request)):
            raise Unavailable("the inference engine process is not running; retry shortly")

    def _cancel(self, call_id: int) -> None:
        self._send(Cancel(call_id))

    def _send(self, message: Any) -> bool:
        with self._lock:
            if self._conn is None:
                return False
            try:
                self._conn.send(message)
                return True
            except OSError:
                return False

    def _start_process(self) -> None:
        """Start the engine process (the lock held)."""
        mine, theirs = socket.socketpair()
        env = {**os.environ, **self.settings.environment()}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        with theirs:
            process = subprocess.Popen([sys.executable, "-m", "services.inference.engine_process", str(theirs.fileno())],
                                       pass_fds=(theirs.fileno(),), env=env)
        conn = Connection(mine.detach())
        self._process, self._conn = process, conn
        threading.Thread(target=self._read, args=(process, conn), name="engine-reader", daemon=True).start()
        log.info("started the inference engine process %d", process.pid)

    def _read(self, process: subprocess.Popen, conn: Connection) -> None:
        """Hand the engine process's piles to the event loop until it goes away."""
        while True:
            try:
                items = conn.recv()
            except (EOFError, OSError):
                break
            self.deliver_soon(items)
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
        self.fail_all_soon(error)
