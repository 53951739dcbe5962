"""A synthetic chat whose style can be learned, as conversations and as a dataset (trainer tests)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from doppel.conversation import Conversation, Message
from doppel.store.base import Store
from services.ingest.pipeline import Target, ingest_file
from support.parsing import jsonl_export

# SmolLM2-135M-Instruct's ChatML template
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

ALICE = ["haha yes totally", "omg no way", "lol same here", "yes yes yes", "haha omg"]
BOB = ["what are you doing tonight", "did you see the match", "are you coming tomorrow", "how was work"]


def chat(conversations: int = 3, messages: int = 120, seed: int = 0, extra: dict[str, int] | None = None) -> list[Conversation]:
    """Bob asks, Alice answers from a tiny repertoire (learnable fast); `extra` adds a few lines by others."""
    rng = random.Random(seed)
    out = []
    for c in range(conversations):
        t = datetime(2024, 3, 1, 9, tzinfo=UTC) + timedelta(days=c)
        msgs = []
        for i in range(messages):
            t += timedelta(minutes=rng.choice([1, 2, 3, 600]))
            sender = "Bob" if i % 2 == 0 else "Alice"
            msgs.append(Message(sender, rng.choice(BOB if sender == "Bob" else ALICE), t))
        for name, n in (extra or {}).items():
            if c == 0:
                msgs += [Message(name, f"hello from {name} {k}", t + timedelta(minutes=k + 1)) for k in range(n)]
        out.append(Conversation(f"c{c}", f"chat {c}", "jsonl", msgs))
    return out


def ingest_chat(store: Store, tmp: Path, conversations: list[Conversation], name: str = "chat") -> str:
    """A dataset in `store` holding `conversations`; its id."""
    rows = [(c.id, m.sender, m.text, m.timestamp.isoformat()) for c in conversations for m in c.messages]
    path = tmp / f"{name}.jsonl"
    path.write_bytes(jsonl_export(*rows))
    return ingest_file(store, path, filename=path.name, target=Target(name=name)).id
