"""What the fixtures that run real servers share: free ports, children that die with pytest, log tails."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def die_with_parent() -> None:
    """In the child (`preexec_fn`): get SIGKILL if pytest dies without running the fixture's teardown."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def doppel_process(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`python -m doppel ARGV` with `env`, its output appended to `log`, dying with pytest."""
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "doppel", *argv], env=env, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=die_with_parent)


def rank_pid(root: int, rank: int) -> int:
    """The process of training rank `rank` (services.trainer.ranks, started by torchrun, which sets RANK) below `root`."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue

    def below(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == root:
                return True
        return False

    for pid in filter(below, parents):
        try:
            proc = Path("/proc", str(pid))
            if b"services.trainer.ranks" in (proc / "cmdline").read_bytes() \
                    and f"RANK={rank}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                return pid
        except OSError:
            continue
    raise AssertionError(f"no training rank {rank} below process {root}")


def port_free(port: int) -> bool:
    """Whether `port` can be bound on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port nothing listens on now (the kernel's pick; a later bind can still race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(log: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file, or a note when there is none."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(proc: subprocess.Popen, grace_s: float = 2.0) -> None:
    """SIGTERM, wait `grace_s`, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def read_until(proc: subprocess.Popen, marker: str, timeout: float = 90) -> str:
    """What `proc` printed (text mode stdout) up to the line holding `marker`; AssertionError with it all if it never came."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"{marker!r} not printed; got:\n{''.join(seen)}")
