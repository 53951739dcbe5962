"""What a running stack's processes hold: RSS, open file descriptors and threads of a process tree, by name.

A soak compares snapshots of the same tree taken minutes apart. Processes are named from their
command lines, not their pids (`python -m doppel up` is "supervisor", `doppel serve inference`
is "inference", its `python -m services.inference.engine_process` child "inference/engine_process"),
so a child the supervisor restarted in between is still compared with itself, its pid changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Usage:
    """One process at one moment."""

    pid: int
    rss: int  # bytes
    fds: int
    threads: int


def role(cmdline: list[str], fallback: str) -> str:
    """A process's name from its command line: the doppel command, the module run with -m, or `fallback`."""
    if "-m" in cmdline[:-1]:
        i = cmdline.index("-m")
        module, rest = cmdline[i + 1], cmdline[i + 2:]
        if module == "doppel" and rest:
            if rest[0] == "up":
                return "supervisor"
            return rest[1] if rest[0] == "serve" and len(rest) > 1 else rest[0]
        return module.rsplit(".", 1)[-1]
    if "-c" in cmdline[:-1]:  # multiprocessing's helpers
        code = cmdline[cmdline.index("-c") + 1]
        for known in ("resource_tracker", "spawn_main", "forkserver"):
            if known in code:
                return known
    return fallback


def snapshot(roots: list[int]) -> dict[str, Usage]:
    """Every live process under `roots` (the roots included), named "parent/child" below the supervisor's children."""
    out: dict[str, Usage] = {}

    def visit(p: psutil.Process, parent: str | None) -> None:
        try:
            with p.oneshot():
                name = role(p.cmdline(), p.name())
                usage = Usage(p.pid, p.memory_info().rss, p.num_fds(), p.num_threads())
            children = sorted(p.children(), key=lambda c: c.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # gone (or a zombie) since it was listed
            return
        if parent is not None and parent != "supervisor":
            name = f"{parent}/{name}"
        key, k = name, 2
        while key in out:  # two children of one parent that run the same thing
            key, k = f"{name}#{k}", k + 1
        out[key] = usage
        for child in children:
            visit(child, key)

    for pid in roots:
        try:
            visit(psutil.Process(pid), None)
        except psutil.NoSuchProcess:
            pass
    return out


def listening(ports: set[int]) -> set[int]:
    """Pids of the processes of this user that listen on one of `ports` (TCP); empty where that cannot be read."""
    try:
        connections = psutil.net_connections("tcp")
    except psutil.AccessDenied:
        return set()
    return {c.pid for c in connections
            if c.pid and c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port in ports}


def stack_roots(ports: set[int]) -> list[int]:
    """The roots of a stack found by its ports: the `doppel up` that started the listeners, else the listeners."""
    roots: set[int] = set()
    for pid in listening(ports):
        try:
            p = psutil.Process(pid)
            parent = p.parent()
            up = parent is not None and role(parent.cmdline(), "") == "supervisor"
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        roots.add(parent.pid if up and parent is not None else pid)
    return sorted(roots)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
