"""Training on several processes (ranks.py starts them): DistributedDataParallel for adapters, FSDP for full fine-tunes.

An adapter is small: every rank holds the whole model and DistributedDataParallel sums the
adapter's gradients. A full fine-tune holds weights, gradients and two Adam moments of every
weight, four times the model: FSDP (`fully_shard`, a unit per transformer block) keeps a share of
each on each rank, so a base too large for one GPU trains on several. Sharded ranks gather each
block's weights for its forward and backward passes, so they must make the same passes: `finetune`
gives a rank with fewer some that add nothing. Checkpoints stay as one process writes them (whole
weights, optimizer state keyed by position), gathered to rank 0, so a run resumes on any number of
devices. With one process (no process group) each function is the plain thing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import distributed as dist
from torch import nn

from .loss import token_loss


def world() -> int:
    """Processes training together: 1 unless `torch.distributed` is initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world() > 1 else 0


class _Loss(nn.Module):
    """`token_loss` as a module's forward, so that the wrappers see the passes that make gradients
    (they hook `forward`; the fused loss calls the backbone and head itself)."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return token_loss(self.model, batch)[0]


@dataclass
class Wrapped:
    """The loss to call with a batch, as this run's ranks compute it together."""

    loss: nn.Module
    sharded: bool

    def passing(self, last: bool) -> Any:
        """The context of a pass: gradients are summed across ranks in a step's last pass only."""
        if world() == 1 or last:
            return nullcontext()
        if self.sharded:
            return _no_gradient_sync(self.loss)
        return self.loss.no_sync()  # type: ignore[operator]  # DistributedDataParallel's


@contextmanager
def _no_gradient_sync(module: Any) -> Iterator[None]:
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def wrap(model: Any, method: str, device: torch.device) -> Wrapped:
    """`model`'s loss for one process, or wrapped for this run's ranks (sharded for a full fine-tune)."""
    loss = _Loss(model)
    if world() == 1:
        return Wrapped(loss, sharded=False)
    if method == "full":
        from torch.distributed.fsdp import fully_shard

        blocks = set(getattr(model, "_no_split_modules", None) or ())
        for module in model.modules():
            if type(module).__name__ in blocks:
                fully_shard(module)
        fully_shard(loss)  # the rest (embeddings, final norm, head) as one unit
        return Wrapped(loss, sharded=True)
    ids = [device.index] if device.type == "cuda" else None
    return Wrapped(nn.parallel.DistributedDataParallel(loss, device_ids=ids), sharded=False)


def _sharded(model: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _whole() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The trainable weights, whole, on the CPU. Sharded, every rank must call it and rank 0 gets them."""
    trainable = {k: p for k, p in model.named_parameters() if p.requires_grad}
    if not _sharded(model):
        return {k: p.detach().cpu() for k, p in trainable.items()}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    whole: dict[str, Any] = get_model_state_dict(model, options=_whole())
    return {k: v for k, v in whole.items() if k in trainable}


def optimizer_state(model: Any, optimizer: torch.optim.Optimizer, order: list[str]) -> dict[str, Any]:
    """The optimizer's state as one process's `state_dict()` (parameters by position; `order` names them).
    Sharded, every rank must call it and rank 0 gets it."""
    if not _sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    named: Any = get_optimizer_state_dict(model, optimizer, options=_whole())
    at = {name: i for i, name in enumerate(order)}
    return {"state": {at[n]: s for n, s in named.get("state", {}).items()},
            "param_groups": [{**g, "params": [at[n] for n in g["params"]]} for g in named.get("param_groups", [])]}


def load_optimizer(model: Any, optimizer: torch.optim.Optimizer, state: dict[str, Any], order: list[str]) -> None:
    """Load what `optimizer_state` made (on any number of ranks) into this rank's optimizer."""
    if not _sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    named: Any = {"state": {order[i]: s for i, s in state["state"].items()},
             "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, named, options=StateDictOptions(full_state_dict=True))


def most(n: int, device: torch.device) -> int:
    """The largest `n` of all ranks."""
    if world() == 1:
        return n
    found = torch.tensor(n, device=device)
    dist.all_reduce(found, op=dist.ReduceOp.MAX)
    return int(found)


def total(value: torch.Tensor) -> float:
    """`value` summed over the ranks."""
    if world() > 1:
        dist.all_reduce(value)
    return float(value)
