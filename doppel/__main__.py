"""`python -m doppel` is the `doppel` command."""

from doppel.cli.main import app

app(prog_name="doppel")
