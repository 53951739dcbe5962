"""Entry point of the ingest service: its gRPC bindings for `doppel serve ingest`.

A thin adapter over the core (`pipeline`, `datasets`): it turns requests into core calls
through `convert` and runs the CPU-bound parsing in a worker thread so health checks and
other calls keep being answered. Errors are the core's typed exceptions, mapped by the
shared interceptor.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import tempfile
import zoneinfo
from pathlib import Path, PurePath

from doppel import dataset
from doppel.config import Settings
from doppel.errors import InvalidArgument, quote
from doppel.rpc.server import Service
from doppel.store import STARTUP_WAIT_S, Store, open_store
from doppel.v1 import ingest_pb2, ingest_pb2_grpc

from . import datasets
from .convert import conversation_to_proto, dataset_to_proto, options_from_proto
from .options import IngestOptions
from .pipeline import Target, import_key, ingest_file

MAX_NAME_BYTES = 200  # of a local file's name: file systems refuse names over 255 bytes


def _safe_filename(name: str) -> str:
    """The last path segment of a client-given name, fit for a local file (its end, extension
    included, when it is too long for one)."""
    base = PurePath(name.replace("\\", "/")).name.strip()
    base = "".join(c for c in base if c.isprintable() and c not in "/\0")
    base = base.encode()[-MAX_NAME_BYTES:].decode(errors="ignore")
    return base if base not in ("", ".", "..") else "export"


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())  # reads a folder tree: once


def _options(p: ingest_pb2.IngestOptions) -> IngestOptions:
    """Core options from the request, once its zone is known: ZoneInfo, which checks it in the core,
    fails with OSError on a zone that is a folder ('America') or a name too long for a file."""
    if p.timezone and p.timezone not in _zones():
        raise InvalidArgument(f"invalid ingest options: timezone: {quote(p.timezone)} is not an IANA time zone "
                              "such as 'Europe/Berlin'")
    return options_from_proto(p)


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """Thin adapter from `doppel.v1.IngestService` to the ingest core."""

    def __init__(self, settings: Settings, store: Store | None = None):
        self.settings = settings
        self.store = store or open_store(settings.store_url, wait_s=STARTUP_WAIT_S)

    async def Upload(self, request_iterator, context):
        header = None
        with tempfile.TemporaryDirectory(prefix="doppel-upload-") as tmp:
            digest = hashlib.sha256()
            path: Path | None = None
            out = None
            try:
                async for request in request_iterator:
                    part = request.WhichOneof("part")
                    if header is None:
                        if part != "header":
                            raise InvalidArgument("an upload must start with its header, then send chunks")
                        header = request.header
                        path = Path(tmp) / _safe_filename(header.filename)
                        out = open(path, "wb")
                    elif part == "chunk":
                        assert out is not None  # opened with the header, which came first
                        digest.update(request.chunk)
                        out.write(request.chunk)
                    else:
                        raise InvalidArgument("an upload has exactly one header, first")
            finally:
                if out is not None:
                    out.close()
            if header is None or path is None:
                raise InvalidArgument("empty upload: send a header, then the file in chunks")
            sha = digest.hexdigest()
            if header.sha256 and header.sha256.lower() != sha:
                raise InvalidArgument(f"{header.filename}: upload damaged in transit (sha256 {sha}, expected {header.sha256})")
            options = _options(header.options)
            manifest = await asyncio.to_thread(
                ingest_file,
                self.store,
                path,
                filename=header.filename or path.name,
                target=Target(header.dataset_id, header.dataset_name),
                options=options,
                sha256=sha,
            )
        return ingest_pb2.UploadResponse(dataset=dataset_to_proto(manifest))

    async def ImportExport(self, request, context):
        if not request.key:
            raise InvalidArgument("ImportExport needs the store key of an export")
        manifest = await asyncio.to_thread(
            import_key,
            self.store,
            request.key,
            target=Target(request.dataset_id, request.dataset_name),
            options=_options(request.options),
        )
        return ingest_pb2.ImportExportResponse(dataset=dataset_to_proto(manifest))

    async def ListDatasets(self, request, context):
        page, token = await asyncio.to_thread(dataset.DATASETS.page, self.store, request.page_size, request.page_token)
        return ingest_pb2.ListDatasetsResponse(datasets=[dataset_to_proto(m) for m in page], next_page_token=token)

    async def GetDataset(self, request, context):
        manifest = await asyncio.to_thread(dataset.DATASETS.get, self.store, request.dataset_id)
        return ingest_pb2.GetDatasetResponse(dataset=dataset_to_proto(manifest))

    async def PreviewDataset(self, request, context):
        found = await asyncio.to_thread(
            datasets.preview, self.store, request.dataset_id, request.max_conversations, request.max_messages
        )
        return ingest_pb2.PreviewDatasetResponse(conversations=[conversation_to_proto(c) for c in found])

    async def DeleteDataset(self, request, context):
        deleted = await asyncio.to_thread(datasets.delete, self.store, request.dataset_id)
        return ingest_pb2.DeleteDatasetResponse(objects_deleted=deleted.objects, raw_exports_deleted=deleted.raw_exports)


def build(settings: Settings) -> list[Service]:
    """The services this process serves."""
    return [Service.of(ingest_pb2, ingest_pb2_grpc, "IngestService", IngestServicer(settings))]
