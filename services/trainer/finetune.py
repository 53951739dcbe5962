"""The training loop: LoRA or full fine-tuning over length-grouped batches, resumable.

A plain PyTorch loop rather than `transformers.Trainer`, for three reasons: it computes only
what the loss needs (batches grouped by length, each sample cut after its last trained token,
short samples packed into shared rows, logits only at scored positions: `collate`, `loss`),
about twice the Trainer's speed on a CPU (bench/train.py); a checkpoint is exactly what resuming
needs (trainable weights, optimizer, scheduler, RNG, step), handed to the caller as bytes to
store; and progress, sampling and cancellation are plain callbacks, so the Prefect flow and the
tests drive the same code.

The batch order is a pure function of (seed, epoch), so a resumed run sees the batches the
dead one would have seen from its step on. The loss of a step is the mean over every trained
token of its micro-batches, however they are padded or accumulated.

In a distributed run (`torch.distributed` initialised, one process a device: `ranks.py`), each
rank takes every world-th sample of each micro-batch and the ranks sum their gradients
(`parallel.py`), so N processes take the steps one would, with the same global batch.
"""

from __future__ import annotations

import io
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import get_scheduler

from doppel.errors import DoppelError

from . import fitting, heap, parallel
from .loss import packable, token_loss
from .recipe import Recipe
from .samples import IGNORE, Sample

GROUP = 64  # batches of similar length are drawn from windows of this many batches
# Samples share rows only when that saves at least this share of them: a block-diagonal mask makes
# attention compute what the causal kernel skips (measured on SmolLM2 at 512 tokens on a CPU,
# masked attention is ~40% of the rest of a step, causal ~20%), so saving one row in eight loses.
PACK_GAIN = 0.85


class OutOfMemory(DoppelError):
    """Training ran out of memory; the message says what to change."""


@dataclass
class Progress:
    """Where training is, after an optimizer step."""

    step: int
    total: int
    loss: float
    learning_rate: float
    tokens_per_s: float
    eta_s: float | None


@dataclass
class Callbacks:
    """What the loop tells its caller and asks of it; every one is optional."""

    on_step: Callable[[Progress], None] = lambda p: None
    # called every `save_every` steps and at the end with a checkpoint's bytes
    on_checkpoint: Callable[[int, bytes], None] = lambda step, blob: None
    # called every `sample_every` steps with the model in eval mode
    on_sample: Callable[[Any, int], None] = lambda model, step: None
    should_stop: Callable[[], bool] = lambda: False


@dataclass
class Result:
    step: int
    total: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    stopped: bool = False


def device_for() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision; None trains in fp32."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "auto" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def weights_dtype(recipe: Recipe, device: torch.device) -> torch.dtype:
    """The dtype to load the base in: a frozen base (LoRA, QLoRA's unquantized parts) in the
    autocast dtype, since only the adapters need fp32; a fully trained one in fp32, the master
    weights of mixed precision."""
    cast = autocast_dtype(recipe.precision, device)
    return cast if cast is not None and recipe.method != "full" else torch.float32


def prepare_model(model: Any, recipe: Recipe) -> Any:
    """The model to train: wrapped in a LoRA adapter (on a 4-bit base for QLoRA), or every weight trainable."""
    if recipe.gradient_checkpointing:
        # reentrant checkpointing recomputes outside autograd, which DistributedDataParallel's hooks miss
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": parallel.world() == 1})
        model.config.use_cache = False
    if recipe.method == "full":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=recipe.lora_rank,
        lora_alpha=recipe.lora_alpha,  # type: ignore[arg-type]  # peft annotates int, but takes a float (scaling = alpha / r)
        lora_dropout=recipe.lora_dropout,
        target_modules=_targets(model, recipe),
        task_type="CAUSAL_LM",
    )
    if recipe.gradient_checkpointing:
        model.enable_input_require_grads()
    return get_peft_model(model, config)


def _targets(model: Any, recipe: Recipe) -> str | list[str]:
    """What LoRA adapts: the recipe's modules (every attention and MLP projection when it names
    none), in its last `lora_layers` layers only when it says so (their full names, since peft's
    own `layers_to_transform` does not take "all-linear")."""
    named = recipe.lora_target_modules
    if not recipe.lora_layers:
        return named or "all-linear"
    from transformers.pytorch_utils import Conv1D

    def layer(name: str) -> int | None:
        found = re.search(r"\.(\d+)\.", name)
        return int(found[1]) if found else None

    layers = {n for name, _ in model.named_modules() if (n := layer(name)) is not None}
    if not layers:
        raise DoppelError("lora_layers: this model's layers are not numbered")
    first = max(layers) + 1 - recipe.lora_layers
    head = model.get_output_embeddings()
    return [name for name, m in model.named_modules()
            if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head and (n := layer(name)) is not None and n >= first
            and (not named or name.rsplit(".", 1)[-1] in named)]


def batch_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of sample indices for one epoch: shuffled, then grouped by length, then shuffled."""
    rng = random.Random(f"{seed}-{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    window = batch_size * GROUP
    for start in range(0, len(order), window):
        group = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches.extend(group[k : k + batch_size] for k in range(0, len(group), batch_size))
    rng.shuffle(batches)
    return batches


def steps_per_epoch(n_samples: int, recipe: Recipe) -> int:
    return max(1, math.ceil(math.ceil(n_samples / recipe.batch_size) / recipe.gradient_accumulation_steps))


def total_steps(n_samples: int, recipe: Recipe) -> int:
    """Optimizer steps the run will make."""
    if recipe.max_steps:
        return recipe.max_steps
    return max(1, math.ceil(recipe.epochs * steps_per_epoch(n_samples, recipe)))


def needed_lengths(samples: Sequence[Sample]) -> list[int]:
    """What each sample costs a pass (`_needed`): the lengths batches are grouped by, so that a
    batch of samples cut after their last trained token is still of one length."""
    return [_needed(s) for s in samples]


def _needed(sample: Sample) -> int:
    """Tokens of `sample` the loss needs: up to the one before its last trained label (a causal
    model's later tokens change no scored position); at least one."""
    last = max((k for k, label in enumerate(sample.labels) if label != IGNORE), default=0)
    return max(1, min(last, len(sample.input_ids)))


def _rows(lengths: Sequence[int], width: int) -> list[list[int]]:
    """Sample indices packed into rows of `width` tokens: first fit, longest first."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if r is None:
            r = len(rows)
            rows.append([])
            room.append(width)
        rows[r].append(i)
        room[r] -= lengths[i]
    return rows


def passes(samples: Sequence[Sample], max_tokens: int | None) -> list[list[Sample]]:
    """A batch as forward passes of at most `max_tokens` padded tokens each (at least a sample
    each; None: one pass): longest first, so each pass is padded to little. The loss and the
    gradient of a step are the same however its samples are split (`_train` sums, then divides
    once), so this bounds the memory of a pass, not what is learnt."""
    if max_tokens is None:
        return [list(samples)]
    out: list[list[Sample]] = []
    for s in sorted(samples, key=_needed, reverse=True):
        if out and (len(out[-1]) + 1) * _needed(out[-1][0]) <= max_tokens:
            out[-1].append(s)
        else:
            out.append([s])
    return out


def collate(samples: Sequence[Sample], pad_id: int, device: torch.device, *, pack: bool = False) -> dict[str, torch.Tensor]:
    """The samples as model inputs and `targets` (shifted labels: the token each position must
    predict, IGNORE where none is trained), each sample cut to what the loss needs (`_needed`).

    Not packed: a row per sample, right-padded to the longest and masked. Packed (for a model
    `loss.packable` says can): `position_ids` instead of a mask, each sample's starting at 0, and
    samples share rows as wide as the longest when that saves enough rows (PACK_GAIN); transformers then keeps
    attention within each sample (a block-diagonal mask). A row's padding goes on with its last
    sample's positions, so a batch of one sample a row needs no mask at all and takes the causal
    attention kernel, which skips the masked half. Either way every scored position sees exactly
    the tokens it would see alone.
    """
    lengths = [_needed(s) for s in samples]
    width = max(lengths)
    rows = [[i] for i in range(len(samples))]
    if pack and len(shared := _rows(lengths, width)) <= PACK_GAIN * len(rows):
        rows = shared
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    where = torch.zeros((len(rows), width), dtype=torch.long)  # attention mask, or position ids when packed
    for r, members in enumerate(rows):
        at = n = 0
        for i in members:
            n, s = lengths[i], samples[i]
            ids[r, at : at + n] = torch.tensor(s.input_ids[:n])
            shifted = s.labels[1 : n + 1]
            targets[r, at : at + len(shifted)] = torch.tensor(shifted, dtype=torch.long)
            where[r, at : at + n] = torch.arange(n) if pack else 1
            at += n
        if pack:
            where[r, at:] = torch.arange(n, n + width - at)
    batch = {"input_ids": ids, "targets": targets, "position_ids" if pack else "attention_mask": where}
    return {k: v.to(device) for k, v in batch.items()}


def _scored_tokens(sample: Sample) -> int:
    """The trained tokens `token_loss` scores: not a label at position 0, with no token before it."""
    return sample.trained_tokens - int(bool(sample.labels) and sample.labels[0] != IGNORE)


def _oom(e: BaseException) -> OutOfMemory:
    return OutOfMemory(
        f"training ran out of memory ({str(e).splitlines()[0][:200]}): use LoRA instead of full "
        "fine-tuning, a smaller batch size (with gradient accumulation to keep the effective batch), "
        "a smaller block size, or gradient checkpointing"
    )


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def train(
    model: Any,
    samples: Sequence[Sample],
    recipe: Recipe,
    *,
    pad_id: int,
    callbacks: Callbacks | None = None,
    checkpoint: bytes | None = None,
) -> Result:
    """Train `model` in place on `samples`; resume from `checkpoint` when given."""
    try:
        return _train(model, samples, recipe, pad_id, callbacks or Callbacks(), checkpoint)
    except BaseException as e:
        if _is_oom(e):
            raise _oom(e) from None
        raise


def _train(model: Any, samples: Sequence[Sample], recipe: Recipe, pad_id: int, cb: Callbacks, checkpoint: bytes | None) -> Result:
    if not samples:
        raise DoppelError("no training samples")
    state = torch.load(io.BytesIO(checkpoint), map_location="cpu", weights_only=False) if checkpoint is not None else None
    if state is not None:  # the weights before the ranks share them out; every rank loads the same checkpoint
        model.load_state_dict(state["weights"], strict=False)
    wrapped = parallel.wrap(model, recipe.method, next(model.parameters()).device)
    device = next(model.parameters()).device
    cast = autocast_dtype(recipe.precision, device)
    if wrapped.sharded and cast is torch.float16:
        raise DoppelError("a full fine-tune on several devices trains in bf16 or fp32, not fp16")
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    decay, rest = [(k, p) for k, p in named if p.ndim >= 2], [(k, p) for k, p in named if p.ndim < 2]
    order = [k for k, _ in decay + rest]  # the optimizer's parameters, by position
    params = [p for _, p in decay + rest]
    optimizer = torch.optim.AdamW(
        [{"params": [p for _, p in decay], "weight_decay": recipe.weight_decay},
         {"params": [p for _, p in rest], "weight_decay": 0.0}],
        lr=recipe.learning_rate,
        fused=device.type == "cuda",
    )
    total = total_steps(len(samples), recipe)
    scheduler = get_scheduler(
        {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[recipe.lr_schedule],
        optimizer,
        num_warmup_steps=int(recipe.warmup_ratio * total),
        num_training_steps=total,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cast is torch.float16)
    result = Result(step=0, total=total)
    torch.manual_seed(recipe.seed)
    if state is not None:
        parallel.load_optimizer(model, optimizer, state["optimizer"], order)
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        result.step, result.losses = state["step"], [tuple(x) for x in state["losses"]]
    ranks, me = parallel.world(), parallel.rank()

    def save() -> None:
        """A checkpoint, made by rank 0 (with the others' shares, when sharded)."""
        if me != 0 and not wrapped.sharded:
            return
        weights, moments = parallel.trainable_state(model), parallel.optimizer_state(model, optimizer, order)
        if me != 0:
            return
        buf = io.BytesIO()
        torch.save({"step": result.step, "weights": weights, "optimizer": moments, "scheduler": scheduler.state_dict(),
                    "rng": torch.get_rng_state(), "losses": result.losses}, buf)
        cb.on_checkpoint(result.step, buf.getvalue())

    lengths = needed_lengths(samples)
    pack = packable(model)
    # where memory is short (passes below the default), glibc's free pages go back to the system after
    # each pass, at a sixth of the speed (heap.trimmer); tcmalloc needs no such help
    short = device.type == "cpu" and (recipe.max_pass_tokens or fitting.CPU_PASSES[0]) < fitting.CPU_PASSES[0]
    release = heap.trimmer() if short else None
    per_epoch = math.ceil(len(samples) / recipe.batch_size)
    accum = recipe.gradient_accumulation_steps
    micro = result.step * accum  # micro-batches done so far, across epochs
    orders: dict[int, list[list[int]]] = {}

    def batch_at(k: int) -> list[int]:
        """The k-th micro-batch of the run, counting across epochs."""
        epoch, index = divmod(k, per_epoch)
        if epoch not in orders:
            orders.clear()
            orders[epoch] = batch_order(lengths, recipe.batch_size, recipe.seed, epoch)
        return orders[epoch][index]

    started, window_tokens, window_start = time.monotonic(), 0, time.monotonic()
    done_at_start = result.step
    model.train()
    while result.step < total:
        if cb.should_stop():
            result.stopped = True
            break
        step_batches = [batch_at(k) for k in range(micro, micro + accum)]
        micro += accum
        n_tokens = sum(_scored_tokens(samples[i]) for b in step_batches for i in b)
        window_tokens += sum(len(samples[i].input_ids) for b in step_batches for i in b)
        # this rank's share: every ranks-th sample of each micro-batch (all of it when alone)
        work = [(part, ranks) for b in step_batches if b[me::ranks]  # DistributedDataParallel averages: undo it
                for part in passes([samples[i] for i in b[me::ranks]], recipe.max_pass_tokens)]
        # every rank must join each summing pass (sharded: each pass), some with a pass that adds nothing
        passes_needed = parallel.most(len(work), device) if wrapped.sharded else max(1, len(work))
        work += [([samples[step_batches[0][0]]], 0)] * (passes_needed - len(work))
        summed = torch.zeros((), device=device)
        for k, (part, scale) in enumerate(work):
            batch = collate(part, pad_id, device, pack=pack)
            with wrapped.passing(last=k == len(work) - 1):
                with torch.autocast(device.type, dtype=cast or torch.float32, enabled=cast is not None):
                    loss = wrapped.loss(batch) * scale / max(1, n_tokens)
                scaler.scale(loss).backward()
            summed += loss.detach().float() / ranks
            if release:
                release()
        step_loss = parallel.total(summed)
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        result.step += 1
        result.losses.append((result.step, step_loss))
        now = time.monotonic()
        rate = window_tokens / max(now - window_start, 1e-9)
        per_step = (now - started) / (result.step - done_at_start)
        cb.on_step(Progress(result.step, total, step_loss, scheduler.get_last_lr()[0], rate, per_step * (total - result.step)))
        window_tokens, window_start = 0, now
        if recipe.sample_every and result.step % recipe.sample_every == 0 and result.step < total and not wrapped.sharded:
            model.eval()
            cb.on_sample(model, result.step)
            model.train()
        if result.step % recipe.save_every == 0 or result.step == total:
            save()
    model.eval()
    return result


@torch.no_grad()
def held_out_loss(model: Any, samples: Sequence[Sample], *, pad_id: int, batch_size: int = 8) -> tuple[float, int]:
    """Mean cross-entropy per trained token over `samples`, and the token count (nan, 0 when none)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].input_ids))
    for start in range(0, len(order), batch_size):
        batch = collate([samples[i] for i in order[start : start + batch_size]], pad_id, device, pack=packable(model))
        loss, n = token_loss(model, batch)
        total, count = total + float(loss), count + n
    model.train(was_training)
    return (total / count if count else math.nan), count
