"""A dataset's manifest and summary statistics, and the reads of datasets in the store.

A dataset is what one ingest produced: conversation shards (`doppel.conversation`) plus
`manifest.json`, written last, that says where the data came from, how it was parsed and
what it holds. These are small boundary objects, so they are pydantic models; the
per-message work of computing the stats lives in `StatsAccumulator`, a plain class that
sees one conversation at a time and keeps O(participants + months) state.

Whoever reads a dataset (the trainer, the ingest service's listing) reads it here: through the
manifest-indexed `DATASETS` catalog (`get`, `records`, `page`), and `conversations`.
Writing and deleting datasets is the ingest service's.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from doppel.catalog import Catalog, parse_record
from doppel.conversation import Conversation, Message, read_conversations
from doppel.errors import InvalidArgument
from doppel.layout import dataset_prefix, validate_id
from doppel.store.base import Store


def _utc_or_naive(v: datetime | None) -> datetime | None:
    """Aware datetimes as `datetime.UTC` (pydantic parses `Z` into its own tzinfo); naive kept."""
    if v is None or v.tzinfo is None or v.tzinfo is UTC:
        return v
    return v.astimezone(UTC)


def order_key(ts: datetime) -> datetime:
    """Sort key that makes naive and aware comparable: naive is taken as if it were UTC."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


class ParticipantStat(BaseModel):
    """One participant and how many messages they sent."""

    name: str
    messages: int


class DatasetStats(BaseModel):
    """Summary figures of a dataset.

    `participants` is ordered most messages first (ties by name); `timeline` maps "YYYY-MM" to
    a message count, oldest month first. Months and `first`/`last` use each timestamp as
    stored: UTC for aware ones, local wall-clock time for naive ones; when both kinds occur,
    naive timestamps are compared as if they were UTC.
    """

    conversations: int = 0
    messages: int = 0
    participants: dict[str, int] = Field(default_factory=dict)
    first: datetime | None = None
    last: datetime | None = None
    timeline: dict[str, int] = Field(default_factory=dict)

    @field_validator("participants")
    @classmethod
    def _most_first(cls, v: dict[str, int]) -> dict[str, int]:
        return dict(sorted(v.items(), key=lambda kv: (-kv[1], kv[0])))

    @field_validator("timeline")
    @classmethod
    def _by_month(cls, v: dict[str, int]) -> dict[str, int]:
        return dict(sorted(v.items()))

    @field_validator("first", "last")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        return _utc_or_naive(v)

    def participant_list(self) -> list[ParticipantStat]:
        """`participants` as a list, most messages first."""
        return [ParticipantStat(name=n, messages=c) for n, c in self.participants.items()]


class StatsAccumulator:
    """Builds DatasetStats one conversation at a time, without keeping the messages."""

    def __init__(self) -> None:
        self.conversations = 0
        self.messages = 0
        self._senders: Counter[str] = Counter()
        self._months: Counter[tuple[int, int]] = Counter()
        self._first: datetime | None = None
        self._last: datetime | None = None

    def add(self, conversation: Conversation) -> None:
        """Count one conversation and its messages."""
        msgs = conversation.messages
        self.conversations += 1
        if not msgs:
            return
        self.messages += len(msgs)
        self._senders.update(m.sender for m in msgs)
        self._months.update((m.timestamp.year, m.timestamp.month) for m in msgs)
        self._extend(min(msgs, key=_message_key).timestamp, max(msgs, key=_message_key).timestamp)

    def _extend(self, lo: datetime, hi: datetime) -> None:
        if self._first is None or order_key(lo) < order_key(self._first):
            self._first = lo
        if self._last is None or order_key(hi) > order_key(self._last):
            self._last = hi

    def absorb(self, stats: DatasetStats) -> None:
        """Count what an earlier import already holds, so the result covers both."""
        self.conversations += stats.conversations
        self.messages += stats.messages
        self._senders.update(stats.participants)
        self._months.update({(int(k[:4]), int(k[5:7])): n for k, n in stats.timeline.items()})
        if stats.first is not None and stats.last is not None:
            self._extend(stats.first, stats.last)

    def result(self) -> DatasetStats:
        """The stats of everything added so far."""
        return DatasetStats(
            conversations=self.conversations,
            messages=self.messages,
            participants=dict(self._senders),
            first=self._first,
            last=self._last,
            timeline={f"{y:04d}-{m:02d}": n for (y, m), n in self._months.items()},
        )


def _message_key(m: Message) -> datetime:
    return order_key(m.timestamp)


class SourceExport(BaseModel):
    """One export a dataset was built from: where it is stored, its hash, size, name and format."""

    key: str  # "" when it was not kept
    sha256: str
    size_bytes: int
    filename: str
    format: str
    kept: bool = True  # the export itself is in the store at `key` (datasets from before this field kept it)


class Pseudonyms(BaseModel):
    """Who a dataset's `<PERSON_n>` placeholders are, without their names in clear.

    `people[n - 1]` is `digest(name)` of the person shown as `<PERSON_n>`: the SHA-256 of the
    dataset's random `salt` and the casefolded name. A later import digests its participants
    the same way, so whoever already has a number keeps it and only newcomers get new ones.
    A digest cannot be turned back into a name, but a guessed name can be checked against it:
    the manifest is as private as the dataset it describes.
    """

    salt: str  # hex
    people: list[str] = Field(default_factory=list)

    def digest(self, name: str) -> str:
        """Hex SHA-256 of the salt, a NUL and `name` casefolded."""
        return hashlib.sha256(f"{self.salt}\0{name.casefold()}".encode()).hexdigest()


class DatasetManifest(BaseModel):
    """`datasets/<id>/manifest.json`: written last, so a dataset without one does not exist.

    `files` are the conversation shards' keys relative to the dataset prefix
    (`doppel.layout.dataset_prefix`), e.g. `conversations-00000.jsonl.zst`.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    created_at: datetime
    updated_at: datetime
    sources: list[SourceExport] = Field(default_factory=list)
    parser_version: str
    options: dict[str, Any] = Field(default_factory=dict)
    stats: DatasetStats = Field(default_factory=DatasetStats)
    files: list[str] = Field(default_factory=list)
    seen: str = ""  # the dedupe index's key relative to the dataset prefix, "" if none
    pseudonyms: Pseudonyms | None = None  # once an import replaced people's names (`Redaction`)
    warnings: list[str] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _valid_id(cls, v: str) -> str:
        try:
            return validate_id(v, "dataset id")
        except InvalidArgument as e:  # pydantic reports ValueErrors only
            raise ValueError(str(e)) from None

    @field_validator("created_at", "updated_at")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return _utc_or_naive(v)  # type: ignore[return-value]

    @field_validator("files", "seen")
    @classmethod
    def _relative_keys(cls, v: list[str] | str) -> list[str] | str:
        for key in [v] if isinstance(v, str) else v:
            if key == "" and isinstance(v, str):
                continue
            if not key or key.startswith("/") or ".." in key.split("/") or "\\" in key:
                raise ValueError(f"{key!r} is not a key relative to the dataset prefix")
        return v

    def to_json(self) -> bytes:
        """The manifest as indented UTF-8 JSON."""
        return self.model_dump_json(indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes, *, name: str) -> DatasetManifest:
        """Parse a manifest; raises ParseError naming `name` and the bad fields."""
        return parse_record(cls, data, name=name, what="dataset manifest")


DATASETS: Catalog[DatasetManifest] = Catalog(DatasetManifest, kind="dataset", root="datasets/")


def conversations(store: Store, manifest: DatasetManifest) -> Iterator[Conversation]:
    """Every conversation of a dataset, shard by shard, one at a time."""
    prefix = dataset_prefix(manifest.id)
    for name in manifest.files:
        with store.open_read(prefix + name) as f:
            yield from read_conversations(f, name=prefix + name)
