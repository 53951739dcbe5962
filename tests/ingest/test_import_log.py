"""Every import logs one INFO line: dataset, format, what it added, how long it took; never what anyone wrote."""

from __future__ import annotations

import logging
import re

import pytest

from doppel.store import open_store
from services.ingest.pipeline import Target, import_key, ingest_file
from support.parsing import jsonl_export

LOGGER = "services.ingest.pipeline"
EXPORT = jsonl_export(
    ("c1", "Ann", "hi bob, mail me at ann@example.com", "2024-01-01T10:00:00Z"),
    ("c1", "Bob", "sure thing", "2024-01-01T10:01:00Z"),
    ("c2", "Ann", "other chat", "2024-02-03T08:00:00"),
    ("c2", "Cy", "ok then", "2024-02-03T08:05:00"),
)
MORE = jsonl_export(
    ("c3", "Ann", "a third chat", "2024-03-01T10:00:00Z"),
    ("c3", "Dee", "indeed", "2024-03-01T10:02:00Z"),
    ("c3", "Ann", "yes", "2024-03-01T10:03:00Z"),
)
SECRETS = ("Ann", "Bob", "Cy", "Dee", "ann@example.com", "mail me", "sure thing", "other chat", "third", "indeed", "chat.jsonl")


@pytest.fixture
def store(tmp_path):
    with open_store(f"file://{tmp_path}/store") as s:
        yield s


def import_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]
    caplog.clear()
    return lines


def test_an_import_logs_its_dataset_format_counts_and_time_and_no_text(store, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    path = tmp_path / "chat.jsonl"
    path.write_bytes(EXPORT)
    m = ingest_file(store, path, filename="chat.jsonl")
    [line] = import_lines(caplog)
    assert f"new dataset {m.id}:" in line and "format=jsonl" in line
    assert "conversations=2 messages=4 speakers=3" in line
    assert re.search(r" elapsed=\d+\.\d\ds$", line)
    assert not [s for s in SECRETS if s in line]

    store.put("uploads/more.jsonl", MORE)  # from the store, into the same dataset: what this import added
    import_key(store, "uploads/more.jsonl", target=Target(dataset_id=m.id))
    [line] = import_lines(caplog)
    assert f"existing dataset {m.id}:" in line and "conversations=1 messages=3 speakers=2" in line
    assert not [s for s in SECRETS if s in line]


def test_a_failed_import_logs_no_import_line(store, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    path = tmp_path / "notes.txt"
    path.write_text("nothing a messenger would write\n")
    with pytest.raises(Exception):  # noqa: B017 - which error is the pipeline's tests' business
        ingest_file(store, path, filename="notes.txt")
    assert import_lines(caplog) == []
