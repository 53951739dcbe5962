"""The replies to measure: the model answering the held-out turns of its person, in their real context.

A target is one held-out turn of the chosen speaker that follows at least one turn: its context
is the turns before it in its session (the latest `MAX_CONTEXT_TURNS`), and the real reply is
what the person wrote. The model writes that speaker's next turn from the same prompt a chat
would give it (`Transcript.prompt`), sampled as the service samples by default (temperature 0.8,
top-p 0.95) and ended by the same rule (`Transcript.stops`, then `one_turn`). Prompts go in
left-padded batches of similar length; sampling is seeded under a forked RNG, so the caller's generators are left
as they were (a run evaluates after training, and may go on).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from doppel.transcript import Transcript, Turn

from ..samples import Session

MAX_CONTEXT_TURNS = 8
TEMPERATURE, TOP_P = 0.8, 0.95  # the inference service's defaults (doppel.v1 SamplingParams)


@dataclass(frozen=True)
class Target:
    conversation: int  # which held-out session (replies of one are measured for loops together)
    participants: list[str]
    context: list[Turn]
    speaker: str
    real: str


def targets(sessions: Sequence[Session], speaker: str, *, limit: int = 200) -> list[Target]:
    """Up to `limit` held-out turns of `speaker` with their context, in order."""
    out: list[Target] = []
    for c, s in enumerate(sessions):
        for k, turn in enumerate(s.turns):
            if k and turn.speaker == speaker:
                out.append(Target(c, s.participants, s.turns[max(0, k - MAX_CONTEXT_TURNS) : k], speaker, turn.text))
                if len(out) == limit:
                    return out
    return out


@torch.no_grad()
def sample(model: Any, tokenizer: Any, transcript: Transcript, found: Sequence[Target], *, seed: int = 0,
           max_new_tokens: int = 64, batch_size: int = 16, done: Callable[[int], None] | None = None) -> list[str]:
    """The model's reply to each target, in order; `done(n)` after each batch of `n`."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    room = int(getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None) or 2048)
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    encoded = [transcript.encode(transcript.prompt(t.context, t.participants, t.speaker))[-(room - max_new_tokens):]
               for t in found]
    # batches of prompts of similar length: left padding is work for nothing (most of the time is the prompts)
    order = sorted(range(len(found)), key=lambda k: len(encoded[k]))
    replies: dict[int, str] = {}
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for start in range(0, len(found), batch_size):
            chosen = order[start : start + batch_size]
            batch = [found[k] for k in chosen]
            prompts = [encoded[k] for k in chosen]
            width = max(map(len, prompts))
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, p in enumerate(prompts):
                ids[r, width - len(p) :] = torch.tensor(p)
                mask[r, width - len(p) :] = 1
            stops = sorted({s for t in batch for s in transcript.stops(t.participants)})
            out = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id, stop_strings=stops, tokenizer=tokenizer,
            )
            for k, t, row in zip(chosen, batch, out[:, width:], strict=True):
                text = tokenizer.decode(row, skip_special_tokens=False)
                replies[k] = transcript.one_turn(text, t.participants)
            if done:
                done(len(batch))
    return [replies[k] for k in range(len(found))]
