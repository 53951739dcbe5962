"""`doppel eval`: how much a persona model sounds like its people, measured by the trainer service.

Shows the evaluation's progress on stderr, then each speaker's table (the same one the run's
Prefect artifact and the UI's Models tab show), or, with `--json`, one JSON object on stdout.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from doppel.cli.context import fail, follow


def evaluate(
    model_id: Annotated[str, typer.Argument(help="Model id.")],
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset whose held-out turns to answer; default the model's own.")] = "",
    samples: Annotated[int, typer.Option("--samples", min=0, help="Most held-out turns answered per speaker; 0: 200.")] = 0,
    seed: Annotated[int | None, typer.Option("--seed", help="Sampling seed; default the model's training seed.")] = None,
    base: Annotated[bool, typer.Option("--base", help="Also measure the base model alone, on the same turns.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with every figure instead of tables.")] = False,
) -> None:
    """Measure a model's fidelity on held-out turns. On the model's own dataset the figures become the model's."""
    from doppel import fidelity
    from doppel.clients import TrainerClient
    from doppel.v1 import trainer_pb2 as tr

    request = tr.EvaluateModelRequest(model_id=model_id, dataset_id=dataset, samples=samples, include_base=base)
    if seed is not None:
        request.seed = seed
    last = follow(TrainerClient, lambda c: c.evaluate_model(request), lambda e: (e.message, e.done, e.total))
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
