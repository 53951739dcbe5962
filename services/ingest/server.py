"""Entry point of the ingest service: its gRPC bindings for `doppel serve ingest`.

The servicer is a skeleton: it inherits the generated base, so every RPC answers
UNIMPLEMENTED until the ingest issue (#3) fills it in over its core.
"""

from __future__ import annotations

from doppel.config import Settings
from doppel.rpc.server import Service
from doppel.v1 import ingest_pb2, ingest_pb2_grpc


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """Thin adapter from `doppel.v1.IngestService` to the ingest core."""

    def __init__(self, settings: Settings):
        self.settings = settings


def build(settings: Settings) -> list[Service]:
    """The services this process serves."""
    return [Service.of(ingest_pb2, ingest_pb2_grpc, "IngestService", IngestServicer(settings))]
