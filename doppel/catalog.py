"""Manifest-indexed records in the store: list, get and delete things that exist by their manifest.

Datasets, persona models and run records are each a folder `<root><id>/` whose one small JSON
record (`manifest.json`, `run.json`) says what the folder holds. The record is written last and
deleted first, so it is the index: a folder without one does not exist. A `Catalog` describes
one such kind of thing (its root, its record's name, its pydantic schema) and reads it the same
way for every kind:

    DATASETS = Catalog(DatasetManifest, kind="dataset", root="datasets/")
    DATASETS.get(store, "ds-1")          # the record, or NotFound naming the id
    DATASETS.records(store)              # every record, in key order
    DATASETS.page(store, 100, token)     # newest first, a page at a time
    DATASETS.delete(store, "ds-1")       # record first, then the folder

Listing reads every record (one small object each), which is fine for the hundreds of things one
user has. A record deleted between the listing and its read is skipped, not an error: another
process deleting a dataset must not break someone's listing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from doppel import paging
from doppel.errors import FailedPrecondition, NotFound, ParseError
from doppel.layout import validate_id
from doppel.store.base import Store

R = TypeVar("R", bound=BaseModel)


def parse_record(schema: type[R], data: bytes, *, name: str, what: str) -> R:
    """`data` as a `schema`; a ParseError naming `name`, `what` it should be and the first bad fields."""
    try:
        return schema.model_validate_json(data)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        parts = [f"{'.'.join(map(str, err['loc'])) or 'document'}: {err['msg']}" for err in errors[:3]]
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise ParseError(name, f"not a valid {what}: " + "; ".join(parts) + more) from None


def newest_first(record: Any) -> tuple[float, str]:
    """The default sort key of `Catalog.page` (reversed): `created_at`, then `id`.

    `timestamp()` makes naive (local) and aware times comparable.
    """
    return record.created_at.timestamp(), record.id


@dataclass(frozen=True)
class Catalog(Generic[R]):
    """The records of one kind of thing: `<root><id>/<record>` holding a `schema` as JSON.

    `kind` names the thing in messages ("dataset", "model", "run"); the record must have an `id`.
    """

    schema: type[R]
    kind: str
    root: str  # e.g. "datasets/"; doppel.layout builds the same prefixes
    record: str = "manifest.json"
    order: Callable[[R], Any] = newest_first
    valid: Callable[[str, str], str] = validate_id  # checks an id (and the kind of id, for its message)

    def prefix(self, record_id: str) -> str:
        """`<root><id>/`: every key of one thing starts with this; InvalidArgument for a bad id."""
        return f"{self.root}{self.valid(record_id, f'{self.kind} id')}/"

    def key(self, record_id: str) -> str:
        """`<root><id>/<record>`."""
        return self.prefix(record_id) + self.record

    def parse(self, data: bytes, *, name: str) -> R:
        """A record from its JSON; a ParseError naming `name` when it is not one."""
        what = f"{self.kind} {self.record.removesuffix('.json').replace('_', ' ')}"
        return parse_record(self.schema, data, name=name, what=what)

    def _stored(self, data: bytes, key: str) -> R:
        """A record read from the store: a damaged one is the store's fault, not the caller's."""
        try:
            return self.parse(data, name=key)
        except ParseError as e:
            raise FailedPrecondition(f"the store holds a damaged {self.kind} record: {e}") from None

    def get(self, store: Store, record_id: str) -> R:
        """The record of `record_id`; NotFound naming it if there is none, FailedPrecondition if it is damaged."""
        key = self.key(record_id)
        return self._stored(store.get(key, missing=f"no {self.kind} {record_id!r}"), key)

    def find(self, store: Store, record_id: str) -> R | None:
        """The record of `record_id`, or None if there is none."""
        try:
            return self.get(store, record_id)
        except NotFound:
            return None

    def put(self, store: Store, record: R) -> None:
        """Write a record: for a thing whose files are all written, the write that makes it exist."""
        key = self.key(record.id)  # type: ignore[attr-defined]
        store.put(key, record.model_dump_json(indent=2).encode(), content_type="application/json")

    def records(self, store: Store) -> Iterator[R]:
        """Every record, in key order; one deleted while we list is skipped, a damaged one fails."""
        depth = self.root.count("/") + 1
        for info in store.list(self.root):
            if info.key.count("/") != depth or not info.key.endswith("/" + self.record):
                continue
            try:
                data = store.get(info.key)
            except NotFound:  # deleted between the listing and this read
                continue
            yield self._stored(data, info.key)

    def page(self, store: Store, page_size: int = 100, token: str = "") -> tuple[list[R], str]:
        """A page of records, newest first (by `order`), and the next page's token ('' on the last)."""
        every = sorted(self.records(store), key=self.order, reverse=True)
        return paging.page(every, page_size, token)

    def delete(self, store: Store, record_id: str) -> tuple[R, int]:
        """Remove a thing, record first (so it stops existing at once), then its folder.

        Returns the record it had and the number of objects removed; NotFound if there was none.
        """
        record = self.get(store, record_id)
        store.delete(self.key(record_id))
        return record, 1 + store.delete_prefix(self.prefix(record_id))
