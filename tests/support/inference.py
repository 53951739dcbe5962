"""Fixtures: a store of persona models made on the spot, and an inference service on a real gRPC server (its
engine in a process of its own) over it."""

from __future__ import annotations

import pytest

from doppel.clients import InferenceClient
from doppel.config import Settings
from doppel.rpc.server import Service
from doppel.store import open_store
from doppel.v1 import inference_pb2 as inf
from doppel.v1 import inference_pb2_grpc
from services.inference.remote import EngineProcess
from services.inference.server import InferenceServicer
from support.grpcserver import BackgroundServer
from support.personas import publish_personas


@pytest.fixture(scope="module")
def models_store(tmp_path_factory):
    """(store, model ids by kind (`publish_personas`), the module's folder)."""
    tmp = tmp_path_factory.mktemp("personas")
    store = open_store(f"file://{tmp}/store")
    return store, publish_personas(store, tmp), tmp


class Running:
    """The service, its address (`server.addr`), and a client of it."""

    def __init__(self, store, home, **settings):
        self.servicer = InferenceServicer(EngineProcess(Settings(home=home, store_url=store.url, **settings)))
        self.server = BackgroundServer([Service.of(inf, inference_pb2_grpc, "InferenceService", self.servicer)])
        self.client = InferenceClient(self.server.addr, timeout=120)

    def close(self) -> None:
        self.client.close()
        self.server.stop()
        self.servicer.close()
