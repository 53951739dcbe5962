"""Entry point of the OpenAI-compatible API: `doppel serve openai`, uvicorn in the foreground until SIGTERM."""

from __future__ import annotations

from typing import Any

import uvicorn

from doppel.config import Settings
from doppel.errors import InvalidArgument

from .app import build


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of `host:port` (`[::1]:8000` for IPv6)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise InvalidArgument(f"{address!r} is not host:port (e.g. 127.0.0.1:8000)")
    return host.strip("[]"), int(port)


def config(settings: Settings, address: str, **kwargs: Any) -> uvicorn.Config:
    """The server of the API at `address`."""
    host, port = split_address(address)
    return uvicorn.Config(build(settings), host=host, port=port, log_level=settings.log_level.lower(), access_log=False,
                          timeout_graceful_shutdown=int(settings.grace_s), server_header=False, **kwargs)


def serve(settings: Settings, address: str) -> None:
    uvicorn.Server(config(settings, address)).run()
