"""Fixture: real grpc.aio servers in-process on port 0, each in a thread with its own event loop.

Tests stay synchronous and use doppel's ordinary (sync) clients against them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence

import pytest

from doppel.rpc.server import RunningServer, Service, start_server


class BackgroundServer:
    """A server started by `start_server` on a loop in a daemon thread."""

    def __init__(self, services: Sequence[Service], listen: str = "127.0.0.1:0", **kwargs):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.running: RunningServer = self._call(start_server(services, listen, **kwargs))
        self.addr = f"127.0.0.1:{self.running.port}"

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def stop(self) -> None:
        self._call(self.running.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@pytest.fixture
def grpc_server() -> Iterator:
    """Factory: `grpc_server(services, token=..., grace=...)` starts a server and returns it; all stop at teardown."""
    started: list[BackgroundServer] = []

    def start(services: Sequence[Service], **kwargs) -> BackgroundServer:
        server = BackgroundServer(services, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def trainer_server(store, home) -> BackgroundServer:
    """The trainer service over `store`, with no runner (nothing it serves may train); stop() it when done."""
    from doppel.config import Settings
    from doppel.v1 import trainer_pb2, trainer_pb2_grpc
    from services.trainer.server import TrainerServicer

    settings = Settings(home=home, store_url=store.url, prepare_base=False)
    return BackgroundServer([Service.of(trainer_pb2, trainer_pb2_grpc, "TrainerService",
                                        TrainerServicer(settings, store, serve_runs=False))])
