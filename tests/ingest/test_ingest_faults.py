"""The ingest service when its store fails mid-import: a clear error naming what failed, no dataset
(or the dataset as it was), and a clean retry.

* The S3 server dies: the test runs a SeaweedFS of its own (the session's server stays up for the
  other tests) and kills it with SIGKILL at a fixed point of the import, right after the store
  took the first shard, so the failure lands mid-import every time rather than when a timer fires.
* The local store is full: its root is a small tmpfs, and the new shard does not fit.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

import grpc
import pytest

from doppel.clients import IngestClient
from doppel.config import Settings
from doppel.rpc.server import Service
from doppel.store import ObjectInfo, Store, open_store
from doppel.v1 import ingest_pb2, ingest_pb2_grpc
from services.ingest import pipeline
from services.ingest.server import IngestServicer
from support.parsing import jsonl_export, keys, write_zip
from support.seaweed import restart_seaweed, start_seaweed, stop_seaweed
from support.tmpfs import files_under, tmpfs

FAIL_WITHIN_S = 30.0  # a dead store must fail the call, not leave it retrying


class Tripwire(Store):
    """A store that runs `trip` once, right after the first object whose key passes `when` is stored."""

    def __init__(self, inner: Store, when: Callable[[str], bool], trip: Callable[[], None]):
        self.inner, self._when, self._trip, self.url = inner, when, trip, inner.url
        self.tripped = False

    def _after(self, key: str) -> None:
        if not self.tripped and self._when(key):
            self.tripped = True
            self._trip()

    @contextmanager
    def open_write(self, key: str, *, content_type: str = "application/octet-stream") -> Iterator[BinaryIO]:
        with self.inner.open_write(key, content_type=content_type) as out:
            yield out
        self._after(key)

    def put(self, key: str, data: bytes | BinaryIO, *, content_type: str = "application/octet-stream") -> ObjectInfo:
        info = self.inner.put(key, data, content_type=content_type)
        self._after(key)
        return info

    def open_read(self, key: str):
        return self.inner.open_read(key)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> bool:
        return self.inner.delete(key)


def test_s3_killed_mid_upload_fails_unavailable_leaves_no_dataset_and_the_retry_succeeds(
    grpc_server, tmp_path, monkeypatch
):
    monkeypatch.setattr(pipeline, "SHARD_MESSAGES", 4)  # several shards: the kill lands between two of them
    rows = [(f"c{i}", ("Ann", "Bob")[j % 2], f"message {j} of chat {i}", f"2024-01-{i + 1:02d}T10:{j:02d}:00Z")
            for i in range(6) for j in range(4)]
    export = tmp_path / "export.jsonl"
    export.write_bytes(jsonl_export(*rows))
    folder = tmp_path / "weed"
    folder.mkdir()
    server, proc = start_seaweed(folder)
    procs = [proc]
    try:
        url = server.store_url("faults")

        def kill() -> None:
            procs[-1].kill()
            procs[-1].wait(timeout=10)

        with open_store(url) as s3:
            store = Tripwire(s3, lambda key: key.endswith(".jsonl.zst"), kill)
            servicer = IngestServicer(Settings(), store=store)
            grpc_addr = grpc_server([Service.of(ingest_pb2, ingest_pb2_grpc, "IngestService", servicer)]).addr
            with IngestClient(grpc_addr) as client:
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as failed:
                    client.upload_file(export, ingest_pb2.UploadHeader(filename="export.jsonl"), timeout=120)
                elapsed = time.monotonic() - started
                assert store.tripped
                assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value.details()
                details = failed.value.details()
                # names the store and what failed (a shard's write), not the clean-up that could not run either;
                # the client retried the call (UNAVAILABLE), so the last try failed at its first shard
                assert f"S3 endpoint http://{server.endpoint} (bucket 'faults')" in details, details
                assert "while writing 'datasets/" in details and ".jsonl.zst'" in details, details
                assert "Connection refused" in details, details
                assert elapsed < FAIL_WITHIN_S, f"a dead store took {elapsed:.1f} s to fail the call"

                procs.append(restart_seaweed(server))
                # No dataset. What stays is the first shard of the first try, which the clean-up could not delete
                # while the server was down: no manifest names it, so no listing shows it.
                left = keys(s3)
                assert len(left) == 1 and left[0].startswith("datasets/ds-"), left
                assert left[0].endswith("/conversations-00000.jsonl.zst"), left
                assert client.list_datasets(ingest_pb2.ListDatasetsRequest()).datasets == []

                reply = client.upload_file(export, ingest_pb2.UploadHeader(filename="export.jsonl"), timeout=60)
                d = reply.dataset
                assert (d.stats.conversations, d.stats.messages) == (6, 24)
                assert [x.id for x in client.list_datasets(ingest_pb2.ListDatasetsRequest()).datasets] == [d.id]
                preview = client.preview_dataset(ingest_pb2.PreviewDatasetRequest(dataset_id=d.id, max_conversations=6))
                assert [c.id for c in preview.conversations] == [f"c{i}" for i in range(6)]
    finally:
        stop_seaweed(server, procs[-1])


def test_a_full_local_store_fails_the_upload_naming_the_shard_and_keeps_the_dataset_as_it_was(grpc_server, tmp_path):
    with tmpfs(tmp_path / "small", "2m") as root, open_store(root.as_uri()) as store:
        servicer = IngestServicer(Settings(), store=store)
        addr = grpc_server([Service.of(ingest_pb2, ingest_pb2_grpc, "IngestService", servicer)]).addr
        with IngestClient(addr) as client:
            small = tmp_path / "small.jsonl"
            small.write_bytes(jsonl_export(("c1", "Ann", "hi", "2024-01-01T10:00:00Z"),
                                           ("c1", "Bob", "hello", "2024-01-01T10:01:00Z")))
            d = client.upload_file(small, ingest_pb2.UploadHeader(filename="small.jsonl")).dataset
            before, files = keys(store), files_under(root)

            # ~3 MB of text that does not compress: its shard cannot fit in what is left of 2 MB
            words = [base64.b64encode(os.urandom(1500)).decode() for _ in range(2000)]
            big = write_zip(tmp_path / "big.zip", {"big.jsonl": jsonl_export(
                *((f"b{i // 50}", ("Ann", "Bob")[i % 2], w, f"2024-02-01T10:{i % 60:02d}:00Z") for i, w in enumerate(words))
            )})
            with pytest.raises(grpc.RpcError) as failed:
                client.upload_file(big, ingest_pb2.UploadHeader(filename="big.zip", dataset_id=d.id), timeout=120)
            details = failed.value.details()
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, details
            shard = f"'datasets/{d.id}/conversations-00001.jsonl.zst'"
            assert f"cannot write {shard} in {store.url}: No space left on device" in details, details

            assert keys(store) == before and files_under(root) == files  # no shard, no manifest, no temporary file
            got = client.get_dataset(ingest_pb2.GetDatasetRequest(dataset_id=d.id)).dataset
            assert got == d
            preview = client.preview_dataset(ingest_pb2.PreviewDatasetRequest(dataset_id=d.id)).conversations
            assert [m.text for m in preview[0].messages] == ["hi", "hello"]
