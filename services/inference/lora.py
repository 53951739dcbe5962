"""Rows of different LoRA adapters in one forward pass, without PEFT's loop over adapters.

PEFT serves a mixed batch (`adapter_names`) by looping, in every LoRA layer, over the adapters
present: a scan of the row list, a sub-batch gather, two small matmuls and a scatter each. With
16 personas in a batch that loop costs more than the model itself on a CPU, and on a GPU it is
thousands of tiny kernel launches a step. Here each LoRA layer gets its adapters' weights
stacked once (A as [adapters + 1, in, r], B as [adapters + 1, r, out] with the scaling folded
in, smaller ranks zero-padded, the last slot zeros for rows without an adapter), and a forward
hook adds every row's own update with two batched matmuls over weights gathered per row: the
same arithmetic as PEFT's, in the adapters' dtype as PEFT does it, with no loop.

The stacks copy the adapters' weights; the engine rebuilds them when adapters come or go.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import torch

if TYPE_CHECKING:
    from peft.tuners.lora.layer import Linear as LoraLinear


class MixedLora:
    """Stacked adapter weights of a PeftModel and the hooks that apply them per row."""

    def __init__(self, model: Any, slots: dict[str, int], layers: Sequence[tuple[LoraLinear, torch.Tensor, torch.Tensor]]):
        self.model, self.slots = model, slots
        self._device = next(model.parameters()).device
        self._index: torch.Tensor | None = None
        self._layers = [module for module, _, _ in layers]
        self._handles = [module.register_forward_hook(self._hook(a, b)) for module, a, b in layers]

    @classmethod
    def of(cls, model: Any) -> MixedLora | None:
        """The stacks for `model`'s adapters; None when one of them is more than plain LoRA on
        linear layers (PEFT's own path serves those)."""
        from peft.tuners.lora.layer import Linear as LoraLinear
        from peft.tuners.lora.layer import LoraLayer

        names = list(model.peft_config)
        slots = {name: k for k, name in enumerate(names)}
        layers = []
        for module in model.modules():
            if not isinstance(module, LoraLayer):
                continue
            if type(module) is not LoraLinear or module.lora_variant or module.lora_embedding_A:
                return None
            present = [n for n in names if n in module.lora_A]
            if not present or any(module.lora_B[n].bias is not None for n in present):
                return None
            first = _weight(module.lora_A[present[0]])
            rank = max(_weight(module.lora_A[n]).shape[0] for n in present)
            a = first.new_zeros((len(names) + 1, first.shape[1], rank))
            b = first.new_zeros((len(names) + 1, rank, _weight(module.lora_B[present[0]]).shape[0]))
            for n in present:
                r = _weight(module.lora_A[n]).shape[0]
                a[slots[n], :, :r] = _weight(module.lora_A[n]).detach().T
                b[slots[n], :r, :] = _weight(module.lora_B[n]).detach().T.to(a.dtype) * module.scaling[n]
            layers.append((module, a, b))
        return cls(model, slots, layers)

    @contextmanager
    def rows(self, adapters: list[str]) -> Iterator[None]:
        """A forward pass in which row k goes through `adapters[k]` (an unknown name: no adapter)."""
        none = len(self.slots)
        if any(a in self.slots for a in adapters):
            self._index = torch.tensor([self.slots.get(a, none) for a in adapters], device=self._device)
        # The LoRA layers give their base's output and the hooks add the rest. This is the flag
        # PEFT's `disable_adapter()` sets, without its model survey, which costs more than a step.
        for layer in self._layers:
            layer._disable_adapters = True
        try:
            yield
        finally:
            self._index = None
            for layer in self._layers:
                layer._disable_adapters = False

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, a: torch.Tensor, b: torch.Tensor) -> Any:
        def add_updates(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
            index = self._index
            if index is None:
                return None
            x = args[0]
            update = torch.bmm(torch.bmm(x.to(a.dtype), a[index]), b[index])
            return output + update.to(output.dtype)

        return add_updates


def _weight(linear: torch.nn.Module) -> torch.Tensor:
    """A LoRA factor's weight (an `nn.Linear`'s, which `Module.__getattr__` types as tensor or module)."""
    return cast(torch.Tensor, linear.weight)
