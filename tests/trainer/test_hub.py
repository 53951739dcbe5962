"""Pulling base models from the Hugging Face Hub into the store, against a local stand-in of the Hub
(support.hubserver) that the real huggingface_hub client talks to."""

from __future__ import annotations

import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants, file_download

from doppel.bases import BASES
from doppel.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from doppel.store import open_store
from doppel.store.base import Store
from services.trainer.hub import Cancelled, PullProgress, default_name, pull
from support.hubserver import tiny_repo_files

REPO = "doppel-test/Tiny-GPT2"
OLD = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 64 * 1024


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"file://{tmp_path}/store") as s:
        yield s


def _keys(store: Store) -> set[str]:
    return {i.key for i in store.list("base-models/")}


def test_a_pull_stores_the_weights_tokenizer_and_a_manifest_with_progress(hub, store, tiny_files, tmp_path):
    sha = hub.add_repo(REPO, {**tiny_files, "README.md": b"---\nlicense: mit\n---\n", "flax_model.msgpack": b"x" * 100},
                       license="mit")
    seen: list[PullProgress] = []
    manifest = pull(store, REPO, cache_dir=tmp_path / "cache", progress=seen.append)

    assert manifest.id == "tiny-gpt2" == default_name(REPO)
    assert (manifest.hub_id, manifest.revision, manifest.source) == (REPO, sha, f"hub:{REPO}@{sha}")
    assert (manifest.architecture, manifest.dtype, manifest.license, manifest.chat_template) == ("gpt2", "float32", "mit", False)
    weights = sorted(n for n in tiny_files if n != "README.md")
    assert manifest.files == weights and manifest.size_bytes == sum(len(tiny_files[n]) for n in weights)
    assert _keys(store) == {f"base-models/tiny-gpt2/{n}" for n in [*weights, "base.json"]}  # no README, no flax weights
    assert store.get("base-models/tiny-gpt2/model.safetensors") == tiny_files["model.safetensors"]
    assert BASES.get(store, "tiny-gpt2") == manifest

    assert manifest.parameters == sum(p.numel() for p in _model(tiny_files, tmp_path).parameters())
    downloading = [p for p in seen if p.message == f"downloading {REPO}"]
    assert downloading[-1].done_bytes == downloading[-1].total_bytes == manifest.size_bytes
    assert [p.done_bytes for p in downloading] == sorted(p.done_bytes for p in downloading)
    assert seen[-1].message == f"pulled {REPO} at {sha[:12]} as tiny-gpt2"
    assert not (tmp_path / "cache" / "hub" / f"tiny-gpt2@{sha}").exists()  # the staging copy is gone

    again: list[PullProgress] = []
    assert pull(store, REPO, cache_dir=tmp_path / "cache", progress=again.append) == manifest  # nothing downloaded twice
    assert again[-1].message.startswith("tiny-gpt2 is already in the store")
    hub.add_repo(REPO, {**tiny_files, "config.json": tiny_files["config.json"] + b" "})  # a new commit on main
    with pytest.raises(AlreadyExists, match="pull under another name"):
        pull(store, REPO, cache_dir=tmp_path / "cache")


def _model(files: dict[str, bytes], tmp_path: Path):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "expected"
    folder.mkdir(exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)


def test_a_revision_pin_pulls_that_commit(hub, store, tiny_files, tmp_path):
    old = {**tiny_files, "config.json": tiny_files["config.json"].replace(b'"n_positions": 128', b'"n_positions": 64')}
    assert old["config.json"] != tiny_files["config.json"]
    hub.add_repo(REPO, tiny_files, extra_revisions={OLD: old})
    manifest = pull(store, REPO, revision=OLD, name="tiny-old", cache_dir=tmp_path / "cache")
    assert manifest.revision == OLD and store.get("base-models/tiny-old/config.json") == old["config.json"]
    with pytest.raises(NotFound, match="has no revision 'v9'"):
        pull(store, REPO, revision="v9", name="tiny-v9", cache_dir=tmp_path / "cache")


def test_gated_unknown_and_unsupported_models_are_refused_and_store_nothing(hub, store, tiny_files, tmp_path):
    hub.add_repo("meta/gated", tiny_files, gated=True, tokens={"hf_granted"})
    with pytest.raises(FailedPrecondition, match=r"'meta/gated' is gated: accept its license at .*HF_TOKEN"):
        pull(store, "meta/gated", cache_dir=tmp_path / "cache")
    with pytest.raises(NotFound, match="no model 'nobody/nothing' on http://127.0.0.1"):
        pull(store, "nobody/nothing", cache_dir=tmp_path / "cache")
    hub.add_repo("odd/arch", tiny_repo_files(tmp_path / "odd", unsupported=True))
    with pytest.raises(InvalidArgument, match=r"architecture 'doppel-unknown' .* these are: gpt2 \(GPT-2\), llama"):
        pull(store, "odd/arch", cache_dir=tmp_path / "cache")
    assert not [r for r in hub.log(kind="resolve") if r.repo_id == "odd/arch"]  # refused before any download
    hub.add_repo("old/pickled", {"config.json": tiny_files["config.json"], "pytorch_model.bin": b"\x00" * 64})
    with pytest.raises(FailedPrecondition, match="no safetensors weights"):
        pull(store, "old/pickled", cache_dir=tmp_path / "cache")
    with pytest.raises(InvalidArgument, match="invalid base model name"):
        pull(store, REPO, name="../up", cache_dir=tmp_path / "cache")
    assert _keys(store) == set()

    assert pull(store, "meta/gated", token="hf_granted", cache_dir=tmp_path / "cache").id == "gated"


def test_a_dropped_connection_is_resumed_where_it_stopped(hub, store, tiny_files, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)
    monkeypatch.setattr(file_download, "time", types.SimpleNamespace(sleep=lambda seconds: None))
    hub.add_repo(REPO, tiny_files)
    hub.drop_once(REPO, "model.safetensors", after_bytes=2 * CHUNK)
    seen: list[PullProgress] = []
    manifest = pull(store, REPO, cache_dir=tmp_path / "cache", progress=seen.append)

    first, second = hub.downloads(REPO, "model.safetensors")
    assert first.dropped and (second.status, second.range_start) == (206, 2 * CHUNK)
    assert store.get("base-models/tiny-gpt2/model.safetensors") == tiny_files["model.safetensors"]
    assert max(p.done_bytes for p in seen) == manifest.size_bytes  # the resumed bytes are not counted twice


def test_a_cancelled_pull_stops_downloading_stores_nothing_and_resumes_later(hub, store, tiny_files, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)
    hub.add_repo(REPO, tiny_files)
    seen: list[PullProgress] = []
    with pytest.raises(Cancelled, match=r"cancelled at [\d,]+ of [\d,]+ bytes; pulling it again downloads the rest"):
        pull(store, REPO, cache_dir=tmp_path / "cache", progress=seen.append,
             should_stop=lambda: any(p.done_bytes >= CHUNK for p in seen))
    deadline = time.monotonic() + 10
    while not hub.downloads(REPO, "model.safetensors") and time.monotonic() < deadline:
        time.sleep(0.05)  # the stand-in logs a request once it has done with it: when it sees the hang-up
    (first,) = hub.downloads(REPO, "model.safetensors")
    assert first.status == 200 and not list(store.list("base-models/"))
    assert 0 < max(p.done_bytes for p in seen) < len(tiny_files["model.safetensors"])  # it stopped mid-file
    finished = [n for n in tiny_files if n != "model.safetensors" and hub.downloads(REPO, n)]

    manifest = pull(store, REPO, cache_dir=tmp_path / "cache")
    assert len(hub.downloads(REPO, "model.safetensors")) == 2
    assert finished and all(len(hub.downloads(REPO, n)) == 1 for n in finished)  # whole files are not fetched again
    assert store.get("base-models/tiny-gpt2/model.safetensors") == tiny_files["model.safetensors"]
    assert manifest.size_bytes == sum(len(b) for b in tiny_files.values() if not isinstance(b, str))


def test_the_catalog_lists_built_in_stored_and_curated_bases_with_memory(hub, store, tiny_files, tmp_path):
    from services.trainer import basemodels, registry
    from services.trainer.convert import base_models_to_proto

    hub.add_repo(REPO, tiny_files)
    pull(store, REPO, cache_dir=tmp_path / "cache")
    infos = {i.name: i for i in basemodels.catalog(store)}
    assert list(infos)[:3] == ["smollm2-135m", "tiny", "tiny-gpt2"]
    assert not infos["smollm2-135m"].stored and not infos["tiny"].stored  # never converted here; built on the spot
    stored = infos["tiny-gpt2"]
    assert stored.stored and stored.hub_id == REPO and stored.shape is not None
    assert stored.shape.parameters == stored.parameters  # the shape read from its config.json
    assert {e.name for e in registry.CURATED} <= set(infos)
    assert all(not infos[e.name].stored and infos[e.name].hub_id == e.hub_id for e in registry.CURATED)
    assert infos["llama-3.2-1b-instruct"].gated and not infos["gpt2"].gated

    listed = {b.name: b for b in base_models_to_proto(list(infos.values()), batch_size=8, block_size=512).base_models}
    memory = {m.method: m for m in listed["qwen2.5-7b-instruct"].training_memory}
    assert memory["qlora"].bytes < memory["lora"].bytes < memory["full"].bytes
    assert memory["full"].checkpointed_bytes < memory["full"].bytes and memory["full"].block_size == 512
    assert 3 * 2**30 < memory["qlora"].checkpointed_bytes < 24 * 2**30  # QLoRA of a 7B base fits a 24 GB card


def test_a_curated_base_is_pulled_on_first_use_unless_the_hub_is_off(hub, store, tiny_files, tmp_path, monkeypatch):
    from services.trainer import basemodels

    hub.add_repo("HuggingFaceTB/SmolLM2-360M-Instruct", tiny_files)  # the stand-in serves the tiny model under its id
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FailedPrecondition, match=r"run `doppel bases pull smollm2-360m-instruct` where pulls are allowed"):
        basemodels.check_base_model("smollm2-360m-instruct", store)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    basemodels.check_base_model("smollm2-360m-instruct", store)
    seen: list[PullProgress] = []
    base = basemodels.load_base_model("smollm2-360m-instruct", store, cache_dir=tmp_path / "cache", progress=seen.append)
    assert (base.source, base.store_prefix) == ("store:base-models/smollm2-360m-instruct/", "base-models/smollm2-360m-instruct/")
    assert seen[-1].message.startswith("pulled HuggingFaceTB/SmolLM2-360M-Instruct")
    assert BASES.get(store, "smollm2-360m-instruct").hub_id == "HuggingFaceTB/SmolLM2-360M-Instruct"
    hub.clear_log()
    again = basemodels.load_base_model("smollm2-360m-instruct", store, cache_dir=tmp_path / "other")
    assert again.store_prefix == base.store_prefix and not hub.log(kind="resolve")  # read from the store now


def test_the_default_base_prefers_smollm2s_original_weights_when_they_can_be_had(hub, store, tiny_files, tmp_path, monkeypatch):
    from services.trainer import basemodels

    said: list[PullProgress] = []
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert basemodels._real_smollm2(store, tmp_path / "cache", said.append) is None  # offline: the GGUF's
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert basemodels._real_smollm2(store, tmp_path / "cache", said.append) is None  # not on this hub: the GGUF's
    assert "cannot be pulled (no model 'HuggingFaceTB/SmolLM2-135M-Instruct'" in said[-1].message  # not a reason to fail

    hub.add_repo("HuggingFaceTB/SmolLM2-135M-Instruct", tiny_files)
    base = basemodels.load_base_model("smollm2-135m", store, cache_dir=tmp_path / "cache")
    assert base.source == "store:base-models/smollm2-135m-instruct/" and BASES.get(store, "smollm2-135m-instruct")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # once stored, used offline too
    assert basemodels._real_smollm2(store, tmp_path / "cache", said.append) == "base-models/smollm2-135m-instruct/"
