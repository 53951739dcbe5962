"""Entry point of the inference service: its gRPC bindings for `doppel serve inference`.

The servicer is a skeleton: it inherits the generated base, so every RPC answers
UNIMPLEMENTED until the inference issue (#5) fills it in over its core.
"""

from __future__ import annotations

from doppel.config import Settings
from doppel.rpc.server import Service
from doppel.v1 import inference_pb2, inference_pb2_grpc


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Thin adapter from `doppel.v1.InferenceService` to the inference core."""

    def __init__(self, settings: Settings):
        self.settings = settings


def build(settings: Settings) -> list[Service]:
    """The services this process serves."""
    return [Service.of(inference_pb2, inference_pb2_grpc, "InferenceService", InferenceServicer(settings))]
