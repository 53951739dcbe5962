"""Synthetic chats for the benchmarks: made-up people saying made-up things, shaped like real exports.

Everything is made on the spot from a seed, so a benchmark needs no data and two runs see the
same text. Most messages are short, some long, a few very long; one sender often writes several
messages in a row; pauses of hours split a chat into sessions. Not a parser's input (bench/ingest.py
and bench/jsonl.py write their own export files): these are the conversations and turns a
parser would have produced.

    synthetic_chats(400, 4)    # bench/train.py: conversations with NAMES[0] in each
    histories(64, seed=0)      # bench/inference.py: chat histories, as (persona speaks, text)
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

NAMES = ["Ann", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jo", "Kai", "Lena", "Max", "Nia",
         "Otto", "Pia", "Quin", "Ravi", "Sol", "Tess", "Uma", "Vik", "Wren", "Xia", "Yves", "Zoe"]
WORDS = [
    "i", "you", "we", "they", "it", "the", "a", "an", "and", "but", "so", "or", "if", "then", "just", "really",
    "very", "too", "not", "no", "yes", "yeah", "ok", "okay", "lol", "haha", "omg", "wait", "what", "why", "how",
    "when", "where", "who", "that", "this", "there", "here", "now", "later", "tonight", "tomorrow", "today",
    "yesterday", "week", "weekend", "morning", "night", "time", "home", "work", "office", "train", "bus", "car",
    "late", "early", "soon", "go", "going", "went", "come", "coming", "get", "got", "make", "made", "see", "saw",
    "know", "think", "thought", "want", "need", "like", "love", "hate", "good", "great", "fine", "bad", "nice",
    "cool", "weird", "funny", "sorry", "thanks", "please", "sure", "maybe", "probably", "definitely", "dinner",
    "lunch", "coffee", "beer", "pizza", "movie", "game", "match", "party", "trip", "flight", "hotel", "beach",
    "city", "station", "mum", "dad", "sister", "brother", "friend", "boss", "team", "meeting", "call", "message",
    "phone", "photo", "video", "link", "song", "did", "you", "see", "that", "was", "so", "good", "i", "can't",
    "believe", "it", "honestly", "same", "here", "let", "me", "know", "send", "me", "the", "address", "we",
    "should", "totally", "do", "that", "again", "are", "you", "free", "on", "saturday", "what", "time", "works",
    "for", "you", "😂", "❤️", "👍"
]


def message_length(rng: random.Random) -> int:
    """A message length in words: mostly short, some long, a few very long."""
    r = rng.random()
    if r < 0.60:
        return rng.randint(1, 6)
    if r < 0.88:
        return rng.randint(7, 20)
    if r < 0.98:
        return rng.randint(21, 60)
    return rng.randint(61, 200)


def message(rng: random.Random, words: int) -> str:
    """`words` random words as a message: capitalised, sometimes with closing punctuation."""
    text = " ".join(rng.choices(WORDS, k=words))
    return text[0].upper() + text[1:] + rng.choice(["", "", "?", "!", "."])


def synthetic_chats(messages: int, conversations: int, seed: int = 0, *, persona: str = NAMES[0],
                    others: Sequence[str] = tuple(NAMES[1:8])) -> list[Any]:
    """`messages` over `conversations` chats with `persona` in each (and 1-4 of `others`): bursts of
    turns, pauses that split sessions. A list of `doppel.conversation.Conversation`."""
    from doppel.conversation import Conversation, Message

    rng = random.Random(seed)
    out = []
    for c in range(conversations):
        n = messages // conversations + (c < messages % conversations)
        people = [persona, *rng.sample(others, 1 if rng.random() < 0.6 else rng.randint(2, 4))]
        t = datetime(2023, 1, 1, 9, tzinfo=UTC) + timedelta(days=c)
        sender, msgs = rng.choice(people), []
        for _ in range(n):
            if rng.random() < 0.07:  # a pause longer than the session gap
                t += timedelta(hours=rng.uniform(7, 72))
            else:
                t += timedelta(seconds=rng.expovariate(1 / 90))
            if rng.random() > 0.35:  # else the same sender goes on
                sender = rng.choice([p for p in people if p != sender])
            msgs.append(Message(sender, message(rng, message_length(rng)), t))
        out.append(Conversation(f"c{c}", f"chat {c}", "jsonl", msgs, participants=people))
    return out


def histories(count: int, seed: int) -> list[list[tuple[bool, str]]]:
    """`count` chat histories of 4-10 turns of 3-16 words, as (persona speaks, text), alternating
    and ending with the user's turn."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = rng.randint(4, 10)
        out.append([((n - 1 - k) % 2 == 1, message(rng, rng.randint(3, 16))) for k in range(n)])
    return out
