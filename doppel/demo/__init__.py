"""The demo chats that ship with Doppel, so a first `doppel up` has something to train on.

`export/` is a WhatsApp "Export chat" of invented people (written by `make_demo.py`, no real
person's words): Mara Quist's group chat "Plot 14" with Jonah Pell and Beatrice Ashdown, and
her 1:1 chats with each, about 1,000 messages over eight weeks in three distinct voices.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from importlib.resources import files
from importlib.resources.abc import Traversable

import grpc

from doppel.clients import IngestClient, rpc_error_message
from doppel.config import Settings
from doppel.v1 import ingest_pb2

DATASET_NAME = "Plot 14 demo"
FILENAME = "plot-14-demo.zip"
UPLOAD_TIMEOUT_S = 60.0  # parsing ~1,000 messages takes well under a second


def export_files() -> list[Traversable]:
    """The chat files, wherever the package is installed."""
    return sorted((f for f in (files(__name__) / "export").iterdir() if f.name.endswith(".txt")), key=lambda f: f.name)


def export_zip() -> bytes:
    """The chats zipped as a phone would share them; the same bytes every time, so the store keeps one copy."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for f in export_files():
            archive.writestr(zipfile.ZipInfo(f.name, date_time=(2024, 5, 27, 0, 0, 0)), f.read_bytes())
    return buffer.getvalue()


def _datasets(client: IngestClient) -> list[ingest_pb2.Dataset]:
    found: list[ingest_pb2.Dataset] = []
    token = ""
    while True:
        page = client.list_datasets(ingest_pb2.ListDatasetsRequest(page_token=token))
        found += page.datasets
        if not (token := page.next_page_token):
            return found


def import_demo(client: IngestClient) -> ingest_pb2.Dataset:
    """Upload the demo export as a new dataset named DATASET_NAME."""
    data = export_zip()
    header = ingest_pb2.UploadHeader(
        filename=FILENAME, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), dataset_name=DATASET_NAME
    )
    parts = [ingest_pb2.UploadRequest(header=header), ingest_pb2.UploadRequest(chunk=data)]
    return client.upload(parts, timeout=UPLOAD_TIMEOUT_S).dataset


def first_run(settings: Settings, *, always: bool, ui_url: str) -> str | None:
    """Import the demo through the ingest service at `settings` when the store has no dataset or,
    `always`, none of the demo's name; what `doppel up` then says (None: nothing to say).
    A failure is said, not raised: the stack runs on without the demo."""
    with IngestClient.from_settings(settings) as client:
        try:
            datasets = _datasets(client)
            if demo := next((d for d in datasets if d.name == DATASET_NAME), None):
                return f"the demo chats are there already: dataset {demo.id} ({demo.name})" if always else None
            if datasets and not always:
                return None
            dataset = import_demo(client)
        except grpc.RpcError as err:
            return f"warning: could not import the demo chats: {rpc_error_message(err)}"
    people = ", ".join(f"{p.name} ({p.messages})" for p in dataset.stats.participants)
    return (
        f"imported the demo chats as dataset {dataset.id} ({dataset.name}): {dataset.stats.messages} messages "
        f"by {people}.\nNext: open {ui_url}, and in the Train tab pick this dataset and a persona "
        "(the quick-cpu preset takes minutes)."
    )
