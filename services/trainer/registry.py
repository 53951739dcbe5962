"""The curated registry of base models: what people fine-tune personas from, and what each needs.

Each entry names a model on the Hugging Face Hub with the shape of its network (read from its
`config.json`), from which its parameter count and the memory a training run needs are computed
rather than typed in: one formula for every entry, checked against measured peaks
(`bench/memory.py`; bench/RESULTS.md, "Training memory"). The seeds' GPT-2s, SmolLM2, Qwen2.5
and Llama 3.2 (gated: accept its license on the Hub and set HF_TOKEN).

Memory of a training step, in bytes (`training_memory`):

* weights: parameters x bytes per parameter of the training dtype (QLoRA: the projections in 4-bit
  blocks, ~0.56 byte a weight with their scales, the embeddings and norms in the training dtype),
  plus, for LoRA and QLoRA, the adapters in fp32;
* gradients and AdamW state of what is trained: 4 + 8 bytes per trained parameter (fp32), and
  an fp32 master copy under mixed precision for full training;
* activations of one micro-batch of `batch x block` tokens, per layer, in the training dtype: what
  the layer keeps for the backward pass, per token 8 values of `hidden`, 2 of the key/value
  width and 4 of `intermediate` (the norms' inputs and outputs, query, key, value and the
  attention's output, the MLP's projections and activation: what PyTorch keeps for the
  Transformers modules, measured), plus for LoRA one value per input of an adapted projection
  (the adapter's dropout keeps its output and mask, while the frozen projections keep no input
  for a weight gradient); attention computed without materialising its scores, unless told it
  does (`attention_scores`: 3 values per score, see `keeps_attention_scores`). With gradient
  checkpointing: one `hidden` per layer (its input) and one layer's activations, recomputed in
  the backward pass;
* the logits of the scored positions in fp32, three times: the log-probabilities the loss keeps,
  their gradient and the logits' gradient, all alive as the backward pass starts (the peak).

For full training this counts every gradient at the peak, where only the last layers' exist
yet: a slight overestimate. Checked on a CPU in fp32 (the tiny GPT-2 and SmolLM2-135M, LoRA and
full, 8 x 256 and 8 x 512 tokens): within 10% of the measured peaks, 19% with checkpointing; not
yet on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from doppel.errors import InvalidArgument
from doppel.model import Method

# Architectures (config.json `model_type`) the trainer fine-tunes and the engine serves: GPT-2, and
# the Llama family (SmolLM2, Llama 3, Qwen2/2.5 and Mistral share its layout).
LLAMA_LIKE = ("llama", "qwen2", "mistral")
SUPPORTED_TEXT = "gpt2 (GPT-2), llama (Llama, SmolLM2), qwen2 (Qwen2, Qwen2.5), mistral (Mistral)"
LORA_RANK = 16  # the recipe's default rank; adapters on every attention and MLP projection


def check_architecture(config: dict[str, Any]) -> str:
    """The `model_type` of a config (as config.json or the hub's model info gives it), if Doppel trains
    and serves it; else InvalidArgument with the list of those it does."""
    kind = str(config.get("model_type") or "")
    if kind != "gpt2" and kind not in LLAMA_LIKE:
        raise InvalidArgument(f"architecture {kind or 'unknown'!r} ({', '.join(config.get('architectures') or [])}) "
                              f"is not one Doppel trains and serves; these are: {SUPPORTED_TEXT}")
    return kind


@dataclass(frozen=True)
class Shape:
    """A decoder-only transformer's size, as its config.json gives it."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    positions: int  # 0 for rotary models (no learned position table)
    tied: bool  # input embedding shared with the output projection
    gated_mlp: bool  # three MLP matrices (SwiGLU: Llama, Qwen, SmolLM2) or two (GPT-2)
    biases: bool = False  # GPT-2 has biases and LayerNorm (two vectors per norm)
    qkv_bias: bool = False  # Qwen2 has biases on the query, key and value projections only

    @property
    def parameters(self) -> int:
        h, kv = self.hidden, self.hidden * self.kv_heads // self.heads
        attention = h * h + 2 * h * kv + h * h
        mlp = (3 if self.gated_mlp else 2) * h * self.intermediate
        norms = (4 if self.biases else 2) * h
        biases = (h + 2 * kv + h + self.intermediate + h) if self.biases else (h + 2 * kv) if self.qkv_bias else 0
        per_layer = attention + mlp + norms + biases
        embeddings = self.vocab * h + self.positions * h
        head = 0 if self.tied else self.vocab * h
        final_norm = (2 if self.biases else 1) * h
        return self.layers * per_layer + embeddings + head + final_norm

    @classmethod
    def of(cls, config: dict[str, Any]) -> Shape:
        """The shape a `config.json` describes; InvalidArgument for an architecture Doppel does not run."""
        kind = check_architecture(config)
        if kind == "gpt2":
            h = int(config["n_embd"])
            return cls(int(config["n_layer"]), h, int(config["n_head"]), int(config["n_head"]),
                       int(config.get("n_inner") or 4 * h), int(config["vocab_size"]), int(config["n_positions"]),
                       bool(config.get("tie_word_embeddings", True)), False, True)
        if kind in LLAMA_LIKE:
            heads = int(config["num_attention_heads"])
            return cls(int(config["num_hidden_layers"]), int(config["hidden_size"]), heads,
                       int(config.get("num_key_value_heads") or heads), int(config["intermediate_size"]),
                       int(config["vocab_size"]), 0, bool(config.get("tie_word_embeddings", False)), True,
                       qkv_bias=kind == "qwen2" or bool(config.get("attention_bias", False)))
        raise AssertionError(kind)  # check_architecture let through a kind without a shape

    @property
    def kv_width(self) -> int:
        return self.hidden * self.kv_heads // self.heads

    @property
    def projections(self) -> list[tuple[int, int]]:
        """(in, out) of a layer's attention and MLP projections: where LoRA puts its adapters."""
        h, kv, i = self.hidden, self.kv_width, self.intermediate
        gated = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]  # q, k, v, o, gate, up, down
        gpt2 = [(h, 3 * h), (h, h), (h, i), (i, h)]  # one fused qkv, the attention output, two MLP matrices
        return gated if self.gated_mlp else gpt2

    def lora_parameters(self, rank: int = LORA_RANK) -> int:
        """Adapters of rank `rank` on every attention and MLP projection (A: in x r, B: r x out)."""
        return self.layers * sum(rank * (a + b) for a, b in self.projections)


@dataclass(frozen=True)
class Entry:
    """A base model of the curated registry."""

    name: str
    hub_id: str
    description: str
    shape: Shape
    chat_template: bool
    license: str
    gated: bool = False


def _gpt2(layers: int, hidden: int, heads: int) -> Shape:
    return Shape(layers, hidden, heads, heads, 4 * hidden, 50257, 1024, True, False, True)


CURATED: tuple[Entry, ...] = (
    Entry("gpt2", "openai-community/gpt2", "GPT-2 124M: the seeds' base; plain transcripts, no chat template",
          _gpt2(12, 768, 12), False, "mit"),
    Entry("gpt2-medium", "openai-community/gpt2-medium", "GPT-2 355M", _gpt2(24, 1024, 16), False, "mit"),
    Entry("gpt2-large", "openai-community/gpt2-large", "GPT-2 774M", _gpt2(36, 1280, 20), False, "mit"),
    Entry("gpt2-xl", "openai-community/gpt2-xl", "GPT-2 1.5B: the largest GPT-2", _gpt2(48, 1600, 25), False, "mit"),
    Entry("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct",
          "SmolLM2-135M-Instruct, the original bf16 weights (the offline default is its 4-bit GGUF)",
          Shape(30, 576, 9, 3, 1536, 49152, 0, True, True), True, "apache-2.0"),
    Entry("smollm2-360m-instruct", "HuggingFaceTB/SmolLM2-360M-Instruct", "SmolLM2-360M-Instruct: still fine on a CPU",
          Shape(32, 960, 15, 5, 2560, 49152, 0, True, True), True, "apache-2.0"),
    Entry("smollm2-1.7b-instruct", "HuggingFaceTB/SmolLM2-1.7B-Instruct", "SmolLM2-1.7B-Instruct",
          Shape(24, 2048, 32, 32, 8192, 49152, 0, True, True), True, "apache-2.0"),
    Entry("qwen2.5-0.5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B-Instruct: multilingual",
          Shape(24, 896, 14, 2, 4864, 151936, 0, True, True, qkv_bias=True), True, "apache-2.0"),
    Entry("qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct", "Qwen2.5-1.5B-Instruct",
          Shape(28, 1536, 12, 2, 8960, 151936, 0, True, True, qkv_bias=True), True, "apache-2.0"),
    Entry("qwen2.5-3b-instruct", "Qwen/Qwen2.5-3B-Instruct", "Qwen2.5-3B-Instruct",
          Shape(36, 2048, 16, 2, 11008, 151936, 0, True, True, qkv_bias=True), True, "qwen-research"),
    Entry("qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct", "Qwen2.5-7B-Instruct: QLoRA on a 24 GB GPU",
          Shape(28, 3584, 28, 4, 18944, 152064, 0, False, True, qkv_bias=True), True, "apache-2.0"),
    Entry("llama-3.2-1b-instruct", "meta-llama/Llama-3.2-1B-Instruct", "Llama 3.2 1B Instruct (gated)",
          Shape(16, 2048, 32, 8, 8192, 128256, 0, True, True), True, "llama3.2", gated=True),
    Entry("llama-3.2-3b-instruct", "meta-llama/Llama-3.2-3B-Instruct", "Llama 3.2 3B Instruct (gated)",
          Shape(28, 3072, 24, 8, 8192, 128256, 0, True, True), True, "llama3.2", gated=True),
)
BY_NAME = {e.name: e for e in CURATED}
BY_HUB_ID = {e.hub_id.lower(): e for e in CURATED}


def keeps_attention_scores(config: dict[str, Any], device_type: str) -> bool:
    """Whether training this config on this device ("cpu", "cuda") keeps each layer's attention
    scores: PyTorch's fused attention on a CPU takes no dropout, so a model with attention dropout
    (GPT-2's `attn_pdrop`) falls back to the math kernel there, which keeps them."""
    dropout = config.get("attn_pdrop") if config.get("model_type") == "gpt2" else config.get("attention_dropout")
    return device_type == "cpu" and float(dropout or 0) > 0


def training_memory(shape: Shape, method: Method, *, batch_size: int, block_size: int, dtype_bytes: int = 2,
                    checkpointing: bool = False, scored: float = 1.0, attention_scores: bool = False,
                    adapter_dropout: bool = False, loss_chunk: int | None = None, pass_tokens: int | None = None,
                    shards: int = 1) -> int:
    """Bytes a training step needs at its peak (see the module docstring); `scored`: the share of
    positions whose logits are computed (1.0: all of them); `attention_scores`: the attention keeps
    its scores (`keeps_attention_scores`); `adapter_dropout`: LoRA's dropout is on; `loss_chunk`:
    the loss projects this many positions at a time (`loss.CHUNK`; None: all at once);
    `pass_tokens`: a batch is split into forward passes of this many tokens (`finetune.passes`);
    `shards`: a full fine-tune's weights and their states are shared out over this many ranks (FSDP,
    `parallel.py`), each of which gathers one block at a time (not counted)."""
    p = shape.parameters
    if method == "full":
        weights = p * dtype_bytes
        trained = p
        states = trained * (4 + 8) + (trained * 4 if dtype_bytes < 4 else 0)  # grads, AdamW, fp32 master copy
        weights, states = weights // shards, states // shards
    else:
        trained = shape.lora_parameters()
        quantized = shape.layers * sum(a * b for a, b in shape.projections) if method == "qlora" else 0
        weights = quantized * 9 // 16 + (p - quantized) * dtype_bytes + trained * 4
        states = trained * (4 + 8)
    tokens = batch_size * block_size if pass_tokens is None else min(batch_size * block_size, max(pass_tokens, block_size))
    kept = 8 * shape.hidden + 2 * shape.kv_width + 4 * shape.intermediate  # values per token a layer keeps
    if method != "full" and adapter_dropout:
        kept += sum(a for a, _ in shape.projections)  # the adapters' dropout: output and mask, less the frozen inputs
    layer = tokens * kept * dtype_bytes
    if attention_scores:
        layer += 3 * batch_size * shape.heads * block_size**2 * dtype_bytes  # softmax, dropout mask, dropped
    # with checkpointing: each layer's input, and one layer's activations as the backward pass recomputes it
    activations = shape.layers * tokens * shape.hidden * dtype_bytes + layer if checkpointing else shape.layers * layer
    if loss_chunk is None:
        logits = int(tokens * scored) * shape.vocab * 4 * 3
    else:  # one chunk's logits, turned into their gradient in place, and its product with the head
        logits = min(int(tokens * scored), loss_chunk) * shape.vocab * 4 * 2
    return weights + states + activations + logits
