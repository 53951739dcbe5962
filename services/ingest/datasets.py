"""The datasets in the store: list, get, preview, delete; manifests are the index.

A dataset exists when its manifest does. Listing reads every manifest (one small object per
dataset), which is fine for the hundreds of datasets one user has; a catalog object would be
the next step for many thousands.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

from doppel import paging
from doppel.conversation import Conversation, read_conversations
from doppel.dataset import DatasetManifest
from doppel.errors import InvalidArgument, NotFound
from doppel.layout import dataset_prefix, manifest_key, validate_id
from doppel.store import Store

DATASETS = "datasets/"
RAW = "raw/"


def get(store: Store, dataset_id: str) -> DatasetManifest:
    """A dataset's manifest; NotFound if there is no such dataset."""
    key = manifest_key(validate_id(dataset_id, "dataset id"))
    return DatasetManifest.from_json(store.get(key, missing=f"no dataset {dataset_id!r}"), name=key)


def put(store: Store, manifest: DatasetManifest) -> None:
    """Write a manifest: the last write of an import, which makes the dataset exist."""
    store.put(manifest_key(manifest.id), manifest.to_json(), content_type="application/json")


def manifests(store: Store) -> Iterator[DatasetManifest]:
    """Every dataset's manifest, in key order."""
    for info in store.list(DATASETS):
        if info.key.endswith("/manifest.json") and info.key.count("/") == 2:
            try:
                yield DatasetManifest.from_json(store.get(info.key), name=info.key)
            except NotFound:  # deleted while we listed
                continue


@dataclass(frozen=True)
class Page:
    datasets: list[DatasetManifest]
    next_token: str


def list_page(store: Store, page_size: int = 100, token: str = "") -> Page:
    """Datasets newest first, `page_size` at a time; `token` is an offset from a previous page."""
    every = sorted(manifests(store), key=lambda m: (m.created_at.timestamp(), m.id), reverse=True)
    return Page(*paging.page(every, page_size, token))


def conversations(store: Store, manifest: DatasetManifest) -> Iterator[Conversation]:
    """Every conversation of a dataset, shard by shard, one at a time."""
    prefix = dataset_prefix(manifest.id)
    for name in manifest.files:
        with store.open_read(prefix + name) as f:
            yield from read_conversations(f, name=prefix + name)


def preview(store: Store, dataset_id: str, max_conversations: int = 5, max_messages: int = 20) -> list[Conversation]:
    """The first conversations, each cut to its first messages."""
    if max_conversations < 0 or max_messages < 0:
        raise InvalidArgument("max_conversations and max_messages must not be negative")
    manifest = get(store, dataset_id)
    out = []
    for c in islice(conversations(store, manifest), max_conversations or 5):
        c.messages = c.messages[: max_messages or 20]
        out.append(c)
    return out


def uses_raw(store: Store, key: str) -> bool:
    """True if any dataset was built from the raw export `key`."""
    return any(s.key == key for m in manifests(store) for s in m.sources)


@dataclass(frozen=True)
class Deleted:
    objects: int
    raw_exports: list[str]


def delete(store: Store, dataset_id: str) -> Deleted:
    """Remove a dataset, manifest first (so it stops existing at once), and its unshared raw exports."""
    manifest = get(store, dataset_id)
    store.delete(manifest_key(manifest.id))
    objects = 1 + store.delete_prefix(dataset_prefix(manifest.id))
    raw = []
    for source in manifest.sources:
        if source.key.startswith(RAW) and source.key not in raw and not uses_raw(store, source.key):
            if store.delete(source.key):
                raw.append(source.key)
    return Deleted(objects + len(raw), raw)
