"""Whether a run fits its device: what a request left open is chosen from the memory estimate.

The registry's estimate of a training step (registry.training_memory) against the memory the
device has free: on a CPU, a batch in forward passes of at most 1024 tokens (smaller where memory
is short); gradient checkpointing when the run does not say (a third slower, but it runs
instead of running out of memory), then a smaller batch with more accumulation when the preset's
batch is what does not fit. A base whose architecture the estimate does not know is left as asked.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch

from doppel.errors import InvalidArgument
from doppel.model import Recipe

from . import heap
from .loss import CHUNK
from .registry import Shape, keeps_attention_scores, training_memory

HEADROOM = 0.9  # the share of free memory a run may plan to use
FITTED = ("gradient_checkpointing", "batch_size", "gradient_accumulation_steps", "max_pass_tokens")  # what `fit` may choose
# On a CPU a batch goes in forward passes of at most CPU_PASSES[0] tokens (finetune.passes): the
# same loss and gradients, within a few % of a batch at once (matrices of ~1000 rows keep a CPU's cores
# busy) and under half its memory; in smaller ones (down to a sample each) where memory is short.
CPU_PASSES = (1024, 512)


@dataclass(frozen=True)
class Device:
    name: str
    free_bytes: int
    total_bytes: int


def device(where: torch.device) -> Device:
    """The device a run trains on, and its memory (free and total)."""
    if where.type == "cuda":
        free, total = torch.cuda.mem_get_info(where)
        return Device(torch.cuda.get_device_name(where), int(free), int(total))
    info = dict(line.split(":", 1) for line in open("/proc/meminfo").read().splitlines() if ":" in line)
    kib = {k: int(v.split()[0]) * 1024 for k, v in info.items() if v.split()}
    return Device("CPU", kib.get("MemAvailable", 0), kib.get("MemTotal", 0))


def fit(config: dict[str, Any], recipe: Recipe, found: Device, *, dtype_bytes: int, device_type: str = "cuda",
        asked: Collection[str] = (), ranks: int = 1) -> tuple[Recipe, list[str]]:
    """`recipe` with what it left open chosen to fit `found`, and what was chosen, said.

    Gradient checkpointing, when unset, goes on only if a step would not fit without it. If one
    would still not fit and the request named neither `batch_size` nor
    `gradient_accumulation_steps` (`asked`: the fields it set; a preset's values are not asked
    for), the batch is halved and the accumulation doubled until it fits: the same samples a step,
    less memory at once. With `ranks` processes each takes a share of every batch (and of a full
    fine-tune's weights), so a rank's share is what must fit: on a GPU each has a device like
    `found`, on a CPU they share its memory.
    """
    try:
        shape = Shape.of(config)
    except (InvalidArgument, KeyError, ValueError):
        cpu_passes = recipe.max_pass_tokens or (CPU_PASSES[0] if device_type == "cpu" else None)
        return recipe.model_copy(update={"gradient_checkpointing": bool(recipe.gradient_checkpointing),
                                         "max_pass_tokens": cpu_passes}), []
    scores = keeps_attention_scores(config, device_type)

    passes = recipe.max_pass_tokens

    def need(batch: int, checkpoint: bool, pass_tokens: int | None = None) -> int:
        return int(training_memory(shape, recipe.method, batch_size=-(-batch // ranks), block_size=recipe.block_size,
                                   dtype_bytes=dtype_bytes, checkpointing=checkpoint, attention_scores=scores,
                                   adapter_dropout=recipe.lora_dropout > 0, loss_chunk=CHUNK,
                                   pass_tokens=pass_tokens or passes, shards=ranks if recipe.method == "full" else 1)
                   * (heap.overhead() if device_type == "cpu" else 1))

    room, gib, said = int(found.free_bytes * HEADROOM) // (ranks if device_type == "cpu" else 1), 2**30, []
    where = f"{found.name} has {found.free_bytes / gib:.1f} GiB free"
    checkpoint, batch, accum = recipe.gradient_checkpointing, recipe.batch_size, recipe.gradient_accumulation_steps
    if device_type == "cpu" and passes is None:
        passes = next((n for n in CPU_PASSES if need(batch, bool(checkpoint), n) <= room), CPU_PASSES[-1])
        if passes != CPU_PASSES[0]:
            said.append(f"forward passes of {CPU_PASSES[0]} tokens need about {need(batch, bool(checkpoint), CPU_PASSES[0]) / gib:.1f} "
                        f"GiB and {where}: passes of at most {passes} tokens (about {need(batch, bool(checkpoint)) / gib:.1f} GiB)")
    if checkpoint is None:
        checkpoint = need(batch, False) > room
        if checkpoint:
            said.append(f"a training step needs about {need(batch, False) / gib:.1f} GiB and {where}: gradient "
                        f"checkpointing on (about {need(batch, True) / gib:.1f} GiB)")
    if need(batch, checkpoint) > room and not {"batch_size", "gradient_accumulation_steps"} & set(asked):
        while batch > ranks and batch % 2 == 0 and need(batch, checkpoint) > room:
            batch, accum = batch // 2, accum * 2
        if batch != recipe.batch_size:
            said.append(f"batch size {recipe.batch_size} -> {batch} with {accum} forward passes a step (the same "
                        f"{batch * accum} samples a step) to fit: about {need(batch, checkpoint) / gib:.1f} GiB")
    if need(batch, checkpoint) > room:
        said.append(f"a training step needs about {need(batch, checkpoint) / gib:.1f} GiB"
                    + (" even with gradient checkpointing" if checkpoint else "") + f" and {where}: it may run out "
                    "of memory (a smaller batch or block size, QLoRA or LoRA, or a smaller base would fit)")
    fitted = recipe.model_copy(update={"gradient_checkpointing": checkpoint, "batch_size": batch,
                                       "gradient_accumulation_steps": accum, "max_pass_tokens": passes})
    return fitted, said
