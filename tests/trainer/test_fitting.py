"""What a run leaves open, chosen from the memory estimate to fit its device (services/trainer/fitting.py)."""

from __future__ import annotations

import torch

from doppel.model import Recipe
from services.trainer import fitting
from services.trainer.loss import CHUNK
from services.trainer.registry import BY_NAME, training_memory

QWEN = {"model_type": "qwen2", "num_hidden_layers": 24, "hidden_size": 896, "num_attention_heads": 14,
        "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": 151936, "tie_word_embeddings": True}
SMOLLM2 = {"model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9,
           "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152, "tie_word_embeddings": True}
GIB = 2**30


def _recipe(**kw) -> Recipe:
    return Recipe(dataset_id="d", speakers=["A"], base_model="qwen2.5-0.5b-instruct", method="full", preset="default",
                  model_name="m", **kw)


def test_checkpointing_goes_on_only_when_the_step_would_not_fit_otherwise():
    recipe = _recipe(batch_size=8, block_size=512)
    shape = BY_NAME["qwen2.5-0.5b-instruct"].shape
    plain = training_memory(shape, "full", batch_size=8, block_size=512, dtype_bytes=2, loss_chunk=CHUNK)
    lean = training_memory(shape, "full", batch_size=8, block_size=512, dtype_bytes=2, checkpointing=True, loss_chunk=CHUNK)
    assert lean < plain

    roomy = fitting.Device("big GPU", free_bytes=2 * plain, total_bytes=2 * plain)
    assert fitting.fit(QWEN, recipe, roomy, dtype_bytes=2) == (recipe.model_copy(update={"gradient_checkpointing": False}), [])
    tight = fitting.Device("small GPU", free_bytes=(lean + plain) // 2, total_bytes=plain)
    fitted, (why,) = fitting.fit(QWEN, recipe, tight, dtype_bytes=2)
    assert fitted == recipe.model_copy(update={"gradient_checkpointing": True})
    assert why.startswith(f"a training step needs about {plain / GIB:.1f} GiB and small GPU has")
    assert why.endswith(f"gradient checkpointing on (about {lean / GIB:.1f} GiB)")
    asked = _recipe(batch_size=8, block_size=512, gradient_checkpointing=False)  # asked for: left as it is
    kept, (warning,) = fitting.fit(QWEN, asked, tight, dtype_bytes=2, asked={"gradient_checkpointing", "batch_size"})
    assert kept == asked and "may run out of memory" in warning
    unknown = fitting.fit({"model_type": "mamba"}, recipe, tight, dtype_bytes=2)  # no estimate: as asked
    assert unknown == (recipe.model_copy(update={"gradient_checkpointing": False}), [])


def test_a_preset_batch_that_does_not_fit_is_split_into_accumulated_passes():
    recipe = _recipe(batch_size=8, block_size=512, gradient_accumulation_steps=2)
    shape = BY_NAME["qwen2.5-0.5b-instruct"].shape
    need = {b: training_memory(shape, "full", batch_size=b, block_size=512, dtype_bytes=2, checkpointing=True,
                                loss_chunk=CHUNK) for b in (8, 4, 2)}
    room = (need[4] + need[2]) // 2
    small = fitting.Device("small GPU", free_bytes=int(room / fitting.HEADROOM), total_bytes=room * 2)
    fitted, said = fitting.fit(QWEN, recipe, small, dtype_bytes=2)
    assert (fitted.batch_size, fitted.gradient_accumulation_steps, fitted.gradient_checkpointing) == (2, 8, True)
    assert said[-1] == f"batch size 8 -> 2 with 8 forward passes a step (the same 16 samples a step) to fit: about {need[2] / GIB:.1f} GiB"
    for asked in ({"batch_size"}, {"gradient_accumulation_steps"}):  # the request's own batch is kept, with a warning
        kept, said = fitting.fit(QWEN, recipe, small, dtype_bytes=2, asked=asked)
        assert (kept.batch_size, kept.gradient_accumulation_steps) == (8, 2) and "may run out of memory" in said[-1]
    none = fitting.Device("no room", free_bytes=1, total_bytes=1)
    fitted, said = fitting.fit(QWEN, recipe, none, dtype_bytes=2)
    assert fitted.batch_size == 1 and fitted.gradient_accumulation_steps == 16
    assert "even with gradient checkpointing" in said[-1] and "QLoRA or LoRA" in said[-1]


def test_each_rank_fits_its_share_of_the_batch():
    """On two GPUs a rank trains half of each batch, so the batch that needed halving on one fits as it is."""
    recipe = _recipe(batch_size=8, block_size=512, gradient_checkpointing=True)
    shape = BY_NAME["qwen2.5-0.5b-instruct"].shape
    need = {b: training_memory(shape, "full", batch_size=b, block_size=512, dtype_bytes=2, checkpointing=True,
                                loss_chunk=CHUNK) for b in (8, 4, 1)}
    gpu = fitting.Device("GPU", free_bytes=int((need[4] + need[8]) / 2 / fitting.HEADROOM), total_bytes=need[8] * 2)
    assert fitting.fit(QWEN, recipe, gpu, dtype_bytes=2)[0].batch_size == 4
    assert fitting.fit(QWEN, recipe, gpu, dtype_bytes=2, ranks=2) == (recipe, [])
    # a full fine-tune's weights and Adam's moments are shared out too: what no batch fits on one GPU fits on four
    one = training_memory(shape, "full", batch_size=1, block_size=512, dtype_bytes=2, checkpointing=True, loss_chunk=CHUNK)
    four = training_memory(shape, "full", batch_size=2, block_size=512, dtype_bytes=2, checkpointing=True, loss_chunk=CHUNK,
                           shards=4)
    assert four < one / 2
    small = fitting.Device("small GPU", free_bytes=int(four * 1.05 / fitting.HEADROOM), total_bytes=one)
    assert fitting.fit(QWEN, recipe, small, dtype_bytes=2, ranks=4) == (recipe, [])
    assert "may run out of memory" in fitting.fit(QWEN, recipe, small, dtype_bytes=2)[1][-1]
    none = fitting.Device("no room", free_bytes=1, total_bytes=1)  # halving stops at one sample a rank
    assert fitting.fit(QWEN, recipe, none, dtype_bytes=2, ranks=2)[0].batch_size == 2
    # on a CPU the ranks share its memory: two ranks of 4 samples are fitted as one of 4 in half the memory
    lora = recipe.model_copy(update={"method": "lora", "gradient_checkpointing": None})
    tight = training_memory(shape, "lora", batch_size=4, block_size=512, dtype_bytes=4, loss_chunk=CHUNK)
    cpu = fitting.Device("CPU", free_bytes=tight * 2, total_bytes=tight * 8)
    half = fitting.Device("CPU", free_bytes=tight, total_bytes=tight * 8)
    fitted, said = fitting.fit(QWEN, lora, cpu, dtype_bytes=4, device_type="cpu", ranks=2)
    alone, _ = fitting.fit(QWEN, lora.model_copy(update={"batch_size": 4}), half, dtype_bytes=4, device_type="cpu")
    assert said and (fitted.max_pass_tokens, fitted.gradient_checkpointing) == (alone.max_pass_tokens, alone.gradient_checkpointing)


def test_the_cpu_reports_its_available_memory():
    found = fitting.device(torch.device("cpu"))
    assert found.name == "CPU" and 0 < found.free_bytes <= found.total_bytes


def test_on_a_cpu_a_batch_goes_in_passes_and_in_smaller_ones_before_checkpointing():
    """On a CPU the loop splits a batch into forward passes (finetune.passes): of 1024 tokens when
    memory is ample (about as fast as a batch at once, under half its memory), of one 512-token sample
    each where it is short, so 8 x 512 of SmolLM2 fits a small laptop without checkpointing."""
    shape = BY_NAME["smollm2-135m-instruct"].shape
    recipe = _recipe(batch_size=8, block_size=512).model_copy(update={"method": "lora"})
    whole, one_pass, one_sample = (training_memory(shape, "lora", batch_size=8, block_size=512, dtype_bytes=4,
                                                   loss_chunk=CHUNK, pass_tokens=n) for n in (None, 1024, 512))
    assert one_sample < one_pass < whole / 2
    heap = fitting.heap.overhead()

    roomy = fitting.Device("CPU", free_bytes=int(2 * whole * heap), total_bytes=64 * GIB)
    fitted, said = fitting.fit(SMOLLM2, recipe, roomy, dtype_bytes=4, device_type="cpu")
    assert (fitted.max_pass_tokens, fitted.gradient_checkpointing, said) == (1024, False, [])
    laptop = fitting.Device("CPU", free_bytes=int(1.1 * one_sample * heap / fitting.HEADROOM), total_bytes=8 * GIB)
    fitted, (why,) = fitting.fit(SMOLLM2, recipe, laptop, dtype_bytes=4, device_type="cpu")
    assert (fitted.max_pass_tokens, fitted.gradient_checkpointing, fitted.batch_size) == (512, False, 8)
    assert f"forward passes of 1024 tokens need about {one_pass * heap / GIB:.1f} GiB" in why
    assert "passes of at most 512 tokens" in why
    asked = recipe.model_copy(update={"max_pass_tokens": 2048})  # set already (a bench, a resumed run): kept
    assert fitting.fit(SMOLLM2, asked, roomy, dtype_bytes=4, device_type="cpu")[0].max_pass_tokens == 2048
    gpu = fitting.Device("GPU", free_bytes=laptop.free_bytes, total_bytes=8 * GIB)  # on a GPU a batch is one pass
    fitted, _ = fitting.fit(SMOLLM2, recipe, gpu, dtype_bytes=4)
    assert fitted.max_pass_tokens is None and fitted.gradient_checkpointing
