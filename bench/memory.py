"""Training memory: the registry's estimate against the measured peak of Doppel's own loop (CPU).

    python bench/memory.py                                    # tiny and smollm2-135m, lora, qlora and full, 8x256 and 8x512
    python bench/memory.py --models tiny --methods lora --block-sizes 128   # seconds
    python bench/memory.py --models smollm2-135m --saved      # also count what autograd saves for backward

Each case (model x method x block size, batch `--batch-size`) runs in a fresh process, so that
peaks do not mix: it trains the base with `services.trainer.finetune` (`prepare_model`, then
`train`; QLoRA's base loaded in 4 bits by bitsandbytes) in fp32 on the CPU for `--steps`
optimizer steps on windows of exactly `block` tokens (the synthetic chat of `bench/synthetic.py`,
tokenised by the trainer's own `tokenise` with the model's tokenizer, laid end to end and cut:
every batch is full width, no padding), and compares

* estimate: `registry.training_memory(Shape.of(config), method, batch_size, block_size,
  dtype_bytes=4, scored=1.0, attention_scores=keeps_attention_scores(config, "cpu"),
  adapter_dropout=..., loss_chunk=loss.CHUNK)`: the loop projects the scored positions through
  the LM head a chunk at a time (`services/trainer/loss.py`), and counting every position as
  scored is the upper bound (the windows keep the persona's labels, a share of the positions);
  the figures in bench/RESULTS.md before issue 18 were measured with every position's logits;
* measured: the peak resident memory (VmHWM) of the steps less the resident memory just before
  the base was loaded.

What else a process's resident memory holds, and how it is kept out:

* the interpreter and libraries: the baseline is read after the imports and after the samples
  are read; and after a warm-up (two steps of the loop on a one-layer model of the same
  architecture, thrown away), since the first training step pages in ~20 MB of kernel code and
  makes the runtime's lazy pools, which are not the step's memory but would be counted in it;
* loading: the peak is reset (`/proc/self/clear_refs`) after the model is loaded and wrapped,
  so the loader's transients are not counted; the loaded weights are;
* the allocator: glibc's malloc raises its mmap threshold as large blocks are freed (up to 32
  MB), after which freed activations stay in its heap and resident memory only grows (the tiny
  model's peak nearly doubled with it). The cases run with the threshold fixed at 128 KiB
  (MALLOC_MMAP_THRESHOLD_), so a freed buffer goes back to the kernel, and `malloc_trim` runs
  before the baseline and the reset; `--glibc-dynamic` measures with glibc's default instead;
* what the loaded model holds beside its weights (the tokenizer: a few MB) is counted.

The peak of step k is read at its end (AdamW makes its state in step 1's `optimizer.step`, so
step 2 is the first to carry it through a backward pass); the run stops before the loop's
end-of-run checkpoint, which is not a training step. `loaded` is what the loaded, wrapped model
adds. With `--saved`, one more forward pass after the steps counts the bytes of the distinct
tensors autograd saves for backward (parameters left out), and of those the logit-shaped and
the attention-score-shaped ones.

The last line is one JSON object: `case`, `estimate`, `measured` (bytes) and `ratio` (estimate /
measured) of the case farthest from its estimate, and `cases`, every case's figures.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import itertools
import os
import pickle
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.child import in_child
from bench.synthetic import NAMES, synthetic_chats

PERSONA = NAMES[0]
MB = 2**20


# -- memory of this process -------------------------------------------------------------------

def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _rss() -> int:
    return _status_kb("VmRSS") * 1024


def _hwm() -> int:
    return _status_kb("VmHWM") * 1024


def _reset_hwm() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    """Collect garbage and hand the heap's free memory back to the kernel (glibc)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


# -- samples ----------------------------------------------------------------------------------

def full_windows(samples: list[Any], block_size: int, count: int) -> list[Any]:
    """`count` windows of exactly `block_size` tokens: `samples` laid end to end (cycled) and cut."""
    from services.trainer.samples import Sample

    if not samples:
        raise ValueError("no samples to cut windows from")
    ids: list[int] = []
    labels: list[int] = []
    out: list[Any] = []
    for s in itertools.cycle(samples):
        ids += s.input_ids
        labels += s.labels
        while len(ids) >= block_size and len(out) < count:
            out.append(Sample(ids[:block_size], labels[:block_size]))
            del ids[:block_size], labels[:block_size]
        if len(out) == count:
            return out
    raise AssertionError("unreachable")


def _recipe(method: str, batch_size: int, block_size: int, steps: int, seed: int, checkpointing: bool) -> Any:
    from services.trainer.recipe import Hyperparameters, TrainRequest, resolve

    # one step more than is measured, and the run stops before it: the loop then skips its
    # end-of-run checkpoint (trainable weights and optimizer state as bytes), which is no step
    hyper = Hyperparameters(max_steps=steps + 1, save_every=10**9, seed=seed, batch_size=batch_size,
                            block_size=block_size, precision="fp32", gradient_checkpointing=checkpointing)
    return resolve(TrainRequest(dataset_id="bench", speakers=[PERSONA], base_model="tiny", method=method,
                                hyperparameters=hyper))


# -- one case, in its own process -------------------------------------------------------------

def _quiet() -> None:
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")  # peft on GPT-2's Conv1D
    warnings.filterwarnings("ignore", category=FutureWarning)


def _saved_bytes(model: Any, batch: dict[str, Any], vocab: int, heads: int) -> dict[str, int]:
    """Bytes of the distinct tensors autograd saves in one forward pass and loss (parameters left
    out): in all, those shaped like the logits, and those shaped like attention scores."""
    import torch

    from services.trainer.finetune import token_loss

    rows, width = batch["input_ids"].shape
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, tuple[int, str]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params and s.device.type != "meta":
            n = t.numel()
            kind = "logits" if n == rows * width * vocab else "scores" if n == rows * heads * width**2 else "other"
            if s.nbytes() > seen.get(s.data_ptr(), (0, ""))[0]:
                seen[s.data_ptr()] = (s.nbytes(), kind)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = token_loss(model, batch)
    del loss
    out = {"saved": sum(b for b, _ in seen.values())}
    for kind in ("logits", "scores"):
        out[f"saved_{kind}"] = sum(b for b, k in seen.values() if k == kind)
    return out


def _warm_up(config: dict[str, Any], recipe: Any, samples: list[Any], pad_id: int) -> None:
    """Two steps of the loop on a one-layer model of the same architecture and width, on short
    windows, thrown away: the kernels' code is paged in and the runtime's lazy pools exist before
    the baseline is read, as they would in any process that has trained before."""
    import torch
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    from services.trainer import finetune
    from services.trainer.samples import Sample

    small = CONFIG_MAPPING[config["model_type"]].from_dict(config)
    small.num_hidden_layers = 1
    model = AutoModelForCausalLM.from_config(small)
    if recipe.method == "qlora":  # the 4-bit kernels too
        from services.trainer import quantization

        with tempfile.TemporaryDirectory(prefix="doppel-bench-warm-") as tmp:
            model.save_pretrained(tmp)
            model = quantization.load(tmp, torch.device("cpu"), torch.float32)
    model = finetune.prepare_model(model, recipe)
    short = [Sample(s.input_ids[:32], s.labels[:32]) for s in samples[:4]]
    done: list[int] = []
    finetune.train(model, short, recipe.model_copy(update={"batch_size": 2, "max_steps": 3}), pad_id=pad_id,
                   callbacks=finetune.Callbacks(on_step=lambda p: done.append(p.step), should_stop=lambda: len(done) >= 2))
    del model


def _run(job: dict[str, Any], out: Any) -> None:
    import torch

    torch.set_num_threads(job["threads"])
    from doppel.store import open_store
    from services.trainer import finetune
    from services.trainer.basemodels import load_base_model
    from services.trainer.loss import CHUNK
    from services.trainer.recipe import Recipe
    from services.trainer.registry import Shape, keeps_attention_scores, training_memory

    _quiet()
    with open(job["samples_path"], "rb") as f:
        samples = pickle.load(f)
    recipe = Recipe.model_validate(job["recipe"])
    cache = Path(job["cache_dir"])
    store = open_store(cache.joinpath("store").as_uri())
    _warm_up(job["config"], recipe, samples, job["pad_id"])
    _trim()
    baseline = _rss()

    base = load_base_model(job["model"], store, cache_dir=cache / "models", seed=recipe.seed, block_size=recipe.block_size,
                           quantize_on=torch.device("cpu") if recipe.method == "qlora" else None)
    config = base.model.config.to_dict()
    model = finetune.prepare_model(base.model, recipe)
    _trim()
    loaded = _rss() - baseline
    resettable = _reset_hwm()
    steps: list[int] = []
    started = time.perf_counter()

    def on_step(p: finetune.Progress) -> None:
        steps.append(_hwm() - baseline)
        if resettable:
            _reset_hwm()

    finetune.train(model, samples, recipe, pad_id=job["pad_id"],
                   callbacks=finetune.Callbacks(on_step=on_step, should_stop=lambda: len(steps) >= job["steps"]))
    seconds = time.perf_counter() - started
    shape = Shape.of(config)
    kwargs: dict[str, Any] = dict(batch_size=recipe.batch_size, block_size=recipe.block_size, dtype_bytes=4,
                                  checkpointing=bool(recipe.gradient_checkpointing), scored=1.0,
                                  attention_scores=keeps_attention_scores(config, "cpu"),
                                  adapter_dropout=recipe.lora_dropout > 0, loss_chunk=CHUNK)
    figures: dict[str, Any] = {
        "estimate": training_memory(shape, recipe.method, **kwargs),
        "measured": max(steps),
        "loaded": loaded,
        "steps": steps,
        "step_s": round(seconds / len(steps), 2),
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "shape_params": shape.parameters,
        "shape_trainable": shape.parameters if recipe.method == "full" else shape.lora_parameters(recipe.lora_rank),
        "peak_resettable": resettable,
        "attention_scores": kwargs["attention_scores"],
        "shape": dataclasses.asdict(shape),
    }
    if job["saved"]:
        batch = finetune.collate(samples[: recipe.batch_size], job["pad_id"], torch.device("cpu"))
        model.train()
        figures.update(_saved_bytes(model, batch, shape.vocab, shape.heads))
    out.put(figures)


# -- the parent -------------------------------------------------------------------------------

def _prepare(args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, Any]]:
    """Per model: what a child loads (a registry name, or the tiny model saved to disk), its pad id,
    and a samples file per block size."""
    from doppel.store import open_store
    from doppel.transcript import Transcript
    from services.trainer.basemodels import load_base_model
    from services.trainer.samples import split_sessions, tokenise

    _quiet()
    recipe = _recipe("lora", args.batch_size, max(args.block_sizes), args.steps, args.seed, False)
    chats = synthetic_chats(args.messages, args.conversations, seed=args.seed)
    split = split_sessions(chats, recipe.speakers, session_gap=timedelta(seconds=recipe.session_gap_s),
                           held_out_fraction=recipe.held_out_fraction)
    texts = [t.text for s in split.train for t in s.turns]
    cache = Path(args.cache_dir).expanduser().resolve()
    store = open_store(cache.joinpath("store").as_uri())
    prepared: dict[str, dict[str, Any]] = {}
    for name in args.models:
        base = load_base_model(name, store, cache_dir=cache / "models", texts=texts, seed=args.seed,
                               block_size=max(args.block_sizes))
        where = name
        if name == "tiny":  # its tokenizer is trained on the data: save both so every case loads the same
            where = str(tmp / "tiny")
            base.model.save_pretrained(where)
            base.tokenizer.save_pretrained(where)
        transcript = Transcript(base.tokenizer, recipe.speakers)
        files = {}
        for block in args.block_sizes:
            windows = full_windows(tokenise(split.train, transcript, block), block, args.batch_size * (args.steps + 1))
            files[block] = str(tmp / f"{name}-{block}.pkl")
            with open(files[block], "wb") as f:
                pickle.dump(windows, f, protocol=pickle.HIGHEST_PROTOCOL)
        prepared[name] = {"model": where, "pad_id": base.tokenizer.pad_token_id, "samples": files,
                          "source": base.source, "config": base.model.config.to_dict()}
        del base
    return prepared


def _mb(n: float) -> str:
    return f"{n / MB:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "smollm2-135m"], choices=["tiny", "smollm2-135m"])
    ap.add_argument("--methods", nargs="+", default=["lora", "qlora", "full"], choices=["lora", "qlora", "full"])
    ap.add_argument("--block-sizes", nargs="+", type=int, default=[256, 512])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps per case (default 2: the second carries "
                                                         "the AdamW state through a backward pass)")
    ap.add_argument("--skip", nargs="*", default=[], metavar="MODEL/METHOD/BLOCK",
                    help="cases to leave out, e.g. smollm2-135m/full/512")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--saved", action="store_true", help="also count the bytes autograd saves for backward")
    ap.add_argument("--glibc-dynamic", action="store_true",
                    help="leave glibc's dynamic mmap threshold on in the cases (default: fixed at 128 KiB, see above)")
    ap.add_argument("--messages", type=int, default=3000, help="messages in the synthetic chat (default 3,000)")
    ap.add_argument("--conversations", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per case (default 1)")
    ap.add_argument("--cache-dir", default=os.environ.get("DOPPEL_BENCH_CACHE", "~/.cache/doppel-bench"),
                    help="store and model cache (smollm2-135m is converted into it once)")
    args = ap.parse_args()
    if args.steps < 1 or args.batch_size < 1 or min(args.block_sizes) < 16:
        ap.error("--steps and --batch-size must be positive, block sizes at least 16")

    if not args.glibc_dynamic:  # read by glibc as each case's process starts (spawn), not by this one
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="doppel-bench-memory-") as tmp:
        prepared = _prepare(args, Path(tmp))
        print(f"fp32 on CPU, {args.threads} thread(s), batch {args.batch_size}, {args.steps} steps per case, "
              f"a fresh process per case; MB = 2^20 bytes", flush=True)
        for name, method, block in itertools.product(args.models, args.methods, args.block_sizes):
            case = f"{name}/{method}/{block}"
            if case in args.skip:
                print(f"  {case}: skipped", flush=True)
                continue
            p = prepared[name]
            recipe = _recipe(method, args.batch_size, block, args.steps, args.seed, args.gradient_checkpointing)
            job = {"case": case, "model": p["model"], "config": p["config"], "pad_id": p["pad_id"],
                   "samples_path": p["samples"][block],
                   "recipe": recipe.model_dump(mode="json"), "cache_dir": str(Path(args.cache_dir).expanduser().resolve()),
                   "steps": args.steps, "threads": args.threads, "saved": args.saved}
            r = in_child(_run, (job,), f"the case {job['case']}")
            r.update(case=case, model=name, method=method, batch_size=args.batch_size, block_size=block,
                     ratio=round(r["estimate"] / r["measured"], 3))
            rows.append(r)
            print(f"  {case}: estimate {_mb(r['estimate'])} MB, measured {_mb(r['measured'])} MB, "
                  f"ratio {r['ratio']:.2f} ({r['step_s']} s/step)", flush=True)

    print(f"\n{'case':<24}{'estimate MB':>12}{'measured MB':>12}{'ratio':>7}{'loaded MB':>10}  {'per step MB':<16}"
          + (f"{'saved MB':>9}{'logits':>8}{'scores':>8}" if args.saved else ""))
    for r in rows:
        per_step = " / ".join(_mb(s) for s in r["steps"])
        saved = f"{_mb(r['saved']):>9}{_mb(r['saved_logits']):>8}{_mb(r['saved_scores']):>8}" if args.saved else ""
        print(f"{r['case']:<24}{_mb(r['estimate']):>12}{_mb(r['measured']):>12}{r['ratio']:>7.2f}"
              f"{_mb(r['loaded']):>10}  {per_step:<16}{saved}")
    print("ratio = estimate / measured; measured = peak RSS of the steps less RSS before the model was loaded")
    if any(not r["peak_resettable"] for r in rows):
        print("note: this kernel would not reset the peak RSS: the measured peaks include the warm-up and the model's loading")
    worst = max(rows, key=lambda r: abs(r["ratio"] - 1)) if rows else None
    print(orjson.dumps({
        # the case farthest from its estimate, then every case
        **({k: worst[k] for k in ("case", "estimate", "measured", "ratio")} if worst else {}),
        "cases": rows,
        "threads": args.threads,
        "steps": args.steps,
        "gradient_checkpointing": args.gradient_checkpointing,
        "allocator": "glibc dynamic mmap threshold" if args.glibc_dynamic else "mmap threshold 128 KiB",
        "device": "cpu",
        "dtype": "fp32",
    }).decode())


if __name__ == "__main__":
    main()
