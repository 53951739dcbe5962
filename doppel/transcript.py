"""How the turns of a chat become model text, the same way for training and for sampling.

A turn is rendered as `Name: text`. With a chat template (SmolLM2's ChatML, Llama's, Qwen's...)
each turn is one message of the template: the chosen speakers' turns are the assistant's, the
others' the user's, after a system message naming the participants. A model without a template
(GPT-2, `tiny`) gets plain `Name: text` turns. Training puts the loss on the chosen speakers'
turns (`Name: text` and the turn's end marker, not the role header), so the model learns who
speaks and what they say, and where a turn ends. Sampling (inference, and the previews during
training) ends a turn by one rule, `Transcript.stops`: at that marker, or at a new line opened
as any participant (`\nName:`), so the model never writes another speaker's turn.

Messages may span lines (imports keep the newlines inside a message), so a plain turn cannot
end at a newline. The kinds of transcript, `Transcript.kind`, as a model's manifest records it:

* "chat": the chat template; a turn ends with its end-of-turn marker (`<|im_end|>` for ChatML).
* "plain-eos": `Name: text<eos>` + "\n", the tokenizer's EOS token (GPT-2's and `tiny`'s
  `<|endoftext|>`) ending each turn. EOS is one special token that no message holds (it is taken
  out of a message's text, should one contain it), so a turn's lines are all its own and the
  model learns to end a turn by emitting EOS, where every sampler stops anyway. The newline
  after it keeps every turn on a line of its own, `\nName:` the start of a turn. Plain models
  are trained so from now on; a tokenizer without an EOS token that encodes as that one token
  falls back to "plain".
* "plain": `Name: text` + "\n", a turn ending at the first newline: models published before
  "plain-eos" were trained so, and are served so (their manifests say "plain"), their replies
  one line each.

The template is reduced once to the text around one message of each role (rendered around a
sentinel), so every turn is rendered and tokenised on its own, once, and windows are assembled
from token lists. Templates that do not render a conversation as the concatenation of its
messages (they rewrite earlier turns, or refuse the roles) fall back to plain turns.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

_SENTINEL = "\x00DOPPEL\x00"
PLAIN_END = "\n"  # what ends a "plain" turn; a "plain-eos" turn ends with EOS and then this
DEFAULT_USER = "User"  # who the user plays when the model has no participant but its persona

Kind = Literal["chat", "plain-eos", "plain"]
KINDS: tuple[Kind, ...] = ("chat", "plain-eos", "plain")


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


def default_user(participants: Sequence[str], persona: str) -> str:
    """Who the user plays when they do not say: the first participant but the persona, else "User"."""
    return next((p for p in participants if p != persona), DEFAULT_USER)


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

    `kind` (see the module's docstring) is the one given, as a model's manifest records it (a
    `ValueError` if the tokenizer cannot render it), or with None the one to train a new model
    with: "chat" when the tokenizer's chat template is usable, else "plain-eos" when it has an
    EOS token, else "plain".
    """

    def __init__(self, tokenizer: Any, speakers: Iterable[str], kind: Kind | None = None):
        self.tokenizer = tokenizer
        self.speakers = frozenset(speakers)
        self._formats: dict[str, tuple[str, str]] = {}
        if kind not in (None, *KINDS):
            raise ValueError(f"unknown transcript kind {kind!r}; known: {', '.join(KINDS)}")
        if kind in (None, "chat") and getattr(tokenizer, "chat_template", None):
            try:
                self._formats = self._chat_formats()
            except Exception:  # noqa: BLE001 - a template that refuses our roles or raises on them
                self._formats = {}
        if kind == "chat" and not self._formats:
            raise ValueError("the tokenizer has no chat template that renders turns one after another")
        if kind == "plain-eos" and not self._eos_ends():
            raise ValueError("the tokenizer has no EOS token that encodes as that one token")
        self.kind: Kind = kind or ("chat" if self._formats else "plain-eos" if self._eos_ends() else "plain")

    def _eos_ends(self) -> bool:
        """Whether EOS can end plain turns: a token of its own, also where it is written in text."""
        eos, eos_id = getattr(self.tokenizer, "eos_token", None), getattr(self.tokenizer, "eos_token_id", None)
        return isinstance(eos, str) and bool(eos) and eos_id is not None and self.encode(eos) == [eos_id]

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
    def plain(self) -> bool:
        """Whether turns are plain text, not messages of a chat template."""
        return self.kind != "chat"

    @property
    def end(self) -> str:
        """The text that ends a turn, where generation stops: `<|im_end|>` for ChatML, EOS for
        "plain-eos" (`<|endoftext|>`), a newline for "plain"."""
        if self.kind == "plain":
            return PLAIN_END
        if self.kind == "plain-eos":
            return str(self.tokenizer.eos_token)
        tail = self._formats["assistant"][1]
        return tail.strip() or tail

    def stops(self, participants: Iterable[str]) -> tuple[str, ...]:
        """Where a generated turn ends: at the end-of-turn marker, or where the model starts a line as
        any of `participants` (`\\nName:`), so it never writes a turn for someone else. A turn may
        span lines, except in a "plain" transcript, whose end marker is the newline.

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
        """Text before the first turn: the rendered system message, or the BOS (else EOS) token for plain turns.

        A plain window then never opens with a trained token, which no position could predict.
        """
        if self.plain:
            return self.tokenizer.bos_token or self.tokenizer.eos_token or ""
        return _render(self.tokenizer, [{"role": "system", "content": system_prompt(participants)}])

    def turn(self, turn: Turn) -> tuple[str, str, str]:
        """(role header, `Name: text`, end) of one turn.

        A "plain-eos" turn's text may span lines; should it hold the EOS text, that is taken out,
        so the turn ends at its own EOS only."""
        if self.kind == "plain":
            return "", body(turn), PLAIN_END
        if self.kind == "plain-eos":
            return "", body(Turn(turn.speaker, turn.text.replace(self.end, ""))), self.end + PLAIN_END
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
        if self.plain:
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
