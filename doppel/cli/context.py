"""What every command needs: settings from the environment, and one way to fail."""

from __future__ import annotations

from typing import Any, NoReturn

import typer

from doppel.config import Settings


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: message` to stderr and exit with `code`."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def settings() -> Settings:
    """Settings from the environment; a bad value exits with the variable's name, not a traceback."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"DOPPEL_{'_'.join(map(str, e['loc'])).upper()}={e.get('input')!r}: {e['msg']}" for e in exc.errors()
        )
        fail(f"invalid setting: {problems}", code=2)


def call(client_class: Any, method: str, request: Any, **kwargs: Any) -> Any:
    """One RPC on a client of `client_class` built from the settings; an RPC error exits with its message."""
    import grpc

    from doppel.clients import rpc_error_message

    with client_class.from_settings(settings()) as client:
        try:
            return getattr(client, method)(request, **kwargs)
        except grpc.RpcError as err:
            fail(f"{client.addr}: {rpc_error_message(err)}")
