"""Which persona model a request's `model` names, and the models `/v1/models` lists.

A `model` is one of:
* a model id (`model-...`): the model, replying as its first speaker;
* a persona's name (`Jonah Pell`): the newest model that learned that speaker, replying as them;
* a model's name (its run's `--name`): the newest model of that name, as its first speaker;
* any of these, then `:` and a speaker the model learned (`model-...:Mara Quist`): a group
  model replying as that speaker.

The listing is the inference service's, asked again at most every `FRESH_S` seconds, and at
once when a name is not in it (a model published a moment ago is found on its first request).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from doppel.v1 import inference_pb2 as inf

from .errors import ApiError

FRESH_S = 5.0
OWNER = "doppel"


@dataclass(frozen=True)
class Target:
    """A resolved `model`: the served model, and who replies (one of its speakers)."""

    model: inf.ServedModel
    speaker: str
    named: bool  # the speaker was named (an alias or a suffix), not the model's default

    @property
    def model_id(self) -> str:
        return self.model.model_id


class Directory:
    """The served models, from `fetch` (ListServedModels), with their aliases."""

    def __init__(self, fetch: Callable[[], Awaitable[list[inf.ServedModel]]], fresh_s: float = FRESH_S):
        self._fetch, self._fresh_s = fetch, fresh_s
        self._models: list[inf.ServedModel] = []
        self._at = -float("inf")
        self._lock = asyncio.Lock()

    async def models(self, *, refresh: bool = False) -> list[inf.ServedModel]:
        """Every model, newest first."""
        async with self._lock:
            if refresh or time.monotonic() - self._at > self._fresh_s:
                listed = await self._fetch()
                self._models = sorted(listed, key=lambda m: (m.created.ToNanoseconds(), m.model_id), reverse=True)
                self._at = time.monotonic()
            return self._models

    async def resolve(self, name: str) -> Target:
        """The target `name` names; 404 (OpenAI's `model_not_found`) when none."""
        for refresh in (False, True):
            if (target := _resolve(await self.models(refresh=refresh), name)) is not None:
                return target
        raise ApiError(404, f"the model {name!r} does not exist: use a model id, a persona's name, or "
                            "`model id:speaker`, as GET /v1/models lists them", param="model", code="model_not_found")


def _resolve(models: list[inf.ServedModel], name: str) -> Target | None:
    found = _named(models, name)
    if found is not None or ":" not in name:
        return found
    head, speaker = name.rsplit(":", 1)
    target = _named(models, head)
    if target is None:
        return None
    if speaker not in target.model.speakers:
        raise ApiError(404, f"model {target.model_id!r} did not learn to write as {speaker!r}; it learned "
                            f"{', '.join(repr(s) for s in target.model.speakers)}", param="model", code="model_not_found")
    return Target(target.model, speaker, True)


def _named(models: list[inf.ServedModel], name: str) -> Target | None:
    for m in models:
        if m.model_id == name:
            return Target(m, m.speakers[0] if m.speakers else "", False)
    for m in models:  # newest first
        if name in m.speakers:
            return Target(m, name, True)
    for m in models:
        if m.name == name:
            return Target(m, m.speakers[0] if m.speakers else "", False)
    return None


def listing(models: list[inf.ServedModel]) -> list[dict[str, Any]]:
    """`/v1/models`' data: each model by id, then each persona's name (its newest model)."""
    out = [entry(m, m.model_id) for m in models]
    named: set[str] = set()
    for m in models:
        for speaker in m.speakers:
            if speaker not in named and not any(x.model_id == speaker for x in models):
                named.add(speaker)
                out.append(entry(m, speaker, speaker))
    return out


def entry(m: inf.ServedModel, id_: str, speaker: str | None = None) -> dict[str, Any]:
    """A model object: OpenAI's fields, then Doppel's (who it speaks as, who it learned, its base)."""
    return {
        "id": id_, "object": "model", "created": m.created.seconds, "owned_by": OWNER,
        "root": m.model_id, "name": m.name, "speaker": speaker or (m.speakers[0] if m.speakers else None),
        "speakers": list(m.speakers), "participants": list(m.participants), "base_model": m.base_model,
        "adapter": m.adapter, "loaded": m.loaded,
    }
