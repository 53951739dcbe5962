"""The model cache of the inference service: persona models loaded on first use, evicted LRU under a budget.

A request names a persona model by id; the cache turns it into something that generates: an
`Engine` (engine.py) and, for a LoRA model, the PEFT adapter name its rows use. Files are
downloaded into `cache_dir` once (`models/<id>/`; bases in `store/<prefix>`, as the trainer
caches them), and again when the store's listing of them changes. Why this shape:

* **One base, many personas.** LoRA models on the same base (`base_store_prefix`) share one copy
  of its weights and one Engine, so rows of different personas share forward passes. The first
  adapter wraps the base in a `PeftModel` (the engine is made around that); each later one is
  `load_adapter`-ed into it between decoding steps: milliseconds, no base reload. A full model
  gets an Engine of its own.
* **A memory budget, least recently used out first.** `bytes` counts each base (parameters +
  buffers), each adapter and each full model. Before a load the cache estimates what it adds from
  the safetensors headers (reading them also catches a truncated file before any model is touched)
  and evicts until that fits; after the load it measures and evicts again if the estimate was
  short. An evicted adapter is deleted from its base; a base (and its engine) goes with its last
  adapter; a full model's engine is stopped. The budget is a target, never a reason to refuse: a
  model bigger than the whole budget still loads (everything idle is evicted first), and busy
  models are not evicted, so `bytes` exceeds the budget while either is the case.
* **Busy models stay.** A model is busy while a caller holds it (`hold`/`release`)
  and, for a full model, while its engine has work. The engine cannot tell which adapters its rows
  use, so an adapter fetched only with `get` can be evicted under a running job, and the engine's
  next step then fails every job on that base: whoever submits jobs holds the model meanwhile.
* **Loads are serial.** One load at a time (one lock); a `get` of a loaded model never waits for
  it. So concurrent first requests for a model load it once, and the budget never races.
* **Failures leave nothing behind.** A model missing from the store raises NotFound; one whose
  files cannot be loaded raises FailedPrecondition with the reason (Overloaded when the device is
  out of memory). A half-built base, engine or adapter is removed and nothing of the failure is
  remembered: the next `get` tries again, and loads once the store is repaired.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from doppel.errors import DoppelError, FailedPrecondition, Overloaded
from doppel.model import MODELS, ModelManifest, base_folder, model_folder
from doppel.store.base import Store

from .engine import Engine
from .protocol import EngineStats

log = logging.getLogger(__name__)


@dataclass
class Served:
    """A loaded model: the engine that runs it and, for a LoRA model, its adapter's name there."""

    model_id: str
    manifest: ModelManifest
    engine: Engine  # its base's (shared by every adapter on it), or its own for a full model
    adapter: str | None  # the PEFT adapter name in engine.model (the model id); None for a full model
    tokenizer: Any
    memory_bytes: int  # the adapter's parameters, or the full model's parameters and buffers
    last_used: datetime | None = None


@dataclass
class _Base:
    """A base model shared by the adapters on it, and its engine."""

    key: str
    engine: Engine
    memory_bytes: int
    adapters: set[str] = field(default_factory=set)


class ModelCache:
    """Persona models from `store`, loaded on first use, the least recently used evicted past `budget_bytes`."""

    def __init__(self, store: Store, *, cache_dir: Path, budget_bytes: int, device: torch.device | None = None,
                 max_batch: int = 64, queue_capacity: int = 256, dtype: torch.dtype | None = None):
        self.store, self.cache_dir, self._budget = store, Path(cache_dir), budget_bytes
        self.device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.max_batch, self.queue_capacity = max_batch, queue_capacity
        self.loads = 0  # loads completed, for tests and metrics
        self._retired = EngineStats()  # the counters of engines stopped since
        self._served: OrderedDict[str, Served] = OrderedDict()  # least recently used first
        self._tokenizers: dict[str, Any] = {}  # digest of the tokenizer files -> the loaded tokenizer
        self._bases: dict[str, _Base] = {}
        self._pins: Counter[str] = Counter()
        self._lock = threading.Lock()  # the state above
        self._load_lock = threading.Lock()  # one load (or unload) at a time

    # --- the outside ---------------------------------------------------------------------

    @property
    def budget_bytes(self) -> int:
        return self._budget

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes()

    def get(self, model_id: str) -> Served:
        """The model, loaded on first use; marks it used."""
        return self.load(model_id)[0]

    def load(self, model_id: str) -> tuple[Served, float]:
        """The model and the seconds spent loading it (0.0 if it was loaded); marks it used."""
        return self._acquire(model_id, pin=False)

    def hold(self, model_id: str) -> Served:
        """`get`, and keep the model from eviction until as many `release`s: hold it while its jobs run."""
        return self._acquire(model_id, pin=True)[0]

    def hold_if_loaded(self, model_id: str) -> Served | None:
        """`hold` without waiting: the model if it is loaded (held), else None."""
        return self._touch(model_id, pin=True)

    def release(self, model_id: str) -> None:
        with self._lock:
            self._pins[model_id] -= 1
            if self._pins[model_id] <= 0:
                del self._pins[model_id]

    def unload(self, model_id: str) -> bool:
        """Unload the model; whether it was loaded. FailedPrecondition while it is serving."""
        with self._load_lock:
            with self._lock:
                served = self._served.get(model_id)
                if served is not None and not self._idle(served):
                    raise FailedPrecondition(f"model {model_id!r} is serving requests; unload it when they finish")
            if served is None:
                return False
            self._evict(served)
            return True

    def stats(self) -> EngineStats:
        """Every engine's counters added up, those of engines already stopped included (running
        and queued are those of the loaded engines), and the cache's own figures."""
        with self._lock:
            engines = {id(s.engine): s.engine for s in self._served.values()} | {id(b.engine): b.engine for b in self._bases.values()}
            total = replace(self._retired, loaded_models=len(self._served), cache_bytes=self._bytes(),
                            cache_budget_bytes=self._budget, queue_capacity=self.queue_capacity)
        return sum((e.stats for e in engines.values()), start=total)

    def _stop(self, engine: Engine) -> None:
        """Stop an engine, keeping its counters."""
        engine.stop()
        with self._lock:
            self._retired += replace(engine.stats, running=0, queued=0)

    def loaded(self) -> list[Served]:
        """The loaded models, most recently used first."""
        with self._lock:
            return list(reversed(self._served.values()))

    def listing(self) -> list[tuple[ModelManifest, Served | None]]:
        """Every model: the loaded ones first (most recently used first), then the store's, newest first."""
        loaded = self.loaded()
        ids = {s.model_id for s in loaded}
        rest = sorted((m for m in MODELS.records(self.store) if m.id not in ids),
                      key=lambda m: (m.created_at, m.id), reverse=True)
        return [(s.manifest, s) for s in loaded] + [(m, None) for m in rest]

    def close(self) -> None:
        """Stop every engine and forget every model."""
        with self._load_lock:
            with self._lock:
                engines = {id(e): e for e in [s.engine for s in self._served.values()]
                           + [b.engine for b in self._bases.values()]}
                self._served.clear()
                self._bases.clear()
                self._tokenizers.clear()
                self._pins.clear()
            for engine in engines.values():
                engine.stop()

    # --- loading -------------------------------------------------------------------------

    def _acquire(self, model_id: str, pin: bool) -> tuple[Served, float]:
        if (served := self._touch(model_id, pin)) is not None:
            return served, 0.0
        with self._load_lock:
            if (served := self._touch(model_id, pin)) is not None:
                return served, 0.0  # another thread loaded it while this one waited
            start = time.perf_counter()
            served = self._touch(model_id, pin, self._load(model_id))
            assert served is not None
            self.loads += 1
            keep = {model_id, _base_key(served.manifest)} if served.adapter else {model_id}
            self._make_room(0, keep)  # the estimate may have been short
            seconds = time.perf_counter() - start
        log.info("loaded model %s in %.2fs (%d bytes; cache %d of %d)", model_id, seconds, served.memory_bytes,
                 self.bytes, self._budget)
        return served, seconds

    def _touch(self, model_id: str, pin: bool, new: Served | None = None) -> Served | None:
        """The model if loaded (or `new`, now recorded), marked most recently used and pinned if asked."""
        with self._lock:
            if new is not None:
                self._served[model_id] = new
            served = self._served.get(model_id)
            if served is not None:
                self._served.move_to_end(model_id)
                served.last_used = datetime.now(UTC)
                if pin:
                    self._pins[model_id] += 1
            return served

    def _load(self, model_id: str) -> Served:
        try:
            manifest = MODELS.get(self.store, model_id)  # NotFound naming the id
            folder = model_folder(self.store, manifest, self.cache_dir)
            load = self._load_adapter if manifest.is_adapter else self._load_full
            return load(manifest, folder)
        except DoppelError:
            raise
        except torch.OutOfMemoryError as e:
            raise Overloaded(f"model {model_id!r} does not fit in the device's memory now: {e}") from e
        except Exception as e:
            reason = " ".join(str(e).split())  # one line, whatever the library wrote
            raise FailedPrecondition(f"model {model_id!r} could not be loaded: {type(e).__name__}: {reason}") from e

    def _load_adapter(self, manifest: ModelManifest, folder: Path) -> Served:
        from peft import PeftModel
        name, key = manifest.id, _base_key(manifest)
        tokenizer = self._tokenizer(folder)
        with self._lock:
            base = self._bases.get(key)
        weights = None if base else base_folder(self.store, manifest, folder, self.cache_dir)
        need = _estimate(folder, torch.float32)  # PEFT keeps adapters in fp32 even on a bf16 base
        self._make_room(need + (_estimate(weights, self.dtype) if weights else 0), {key})
        try:
            if weights is not None:
                model = self._read(weights)
                base_bytes = _size(model)
                peft = PeftModel.from_pretrained(model, folder, adapter_name=name).eval()
                engine = self._engine(peft, self._tokenizer(weights), key)
                base = _Base(key, engine, base_bytes)
                with self._lock:
                    self._bases[key] = base
            else:
                assert base is not None
                base.engine.with_model(lambda m: _add_adapter(m, folder, name))
            size = base.engine.with_model(lambda m: _adapter_size(m, name))
        except BaseException:
            if base is not None:  # take out the half-loaded adapter, or the base it alone was on
                if base.adapters:
                    base.engine.with_model(lambda m: m.delete_adapter(name) if name in m.peft_config else None)
                else:
                    with self._lock:
                        self._bases.pop(key, None)
                    self._stop(base.engine)
            raise
        with self._lock:
            base.adapters.add(name)
        return Served(name, manifest, base.engine, name, tokenizer, size)

    def _load_full(self, manifest: ModelManifest, folder: Path) -> Served:
        tokenizer = self._tokenizer(folder)
        self._make_room(_estimate(folder, self.dtype), ())
        model = self._read(folder)
        return Served(manifest.id, manifest, self._engine(model, tokenizer, manifest.id), None, tokenizer, _size(model))

    def _tokenizer(self, folder: Path) -> Any:
        """The folder's tokenizer: one object for all folders with the same tokenizer files (a
        persona adapter carries its base's), so that loading an adapter does not parse it again
        (a third of an adapter load on SmolLM2)."""
        from transformers import AutoTokenizer

        digest = hashlib.sha256()
        for path in sorted(p for p in Path(folder).iterdir() if p.is_file() and _is_tokenizer_file(p.name)):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        key = digest.hexdigest()
        with self._lock:
            found = self._tokenizers.get(key)
        if found is None:
            found = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            with self._lock:
                found = self._tokenizers.setdefault(key, found)
        return found

    def _engine(self, model: Any, tokenizer: Any, name: str) -> Engine:
        return Engine(model, tokenizer, max_batch=self.max_batch, queue_capacity=self.queue_capacity, name=name)

    def _read(self, folder: Path) -> Any:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=self.dtype)
        return model.to(self.device).eval()  # type: ignore[arg-type]  # stub: @wraps(Module.to) loses the bound self

    # --- eviction ------------------------------------------------------------------------

    def _bytes(self) -> int:
        return sum(b.memory_bytes for b in self._bases.values()) + sum(s.memory_bytes for s in self._served.values())

    def _idle(self, served: Served) -> bool:
        return not self._pins[served.model_id] and (served.adapter is not None or served.engine.idle())

    def _make_room(self, need: int, keep: Collection[str]) -> None:
        """Evict idle models, least recently used first, till `need` more bytes fit (or nothing is left to evict).

        `keep` names models and bases to keep: a base in it stays even when its last adapter goes.
        """
        while True:
            with self._lock:
                if self._bytes() + need <= self._budget:
                    return
                victim = next((s for s in self._served.values() if s.model_id not in keep and self._idle(s)), None)
                if victim is None:
                    log.warning("model cache over budget: %d + %d bytes of %d, and nothing idle to evict",
                                self._bytes(), need, self._budget)
                    return
            self._evict(victim, keep)

    def _evict(self, served: Served, keep: Collection[str] = ()) -> None:
        """Forget `served` and free what it holds (the load lock held)."""
        with self._lock:
            self._served.pop(served.model_id, None)
            stop = True
            if served.adapter is not None:
                key = _base_key(served.manifest)
                base = self._bases[key]
                base.adapters.discard(served.model_id)
                stop = not base.adapters and key not in keep
                if stop:
                    del self._bases[key]
            used = {id(s.tokenizer) for s in self._served.values()} | {id(b.engine.tokenizer) for b in self._bases.values()}
            self._tokenizers = {k: t for k, t in self._tokenizers.items() if id(t) in used}
        if stop:
            self._stop(served.engine)
        else:
            served.engine.with_model(lambda m: m.delete_adapter(served.model_id))
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        log.info("unloaded model %s", served.model_id)


def _is_tokenizer_file(name: str) -> bool:
    return name.startswith(("tokenizer", "chat_template")) or name in (
        "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt")


def _base_key(manifest: ModelManifest) -> str:
    return manifest.base_store_prefix or manifest.base_source


def _add_adapter(model: Any, folder: Path, name: str) -> None:
    model.load_adapter(folder, adapter_name=name)
    if model.active_adapter not in model.peft_config:  # every adapter before it was deleted: PEFT keeps a stale name
        model.set_adapter(name)
    model.eval()


def _size(model: Any) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def _adapter_size(model: Any, name: str) -> int:
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if f".{name}." in n)


def _estimate(folder: Path, dtype: torch.dtype) -> int:
    """Bytes of the weights in `folder`'s safetensors files once loaded as `dtype`; fails on a damaged file."""
    from safetensors import safe_open

    total = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            for key in f.keys():  # noqa: SIM118 - a safe_open handle is not a mapping
                total += math.prod(f.get_slice(key).get_shape()) * dtype.itemsize
    return total
