"""The Hub stand-in (support.hubserver) against the real huggingface_hub client: if these pass, tests of
Doppel's base-model downloads that use it see what the Hub would show them."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import HfApi, constants, file_download, hf_hub_download, list_repo_files, model_info, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

from support.hubserver import (
    UNSUPPORTED_ARCHITECTURE,
    UNSUPPORTED_MODEL_TYPE,
    HubServer,
    hub_env,
    iter_files,
    tiny_repo_files,
)

REPO = "doppel-test/tiny-gpt2"
OLD = "0123456789abcdef0123456789abcdef01234567"  # a pinned commit of an older revision
CHUNK = 64 * 1024  # huggingface_hub writes (and resumes) in whole chunks of this size in the resume tests


def test_model_info_reports_files_license_config_and_parameters(hub: HubServer, tiny_files: dict[str, bytes]):
    import safetensors.torch

    sha = hub.add_repo(REPO, tiny_files, license="apache-2.0")
    info = HfApi(endpoint=hub.endpoint).model_info(REPO, files_metadata=True)

    assert (info.id, info.sha, info.gated) == (REPO, sha, False)
    assert {s.rfilename: s.size for s in info.siblings} == {name: len(data) for name, data in tiny_files.items()}
    weights = next(s for s in info.siblings if s.rfilename == "model.safetensors")
    assert weights.lfs is not None and weights.lfs.size == len(tiny_files["model.safetensors"])
    assert next(s for s in info.siblings if s.rfilename == "config.json").lfs is None
    assert info.card_data.license == "apache-2.0"
    assert info.config["architectures"] == ["GPT2LMHeadModel"] and info.config["model_type"] == "gpt2"
    assert info.pipeline_tag == "text-generation" and info.library_name == "transformers"
    tensors = safetensors.torch.load(tiny_files["model.safetensors"])
    assert info.safetensors.parameters == {"F32": sum(t.numel() for t in tensors.values())}
    assert info.safetensors.total == sum(t.numel() for t in tensors.values())

    # The module-level functions (an HfApi made on import) and a revision pin reach the server too.
    assert model_info(REPO, revision=sha).sha == sha
    assert sorted(list_repo_files(REPO)) == sorted(tiny_files)
    assert not hub.unhandled()


def test_unsupported_architecture_shows_in_model_info_and_transformers_refuses_it(hub: HubServer, tmp_path: Path):
    from transformers import AutoConfig

    hub.add_repo(REPO, tiny_repo_files(tmp_path, unsupported=True))
    info = HfApi().model_info(REPO)
    assert info.config == {"architectures": [UNSUPPORTED_ARCHITECTURE], "model_type": UNSUPPORTED_MODEL_TYPE} | {
        "tokenizer_config": info.config["tokenizer_config"]
    }
    with pytest.raises(ValueError, match=UNSUPPORTED_MODEL_TYPE):
        AutoConfig.from_pretrained(snapshot_download(REPO, cache_dir=tmp_path / "cache"))


def test_snapshot_download_gives_a_model_transformers_loads(hub: HubServer, tiny_files: dict[str, bytes], tmp_path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sha = hub.add_repo(REPO, tiny_files)
    path = Path(snapshot_download(REPO, cache_dir=tmp_path / "cache"))

    assert path.name == sha
    assert dict(iter_files(path)) == tiny_files
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer("Alice: haha yes", return_tensors="pt").input_ids
    with torch.no_grad():
        assert model(ids).logits.shape[:2] == ids.shape
    # The weights came the Hub's LFS way: a 302 from /resolve to another origin, which got no token.
    assert [r.kind for r in hub.downloads(REPO, "model.safetensors")] == ["cdn"]
    assert [r.kind for r in hub.downloads(REPO, "config.json")] == ["resolve"]

    # transformers by repo id, through the patched constants (its cache: HF_HOME/hub under tmp_path).
    hub.clear_log()
    again = AutoModelForCausalLM.from_pretrained(REPO)
    assert again.config.n_layer == model.config.n_layer
    assert AutoTokenizer.from_pretrained(REPO).vocab_size == tokenizer.vocab_size
    assert hub.downloads(REPO, "model.safetensors")
    assert not hub.unhandled()


def test_a_pinned_commit_gets_that_revisions_files(hub: HubServer, tmp_path: Path):
    old = {"config.json": b'{"version": 1}', "old.txt": b"old"}
    new = {"config.json": b'{"version": 2}', "new.txt": b"new"}
    head = hub.add_repo(REPO, new, extra_revisions={OLD: old, "v1": old})

    pinned = Path(snapshot_download(REPO, revision=OLD, cache_dir=tmp_path / "cache"))
    latest = Path(snapshot_download(REPO, cache_dir=tmp_path / "cache"))
    assert (pinned.name, dict(iter_files(pinned))) == (OLD, old)
    assert (latest.name, dict(iter_files(latest))) == (head, new)
    # A pinned snapshot lists the tree of that commit without asking what the commit is (no model_info call).
    assert [(r.kind, r.revision) for r in hub.log(method="GET") if r.kind != "resolve"] == [("tree", OLD), ("info", "main"), ("tree", head)]
    assert Path(hf_hub_download(REPO, "config.json", revision=OLD, cache_dir=tmp_path / "other")).read_bytes() == old["config.json"]
    assert HfApi().model_info(REPO, revision=OLD).sha == OLD
    assert HfApi().model_info(REPO, revision="v1").sha == hub.sha(REPO, "v1") != head
    assert HfApi().model_info(REPO, revision=head[:7]).sha == head

    for call in (
        lambda: HfApi().model_info(REPO, revision="nope"),
        lambda: hf_hub_download(REPO, "config.json", revision="nope", cache_dir=tmp_path / "cache"),
        lambda: snapshot_download(REPO, revision="nope", cache_dir=tmp_path / "cache"),
    ):
        with pytest.raises(RevisionNotFoundError):
            call()
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "old.txt", cache_dir=tmp_path / "cache")


def test_a_gated_repo_needs_a_token(hub: HubServer, tmp_path: Path):
    files = {"config.json": b"{}", "weights.bin": b"\x00" * 1000}
    hub.add_repo(REPO, files, gated=True)

    assert HfApi().model_info(REPO).gated == "manual"  # metadata stays public, as on the Hub
    with pytest.raises(GatedRepoError):
        hf_hub_download(REPO, "config.json", cache_dir=tmp_path / "cache")
    with pytest.raises(GatedRepoError):
        snapshot_download(REPO, cache_dir=tmp_path / "cache")
    assert {r.status for r in hub.log(kind="resolve")} == {401}

    hub.clear_log()
    path = Path(snapshot_download(REPO, cache_dir=tmp_path / "cache", token="hf_test_token"))
    assert dict(iter_files(path)) == files
    assert all(r.authorized for r in hub.log(kind="resolve"))
    assert [r.authorized for r in hub.log(kind="cdn")] == [False]  # huggingface_hub keeps the token on the Hub

    hub.add_repo(REPO, files, gated="auto", tokens={"hf_granted"})
    with pytest.raises(GatedRepoError, match="403"):
        hf_hub_download(REPO, "config.json", cache_dir=tmp_path / "fresh", token="hf_not_granted")
    assert hf_hub_download(REPO, "config.json", cache_dir=tmp_path / "fresh", token="hf_granted")


def test_an_unknown_repo_is_not_found(hub: HubServer, tmp_path: Path):
    for call in (
        lambda: HfApi().model_info("nobody/nothing"),
        lambda: hf_hub_download("nobody/nothing", "config.json", cache_dir=tmp_path / "cache"),
        lambda: snapshot_download("nobody/nothing", cache_dir=tmp_path / "cache"),
    ):
        with pytest.raises(RepositoryNotFoundError):
            call()


@pytest.mark.parametrize("lfs_redirect", [True, False], ids=["via-cdn", "from-resolve"])
def test_a_dropped_download_resumes_with_a_range_request(
    hub: HubServer, tiny_files: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lfs_redirect: bool
):
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)
    monkeypatch.setattr(file_download, "time", types.SimpleNamespace(sleep=lambda seconds: None))  # its 1 s pause per retry
    hub.lfs_redirect = lfs_redirect
    hub.add_repo(REPO, tiny_files)
    hub.drop_once(REPO, "model.safetensors", after_bytes=4 * CHUNK)

    path = hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path / "cache")

    assert Path(path).read_bytes() == tiny_files["model.safetensors"]
    first, second = hub.downloads(REPO, "model.safetensors")
    assert (first.status, first.range, first.dropped, first.body_bytes) == (200, None, True, 4 * CHUNK)
    assert (second.status, second.range_start, second.dropped) == (206, 4 * CHUNK, False)
    assert second.body_bytes == len(tiny_files["model.safetensors"]) - 4 * CHUNK
    assert {r.kind for r in (first, second)} == {"cdn" if lfs_redirect else "resolve"}


def test_a_failed_download_starts_over_on_the_next_call(
    hub: HubServer, tiny_files: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """huggingface_hub keeps no partial file between calls: whatever one call got, the next fetches from byte 0."""
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", CHUNK)
    monkeypatch.setattr(file_download, "time", types.SimpleNamespace(sleep=lambda seconds: None))
    hub.add_repo(REPO, tiny_files)
    hub.drop(REPO, "model.safetensors", after_bytes=0, times=6)  # the first try and all 5 retries

    with pytest.raises(httpx2.RemoteProtocolError):
        hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path / "cache")
    assert len(hub.downloads(REPO, "model.safetensors")) == 6
    assert not list((tmp_path / "cache").rglob("*.incomplete"))

    hub.clear_log()
    path = hf_hub_download(REPO, "model.safetensors", cache_dir=tmp_path / "cache")
    assert Path(path).read_bytes() == tiny_files["model.safetensors"]
    assert [(r.range, r.dropped) for r in hub.downloads(REPO, "model.safetensors")] == [(None, False)]


def test_a_subprocess_reaches_it_through_its_environment(tmp_path: Path):
    with HubServer() as server:
        server.add_repo(REPO, {"config.json": b'{"model_type": "gpt2"}'})
        script = f"from huggingface_hub import hf_hub_download; print(open(hf_hub_download({REPO!r}, 'config.json')).read())"
        done = subprocess.run(
            [sys.executable, "-c", script], env=hub_env(server, tmp_path / "home"), capture_output=True, text=True, timeout=60
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '{"model_type": "gpt2"}'
    assert list((tmp_path / "home" / "hub").glob("models--doppel-test--tiny-gpt2"))
