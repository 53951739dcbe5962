"""`doppel eval`: how much a persona model sounds like its people, measured by the trainer service.

Shows the evaluation's progress on stderr, then each speaker's table (the same one the run's
Prefect artifact and the UI's Models tab show), or, with `--json`, one JSON object on stdout.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from doppel.cli.context import fail, settings


def evaluate(
    model_id: Annotated[str, typer.Argument(help="Model id.")],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset whose held-out turns to answer; default the model's own.")] = "",
    samples: Annotated[int, typer.Option("--samples", min=0, help="Most held-out turns answered per speaker; 0: 200.")] = 0,
    seed: Annotated[int | None, typer.Option("--seed", help="Sampling seed; default the model's training seed.")] = None,
    base: Annotated[bool, typer.Option("--base", help="Also measure the base model alone, on the same turns.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with every figure instead of tables.")] = False,
) -> None:
    """Measure a model's fidelity on held-out turns. On the model's own dataset the figures become the model's."""
    import grpc
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from doppel import fidelity
    from doppel.clients import TrainerClient, rpc_error_message
    from doppel.v1 import trainer_pb2 as tr

    request = tr.EvaluateModelRequest(model_id=model_id, dataset_id=dataset, samples=samples, include_base=base)
    if seed is not None:
        request.seed = seed
    last: Any = None
    console = Console(stderr=True)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with TrainerClient.from_settings(settings()) as client, Progress(*columns, console=console,
                                                                     disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("starting", total=None)
        try:
            for last in client.evaluate_model(request):
                if last.message != bar.tasks[0].description and not bar.live.is_started:
                    console.print(last.message, markup=False, highlight=False)
                bar.update(task, description=last.message, completed=last.done, total=last.total or None)
        except grpc.RpcError as err:
            fail(f"{client.addr}: {rpc_error_message(err)}")
    if last is None or not last.fidelity:
        fail("the evaluation ended without figures")
    figures = [fidelity.from_proto(f) for f in last.fidelity]
    base_figures = [fidelity.from_proto(f) for f in last.base_fidelity]
    if as_json:
        typer.echo(json.dumps({
            "model_id": model_id, "dataset_id": figures[0].dataset_id, "saved": last.saved,
            "fidelity": [f.model_dump(mode="json") for f in figures],
            "base_fidelity": [f.model_dump(mode="json") for f in base_figures],
        }, indent=2))
        return
    for f, b in fidelity.paired(figures, base_figures):
        typer.echo(fidelity.markdown(f, b))
    if last.saved:
        typer.echo(f"kept as the figures of model {model_id}")
