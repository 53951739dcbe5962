"""Gradient checkpointing chosen from the memory estimate when a run leaves it open (services/trainer/fitting.py)."""

from __future__ import annotations

import torch

from doppel.model import Recipe
from services.trainer import fitting
from services.trainer.registry import BY_NAME, training_memory

QWEN = {"model_type": "qwen2", "num_hidden_layers": 24, "hidden_size": 896, "num_attention_heads": 14,
        "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": 151936, "tie_word_embeddings": True}
GIB = 2**30


def _recipe(**kw) -> Recipe:
    return Recipe(dataset_id="d", speakers=["A"], base_model="qwen2.5-0.5b-instruct", method="full", preset="default",
                  model_name="m", **kw)


def test_checkpointing_goes_on_only_when_the_step_would_not_fit_otherwise():
    recipe = _recipe(batch_size=8, block_size=512)
    shape = BY_NAME["qwen2.5-0.5b-instruct"].shape
    plain = training_memory(shape, "full", batch_size=8, block_size=512, dtype_bytes=2)
    lean = training_memory(shape, "full", batch_size=8, block_size=512, dtype_bytes=2, checkpointing=True)
    assert lean < plain

    roomy = fitting.Device("big GPU", free_bytes=2 * plain, total_bytes=2 * plain)
    assert fitting.checkpointing(QWEN, recipe, roomy, dtype_bytes=2) == (False, "")
    tight = fitting.Device("small GPU", free_bytes=(lean + plain) // 2, total_bytes=plain)
    on, why = fitting.checkpointing(QWEN, recipe, tight, dtype_bytes=2)
    assert on and why.startswith(f"a training step needs about {plain / GIB:.1f} GiB and small GPU has")
    assert why.endswith(f"gradient checkpointing on (about {lean / GIB:.1f} GiB)")
    tiny = fitting.Device("tiny GPU", free_bytes=lean // 2, total_bytes=lean // 2)
    on, why = fitting.checkpointing(QWEN, recipe, tiny, dtype_bytes=2)
    assert on and "even with gradient checkpointing" in why and "may run out of memory" in why
    assert fitting.checkpointing({"model_type": "mamba"}, recipe, tiny, dtype_bytes=2) == (False, "")  # unknown: as asked


def test_the_cpu_reports_its_available_memory():
    found = fitting.device(torch.device("cpu"))
    assert found.name == "CPU" and 0 < found.free_bytes <= found.total_bytes
