"""Run records and progress events in the store, written by the flow and read by anyone.

A flow run trains in a process the Prefect runner starts, possibly on another machine than the
servicer asked about it, so what it has done lives in the store:

    runs/<id>/run.json                the record (the `RUNS` catalog's index): request, resolved recipe,
                                      state, step, model id
    runs/<id>/events/00000.jsonl      progress events, CHUNK per file, in order (seq 0, 1, ...)
    runs/<id>/checkpoints/<step>.pt   the latest checkpoint (older ones are removed)

The writer keeps the open chunk in memory and rewrites it at most every `flush_s` seconds (at
once for state changes and samples), so a watcher is at most that late. Prefect stays the
authority on a run's state: a killed or cancelled process writes nothing more, and readers
merge the flow run's state over the record.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field

from doppel.catalog import Catalog
from doppel.errors import NotFound
from doppel.layout import run_prefix
from doppel.model import Recipe, SampleText
from doppel.store.base import Store

from .recipe import TrainRequest

State = Literal["pending", "running", "completed", "failed", "cancelling", "cancelled"]
TERMINAL = frozenset({"completed", "failed", "cancelled"})
CHUNK = 200  # events per chunk object


class Event(BaseModel):
    """One progress event; `seq` counts from 0 within a run."""

    seq: int = 0
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    state: State = "running"
    step: int = 0
    total: int = 0
    loss: float | None = None
    learning_rate: float | None = None
    held_out_loss: float | None = None
    samples: list[SampleText] = Field(default_factory=list)
    eta_s: float | None = None
    message: str = ""
    tokens_per_s: float = 0.0


class RunRecord(BaseModel):
    """What the store knows of a run."""

    id: str
    request: TrainRequest
    recipe: Recipe | None = None
    state: State = "pending"
    message: str = ""
    step: int = 0
    total: int = 0
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    started_at: datetime | None = None
    finished_at: datetime | None = None
    model_id: str = ""
    pid: int | None = None  # of the process training it, while it runs
    worker: str = ""  # the trainer that ran its latest attempt, host:pid (its flow-run process's parent)
    resumed_from: int = 0  # the checkpoint step the latest attempt started from


RUNS: Catalog[RunRecord] = Catalog(RunRecord, kind="run", root="runs/", record="run.json")


def record_key(run_id: str) -> str:
    return RUNS.key(run_id)


def events_prefix(run_id: str) -> str:
    return run_prefix(run_id) + "events/"


def chunk_key(run_id: str, n: int) -> str:
    return f"{events_prefix(run_id)}{n:05d}.jsonl"


def checkpoints_prefix(run_id: str) -> str:
    return run_prefix(run_id) + "checkpoints/"


def checkpoint_key(run_id: str, step: int) -> str:
    return f"{checkpoints_prefix(run_id)}{step:09d}.pt"


def save_record(store: Store, record: RunRecord) -> None:
    RUNS.put(store, record)


def load_record(store: Store, run_id: str) -> RunRecord:
    """The run's record; NotFound if the store has none."""
    return RUNS.get(store, run_id)


def find_record(store: Store, run_id: str) -> RunRecord | None:
    """The run's record, or None if the store has none."""
    return RUNS.find(store, run_id)


def delete(store: Store, run_id: str) -> int:
    """Remove a run's record, events (their samples quote what the model wrote) and checkpoints;
    the number of objects removed (0 when the store has none)."""
    if RUNS.find(store, run_id) is None:
        return store.delete_prefix(run_prefix(run_id))
    return RUNS.delete(store, run_id)[1]


def read_events(store: Store, run_id: str, after: int = -1) -> list[Event]:
    """Events with seq > `after`, in order; only the chunks that can hold them are read."""
    out: list[Event] = []
    n = max(0, after + 1) // CHUNK
    while True:
        try:
            data = store.get(chunk_key(run_id, n))
        except NotFound:
            return out
        events = [Event.model_validate_json(line) for line in data.splitlines() if line]
        out.extend(e for e in events if e.seq > after)
        if len(events) < CHUNK:
            return out
        n += 1


def latest_checkpoint(store: Store, run_id: str) -> tuple[int, str] | None:
    """(step, key) of the latest checkpoint, if any."""
    keys = sorted(o.key for o in store.list(checkpoints_prefix(run_id)) if o.key.endswith(".pt"))
    if not keys:
        return None
    return int(keys[-1].rsplit("/", 1)[1].removesuffix(".pt")), keys[-1]


class RunLog:
    """The flow's writer: the record and the event stream of one run."""

    def __init__(self, store: Store, record: RunRecord, *, flush_s: float = 0.5):
        self.store, self.record, self.flush_s = store, record, flush_s
        existing = read_events(store, record.id)
        self._seq = existing[-1].seq + 1 if existing else 0
        self._chunk: list[bytes] = [
            orjson.dumps(e.model_dump(mode="json")) for e in existing[len(existing) - self._seq % CHUNK :]
        ] if self._seq % CHUNK else []
        self._flushed_at = time.monotonic()
        self._dirty = False

    def emit(self, event: Event, *, now: bool = False) -> Event:
        """Append an event (its seq is set here); written at once if `now`, else within `flush_s`."""
        event.seq = self._seq
        self._seq += 1
        self._chunk.append(orjson.dumps(event.model_dump(mode="json")))
        self._dirty = True
        r = self.record
        r.step, r.total = event.step or r.step, event.total or r.total
        if event.state != r.state or event.samples or now or len(self._chunk) == CHUNK:
            r.state = event.state
            self.flush()
        elif time.monotonic() - self._flushed_at >= self.flush_s:
            self.flush()
        return event

    def say(self, message: str, **fields: Any) -> Event:
        """An event that says what the run is doing now, with the current step."""
        event = Event(state=self.record.state, step=self.record.step, total=self.record.total, message=message, **fields)
        return self.emit(event, now=True)

    def flush(self) -> None:
        if self._dirty:
            first = (self._seq - len(self._chunk)) // CHUNK
            self.store.put(chunk_key(self.record.id, first), b"\n".join(self._chunk) + b"\n")
            if len(self._chunk) == CHUNK:
                self._chunk = []
            self._dirty = False
        save_record(self.store, self.record)
        self._flushed_at = time.monotonic()
