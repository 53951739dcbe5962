"""What every command needs: settings from the environment, and one way to fail."""

from __future__ import annotations

from typing import NoReturn

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
