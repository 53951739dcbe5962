"""`doppel bases`: the base models personas are trained from: list them, pull one from the Hugging Face Hub."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from doppel.cli.context import call, fail, follow, settings

bases_app = typer.Typer(help="Base models: list (the default), pull from the Hugging Face Hub, add your own.")


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f}G"


def describe(b: Any) -> str:
    """One line: name, size, chat or plain, where it is, memory to train it, and what it is."""
    where = "stored" if b.stored else ("gated, pull" if b.gated else "pull")
    memory = {m.method: m for m in b.training_memory}
    fits = "  ".join(f"{k} {_gib(m.bytes)}" for k, m in memory.items())
    return (f"{b.name:<24} {b.parameters / 1e6:8.1f}M  {'chat ' if b.chat_template else 'plain'}  {where:<11} "
            f"{fits}  {b.description}")


@bases_app.callback(invoke_without_command=True)
def list_bases(ctx: typer.Context) -> None:
    """Every base model: built in, in the store, and curated ones to pull; with the memory a training
    step needs for LoRA, QLoRA and full training (bf16, the default batch and block size)."""
    if ctx.invoked_subcommand:
        return
    from doppel.clients import TrainerClient
    from doppel.v1 import trainer_pb2 as tr

    for b in call(TrainerClient, "list_base_models", tr.ListBaseModelsRequest()).base_models:
        typer.echo(describe(b))


@bases_app.command("pull")
def pull(
    model: Annotated[str, typer.Argument(help="A hub id (Qwen/Qwen2.5-0.5B-Instruct) or a curated name (`doppel bases`).")],
    revision: Annotated[str, typer.Option("--revision", help="Branch, tag or commit; default main.")] = "",
    name: Annotated[str, typer.Option("--name", help="Name in the store; default the curated or repository name.")] = "",
) -> None:
    """Download a base model from the Hugging Face Hub into the store (the trainer does it: its HF_TOKEN,
    HF_ENDPOINT and HF_HUB_OFFLINE apply)."""
    from doppel.clients import TrainerClient
    from doppel.v1 import trainer_pb2 as tr

    request = tr.PullBaseModelRequest(model=model, revision=revision, name=name)
    last = follow(TrainerClient, lambda c: c.pull_base_model(request), lambda e: (e.message, e.done_bytes, e.total_bytes),
                  transfer=True)
    if last is None or not last.HasField("base_model"):
        fail("the pull ended without a base model")
    typer.echo(describe(last.base_model))


@bases_app.command("add")
def add(
    path: Annotated[str, typer.Argument(help="A folder written by save_pretrained (model and tokenizer), or one .gguf file.")],
    name: Annotated[str, typer.Option("--name", help="Name in the store.")],
) -> None:
    """Upload a base model you have to the trainer's store (a GGUF file is dequantised to bf16 safetensors)."""
    from pathlib import Path

    import grpc
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from doppel.clients import TrainerClient, rpc_error_message

    if not Path(path).exists():
        fail(f"{path}: no such file or folder")
    columns = [TextColumn("uploading"), BarColumn(), DownloadColumn(), TransferSpeedColumn()]
    with TrainerClient.from_settings(settings()) as client, Progress(*columns, console=Console(stderr=True),
                                                                     disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("uploading", total=None)
        try:
            added = client.add_base_model(path, name, progress=lambda sent, total: bar.update(task, completed=sent, total=total))
        except grpc.RpcError as err:
            fail(f"{client.addr}: {rpc_error_message(err)}")
    typer.echo(describe(added.base_model))
