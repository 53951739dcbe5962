"""The ingest service's side of the datasets in the store: write, preview, delete.

Reading datasets (`DATASETS`, `conversations`) is the library's
(`doppel.dataset`), so the trainer reads them without importing this service; what is here
is the ingest service's own behaviour, built on the same `DATASETS` catalog: a manifest write
that makes an import exist, and a delete that also removes the raw exports no other dataset
was built from.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice

from doppel.conversation import Conversation
from doppel.dataset import DATASETS, DatasetManifest, conversations
from doppel.errors import InvalidArgument
from doppel.store import Store

RAW = "raw/"


def put(store: Store, manifest: DatasetManifest) -> None:
    """Write a manifest: the last write of an import, which makes the dataset exist."""
    DATASETS.put(store, manifest)


def preview(store: Store, dataset_id: str, max_conversations: int = 5, max_messages: int = 20) -> list[Conversation]:
    """The first conversations, each cut to its first messages."""
    if max_conversations < 0 or max_messages < 0:
        raise InvalidArgument("max_conversations and max_messages must not be negative")
    manifest = DATASETS.get(store, dataset_id)
    out = []
    for c in islice(conversations(store, manifest), max_conversations or 5):
        c.messages = c.messages[: max_messages or 20]
        out.append(c)
    return out


def uses_raw(store: Store, key: str) -> bool:
    """True if any dataset was built from the raw export `key`."""
    return any(s.key == key for m in DATASETS.records(store) for s in m.sources)


@dataclass(frozen=True)
class Deleted:
    objects: int
    raw_exports: list[str]


def delete(store: Store, dataset_id: str) -> Deleted:
    """Remove a dataset, manifest first (so it stops existing at once), and its unshared raw exports."""
    manifest, objects = DATASETS.delete(store, dataset_id)
    raw = []
    for source in manifest.sources:
        if source.key.startswith(RAW) and source.key not in raw and not uses_raw(store, source.key) and store.delete(source.key):
            raw.append(source.key)
    return Deleted(objects + len(raw), raw)
