"""Training samples from conversations: sessions, a held-out split by time, token windows.

Each conversation's latest messages (a `held_out_fraction` of them) are held out, so the
evaluation scores turns the model never trained on, with context that is held out too. Both
parts are split into sessions where messages are further apart than `session_gap`; sessions
with no turn by a chosen speaker teach nothing and are dropped.

`tokenise` cuts each session into windows of at most `block_size` tokens. Every chosen
speaker's turn carries the loss in exactly one window, and each window opens with as much
earlier context as fits (at least half the block when the session has it): a window takes new
turns until they fill half the block, then the turns before them back to the block size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

from doppel.conversation import Conversation, Message
from doppel.dataset import order_key
from doppel.errors import InvalidArgument
from doppel.transcript import Encoded, Transcript, Turn

IGNORE = -100  # label of a token that carries no loss


@dataclass
class Session:
    """Consecutive turns of one conversation with no long pause between them."""

    conversation_id: str
    participants: list[str]
    turns: list[Turn]


@dataclass
class Split:
    """Sessions to train on and sessions held out for the evaluation."""

    train: list[Session] = field(default_factory=list)
    held_out: list[Session] = field(default_factory=list)

    def turns(self, speakers: Iterable[str]) -> tuple[int, int]:
        """How many turns by `speakers` each part holds: (train, held out)."""
        chosen = set(speakers)
        return tuple(sum(t.speaker in chosen for s in part for t in s.turns) for part in (self.train, self.held_out))  # type: ignore[return-value]


@dataclass
class Sample:
    """One window: token ids and labels (IGNORE where no loss)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def _sessions(c: Conversation, messages: list[Message], gap: timedelta) -> Iterator[Session]:
    turns: list[Turn] = []
    last = None
    for m in messages:
        at = order_key(m.timestamp)
        if turns and last is not None and at - last > gap:
            yield Session(c.id, list(c.participants or []), turns)
            turns = []
        turns.append(Turn(m.sender, m.text))
        last = at
    if turns:
        yield Session(c.id, list(c.participants or []), turns)


def split_sessions(
    conversations: Iterable[Conversation],
    speakers: Iterable[str],
    *,
    session_gap: timedelta,
    held_out_fraction: float,
) -> Split:
    """Sessions of every conversation, the latest `held_out_fraction` of each held out."""
    if not 0 <= held_out_fraction < 1:
        raise InvalidArgument(f"held_out_fraction must be in [0, 1), not {held_out_fraction}")
    chosen = set(speakers)
    split = Split()
    for c in conversations:
        messages = sorted((m for m in c.messages if m.text.strip()), key=lambda m: order_key(m.timestamp))
        cut = len(messages) - math.floor(len(messages) * held_out_fraction + 1e-9)  # 100 * 0.29 is 28.999...
        for part, out in ((messages[:cut], split.train), (messages[cut:], split.held_out)):
            out.extend(s for s in _sessions(c, part, session_gap) if any(t.speaker in chosen for t in s.turns))
    return split


def tokenise(sessions: Iterable[Session], transcript: Transcript, block_size: int) -> list[Sample]:
    """Windows of at most `block_size` tokens; each chosen speaker's turn is trained in exactly one."""
    samples: list[Sample] = []
    for session in sessions:
        header = transcript.encode(transcript.header(session.participants))
        budget = block_size - len(header)
        if budget < 8:
            raise InvalidArgument(
                f"block_size {block_size} leaves {budget} tokens after the {len(header)}-token system "
                "message: use a larger block size"
            )
        turns = [(_cut(transcript.encode_turn(t), budget), transcript.trains(t)) for t in session.turns]
        samples.extend(_windows(header, turns, budget))
    return samples


def _cut(e: Encoded, budget: int) -> Encoded:
    """A turn longer than the budget keeps its start."""
    return e if len(e.ids) <= budget else Encoded(e.ids[:budget], min(e.n_head, budget))


def _windows(header: list[int], turns: list[tuple[Encoded, bool]], budget: int) -> Iterator[Sample]:
    i = 0
    while i < len(turns):
        while i < len(turns) and not turns[i][1]:
            i += 1  # the context of the next trained turn, not a window of its own
        if i == len(turns):
            return
        end, used = i, 0
        while end < len(turns) and (end == i or used + len(turns[end][0].ids) <= budget // 2):
            used += len(turns[end][0].ids)
            end += 1
        start = i
        while start > 0 and used + len(turns[start - 1][0].ids) <= budget:
            start -= 1
            used += len(turns[start][0].ids)
        ids, labels = list(header), [IGNORE] * len(header)
        for k in range(start, end):
            e, trained = turns[k]
            ids += e.ids
            if trained and k >= i:
                labels += [IGNORE] * e.n_head + e.ids[e.n_head :]
            else:
                labels += [IGNORE] * len(e.ids)
        yield Sample(ids, labels)
        i = end
