"""`doppel up`: a local Prefect server, the stack's services and the UI as child processes, watched until Ctrl-C.

The children start in stages. First the Prefect server (`python -m prefect server start`),
which owns training runs; its state lives under `$DOPPEL_HOME/prefect`. Once its API
answers `/health`, the services start: each is `python -m doppel serve NAME`, the same
entry point the GPU deployment runs, with `PREFECT_API_URL` pointing at that server.
Once they answer their gRPC health checks, the UI (`python -m doppel ui`) and the
OpenAI-compatible API (`python -m doppel serve openai`) start, which talk to them. The
supervisor waits for every child's health check, says where each one is reached, then runs
an optional step in the background (the demo import), and stops them all cleanly on SIGINT
or SIGTERM, the UI and the API first and the server the services talk to last.

A child that dies on its own, during start-up or later, is restarted alone, like
docker compose's `restart:` policy: after `DOPPEL_RESTART_BACKOFF_S` (1 s), doubled for each
earlier crash of that child within `DOPPEL_RESTART_WINDOW_S` (60 s), at most
`RESTART_BACKOFF_MAX_S`; the others keep running. The log says which child ended, how, the
restart and its attempt, then when the child is healthy again. Only a child that crashes
`DOPPEL_RESTART_LIMIT` (5) times within the window stops the stack, with the end of its log:
a crash loop (a taken port, a bad setting) is not fixed by restarting.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import grpc
from grpc_health.v1 import health_pb2

from doppel import balancer
from doppel.clients import ServiceClient
from doppel.config import Settings

POLL_S = 0.25
PREFECT_GRACE_S = 10.0  # the server stops in ~2 s on SIGTERM
RESTART_BACKOFF_MAX_S = 30.0  # the longest wait before a restart, whatever DOPPEL_RESTART_* say
# No Prefect process phones home, whatever the user's environment says.
QUIET = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def ui_url(settings: Settings) -> str:
    """Where the UI answers: what a newcomer opens."""
    host = settings.ui_host
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.ui_port}"


def openai_url(settings: Settings) -> str:
    """The base URL an OpenAI client is given for the OpenAI-compatible API."""
    return f"http://{settings.openai_addr}/v1"


@dataclass(frozen=True)
class PrefectEndpoint:
    """Where the embedded Prefect server listens, from `DOPPEL_PREFECT_API_URL`."""

    api_url: str  # http://host:port/api
    host: str
    port: int

    @property
    def dashboard_url(self) -> str:
        return self.api_url.removesuffix("/api")

    @property
    def health_url(self) -> str:
        return f"{self.api_url}/health"

    @classmethod
    def parse(cls, url: str) -> PrefectEndpoint:
        """The endpoint of a server `doppel up` can start itself; ValueError says why not."""
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError("doppel up starts its own Prefect server, so this must be an http:// URL")
        host = parts.hostname or ""
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(
                f"doppel up starts its own Prefect server, so the host must be a loopback one, not {host or 'none'} "
                "(e.g. http://127.0.0.1:4200/api; for a Prefect server elsewhere, run the services with doppel serve)"
            )
        if parts.path.rstrip("/") != "/api" or parts.query or parts.fragment or parts.username:
            raise ValueError("the Prefect server serves its API at /api: use http://HOST:PORT/api, nothing more")
        try:
            port = parts.port or 80
        except ValueError as e:
            raise ValueError(f"bad port: {e}") from None
        netloc = f"[{host}]" if ":" in host else host
        return cls(f"http://{netloc}:{port}/api", host, port)


def _serving(addr: str, timeout: float = 1.0) -> bool:
    """Whether the gRPC health check at `addr` answers SERVING."""
    with ServiceClient(addr) as client:
        try:
            return client.health(timeout=timeout) == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False


_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never goes through a proxy


def _ended(returncode: int) -> str:
    """How a child ended, for a person: its exit code, or the signal that killed it."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"was killed by signal {-returncode}"


def _http_ok(url: str, timeout: float = 1.0) -> bool:
    """Whether GET `url` answers 200."""
    try:
        with _direct.open(url, timeout=timeout) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException, ValueError):  # URLError and HTTPError are OSErrors
        return False


@dataclass
class Child:
    """One child process: how to start it, where it is reached, how to tell it is healthy."""

    name: str
    where: str  # what the banner shows
    argv: list[str]
    log_path: Path
    healthy: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)  # on top of the supervisor's environment
    grace_s: float = 10.0  # how long a SIGTERM may take before SIGKILL
    proc: subprocess.Popen | None = None
    crashes: deque[float] = field(default_factory=deque)  # when it died, within the restart window
    restart_at: float | None = None  # while it waits for a restart
    restarted_at: float | None = None  # from a restart until it is healthy again

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            # A session of its own: Ctrl-C reaches the supervisor only, which stops the children in order.
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:]) or "(log is empty)"


class Stack:
    """The children of one `doppel up`: the Prefect server, then the services, then the UI.

    `after_up` runs in a thread once all are healthy, so a slow one never delays Ctrl-C;
    what it returns is printed, and what it raises is printed as a warning.
    """

    def __init__(
        self,
        settings: Settings,
        names: list[str],
        *,
        store_url: str,
        after_up: Callable[[], str | None] | None = None,
    ):
        self.settings, self.store_url, self.after_up = settings, store_url, after_up  # store_url without secrets
        self.prefect = PrefectEndpoint.parse(settings.prefect_api_url)
        logs = settings.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        prefect_home = settings.home / "prefect"
        # Every child talks to this server; the server keeps its database and UI bundle under DOPPEL_HOME
        # (so site-packages need not be writable), and the services their Prefect state beside it.
        api = self.prefect.api_url
        common = {**QUIET, "PREFECT_API_URL": api, "DOPPEL_PREFECT_API_URL": api, "PREFECT_HOME": str(prefect_home)}
        server = Child(
            "prefect",
            f"{self.prefect.dashboard_url} (dashboard)",
            [sys.executable, "-m", "prefect", "server", "start",
             "--host", self.prefect.host, "--port", str(self.prefect.port), "--analytics-off"],
            logs / "prefect.log",
            partial(_http_ok, self.prefect.health_url),
            env={**common, "PREFECT_UI_STATIC_DIRECTORY": str(prefect_home / "ui")},
            grace_s=PREFECT_GRACE_S,
        )
        services = []
        for name in names:
            addr = getattr(settings, f"{name}_addr")
            if name == "inference" and settings.inference_replicas > 1:
                services += self._replicas(logs, common)
                continue
            services.append(self._service(name, name, addr, logs, common))
        url = ui_url(settings)
        ui = Child("ui", url, [sys.executable, "-m", "doppel", "ui"], logs / "ui.log", partial(_http_ok, url),
                   env=common)
        api = openai_url(settings)
        gateway = Child("openai", api,
                        [sys.executable, "-m", "doppel", "serve", "openai", "--listen", settings.openai_addr],
                        logs / "openai.log", partial(_http_ok, api.removesuffix("/v1") + "/health"), env=common,
                        grace_s=settings.grace_s + 5)
        self.stages: list[list[Child]] = [[server], services, [ui, gateway]]
        self.children = [c for stage in self.stages for c in stage]
        self._stop_signal: int | None = None
        self._stopping = threading.Event()

    def _service(self, name: str, service: str, addr: str, logs: Path, env: dict[str, str]) -> Child:
        """`doppel serve SERVICE` at `addr` as the child `name`, healthy when its gRPC health check says so."""
        return Child(name, addr, [sys.executable, "-m", "doppel", "serve", service, "--listen", addr],
                     logs / f"{name}.log", partial(_serving, addr), env=env, grace_s=self.settings.grace_s + 5)

    def _replicas(self, logs: Path, common: dict[str, str]) -> list[Child]:
        """DOPPEL_INFERENCE_REPLICAS inference processes on free loopback ports, and nginx in front of them at
        DOPPEL_INFERENCE_ADDR (`doppel.balancer`). Replica i gets the i-th of CUDA_VISIBLE_DEVICES when it
        lists one for each."""
        settings, n = self.settings, self.settings.inference_replicas
        gpus = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
        children = []
        for i, addr in enumerate(balancer.free_addrs(n), 1):
            env = {**common, **({"CUDA_VISIBLE_DEVICES": gpus[i - 1]} if len(gpus) >= n else {})}
            children.append(self._service(f"inference-{i}", "inference", addr, logs, env))
        conf = balancer.write_config(settings.inference_addr, [c.where for c in children], settings.home / "balancer",
                                     max_message_mb=settings.max_message_mb)
        children.append(Child(
            "balancer", f"{settings.inference_addr} (nginx, in front of the {n} inference replicas)",
            balancer.command(conf), logs / "balancer.log", partial(_serving, settings.inference_addr), env=common,
            grace_s=5.0,
        ))
        return children

    def _say(self, message: str) -> None:
        try:
            print(message, flush=True)
        except OSError:  # the terminal or pipe went away: the children must still be tended and stopped
            pass

    def _crashed(self, child: Child, returncode: int, now: float) -> bool:
        """Count a crash of `child` and plan its restart; False, with the end of its log, when it crashed too often."""
        limit, window = self.settings.restart_limit, self.settings.restart_window_s
        child.crashes.append(now)
        while child.crashes[0] < now - window:
            child.crashes.popleft()
        crashes = len(child.crashes)
        if crashes >= limit:
            self._say(
                f"error: {child.name} {_ended(returncode)}, {crashes} crash{'es' if crashes > 1 else ''} within "
                f"{window:g} s: not restarting it; the end of {child.log_path}:\n{child.log_tail()}"
            )
            return False
        delay = min(self.settings.restart_backoff_s * 2 ** (crashes - 1), RESTART_BACKOFF_MAX_S)
        child.restart_at, child.restarted_at = now + delay, None
        self._say(
            f"{child.name} {_ended(returncode)}; restarting it in {delay:g} s "
            f"(attempt {crashes} of {limit - 1} within {window:g} s; log in {child.log_path})"
        )
        return True

    def _tend(self) -> bool:
        """Restart the children that died, once their backoff is over, and say when each is healthy again.

        False when one crashed too often: the stack stops.
        """
        now = time.monotonic()
        for child in self.children:
            proc = child.proc
            if proc is None:
                continue  # a later stage, not started yet
            if child.restart_at is None and (returncode := proc.poll()) is not None:
                if not self._crashed(child, returncode, now):
                    return False
            elif child.restart_at is not None and now >= child.restart_at:
                child.restart_at, child.restarted_at = None, now
                child.start()
                assert child.proc is not None  # just started
                self._say(f"restarted {child.name} (pid {child.proc.pid}, attempt {len(child.crashes)})")
            elif child.restarted_at is not None and child.healthy():
                self._say(f"{child.name} healthy again, {now - child.restarted_at:.1f} s after its restart (pid {proc.pid})")
                child.restarted_at = None
        return True

    def _wait_healthy(self, stage: list[Child], timeout: float) -> bool:
        pending = list(stage)
        deadline = time.monotonic() + timeout
        while pending:
            if self._stop_signal is not None:
                return False
            if not self._tend():
                return False
            if time.monotonic() > deadline:
                self._say(
                    f"error: {', '.join(c.name for c in pending)} not healthy after {timeout:g} s "
                    f"(logs in {pending[0].log_path.parent})"
                )
                return False
            pending = [c for c in pending if not c.healthy()]
            if pending:
                time.sleep(POLL_S)
        return True

    def _start_stage(self, stage: list[Child], timeout: float) -> bool:
        """Start a stage's children and wait until each is healthy (False on a signal, a crash loop or timeout)."""
        started = time.monotonic()
        for child in stage:
            child.start()
        if not self._wait_healthy(stage, timeout):
            return False
        self._say(f"{', '.join(c.name for c in stage)} healthy after {time.monotonic() - started:.1f} s")
        return True

    def stop(self) -> None:
        """Stage by stage, last first: SIGTERM its children, wait for their grace, then SIGKILL what is left."""
        for stage in reversed(self.stages):
            live = [(c, proc) for c in stage if (proc := c.proc) and proc.poll() is None]
            for _, proc in live:
                proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            for child, proc in live:
                try:
                    proc.wait(max(0.1, started + child.grace_s - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def _taken(self) -> str | None:
        """Why this stack cannot start here, when something already answers at its addresses."""
        _, services, ui = self.stages
        answering = [c for c in services + ui if c.healthy()]
        if answering:
            return (
                f"Doppel is already running: {', '.join(f'{c.name} at {c.where}' for c in answering)} answers. "
                "Stop it first, or set DOPPEL_*_ADDR and DOPPEL_UI_PORT to other ports."
            )
        if self.stages[0][0].healthy():
            return (
                f"a Prefect server already answers at {self.prefect.api_url} (another doppel up, or one of "
                "your own). Stop it first, or set DOPPEL_PREFECT_API_URL to another loopback port."
            )
        return None

    def _run_after_up(self) -> None:
        """`after_up`, its result or failure said unless the stack is stopping (the services are going away)."""
        after_up = self.after_up
        assert after_up is not None  # started only when there is one
        try:
            message = after_up()
        except Exception as e:  # noqa: BLE001 - a failed extra step never stops the stack
            message = f"warning: {type(e).__name__}: {e}"
        if message and not self._stopping.is_set():
            self._say(message)

    def run(self, timeout: float = 120.0) -> int:
        """Start stage by stage, waiting for health; restart what dies until a signal or a crash loop; the exit code."""
        if problem := self._taken():
            self._say(problem)
            return 1

        def on_signal(signum: int, _frame: object) -> None:
            self._stop_signal = signum

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
        server, services, ui = self.stages
        try:
            self._say(
                f"starting the Prefect server at {self.prefect.api_url} (the first start takes up to half a minute; "
                f"logs in {server[0].log_path.parent})"
            )
            if not self._start_stage(server, timeout):
                return 0 if self._stop_signal is not None else 1
            self._say(f"starting {', '.join(c.name for c in services)}")
            if not self._start_stage(services, timeout):
                return 0 if self._stop_signal is not None else 1
            self._say(f"starting the UI at {ui[0].where} and the OpenAI-compatible API at {ui[1].where}")
            if not self._start_stage(ui, timeout):
                return 0 if self._stop_signal is not None else 1
            self._say("Doppel is up:")
            for c in [*ui, *server, *services]:  # the UI first: it is what one opens
                assert c.proc is not None  # every stage started
                self._say(f"  {c.name:<10} {c.where}  (pid {c.proc.pid})")
            self._say(f"  store      {self.store_url}")
            self._say("Press Ctrl-C to stop.")
            if self.after_up is not None:
                threading.Thread(target=self._run_after_up, name="after-up", daemon=True).start()
            while self._stop_signal is None:
                if not self._tend():
                    return 1
                time.sleep(POLL_S)
            return 0
        finally:
            self._stopping.set()
            self._say("stopping...")
            self.stop()
            self._say("stopped")
