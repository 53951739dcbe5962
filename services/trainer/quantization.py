"""QLoRA's base: a model loaded with its linear layers quantized to 4 bits (NF4, bitsandbytes).

Each projection of the attention and the MLP is kept as 4-bit NF4 blocks of 64 weights with
double-quantized scales (about 4.1 bits a weight); embeddings, norms and the output head stay in
the training dtype, and LoRA's adapters train in fp32 over the frozen 4-bit weights. That is a
quarter of a bf16 base's weight memory, what lets a 7B base train on a 24 GB card.

bitsandbytes from 0.49 runs its 4-bit kernels on a CPU as well, so QLoRA runs wherever the
trainer does (on SmolLM2-135M here a QLoRA step takes as long as a LoRA one); a build without
them is refused before a run starts, saying why.

The published adapter is served on the full-precision base (`doppel.model.ModelManifest.is_adapter`):
the inference engine then shares one base among every persona of it, LoRA or QLoRA, and its
batched adapter kernels run on plain weights; it serves a 7B base in bf16 on the same 24 GB card
that needed QLoRA to train it (training, not the weights alone, is what does not fit).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from doppel.errors import FailedPrecondition

if TYPE_CHECKING:
    from transformers import BitsAndBytesConfig


def check() -> None:
    """FailedPrecondition unless bitsandbytes can quantize here."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # noqa: BLE001 - an ImportError, or a library that fails to load its kernels
        raise FailedPrecondition(f"QLoRA needs bitsandbytes >= 0.49, which does not load here ({e}); "
                                 "use method lora instead, or install it: pip install 'bitsandbytes>=0.49'") from None


def config(compute: torch.dtype) -> BitsAndBytesConfig:
    """NF4 with double-quantized scales, computing in `compute` (bf16 on a GPU, fp32 on a CPU)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def load(folder: Path | str, device: torch.device, dtype: torch.dtype) -> Any:
    """The model in `folder` (written by `save_pretrained`) on `device`, its projections in 4 bits,
    the rest in `dtype`, which is also what the 4-bit layers compute in.

    On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks a 4-bit layer's weights for its faster
    inference kernel the first time the layer runs in eval mode without gradients, and never
    packs them back: a training step after any evaluation (the base's held-out loss, say) then
    fails inside that kernel. This base is for training, so the repacking is switched off."""
    from bitsandbytes.nn import Linear4bit
    from transformers import AutoModelForCausalLM

    check()
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype,
                                                 quantization_config=config(dtype), device_map={"": device})
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.support_avx512bf16_for_cpu = False
    return model


def is_quantized(model: Any) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False))
