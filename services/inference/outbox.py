"""Events on their way from the engine to the front end, sent in piles.

The engine thread emits one event per token per row; handing each to the front end on its own
would wake its event loop (and, across processes, the socket) thousands of times a second and
make the engine thread wait for the GIL. So events gather here under a lock and a thread of
their own sends them as one pile at most every `PACE_S`, except that a call's first event and
its end go at once: time to first token and the end of a call never wait for the pace.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .protocol import Done, Event, Failed

PACE_S = 0.05  # the one pace of streaming: at most one pile per this many seconds, then urgent events
Pile = list[tuple[int, Event]]  # (call id, event), in the order emitted


class Outbox:
    """`put` from any thread; `send(pile)` runs on the outbox's thread. A `send` that raises
    `OSError` (the other end is gone) stops the outbox."""

    def __init__(self, send: Callable[[Pile], None], *, name: str = "outbox"):
        self._send = send
        self._items: Pile = []
        self._open: set[int] = set()  # calls that have sent something and not ended
        self._urgent = False
        self._closed = False
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, call: int, event: Event) -> None:
        with self._ready:
            self._items.append((call, event))
            if isinstance(event, Done | Failed):
                self._open.discard(call)
                self._urgent = True
            elif call not in self._open:
                self._open.add(call)
                self._urgent = True
            if self._urgent or len(self._items) == 1:
                self._ready.notify()

    def close(self) -> None:
        """Send what is left, then stop."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._items or self._closed)
                pile, self._items, self._urgent = self._items, [], False
                closed = self._closed
            if pile:
                try:
                    self._send(pile)
                except OSError:  # the front end is gone
                    return
            if closed:
                return
            with self._ready:
                self._ready.wait_for(lambda: self._urgent or self._closed, timeout=PACE_S)
