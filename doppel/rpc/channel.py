"""Client channels: bearer token, a default deadline for unary calls, retries on UNAVAILABLE, and the
model a call is for in its metadata (for a balancer in front of inference replicas).

Retries are gRPC's own (a service-config retry policy), so they apply to every kind of
call and only while the server has not answered yet: a call is never replayed after
the server started responding.
"""

from __future__ import annotations

import collections
import json
from typing import Any

import grpc

from doppel.rpc.server import channel_options

MODEL_HEADER = "x-doppel-model"  # which model a call is for, for a balancer (doppel/balancer.py)

RETRY_POLICY = {
    "methodConfig": [
        {
            "name": [{}],  # every method of every service
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.25s",
                "maxBackoff": "3s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}


class _Details(
    collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
    grpc.ClientCallDetails,
):
    pass


class _ClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the token to every call and the default deadline to unary-response calls without one.

    Response streams (watching a run, streaming a reply) and client streams (uploads)
    get no default deadline: they last as long as the work.
    """

    def __init__(self, token: str | None, timeout: float | None):
        self._auth = auth_metadata(token)
        self._timeout = timeout

    def _details(self, d: grpc.ClientCallDetails, unary: bool, request: Any = None) -> _Details:
        timeout = d.timeout if d.timeout is not None or not unary else self._timeout
        metadata = tuple(d.metadata or ()) + self._auth + model_metadata(request)
        return _Details(d.method, timeout, metadata, d.credentials, d.wait_for_ready, d.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details, unary=True, request=request), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details, unary=False, request=request), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details, unary=False), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details, unary=False), request_iterator)


def open_channel(
    addr: str, *, token: str | None = None, timeout: float | None = 30.0, max_message_mb: int = 64
) -> grpc.Channel:
    """An insecure channel to `addr` (host:port) with auth, default deadline and retries."""
    channel = grpc.insecure_channel(addr, options=_options(max_message_mb))
    return grpc.intercept_channel(channel, _ClientInterceptor(token, timeout))


def open_aio_channel(addr: str, *, max_message_mb: int = 64) -> grpc.aio.Channel:
    """An asyncio channel to `addr` with the same retries; its callers send `auth_metadata` with each call."""
    return grpc.aio.insecure_channel(addr, options=_options(max_message_mb))


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries `token` (none when auth is off)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def model_metadata(request: Any) -> tuple[tuple[str, str], ...]:
    """The call metadata naming the model a request is for (its `model_id`, or that of the request it
    wraps), which a balancer in front of inference replicas hashes on (`doppel.balancer`); none when
    it names no model."""
    fields = getattr(getattr(request, "DESCRIPTOR", None), "fields", ())
    for message in (request, *(getattr(request, f.name) for f in fields if f.message_type is not None)):
        model_id = getattr(message, "model_id", "")
        if model_id and isinstance(model_id, str):
            return ((MODEL_HEADER, model_id),)
    return ()


def _options(max_message_mb: int) -> list[tuple[str, Any]]:
    return [
        *channel_options(max_message_mb),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(RETRY_POLICY)),
        # Reconnect quickly to a server that is starting or restarting.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
