"""QLoRA on this CPU: the tiny GPT-2 loaded in 4 bits by bitsandbytes, trained, and its adapter on the full base."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

from doppel.errors import FailedPrecondition
from doppel.store import open_store
from doppel.transcript import Transcript
from services.trainer import finetune, quantization
from services.trainer.basemodels import load_base_model
from services.trainer.recipe import Hyperparameters, TrainRequest, resolve
from services.trainer.samples import split_sessions, tokenise
from support.chats import chat

BLOCK = 64
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tiny base loaded in 4 bits (and its full-precision files), with samples of the learnable chat."""
    tmp = tmp_path_factory.mktemp("qlora")
    store = open_store((tmp / "store").as_uri())
    texts = [f"{m.sender}: {m.text}" for c in chat() for m in c.messages]
    base = load_base_model("tiny", store, cache_dir=tmp / "cache", texts=texts, block_size=BLOCK,
                           quantize_on=CPU, scratch=tmp / "scratch")
    split = split_sessions(chat(), ["Alice"], session_gap=timedelta(hours=6), held_out_fraction=0.1)
    transcript = Transcript(base.tokenizer, ["Alice"])
    return base, tokenise(split.train, transcript, BLOCK), tokenise(split.held_out, transcript, BLOCK)


def test_the_projections_are_4_bit_and_the_model_still_computes_about_the_same(loaded: Any) -> None:
    from bitsandbytes.nn import Linear4bit
    from transformers import AutoModelForCausalLM

    base, train, _ = loaded
    assert quantization.is_quantized(base.model) and base.written is not None
    layer = base.model.transformer.h[0]
    for module in (layer.attn.c_attn, layer.attn.c_proj, layer.mlp.c_fc, layer.mlp.c_proj):
        assert isinstance(module, Linear4bit) and module.weight.quant_type == "nf4"
    assert not isinstance(base.model.lm_head, Linear4bit)  # the head and embeddings stay in full precision
    full = AutoModelForCausalLM.from_pretrained(base.written, dtype=torch.float32).eval()
    batch = finetune.collate(train[:4], base.tokenizer.pad_token_id, CPU)
    with torch.no_grad():
        q = base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.softmax(-1)
        f = full(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.softmax(-1)
    mask = batch["attention_mask"].bool()
    # NF4 rounds each weight to one of 16 levels: the next-token distributions move, but not far
    assert 0 < (q - f).abs().sum(-1)[mask].mean() < 0.1


def test_qlora_trains_the_adapter_alone_and_its_loss_falls(loaded: Any) -> None:
    base, train, held_out = loaded
    recipe = resolve(TrainRequest(dataset_id="ds", speakers=["Alice"], base_model="tiny", method="qlora",
                                  hyperparameters=Hyperparameters(max_steps=40, batch_size=8, block_size=BLOCK,
                                                                  learning_rate=3e-3, warmup_ratio=0.0, precision="fp32")))
    pad = base.tokenizer.pad_token_id
    before, _ = finetune.held_out_loss(base.model, held_out, pad_id=pad)
    model = finetune.prepare_model(base.model, recipe)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if n in trainable)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if "c_attn.base_layer.weight" in n}
    result = finetune.train(model, train, recipe, pad_id=pad)
    after, _ = finetune.held_out_loss(model, held_out, pad_id=pad)
    first, last = (sum(loss for _, loss in result.losses[i]) / 5 for i in (slice(0, 5), slice(-5, None)))
    assert last < 0.85 * first and after < before, (first, last, before, after)
    assert frozen and all(torch.equal(p, dict(model.named_parameters())[n]) for n, p in frozen.items())


def test_an_evaluation_before_training_leaves_the_4_bit_layers_trainable(loaded: Any) -> None:
    """On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit layer for inference the first time it runs in
    eval mode, and its training step then fails; `quantization.load` turns that off (everywhere, so this
    also holds on a CPU without it)."""
    from bitsandbytes.nn import Linear4bit

    base, _, held_out = loaded
    finetune.held_out_loss(base.model, held_out, pad_id=base.tokenizer.pad_token_id)
    layers = [m for m in base.model.modules() if isinstance(m, Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)


def test_without_bitsandbytes_qlora_is_refused_saying_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what `import bitsandbytes` meets where it is missing
    with pytest.raises(FailedPrecondition, match=r"QLoRA needs bitsandbytes >= 0\.49, which does not load here .*use method lora"):
        quantization.check()
    with pytest.raises(FailedPrecondition, match="QLoRA needs bitsandbytes"):
        quantization.load(tmp_path, CPU, torch.float32)
