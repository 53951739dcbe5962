"""Entry point of the trainer service: its gRPC bindings for `doppel serve trainer`.

The servicer is a skeleton: it inherits the generated base, so every RPC answers
UNIMPLEMENTED until the trainer issue (#4) fills it in over its core.
"""

from __future__ import annotations

from doppel.config import Settings
from doppel.rpc.server import Service
from doppel.v1 import trainer_pb2, trainer_pb2_grpc


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """Thin adapter from `doppel.v1.TrainerService` to the trainer core."""

    def __init__(self, settings: Settings):
        self.settings = settings


def build(settings: Settings) -> list[Service]:
    """The services this process serves."""
    return [Service.of(trainer_pb2, trainer_pb2_grpc, "TrainerService", TrainerServicer(settings))]
