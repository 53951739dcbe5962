"""The UI's one way to the services: doppel's typed clients, and their errors said for a person.

Every tab holds the same `Backend`; its channels stay open for the life of the app (gRPC
channels are thread-safe, and Gradio runs handlers in threads). An RPC error reaches the page
as the service phrased it (`rpc_error_message`); a service that does not answer is named
with its address and what to do, never as a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import gradio as gr
import grpc
from grpc_health.v1 import health_pb2

from doppel.clients import InferenceClient, IngestClient, ServiceClient, TrainerClient, rpc_error_message
from doppel.config import Settings

_NAMES = {IngestClient: "ingest", TrainerClient: "trainer", InferenceClient: "inference"}
_DOWN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class Backend:
    """Clients of the three services, built once from the settings."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.ingest = IngestClient.from_settings(settings)
        self.trainer = TrainerClient.from_settings(settings)
        self.inference = InferenceClient.from_settings(settings)

    @property
    def clients(self) -> list[ServiceClient]:
        return [self.ingest, self.trainer, self.inference]

    def close(self) -> None:
        for client in self.clients:
            client.close()


def service_name(client: ServiceClient) -> str:
    return _NAMES.get(type(client), "a")


def answers(client: ServiceClient, timeout: float = 2.0) -> bool:
    """Whether the service's health check says SERVING."""
    try:
        return client.health(timeout=timeout) == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def explain(err: grpc.RpcError, client: ServiceClient) -> str:
    """What went wrong, for a person: the service's own message, or where it does not answer.

    UNAVAILABLE is also what a running service says when its storage is down, so a health
    check tells that message (shown as phrased) from a service that is not there at all.
    """
    code = err.code() if hasattr(err, "code") else None
    if code in _DOWN and not answers(client, timeout=1.0):
        return f"The {service_name(client)} service is not answering at {client.addr}. Start the stack with `doppel up`."
    return rpc_error_message(err)


@contextmanager
def reported(client: ServiceClient) -> Iterator[None]:
    """Turn an RPC error of `client` into a `gr.Error` the page shows as a toast."""
    try:
        yield
    except grpc.RpcError as err:
        raise gr.Error(explain(err, client), title=f"{service_name(client).capitalize()} service") from None


@contextmanager
def checked_input() -> Iterator[None]:
    """Turn a form value `ui.forms` refused (a ValueError naming the field) into a `gr.Error`."""
    try:
        yield
    except ValueError as e:
        raise gr.Error(str(e), title="Check the form") from None


def warn(err: grpc.RpcError, client: ServiceClient) -> None:
    """Show an RPC error as a warning toast, for refreshes that should leave the page usable."""
    gr.Warning(explain(err, client), title=f"{service_name(client).capitalize()} service")
