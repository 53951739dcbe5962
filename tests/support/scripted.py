"""A transformers causal LM that writes a fixed script, for tests of where sampling ends a turn.

    model = scripted_lm(tokenizer, "line one\\nline two<|endoftext|>\\nBob: more")

After any prompt it generates the script's tokens one a step, whatever the sampling settings
(every other token is at -1e9), for each row of a left-padded batch alike; past the script's
end it repeats its last token. It is the `tiny` GPT-2 underneath, so `generate` treats it as a
real model (cache, attention mask, stop strings).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import GPT2LMHeadModel

from doppel.tiny import tiny_config


class _Scripted(GPT2LMHeadModel):
    script: list[int]
    start: int = 0

    def forward(self, input_ids: Any = None, attention_mask: Any = None, **kwargs: Any) -> Any:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        seen = (cache.get_seq_length() if cache is not None else 0) + input_ids.shape[1]  # positions so far
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if input_ids.shape[1] > 1:  # the prompt (the steps after it feed one token each)
            self.start = seen
        made = seen - self.start  # tokens generated so far
        logits = torch.full_like(out.logits, -1e9)
        logits[:, -1, self.script[min(made, len(self.script) - 1)]] = 0.0
        out.logits = logits
        return out


def scripted_lm(tokenizer: Any, script: str) -> GPT2LMHeadModel:
    """A model that writes `script` (tokenised by `tokenizer`, special tokens parsed) after any prompt."""
    model = _Scripted(tiny_config(len(tokenizer), 128, tokenizer.eos_token_id))
    model.script = list(tokenizer(script, add_special_tokens=False)["input_ids"])
    return model.eval()
