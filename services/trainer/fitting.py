"""Whether a run fits its device: gradient checkpointing chosen from the memory estimate when not asked for.

A run that does not say whether to checkpoint (`Recipe.gradient_checkpointing` None) gets it when
the registry's estimate of a training step (registry.training_memory) does not fit in the memory
the device has free and the checkpointed estimate does: a third slower, but it runs instead of
running out of memory. A base whose architecture the estimate does not know is left as asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from doppel.errors import InvalidArgument
from doppel.model import Recipe

from .registry import Method, Shape, keeps_attention_scores, training_memory

HEADROOM = 0.9  # the share of free memory a run may plan to use


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


def checkpointing(config: dict[str, Any], recipe: Recipe, found: Device, *, dtype_bytes: int,
                  device_type: str = "cuda") -> tuple[bool, str]:
    """(whether to checkpoint, why — empty when nothing needed saying) for a recipe that left it open."""
    try:
        shape = Shape.of(config)
    except (InvalidArgument, KeyError, ValueError):
        return False, ""
    method: Method = "full" if recipe.method == "full" else "lora"
    plain, lean = (training_memory(shape, method, batch_size=recipe.batch_size, block_size=recipe.block_size,
                                   dtype_bytes=dtype_bytes, checkpointing=c,
                                   attention_scores=keeps_attention_scores(config, device_type)) for c in (False, True))
    room = int(found.free_bytes * HEADROOM)
    gib = 2**30
    if plain <= room:
        return False, ""
    if lean <= room:
        return True, (f"a training step needs about {plain / gib:.1f} GiB and {found.name} has {found.free_bytes / gib:.1f} "
                      f"GiB free: gradient checkpointing on (about {lean / gib:.1f} GiB)")
    return True, (f"a training step needs about {lean / gib:.1f} GiB even with gradient checkpointing and {found.name} "
                  f"has {found.free_bytes / gib:.1f} GiB free: it may run out of memory (a smaller batch or block "
                  "size, LoRA, or a smaller base would fit)")
