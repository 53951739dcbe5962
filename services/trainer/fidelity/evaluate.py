"""The fidelity of a trained model: its replies to each chosen speaker's held-out turns, measured.

Run at the end of every training run (a Prefect task in `flow.py`, whose table becomes an
artifact of the flow run and whose figures go into the model's manifest).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from doppel.transcript import Transcript, body

from ..samples import Split
from . import replies
from .report import Fidelity, measure

LIMIT = 200  # held-out turns answered per speaker
MAX_NEW_TOKENS = 48


def evaluate(model: Any, tokenizer: Any, transcript: Transcript, split: Split, speakers: Sequence[str], *,
             limit: int = LIMIT, seed: int = 0, max_new_tokens: int = MAX_NEW_TOKENS,
             progress: Callable[[int, int], None] | None = None) -> list[Fidelity]:
    """One `Fidelity` per chosen speaker with held-out turns (none without); `progress(done, total)`
    as replies are written."""
    out = []
    train = [t for s in split.train for t in s.turns]
    chosen = {speaker: found for speaker in speakers if (found := replies.targets(split.held_out, speaker, limit=limit))}
    total, written = sum(map(len, chosen.values())), 0

    def done(n: int) -> None:
        nonlocal written
        written += n
        if progress:
            progress(written, total)

    for speaker, found in chosen.items():
        generated = replies.sample(model, tokenizer, transcript, found, seed=seed, max_new_tokens=max_new_tokens, done=done)
        grouped: dict[int, list[str]] = {}
        for target, reply in zip(found, generated, strict=True):
            grouped.setdefault(target.conversation, []).append(reply)
        out.append(measure(
            speaker,
            train_person=[t.text for t in train if t.speaker == speaker],
            train_others=[t.text for t in train if t.speaker != speaker],
            real=[t.real for t in found],
            generated=list(grouped.values()),
            others=sorted({p for t in found for p in t.participants if p != speaker}),
            tokenize=transcript.encode,
            said=[body(t.context[-1]) for t in found],
        ))
    return out
