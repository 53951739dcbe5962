"""The manifest-indexed catalog (doppel.catalog) on both store backends: get, list, page, delete, and a
record deleted between the listing and its read, for a schema of its own and for the three real
catalogs (datasets, models, runs)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from doppel.catalog import Catalog
from doppel.dataset import DATASETS, DatasetManifest
from doppel.errors import FailedPrecondition, InvalidArgument, NotFound
from doppel.layout import dataset_prefix, model_prefix, run_prefix
from doppel.model import MODELS, ModelManifest, Recipe
from doppel.store import Store, open_store
from services.trainer.recipe import TrainRequest
from services.trainer.runs import RUNS, RunRecord

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


class Thing(BaseModel):
    id: str
    created_at: datetime
    note: str = ""


THINGS: Catalog[Thing] = Catalog(Thing, kind="thing", root="things/")


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = f"file://{tmp_path}/store" if request.param == "file" else request.getfixturevalue("s3_store_url")
    with open_store(url) as s:
        yield s


def thing(n: int) -> Thing:
    return Thing(id=f"t{n}", created_at=T0 + timedelta(minutes=n), note=f"number {n}")


class DeletesAfterListing:
    """A store whose listing is taken, then `key` deleted before anything listed is read."""

    def __init__(self, store: Store, key: str):
        self._store, self._key = store, key

    def list(self, prefix: str = "") -> Iterator[Any]:
        listed = list(self._store.list(prefix))
        self._store.delete(self._key)
        return iter(listed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_put_get_find_and_keys(store: Store) -> None:
    THINGS.put(store, thing(1))
    assert THINGS.key("t1") == "things/t1/manifest.json" and THINGS.prefix("t1") == "things/t1/"
    assert THINGS.get(store, "t1") == thing(1) == THINGS.find(store, "t1")
    assert THINGS.find(store, "t2") is None
    with pytest.raises(NotFound, match="no thing 't2'"):
        THINGS.get(store, "t2")
    with pytest.raises(InvalidArgument, match="invalid thing id"):
        THINGS.get(store, "../t1")


def test_the_real_catalogs_use_the_layouts_prefixes() -> None:
    assert DATASETS.prefix("ds-1") == dataset_prefix("ds-1")
    assert MODELS.prefix("m-1") == model_prefix("m-1")
    assert RUNS.prefix("r-1") == run_prefix("r-1") and RUNS.key("r-1") == "runs/r-1/run.json"


def test_only_records_at_the_right_depth_are_listed(store: Store) -> None:
    for n in (2, 1, 3):
        THINGS.put(store, thing(n))
    store.put("things/t1/data-00000.bin", b"not a record")
    store.put("things/manifest.json", b"{}")  # not inside a thing's folder
    store.put("things/t9/nested/manifest.json", b"{}")  # too deep
    store.put("things/t8/other.json", b"{}")  # a folder without a record does not exist
    assert [t.id for t in THINGS.records(store)] == ["t1", "t2", "t3"]


def test_pages_are_newest_first(store: Store) -> None:
    for n in range(5):
        THINGS.put(store, thing(n))
    first, token = THINGS.page(store, 2)
    second, token2 = THINGS.page(store, 2, token)
    last, end = THINGS.page(store, 2, token2)
    assert [t.id for t in first + second + last] == ["t4", "t3", "t2", "t1", "t0"] and end == ""


def test_a_damaged_record_is_the_stores_fault_and_names_its_key(store: Store) -> None:
    store.put("things/t1/manifest.json", b'{"id": "t1"}')
    for read in (lambda: THINGS.get(store, "t1"), lambda: list(THINGS.records(store))):
        with pytest.raises(FailedPrecondition, match=r"things/t1/manifest\.json: not a valid thing manifest: created_at"):
            read()


def test_delete_removes_the_record_and_its_folder(store: Store) -> None:
    THINGS.put(store, thing(1))
    THINGS.put(store, thing(2))
    store.put("things/t1/a.bin", b"a")
    store.put("things/t1/sub/b.bin", b"b")
    record, objects = THINGS.delete(store, "t1")
    assert record == thing(1) and objects == 3
    assert not list(store.list("things/t1/")) and THINGS.find(store, "t1") is None
    assert [t.id for t in THINGS.records(store)] == ["t2"]
    with pytest.raises(NotFound, match="no thing 't1'"):
        THINGS.delete(store, "t1")


def _dataset(n: int) -> DatasetManifest:
    return DatasetManifest(id=f"ds-{n}", name=f"d{n}", created_at=T0 + timedelta(minutes=n),
                           updated_at=T0 + timedelta(minutes=n), parser_version="1")


def _model(n: int) -> ModelManifest:
    recipe = Recipe(dataset_id="d", speakers=["A"], base_model="tiny", method="lora", preset="default", model_name="A")
    return ModelManifest(id=f"model-{n}", name="A", base_model="tiny", base_source="registry:tiny", method="lora",
                         transcript="plain", speakers=["A"], participants=["A", "B"], dataset_id="d", run_id="r",
                         recipe=recipe, created_at=T0 + timedelta(minutes=n))


def _run(n: int) -> RunRecord:
    return RunRecord(id=f"run-{n}", request=TrainRequest(dataset_id="d", speakers=["A"]), created_at=T0 + timedelta(minutes=n))


CATALOGS: dict[str, tuple[Catalog[Any], Callable[[int], Any]]] = {
    "things": (THINGS, thing),
    "datasets": (DATASETS, _dataset),
    "models": (MODELS, _model),
    "runs": (RUNS, _run),
}


@pytest.mark.parametrize("which", CATALOGS)
def test_a_record_deleted_between_listing_and_reading_is_skipped(store: Store, which: str) -> None:
    catalog, make = CATALOGS[which]
    records = [make(n) for n in range(3)]
    for r in records:
        catalog.put(store, r)
        store.put(catalog.prefix(r.id) + "payload.bin", b"x")
    gone = records[1]
    racing = DeletesAfterListing(store, catalog.key(gone.id))
    assert [r.id for r in catalog.records(racing)] == [records[0].id, records[2].id]  # type: ignore[arg-type]
    assert catalog.find(store, gone.id) is None
    racing = DeletesAfterListing(store, catalog.key(records[2].id))
    page, token = catalog.page(racing, 10)  # type: ignore[arg-type]
    assert [r.id for r in page] == [records[0].id] and token == ""
