"""The engine process of the inference service: `python -m services.inference.worker FD`.

The gRPC front end (`remote.EngineProcess`) starts it with one end of a socket pair as file
descriptor FD and its settings in `DOPPEL_*` variables. Requests (`protocol.Start`, `Cancel`,
None to stop) come in on the main thread, which does little else; events go out from a sender
thread that gathers what the engine and the other threads emitted and sends it as one message
every `EVERY_S` at most, so that the engine thread, the one that matters, rarely waits for the
GIL. When the front end goes away (its end of the socket closes) the process ends; Ctrl-C,
which a terminal sends to the whole process group, is left to the front end.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection

from doppel.config import Settings

from .protocol import Cancel, Event, Start

log = logging.getLogger(__name__)
EVERY_S = 0.005  # at most one message to the front end per this many seconds


class Outbox:
    """Events to send, gathered under a lock and sent by a thread of their own."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self._items: list[tuple[int, Event]] = []
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._send, name="outbox", daemon=True)
        self._thread.start()

    def put(self, call: int, event: Event) -> None:
        with self._ready:
            self._items.append((call, event))
            if len(self._items) == 1:
                self._ready.notify()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(5)

    def _send(self) -> None:
        while True:
            with self._ready:
                while not self._items and not self._closed:
                    self._ready.wait()
                items, self._items = self._items, []
                closed = self._closed
            if items:
                try:
                    self.conn.send(items)
                except OSError:  # the front end is gone
                    return
            if closed:
                return
            time.sleep(EVERY_S)


def serve(conn: Connection, settings: Settings) -> None:
    """Answer requests on `conn` until told to stop or the other end closes."""
    import torch

    from doppel.store import open_store

    from .serving import Serving

    if settings.inference_threads:
        torch.set_num_threads(settings.inference_threads)
    outbox = Outbox(conn)
    serving = Serving(settings, open_store(settings.store_url), outbox.put)
    log.info("inference engine process %d ready", os.getpid())
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            if message is None:
                break
            if isinstance(message, Cancel):
                serving.cancel(message.call)
            elif isinstance(message, Start):
                serving.start(message.call, message.request)
    finally:
        serving.close()
        outbox.close()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the front end stops this process

    settings = Settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s inference-engine %(levelname)s %(message)s")
    for name in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
        os.environ.setdefault(name, "1")
    serve(Connection(int(sys.argv[1])), settings)


if __name__ == "__main__":
    main()
