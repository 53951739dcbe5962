"""One measured run in a fresh process: peaks and caches of one run do not leak into the next."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from typing import Any


def in_child(target: Callable[..., None], args: tuple[Any, ...], what: str) -> Any:
    """Run `target(*args, queue)` in a spawned process; what it puts on the queue, or SystemExit naming
    `what` if the process dies first."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    while True:
        try:
            result = q.get(timeout=1)
            break
        except Exception:  # noqa: BLE001 - queue.Empty: still running, or dead
            if not p.is_alive():
                raise SystemExit(f"{what} failed with exit code {p.exitcode}") from None
    p.join()
    return result
