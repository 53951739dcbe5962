"""The engine process of the inference service: `python -m services.inference.engine_process FD`.

The gRPC front end (`remote.EngineProcess`) starts it with one end of a socket pair as file
descriptor FD and its settings in `DOPPEL_*` variables. Requests (`protocol.Start`, `Cancel`,
None to stop) come in on the main thread, which does little else; events go out in piles from
an `Outbox`, so that the engine thread, the one that matters, rarely waits for the GIL. When the
front end goes away (its end of the socket closes) the process ends; Ctrl-C, which a terminal
sends to the whole process group, is left to the front end.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from multiprocessing.connection import Connection

from doppel.config import Settings

from .outbox import Outbox
from .protocol import Cancel, Start

log = logging.getLogger(__name__)


def serve(conn: Connection, settings: Settings) -> None:
    """Answer requests on `conn` until told to stop or the other end closes."""
    import torch

    from doppel.store import STARTUP_WAIT_S, open_store

    from .serving import Serving

    if settings.inference_threads:
        torch.set_num_threads(settings.inference_threads)
    outbox = Outbox(conn.send)
    serving = Serving(settings, open_store(settings.store_url, wait_s=STARTUP_WAIT_S), outbox.put)
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
