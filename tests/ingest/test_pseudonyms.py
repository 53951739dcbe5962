"""The names level of redaction through the real pipeline, on both store backends: everyone but
the speakers kept becomes `<PERSON_n>`, the same n across conversations and later imports, and
no stored byte holds a replaced name. Then the same through the gRPC service and the CLI."""

from __future__ import annotations

import json
import re

import grpc
import pytest
import zstandard
from typer.testing import CliRunner

from doppel import dataset
from doppel.cli.main import app
from doppel.clients import IngestClient
from doppel.config import Settings
from doppel.dataset import Pseudonyms
from doppel.errors import InvalidArgument
from doppel.rpc.server import Service
from doppel.store import Store, open_store
from doppel.v1 import ingest_pb2, ingest_pb2_grpc
from services.ingest.options import IngestOptions
from services.ingest.pipeline import Target, ingest_file
from services.ingest.pseudonyms import Pseudonymiser
from services.ingest.server import IngestServicer
from support.parsing import keys, write_zip

NAMES = IngestOptions.build(redaction="personal_urls_and_names", keep_names=["ann lee"])
REPLACED = re.compile(rb"(?i)(?<![a-z])(carol|smith|bob|jones|dan|brown)(?![a-z])")  # as words: Caroline is no name


def whatsapp(*rows: tuple[str, str, str]) -> bytes:
    """An Android "Export chat" text from (time, sender, text) rows."""
    return "".join(f"{at} - {sender}: {text}\n" for at, sender, text in rows).encode()


BOB = whatsapp(
    ("06/01/2024, 09:00", "Bob Jones", "ann, did carol call? Ask Bobby"),
    ("06/01/2024, 09:01", "Ann Lee", "not yet. Ann Lee here btw, Hauptstraße 5"),
)
CAROL = whatsapp(
    ("05/01/2024, 10:00", "Ann Lee", "Hi Carol! Is Bob Jones coming? I'm at 12 Baker Street"),
    ("05/01/2024, 10:01", "Carol Smith", "yes, BOB said so. Caroline too, from the Smithsonian"),
    ("05/01/2024, 10:02", "Ann Lee", "great: smith family dinner, carol_smith_88 is invited"),
)


def export(tmp_path, name: str, chats: dict[str, bytes]):
    return write_zip(tmp_path / name, {f"WhatsApp Chat with {who}.txt": text for who, text in chats.items()})


def stored(store: Store, manifest) -> dict[str, list[tuple[str, str]]]:
    """Each stored conversation's title -> its (sender, text) rows."""
    return {c.title: [(m.sender, m.text) for m in c.messages] for c in dataset.conversations(store, manifest)}


def plain_bytes(store: Store) -> dict[str, bytes]:
    """Every object in the store as it would read, zstd frames decompressed."""
    out = {}
    for key in keys(store):
        data = store.get(key)
        out[key] = zstandard.ZstdDecompressor().decompressobj().decompress(data) if key.endswith(".zst") else data
    return out


def test_people_keep_their_placeholder_across_conversations_and_imports(store, tmp_path):
    first = ingest_file(store, export(tmp_path, "Chats with Bob Jones.zip", {"Bob Jones": BOB, "Carol Smith": CAROL}),
                        filename="Chats with Bob Jones.zip", options=NAMES)
    # numbered in the order they first speak: the Bob chat is read first
    assert stored(store, first) == {
        "<PERSON_1>": [
            ("<PERSON_1>", "ann, did <PERSON_2> call? Ask Bobby"),
            ("Ann Lee", "not yet. Ann Lee here btw, <ADDRESS>"),
        ],
        "<PERSON_2>": [
            ("Ann Lee", "Hi <PERSON_2>! Is <PERSON_1> coming? I'm at <ADDRESS>"),
            ("<PERSON_2>", "yes, <PERSON_1> said so. Caroline too, from the Smithsonian"),
            ("Ann Lee", "great: <PERSON_2> family dinner, <PERSON_2>_88 is invited"),  # carol_smith_88
        ],
    }
    assert first.stats.participants == {"Ann Lee": 3, "<PERSON_1>": 1, "<PERSON_2>": 1}
    assert first.name == "Chats with <PERSON_1>" and first.sources[0].filename == "Chats with <PERSON_1>.zip"
    assert first.pseudonyms is not None and len(first.pseudonyms.people) == 2

    # a later export: the Bob chat again (nothing doubles) with a newcomer, Dan, who speaks first
    dan = whatsapp(("07/01/2024, 08:00", "Dan Brown", "hi Bob, hi Carol Smith"),
                   ("07/01/2024, 08:05", "Carol Smith", "hey dan"))
    second = ingest_file(store, export(tmp_path, "more.zip", {"Bob Jones": BOB, "Dan Brown": dan}), filename="more.zip",
                         target=Target(first.id), options=NAMES)
    assert stored(store, second)["<PERSON_3>"] == [("<PERSON_3>", "hi <PERSON_1>, hi <PERSON_2>"), ("<PERSON_2>", "hey <PERSON_3>")]
    assert any("2 duplicate messages dropped" in w for w in second.warnings)
    assert second.stats.participants == {"Ann Lee": 3, "<PERSON_2>": 2, "<PERSON_1>": 1, "<PERSON_3>": 1}
    assert second.pseudonyms is not None and second.pseudonyms.salt == first.pseudonyms.salt
    assert second.pseudonyms.people[:2] == first.pseudonyms.people and len(second.pseudonyms.people) == 3

    objects = plain_bytes(store)
    assert len(objects) == 4  # manifest, two shards, the dedupe index
    assert {key: REPLACED.findall(data) for key, data in objects.items()} == dict.fromkeys(objects, [])
    assert b"Ann Lee" in objects[f"datasets/{first.id}/{first.files[0]}"]  # the kept speaker, as written


def test_without_speakers_to_keep_everyone_is_replaced_and_ids_hold_no_names(store, tmp_path):
    m = ingest_file(store, export(tmp_path, "a.zip", {"Carol Smith": CAROL}), filename="a.zip",
                    options=IngestOptions.build(redaction="personal_urls_and_names"))
    [c] = dataset.conversations(store, m)
    assert c.participants == ["<PERSON_1>", "<PERSON_2>"] and c.id.startswith("c-") and "Carol" not in c.id
    assert c.messages[0].text == "Hi <PERSON_2>! Is Bob Jones coming? I'm at <ADDRESS>"  # no participant: not known as a name
    assert c.messages[2].text == "great: <PERSON_2> family dinner, <PERSON_2>_88 is invited"


def test_a_speaker_to_keep_who_is_not_in_the_export_is_invalid_and_nothing_is_stored(store, tmp_path):
    path = export(tmp_path, "a.zip", {"Bob Jones": BOB})
    options = IngestOptions.build(redaction="personal_urls_and_names", keep_names=["Ann Lee", "Zed"], keep_raw=True)
    with pytest.raises(InvalidArgument) as err:
        ingest_file(store, path, filename="a.zip", options=options)
    assert str(err.value) == "keep_names: 'Zed' is not a participant of a.zip; its participants are Ann Lee, Bob Jones"
    assert keys(store) == []
    with pytest.raises(InvalidArgument, match="keep_names: only the personal_urls_and_names redaction replaces names"):
        IngestOptions.build(keep_names=["Ann Lee"])


def test_what_counts_as_a_name_shared_parts_kept_parts_and_short_ones():
    p = Pseudonymiser(["Ann Lee", "Ann Smith", "John Smith", "Cy Young", "bob#1234"], ["Ann Lee"], Pseudonyms(salt="s"))
    assert [p.sender(n) for n in ["ANN LEE", "Ann Smith", "john smith", "Cy Young", "bob#1234"]] == [
        "ANN LEE", "<PERSON_1>", "<PERSON_2>", "<PERSON_3>", "<PERSON_4>"]
    text = "Ann, Ann Lee, ann  smith, John, smith, Cy, Young, Bob, bob#1234, Johnsmith, John.Smith, Bobcat"
    assert p.text(text) == ("Ann, Ann Lee, <PERSON_1>, <PERSON_2>, <PERSON>, Cy, <PERSON_3>, <PERSON_4>, <PERSON_4>, "
                            "<PERSON_2>, <PERSON_2>, Bobcat")  # "smith" is two people's; Ann is a kept speaker's too


@pytest.fixture
def service(grpc_server, s3_store_url):
    """(client, store, address) of a real ingest server over a real SeaweedFS bucket."""
    store = open_store(s3_store_url)
    server = grpc_server([Service.of(ingest_pb2, ingest_pb2_grpc, "IngestService", IngestServicer(Settings(), store=store))])
    with IngestClient(server.addr) as client:
        yield client, store, server.addr
    store.close()


def test_the_service_and_the_cli_replace_names_and_name_a_bad_speaker_to_keep(service, tmp_path):
    client, store, addr = service
    path = export(tmp_path, "chats.zip", {"Bob Jones": BOB, "Carol Smith": CAROL})
    options = ingest_pb2.IngestOptions(redaction=ingest_pb2.REDACTION_PERSONAL_URLS_AND_NAMES, keep_names=["Ann Lee"])
    d = client.upload_file(path, ingest_pb2.UploadHeader(filename="chats.zip", options=options)).dataset
    assert [(p.name, p.messages) for p in d.stats.participants] == [("Ann Lee", 3), ("<PERSON_1>", 1), ("<PERSON_2>", 1)]
    assert d.options.redaction == ingest_pb2.REDACTION_PERSONAL_URLS_AND_NAMES and list(d.options.keep_names) == ["Ann Lee"]
    preview = client.preview_dataset(ingest_pb2.PreviewDatasetRequest(dataset_id=d.id)).conversations
    assert [c.title for c in preview] == ["<PERSON_1>", "<PERSON_2>"]
    assert preview[1].messages[0].text == "Hi <PERSON_2>! Is <PERSON_1> coming? I'm at <ADDRESS>"

    bad = ingest_pb2.IngestOptions(redaction=ingest_pb2.REDACTION_PERSONAL_URLS_AND_NAMES, keep_names=["Zed"])
    with pytest.raises(grpc.RpcError) as err:
        client.upload_file(path, ingest_pb2.UploadHeader(filename="chats.zip", options=bad))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'Zed' is not a participant of chats.zip; its participants are Ann Lee, Bob Jones, Carol Smith" in err.value.details()
    assert len(keys(store)) == 3  # the first dataset's objects only

    runner = CliRunner()
    names = ["--redact", "personal_urls_and_names", "--keep-name", "Ann Lee", "--keep-name", "carol smith"]
    result = runner.invoke(app, ["ingest", str(path), *names], env={"DOPPEL_INGEST_ADDR": addr})
    assert result.exit_code == 0, result.output
    assert "Carol Smith" in result.output and "<PERSON_1>" in result.output and "Bob" not in result.output
    result = runner.invoke(app, ["inspect", str(path), "--messages", *names])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[0])["text"] == "ann, did carol call? Ask Bobby"  # Carol kept
    result = runner.invoke(app, ["inspect", str(path), "--keep-name", "Ann Lee"])
    assert result.exit_code == 1 and "only the personal_urls_and_names redaction replaces names" in result.stderr
