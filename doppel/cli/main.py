"""`doppel`: run the stack or one service, check health, show settings.

Commands import what they need inside their bodies, so `doppel --help` stays fast
and a command never pays for a service it does not touch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from enum import Enum

import typer

from doppel import __version__
from doppel.cli import bases as bases_commands
from doppel.cli import chat as chat_commands
from doppel.cli import evaluate as evaluate_commands
from doppel.cli import ingest as ingest_commands
from doppel.cli import train as train_commands
from doppel.cli import ui as ui_commands
from doppel.cli.context import fail as _fail
from doppel.cli.context import settings as _settings

app = typer.Typer(
    help="Doppel: turn a chat history into a model that talks like a chosen person, and serve it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class ServiceName(str, Enum):
    ingest = "ingest"
    trainer = "trainer"
    inference = "inference"
    openai = "openai"  # the OpenAI-compatible HTTP API over inference, not a gRPC service


GRPC_SERVICES = [s.value for s in ServiceName if s is not ServiceName.openai]


@app.command()
def version() -> None:
    """Print Doppel's version."""
    typer.echo(__version__)


@app.command()
def config() -> None:
    """Print the resolved settings (from DOPPEL_* variables) as JSON; the API token is masked."""
    typer.echo(_settings().model_dump_json(indent=2))


@app.command()
def serve(
    service: ServiceName = typer.Argument(..., help="Which service to run."),
    listen: str = typer.Option("", help="host:port to bind; default DOPPEL_LISTEN or the service's DOPPEL_*_ADDR."),
) -> None:
    """Run one service in the foreground until SIGTERM or Ctrl-C (`openai`: the OpenAI-compatible HTTP API)."""
    import importlib

    from doppel.errors import DoppelError
    from doppel.rpc.server import serve as serve_forever

    settings = _settings()
    logging.basicConfig(level=settings.log_level, format=f"%(asctime)s {service.value} %(levelname)s %(message)s")
    # httpx says every request at INFO: the trainer's Prefect runner polls every second, for ever.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    address = listen or settings.listen or getattr(settings, f"{service.value}_addr")
    if service is ServiceName.openai:
        from services.gateway.server import serve as serve_http

        try:
            return serve_http(settings, address)
        except DoppelError as exc:
            _fail(str(exc))
    services = importlib.import_module(f"services.{service.value}.server").build(settings)
    try:
        asyncio.run(
            serve_forever(
                services,
                address,
                token=settings.token(),
                grace=settings.grace_s,
                max_message_mb=settings.max_message_mb,
            )
        )
    except DoppelError as exc:
        _fail(str(exc))


@app.command()
def balancer(
    replica: list[str] = typer.Option(..., "--replica", help="host:port of an inference replica (repeatable)."),
    listen: str = typer.Option("", help="host:port to serve; default DOPPEL_LISTEN or DOPPEL_INFERENCE_ADDR."),
) -> None:
    """Run nginx in front of inference replicas, in the foreground, logging to stdout and stderr (the compose
    file's `replicas` profile runs this; `doppel up --inference-replicas N` runs its own)."""
    from doppel import balancer as nginx
    from doppel.errors import DoppelError

    settings = _settings()
    try:
        conf = nginx.write_config(listen or settings.listen or settings.inference_addr, replica, settings.home / "balancer",
                                  max_message_mb=settings.max_message_mb, stdio=True)
        argv = nginx.command(conf, stdio=True)
    except DoppelError as e:
        _fail(str(e), 2)
    os.execv(argv[0], argv)


@app.command("train-node")
def train_node(
    devices: int | None = typer.Option(None, "--devices", min=1, help="Processes to train with here, a GPU each; "
                                       "default: every GPU this machine has, or 1 on a CPU. Give every machine the same."),
) -> None:
    """Lend this machine to the trainer's runs on several machines: join each run it launches in DOPPEL_TRAIN_JOBS
    (a folder both mount) through torchrun, until SIGTERM or Ctrl-C."""
    import torch

    from services.trainer import ranks

    settings = _settings()
    if settings.train_jobs is None:
        _fail("DOPPEL_TRAIN_JOBS must name the folder the trainer writes its runs' jobs to (mounted here too)", 2)
    settings.train_jobs.mkdir(parents=True, exist_ok=True)
    here = devices or (torch.cuda.device_count() if torch.cuda.is_available() else 1)
    typer.echo(f"waiting for runs in {settings.train_jobs}, to train with {here} process{'es' * (here != 1)} here")
    try:
        ranks.join(settings.train_jobs, here, settings.home / "train-node", threads=settings.train_threads or None,
                   malloc=settings.train_malloc,
                   say=lambda line: typer.echo(line))
    except KeyboardInterrupt:
        pass


@app.command()
def healthcheck(
    addr: str = typer.Argument(..., help="host:port of a Doppel service."),
    service: str = typer.Option("", help="Service name to check, e.g. doppel.v1.IngestService; default the server."),
    timeout: float = typer.Option(5.0, help="Seconds to wait for an answer."),
) -> None:
    """Exit 0 when the gRPC health check at ADDR answers SERVING, 1 otherwise (for compose and scripts)."""
    import grpc
    from grpc_health.v1 import health_pb2

    from doppel.clients import ServiceClient, rpc_error_message

    with ServiceClient(addr) as client:
        try:
            status = client.health(service, timeout=timeout)
        except grpc.RpcError as err:
            if err.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                _fail(f"{addr}: no answer within {timeout:g} s; is the service running there?")
            _fail(f"{addr}: {rpc_error_message(err)}")
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    typer.echo(f"{addr}: {name}")
    if status != health_pb2.HealthCheckResponse.SERVING:
        raise typer.Exit(1)


@app.command()
def up(
    timeout: float = typer.Option(
        120.0, help="Seconds to wait for the Prefect server, then for every service, then for the UI, to turn healthy."
    ),
    demo: bool = typer.Option(
        False, "--demo", help="Import the demo chats (invented people) unless a dataset of theirs exists; "
        "without it, they are imported only into a store with no dataset."
    ),
    inference_replicas: int | None = typer.Option(
        None, "--inference-replicas", min=1, max=64, help="Inference processes to run behind nginx, which balances "
        "calls by model (one per GPU; default: DOPPEL_INFERENCE_REPLICAS, 1)."
    ),
) -> None:
    """Run the whole stack here until Ctrl-C: a local Prefect server, every service and the UI, as child processes."""
    from functools import partial

    from doppel import balancer
    from doppel.cli.supervisor import PrefectEndpoint, Stack, ui_url
    from doppel.demo import first_run
    from doppel.errors import DoppelError
    from doppel.store import open_store

    settings = _settings()
    if inference_replicas is not None:
        settings = settings.model_copy(update={"inference_replicas": inference_replicas})
    if settings.inference_replicas > 1:
        try:
            balancer.nginx()
        except DoppelError as e:
            _fail(str(e), 2)
    try:
        PrefectEndpoint.parse(settings.prefect_api_url)
    except ValueError as e:
        _fail(f"DOPPEL_PREFECT_API_URL={settings.prefect_api_url!r}: {e}", 2)
    try:  # a wrong store URL or a store that is down is said here, once, not by every service
        with open_store(settings.store_url) as store:
            store_url = store.url
    except DoppelError as e:
        _fail(f"DOPPEL_STORE_URL: {e}", 2)
    after_up = partial(first_run, settings, always=demo, ui_url=ui_url(settings))
    stack = Stack(settings, GRPC_SERVICES, store_url=store_url, after_up=after_up)
    sys.exit(stack.run(timeout=timeout))


app.command("ingest")(ingest_commands.ingest)
app.command("inspect")(ingest_commands.inspect)
app.add_typer(ingest_commands.datasets_app, name="datasets")
app.command("train")(train_commands.train)
app.command("eval")(evaluate_commands.evaluate)
app.command("chat")(chat_commands.chat)
app.command("generate")(chat_commands.generate)
app.command("simulate")(chat_commands.simulate)
app.command("ui")(ui_commands.ui)
app.add_typer(train_commands.runs_app, name="runs")
app.add_typer(train_commands.models_app, name="models")
app.add_typer(bases_commands.bases_app, name="bases")


@app.callback()
def _root(
    show_version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    if show_version:
        typer.echo(__version__)
        raise typer.Exit()
