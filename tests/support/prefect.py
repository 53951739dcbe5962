"""A real Prefect server for tests: `prefect server start` on a free loopback port.

The same command and variables `doppel up` uses: its own PREFECT_HOME (a fresh SQLite
database, so the first start runs migrations: ~10-30 s on two cores), no analytics, and
the UI bundle copied under that home rather than into site-packages. The server dies
with pytest; a normal stop is SIGTERM (about 2 s), then SIGKILL.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from support.processes import die_with_parent, free_port, log_tail, stop

START_TIMEOUT_S = 120.0
STOP_GRACE_S = 5.0
QUIET = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never goes through a proxy


@dataclass(frozen=True)
class PrefectServer:
    """A running Prefect server."""

    api_url: str  # http://127.0.0.1:PORT/api
    home: Path  # its PREFECT_HOME
    log: Path
    proc: subprocess.Popen
    started_in_s: float  # from start to the first healthy answer

    @property
    def dashboard_url(self) -> str:
        return self.api_url.removesuffix("/api")


def healthy(api_url: str, timeout: float = 1.0) -> bool:
    """Whether GET <api>/health answers 200."""
    try:
        with _direct.open(f"{api_url}/health", timeout=timeout) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException, ValueError):
        return False


def _start_once(home: Path, log: Path, timeout: float, port: int | None = None) -> tuple[PrefectServer | None, str, bool]:
    """The server, or None with why not and whether another try could do better."""
    port = port or free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        **QUIET,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_UI_STATIC_DIRECTORY": str(home / "ui"),
    }
    args = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
            "--analytics-off"]
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    deadline = started + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None, f"prefect server exited with code {proc.returncode}", True
        if healthy(api_url):
            return PrefectServer(api_url, home, log, proc, time.monotonic() - started), "", False
        time.sleep(0.2)
    stop(proc, STOP_GRACE_S)
    return None, f"{api_url}/health did not answer 200 within {timeout:.0f} s", False  # slow, not unlucky


def start_prefect_server(home: Path, timeout: float = START_TIMEOUT_S, *, port: int | None = None) -> PrefectServer:
    """Start a server whose state lives in `home`; RuntimeError with the log's tail when it does not turn healthy.

    A server that exits before answering (another process took the port between the pick
    and the bind) gets a second try on another port, unless `port` was asked for (a restart).
    """
    home.mkdir(parents=True, exist_ok=True)
    errors = []
    for attempt in range(2):
        log = home / f"server-{attempt}{f'-{port}' if port else ''}.log"
        server, problem, retry = _start_once(home, log, timeout, port)
        if server is not None:
            return server
        errors.append(f"attempt {attempt + 1}: {problem}\n--- {log} (tail) ---\n{log_tail(log)}")
        if not retry or port:
            break
    raise RuntimeError("the Prefect server did not start:\n" + "\n".join(errors))


def stop_prefect_server(server: PrefectServer) -> None:
    """SIGTERM, then SIGKILL after a few seconds."""
    stop(server.proc, STOP_GRACE_S)


@contextmanager
def prefect_server(home: Path, timeout: float = START_TIMEOUT_S) -> Iterator[PrefectServer]:
    """A running Prefect server for the block."""
    server = start_prefect_server(home, timeout)
    try:
        yield server
    finally:
        stop_prefect_server(server)
