"""Pulling a base model from the Hugging Face Hub into the store.

`huggingface_hub` does the talking, so `HF_TOKEN` (gated models), `HF_ENDPOINT` (mirrors) and
`HF_HUB_OFFLINE` mean what they mean everywhere. A pull reads the model's info at the asked
revision (the commit it resolves to is pinned for every file), refuses an architecture Doppel
does not run before downloading anything, downloads only what loading needs (config, safetensors
weights, tokenizer files) into a staging folder under the cache, with byte progress, and uploads
it to `base-models/<name>/`, `config.json` and then `base.json` last. Interrupted downloads are
resumed: a dropped connection is retried from where it stopped (within a call), and a pull run
again skips the files the staging folder already holds whole. Nothing is stored before every
file is downloaded, and a failed upload removes what it wrote.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from doppel.bases import BASES, BaseManifest, kept, prefix
from doppel.errors import AlreadyExists, DoppelError, FailedPrecondition, NotFound, Unavailable
from doppel.layout import validate_name
from doppel.store.base import Store

from .registry import BY_HUB_ID, check_architecture

DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


@dataclass(frozen=True)
class PullProgress:
    message: str
    done_bytes: int = 0
    total_bytes: int = 0


def default_name(hub_id: str) -> str:
    """The store name of a hub model: its registry name, else its repository name, lowercased."""
    entry = BY_HUB_ID.get(hub_id.lower())
    return entry.name if entry else validate_name(hub_id.rsplit("/", 1)[-1].lower(), "base model name")


def _hub_error(e: Exception, hub_id: str, revision: str | None) -> DoppelError:
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = constants.ENDPOINT
    if isinstance(e, GatedRepoError):
        return FailedPrecondition(f"{hub_id!r} is gated: accept its license at {where}/{hub_id} with your account, "
                                  "then give the trainer a token of that account (HF_TOKEN)")
    if isinstance(e, RevisionNotFoundError):
        return NotFound(f"{hub_id!r} has no revision {revision!r} on {where}")
    if isinstance(e, RepositoryNotFoundError):
        return NotFound(f"no model {hub_id!r} on {where} (or it is private: set HF_TOKEN)")
    if isinstance(e, OfflineModeIsEnabled) or constants.HF_HUB_OFFLINE:
        return FailedPrecondition(f"cannot pull {hub_id!r}: the hub is switched off here (HF_HUB_OFFLINE=1); "
                                  "allow pulls (HF_HUB_OFFLINE=0) or add the model from a folder with `doppel bases add`")
    cause = e.__cause__ or e.__context__ if isinstance(e, LocalEntryNotFoundError) else None  # what the download met
    why = f"{type(cause or e).__name__}: {' '.join(str(cause or e).split())}"
    return Unavailable(f"cannot reach the hub at {where} for {hub_id!r}: {why}")


def _files(siblings: list[Any]) -> tuple[list[str], int]:
    """The files to download (safetensors weights and what loading needs) and their total size."""
    names = {s.rfilename: int(s.size or 0) for s in siblings}
    chosen = sorted(n for n in names if kept(n))
    check_files(chosen)
    return chosen, sum(names[n] for n in chosen)


def check_files(names: list[str]) -> None:
    """FailedPrecondition unless `names` hold what loading a base needs: config, safetensors weights, a tokenizer."""
    if not any(n.endswith(".safetensors") for n in names):
        raise FailedPrecondition("the model has no safetensors weights (Doppel reads no pickled .bin weights: "
                                 "load it and save it again with save_pretrained, which writes safetensors)")
    if "config.json" not in names:
        raise FailedPrecondition("the model has no config.json")
    if not {"tokenizer.json", "tokenizer.model", "vocab.json"} & set(names):
        raise FailedPrecondition("the model has no tokenizer (tokenizer.json, tokenizer.model or vocab.json): "
                                 "save the tokenizer with save_pretrained beside the model")


def _safetensors_figures(folder: Path) -> tuple[int, str]:
    """(parameters, dtype) from the safetensors headers, without loading any weight."""
    count, dtypes = 0, set()
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(size))
        for key, t in header.items():
            if key != "__metadata__":
                n = 1
                for d in t["shape"]:
                    n *= d
                count += n
                dtypes.add(t["dtype"])
    dtype = DTYPES.get(dtypes.pop(), "mixed") if len(dtypes) == 1 else "mixed"
    return count, dtype


def _counting(report: Callable[[int], None]) -> type:
    """A tqdm stand-in for `hf_hub_download` that passes the bytes it is told about to `report`."""

    class Bytes(_Quiet):
        def __init__(self, *args: Any, **kwargs: Any):
            if initial := int(kwargs.get("initial", 0) or 0):  # bytes already there (a resumed file)
                report(initial)

        def update(self, n: int | float | None = 1) -> None:
            report(int(n or 0))

    return Bytes


class _Quiet:
    """What `hf_hub_download` calls on its progress bar, doing nothing."""

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: int | float | None = 1) -> None:
        pass

    def update_transfer(self, n: int | float | None = 1) -> None:
        pass

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        pass

    set_transfer_postfix_str = set_postfix_str

    def close(self) -> None:
        pass


class Cancelled(DoppelError):
    """The pull was stopped by its caller; what was downloaded stays staged for the next pull."""


def pull(store: Store, hub_id: str, *, cache_dir: Path, revision: str | None = None, name: str | None = None,
         token: str | None = None, progress: Callable[[PullProgress], None] = lambda p: None,
         should_stop: Callable[[], bool] = lambda: False) -> BaseManifest:
    """Pull `hub_id` at `revision` (default: main) into `base-models/<name>/`; its manifest.

    A base of that name pulled from the same commit is returned as it is; another of that name is
    AlreadyExists (choose another name, or delete it). `should_stop` is asked as bytes arrive and
    before anything is stored: true stops the pull with Cancelled, storing nothing.
    """
    from huggingface_hub import HfApi, hf_hub_download

    name = validate_name(name or default_name(hub_id), "base model name")
    progress(PullProgress(f"reading {hub_id} on the hub"))
    try:
        info = HfApi().model_info(hub_id, revision=revision, files_metadata=True, token=token)
    except Exception as e:
        raise _hub_error(e, hub_id, revision) from e
    sha = str(info.sha)
    existing = BASES.find(store, name)
    if existing is not None:
        if existing.hub_id == hub_id and existing.revision == sha:
            progress(PullProgress(f"{name} is already in the store (from {hub_id} at {sha[:12]})"))
            return existing
        raise AlreadyExists(f"base model {name!r} already exists (from {existing.source}): pull under another name "
                            "(--name), or delete it first")
    config = dict(info.config or {})
    check_architecture(config)  # before any download
    try:
        files, total = _files(list(info.siblings or []))
    except FailedPrecondition as e:
        raise FailedPrecondition(f"cannot pull {hub_id!r}: {e}") from None
    staging = Path(cache_dir) / "hub" / f"{name}@{sha}"
    done = 0

    def stop_if_asked() -> None:
        if should_stop():
            raise Cancelled(f"the pull of {hub_id} was cancelled at {done:,} of {total:,} bytes; "
                            "pulling it again downloads the rest")

    def bytes_in(n: int) -> None:
        nonlocal done
        done += n
        stop_if_asked()
        progress(PullProgress(f"downloading {hub_id}", done, total))

    bar = _counting(bytes_in)
    try:
        for filename in files:
            hf_hub_download(hub_id, filename, revision=sha, local_dir=staging, token=token, tqdm_class=bar)
    except Cancelled:
        raise
    except Exception as e:
        raise _hub_error(e, hub_id, revision) from e
    stop_if_asked()
    manifest = describe(staging, files, id=name, source=f"hub:{hub_id}@{sha}", hub_id=hub_id, revision=sha,
                        license=_license(info))
    progress(PullProgress(f"storing {name}", total, total))
    store_folder(store, staging, manifest)
    shutil.rmtree(staging, ignore_errors=True)
    progress(PullProgress(f"pulled {hub_id} at {sha[:12]} as {name}", total, total))
    return manifest


def _license(info: Any) -> str:
    card = getattr(info, "card_data", None) or getattr(info, "cardData", None)
    found = card.get("license") if card is not None and hasattr(card, "get") else None
    return str(found or "")


def describe(folder: Path, files: list[str], **fields: Any) -> BaseManifest:
    """The manifest of the base whose `files` are in `folder`: what its config, weights and tokenizer say."""
    config = json.loads((folder / "config.json").read_text())
    parameters, dtype = _safetensors_figures(folder)
    tokenizer = folder / "tokenizer_config.json"
    template = bool(json.loads(tokenizer.read_text()).get("chat_template")) if tokenizer.is_file() else False
    return BaseManifest(architecture=check_architecture(config), parameters=parameters, dtype=dtype,
                        chat_template=template or (folder / "chat_template.jinja").is_file(),
                        size_bytes=sum((folder / n).stat().st_size for n in files), files=files, **fields)


def store_folder(store: Store, folder: Path, manifest: BaseManifest) -> None:
    """Upload a base's files, `config.json` after the weights and `base.json` last; on failure, remove them."""
    where = prefix(manifest.id)
    names = sorted(manifest.files, key=lambda n: (n == "config.json", n))
    try:
        for n in names:
            store.put_file(where + n, folder / n)
        BASES.put(store, manifest)
    except BaseException:
        store.delete_prefix(where)
        raise
