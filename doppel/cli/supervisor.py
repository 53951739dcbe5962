"""`doppel up`: the stack's services as child processes, watched until Ctrl-C.

Each child is `python -m doppel serve NAME`, the same entry point the GPU deployment
runs. The supervisor waits for every child's health check, says where each one
listens, and stops them all cleanly on SIGINT or SIGTERM. When a child dies it says
which, with the end of its log, and stops the rest.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

from doppel.clients import ServiceClient
from doppel.config import Settings

POLL_S = 0.25


@dataclass
class Child:
    name: str
    addr: str
    log_path: Path
    proc: subprocess.Popen | None = None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:]) or "(log is empty)"


def _serving(addr: str, timeout: float = 1.0) -> bool:
    with ServiceClient(addr) as client:
        try:
            return client.health(timeout=timeout) == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False


class Stack:
    """The children of one `doppel up`."""

    def __init__(self, settings: Settings, names: list[str], *, store_url: str):
        self.settings, self.store_url = settings, store_url  # store_url without secrets
        logs = settings.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.children = [Child(n, getattr(settings, f"{n}_addr"), logs / f"{n}.log") for n in names]
        self._stop_signal: int | None = None

    def _say(self, message: str) -> None:
        print(message, flush=True)

    def _start(self) -> None:
        for child in self.children:
            log = child.log_path.open("ab")
            # A session of its own: Ctrl-C reaches the supervisor only, which stops the children in order.
            child.proc = subprocess.Popen(
                [sys.executable, "-m", "doppel", "serve", child.name, "--listen", child.addr],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()

    def _dead(self) -> Child | None:
        return next((c for c in self.children if c.proc and c.proc.poll() is not None), None)

    def _report_death(self, child: Child) -> None:
        self._say(
            f"error: {child.name} exited with code {child.proc.returncode}; the end of {child.log_path}:\n"
            f"{child.log_tail()}"
        )

    def _wait_healthy(self, timeout: float) -> bool:
        pending = list(self.children)
        deadline = time.monotonic() + timeout
        while pending:
            if self._stop_signal is not None:
                return False
            if dead := self._dead():
                self._report_death(dead)
                return False
            if time.monotonic() > deadline:
                self._say(f"error: {', '.join(c.name for c in pending)} not healthy after {timeout:.0f} s")
                return False
            pending = [c for c in pending if not _serving(c.addr)]
            time.sleep(POLL_S)
        return True

    def stop(self) -> None:
        """SIGTERM every child, wait for the grace period, then SIGKILL what is left."""
        live = [c.proc for c in self.children if c.proc and c.proc.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.grace_s + 5
        for proc in live:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def run(self, timeout: float = 120.0) -> int:
        """Start, wait for health, watch until a signal or a death; the process exit code."""
        taken = [c for c in self.children if _serving(c.addr)]
        if taken:
            self._say(
                f"Doppel is already running: {', '.join(f'{c.name} at {c.addr}' for c in taken)} answers. "
                "Stop it first, or set DOPPEL_*_ADDR to other ports."
            )
            return 1

        def on_signal(signum: int, _frame: object) -> None:
            self._stop_signal = signum

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
        self._say(f"starting {', '.join(c.name for c in self.children)} (logs in {self.children[0].log_path.parent})")
        self._start()
        try:
            if not self._wait_healthy(timeout):
                return 0 if self._stop_signal is not None else 1
            self._say("Doppel is up:")
            for c in self.children:
                self._say(f"  {c.name:<10} {c.addr}  (pid {c.proc.pid})")
            self._say(f"  store      {self.store_url}")
            self._say("Press Ctrl-C to stop.")
            while self._stop_signal is None:
                if dead := self._dead():
                    self._report_death(dead)
                    return 1
                time.sleep(POLL_S)
            return 0
        finally:
            self._say("stopping...")
            self.stop()
            self._say("stopped")
