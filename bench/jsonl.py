"""Throughput of the conversation codec (doppel.conversation): zstd JSONL write and read.

Writes 200,000 synthetic messages (1,000 conversations of 200) into an in-memory buffer,
reads them back, and prints messages/s for each direction. The last line is one JSON object
with every figure. Run: `.venv/bin/python bench/jsonl.py [--conversations N] [--per-conv M]`.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import time
from datetime import UTC, datetime, timedelta

from doppel.conversation import Conversation, Message, read_conversations, write_conversations

WORDS = [
    "the", "a", "to", "and", "you", "I", "it", "is", "that", "of", "in", "for", "on", "with", "lol", "ok", "yes",
    "no", "😂", "👩\u200d👩\u200d👧", "café", "tomorrow"
]


def synthetic(n_conv: int, per_conv: int, seed: int = 0) -> list[Conversation]:
    """Conversations of alternating senders, short random texts, half naive and half aware."""
    rng = random.Random(seed)
    start = datetime(2020, 1, 1, tzinfo=UTC)
    out = []
    for c in range(n_conv):
        people = [f"Person {c}-{k}" for k in range(rng.randint(2, 4))]
        t = start + timedelta(days=c)
        naive = c % 2 == 0
        msgs = []
        for i in range(per_conv):
            t += timedelta(seconds=rng.randint(1, 3600), microseconds=rng.randint(0, 999_999))
            text = " ".join(rng.choices(WORDS, k=rng.randint(1, 20)))
            ts = t.replace(tzinfo=None) if naive else t
            reply_to = str(i - 1) if i % 5 == 0 and i else None
            msgs.append(Message(rng.choice(people), text, ts, id=str(i), reply_to=reply_to))
        out.append(Conversation(f"c{c}", f"Chat {c}", "whatsapp" if naive else "messenger", msgs))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversations", type=int, default=1000)
    ap.add_argument("--per-conv", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs")
    args = ap.parse_args()
    convs = synthetic(args.conversations, args.per_conv)
    n_msgs = sum(len(c.messages) for c in convs)

    write_s = read_s = float("inf")
    for _ in range(args.repeat):
        buf = io.BytesIO()
        t0 = time.perf_counter()
        write_conversations(buf, convs)
        write_s = min(write_s, time.perf_counter() - t0)
        data = buf.getvalue()
        t0 = time.perf_counter()
        back = sum(len(c.messages) for c in read_conversations(io.BytesIO(data)))
        read_s = min(read_s, time.perf_counter() - t0)
        assert back == n_msgs

    figures = {
        "messages": n_msgs,
        "conversations": len(convs),
        "write_msgs_per_s": round(n_msgs / write_s),
        "read_msgs_per_s": round(n_msgs / read_s),
        "bytes_per_msg": round(len(data) / n_msgs, 2),
        "compressed_bytes": len(data),
    }
    print(f"{'messages':<20}{n_msgs:>14,}")
    print(f"{'write msgs/s':<20}{figures['write_msgs_per_s']:>14,}")
    print(f"{'read msgs/s':<20}{figures['read_msgs_per_s']:>14,}")
    print(f"{'bytes/msg (zstd)':<20}{figures['bytes_per_msg']:>14}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
