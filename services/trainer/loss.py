"""The training loss, computed only where it is scored.

A causal LM's loss needs logits only at the positions whose next token is trained: the persona's
turns. `model(...).logits` projects every position onto the whole vocabulary (49k for SmolLM2)
and keeps those logits, their log-softmax and their gradient: the largest tensors of a step and,
on a small base, a large share of its time. Here the backbone's hidden states are gathered at the
scored positions only, and the head and the cross-entropy run over them in chunks whose gradient
(with respect to the hidden states, and to the head's weight when it trains) is computed in the
forward pass, so no logits outlive their chunk: the "fused linear cross-entropy" of Liger and
Apple's Cut Cross-Entropy, in plain PyTorch.

This is exact, not an approximation: tests/trainer/test_loss.py checks the loss and every
gradient against `model(...).logits` and `F.cross_entropy`. Architectures whose causal-LM head
is not a plain linear map of the backbone's output (soft-capped or scaled logits, an adapter on
the head) take the plain path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .samples import IGNORE

CHUNK = 1024  # scored positions projected at once: 1024 x 49k fp32 logits are 200 MB
# causal LMs whose logits are `lm_head(backbone(...).last_hidden_state)`, checked by the tests
FUSED_ARCHITECTURES = frozenset({"llama", "qwen2", "mistral", "gpt2"})  # every one Doppel trains


def _parts(model: Any) -> tuple[nn.Module, nn.Linear] | None:
    """The backbone and the head of `model` (a causal LM, maybe wrapped by peft) when the fused
    loss applies to it; None when it does not."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    if getattr(lm.config, "model_type", None) not in FUSED_ARCHITECTURES or type(head) is not nn.Linear:
        return None
    backbone = getattr(lm, lm.base_model_prefix, None)
    return (backbone, head) if isinstance(backbone, nn.Module) else None


def packable(model: Any) -> bool:
    """Whether samples may share a row: the architecture keeps attention within each sample when
    its positions start again at 0 and there is no attention mask (transformers' packed-sequence
    masks, for the SDPA and eager attentions), as the tests check."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = lm.config
    return config.model_type in FUSED_ARCHITECTURES and getattr(config, "_attn_implementation", None) in ("sdpa", "eager")


class _LinearCrossEntropy(torch.autograd.Function):
    """sum over rows of cross_entropy(hidden @ weight.T + bias, targets), its gradients made in the forward pass."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, chunk: int) -> torch.Tensor:
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        want_b = bias is not None and ctx.needs_input_grad[2]
        grad_h = torch.empty_like(hidden) if want_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if want_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and want_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start : start + chunk], targets[start : start + chunk]
            logits = F.linear(h, weight, bias).float()  # autocast, when on, picks the matmul's dtype
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if not (want_h or want_w or want_b):
                continue
            d = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
            d[torch.arange(len(t), device=d.device), t] -= 1  # d loss / d logits
            if want_h:
                grad_h[start : start + chunk] = (d.to(weight.dtype) @ weight).to(hidden.dtype)  # type: ignore[index]
            if want_w:
                grad_w += d.T @ h.float()  # type: ignore[operator]
            if want_b:
                grad_b += d.sum(0)  # type: ignore[operator]
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        if grad_b is not None and bias is not None:
            grad_b = grad_b.to(bias.dtype)
        ctx.save_for_backward(*(g if g is not None else torch.empty(0) for g in (grad_h, grad_w, grad_b)))
        ctx.wants = (want_h, want_w, want_b)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        grad_h, grad_w, grad_b = ((g * grad.to(g.dtype)) if want else None for g, want in zip(saved, ctx.wants, strict=True))
        return grad_h, grad_w, grad_b, None, None


def linear_cross_entropy(hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """Summed cross-entropy of `head(hidden)` (rows x hidden) against `targets` (rows), by chunks."""
    return _LinearCrossEntropy.apply(hidden, head.weight, head.bias, targets, chunk)


def token_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the batch's scored positions (`targets`, already shifted: the token
    each position must predict, IGNORE where none is trained), and how many there are.

    `batch` holds `input_ids` and `targets`, and `attention_mask` (padded rows) or `position_ids`
    (packed rows: each sample's positions start again at 0, and attention stays within a sample).
    """
    targets = batch["targets"]
    scored = targets != IGNORE
    n = int(scored.sum())
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    parts = _parts(model)
    if parts is None:
        logits = model(**inputs, use_cache=False).logits
        loss = F.cross_entropy(logits[scored].float(), targets[scored], reduction="sum")
        return loss, n
    backbone, head = parts
    hidden = backbone(**inputs, use_cache=False).last_hidden_state
    return linear_cross_entropy(hidden[scored], head, targets[scored]), n
