"""Adding a base model someone has (services/trainer/uploads.py): a save_pretrained folder or one GGUF file."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from doppel.bases import BASES
from doppel.errors import AlreadyExists, InvalidArgument
from doppel.files import Received
from doppel.store import open_store
from doppel.store.base import Store
from services.trainer import basemodels
from services.trainer.uploads import add
from support.hubserver import tiny_repo_files


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"file://{tmp_path}/store") as s:
        yield s


def _folder(tmp_path: Path, files: dict[str, bytes]) -> Path:
    folder = tmp_path / "upload"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def test_a_save_pretrained_folder_is_stored_without_what_loading_does_not_need(store, tmp_path):
    files = tiny_repo_files(tmp_path / "tiny")
    folder = _folder(tmp_path, {**files, "optimizer.pt": b"x" * 10, "checkpoint-5/model.safetensors": b"old"})
    manifest = add(store, folder, name="my-tiny", source="upload", cache_dir=tmp_path / "cache")
    assert manifest.files == sorted(files) and manifest.source == "upload:upload" and manifest.architecture == "gpt2"
    assert {i.key for i in store.list("base-models/my-tiny/")} == {f"base-models/my-tiny/{n}" for n in [*files, "base.json"]}
    assert BASES.get(store, "my-tiny") == manifest
    loaded = basemodels.load_base_model("my-tiny", store, cache_dir=tmp_path / "cache")
    assert sum(p.numel() for p in loaded.model.parameters()) == manifest.parameters
    with pytest.raises(AlreadyExists, match="add it under another name"):
        add(store, folder, name="my-tiny", source="upload", cache_dir=tmp_path / "cache")


def test_folders_missing_what_loading_needs_are_refused_and_store_nothing(store, tmp_path):
    files = tiny_repo_files(tmp_path / "tiny")
    cases = {
        "no-tokenizer": ({n: d for n, d in files.items() if not n.startswith(("tokenizer", "vocab", "merges"))}, "no tokenizer"),
        "pickled": ({**{n: d for n, d in files.items() if n != "model.safetensors"}, "pytorch_model.bin": b"x"},
                    "no safetensors weights"),
        "unknown-arch": (tiny_repo_files(tmp_path / "odd", unsupported=True), "is not one Doppel trains and serves"),
        "two-ggufs": ({"a.gguf": b"x", "b.gguf": b"y"}, "one .gguf file alone"),
        "not-a-gguf": ({"model.gguf": b"not gguf at all"}, "cannot read model.gguf as a model"),
    }
    for name, (content, says) in cases.items():
        with pytest.raises(InvalidArgument, match=says):
            add(store, _folder(tmp_path / name, content), name=name, source=name, cache_dir=tmp_path / "cache")
    assert not list(store.list(""))


def test_the_shipped_gguf_is_added_as_bf16_safetensors(store, tmp_path):
    gguf = basemodels.smollm2_gguf_path()
    folder = tmp_path / "gguf"
    folder.mkdir()
    (folder / gguf.name).symlink_to(gguf)
    manifest = add(store, folder, name="smollm2-gguf", source=gguf.name, cache_dir=tmp_path / "cache")
    assert (manifest.architecture, manifest.dtype, manifest.chat_template) == ("llama", "bfloat16", True)
    assert manifest.parameters == basemodels.REGISTRY["smollm2-135m"].parameters
    assert "model.safetensors" in manifest.files and "tokenizer.json" in manifest.files


def test_received_files_are_checked_as_they_arrive(tmp_path):
    data = b"hello world"
    sha = hashlib.sha256(data).hexdigest()
    ok = Received(tmp_path / "ok")
    ok.header("base-1", "folder")
    ok.start("sub/config.json", len(data), sha)
    ok.write(data[:5])
    ok.write(data[5:])
    ok.finish()
    assert (tmp_path / "ok" / "sub" / "config.json").read_bytes() == data and ok.name == "base-1"

    def received(*steps) -> None:
        r = Received(tmp_path / f"r{len(list(tmp_path.iterdir()))}")
        try:
            for step, *args in steps:
                getattr(r, step)(*args)
            r.finish()
        finally:
            r.close()

    for steps, says in [
        ((("start", "a", 1, ""),), "must start with its header"),
        ((("header", "b", ""), ("header", "b", "")), "exactly one header"),
        ((("header", "b", ""), ("write", b"x")), "bytes came before the file"),
        ((("header", "b", ""), ("start", "../up", 1, "")), "not a relative path"),
        ((("header", "b", ""), ("start", "/abs", 1, "")), "not a relative path"),
        ((("header", "b", ""), ("start", "d/" + "x" * 256, 1, "")), "name longer than 255 bytes"),
        ((("header", "b", ""), ("start", "a", 3, ""), ("write", b"xy")), "has 2 bytes, not the 3 announced"),
        ((("header", "b", ""), ("start", "a", 2, sha), ("write", b"xy")), "damaged in transit"),
        ((("header", "b", ""), ("start", "a", 0, ""), ("start", "a", 0, "")), "sent twice"),
        ((("header", "bad name!", ""),), "invalid base model name"),
        ((), "empty upload"),
    ]:
        with pytest.raises(InvalidArgument, match=says):
            received(*steps)
