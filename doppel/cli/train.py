"""`doppel train`, `doppel runs` and `doppel models`: the trainer service from the command line.

`train` starts a run and follows it with a progress bar (step, loss, learning rate, ETA) and the
samples as they come, until it ends; Ctrl-C stops following, not the run. `runs` and `models`
list by default and have subcommands to show, watch, cancel, export and delete.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from doppel import enums
from doppel.cli.context import call, fail, settings
from doppel.cli.ingest import option_duration

runs_app = typer.Typer(help="Training runs: list (the default), show, watch, cancel.")
models_app = typer.Typer(help="Persona models: list (the default), show, export, import, delete.")


def _call(method: str, request: Any, **kwargs: Any) -> Any:
    from doppel.clients import TrainerClient

    return call(TrainerClient, method, request, **kwargs)


def _state(value: int) -> str:
    from doppel.v1 import trainer_pb2

    return enums.name(trainer_pb2.RunState, value)


def train(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset id (see `doppel datasets list`).")],
    persona: Annotated[list[str], typer.Option("--persona", help="Speaker to learn (repeatable: a group model).")],
    base_model: Annotated[str, typer.Option("--base-model", help="smollm2-135m, tiny, a local path, store key or hub id.")] = "",
    method: Annotated[str, typer.Option("--method", help="lora, qlora (LoRA on a 4-bit base) or full.")] = "lora",
    preset: Annotated[str, typer.Option("--preset", help="default, quick-cpu or quality.")] = "",
    name: Annotated[str, typer.Option("--name", help="Name of the model; default: the personas.")] = "",
    steps: Annotated[int | None, typer.Option("--steps", help="Stop after this many optimizer steps.")] = None,
    epochs: Annotated[float | None, typer.Option("--epochs", help="Passes over the data (unless --steps).")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate.")] = None,
    schedule: Annotated[str, typer.Option("--schedule", help="cosine, linear or constant.")] = "",
    warmup: Annotated[float | None, typer.Option("--warmup", help="Fraction of steps spent warming up.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Samples per forward pass.")] = None,
    grad_accum: Annotated[int | None, typer.Option("--grad-accum", help="Forward passes per step.")] = None,
    block_size: Annotated[int | None, typer.Option("--block-size", help="Most tokens in a sample.")] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", help="AdamW weight decay.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed.")] = None,
    held_out: Annotated[float | None, typer.Option("--held-out", help="Latest fraction of each conversation held out.")] = None,
    save_every: Annotated[int | None, typer.Option("--save-every", help="Checkpoint every N steps.")] = None,
    sample_every: Annotated[int | None, typer.Option("--sample-every", help="Sample every N steps (0: at the end).")] = None,
    prompt: Annotated[list[str], typer.Option("--prompt", help="A line said to the persona, to sample replies to (repeatable).")] = [],  # noqa: B006
    precision: Annotated[str, typer.Option("--precision", help="auto, fp32, bf16 or fp16.")] = "auto",
    checkpointing: Annotated[bool | None, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing",
                                                       help="Trade compute for memory.")] = None,
    session_gap: Annotated[str, typer.Option("--session-gap", help="New session after a pause this long, e.g. 6h.")] = "",
    lora_rank: Annotated[int | None, typer.Option("--lora-rank", help="LoRA rank.")] = None,
    lora_alpha: Annotated[float | None, typer.Option("--lora-alpha", help="LoRA alpha.")] = None,
    lora_dropout: Annotated[float | None, typer.Option("--lora-dropout", help="LoRA dropout.")] = None,
    devices: Annotated[int | None, typer.Option("--devices", min=1, help="Devices to train on, a process each (torchrun); "
                                                "default: every GPU the trainer was given.")] = None,
    detach: Annotated[bool, typer.Option("--detach", help="Print the run id and return; do not follow it.")] = False,
) -> None:
    """Start a training run and follow it until it ends."""
    from doppel.v1 import trainer_pb2 as tr

    methods = enums.values(tr.Method)
    if method not in methods:
        fail(f"--method must be one of {', '.join(methods)}, not {method!r}", 2)
    schedules = enums.values(tr.LrSchedule)
    precisions = {"auto": tr.PRECISION_UNSPECIFIED, **enums.values(tr.Precision)}
    if schedule and schedule not in schedules:
        fail(f"--schedule must be one of {', '.join(schedules)}, not {schedule!r}", 2)
    if precision not in precisions:
        fail(f"--precision must be one of {', '.join(precisions)}, not {precision!r}", 2)
    optional: dict[str, Any] = {
        "max_steps": steps, "epochs": epochs, "learning_rate": lr, "warmup_ratio": warmup, "batch_size": batch_size,
        "gradient_accumulation_steps": grad_accum, "block_size": block_size, "weight_decay": weight_decay,
        "seed": seed, "held_out_fraction": held_out, "save_every": save_every, "sample_every": sample_every,
        "gradient_checkpointing": checkpointing,
    }
    hyper = tr.Hyperparameters(**{k: v for k, v in optional.items() if v is not None}, sample_prompts=prompt,
                               precision=precisions[precision], lr_schedule=schedules.get(schedule, tr.LR_SCHEDULE_UNSPECIFIED))
    gap = option_duration(session_gap, "--session-gap")
    if gap is not None:
        hyper.session_gap.FromTimedelta(gap)
    lora_given: dict[str, Any] = {"rank": lora_rank, "alpha": lora_alpha, "dropout": lora_dropout}
    lora = tr.LoraConfig(**{k: v for k, v in lora_given.items() if v is not None})
    spec = tr.TrainingSpec(dataset_id=dataset, speakers=persona, base_model=base_model, method=methods[method],
                           lora=lora, hyperparameters=hyper, model_name=name, preset=preset, devices=devices)
    run = _call("start_run", tr.StartRunRequest(spec=spec)).run
    typer.echo(f"run {run.run_id}\n  dashboard  {run.dashboard_url}")
    if detach:
        return
    raise typer.Exit(_follow(run.run_id, from_start=True))


def _follow(run_id: str, *, from_start: bool) -> int:
    """Show a run's events until it ends; the exit code: 0 if it completed."""
    import grpc
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from doppel.clients import TrainerClient, rpc_error_message
    from doppel.v1 import trainer_pb2 as tr

    console = Console(stderr=True)
    live = sys.stderr.isatty()
    last, said_step = None, 0  # without a terminal there is no bar: a plain line every tenth of the run instead
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[figures]}"),
               TimeRemainingColumn()]
    with TrainerClient.from_settings(settings()) as client, Progress(*columns, console=console, disable=not live) as bar:
        task = bar.add_task("starting", total=None, figures="")
        try:
            for e in client.watch_run(tr.WatchRunRequest(run_id=run_id, from_start=from_start)):
                last = e
                figures = "  ".join(
                    f"{label} {getattr(e, field):.4g}"
                    for label, field in (("loss", "loss"), ("lr", "learning_rate"), ("held-out", "held_out_loss"))
                    if e.HasField(field)
                )
                bar.update(task, description=e.message or _state(e.state), completed=e.step, total=e.total_steps or None,
                           figures=figures)
                if e.message and not e.HasField("loss"):
                    bar.console.print(f"[{_state(e.state)}] {e.message}", markup=False, highlight=False)
                elif not live and e.HasField("loss") and (e.step - said_step >= max(1, e.total_steps // 10) or e.step == e.total_steps):
                    said_step = e.step
                    bar.console.print(f"step {e.step}/{e.total_steps or '?'}  {figures}", markup=False, highlight=False)
                for s in e.samples:
                    bar.console.print(f"--- sample at step {s.step}\n{s.prompt} {s.text}", markup=False, highlight=False)
        except KeyboardInterrupt:
            console.print(f"stopped following; the run goes on (`doppel runs cancel {run_id}` stops it)")
            return 130
        except grpc.RpcError as err:
            fail(f"{client.addr}: {rpc_error_message(err)}")
    if last is None:
        return 1
    final = _call("get_run", tr.GetRunRequest(run_id=run_id)).run
    typer.echo(f"{_state(final.state)}: {final.message}" if final.message else _state(final.state))
    if final.model_id:
        typer.echo(f"model {final.model_id}")
    return 0 if final.state == tr.RUN_STATE_COMPLETED else 1


@runs_app.callback(invoke_without_command=True)
def list_runs(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option("--dataset", help="Only runs on this dataset.")] = "",
    limit: Annotated[int, typer.Option("--limit", help="Most runs to list.")] = 20,
) -> None:
    """One line per run, newest first: id, state, step/total, speakers, model."""
    if ctx.invoked_subcommand:
        return
    from doppel.v1 import trainer_pb2 as tr

    for r in _call("list_runs", tr.ListRunsRequest(dataset_id=dataset, page_size=limit)).runs:
        model = f"  model {r.model_id}" if r.model_id else ""
        typer.echo(f"{r.run_id}  {_state(r.state):<10} {r.step}/{r.total_steps}  {','.join(r.spec.speakers)}  "
                   f"{r.spec.dataset_id}{model}")


@runs_app.command("show")
def show_run(run_id: Annotated[str, typer.Argument(help="Run id.")]) -> None:
    """A run as JSON."""
    from google.protobuf.json_format import MessageToJson

    from doppel.v1 import trainer_pb2 as tr

    typer.echo(MessageToJson(_call("get_run", tr.GetRunRequest(run_id=run_id)).run))


@runs_app.command("watch")
def watch_run(run_id: Annotated[str, typer.Argument(help="Run id.")]) -> None:
    """Follow a run until it ends."""
    raise typer.Exit(_follow(run_id, from_start=False))


@runs_app.command("cancel")
def cancel_run(run_id: Annotated[str, typer.Argument(help="Run id.")]) -> None:
    """Cancel a run: its flow run is cancelled and its process stopped."""
    from doppel.v1 import trainer_pb2 as tr

    run = _call("cancel_run", tr.CancelRunRequest(run_id=run_id)).run
    typer.echo(f"{run.run_id}  {_state(run.state)}")


@models_app.callback(invoke_without_command=True)
def list_models(ctx: typer.Context) -> None:
    """One line per model, newest first: id, name, base, method, held-out loss (base's), and fidelity
    (per speaker: style distance, who-said-it share of its replies, real-or-generated accuracy, copies)."""
    if ctx.invoked_subcommand:
        return
    from doppel import fidelity
    from doppel.v1 import trainer_pb2 as tr

    token = ""
    while True:
        page = _call("list_models", tr.ListModelsRequest(page_token=token))
        for m in page.models:
            ev = m.evaluation
            measured = "; ".join(fidelity.summary(fidelity.from_proto(f)) for f in m.fidelity) or "fidelity not measured"
            typer.echo(f"{m.id}  {m.name!r}  {m.base_model}  {enums.name(tr.Method, m.method)}  "
                       f"held-out loss {ev.held_out_loss:.3f} (base {ev.base_held_out_loss:.3f})  {measured}")
        token = page.next_page_token
        if not token:
            break


@models_app.command("show")
def show_model(model_id: Annotated[str, typer.Argument(help="Model id.")]) -> None:
    """A model's manifest as JSON."""
    from google.protobuf.json_format import MessageToJson

    from doppel.v1 import trainer_pb2 as tr

    typer.echo(MessageToJson(_call("get_model", tr.GetModelRequest(model_id=model_id)).model))


@models_app.command("export")
def export_model(
    model_id: Annotated[str, typer.Argument(help="Model id.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write; it must not exist.")],
    fmt: Annotated[str, typer.Option("--format", help="adapter (the LoRA adapter, for peft on its base), merged "
                                                      "(a standalone transformers model), gguf (for llama.cpp) or "
                                                      "ollama (the GGUF and a Modelfile).")] = "merged",
    dtype: Annotated[str, typer.Option("--dtype", help="The weights' type (merged, gguf, ollama): f32, f16 or bf16.")] = "f32",
    quant: Annotated[str, typer.Option("--quant", help="A GGUF's quantisation instead of --dtype: q8_0.")] = "",
) -> None:
    """Export a persona to use it elsewhere: its files, doppel.json (who it is, how it measured) and a notice
    that what it writes is generated; its chat template renders a chat as Doppel does."""
    import grpc

    from doppel.clients import TrainerClient, rpc_error_message
    from doppel.errors import DoppelError
    from doppel.v1 import trainer_pb2 as tr

    formats = enums.values(tr.ModelExportFormat)
    if fmt not in formats:
        fail(f"--format must be one of {', '.join(formats)}, not {fmt!r}", 2)
    if out.exists():
        fail(f"{out} exists; export to a path that does not", 2)
    request = tr.ExportModelRequest(model_id=model_id, format=formats[fmt], dtype=dtype, quant=quant)
    with TrainerClient.from_settings(settings()) as client:
        try:
            files = client.export_to(request, out)
        except grpc.RpcError as err:
            fail(f"{client.addr}: {rpc_error_message(err)}")
        except (OSError, DoppelError) as err:
            fail(f"{out}: {err}")
    size = sum((out / f).stat().st_size for f in files)
    typer.echo(f"exported {model_id} as {fmt} to {out}: {len(files)} files, {size / 2**20:.1f} MiB")


@models_app.command("import")
def import_model(
    path: Annotated[Path, typer.Argument(help="A folder `doppel models export` wrote (adapter or merged).")],
    name: Annotated[str, typer.Option("--name", help="Name of the new model; default: the exported one's.")] = "",
) -> None:
    """Bring an exported persona back as a model of its own id (an adapter needs its base in the store)."""
    import grpc

    from doppel.clients import TrainerClient, rpc_error_message

    with TrainerClient.from_settings(settings()) as client:
        try:
            made = client.import_model(path, name).model
        except grpc.RpcError as err:
            fail(f"{client.addr}: {rpc_error_message(err)}")
        except OSError as err:
            fail(str(err), 2)
    typer.echo(f"imported {path} as {made.id} ({made.name}; {', '.join(made.speakers)})")


@models_app.command("delete")
def delete_model(model_id: Annotated[str, typer.Argument(help="Model id.")]) -> None:
    """Delete a model from the store."""
    from doppel.v1 import trainer_pb2 as tr

    r = _call("delete_model", tr.DeleteModelRequest(model_id=model_id))
    typer.echo(f"deleted {model_id}: {r.objects_deleted} objects")
