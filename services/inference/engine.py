"""The batching engine of one base model: the scheduler of continuous batching across requests and adapters.

One thread runs the loop. Between decoding steps, queued jobs are admitted: their prompts are
prefilled together in groups of similar length (left-padded, one forward pass a group), each
job's row repeated `n` times, and the rows join the running `batch.Batch`. Every step is one
forward pass over every running row, whatever job or LoRA adapter it belongs to (stacked LoRA
weights, `lora.MixedLora`, apply each row's adapter; "__base__" is none), then the batch's
`chooser.NextTokenChooser` picks every row's next token and each row's `decoder.RowDecoder`
turns it into text for the job's sink. A finished or cancelled row is done at once (nothing
more is sampled or sent for it), but its cache rows are dropped only when a quarter of the
batch is done or rows join: dropping copies the whole cache, and that costs more than
carrying a few done rows through some steps. When a step fails, every job in flight gets the
error (`OutOfMemory` or `Internal`) and the engine goes on with the next jobs.

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

from doppel.errors import DoppelError, Internal, OutOfMemory, Overloaded

from .batch import Batch, Row
from .chooser import NextTokenChooser, first_token_bias
from .decoder import RowDecoder, decoder_of
from .kvcache import RoomyCache
from .lora import MixedLora
from .protocol import EngineStats, Finish, Sampling

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
    error: DoppelError | None = None  # set when the engine failed the job (before its rows finish)
    tokens: dict[int, int] = field(default_factory=dict)  # generated tokens of each finished candidate

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class _Prefilled:
    """Rows whose prompts went through a forward pass, as a batch, with their last logits and
    what their first tokens may be (None: anything)."""

    batch: Batch
    logits: torch.Tensor
    first_bias: torch.Tensor | None


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
        self.stats = EngineStats()
        self._decode_text = decoder_of(tokenizer)
        self._queue: deque[Job] = deque()
        self._batch: Batch | None = None
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

    def idle(self) -> bool:
        with self._lock:
            return not self._queue and self._batch is None

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()
        self._thread.join(10)

    # --- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._queue and self._batch is None:
                    self._lock.wait()
                if self._stopping:
                    break
                admitted = self._admit()
            try:
                with self._model_lock, torch.inference_mode():
                    if admitted:
                        self._join([self._prefill(group) for group in _by_length(admitted, tokens=self.prefill_tokens)])
                    if self._batch is not None:
                        self._decode(self._batch)
            except Exception as e:  # noqa: BLE001 - every job in flight learns of it; the engine goes on
                self._fail(e, admitted)
        for row in self._batch.rows if self._batch is not None else []:
            self._finish(row, Finish.CANCELLED)
        for job in self._queue:
            _abandon(job)

    def _admit(self) -> list[Job]:
        room = self.max_batch - self.stats.running
        out: list[Job] = []
        while self._queue and (self._queue[0].sampling.n <= room or self._batch is None and not out):
            job = self._queue.popleft()
            if job.cancelled.is_set():
                _abandon(job)
                continue
            room -= job.sampling.n
            out.append(job)
        self.stats.queued = len(self._queue)
        return out

    def _fail(self, e: Exception, admitted: list[Job]) -> None:
        """A step failed: every job in flight gets the error and its unfinished candidates end; the batch is gone."""
        rows = self._batch.rows if self._batch is not None else []
        jobs = {id(r.job): r.job for r in rows} | {id(j): j for j in admitted}
        log.exception("engine %s: a step with %d requests in flight failed", self.name, len(jobs))
        error = _error_of(e, self.name, len(jobs))
        for job in jobs.values():
            if len(job.tokens) < job.sampling.n:  # not every candidate ended before the failure
                job.error = error
        for row in rows:
            self._finish(row, Finish.CANCELLED)
        for job in admitted:  # prefilled but never joined, or not prefilled at all
            _abandon(job)
        self._batch = None
        self.stats.running = 0

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, adapters: list[str],
                 cache: Any) -> tuple[torch.Tensor, Any]:
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
        adapters = [j.adapter or BASE for j in jobs]
        logits, cache = self._forward(ids.to(self.device), mask.to(self.device), positions.to(self.device), adapters, None)
        mask = mask.to(self.device)
        counts = [j.sampling.n for j in jobs]
        if any(n > 1 for n in counts):
            order = torch.repeat_interleave(torch.arange(len(jobs)), torch.tensor(counts)).to(self.device)
            for layer in cache.layers:
                layer.repeat(order)
            logits, mask = logits[order], mask[order]
        rows, settings, lengths, row_adapters, biases = [], [], [], [], []
        vocabulary = logits.shape[1]
        constrained = any(j.banned_first or j.allowed_first for j in jobs)
        for j, adapter in zip(jobs, adapters, strict=True):
            j.rows_left = j.sampling.n
            bias = first_token_bias(j.banned_first, j.allowed_first, vocabulary) if constrained else None
            for k in range(j.sampling.n):
                decoder = RowDecoder(self._decode_text, end_strings=j.end_strings, stop=j.sampling.stop,
                                     end_ids=j.end_ids, max_new_tokens=j.sampling.max_new_tokens)
                rows.append(Row(j, k, decoder))
                settings.append((j.sampling, k))
                lengths.append(len(j.prompt_ids))
                row_adapters.append(adapter)
                biases.append(bias)
        batch = Batch(rows, cache, mask, torch.tensor(lengths, device=self.device),
                      torch.zeros(len(rows), dtype=torch.long, device=self.device), row_adapters,
                      NextTokenChooser.of(settings, self.device))
        first_bias = torch.stack([b for b in biases if b is not None]).to(self.device) if constrained else None
        return _Prefilled(batch, logits, first_bias)

    def _join(self, parts: list[_Prefilled]) -> None:
        """Add prefilled rows to the running batch (one copy of the cache, whatever the number of
        parts), then pick their first tokens."""
        self._compact()
        start = len(self._batch) if self._batch is not None else 0
        running = [self._batch] if self._batch is not None else []
        self._batch = Batch.concatenate(running + [p.batch for p in parts])
        self.stats.running += len(self._batch) - start
        bias = None
        if any(p.first_bias is not None for p in parts):
            bias = torch.cat([p.first_bias if p.first_bias is not None
                              else p.logits.new_zeros((len(p.batch), p.logits.shape[1]), dtype=torch.float) for p in parts])
        self._take(self._batch, start, torch.cat([p.logits for p in parts]), bias)

    def _decode(self, batch: Batch) -> None:
        ids, mask, positions = batch.step_inputs()
        logits, batch.cache = self._forward(ids, mask, positions, batch.adapters, batch.cache)
        batch.stepped()
        self._take(batch, 0, logits)

    def _take(self, batch: Batch, start: int, logits: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Pick the next token of each row of `batch` from `start` on (their logits), send its
        text, and drop the rows that finished if that pays."""
        rows = batch.rows
        live = []
        for k in range(start, len(rows)):
            r = rows[k]
            if r.done:
                continue
            if r.job.cancelled.is_set():
                self._finish(r, Finish.CANCELLED)
            else:
                live.append(k)
        if live:
            if len(live) == len(rows):  # every row: the chooser's tensors as they are
                picked = batch.chooser.choose(logits, None, bias)
                batch.tokens = picked
            else:
                index = torch.tensor([k - start for k in live], device=logits.device)
                picked = batch.chooser.choose(logits[index], live, None if bias is None else bias[index])
                batch.tokens[torch.tensor(live, device=logits.device)] = picked
            self.stats.tokens_generated += len(live)
            for k, token in zip(live, picked.tolist(), strict=True):
                r = rows[k]
                delta, finish = r.decoder.add(token)
                if finish is not None:
                    self._finish(r, finish, delta)
                elif delta:
                    r.job.sink(r.index, delta, None)
        if self.stats.running * 4 <= len(rows) * 3:
            self._compact()

    def _finish(self, r: Row, reason: Finish, delta: str = "") -> None:
        if r.done:
            return
        r.done = True
        self.stats.running -= 1
        r.job.tokens[r.index] = r.decoder.tokens
        r.job.sink(r.index, delta, reason)
        r.job.rows_left -= 1
        if r.job.rows_left == 0:
            self.stats.requests_completed += 1

    def _compact(self) -> None:
        """Drop the done rows and their cache rows."""
        batch = self._batch
        if batch is None:
            return
        keep = [k for k, r in enumerate(batch.rows) if not r.done]
        if len(keep) == len(batch):
            return
        if not keep:
            self._batch = None
            return
        batch.filter(keep)


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
    """Tell a job that each of its candidates that has not ended is cancelled."""
    for k in range(job.sampling.n):
        if k not in job.tokens:
            job.tokens[k] = 0
            job.sink(k, "", Finish.CANCELLED)


def _error_of(e: Exception, name: str, requests: int) -> DoppelError:
    """What the jobs of a failed step are told: out of memory (smaller work may fit), or a bug."""
    where = f"the inference engine of {name!r}" if name else "the inference engine"
    if isinstance(e, torch.OutOfMemoryError) or isinstance(e, RuntimeError) and "out of memory" in str(e).lower():
        return OutOfMemory(f"{where} ran out of memory with {requests} requests in flight; retry, or ask for "
                           "fewer candidates or a shorter prompt")
    return Internal(f"generation failed in {where}: {type(e).__name__}: {e} (the server log has the traceback)")


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
    return _takes_logits_to_keep(type(inner).forward)


@functools.cache
def _takes_logits_to_keep(forward: Callable[..., Any]) -> bool:
    return "logits_to_keep" in inspect.signature(forward).parameters
