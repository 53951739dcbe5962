"""Training throughput on a synthetic chat: Doppel's loop against a padded `transformers.Trainer`.

    python bench/train.py                                    # tiny model on CPU (< 1 min)
    python bench/train.py --model smollm2-135m --steps 5 --block-size 256
    python bench/train.py --random-config llama-0.5b --method full --batch-size 32   # on a GPU

Builds a synthetic chat (`bench/synthetic.py`: most messages short, a few long, sessions of
varied length, like real exports), turns it into training windows with the trainer's own code
(`split_sessions`, `Transcript`, `tokenise`) and trains the same model init twice, each in a
fresh process:

* doppel: `services.trainer.finetune.train` (length-grouped batches, each sample cut after its
  last trained token, packed or padded to the longest, logits only where scored), with the
  recipe `resolve` gives for the flags, fitted to the device as a run's is (`fitting.fit`: on a
  CPU, forward passes of at most 1024 tokens; the batch size stays as asked);
* baseline: a plain `transformers.Trainer` whose collator pads every sample to the block size;
  it replays the very same batches in the same order, so both runs process the same samples
  and the ratio is the ratio of their step times.

Both runs wrap the model the same way (`prepare_model`: LoRA or full), use the same precision
(fp32 weights, bf16 autocast on a GPU), run on the malloc a run's processes get (`--malloc`:
tcmalloc where the system has it, services/trainer/heap.py) and run `--warmup` untimed steps,
then `--steps` timed ones. tokens/s counts real tokens (every non-padding token of a window,
context and trained turns alike) per second of the timed steps. Peak memory: `torch.cuda.max_memory_allocated` on
a GPU, peak RSS of the run's process on CPU (interpreter and libraries included), both read at
the end of the timed steps. MFU (GPU only) = FLOPs/token x real tokens/s / peak dense bf16
FLOP/s, with FLOPs/token = 6N for full fine-tuning and 4N + 6N_lora for LoRA (frozen weights
need no weight gradient), N = the weights a token is multiplied by (embedding lookups left out,
the LM head counted; attention-score FLOPs left out). Padding counts as no useful work.

Targets (issue 18): on a 2-core CPU, `--model smollm2-135m --method lora` at the default preset
>= 2x with a peak under 4 GB; on an H100, ratio >= 1.5x and MFU >= 40% for a ~0.5B model in bf16
(random weights are fine). The last line is one JSON object with every figure; its unprefixed
keys are the doppel run, `baseline_*` the Trainer's.
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import resource
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.child import in_child
from bench.synthetic import NAMES, synthetic_chats
from doppel.config import Malloc
from services.trainer import heap

PERSONA = NAMES[0]  # the speaker trained on; each synthetic chat has them and 1-4 others
RANDOM_CONFIGS: dict[str, dict[str, Any]] = {
    # ~0.54 B with a 49k vocabulary: Llama-shaped, 24 layers, GQA, tied embeddings
    "llama-0.5b": dict(model_type="llama", hidden_size=1024, intermediate_size=5632, num_hidden_layers=24,
                       num_attention_heads=16, num_key_value_heads=8, tie_word_embeddings=True),
    # ~0.9 B with a 49k vocabulary
    "llama-1b": dict(model_type="llama", hidden_size=1536, intermediate_size=6144, num_hidden_layers=24,
                     num_attention_heads=12, num_key_value_heads=4, tie_word_embeddings=True),
    # Qwen2.5-0.5B's shape (its own 152k vocabulary replaced by the tokenizer's)
    "qwen2-0.5b": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True),
}
# dense bf16 tensor-core peak, TFLOP/s; the first name contained in the device's name wins
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("GH200", 989.0), ("H100", 989.0), ("H200", 989.0),
                    ("H800", 989.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L4", 121.0)]


# -- the model ------------------------------------------------------------------------------

def _matmul_params(model: Any) -> int:
    """Weights a token is multiplied by: every parameter but embedding lookups (a tied LM head counts)."""
    from torch import nn

    out = model.get_output_embeddings()
    head = out.weight if out is not None else None
    lookups = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return sum(p.numel() for p in model.parameters() if id(p) not in lookups or p is head)


def _make_model(job: dict[str, Any]) -> Any:
    """The base model of `job`, identical in every process: loaded from disk or built from a seed."""
    import torch

    if job["random_config"]:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(job["model_dir"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(job["seed"])
            return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    from doppel.store import open_store
    from services.trainer.basemodels import load_base_model

    cache = Path(job["cache_dir"])
    base = load_base_model(job["model"], open_store(cache.joinpath("store").as_uri()), cache_dir=cache / "models",
                           seed=job["seed"], block_size=job["block_size"])
    return base.model


def _quiet() -> None:
    """No progress bars or known-harmless warnings between the bench's lines."""
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")  # peft on GPT-2's Conv1D
    warnings.filterwarnings("ignore", category=FutureWarning)


def _peak_mem_mb(device: Any) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Window:
    """Times the steps after `warmup` up to `total` and reads peak memory at the end."""

    def __init__(self, warmup: int, total: int, device: Any):
        self.warmup, self.total, self.device = warmup, total, device
        self.start = self.end = self.peak_mb = None
        self.done = False

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self, step: int) -> None:
        if step == self.warmup:
            self._sync()
            self.start = time.perf_counter()
        if step == self.total:
            self._sync()
            self.end = time.perf_counter()
            self.peak_mb = _peak_mem_mb(self.device)
            self.done = True

    @property
    def seconds(self) -> float:
        assert self.start is not None and self.end is not None, "the timed window did not complete"
        return self.end - self.start


def _run(which: str, job: dict[str, Any], out: Any) -> None:
    """One timed run in this (fresh) process; puts a dict of figures on `out`."""
    import torch

    from services.trainer import finetune, fitting
    from services.trainer.recipe import Recipe

    _quiet()
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    with open(job["samples_path"], "rb") as f:
        samples = pickle.load(f)
    recipe = Recipe.model_validate(job["recipe"])
    device = finetune.device_for()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = _make_model(job)
    n_matmul = _matmul_params(model)
    # what a run leaves open, fitted as the run's flow does; the batches stay the ones both runs replay
    recipe, _ = fitting.fit(model.config.to_dict(), recipe, fitting.device(device), device_type=device.type,
                            dtype_bytes=4 if finetune.autocast_dtype(recipe.precision, device) is None else 2,
                            asked={"batch_size", "gradient_accumulation_steps"})
    model.to(device)
    model = finetune.prepare_model(model, recipe)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    window = _Window(job["warmup"], job["total"], device)
    if which == "doppel":
        losses = _run_doppel(model, samples, recipe, job, window)
    else:
        losses = _run_trainer(model, samples, recipe, job, window, device)
    out.put({
        "seconds": window.seconds,
        "peak_mem_mb": window.peak_mb,
        "matmul_params": n_matmul,
        "trainable_params": trainable,
        "mean_loss": sum(losses) / len(losses) if losses else math.nan,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "autocast": str(finetune.autocast_dtype(recipe.precision, device) or "none").replace("torch.", ""),
        "pass_tokens": recipe.max_pass_tokens,
        "gradient_checkpointing": recipe.gradient_checkpointing,
        "malloc": heap.allocator(),
    })


def _run_doppel(model: Any, samples: list, recipe: Any, job: dict[str, Any], window: _Window) -> list[float]:
    from services.trainer.finetune import Callbacks, train

    # The recipe asks for one step more than is timed and the run stops before it: the loop then
    # skips its end-of-run checkpoint (every trainable weight and the optimizer state as bytes),
    # which is not training throughput (the baseline saves nothing either).
    assert recipe.max_steps == job["total"] + 1
    result = train(model, samples, recipe, pad_id=job["pad_id"],
                   callbacks=Callbacks(on_step=lambda p: window.step(p.step), should_stop=lambda: window.done))
    return [loss for _, loss in result.losses]


def _run_trainer(model: Any, samples: list, recipe: Any, job: dict[str, Any], window: _Window, device: Any) -> list[float]:
    import torch
    from torch.utils.data import DataLoader
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    from services.trainer.finetune import autocast_dtype
    from services.trainer.samples import IGNORE

    block, pad_id = recipe.block_size, job["pad_id"]

    seen: list[list[int]] = []  # the lengths of every collated batch, to check the replay

    def pad_to_block(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        seen.append([len(row["input_ids"]) for row in rows])
        ids = torch.full((len(rows), block), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), block), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), block), dtype=torch.long)
        for r, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[r, :n] = torch.tensor(row["input_ids"])
            labels[r, :n] = torch.tensor(row["labels"])
            mask[r, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    class Replay(Trainer):
        """A plain Trainer that draws the doppel run's batches, in its order."""

        def get_train_dataloader(self) -> DataLoader:
            loader = DataLoader(self.train_dataset, batch_sampler=job["batches"], collate_fn=self.data_collator,
                                pin_memory=self.args.dataloader_pin_memory)
            return self.accelerator.prepare(loader)

    class Timer(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            window.step(state.global_step)

    cast = autocast_dtype(recipe.precision, device)
    total = job["total"]
    with tempfile.TemporaryDirectory(prefix="doppel-bench-trainer-") as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=recipe.batch_size,
            max_steps=total,
            learning_rate=recipe.learning_rate,
            weight_decay=recipe.weight_decay,
            lr_scheduler_type=recipe.lr_schedule,
            warmup_steps=int(recipe.warmup_ratio * total),
            max_grad_norm=1.0,
            bf16=cast is torch.bfloat16,
            fp16=cast is torch.float16,
            seed=recipe.seed,
            report_to=[],
            save_strategy="no",
            logging_steps=total,
            disable_tqdm=True,
            remove_unused_columns=False,
            dataloader_num_workers=0,
            use_cpu=device.type == "cpu",
        )
        trainer = Replay(model=model, args=args, data_collator=pad_to_block, callbacks=[Timer()],
                         train_dataset=[{"input_ids": s.input_ids, "labels": s.labels} for s in samples])
        trainer.remove_callback(PrinterCallback)
        output = trainer.train()
    lengths = [len(s.input_ids) for s in samples]
    if seen != [[lengths[i] for i in b] for b in job["batches"]]:
        raise RuntimeError("the Trainer did not draw the doppel run's batches in order")
    return [output.training_loss]


# -- the parent -----------------------------------------------------------------------------

def _peak_flops(device_name: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    for name, tflops in PEAK_BF16_TFLOPS:
        if name.lower() in device_name.lower():
            return tflops * 1e12
    return None


def _prepare(args: argparse.Namespace, tmp: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Data, samples, recipe and model spec, shared by both runs; and figures about them."""
    import torch

    from doppel.store import open_store
    from doppel.tiny import tiny_model
    from doppel.transcript import Transcript
    from services.trainer.basemodels import load_base_model
    from services.trainer.finetune import batch_order, needed_lengths
    from services.trainer.recipe import Hyperparameters, TrainRequest, resolve
    from services.trainer.samples import split_sessions, tokenise

    _quiet()
    cuda = torch.cuda.is_available()
    random_config = args.random_config or (None if args.model or not cuda else "llama-0.5b")
    model_name = args.model or ("tiny" if not random_config else None)
    batch_size = args.batch_size or (32 if cuda else None)
    total = args.warmup + args.steps
    hyper = {"max_steps": total + 1, "save_every": 10**9, "seed": args.seed, "batch_size": batch_size,
             "block_size": args.block_size, "precision": args.precision,
             "gradient_checkpointing": args.gradient_checkpointing or None}
    recipe = resolve(TrainRequest(
        dataset_id="bench", speakers=[PERSONA], base_model=model_name or f"random:{random_config}",
        method=args.method, hyperparameters=Hyperparameters(**{k: v for k, v in hyper.items() if v is not None}),
    )).model_copy(update={"max_pass_tokens": args.pass_tokens})

    t0 = time.perf_counter()
    chats = synthetic_chats(args.messages, args.conversations, seed=args.seed)
    split = split_sessions(chats, recipe.speakers, session_gap=timedelta(seconds=recipe.session_gap_s),
                           held_out_fraction=recipe.held_out_fraction)
    texts = [t.text for s in split.train for t in s.turns]
    cache = Path(args.cache_dir).expanduser().resolve()
    store = open_store(cache.joinpath("store").as_uri())
    job: dict[str, Any] = {"seed": recipe.seed, "block_size": recipe.block_size, "cache_dir": str(cache),
                           "random_config": random_config, "threads": args.threads, "warmup": args.warmup,
                           "total": total, "recipe": recipe.model_dump(mode="json"),
                           "device": "cuda" if cuda else "cpu"}
    if random_config:
        from transformers import AutoConfig, AutoTokenizer

        if args.tokenizer == "tiny":
            _, tokenizer = tiny_model(texts, seed=recipe.seed, block_size=recipe.block_size, vocab_size=32_000)
        elif args.tokenizer == "smollm2":
            tokenizer = load_base_model("smollm2-135m", store, cache_dir=cache / "models").tokenizer
        else:
            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        shape = dict(RANDOM_CONFIGS[random_config])
        config = AutoConfig.for_model(
            shape.pop("model_type"), **shape, vocab_size=len(tokenizer),
            max_position_embeddings=max(4096, recipe.block_size), bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        job["model_dir"] = str(tmp / "model")
        config.save_pretrained(job["model_dir"])
        described = f"{random_config} (random weights, {args.tokenizer} tokenizer, vocab {len(tokenizer):,})"
    else:
        base = load_base_model(model_name, store, cache_dir=cache / "models", texts=texts, seed=recipe.seed,
                               block_size=recipe.block_size)
        tokenizer = base.tokenizer
        job["model"] = model_name
        if model_name == "tiny":  # its tokenizer is trained on the data: save both so each run loads the same
            job["model"] = str(tmp / "model")
            base.model.save_pretrained(job["model"])
            tokenizer.save_pretrained(job["model"])
        described = f"{model_name} ({base.source})"
        del base
    transcript = Transcript(tokenizer, recipe.speakers)
    samples = tokenise(split.train, transcript, recipe.block_size)
    prep_s = time.perf_counter() - t0
    job["pad_id"] = tokenizer.pad_token_id
    job["samples_path"] = str(tmp / "samples.pkl")
    with open(job["samples_path"], "wb") as f:
        pickle.dump(samples, f, protocol=pickle.HIGHEST_PROTOCOL)

    # the batches both runs take, in order: the training loop's own order (finetune.batch_order)
    lengths, needed = [len(s.input_ids) for s in samples], needed_lengths(samples)
    per_epoch = math.ceil(len(samples) / recipe.batch_size)
    orders: dict[int, list[list[int]]] = {}
    batches = []
    for k in range(total):
        epoch, index = divmod(k, per_epoch)
        if epoch not in orders:
            orders[epoch] = batch_order(needed, recipe.batch_size, recipe.seed, epoch)
        batches.append(orders[epoch][index])
    job["batches"] = batches
    timed = batches[args.warmup:]
    info = {
        "model": described,
        "transcript": transcript.kind,
        "messages": args.messages,
        "conversations": args.conversations,
        "sessions": len(split.train),
        "samples": len(samples),
        "mean_sample_tokens": round(sum(lengths) / len(lengths), 1),
        "prepare_s": round(prep_s, 2),
        "real_tokens": sum(lengths[i] for b in timed for i in b),
        "needed_tokens": sum(needed[i] for b in timed for i in b),
        "doppel_processed": sum(len(b) * max(needed[i] for i in b) for b in timed),
        "baseline_processed": sum(len(b) * recipe.block_size for b in timed),
        "recipe": recipe,
    }
    return job, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="base model: registry name (tiny, smollm2-135m), local path or cached hub id "
                                    "(default: tiny on CPU, --random-config llama-0.5b on a GPU)")
    ap.add_argument("--random-config", choices=sorted(RANDOM_CONFIGS),
                    help="train a randomly initialised model of this shape instead of --model")
    ap.add_argument("--tokenizer", default="smollm2",
                    help="with --random-config: smollm2 (49k vocab), tiny (BPE trained on the data, up to 32k) or a path")
    ap.add_argument("--method", choices=["lora", "full"], default="lora")
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps (default 20)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before them (default 2)")
    ap.add_argument("--batch-size", type=int, help="samples per step (default: the recipe's 8; 32 on a GPU)")
    ap.add_argument("--block-size", type=int, help="most tokens in a sample (default: the recipe's 512)")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="default: auto (bf16 on a GPU)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--pass-tokens", type=int, help="doppel's loop: forward passes of at most this many tokens "
                                                    "(default: what a run chooses: 1024 on a CPU, a batch at once on a GPU)")
    ap.add_argument("--malloc", choices=get_args(Malloc), default="auto",
                    help="the runs' malloc: auto (tcmalloc where the system has it, as a run's processes) or system")
    ap.add_argument("--messages", type=int, default=20_000, help="messages in the synthetic chat (default 20,000)")
    ap.add_argument("--conversations", type=int, default=20, help="chats they are spread over (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="torch threads per run (default: torch's default)")
    ap.add_argument("--peak-tflops", type=float, help="the device's peak dense bf16 TFLOP/s, for MFU on a GPU not in the table")
    ap.add_argument("--cache-dir", default=os.environ.get("DOPPEL_BENCH_CACHE", "~/.cache/doppel-bench"),
                    help="store and model cache (smollm2-135m is converted into it once)")
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 1:
        ap.error("--steps and --warmup must be at least 1")
    if args.model and args.random_config:
        ap.error("give --model or --random-config, not both")
    if args.messages < 1 or args.conversations < 1:
        ap.error("--messages and --conversations must be positive")

    with tempfile.TemporaryDirectory(prefix="doppel-bench-train-") as tmp:
        job, info = _prepare(args, Path(tmp))
        recipe = info.pop("recipe")
        print(f"model: {info['model']}, {recipe.method}, {info['transcript']} transcript", flush=True)
        print(f"data: {args.messages:,} messages in {args.conversations} chats -> {info['sessions']:,} sessions, "
              f"{info['samples']:,} windows of <= {recipe.block_size} tokens (mean {info['mean_sample_tokens']}) "
              f"in {info['prepare_s']} s", flush=True)
        load = f", load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores" if job["device"] == "cpu" else ""
        print(f"timing {args.steps} steps of batch {recipe.batch_size} after {args.warmup} warmup steps, "
              f"{info['real_tokens']:,} real tokens, in a fresh process per run{load}...", flush=True)
        if job["device"] == "cpu" and not args.threads and os.getloadavg()[0] >= 0.5:
            print("note: other processes are busy and torch uses every core: its threads then thrash and the "
                  "timings swing widely; --threads 1 is steadier", flush=True)
        saved = dict(os.environ)
        os.environ.update(heap.environment(os.environ, args.malloc))  # what the spawned runs start with
        try:
            ours = in_child(_run, ("doppel", job), "the doppel run")
            print(f"  doppel: {ours['seconds']:.2f} s on {ours['malloc']} malloc", flush=True)
            base = in_child(_run, ("trainer", job), "the trainer run")
            print(f"  Trainer: {base['seconds']:.2f} s on {base['malloc']} malloc", flush=True)
        finally:
            os.environ.clear()
            os.environ.update(saved)

    device = ours["device"]
    n, n_lora = ours["matmul_params"], ours["trainable_params"]
    flops_per_token = 6 * n if recipe.method == "full" else 4 * n + 6 * n_lora
    peak = _peak_flops(device, args.peak_tflops) if device != "cpu" else None
    real = info["real_tokens"]
    tps, base_tps = real / ours["seconds"], real / base["seconds"]

    def mfu(rate: float) -> float | None:
        return round(flops_per_token * rate / peak, 4) if peak else None

    figures = {
        "tokens_per_s": round(tps, 1),
        "baseline_tokens_per_s": round(base_tps, 1),
        "ratio": round(tps / base_tps, 3),
        "peak_mem_mb": round(ours["peak_mem_mb"], 1),
        "baseline_peak_mem_mb": round(base["peak_mem_mb"], 1),
        "mfu": mfu(tps),
        "baseline_mfu": mfu(base_tps),
        "step_s": round(ours["seconds"] / args.steps, 4),
        "baseline_step_s": round(base["seconds"] / args.steps, 4),
        "padding_fraction": round(1 - info["needed_tokens"] / info["doppel_processed"], 4),
        "cut_fraction": round(1 - info["needed_tokens"] / real, 4),
        "baseline_padding_fraction": round(1 - real / info["baseline_processed"], 4),
        "mean_loss": round(ours["mean_loss"], 4),
        "baseline_mean_loss": round(base["mean_loss"], 4),
        "real_tokens": real,
        "model": info["model"],
        "method": recipe.method,
        "params": n,
        "trainable_params": n_lora,
        "flops_per_token": flops_per_token,
        "peak_flops": peak,
        "device": device,
        "autocast": ours["autocast"],
        "steps": args.steps,
        "warmup": args.warmup,
        "batch_size": recipe.batch_size,
        "block_size": recipe.block_size,
        "gradient_checkpointing": ours["gradient_checkpointing"],
        "pass_tokens": ours["pass_tokens"],
        "malloc": ours["malloc"],
        "samples": info["samples"],
        "mean_sample_tokens": info["mean_sample_tokens"],
        "messages": args.messages,
        "threads": args.threads,
    }
    memory = "peak GPU memory allocated" if device != "cpu" else "peak RSS of the run's process"

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    passes = f"passes of <= {ours['pass_tokens']} tokens" if ours["pass_tokens"] else "a batch a pass"
    print(f"\ndevice {device}, autocast {ours['autocast']}, {ours['malloc']} malloc, {passes}; {n / 1e6:.1f} M matmul params, "
          f"{n_lora / 1e6:.2f} M trainable; tokens = real (non-padding) tokens")
    print(f"{'':<24}{'doppel':>14}{'Trainer, padded':>18}")
    rows = [
        ("tokens/s (real)", f"{tps:,.0f}", f"{base_tps:,.0f}"),
        ("s/step", f"{figures['step_s']:.3f}", f"{figures['baseline_step_s']:.3f}"),
        ("cut (after last trained) %", pct(figures["cut_fraction"]), "0.0"),
        ("padding %", pct(figures["padding_fraction"]), pct(figures["baseline_padding_fraction"])),
        (f"peak mem MB ({'GPU' if device != 'cpu' else 'RSS'})", f"{figures['peak_mem_mb']:,.0f}",
         f"{figures['baseline_peak_mem_mb']:,.0f}"),
        ("MFU %", pct(figures["mfu"]), pct(figures["baseline_mfu"])),
        ("mean loss", f"{figures['mean_loss']:.4f}", f"{figures['baseline_mean_loss']:.4f}"),
    ]
    for label, a, b in rows:
        print(f"{label:<24}{a:>14}{b:>18}")
    print(f"ratio (tokens/s): {figures['ratio']:.2f}x   memory: {memory}")
    if device != "cpu" and peak is None:
        print("MFU: unknown GPU; pass --peak-tflops")
    print("targets: on this 2-core CPU, smollm2-135m LoRA ratio >= 2x and peak < 4 GB at the default preset; "
          "on an H100 ratio >= 1.5x, MFU >= 40% for a ~0.5B model in bf16")
    print(orjson.dumps(figures).decode())


if __name__ == "__main__":
    main()
