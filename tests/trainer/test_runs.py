"""services.trainer.runs: run records, the chunked event stream, and checkpoints in a file store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from doppel.errors import NotFound
from doppel.model import SampleText
from doppel.store import Store, open_store
from services.trainer.recipe import TrainRequest, resolve
from services.trainer.runs import (
    CHUNK,
    Event,
    RunLog,
    RunRecord,
    checkpoint_key,
    chunk_key,
    find_record,
    latest_checkpoint,
    load_record,
    read_events,
    save_record,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"file://{tmp_path}/store") as s:
        yield s


def record(run_id: str = "run1") -> RunRecord:
    req = TrainRequest(dataset_id="ds1", speakers=["Alice"], base_model="tiny")
    return RunRecord(id=run_id, request=req, recipe=resolve(req))


def test_record_round_trip_and_not_found(store: Store) -> None:
    r = record()
    save_record(store, r)
    assert load_record(store, "run1") == r
    assert find_record(store, "run1") == r
    assert find_record(store, "other") is None
    with pytest.raises(NotFound, match="'other'"):
        load_record(store, "other")


def test_emit_numbers_events_from_zero(store: Store) -> None:
    log = RunLog(store, record(), flush_s=3600)
    out = [log.emit(Event(step=i, total=10, loss=1.0 / (i + 1))) for i in range(5)]
    assert [e.seq for e in out] == [0, 1, 2, 3, 4]
    log.flush()
    got = read_events(store, "run1")
    assert [e.seq for e in got] == [0, 1, 2, 3, 4]
    assert [e.loss for e in got] == [1.0, 0.5, 1 / 3, 0.25, 0.2]
    assert [e.seq for e in read_events(store, "run1", after=2)] == [3, 4]
    assert read_events(store, "run1", after=4) == []
    assert read_events(store, "nothing") == []


def test_events_roll_into_chunks(store: Store) -> None:
    n = 2 * CHUNK + 37
    log = RunLog(store, record(), flush_s=3600)
    for i in range(n):
        log.emit(Event(step=i + 1, total=n, message=f"event {i}"))
    log.flush()
    keys = [o.key for o in store.list("runs/run1/events/")]
    assert keys == [chunk_key("run1", 0), chunk_key("run1", 1), chunk_key("run1", 2)]
    assert [len(store.get(k).splitlines()) for k in keys] == [CHUNK, CHUNK, 37]
    everything = read_events(store, "run1")
    assert [e.seq for e in everything] == list(range(n))
    assert [e.message for e in everything] == [f"event {i}" for i in range(n)]
    for after in (-1, 0, CHUNK - 2, CHUNK - 1, CHUNK, 2 * CHUNK - 1, 2 * CHUNK + 5, n - 2, n - 1, n + 10):
        assert [e.seq for e in read_events(store, "run1", after=after)] == list(range(after + 1, n)), after
    # only the chunks that can hold the events asked for are read
    store.delete(chunk_key("run1", 0))
    assert [e.seq for e in read_events(store, "run1", after=CHUNK - 1)] == list(range(CHUNK, n))
    store.delete(chunk_key("run1", 1))
    assert [e.seq for e in read_events(store, "run1", after=2 * CHUNK - 1)] == list(range(2 * CHUNK, n))
    assert [e.seq for e in read_events(store, "run1", after=2 * CHUNK + 3)] == list(range(2 * CHUNK + 4, n))


def test_a_full_chunk_is_written_without_waiting(store: Store) -> None:
    log = RunLog(store, record(), flush_s=3600)
    log.emit(Event(state="running"))  # state change from pending: flushed at once
    for i in range(CHUNK - 1):
        log.emit(Event(step=i))
    assert len(read_events(store, "run1")) == CHUNK


def test_a_new_runlog_continues_the_sequence(store: Store) -> None:
    for first in (5, CHUNK, CHUNK + 3):
        run_id = f"r{first}"
        log = RunLog(store, record(run_id), flush_s=3600)
        for i in range(first):
            log.emit(Event(message=f"a{i}"))
        log.flush()
        again = RunLog(store, load_record(store, run_id), flush_s=3600)
        assert again.emit(Event(message="b0")).seq == first
        again.emit(Event(message="b1"))
        again.flush()
        events = read_events(store, run_id)
        assert [e.seq for e in events] == list(range(first + 2))
        assert [e.message for e in events] == [f"a{i}" for i in range(first)] + ["b0", "b1"]


def test_flush_saves_the_record_with_step_total_and_state(store: Store) -> None:
    log = RunLog(store, record(), flush_s=3600)
    log.emit(Event(state="running", step=0, total=30))
    saved = load_record(store, "run1")
    assert (saved.state, saved.step, saved.total) == ("running", 0, 30)
    log.emit(Event(state="running", step=3, total=30, loss=2.0))  # not yet written: within flush_s
    assert load_record(store, "run1").step == 0
    log.flush()
    saved = load_record(store, "run1")
    assert (saved.state, saved.step, saved.total) == ("running", 3, 30)
    log.emit(Event(state="running", step=0, total=0, message="a message keeps step and total"), now=True)
    assert (load_record(store, "run1").step, load_record(store, "run1").total) == (3, 30)
    log.emit(Event(state="completed", step=30, total=30))
    saved = load_record(store, "run1")
    assert (saved.state, saved.step, saved.total) == ("completed", 30, 30)
    assert [e.state for e in read_events(store, "run1")] == ["running", "running", "running", "completed"]


def test_samples_are_written_at_once(store: Store) -> None:
    log = RunLog(store, record(), flush_s=3600)
    log.emit(Event(state="pending", step=1, total=5))
    assert read_events(store, "run1") == []
    log.emit(Event(state="pending", step=2, total=5, samples=[SampleText(prompt="Bob: hi", text="yo", step=2)]))
    got = read_events(store, "run1")
    assert [e.seq for e in got] == [0, 1]
    assert got[1].samples[0].text == "yo"


def test_say_is_written_at_once_with_the_current_step(store: Store) -> None:
    log = RunLog(store, record(), flush_s=3600)
    log.emit(Event(state="running", step=4, total=9))
    log.say("saving a checkpoint")
    last = read_events(store, "run1")[-1]
    assert (last.seq, last.state, last.step, last.total, last.message) == (1, "running", 4, 9, "saving a checkpoint")


def test_latest_checkpoint_is_the_highest_step(store: Store) -> None:
    assert latest_checkpoint(store, "run1") is None
    for step in (8, 100, 12, 9):
        store.put(checkpoint_key("run1", step), b"x")
    store.put("runs/run1/checkpoints/notes.txt", b"not a checkpoint")
    assert latest_checkpoint(store, "run1") == (100, checkpoint_key("run1", 100))
    assert checkpoint_key("run1", 100) == "runs/run1/checkpoints/000000100.pt"
    assert latest_checkpoint(store, "run2") is None


def test_a_model_manifest_without_held_out_figures_reads_back(tmp_path):
    import math

    from doppel.model import ModelManifest

    m = ModelManifest(id="model-x", name="x", base_model="tiny", base_source="registry:tiny", method="full",
                      transcript="plain", speakers=["A"], participants=["A"], dataset_id="d", run_id="r",
                      recipe=resolve(TrainRequest(dataset_id="d", speakers=["A"])))
    again = ModelManifest.model_validate_json(m.model_dump_json())
    assert math.isnan(again.evaluation.held_out_loss) and again.evaluation.held_out_tokens == 0
