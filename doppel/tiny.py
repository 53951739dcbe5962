"""The `tiny` base model: a random 2-layer GPT-2 and a byte-level BPE tokenizer trained on the spot.

It learns nothing useful and trains in seconds, which makes it the base model of tests and CI
(`base_model="tiny"` in a training request) and the model the inference tests and benchmarks
run their engines on. It lives in the library because the trainer builds it as a base model
and the tests of every service need the same one, without importing the trainer:

    from doppel.tiny import tiny_model
    model, tokenizer = tiny_model(["Alice: hi", "Bob: hey"], seed=0, block_size=128)

Deterministic per seed (the caller's random generator is left as it was); needs torch,
transformers and tokenizers, imported on the first call.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import GPT2Config, PreTrainedModel, PreTrainedTokenizerFast

SPECIAL = "<|endoftext|>"  # the tiny tokenizer's bos, eos, pad and unk


def tiny_config(vocab_size: int, block_size: int, eos_id: int) -> GPT2Config:
    """The tiny GPT-2's shape: 2 layers, 128 wide, 4 heads, at least 128 positions."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=max(block_size, 128),
        n_layer=2,
        n_embd=128,
        n_head=4,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )


def tiny_model(
    texts: Iterable[str], *, seed: int = 0, block_size: int = 512, vocab_size: int = 2048
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A random 2-layer GPT-2 and a byte-level BPE tokenizer trained on `texts`; deterministic per seed."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, whatever the texts hold
        show_progress=False,
    )
    bpe.train_from_iterator((t for t in texts if t), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=SPECIAL,
        eos_token=SPECIAL,
        pad_token=SPECIAL,
        unk_token=SPECIAL,
        model_max_length=max(block_size, 128),
        clean_up_tokenization_spaces=False,
    )
    config = tiny_config(len(tokenizer), block_size, tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):  # seeded without disturbing the caller's generator
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    return model, tokenizer
