"""Fixture: the OpenAI-compatible API (uvicorn, the real app) on a free port, in a thread of its own."""

from __future__ import annotations

import threading
import time

import uvicorn

from doppel.config import Settings
from services.gateway.server import config


class BackgroundGateway:
    """`doppel serve openai` in a thread: `url` is the base URL an OpenAI client is given."""

    def __init__(self, settings: Settings):
        self.server = uvicorn.Server(config(settings, "127.0.0.1:0"))
        self._thread = threading.Thread(target=self.server.run, daemon=True, name="gateway")
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.root = f"http://127.0.0.1:{port}"
        self.url = f"{self.root}/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)
