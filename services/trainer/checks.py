"""Checks a training request before anything starts, wherever it came from.

The servicer runs them before it creates a flow run, and the flow runs them again first thing,
so a run started from the Prefect dashboard with a bad form fails at once with the same message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from doppel import dataset
from doppel.dataset import DatasetManifest
from doppel.errors import FailedPrecondition, InvalidArgument
from doppel.store.base import Store

from . import basemodels, quantization
from .recipe import MIN_MESSAGES, Recipe, TrainRequest, parse_request, resolve


@dataclass(frozen=True)
class Checked:
    request: TrainRequest
    recipe: Recipe
    dataset: DatasetManifest


def _counts(participants: dict[str, int]) -> str:
    return ", ".join(f"{name} ({n})" for name, n in participants.items()) or "none"


def check_request(store: Store, data: dict[str, Any] | TrainRequest, *, min_messages: int = MIN_MESSAGES) -> Checked:
    """The request, its resolved recipe and its dataset; raises on the first thing wrong."""
    request = parse_request(data)
    recipe = resolve(request)
    manifest = dataset.DATASETS.get(store, request.dataset_id)
    participants = manifest.stats.participants
    unknown = [s for s in request.speakers if s not in participants]
    if unknown:
        raise InvalidArgument(
            f"unknown speaker{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in dataset "
            f"{manifest.id!r}; its participants (messages): {_counts(participants)}"
        )
    for s in request.speakers:
        if participants[s] < min_messages:
            raise FailedPrecondition(
                f"{s!r} has {participants[s]} messages in dataset {manifest.id!r}; training needs at least {min_messages}"
            )
    basemodels.check_base_model(recipe.base_model, store)
    if recipe.method == "qlora":
        quantization.check()
        if (request.devices or 1) > 1:
            raise InvalidArgument("QLoRA trains on one device; use LoRA to train on several")
    return Checked(request, recipe, manifest)
