"""The model cache on tiny models published to a file store: shared bases, LRU under a budget, clean failures."""

from __future__ import annotations

import copy
import tempfile
import threading
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from peft import LoraConfig, get_peft_model

from doppel.errors import FailedPrecondition, NotFound
from doppel.model import ModelManifest, Recipe
from doppel.store import open_store
from doppel.store.base import Store
from doppel.tiny import tiny_model
from services.inference import cache as cache_module
from services.inference.cache import ModelCache
from services.inference.engine import BASE, Finish, Job
from services.inference.protocol import Sampling
from support.personas import publish

torch.set_num_threads(1)
TEXTS = [f"Alice: message number {i} about things\nBob: reply {i} ok" for i in range(200)]
BASE_PREFIX = "base-models/tiny-test/"
ADAPTERS = {"alice-1": 1, "alice-2": 2, "alice-3": 3}  # id: LoRA seed
BIG = 1 << 40  # a budget nothing reaches


@pytest.fixture(scope="module")
def made():
    """The tiny base, its tokenizer, LoRA adapters that differ, and a full model (built once)."""
    base, tok = tiny_model(TEXTS, seed=0, block_size=128)
    adapters = {}
    for name, seed in ADAPTERS.items():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            adapters[name] = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["c_attn"],
                                                                             init_lora_weights=False)).eval()
    full, _ = tiny_model(TEXTS, seed=7, block_size=128)
    return base.eval(), tok, adapters, full.eval()


def manifest(model_id: str, method: str, base_prefix: str | None = BASE_PREFIX) -> ModelManifest:
    return ModelManifest(
        id=model_id, name=model_id, base_model="tiny",
        base_source=f"store:{base_prefix}" if base_prefix else "registry:tiny", base_store_prefix=base_prefix,
        method=method, transcript="plain", speakers=["Alice"],
        participants=["Alice", "Bob"], dataset_id="d", run_id="r",
        recipe=Recipe(dataset_id="d", speakers=["Alice"], base_model="tiny", method=method, preset="default",
                      model_name=model_id),
    )


@pytest.fixture
def store(tmp_path: Path, made) -> Store:
    """alice-1..3 on base-models/tiny-test/, `own-base` with its base inside its folder, and `full`."""
    base, tok, adapters, full = made
    store = open_store(f"file://{tmp_path}/store")
    with tempfile.TemporaryDirectory() as tmp:
        base.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        for path in sorted(Path(tmp).iterdir()):
            store.put_file(BASE_PREFIX + path.name, path)
        for name, model in adapters.items():
            publish(store, manifest(name, "lora"), model, tok)
        publish(store, manifest("own-base", "lora", None), adapters["alice-1"], tok, base_folder=Path(tmp))
    publish(store, manifest("full", "full", None), full, tok)
    return store


@pytest.fixture
def make_cache(tmp_path: Path, store: Store):
    made = []

    def make(budget: int = BIG) -> ModelCache:
        made.append(ModelCache(store, cache_dir=tmp_path / f"cache{len(made)}", budget_bytes=budget,
                               device=torch.device("cpu"), max_batch=8))
        return made[-1]

    yield make
    for cache in made:
        cache.close()


def size(model) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def adapter_size(model) -> int:
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "lora_" in n)


def ids(cache: ModelCache) -> list[str]:
    return [s.model_id for s in cache.loaded()]


IDS = torch.tensor([[5, 6, 7, 8, 9]])


def logits(served, names: list[str]) -> torch.Tensor:
    with torch.inference_mode():
        out = served.engine.with_model(lambda m: m(input_ids=IDS.repeat(len(names), 1), adapter_names=names))
    return out.logits[:, -1]


def generate(served, prompt: str = "Alice: message") -> str:
    parts, done = [], threading.Event()

    def sink(index: int, delta: str, finish: Finish | None) -> None:
        parts.append(delta)
        if finish is not None:
            done.set()

    ids = served.tokenizer(prompt)["input_ids"]
    job = Job(ids, Sampling(temperature=0, max_new_tokens=8), sink, adapter=served.adapter)
    served.engine.submit(job)
    assert done.wait(30) and not job.error, job.error
    return "".join(parts)


def test_adapters_on_one_base_share_it_and_its_engine(make_cache, made):
    base, tok, adapters, _ = made
    cache = make_cache()
    first, t1 = cache.load("alice-1")
    second, t2 = cache.load("alice-2")
    print(f"first adapter (with its base) {t1 * 1000:.1f} ms, second adapter {t2 * 1000:.1f} ms")
    assert t2 < t1
    assert cache.load("alice-1")[1] == 0.0 and cache.loads == 2
    assert first.engine is second.engine and (first.adapter, second.adapter) == ("alice-1", "alice-2")
    assert cache.bytes == size(base) + first.memory_bytes + second.memory_bytes
    assert first.memory_bytes == second.memory_bytes == adapter_size(adapters["alice-1"]) > 0
    assert first.tokenizer("Alice: hi")["input_ids"] == tok("Alice: hi")["input_ids"]

    out = logits(first, [BASE, "alice-1", "alice-2"])
    with torch.inference_mode():
        assert torch.allclose(out[0], base(IDS).logits[0, -1], atol=1e-5)  # the shared base is untouched
        assert torch.allclose(out[1], adapters["alice-1"](input_ids=IDS).logits[0, -1], atol=1e-5)
        assert torch.allclose(out[2], adapters["alice-2"](input_ids=IDS).logits[0, -1], atol=1e-5)
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])
    assert generate(first) != generate(second)  # real jobs through the shared engine

    own = cache.get("own-base")  # its base lives in its own folder: another base, another engine
    full = cache.get("full")
    assert len({id(first.engine), id(own.engine), id(full.engine)}) == 3
    assert full.adapter is None and full.memory_bytes == size(made[3])
    assert generate(full) and generate(own) == generate(first)  # own-base is alice-1 on a copy of the same base
    assert cache.bytes == 2 * size(base) + 3 * first.memory_bytes + full.memory_bytes


def test_concurrent_first_gets_load_once(make_cache):
    cache = make_cache()
    barrier, got, errors = threading.Barrier(8), [], []

    def get() -> None:
        try:
            barrier.wait()
            got.append(cache.get("alice-1"))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=get) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(got) == 8
    assert cache.loads == 1 and all(s is got[0] for s in got) and ids(cache) == ["alice-1"]


def test_least_recently_used_goes_first_under_the_budget(make_cache, made):
    base, _, adapters, full = made
    one = adapter_size(adapters["alice-1"])
    cache = make_cache(size(base) + one + one // 2)  # the base and one adapter
    a1 = cache.get("alice-1")
    assert cache.bytes <= cache.budget_bytes
    a2 = cache.get("alice-2")
    assert ids(cache) == ["alice-2"] and cache.bytes <= cache.budget_bytes
    assert a2.engine is a1.engine  # the base stayed: only the adapter changed
    assert generate(a2)  # a base whose every adapter went serves the next one
    assert a1.engine.with_model(lambda m: sorted(m.peft_config)) == ["alice-2"]
    a1 = cache.get("alice-1")  # loaded again
    assert ids(cache) == ["alice-1"] and cache.loads == 3 and cache.bytes <= cache.budget_bytes
    with torch.inference_mode():
        assert torch.allclose(logits(a1, ["alice-1"])[0], adapters["alice-1"](input_ids=IDS).logits[0, -1], atol=1e-5)

    cache = make_cache(size(base) + 2 * one + one // 2)  # the base and two adapters
    cache.get("alice-1"), cache.get("alice-2"), cache.get("alice-1")
    cache.get("alice-3")  # alice-2 is the least recently used, not alice-1 (the first loaded)
    assert ids(cache) == ["alice-3", "alice-1"] and cache.bytes <= cache.budget_bytes
    engine = cache.get("alice-1").engine
    served = cache.get("full")  # does not fit beside them: every adapter goes, and the base with them
    assert ids(cache) == ["full"] and cache.bytes == size(full) <= cache.budget_bytes
    assert not engine._thread.is_alive()  # the base's engine stopped
    assert generate(served)


def test_the_budget_holds_when_the_estimate_falls_short(make_cache, made, monkeypatch):
    base, _, adapters, _ = made
    monkeypatch.setattr(cache_module, "_estimate", lambda folder, dtype: 0)  # evict only after measuring
    cache = make_cache(size(base) + adapter_size(adapters["alice-1"]) * 3 // 2)
    cache.get("alice-1"), cache.get("alice-2")
    assert ids(cache) == ["alice-2"] and cache.bytes <= cache.budget_bytes
    cache.get("full")
    assert ids(cache) == ["full"] and cache.bytes <= cache.budget_bytes


def test_a_model_bigger_than_the_budget_still_loads_alone(make_cache):
    cache = make_cache(1)
    cache.get("alice-1")
    assert ids(cache) == ["alice-1"] and cache.bytes > cache.budget_bytes
    served = cache.get("full")
    assert ids(cache) == ["full"] and cache.bytes == served.memory_bytes
    assert generate(served)


def test_a_model_being_served_is_not_evicted_or_unloaded(make_cache, made):
    base, _, adapters, _ = made
    cache = make_cache(size(base) + adapter_size(adapters["alice-1"]) * 3 // 2)
    held = cache.hold("alice-1")
    cache.get("alice-2")
    assert sorted(ids(cache)) == ["alice-1", "alice-2"] and cache.bytes > cache.budget_bytes
    with pytest.raises(FailedPrecondition, match="alice-1"):
        cache.unload("alice-1")
    assert generate(held)
    cache.release("alice-1")
    cache.get("alice-3")  # now alice-1 can go too
    assert ids(cache) == ["alice-3"] and cache.bytes <= cache.budget_bytes

    full = cache.hold("full")
    cache.get("alice-1")
    assert "full" in ids(cache) and generate(full)
    cache.release("full")
    cache.get("alice-2")
    assert ids(cache) == ["alice-2"]


def test_a_full_model_with_work_in_flight_is_not_evicted_or_unloaded(make_cache, made):
    base, _, adapters, _ = made
    cache = make_cache(size(base) + adapter_size(adapters["alice-1"]) * 3 // 2)
    full = cache.get("full")
    entered, go, done = threading.Event(), threading.Event(), threading.Event()

    def sink(index: int, delta: str, finish: Finish | None) -> None:  # holds the engine mid-step
        entered.set()
        go.wait(30)
        if finish is not None:
            done.set()

    full.engine.submit(Job(full.tokenizer("Alice: hi")["input_ids"], Sampling(temperature=0, max_new_tokens=4), sink))
    assert entered.wait(30) and not full.engine.idle()
    cache.get("alice-1")  # does not fit beside it, but its job is running
    assert sorted(ids(cache)) == ["alice-1", "full"]
    with pytest.raises(FailedPrecondition, match="full"):
        cache.unload("full")
    go.set()
    assert done.wait(30)
    for _ in range(100):
        if full.engine.idle():
            break
        time.sleep(0.01)
    cache.get("alice-1"), cache.get("alice-2")  # now it is the least recently used and idle
    assert ids(cache) == ["alice-2"] and cache.bytes <= cache.budget_bytes


def test_a_missing_model_is_not_found_and_a_damaged_manifest_says_so(make_cache, store):
    cache = make_cache()
    with pytest.raises(NotFound, match="no-such-model"):
        cache.get("no-such-model")
    store.put("models/alice-3/manifest.json", b"{not json")
    with pytest.raises(FailedPrecondition, match="alice-3"):
        cache.get("alice-3")
    assert ids(cache) == [] and cache.bytes == 0 and cache.loads == 0


def test_a_damaged_model_fails_cleanly_and_loads_once_repaired(make_cache, store, made):
    cache = make_cache()
    good = cache.get("alice-1")
    key = "models/alice-2/adapter_model.safetensors"
    data = store.get(key)
    store.put(key, data[: len(data) // 2])
    for _ in range(2):  # a failure is not remembered: each get tries again
        with pytest.raises(FailedPrecondition, match="alice-2"):
            cache.get("alice-2")
    assert ids(cache) == ["alice-1"] and cache.loads == 1
    assert generate(good) and cache.get("alice-3").engine is good.engine
    store.put(key, data)  # repaired
    assert cache.get("alice-2").engine is good.engine and cache.loads == 3

    weights = "models/full/model.safetensors"
    whole = store.get(weights)
    store.put(weights, whole[:1000])
    with pytest.raises(FailedPrecondition, match="full"):
        cache.get("full")
    store.put(weights, whole)
    assert generate(cache.get("full")) and cache.get("full").memory_bytes == size(made[3])


def misshapen(data: bytes) -> bytes:
    """A well-formed safetensors file whose first tensor has a row too many: PEFT fails after adding the adapter."""
    tensors = safetensors.torch.load(data)
    first = sorted(tensors)[0]
    tensors[first] = torch.zeros(tensors[first].shape[0] + 1, *tensors[first].shape[1:])
    return safetensors.torch.save(tensors)


def test_an_adapter_that_fails_inside_peft_leaves_no_trace(make_cache, store, made):
    base, _, adapters, _ = made
    key = "models/alice-2/adapter_model.safetensors"
    data = store.get(key)
    store.put(key, misshapen(data))
    fresh = make_cache()  # the first adapter on a base: the base goes with it
    with pytest.raises(FailedPrecondition, match="alice-2.*size mismatch"):
        fresh.get("alice-2")
    assert fresh.bytes == 0 and fresh.loaded() == []

    cache = make_cache()  # a base serving others: they keep working, no half-loaded adapter stays
    good = cache.get("alice-1")
    with pytest.raises(FailedPrecondition, match="alice-2"):
        cache.get("alice-2")
    assert good.engine.with_model(lambda m: sorted(m.peft_config)) == ["alice-1"]
    assert generate(good) and cache.bytes == size(base) + good.memory_bytes

    tight = make_cache(size(base) + adapter_size(adapters["alice-1"]) * 3 // 2)
    engine = tight.get("alice-1").engine
    with pytest.raises(FailedPrecondition, match="alice-2"):
        tight.get("alice-2")  # alice-1 made room for it, kept its base, then the base had nothing on it
    assert tight.bytes == 0 and tight.loaded() == [] and not engine._thread.is_alive()
    store.put(key, data)
    assert generate(tight.get("alice-2")) and tight.bytes <= tight.budget_bytes


def test_unload_and_listing(make_cache, store):
    cache = make_cache()
    cache.get("alice-2"), cache.get("full"), cache.get("alice-1")
    listing = cache.listing()
    assert [m.id for m, _ in listing[:3]] == ["alice-1", "full", "alice-2"]
    assert all(s is not None and s.model_id == m.id for m, s in listing[:3])
    assert sorted(m.id for m, s in listing[3:] if s is None) == ["alice-3", "own-base"]
    assert cache.unload("alice-2") is True and cache.unload("alice-2") is False
    engine = cache.get("alice-1").engine
    assert cache.unload("alice-1") is True  # its base's last adapter: the base and engine go
    assert not engine._thread.is_alive() and ids(cache) == ["full"]
    assert cache.bytes == cache.get("full").memory_bytes
    assert [s for _, s in cache.listing()][0].model_id == "full" and cache.get("full").last_used is not None
    cache.close()
    assert cache.loaded() == [] and cache.bytes == 0


def test_models_with_the_same_tokenizer_files_share_one_tokenizer(make_cache, store):
    other, other_tok = tiny_model([t.upper() for t in TEXTS], seed=3, block_size=128)
    publish(store, manifest("other", "full", None), other, other_tok)
    cache = make_cache()
    one, two = cache.get("alice-1"), cache.get("alice-2")
    assert one.tokenizer is two.tokenizer, "the second adapter did not parse the tokenizer again"
    assert cache.get("full").tokenizer is one.tokenizer, "published with the same tokenizer"
    assert cache.get("other").tokenizer is not one.tokenizer, "a tokenizer of its own"
    assert one.engine.tokenizer is one.tokenizer  # the base's folder holds the same files
    for model_id in ("alice-1", "alice-2"):
        cache.unload(model_id)
    assert cache.get("alice-3").tokenizer is one.tokenizer, "still used by the full model"
    for model_id in ("alice-3", "full"):
        cache.unload(model_id)
    assert cache.get("alice-1").tokenizer is not one.tokenizer, "forgotten with the last model that used it"
