"""Server bootstrap: one grpc.aio server with health, reflection, auth and error mapping.

Every service process calls `serve(...)` with its `Service` bindings. The server marks
each service SERVING in the standard health service, lists them in reflection, requires
the API token when one is configured, and on SIGTERM or SIGINT turns NOT_SERVING, stops
taking calls and gives calls in flight `grace` seconds to finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from doppel.errors import FailedPrecondition
from doppel.rpc.interceptors import AuthInterceptor, ErrorInterceptor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Service:
    """A servicer and how to register it: `add` is the generated `add_XServicer_to_server`."""

    descriptor: ServiceDescriptor
    servicer: Any
    add: Callable[[Any, grpc.aio.Server], None]

    @property
    def name(self) -> str:
        return self.descriptor.full_name

    @classmethod
    def of(cls, pb2: ModuleType, pb2_grpc: ModuleType, name: str, servicer: Any) -> Service:
        """Service `name` of a generated module pair, e.g. `Service.of(ingest_pb2, ingest_pb2_grpc, "IngestService", s)`."""
        return cls(pb2.DESCRIPTOR.services_by_name[name], servicer, getattr(pb2_grpc, f"add_{name}Servicer_to_server"))


def channel_options(max_message_mb: int) -> list[tuple[str, Any]]:
    """Options both ends share: message size limits."""
    size = max_message_mb * 1024 * 1024
    return [("grpc.max_send_message_length", size), ("grpc.max_receive_message_length", size)]


@dataclass
class RunningServer:
    """A started server, its bound port and its health servicer."""

    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer
    grace: float

    async def stop(self) -> None:
        """Turn NOT_SERVING, refuse new calls and let calls in flight finish within the grace period."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.grace)


async def start_server(
    services: Sequence[Service],
    listen: str,
    *,
    token: str | None = None,
    grace: float = 10.0,
    max_message_mb: int = 64,
) -> RunningServer:
    """Build, bind and start a server; `listen` is host:port, port 0 picks a free one."""
    interceptors: list[grpc.aio.ServerInterceptor] = [ErrorInterceptor()]
    if token:
        interceptors.insert(0, AuthInterceptor(token))
    # so_reuseport off: a second server on a taken port must fail, not share it.
    options = [*channel_options(max_message_mb), ("grpc.so_reuseport", 0)]
    server = grpc.aio.server(interceptors=interceptors, options=options)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for service in services:
        service.add(service.servicer, server)
    names = [s.name for s in services]
    reflection.enable_server_reflection([*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                                         reflection.SERVICE_NAME], server)
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise FailedPrecondition(f"cannot listen on {listen}: the address is taken or invalid ({exc})") from exc
    if port == 0:
        raise FailedPrecondition(f"cannot listen on {listen}: the address is taken or invalid")
    await server.start()
    for name in ("", *names):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving %s on port %d", ", ".join(names) or "health only", port)
    return RunningServer(server, port, health, grace)


async def serve(services: Sequence[Service], listen: str, **kwargs: Any) -> None:
    """Run a server until SIGTERM or SIGINT, then shut it down gracefully."""
    running = await start_server(services, listen, **kwargs)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down, %.0f s grace for calls in flight", running.grace)
    await running.stop()
    for service in services:  # e.g. the trainer's Prefect runner, which kills the runs in flight
        close = getattr(service.servicer, "close", None)
        if close is not None:
            await asyncio.to_thread(close)
    log.info("stopped")
