"""LoRA, QLoRA and full training on a GPU, and the memory estimate there (`pytest -m gpu` on a machine with CUDA).

Self-contained: random models of real shapes (SmolLM2-135M's) and the tiny GPT-2, nothing to
download. The memory case prints its figures; the bound is the issue's (within 25%).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

from doppel.transcript import Transcript
from services.trainer import finetune, quantization
from services.trainer.loss import CHUNK
from services.trainer.recipe import Hyperparameters, TrainRequest, resolve
from services.trainer.registry import BY_NAME, Shape, training_memory
from services.trainer.samples import Sample, split_sessions, tokenise
from support.chats import chat

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = torch.device("cuda")
SMOLLM2 = BY_NAME["smollm2-135m-instruct"].shape


def _recipe(method: str, **hp: Any) -> Any:
    hp = {"block_size": 128, "batch_size": 8, "learning_rate": 3e-3, "warmup_ratio": 0.0, "save_every": 10**6, **hp}
    return resolve(TrainRequest(dataset_id="d", speakers=["Alice"], base_model="tiny", method=method,  # type: ignore[arg-type]
                                hyperparameters=Hyperparameters(**hp)))


def _llama(shape: Shape, folder: Path) -> Path:
    """A random Llama of `shape` saved to `folder` (bf16), with the tiny tokenizer's vocabulary size."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=shape.hidden, intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
                         num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, vocab_size=shape.vocab,
                         tie_word_embeddings=shape.tied, max_position_embeddings=2048)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder)
    return folder


def _windows(vocab: int, batch: int, block: int, count: int) -> list[Sample]:
    g = torch.Generator().manual_seed(0)
    return [Sample(ids, list(ids)) for ids in torch.randint(0, vocab, (count * batch, block), generator=g).tolist()]


def test_lora_trains_a_bf16_base_with_fp32_adapters_and_learns(tmp_path: Path) -> None:
    from doppel.store import open_store
    from services.trainer.basemodels import load_base_model

    recipe = _recipe("lora", max_steps=40)
    assert finetune.weights_dtype(recipe, CUDA) == torch.bfloat16
    texts = [f"{m.sender}: {m.text}" for c in chat() for m in c.messages]
    base = load_base_model("tiny", open_store((tmp_path / "s").as_uri()), cache_dir=tmp_path / "c", texts=texts,
                           block_size=128, dtype=finetune.weights_dtype(recipe, CUDA))
    split = split_sessions(chat(), ["Alice"], session_gap=timedelta(hours=6), held_out_fraction=0.1)
    train = tokenise(split.train, Transcript(base.tokenizer, ["Alice"]), 128)
    model = finetune.prepare_model(base.model.to(CUDA), recipe)
    dtypes = {p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert dtypes == {torch.float32} and model.get_base_model().lm_head.weight.dtype == torch.bfloat16
    losses = finetune.train(model, train, recipe, pad_id=base.tokenizer.pad_token_id).losses
    assert sum(x for _, x in losses[-5:]) < 0.85 * sum(x for _, x in losses[:5])


def test_qlora_computes_in_bf16_over_4_bit_projections_and_learns(tmp_path: Path) -> None:
    from bitsandbytes.nn import Linear4bit

    shape = Shape(2, 128, 4, 2, 256, 512, 0, True, True)
    model = quantization.load(_llama(shape, tmp_path / "llama"), CUDA, torch.bfloat16)
    proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(proj, Linear4bit) and proj.compute_dtype == torch.bfloat16 and proj.weight.device.type == "cuda"
    recipe = _recipe("qlora", max_steps=30)
    model = finetune.prepare_model(model, recipe)
    samples = [Sample(s.input_ids, s.labels) for s in _windows(shape.vocab, 1, 32, 4)] * 16  # a few memorisable rows
    losses = finetune.train(model, samples, recipe, pad_id=0).losses
    assert losses[-1][1] < 0.5 * losses[0][1]


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_the_training_memory_estimate_holds_on_the_gpu(tmp_path: Path, method: str) -> None:
    from transformers import AutoModelForCausalLM

    batch, block = 8, 256
    folder = _llama(SMOLLM2, tmp_path / "smollm2-shape")
    recipe = _recipe(method, max_steps=3, batch_size=batch, block_size=block, gradient_checkpointing=False)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    dtype = finetune.weights_dtype(recipe, CUDA)
    model = (quantization.load(folder, CUDA, dtype) if method == "qlora"
             else AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(CUDA))
    model = finetune.prepare_model(model, recipe)
    finetune.train(model, _windows(SMOLLM2.vocab, batch, block, 3), recipe, pad_id=0)
    measured = torch.cuda.max_memory_allocated() - before
    estimate = training_memory(SMOLLM2, method, batch_size=batch, block_size=block, dtype_bytes=2,  # bf16 autocast
                               loss_chunk=CHUNK)
    print(f"{torch.cuda.get_device_name()} smollm2-135m shape {method} {batch}x{block}: estimate "
          f"{estimate / 2**20:,.0f} MiB, measured {measured / 2**20:,.0f} MiB, ratio {estimate / measured:.2f}")
    assert 0.75 <= estimate / measured <= 1.25
