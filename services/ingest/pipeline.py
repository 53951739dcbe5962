"""An export in, a dataset out: parse, filter, write shards, manifest last.

Nothing here knows about gRPC. An uploaded export is parsed from the uploader's temporary file
and not stored: it holds everyone's messages, media and contact details as written, while the
dataset holds only the (redacted) text. Asked to (`IngestOptions.keep_raw`), it is stored
first, content-addressed (the same bytes once), for the dataset's life. The order of writes is
what makes a failed ingest leave no trace: shards and the dedupe index get names no earlier
import used, and the manifest, which is what makes a dataset exist, is written last. If
anything fails before it, every object this import wrote is deleted again, including a kept
raw export when no dataset uses it, as far as the store allows: one that is down keeps them,
unnamed by any manifest, and the error that failed the import is the one reported.

At the names level (`Redaction.personal_urls_and_names`) the export is read twice: first for
its participants, whose names every text then loses (`pseudonyms`), then to store it.

Memory stays bounded by the largest conversation: parsers yield one conversation at a time,
shards stream into the store, and only the dedupe fingerprints (8 bytes a message on disk)
are held for the whole import.

Each import that stores a dataset logs one INFO line: the dataset, the format, what this import
added (conversations, messages, distinct senders) and how long it took. Never a name or a word
of what anyone wrote: the line goes wherever the service's logs go.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from doppel.conversation import Conversation, ConversationWriter
from doppel.dataset import DATASETS, DatasetManifest, SourceExport, StatsAccumulator
from doppel.errors import DoppelError, InvalidArgument, NotFound
from doppel.layout import dataset_prefix, new_id, raw_export_key, seen_name, shard_name
from doppel.store import Store

from . import datasets, pseudonyms
from .dedupe import SeenIndex
from .filters import Filters
from .options import IngestOptions
from .parsers import detect, parser_for
from .source import Source, open_source

log = logging.getLogger(__name__)

PARSER_VERSION = "1"
SHARD_MESSAGES = 500_000  # a new shard after this many messages keeps each object moderate
HASH_CHUNK = 1 << 20

# One import at a time writes datasets and decides about raw exports: two imports into one
# dataset would otherwise both extend the same manifest, and a failing import could delete a
# raw export another one is about to reference. Parsing dominates, so little is lost.
_WRITE_LOCK = threading.Lock()

Progress = Callable[[int, int], None]  # (conversations, messages) written so far


@dataclass(frozen=True)
class Target:
    """Where an import goes: an existing dataset by id, or a new one with a name."""

    dataset_id: str = ""
    name: str = ""


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def ingest_file(
    store: Store,
    path: Path,
    *,
    filename: str,
    target: Target = Target(),
    options: IngestOptions = IngestOptions(),
    sha256: str = "",
    progress: Progress | None = None,
) -> DatasetManifest:
    """Parse `path` into a dataset; store it as a raw export too (once per content) if `options.keep_raw`."""
    started = time.monotonic()
    sha = sha256 or file_sha256(path)
    key = raw_export_key(sha) if options.keep_raw else ""
    with _WRITE_LOCK:
        created = bool(key) and not store.exists(key)
        if created:
            store.put_file(key, path)
        raw = SourceExport(key=key, sha256=sha, size_bytes=path.stat().st_size, filename=filename, format="",
                           kept=bool(key))
        try:
            with open_source(path, name=filename) as source:
                return _build(store, source, raw, target, options, progress, started)
        except BaseException:
            if created:
                _discard(store, [key], unless_used=True)
            raise


def import_key(
    store: Store,
    key: str,
    *,
    target: Target = Target(),
    options: IngestOptions = IngestOptions(),
    progress: Progress | None = None,
) -> DatasetManifest:
    """Parse an export already in the store: one object, or every object under a prefix (a folder)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="doppel-import-") as tmp:
        local, sha, size = _download(store, key, Path(tmp))
        raw = SourceExport(key=key, sha256=sha, size_bytes=size, filename=PurePosixPath(key).name, format="")
        with _WRITE_LOCK, open_source(local, name=key) as source:
            return _build(store, source, raw, target, options, progress, started)


def _download(store: Store, key: str, tmp: Path) -> tuple[Path, str, int]:
    """(local path, sha256, size) of an object, or of a folder made from the objects under `key/`."""
    name = PurePosixPath(key).name or "export"
    if store.exists(key):
        path = tmp / name
        store.get_file(key, path)
        return path, file_sha256(path), path.stat().st_size
    prefix = key.rstrip("/") + "/"
    folder = tmp / name
    digest, size = hashlib.sha256(), 0
    for info in store.list(prefix):
        rel = info.key[len(prefix) :]
        store.get_file(info.key, folder / rel)
        digest.update(f"{rel}\0{file_sha256(folder / rel)}\n".encode())
        size += info.size
    if not size and not folder.exists():
        raise NotFound(f"no export at store key {key!r}: neither an object nor a prefix with objects")
    return folder, digest.hexdigest(), size


def _build(
    store: Store,
    source: Source,
    raw: SourceExport,
    target: Target,
    options: IngestOptions,
    progress: Progress | None,
    started: float,
) -> DatasetManifest:
    parser = parser_for(options.format) if options.format else detect(source)
    raw = raw.model_copy(update={"format": parser.format})
    old = DATASETS.get(store, target.dataset_id) if target.dataset_id else None
    dataset_id = old.id if old else new_id("ds")
    prefix = dataset_prefix(dataset_id)
    seen = SeenIndex.from_bytes(store.get(prefix + old.seen), name=prefix + old.seen) if old and old.seen else SeenIndex()
    stats = StatsAccumulator()
    if old:
        stats.absorb(old.stats)
    names = pseudonyms.for_import(options, parser, source, old.pseudonyms if old else None)
    filters = Filters(options, seen, names)
    scrub = names.text if names else str  # what the manifest says about the export: no replaced name either
    import_no = len(old.sources) if old else 0
    written: list[str] = []
    senders: set[str] = set()
    try:
        with _Shards(store, prefix, first=_next_shard(old), written=written) as shards:
            for conversation in filters.apply_all(parser.parse(source)):
                shards.write(conversation)
                stats.add(conversation)
                senders.update(m.sender for m in conversation.messages)
                if progress:
                    progress(shards.conversations, shards.messages)
        dropped = filters.counts.warnings()
        if not shards.conversations and not old:
            why = "; ".join([*source.warnings, *dropped]) or "the export holds no text messages"
            raise InvalidArgument(f"{source.name}: nothing to store as a {parser.format} dataset ({why})")
        seen_key = seen_name(import_no)
        store.put(prefix + seen_key, seen.to_bytes())
        written.append(prefix + seen_key)
        now = datetime.now(UTC)
        filename = scrub(raw.filename)
        manifest = DatasetManifest(
            id=dataset_id,
            name=(old.name if old else target.name) or PurePosixPath(filename).stem or dataset_id,
            created_at=old.created_at if old else now,
            updated_at=now,
            sources=[*(old.sources if old else []), raw.model_copy(update={"filename": filename})],
            parser_version=PARSER_VERSION,
            options=(names.options(options) if names else options).model_dump(mode="json"),
            stats=stats.result(),
            files=[*(old.files if old else []), *(k[len(prefix) :] for k in written if k != prefix + seen_key)],
            seen=seen_key,
            pseudonyms=names.state if names else (old.pseudonyms if old else None),
            # what the parser read past (its notes name the file), then what the filters dropped
            warnings=[*map(scrub, source.warnings), *(f"{filename}: {w}" for w in dropped)],
        )
        datasets.put(store, manifest)
    except BaseException:
        _discard(store, written)
        raise
    if old and old.seen and old.seen != seen_key:
        store.delete(prefix + old.seen)
    log.info(
        "imported into %s dataset %s: format=%s conversations=%d messages=%d speakers=%d elapsed=%.2fs",
        "existing" if old else "new", dataset_id, parser.format, shards.conversations, shards.messages, len(senders),
        time.monotonic() - started,
    )
    return manifest


def _discard(store: Store, keys: list[str], *, unless_used: bool = False) -> None:
    """Delete what a failed import wrote (a raw export only if no dataset uses it), as far as the
    store lets us: the error that failed the import is the one to report, not a second one from
    a store that is still down. What stays is no dataset, since no manifest names it."""
    for key in keys:
        try:
            if not (unless_used and datasets.uses_raw(store, key)):
                store.delete(key)
        except DoppelError as e:
            log.warning("could not delete %s after a failed import (it belongs to no dataset): %s", key, e)


def _next_shard(old: DatasetManifest | None) -> int:
    if not old or not old.files:
        return 0
    return max(int(f.split("-")[1].split(".")[0]) for f in old.files) + 1


class _Shards:
    """Conversation shards of one import, rolled every SHARD_MESSAGES messages."""

    def __init__(self, store: Store, prefix: str, *, first: int, written: list[str]):
        self._store, self._prefix, self._next, self._written = store, prefix, first, written
        self.conversations = self.messages = 0
        self._open: tuple[object, ConversationWriter] | None = None
        self._in_shard = 0

    def write(self, conversation: Conversation) -> None:
        if self._open is None or self._in_shard >= SHARD_MESSAGES:
            self._roll()
        assert self._open is not None
        self._open[1].write(conversation)
        self._in_shard += len(conversation.messages)
        self.conversations += 1
        self.messages += len(conversation.messages)

    def _roll(self) -> None:
        self._finish(None)
        key = self._prefix + shard_name(self._next)
        self._next += 1
        self._written.append(key)  # before the first byte: a failure deletes it
        ctx = self._store.open_write(key, content_type="application/zstd")
        out = ctx.__enter__()
        self._open = (ctx, ConversationWriter(out, name=key))
        self._in_shard = 0

    def _finish(self, exc: BaseException | None) -> None:
        if self._open is None:
            return
        ctx, writer = self._open
        self._open = None
        if exc is None:
            writer.close()
            ctx.__exit__(None, None, None)  # type: ignore[attr-defined]
        else:
            writer.__exit__(type(exc), exc, None)
            ctx.__exit__(type(exc), exc, None)  # type: ignore[attr-defined]

    def __enter__(self) -> _Shards:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._finish(exc)


@contextmanager
def local_export(path: Path) -> Iterator[Path]:
    """A folder zipped into a temporary file (for upload); a file as it is."""
    if not path.is_dir():
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="doppel-zip-") as tmp:
        yield Path(shutil.make_archive(str(Path(tmp) / path.name), "zip", root_dir=path))
