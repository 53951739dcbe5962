"""The ingest service end to end: a real gRPC server over a real SeaweedFS store, and the CLI."""

from __future__ import annotations

import json
import logging

import grpc
import pytest
from typer.testing import CliRunner

from doppel.cli.main import app
from doppel.clients import IngestClient
from doppel.config import Settings
from doppel.rpc.server import Service
from doppel.store import open_store
from doppel.v1 import ingest_pb2, ingest_pb2_grpc
from services.ingest.parsers import FORMATS
from services.ingest.server import IngestServicer
from support.parsing import jsonl_export, keys, write_zip

EXPORT = jsonl_export(
    ("c1", "Ann", "hi, call me on +49 171 2345678", "2024-01-01T10:00:00Z"),
    ("c1", "Bob", "will do", "2024-01-01T10:01:00Z"),
    ("c2", "Ann", "lunch?", "2024-01-02T12:00:00"),
    ("c2", "Cy", "yes", "2024-01-02T12:03:00"),
    ("c2", "Ann", "1pm", "2024-01-02T12:04:00"),
)


@pytest.fixture
def service(grpc_server, s3_store_url):
    store = open_store(s3_store_url)
    servicer = IngestServicer(Settings(), store=store)
    server = grpc_server([Service.of(ingest_pb2, ingest_pb2_grpc, "IngestService", servicer)])
    with IngestClient(server.addr) as client:
        yield client, store, server.addr
    store.close()


def test_upload_a_zip_read_stats_preview_and_delete_leaving_nothing(service, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    client, store, _ = service
    z = write_zip(tmp_path / "export.zip", {"chats/export.jsonl": EXPORT})
    sent = []
    reply = client.upload_file(z, ingest_pb2.UploadHeader(filename="export.zip"), chunk_bytes=100, progress=sent.append)
    assert sent[-1] == z.stat().st_size and len(sent) > 1
    d = reply.dataset
    assert d.name == "export" and d.sources[0].format == ingest_pb2.EXPORT_FORMAT_JSONL
    assert (d.stats.conversations, d.stats.messages) == (2, 5)
    assert [(p.name, p.messages) for p in d.stats.participants] == [("Ann", 3), ("Bob", 1), ("Cy", 1)]
    got = client.get_dataset(ingest_pb2.GetDatasetRequest(dataset_id=d.id)).dataset
    assert got.stats == d.stats and got.options.redaction == ingest_pb2.REDACTION_PERSONAL
    preview = client.preview_dataset(ingest_pb2.PreviewDatasetRequest(dataset_id=d.id, max_messages=2)).conversations
    assert [c.id for c in preview] == ["c1", "c2"]
    assert preview[0].messages[0].text == "hi, call me on <PHONE>"
    assert not preview[0].messages[0].naive_local_time and preview[1].messages[0].naive_local_time
    assert preview[1].messages[0].timestamp.ToDatetime().isoformat() == "2024-01-02T12:00:00"
    listed = client.list_datasets(ingest_pb2.ListDatasetsRequest()).datasets
    assert [x.id for x in listed] == [d.id]
    assert (d.sources[0].key, d.sources[0].kept) == ("", False)  # the export itself was not stored
    logged = caplog.text
    assert f"dataset {d.id}: format=jsonl" in logged  # the service did log the import...
    texts = [t for line in EXPORT.decode().splitlines() if line.strip() and len(t := json.loads(line)["text"]) >= 5]
    assert texts and not [t for t in texts if t in logged]  # ...but no word anyone wrote
    assert not [k for k in keys(store) if k.startswith("raw/")]
    deleted = client.delete_dataset(ingest_pb2.DeleteDatasetRequest(dataset_id=d.id))
    assert deleted.raw_exports_deleted == [] and deleted.objects_deleted == 3  # manifest, shard, dedupe index
    assert keys(store) == []

    kept = client.upload_file(z, ingest_pb2.UploadHeader(filename="export.zip", options=ingest_pb2.IngestOptions(keep_raw=True)))
    source = kept.dataset.sources[0]
    assert source.kept and source.key == f"raw/{source.sha256}" and store.get(source.key) == z.read_bytes()
    deleted = client.delete_dataset(ingest_pb2.DeleteDatasetRequest(dataset_id=kept.dataset.id))
    assert deleted.raw_exports_deleted == [source.key] and keys(store) == []


def test_bad_uploads_are_invalid_argument_naming_the_file_and_store_nothing(service, tmp_path):
    client, store, _ = service
    bad = tmp_path / "broken.jsonl"
    bad.write_bytes(EXPORT + b"{not json\n")
    with pytest.raises(grpc.RpcError) as err:
        client.upload_file(bad, ingest_pb2.UploadHeader(filename="broken.jsonl"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "broken.jsonl" in err.value.details() and "line 6" in err.value.details()
    parts = [
        ingest_pb2.UploadRequest(header=ingest_pb2.UploadHeader(filename="x.jsonl", sha256="0" * 64)),
        ingest_pb2.UploadRequest(chunk=EXPORT),
    ]
    with pytest.raises(grpc.RpcError, match="damaged in transit") as err:
        client.upload(parts)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError, match="must start with its header") as err:
        client.upload([ingest_pb2.UploadRequest(chunk=b"x")])
    with pytest.raises(grpc.RpcError) as err:
        client.get_dataset(ingest_pb2.GetDatasetRequest(dataset_id="missing"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert keys(store) == []


def test_cli_ingest_prints_the_dataset_and_inspect_parses_locally(service, tmp_path):
    _, store, addr = service
    path = tmp_path / "chat.jsonl"
    path.write_bytes(EXPORT)
    runner = CliRunner()
    result = runner.invoke(app, ["ingest", str(path), "--min-messages", "3"], env={"DOPPEL_INGEST_ADDR": addr})
    assert result.exit_code == 0, result.output
    assert "format         jsonl" in result.output
    assert "conversations  1" in result.output and "messages       3" in result.output
    assert "1 conversations dropped for having too few messages" in result.output
    dataset_id = result.output.split()[1]
    env = {"DOPPEL_INGEST_ADDR": addr}
    listed = runner.invoke(app, ["datasets", "list"], env=env)
    assert listed.exit_code == 0 and listed.output.startswith(f"{dataset_id}  'chat'  1 conversations  3 messages  jsonl")
    shown = json.loads(runner.invoke(app, ["datasets", "show", dataset_id], env=env).output)
    assert shown["stats"]["messages"] == "3" and shown["options"]["minMessages"] == 3
    assert runner.invoke(app, ["datasets", "delete", dataset_id], env=env).exit_code == 0
    missing = runner.invoke(app, ["datasets", "show", dataset_id], env=env)
    assert missing.exit_code == 1 and f"no dataset {dataset_id!r}" in missing.stderr
    assert keys(store) == []

    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "format": "jsonl",
        "conversations": 2,
        "messages": 5,
        "participants": {"Ann": 3, "Bob": 1, "Cy": 1},
        "first": "2024-01-01T10:00:00Z",
        "last": "2024-01-02T12:04:00",
        "warnings": [],
    }
    result = runner.invoke(app, ["inspect", str(path), "--messages"])
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0] == {"conversation": "c1", "sender": "Ann", "text": "hi, call me on +49 171 2345678",
                        "timestamp": "2024-01-01T10:00:00Z"}
    assert len(lines) == 5
    result = runner.invoke(app, ["inspect", str(path), "--messages", "--redact", "personal"])
    assert json.loads(result.stdout.splitlines()[0])["text"] == "hi, call me on <PHONE>"


def test_cli_errors_name_the_file_and_list_the_formats(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping: milk, eggs\n")
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", str(notes)])
    assert result.exit_code == 1
    assert f"{notes}: not a supported chat export" in result.stderr
    assert f"supported formats: {', '.join(FORMATS)}" in result.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(EXPORT[:-20])
    result = runner.invoke(app, ["inspect", str(bad)])
    assert result.exit_code == 1 and "bad.jsonl" in result.stderr and "line 5" in result.stderr
    result = runner.invoke(app, ["ingest", str(tmp_path / "none.zip")])
    assert result.exit_code == 1 and "no such file or folder" in result.stderr
