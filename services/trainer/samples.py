"""Training samples from conversations: sessions, a held-out split by time, token windows.

The evaluation scores turns the model never trained on, with context that is held out too. A
conversation long enough to spare floor(n * `held_out_fraction`) >= 1 messages, and still keep a
chosen speaker's turn for training, has that many of its latest messages held out. Shorter ones
(a Reddit pair, a two-message exchange) cannot be cut, so they are pooled and held out whole: the
latest first (by last message), each that does not overshoot, to about `held_out_fraction` of the
pool's messages, never the last one train has with a chosen speaker's turn. If the chosen
speakers have 20 turns or more and still none is held out, the latest conversation with one of
their turns is held out too (whole if short and not their only one, else from their last turn in
it on), so every dataset big enough gets held-out figures.
Both parts are split into sessions where messages are further apart than `session_gap`; sessions
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
from datetime import datetime, timedelta

from doppel.conversation import Conversation, Message
from doppel.dataset import order_key
from doppel.errors import InvalidArgument
from doppel.transcript import Encoded, Transcript, Turn

IGNORE = -100  # label of a token that carries no loss
MIN_HELD_OUT_SOURCE = 20  # chosen turns from which some are always held out (when the fraction is > 0)


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
    """Sessions of every conversation, the latest `held_out_fraction` held out (see the module doc)."""
    if not 0 <= held_out_fraction < 1:
        raise InvalidArgument(f"held_out_fraction must be in [0, 1), not {held_out_fraction}")
    chosen = set(speakers)
    convs = [
        (c, sorted((m for m in c.messages if m.text.strip()), key=lambda m: order_key(m.timestamp)))
        for c in conversations
    ]
    # held-out messages of each conversation: its tail from cuts[i] on
    cuts = [len(ms) - math.floor(len(ms) * held_out_fraction + 1e-9) for _, ms in convs]  # 100 * 0.29 is 28.999...
    if held_out_fraction > 0:
        _hold_out_short(convs, cuts, chosen, held_out_fraction)
    split = Split()
    for (c, messages), cut in zip(convs, cuts, strict=True):
        for part, out in ((messages[:cut], split.train), (messages[cut:], split.held_out)):
            out.extend(s for s in _sessions(c, part, session_gap) if any(t.speaker in chosen for t in s.turns))
    return split


def _hold_out_short(
    convs: list[tuple[Conversation, list[Message]]], cuts: list[int], chosen: set[str], fraction: float
) -> None:
    """Moves `cuts` so that short conversations are held out whole (the rule in the module doc)."""
    counts = [sum(m.sender in chosen for m in ms) for _, ms in convs]

    def latest_first(i: int) -> tuple[datetime, str, int]:
        return order_key(convs[i][1][-1].timestamp), convs[i][0].id, i

    # short: nothing to spare, or its tail would take all of the chosen speakers' turns in it
    short = [
        i for i, (_, ms) in enumerate(convs)
        if counts[i] and (cuts[i] == len(ms) or not any(m.sender in chosen for m in ms[: cuts[i]]))
    ]
    for i in short:
        cuts[i] = len(convs[i][1])
    in_train = sum(m.sender in chosen for (_, ms), cut in zip(convs, cuts, strict=True) for m in ms[:cut])
    target = fraction * sum(len(convs[i][1]) for i in short)
    held = 0
    for i in sorted(short, key=latest_first, reverse=True):
        n = len(convs[i][1])
        # a conversation goes if that brings the count nearer the target, and never with train's last chosen turn
        if held + n / 2 > target + 1e-9 or in_train == counts[i]:
            continue
        cuts[i], held, in_train = 0, held + n, in_train - counts[i]
    total = sum(counts)
    if total < MIN_HELD_OUT_SOURCE or in_train < total:
        return  # too little to spare, or some chosen turn is already held out
    latest = max((i for i in range(len(convs)) if counts[i]), key=latest_first)
    if latest in short and counts[latest] < total:
        cuts[latest] = 0
    else:
        cuts[latest] = max(k for k, m in enumerate(convs[latest][1]) if m.sender in chosen)


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
