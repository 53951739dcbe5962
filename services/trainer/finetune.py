"""The training loop: LoRA or full fine-tuning over length-grouped batches, resumable.

A plain PyTorch loop rather than `transformers.Trainer`, for three reasons: batches are grouped
by length and padded to their longest sample only; a checkpoint is exactly what resuming needs
(trainable weights, optimizer, scheduler, RNG, step), handed to the caller as bytes to store;
and progress, sampling and cancellation are plain callbacks, so the Prefect flow and the tests
drive the same code.

The batch order is a pure function of (seed, epoch), so a resumed run sees the batches the
dead one would have seen from its step on. The loss of a step is the mean over every trained
token of its micro-batches, however they are padded or accumulated.
"""

from __future__ import annotations

import io
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F
from transformers import get_scheduler

from doppel.errors import DoppelError

from .recipe import Recipe
from .samples import IGNORE, Sample

GROUP = 64  # batches of similar length are drawn from windows of this many batches


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
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if recipe.method == "full":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=recipe.lora_rank,
        lora_alpha=recipe.lora_alpha,  # type: ignore[arg-type]  # peft annotates int, but takes a float (scaling = alpha / r)
        lora_dropout=recipe.lora_dropout,
        target_modules=recipe.lora_target_modules or "all-linear",
        task_type="CAUSAL_LM",
    )
    if recipe.gradient_checkpointing:
        model.enable_input_require_grads()
    return get_peft_model(model, config)


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


def collate(samples: Sequence[Sample], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Pad to the longest sample of the batch (right padding, masked)."""
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s.input_ids)
        ids[row, :n] = torch.tensor(s.input_ids)
        labels[row, :n] = torch.tensor(s.labels)
        mask[row, :n] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def token_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the batch's trained tokens, and how many there are.

    The labels are shifted, not the logits: slicing the logits would copy the largest tensor
    of the step (batch x length x vocabulary) and its gradient.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = F.pad(batch["labels"], (0, 1), value=IGNORE)[:, 1:]
    n = int((labels != IGNORE).sum())
    loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return loss, n


def _scored_tokens(sample: Sample) -> int:
    """The trained tokens `token_loss` scores: not a label at position 0, with no token before it."""
    return sample.trained_tokens - int(bool(sample.labels) and sample.labels[0] != IGNORE)


def _trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {k: p.detach().cpu() for k, p in model.named_parameters() if p.requires_grad}


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
    device = next(model.parameters()).device
    cast = autocast_dtype(recipe.precision, device)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": rest, "weight_decay": 0.0}],
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
    if checkpoint is not None:
        state = torch.load(io.BytesIO(checkpoint), map_location="cpu", weights_only=False)
        model.load_state_dict(state["weights"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        result.step, result.losses = state["step"], [tuple(x) for x in state["losses"]]

    def save() -> None:
        buf = io.BytesIO()
        torch.save(
            {
                "step": result.step,
                "weights": _trainable_state(model),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "losses": result.losses,
            },
            buf,
        )
        cb.on_checkpoint(result.step, buf.getvalue())

    lengths = [len(s.input_ids) for s in samples]
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
        step_loss = 0.0
        for batch_ids in step_batches:
            batch = collate([samples[i] for i in batch_ids], pad_id, device)
            with torch.autocast(device.type, dtype=cast or torch.float32, enabled=cast is not None):
                loss, _ = token_loss(model, batch)
            loss = loss / max(1, n_tokens)
            scaler.scale(loss).backward()
            step_loss += float(loss.detach())
            window_tokens += int(batch["attention_mask"].sum())
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
        if recipe.sample_every and result.step % recipe.sample_every == 0 and result.step < total:
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
        batch = collate([samples[i] for i in order[start : start + batch_size]], pad_id, device)
        loss, n = token_loss(model, batch)
        total, count = total + float(loss), count + n
    model.train(was_training)
    return (total / count if count else math.nan), count
