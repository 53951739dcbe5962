"""services.trainer.loss and finetune.collate: the fast loss equals the plain computation.

The plain computation is what the loop did before (and what `transformers` does): every sample a
right-padded row, `model(...).logits` at every position, cross-entropy against the shifted labels.
The fast one cuts each sample after its last trained token, packs samples into shared rows, and
projects only scored positions through the head in chunks whose gradient is made in the forward
pass. Same loss and same gradient for every trainable weight, within fp32 rounding: relative
1e-5 on the loss, and each gradient within 1e-4 of its own largest entry (sums are reordered).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from torch.nn import functional as F
from transformers import AutoConfig, AutoModelForCausalLM

from services.trainer import finetune, loss
from services.trainer.finetune import collate
from services.trainer.recipe import LoraSettings, TrainRequest, resolve
from services.trainer.samples import IGNORE, Sample

CPU = torch.device("cpu")
VOCAB = 300
SHAPES: dict[str, dict[str, Any]] = {
    "gpt2": dict(n_layer=2, n_embd=64, n_head=4, n_positions=128, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0),
    "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True),
    "mistral": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False, sliding_window=None),
    "qwen2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False),
}


def model_of(kind: str, method: str) -> Any:
    config = AutoConfig.for_model(kind, vocab_size=VOCAB, **SHAPES[kind])
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    r = resolve(TrainRequest(dataset_id="d", speakers=["A"], base_model="tiny", method=method,  # type: ignore[arg-type]
                             lora=LoraSettings(dropout=0.0)))
    model = finetune.prepare_model(model, r)
    if method == "lora":  # peft starts B at zero: move it, so the adapters' gradients are not trivially equal
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
    return model


def samples(n: int = 9, seed: int = 1, shortest: int = 2) -> list[Sample]:
    """Windows of `shortest` to 90 tokens whose trained spans start and end anywhere (some end untrained)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(shortest, 90)
        ids = [rng.randrange(1, VOCAB) for _ in range(length)]
        labels = [IGNORE] * length
        for _ in range(rng.randint(1, 3)):
            a = rng.randrange(length)
            b = rng.randint(a + 1, length)
            labels[a:b] = ids[a:b]
        out.append(Sample(ids, labels))
    return out


def plain_loss(model: Any, batch: list[Sample]) -> torch.Tensor:
    """The reference: padded rows, every position's logits, shifted labels."""
    width = max(len(s.input_ids) for s in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, s in enumerate(batch):
        ids[r, : len(s.input_ids)] = torch.tensor(s.input_ids)
        labels[r, : len(s.labels)] = torch.tensor(s.labels)
        mask[r, : len(s.input_ids)] = 1
    logits = model(input_ids=ids, attention_mask=mask).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE, reduction="sum")


def gradients(model: Any, value: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    value.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys() and want
    for k in want:
        scale = want[k].abs().max().item()
        assert scale > 0, k
        assert (got[k] - want[k]).abs().max().item() <= 1e-4 * scale, k


@pytest.mark.parametrize("kind", sorted(SHAPES))
@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize(("pack", "shortest"), [(False, 2), (True, 2), (True, 80)])
def test_fast_loss_and_gradients_equal_the_plain_ones(kind: str, method: str, pack: bool, shortest: int) -> None:
    """Packed with shortest 2: rows shared (far fewer rows), block-diagonal attention; shortest 80:
    no two samples fit a row, so a row each and causal attention without a mask, the padding
    after the sample."""
    model = model_of(kind, method)
    model.train()
    assert loss._parts(model) is not None and loss.packable(model)  # the fast path is the one under test
    batch = samples(shortest=shortest)
    rows = collate(batch, 0, CPU, pack=pack)["input_ids"].shape[0]
    assert rows <= finetune.PACK_GAIN * len(batch) if pack and shortest == 2 else rows == len(batch)
    want = plain_loss(model, batch)
    want_grads = gradients(model, want)
    got, n = finetune.token_loss(model, collate(batch, 0, CPU, pack=pack))
    assert n == sum(finetune._scored_tokens(s) for s in batch)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert_same(gradients(model, got), want_grads)


def test_packing_puts_several_samples_in_a_row_and_restarts_their_positions() -> None:
    batch = [Sample([1, 2, 3, 4], [IGNORE, IGNORE, 3, 4]), Sample([5, 6], [IGNORE, 6]), Sample([7, 8, 9], [IGNORE, 8, IGNORE])]
    packed = collate(batch, 0, CPU, pack=True)
    # cut after the last trained token: 3, 1 and 1 tokens; rows as wide as the longest (3)
    assert packed["input_ids"].tolist() == [[1, 2, 3], [5, 7, 0]]
    assert packed["position_ids"].tolist() == [[0, 1, 2], [0, 0, 1]]  # the padding goes on with the last sample
    assert packed["targets"].tolist() == [[IGNORE, 3, 4], [6, 8, IGNORE]]
    assert "attention_mask" not in packed
    # when sharing rows saves too few, a row a sample, positions from 0: plain causal attention, no mask
    alone = collate(batch[:2], 0, CPU, pack=True)
    assert alone["input_ids"].tolist() == [[1, 2, 3], [5, 0, 0]]
    assert alone["position_ids"].tolist() == [[0, 1, 2], [0, 1, 2]]
    padded = collate(batch, 0, CPU)
    assert padded["input_ids"].tolist() == [[1, 2, 3], [5, 0, 0], [7, 0, 0]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0]]


def test_the_chunks_add_up_to_the_whole() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True)
    hidden = torch.randn(37, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    want = F.cross_entropy(head(hidden), targets, reduction="sum")
    want_grads = torch.autograd.grad(want, [hidden, head.weight, head.bias])
    got = loss.linear_cross_entropy(hidden, head, targets, chunk=5)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    for g, w in zip(torch.autograd.grad(got * 3, [hidden, head.weight, head.bias]), want_grads, strict=True):
        torch.testing.assert_close(g, 3 * w, rtol=1e-4, atol=1e-5)


def test_a_head_with_an_adapter_takes_the_plain_path() -> None:
    model = model_of("llama", "full")
    r = resolve(TrainRequest(dataset_id="d", speakers=["A"], base_model="tiny", method="lora",
                             lora=LoraSettings(target_modules=["q_proj", "lm_head"])))
    lora = finetune.prepare_model(model, r)
    assert loss._parts(lora) is None
    batch = samples(4)
    got, _ = finetune.token_loss(lora, collate(batch, 0, CPU, pack=True))
    assert got.item() == pytest.approx(plain_loss(lora, batch).item(), rel=1e-5)


def test_a_batch_split_into_passes_has_the_same_loss_and_gradients() -> None:
    model = model_of("llama", "lora")
    model.train()
    batch = samples(12)
    parts = finetune.passes(batch, 150)
    assert len(parts) > 2 and sorted(map(id, batch)) == sorted(id(s) for p in parts for s in p)
    assert all(len(p) == 1 or len(p) * finetune._needed(p[0]) <= 150 for p in parts)
    whole, n = finetune.token_loss(model, collate(batch, 0, CPU, pack=True))
    want = gradients(model, whole)
    model.zero_grad(set_to_none=True)
    total, count = 0.0, 0
    for part in parts:
        got, k = finetune.token_loss(model, collate(part, 0, CPU, pack=True))
        got.backward()
        total, count = total + got.item(), count + k
    assert (total, count) == (pytest.approx(whole.item(), rel=1e-5), n)
    assert_same({k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}, want)
