"""The KV cache of a running batch: layers that append each step in place, and stack left-padded.

transformers' `DynamicLayer` appends a step's keys and values with `torch.cat`, a copy of the
whole cache every step, which cost as much as the attention itself. A `RoomyLayer` keeps spare
room at the end of its buffers and writes each step into it; `stack` joins the layers of several
batches (each left-padded to a common width) in one copy. `RoomyCache` is a `DynamicCache` made
of them; the engine passes one to a prefill and keeps what comes back.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer


class RoomyLayer(DynamicLayer):
    """A cache layer that appends each step's keys and values into spare room at its end instead
    of copying the whole cache (DynamicLayer's `cat`).

    `keys` and `values` are views of the buffers; when the batch replaces them (rows joining or
    leaving), the next update moves them into new buffers with room again.
    """

    ROOM = 64  # steps between copies

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys, values = self._held()
        held = keys.shape[-2] if keys.numel() else 0
        width = held + key_states.shape[-2]
        buffers = self._buffers
        mine = buffers is not None and keys.data_ptr() == buffers[0].data_ptr() and keys.shape[0] == buffers[0].shape[0]
        if not mine or buffers is None or width > buffers[0].shape[-2]:  # `buffers is None`: implied by `mine`, for mypy
            shape = (*key_states.shape[:2], width + self.ROOM, key_states.shape[-1])
            buffers = self._buffers = (key_states.new_empty(shape), value_states.new_empty(shape))
            if held:
                buffers[0][:, :, :held] = keys
                buffers[1][:, :, :held] = values
        k, v = buffers
        k[:, :, held:width] = key_states
        v[:, :, held:width] = value_states
        self.keys, self.values = k[:, :, :width], v[:, :, :width]
        return self.keys, self.values

    def stack(self, layers: list[RoomyLayer], width: int) -> None:
        """Become the rows of `layers` (this one first, perhaps), each left-padded with zeros to
        `width`: one copy into new buffers with room, instead of a pad, a `cat` and a copy."""
        held = [layer._held() for layer in layers]
        first = held[0][0]
        shape = (sum(keys.shape[0] for keys, _ in held), first.shape[1], width + self.ROOM, first.shape[3])
        buffers = (first.new_empty(shape), first.new_empty(shape))
        row = 0
        for keys, values in held:
            n, pad = keys.shape[0], width - keys.shape[2]
            for buffer, part in zip(buffers, (keys, values), strict=True):
                buffer[row : row + n, :, :pad] = 0  # padding is masked, but zeros keep NaN out of the sums
                buffer[row : row + n, :, pad:width] = part
            row += n
        self._buffers = buffers
        self.keys, self.values = buffers[0][:, :, :width], buffers[1][:, :, :width]

    def select(self, index: torch.Tensor, trim: int = 0) -> None:
        """Keep only the rows `index`, without their first `trim` columns (padding in every row kept)."""
        keys, values = self._held()
        self.keys, self.values = keys[index, :, trim:], values[index, :, trim:]

    def repeat(self, order: torch.Tensor) -> None:
        """Rows in `order` (a row may come several times: a prompt sampled `n` times)."""
        keys, values = self._held()
        self.keys, self.values = keys[order], values[order]

    def _held(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values, which every layer has once its first update initialised it."""
        keys, values = self.keys, self.values
        assert keys is not None and values is not None, "cache layer used before its first update"
        return keys, values


class RoomyCache(DynamicCache):
    def __init__(self) -> None:
        Cache.__init__(self, layer_class_to_replicate=RoomyLayer)
