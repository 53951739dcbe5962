"""How the turns of a chat become model text, the same way for training and for sampling.

A turn is rendered as `Name: text`. With a chat template (SmolLM2's ChatML, Llama's, Qwen's...)
each turn is one message of the template: the chosen speakers' turns are the assistant's, the
others' the user's, after a system message naming the participants. A model without a template
(GPT-2, `tiny`) gets plain `Name: text` lines. Training puts the loss on the chosen speakers'
turns (`Name: text` and the turn's end marker, not the role header), so the model learns who
speaks and what they say, and where a turn ends. Sampling (inference, and the previews during
training) ends a turn by one rule, `Transcript.stops`: at that marker, or at a new line opened
as any participant.

The template is reduced once to the text around one message of each role (rendered around a
sentinel), so every turn is rendered and tokenised on its own, once, and windows are assembled
from token lists. Templates that do not render a conversation as the concatenation of its
messages (they rewrite earlier turns, or refuse the roles) fall back to plain lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

_SENTINEL = "\x00DOPPEL\x00"
PLAIN_END = "\n"


@dataclass(frozen=True, slots=True)
class Turn:
    """One message as the model sees it."""

    speaker: str
    text: str


@dataclass(frozen=True, slots=True)
class Encoded:
    """A turn's token ids; the first `n_head` are its role header, never trained."""

    ids: list[int]
    n_head: int


def system_prompt(participants: Sequence[str]) -> str:
    """The system message of a chat-template transcript."""
    names = list(dict.fromkeys(participants))
    if not names:
        return "A chat."
    if len(names) == 1:
        return f"A chat with {names[0]}."
    return f"A chat between {', '.join(names[:-1])} and {names[-1]}."


def body(turn: Turn) -> str:
    """What a turn says, its speaker's name included."""
    return f"{turn.speaker}: {turn.text}"


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False)


def _role_format(tokenizer: Any, system: list[dict[str, str]], role: str) -> tuple[str, str] | None:
    before = _render(tokenizer, system)
    whole = _render(tokenizer, [*system, {"role": role, "content": _SENTINEL}])
    if not whole.startswith(before) or whole.count(_SENTINEL) != 1:
        return None
    head, _, tail = whole[len(before) :].partition(_SENTINEL)
    return head, tail


class Transcript:
    """Renders and tokenises turns for one tokenizer and one set of chosen speakers.

    `kind` is "chat" when the tokenizer's chat template is used, else "plain".
    """

    def __init__(self, tokenizer: Any, speakers: Iterable[str]):
        self.tokenizer = tokenizer
        self.speakers = frozenset(speakers)
        self.kind: Literal["chat", "plain"] = "plain"
        self._formats: dict[str, tuple[str, str]] = {}
        if getattr(tokenizer, "chat_template", None):
            try:
                self._formats = self._chat_formats()
            except Exception:  # noqa: BLE001 - a template that refuses our roles or raises on them
                self._formats = {}
            self.kind = "chat" if self._formats else "plain"

    def _chat_formats(self) -> dict[str, tuple[str, str]]:
        system = [{"role": "system", "content": "S"}]
        formats = {r: _role_format(self.tokenizer, system, r) for r in ("user", "assistant")}
        if any(f is None for f in formats.values()):
            return {}
        checked = {r: f for r, f in formats.items() if f is not None}
        turns = [("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"), ("assistant", "e")]
        expected = _render(self.tokenizer, system) + "".join(
            checked[r][0] + text + checked[r][1] for r, text in turns
        )
        whole = _render(self.tokenizer, [*system, *({"role": r, "content": t} for r, t in turns)])
        return checked if whole == expected else {}

    @property
    def end(self) -> str:
        """The text that ends a turn, where generation stops: `<|im_end|>` for ChatML, a newline for plain."""
        if self.kind == "plain":
            return PLAIN_END
        tail = self._formats["assistant"][1]
        return tail.strip() or tail

    def stops(self, participants: Iterable[str]) -> tuple[str, ...]:
        """Where a generated turn ends: at the end-of-turn marker, or where the model starts a line as
        any of `participants` (`\\nName:`), so it never writes a turn for someone else.

        Sampling passes these as stop strings; `one_turn` cuts a finished text at them.
        """
        return (self.end, *(f"\n{p}:" for p in dict.fromkeys(participants)))

    def one_turn(self, text: str, participants: Iterable[str]) -> str:
        """The turn at the start of generated `text` (decoded with its special tokens): cut at the first
        of `stops(participants)` or the EOS token, whichever comes first, and stripped."""
        eos = self.tokenizer.eos_token
        stops = (*self.stops(participants), *((eos,) if eos else ()))
        cut = min((i for s in stops if (i := text.find(s)) >= 0), default=len(text))
        return text[:cut].strip()

    def role(self, speaker: str) -> str:
        return "assistant" if speaker in self.speakers else "user"

    def header(self, participants: Sequence[str]) -> str:
        """Text before the first turn: the rendered system message, or the BOS (else EOS) token for plain lines.

        A plain window then never opens with a trained token, which no position could predict.
        """
        if self.kind == "plain":
            return self.tokenizer.bos_token or self.tokenizer.eos_token or ""
        return _render(self.tokenizer, [{"role": "system", "content": system_prompt(participants)}])

    def turn(self, turn: Turn) -> tuple[str, str, str]:
        """(role header, `Name: text`, end) of one turn."""
        if self.kind == "plain":
            return "", body(turn), PLAIN_END
        head, tail = self._formats[self.role(turn.speaker)]
        return head, body(turn), tail

    def text(self, turns: Sequence[Turn], participants: Sequence[str]) -> str:
        """A whole transcript as text."""
        return self.header(participants) + "".join("".join(self.turn(t)) for t in turns)

    def prompt(self, turns: Sequence[Turn], participants: Sequence[str], speaker: str | None = None) -> str:
        """Text that asks for the next turn: by `speaker`, or by whichever chosen speaker the model picks.

        With no `speaker`, a chat prompt ends with the assistant's header and a plain one at a new
        line, so the model writes the name itself.
        """
        text = self.text(turns, participants)
        if self.kind == "plain":
            return text + (f"{speaker}:" if speaker else "")
        head = self._formats[self.role(speaker) if speaker else "assistant"][0]
        return text + head + (f"{speaker}:" if speaker else "")

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_turn(self, turn: Turn) -> Encoded:
        head, text, tail = self.turn(turn)
        head_ids = self.encode(head) if head else []
        return Encoded(head_ids + self.encode(text + tail), len(head_ids))

    def trains(self, turn: Turn) -> bool:
        """Whether a turn's tokens carry the loss."""
        return turn.speaker in self.speakers
