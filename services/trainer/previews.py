"""Preview samples during and after training: what the model says next in a few openings.

A prompt is either a line the user gave (said to the persona by another participant) or the
opening of a held-out session, up to a turn of a chosen speaker. The model writes that
speaker's next turn; it ends where every sampled turn ends (`Transcript.stops`).

Sampling is seeded (`seed + step`, so a resumed run previews the same way) under a forked RNG:
the caller's CPU and CUDA generator states are the same afterwards, so previews never change
the training run's shuffling, dropout or anything else it draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from doppel.model import SampleText
from doppel.transcript import Transcript, Turn

from .finetune import held_out_loss
from .samples import Sample, Session

MAX_CONTEXT_TURNS = 6


@dataclass(frozen=True)
class Opening:
    participants: list[str]
    turns: list[Turn]
    speaker: str


def openings(sessions: Sequence[Session], speakers: Sequence[str], prompts: Sequence[str], n: int = 3) -> list[Opening]:
    """Up to `n` openings: the user's prompts, else the starts of held-out sessions."""
    chosen = list(speakers)
    if prompts:
        other = next((p for s in sessions for p in s.participants if p not in chosen), "User")
        return [Opening([other, *chosen], [Turn(other, p)], chosen[0]) for p in prompts[:n]]
    out = []
    for s in sessions:
        at = next((k for k, t in enumerate(s.turns) if k > 0 and t.speaker in chosen), None)
        if at is not None:
            out.append(Opening(s.participants, s.turns[max(0, at - MAX_CONTEXT_TURNS) : at], s.turns[at].speaker))
        if len(out) == n:
            break
    return out


@torch.no_grad()
def generate(
    model: Any, tokenizer: Any, transcript: Transcript, found: Sequence[Opening], *, step: int = 0, seed: int = 0,
    max_new_tokens: int = 48,
) -> list[SampleText]:
    """One sample per opening, seeded by `seed + step`; the global RNG states are left as they were."""
    device = next(model.parameters()).device
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    out = []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed + step)
        for o in found:
            prompt = transcript.prompt(o.turns, o.participants, o.speaker)
            ids = torch.tensor([transcript.encode(prompt)], device=device)
            generated = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=True,
                temperature=0.8,
                top_p=0.95,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                stop_strings=list(transcript.stops(o.participants)),
                tokenizer=tokenizer,
            )
            text = tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=False)
            shown = "\n".join(f"{t.speaker}: {t.text}" for t in o.turns)
            out.append(SampleText(prompt=shown, text=transcript.one_turn(text, o.participants), step=step, speaker=o.speaker))
    return out


def sampling_point(model: Any, tokenizer: Any, transcript: Transcript, found: Sequence[Opening], held_out: Sequence[Sample],
                   *, pad_id: int, step: int, seed: int) -> tuple[list[SampleText], float]:
    """What a run shows at a sampling point during training: a sample per opening, and the loss over `held_out`."""
    texts = generate(model, tokenizer, transcript, found, step=step, seed=seed)
    return texts, held_out_loss(model, held_out, pad_id=pad_id)[0]
