"""An export in, a dataset out, on both store backends: content-addressed raw exports, manifest
last, dedupe across imports, and nothing left behind by a failure or a delete."""

from __future__ import annotations

from datetime import datetime

import pytest

from doppel import dataset
from doppel.errors import InvalidArgument, NotFound, ParseError
from doppel.layout import raw_export_key
from services.ingest import datasets
from services.ingest.options import IngestOptions
from services.ingest.parsers import FORMATS
from services.ingest.pipeline import Target, file_sha256, import_key, ingest_file
from support.parsing import jsonl_export, keys, write_zip

FIRST = jsonl_export(
    ("c1", "Ann", "hi bob, mail me at ann@example.com", "2024-01-01T10:00:00Z"),
    ("c1", "Bob", "sure", "2024-01-01T10:01:00Z"),
    ("c2", "Ann", "other chat", "2024-02-03T08:00:00"),
    ("c2", "Cy", "ok", "2024-02-03T08:05:00"),
)
OVERLAP = jsonl_export(
    ("c1", "Bob", "sure", "2024-01-01T10:01:00Z"),
    ("c1", "Ann", "hi bob, mail me at ann@example.com", "2024-01-01T10:00:00Z"),
    ("c1", "Ann", "new one", "2024-01-05T09:00:00Z"),
    ("c1", "Bob", "newer", "2024-01-05T09:01:00Z"),
)


def export(tmp_path, data: bytes, name: str = "chat.jsonl"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def all_messages(store, manifest):
    return [(c.id, m.sender, m.text) for c in dataset.conversations(store, manifest) for m in c.messages]


def test_an_export_becomes_a_dataset_and_the_export_itself_is_not_kept(store, tmp_path):
    path = export(tmp_path, FIRST)
    m = ingest_file(store, path, filename="chat.jsonl")
    (source,) = m.sources
    assert (source.key, source.kept, source.sha256, source.filename) == ("", False, file_sha256(path), "chat.jsonl")
    assert sorted(keys(store)) == sorted([f"datasets/{m.id}/manifest.json", f"datasets/{m.id}/{m.files[0]}",
                                          f"datasets/{m.id}/{m.seen}"])  # no raw/ object, ever
    merged = ingest_file(store, export(tmp_path, OVERLAP, "b.jsonl"), filename="b.jsonl", target=Target(m.id))
    assert merged.stats.messages == 6 and any("2 duplicate messages dropped" in w for w in merged.warnings)
    again = ingest_file(store, path, filename="chat.jsonl", target=Target(m.id))  # re-imported: nothing doubles
    assert again.stats.messages == 6 and not [k for k in keys(store) if k.startswith("raw/")]
    assert datasets.delete(store, m.id).raw_exports == [] and keys(store) == []


def test_an_export_asked_to_be_kept_is_stored_once_with_the_dataset(store, tmp_path):
    path = export(tmp_path, FIRST)
    m = ingest_file(store, path, filename="chat.jsonl", options=IngestOptions(keep_raw=True))
    assert m.name == "chat" and m.sources[0].format == "jsonl" and m.sources[0].kept
    assert m.sources[0].key == raw_export_key(file_sha256(path))
    assert store.get(m.sources[0].key) == FIRST
    assert (m.stats.conversations, m.stats.messages) == (2, 4)
    assert m.stats.participants == {"Ann": 2, "Bob": 1, "Cy": 1}
    assert m.stats.timeline == {"2024-01": 2, "2024-02": 2}
    assert all_messages(store, m)[0] == ("c1", "Ann", "hi bob, mail me at <EMAIL>")
    assert sorted(keys(store)) == sorted(
        [m.sources[0].key, f"datasets/{m.id}/manifest.json", f"datasets/{m.id}/{m.files[0]}", f"datasets/{m.id}/{m.seen}"]
    )
    again = ingest_file(store, path, filename="again.jsonl", target=Target(name="second"), options=IngestOptions(keep_raw=True))
    assert again.id != m.id and again.name == "second"
    assert [k for k in keys(store) if k.startswith("raw/")] == [m.sources[0].key]


def test_an_overlapping_import_into_the_same_dataset_doubles_nothing(store, tmp_path):
    first = ingest_file(store, export(tmp_path, FIRST), filename="a.jsonl")
    second = ingest_file(store, export(tmp_path, OVERLAP, "b.jsonl"), filename="b.jsonl", target=Target(first.id))
    assert second.id == first.id and len(second.sources) == 2 and len(second.files) == 2
    assert (second.stats.conversations, second.stats.messages) == (3, 6)
    assert second.stats.participants == {"Ann": 3, "Bob": 2, "Cy": 1}
    assert sorted(all_messages(store, second)) == sorted(
        [
            ("c1", "Ann", "hi bob, mail me at <EMAIL>"),
            ("c1", "Bob", "sure"),
            ("c2", "Ann", "other chat"),
            ("c2", "Cy", "ok"),
            ("c1", "Ann", "new one"),
            ("c1", "Bob", "newer"),
        ]
    )
    assert any("2 duplicate messages dropped" in w for w in second.warnings)
    assert not store.exists(f"datasets/{first.id}/{first.seen}")  # the old index is replaced
    third = ingest_file(store, export(tmp_path, OVERLAP, "c.jsonl"), filename="c.jsonl", target=Target(first.id))
    assert third.stats.messages == 6


def test_a_failed_ingest_leaves_the_store_as_it_was(store, tmp_path):
    bad = FIRST + b'{"conversation": "c3", "sender": "Ann", "text": "x"}\n'
    with pytest.raises(ParseError, match=r"bad\.jsonl.*line 5"):
        ingest_file(store, export(tmp_path, bad, "bad.jsonl"), filename="bad.jsonl")
    assert keys(store) == []
    good = ingest_file(store, export(tmp_path, FIRST), filename="chat.jsonl")
    before = {k: store.get(k) for k in keys(store)}
    with pytest.raises(ParseError):
        ingest_file(store, export(tmp_path, bad, "bad.jsonl"), filename="bad.jsonl", target=Target(good.id))
    assert {k: store.get(k) for k in keys(store)} == before


def test_unsafe_or_unknown_input_writes_nothing(store, tmp_path):
    zipped = tmp_path / "evil.zip"
    import zipfile

    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("../x.jsonl", FIRST)
    with pytest.raises(InvalidArgument, match="'..' path segment"):
        ingest_file(store, zipped, filename="evil.zip")
    with pytest.raises(InvalidArgument, match=f"not a supported chat export.*supported formats: {', '.join(FORMATS)}$"):
        ingest_file(store, export(tmp_path, b"just some notes\n", "notes.txt"), filename="notes.txt")
    assert keys(store) == []


def test_an_export_with_nothing_left_after_filtering_is_an_error(store, tmp_path):
    with pytest.raises(InvalidArgument, match="nothing to store.*conversations dropped for having too few messages"):
        ingest_file(store, export(tmp_path, FIRST), filename="chat.jsonl", options=IngestOptions(min_messages=5))
    assert keys(store) == []


def test_missing_dataset_is_not_found_and_writes_nothing(store, tmp_path):
    with pytest.raises(NotFound, match="no dataset 'nope'"):
        ingest_file(store, export(tmp_path, FIRST), filename="chat.jsonl", target=Target("nope"))
    assert keys(store) == []


def test_delete_removes_everything_derived_and_unshared_raw_exports(store, tmp_path):
    path = export(tmp_path, FIRST)
    a = ingest_file(store, path, filename="chat.jsonl", options=IngestOptions(keep_raw=True))
    b = ingest_file(store, path, filename="chat.jsonl", options=IngestOptions(keep_raw=True))
    gone = datasets.delete(store, a.id)
    assert gone.raw_exports == []  # b still uses it
    assert store.exists(a.sources[0].key)
    gone = datasets.delete(store, b.id)
    assert gone.raw_exports == [b.sources[0].key]
    assert gone.objects == 4
    assert keys(store) == []
    with pytest.raises(NotFound):
        datasets.delete(store, b.id)


def test_import_by_key_of_an_object_and_of_a_folder_prefix(store, tmp_path):
    store.put("uploads/chat.jsonl", FIRST)
    m = import_key(store, "uploads/chat.jsonl", options=IngestOptions(redaction="off"))
    assert m.sources[0].key == "uploads/chat.jsonl" and m.stats.messages == 4
    assert all_messages(store, m)[0][2] == "hi bob, mail me at ann@example.com"
    store.put("uploads/folder/a.jsonl", FIRST)
    m2 = import_key(store, "uploads/folder")
    assert m2.stats.messages == 4
    with pytest.raises(NotFound, match="no export at store key 'uploads/none'"):
        import_key(store, "uploads/none")
    datasets.delete(store, m.id)
    assert store.exists("uploads/chat.jsonl")  # a user's own object is not Doppel's to delete


def test_list_preview_and_zip_input(store, tmp_path):
    z = write_zip(tmp_path / "export.zip", {"chats/all.jsonl": FIRST})
    a = ingest_file(store, z, filename="export.zip")
    b = ingest_file(store, export(tmp_path, OVERLAP), filename="chat.jsonl")
    page, token = dataset.DATASETS.page(store, page_size=1)
    assert [d.id for d in page] == [max(a, b, key=lambda m: (m.created_at, m.id)).id]
    rest, last = dataset.DATASETS.page(store, page_size=1, token=token)
    assert len(rest) == 1 and last == ""
    preview = datasets.preview(store, a.id, max_conversations=1, max_messages=1)
    assert len(preview) == 1 and len(preview[0].messages) == 1
    assert preview[0].messages[0].timestamp == datetime.fromisoformat("2024-01-01T10:00:00+00:00")
