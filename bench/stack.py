"""A `doppel up` of a bench's own: every port free on loopback, a DOPPEL_HOME of its choosing.

Used by `bench/soak.py` and `bench/first_persona.py`. The stack gets none of the caller's
DOPPEL_* or PREFECT_* variables, and stops (SIGTERM) if the bench dies first.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _term_with_parent() -> None:
    """In `doppel up` (`preexec_fn`): SIGTERM, which stops its children in order, if the bench dies first."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class OwnStack:
    """A `doppel up` this bench started, and what it printed."""

    proc: subprocess.Popen
    env: dict[str, str]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, markers: tuple[str, ...], timeout: float) -> str | None:
        """The first of `markers` printed within `timeout` s, or None; SystemExit if `doppel up` ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.output()
            for m in markers:
                if m in out:
                    return m
            if self.proc.poll() is not None:
                raise SystemExit(f"doppel up ended with code {self.proc.returncode}:\n{out[-3000:]}")
            time.sleep(0.25)
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_stack(home: Path) -> OwnStack:
    """`python -m doppel up` on free loopback ports, DOPPEL_HOME `home`; none of the caller's DOPPEL_* or PREFECT_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOPPEL_", "PREFECT_"))}
    env.update({
        "DOPPEL_HOME": str(home), "DOPPEL_GRACE_S": "2", "DOPPEL_UI_PORT": str(free_port()),
        "DOPPEL_INGEST_ADDR": f"127.0.0.1:{free_port()}", "DOPPEL_TRAINER_ADDR": f"127.0.0.1:{free_port()}",
        "DOPPEL_INFERENCE_ADDR": f"127.0.0.1:{free_port()}", "DOPPEL_PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",
        "DOPPEL_OPENAI_ADDR": f"127.0.0.1:{free_port()}", "DO_NOT_TRACK": "1", "GRADIO_ANALYTICS_ENABLED": "False",
    })
    home.mkdir(parents=True, exist_ok=True)
    log = home.parent / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "doppel", "up"], env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=_term_with_parent)
    return OwnStack(proc, env, log)
