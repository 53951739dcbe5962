"""What every command needs: settings from the environment, one way to fail, one way to follow a stream."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
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


def follow(client_class: Any, start: Callable[[Any], Iterable[Any]], figures: Callable[[Any], tuple[str, int, int]], *,
           transfer: bool = False) -> Any:
    """Follow a streaming RPC on a client of `client_class` with a progress bar on stderr (without a
    terminal, a line each time its message changes); its last event, or None if it sent none.

    `figures(event)` is (message, done, total: 0 when unknown); `transfer`: done and total are bytes.
    """
    import grpc
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from doppel.clients import rpc_error_message

    console = Console(stderr=True)
    columns = [TextColumn("{task.description}"), BarColumn(),
               *((DownloadColumn(), TransferSpeedColumn()) if transfer else (MofNCompleteColumn(), TimeRemainingColumn()))]
    last, said = None, ""
    with client_class.from_settings(settings()) as client, Progress(*columns, console=console,
                                                                    disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("starting", total=None)
        try:
            for last in start(client):
                message, done, total = figures(last)
                if message != said and not bar.live.is_started:
                    console.print(message, markup=False, highlight=False)
                said = message
                bar.update(task, description=message, completed=done, total=total or None)
        except grpc.RpcError as err:
            fail(f"{client.addr}: {rpc_error_message(err)}")
    return last
