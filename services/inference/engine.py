"""The batching engine of one base model: continuous batching across requests and adapters.

One thread runs the loop. Between decoding steps, queued jobs are admitted: their prompts are
prefilled together (left-padded, one forward pass), each job's row repeated `n` times, and the
rows join the running batch, whose KV cache is left-padded to a common width. Every step is
one forward pass over every running row, whatever job or LoRA adapter it belongs to (PEFT's
`adapter_names` applies each row's adapter; "__base__" is none). A finished or cancelled row
is done at once (nothing more is sampled or sent for it), but its cache rows are dropped only
when a quarter of the batch is done or rows join: dropping copies the whole cache, and that
costs more than carrying a few done rows through some steps.

The engine knows nothing of gRPC or of personas: a `Job` is token ids, an adapter name,
sampling settings, stop strings, and a `sink` that receives text deltas. Counters say how many
forward passes served how many tokens, so tests and benchmarks can see batching happen.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from doppel.errors import Overloaded

from .lora import MixedLora
from .protocol import Finish, Sampling
from .sampler import RowSampler, pick

log = logging.getLogger(__name__)
BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch
PREFILL_TOKENS_CPU, PREFILL_TOKENS_GPU = 512, 16384


# sink(index, delta, finish): text added to candidate `index`; `finish` set on its last call
Sink = Callable[[int, str, Finish | None], None]


@dataclass
class Job:
    """One request: a prompt to continue `sampling.n` times."""

    prompt_ids: list[int]
    sampling: Sampling
    sink: Sink
    adapter: str | None = None
    end_strings: tuple[str, ...] = ()  # end the turn (a speaker boundary, an end-of-turn marker)
    end_ids: frozenset[int] = frozenset()  # token ids that end the turn (EOS)
    banned_first: frozenset[int] = frozenset()  # token ids the first generated token may not be
    allowed_first: frozenset[int] = frozenset()  # when set, the only token ids the first generated token may be
    cancelled: threading.Event = field(default_factory=threading.Event)
    rows_left: int = 0
    error: str = ""  # set when the engine failed the job
    tokens: dict[int, int] = field(default_factory=dict)  # generated tokens of each finished candidate

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class _Row:
    job: Job
    index: int
    sampler: RowSampler
    length: int  # real tokens in the cache (prompt + generated, once prefilled)
    generated: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of the text already sent
    done: bool = False


@dataclass
class _Prefilled:
    """Rows whose prompts went through a forward pass, with their cache, mask and last logits."""

    rows: list[_Row]
    cache: DynamicCache
    mask: torch.Tensor
    logits: torch.Tensor | None


@dataclass
class Stats:
    forward_passes: int = 0
    tokens_generated: int = 0
    requests_completed: int = 0
    running: int = 0
    queued: int = 0


class Engine:
    """Serves jobs on one model (a PeftModel when adapters are loaded) from a thread of its own."""

    def __init__(self, model: Any, tokenizer: Any, *, max_batch: int = 64, queue_capacity: int = 256, name: str = "",
                 prefill_tokens: int | None = None):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        _fuse_activations(model)
        self.max_batch, self.queue_capacity = max_batch, queue_capacity
        self.device = next(model.parameters()).device
        # Prompt tokens per prefill pass: on a CPU a prefill costs the same per token whatever the
        # batch (it is compute-bound), and big passes spill the caches; a GPU wants them wide.
        self.prefill_tokens = prefill_tokens or (PREFILL_TOKENS_GPU if self.device.type == "cuda" else PREFILL_TOKENS_CPU)
        self.stats = Stats()
        self._queue: deque[Job] = deque()
        self._rows: list[_Row] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, width]: 1 for real cache entries
        self._lock = threading.Condition()
        self._model_lock = threading.Lock()  # adapters change between steps only
        self._mixed: MixedLora | None = None  # the adapters stacked for mixed batches, built on first use
        self._mixed_built = False
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=f"engine-{name}", daemon=True)
        self._thread.start()

    # --- the outside ---------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue a job; Overloaded when the queue is full."""
        with self._lock:
            if len(self._queue) >= self.queue_capacity:  # jobs whose callers left give their place first
                for gone in [j for j in self._queue if j.cancelled.is_set()]:
                    self._queue.remove(gone)
                    _abandon(gone)
            if len(self._queue) >= self.queue_capacity:
                raise Overloaded(f"the engine queue is full ({self.queue_capacity} requests waiting); retry shortly")
            self._queue.append(job)
            self.stats.queued = len(self._queue)
            self._lock.notify()

    def with_model(self, fn: Callable[[Any], Any]) -> Any:
        """Run `fn(model)` between decoding steps (to add or remove an adapter); its result."""
        with self._model_lock:
            self._forget_mixed()
            return fn(self.model)

    def set_model(self, model: Any) -> None:
        """Swap the model object (e.g. the base wrapped in a PeftModel) between steps."""
        with self._model_lock:
            self._forget_mixed()
            self.model = model

    def idle(self) -> bool:
        with self._lock:
            return not self._queue and not self._rows

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()
        self._thread.join(10)

    # --- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._queue and not self._rows:
                    self._lock.wait()
                if self._stopping:
                    break
                admitted = self._admit()
            try:
                with self._model_lock, torch.inference_mode():
                    if admitted:
                        self._join([self._prefill(group) for group in _by_length(admitted, tokens=self.prefill_tokens)])
                    if self._rows:
                        self._decode()
            except Exception as e:  # noqa: BLE001 - every job in flight learns of it; the engine goes on
                log.exception("engine %s: a step failed", self.name)
                failed = {id(r.job): r.job for r in self._rows} | {id(j): j for j in admitted}
                for job in failed.values():
                    job.error = f"generation failed: {e}"
                for row in self._rows:
                    self._finish(row, Finish.CANCELLED)
                for job in admitted:
                    if job.rows_left == 0:
                        _abandon(job)
                self._rows, self._cache, self._mask = [], None, None
                self.stats.running = 0
        for row in self._rows:
            self._finish(row, Finish.CANCELLED)
        for job in self._queue:
            _abandon(job)

    def _admit(self) -> list[Job]:
        room = self.max_batch - self.stats.running
        out = []
        while self._queue and (self._queue[0].sampling.n <= room or not self._rows and not out):
            job = self._queue.popleft()
            if job.cancelled.is_set():
                _abandon(job)
                continue
            room -= job.sampling.n
            out.append(job)
        self.stats.queued = len(self._queue)
        return out

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, adapters: list[str],
                 cache: DynamicCache | None) -> tuple[torch.Tensor, DynamicCache]:
        kwargs: dict[str, Any] = {}
        context: Any = contextlib.nullcontext()
        if self._peft():
            if len(set(adapters)) == 1 and adapters[0] != BASE:
                if self.model.active_adapter != adapters[0]:
                    self.model.set_adapter(adapters[0])  # one adapter for every row: the plain, faster path
            elif (mixed := self._mixed_lora()) is not None:
                context = mixed.rows(adapters)  # each row through its own adapter, or none
            elif len(set(adapters)) > 1:
                kwargs["adapter_names"] = adapters  # PEFT's own (slower) mixed batch
            else:
                context = self.model.disable_adapter()
        if _keeps_logits(self.model):
            kwargs["logits_to_keep"] = 1
        with context:
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache or RoomyCache(),
                             use_cache=True, **kwargs)
        self.stats.forward_passes += 1
        return out.logits[:, -1, :], out.cache

    def _peft(self) -> bool:
        return hasattr(self.model, "peft_config")

    def _mixed_lora(self) -> MixedLora | None:
        if not self._mixed_built:
            self._mixed, self._mixed_built = MixedLora.of(self.model), True
        return self._mixed

    def _forget_mixed(self) -> None:
        if self._mixed is not None:
            self._mixed.close()
        self._mixed, self._mixed_built = None, False

    def _prefill(self, jobs: list[Job]) -> _Prefilled:
        """One forward pass over the prompts of `jobs` (left-padded); each job's row repeated `n` times."""
        width = max(len(j.prompt_ids) for j in jobs)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(jobs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for r, j in enumerate(jobs):
            n = len(j.prompt_ids)
            ids[r, width - n :] = torch.tensor(j.prompt_ids)
            mask[r, width - n :] = 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        logits, cache = self._forward(ids.to(self.device), mask.to(self.device), positions.to(self.device),
                                      [j.adapter or BASE for j in jobs], None)
        mask = mask.to(self.device)
        if any(j.sampling.n > 1 for j in jobs):
            order = torch.repeat_interleave(torch.arange(len(jobs)), torch.tensor([j.sampling.n for j in jobs])).to(self.device)
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys[order], layer.values[order]
            logits, mask = logits[order], mask[order]
        rows = []
        for j in jobs:
            j.rows_left = j.sampling.n
            rows += [_Row(j, k, RowSampler(j.sampling, k, j.banned_first, j.allowed_first), len(j.prompt_ids)) for k in range(j.sampling.n)]
        return _Prefilled(rows, cache, mask, logits)

    def _join(self, parts: list[_Prefilled]) -> None:
        """Add prefilled rows to the running batch (one copy of the cache, whatever the number of
        parts), each part's cache left-padded to the widest, then pick their first tokens."""
        self._compact()
        running = [] if self._cache is None else [_Prefilled(self._rows, self._cache, self._mask, None)]
        everything = running + parts
        width = max(p.mask.shape[1] for p in everything)
        if len(everything) == 1:
            self._cache = parts[0].cache
        else:
            layers = [p.cache.layers for p in everything]
            for joined in zip(*layers, strict=True):
                joined[0].stack(joined, width)
            self._cache = everything[0].cache
        self._mask = torch.cat([_left_pad_mask(p.mask, width) for p in everything])
        new = [r for p in parts for r in p.rows]
        self._rows = self._rows + new
        self.stats.running += len(new)
        self._take(new, torch.cat([p.logits for p in parts]))

    def _decode(self) -> None:
        rows = self._rows
        ids = torch.tensor([[r.generated[-1] if r.generated else 0] for r in rows], device=self.device)
        self._mask = torch.cat([self._mask, torch.ones((len(rows), 1), dtype=self._mask.dtype, device=self.device)], 1)
        positions = torch.tensor([[r.length] for r in rows], device=self.device)
        adapters = [r.job.adapter or BASE for r in rows]
        logits, self._cache = self._forward(ids, self._mask, positions, adapters, self._cache)
        for r in rows:
            r.length += 1
        self._take(rows, logits)

    def _take(self, rows: list[_Row], logits: torch.Tensor) -> None:
        """Sample each row's next token, send its text, and drop the rows that finished if that pays."""
        live = []
        for k, r in enumerate(rows):
            if r.done:
                continue
            if r.job.cancelled.is_set():
                self._finish(r, Finish.CANCELLED)
            else:
                live.append(k)
        index = torch.tensor(live, device=logits.device)
        picked = pick([(rows[k].sampler, rows[k].generated) for k in live], logits[index]) if live else []
        for k, token in zip(live, picked, strict=True):
            r = rows[k]
            r.generated.append(token)
            self.stats.tokens_generated += 1
            self._emit(r, token)
        self.stats.running = sum(not r.done for r in self._rows)
        if self.stats.running * 4 <= len(self._rows) * 3:
            self._compact()

    def _emit(self, r: _Row, token: int) -> None:
        job = r.job
        if token in job.end_ids:
            text = self._text(r.generated[:-1])
            return self._finish(r, Finish.END_OF_TURN, text=text)
        text = self._text(r.generated)
        cut, reason = _first_stop(text, job.end_strings, job.sampling.stop)
        if cut is not None:
            return self._finish(r, reason, text=text[:cut])
        if len(r.generated) >= job.sampling.max_new_tokens:
            return self._finish(r, Finish.LENGTH, text=text)
        hold = max((len(s) - 1 for s in (*job.end_strings, *job.sampling.stop)), default=0)
        safe = len(text) - hold
        while safe > r.emitted and text[safe - 1] == "\ufffd":  # an incomplete character: wait for its bytes
            safe -= 1
        if safe > r.emitted:
            job.sink(r.index, text[r.emitted : safe], None)
            r.emitted = safe

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _finish(self, r: _Row, reason: Finish, *, text: str | None = None) -> None:
        if r.done:
            return
        r.done = True
        r.job.tokens[r.index] = len(r.generated) - (reason is Finish.END_OF_TURN and bool(r.generated) and r.generated[-1] in r.job.end_ids)
        delta = text[r.emitted :] if text is not None and len(text) > r.emitted else ""
        r.job.sink(r.index, delta, reason)
        r.job.rows_left -= 1
        if r.job.rows_left == 0:
            self.stats.requests_completed += 1

    def _compact(self) -> None:
        """Drop the done rows and their cache rows."""
        keep = [k for k, r in enumerate(self._rows) if not r.done]
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[k] for k in keep]
        if not self._rows:
            self._cache, self._mask = None, None
            return
        index = torch.tensor(keep, device=self.device)
        mask = self._mask[index]
        trim = int((mask.cumsum(1) == 0).sum(1).min())  # leading columns that are padding in every row
        for layer in self._cache.layers:
            layer.keys, layer.values = layer.keys[index, :, trim:], layer.values[index, :, trim:]
        self._mask = mask[:, trim:]


class RoomyLayer(DynamicLayer):
    """A cache layer that appends each step's keys and values into spare room at its end instead
    of copying the whole cache (DynamicLayer's `cat`), which cost as much as the attention.

    `keys` and `values` are views of the buffers; when the engine replaces them (rows joining or
    leaving the batch), the next update moves them into new buffers with room again.
    """

    ROOM = 64  # steps between copies

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        held = self.keys.shape[-2] if self.keys.numel() else 0
        width = held + key_states.shape[-2]
        mine = self._buffers is not None and self.keys.data_ptr() == self._buffers[0].data_ptr() and self.keys.shape[0] == self._buffers[0].shape[0]
        if not mine or width > self._buffers[0].shape[-2]:
            shape = (*key_states.shape[:2], width + self.ROOM, key_states.shape[-1])
            self._buffers = (key_states.new_empty(shape), value_states.new_empty(shape))
            if held:
                self._buffers[0][:, :, :held] = self.keys
                self._buffers[1][:, :, :held] = self.values
        k, v = self._buffers
        k[:, :, held:width] = key_states
        v[:, :, held:width] = value_states
        self.keys, self.values = k[:, :, :width], v[:, :, :width]
        return self.keys, self.values

    def stack(self, layers: list[RoomyLayer], width: int) -> None:
        """Become the rows of `layers` (this one first, perhaps), each left-padded with zeros to
        `width`: one copy into new buffers with room, instead of a pad, a `cat` and a copy."""
        first = layers[0].keys
        shape = (sum(layer.keys.shape[0] for layer in layers), first.shape[1], width + self.ROOM, first.shape[3])
        buffers = (first.new_empty(shape), first.new_empty(shape))
        row = 0
        for layer in layers:
            n, pad = layer.keys.shape[0], width - layer.keys.shape[2]
            for buffer, part in zip(buffers, (layer.keys, layer.values), strict=True):
                buffer[row : row + n, :, :pad] = 0  # padding is masked, but zeros keep NaN out of the sums
                buffer[row : row + n, :, pad:width] = part
            row += n
        self._buffers = buffers
        self.keys, self.values = buffers[0][:, :, :width], buffers[1][:, :, :width]


class RoomyCache(DynamicCache):
    def __init__(self) -> None:
        Cache.__init__(self, layer_class_to_replicate=RoomyLayer)


def _by_length(jobs: list[Job], spread: float = 1.5, tokens: int = 1 << 30) -> list[list[Job]]:
    """Jobs in groups of similar prompt length, so a prefill pads little: each group's longest
    prompt is at most `spread` times its shortest, and a group holds at most `tokens` padded
    tokens (or one job)."""
    groups: list[list[Job]] = []
    for job in sorted(jobs, key=lambda j: len(j.prompt_ids)):
        n = len(job.prompt_ids)
        if groups and n <= spread * len(groups[-1][0].prompt_ids) and n * (len(groups[-1]) + 1) <= tokens:
            groups[-1].append(job)
        else:
            groups.append([job])
    return groups


def _abandon(job: Job) -> None:
    """Tell a job that never ran that each of its candidates is cancelled."""
    for k in range(job.sampling.n):
        job.sink(k, "", Finish.CANCELLED)


def _first_stop(text: str, ends: tuple[str, ...], stops: tuple[str, ...]) -> tuple[int | None, Finish]:
    best: tuple[int | None, Finish] = (None, Finish.STOP)
    for strings, reason in ((ends, Finish.END_OF_TURN), (stops, Finish.STOP)):
        for s in strings:
            at = text.find(s)
            if at >= 0 and (best[0] is None or at < best[0]):
                best = (at, reason)
    return best


def _left_pad_mask(m: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - m.shape[1]
    return m if missing == 0 else torch.cat([m.new_zeros((m.shape[0], missing)), m], 1)


def _fuse_activations(model: Any) -> None:
    """Swap GPT-2's `gelu_new`, written as eight tensor operations, for PyTorch's one-kernel GELU
    with the same tanh approximation: the same function (to float rounding) at about a quarter of
    the cost; it was ~9% of a tiny GPT-2's time on a CPU."""
    from transformers.activations import GELUTanh, NewGELUActivation

    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is NewGELUActivation:
                setattr(parent, name, GELUTanh())


def _keeps_logits(model: Any) -> bool:
    """Whether the model's forward takes `logits_to_keep` (most causal LMs of transformers 5 do)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _takes_logits_to_keep(type(inner))


@functools.cache
def _takes_logits_to_keep(kind: type) -> bool:
    return "logits_to_keep" in inspect.signature(kind.forward).parameters
