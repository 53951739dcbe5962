"""The ways to ask a persona model for text, as engine jobs: chat, complete, and simulate's turns.

Prompts are rendered by `doppel.transcript.Transcript`, exactly as the model was trained. A
reply is one turn: it ends where `Transcript.stops` says (the end-of-turn marker, a newline for
plain models and `<|im_end|>` for ChatML, or where the model starts a line as any participant,
`\\nName:`), so the model never writes a turn for the user; a reply may not open with the user's
own tag either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from doppel.errors import InvalidArgument
from doppel.transcript import Transcript, Turn

from .engine import Job, Sink
from .protocol import Sampling


@dataclass
class Persona:
    """What the modes need of a served model."""

    model_id: str
    speakers: list[str]  # the speakers it learned
    participants: list[str]  # everyone in its training data
    transcript: Transcript
    max_positions: int  # the model's context length
    adapter: str | None = None
    _openings: dict[str, frozenset[int]] = field(default_factory=dict, repr=False)  # name -> tokens its turn opens with

    @property
    def tokenizer(self):  # noqa: ANN201 - a transformers tokenizer
        return self.transcript.tokenizer

    def check_speaker(self, name: str, role: str) -> str:
        if name not in self.participants:
            raise InvalidArgument(
                f"{role} {name!r} is not a participant of model {self.model_id!r}; participants: {', '.join(self.participants)}"
            )
        return name

    def everyone(self, extra: Sequence[str] = ()) -> list[str]:
        return list(dict.fromkeys([*self.participants, *extra]))

    @cached_property
    def end_ids(self) -> frozenset[int]:
        """Token ids that end a turn: EOS, and the chat template's end-of-turn token."""
        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        if self.transcript.kind == "chat":
            end = self.tokenizer.convert_tokens_to_ids(self.transcript.end)
            if isinstance(end, int) and end != self.tokenizer.unk_token_id:
                ids.add(end)
        return frozenset(ids)

    def openings(self, names: Sequence[str]) -> frozenset[int]:
        """The tokens a turn written by one of `names` would open with (the start of `Name:`)."""
        for n in names:
            if n not in self._openings:
                ids = (self.transcript.encode(text) for text in (f"{n}:", f" {n}:"))
                self._openings[n] = frozenset(i[0] for i in ids if i)
        return frozenset().union(*(self._openings[n] for n in names))


def _fit(p: Persona, ids: list[int], sampling: Sampling) -> list[int]:
    """Keep the latest tokens so that the prompt and the reply fit the model's context."""
    room = p.max_positions - sampling.max_new_tokens
    if room < 8:
        raise InvalidArgument(f"max_new_tokens {sampling.max_new_tokens} leaves no room for a prompt in {p.max_positions} positions")
    return ids[-room:]


def chat_job(p: Persona, history: Sequence[Turn], speaker: str, user: str, sampling: Sampling, sink: Sink) -> Job:
    """`speaker`'s next turn after `history`; never a turn for `user` (nor anyone else)."""
    p.check_speaker(speaker, "as_speaker")
    if user:
        p.check_speaker(user, "user_speaker")
        if user == speaker:
            raise InvalidArgument(f"the model cannot reply as {speaker!r}: that is the user's participant")
    names = p.everyone([t.speaker for t in history])
    prompt = p.transcript.prompt(list(history), names, speaker)
    return Job(
        _fit(p, p.transcript.encode(prompt), sampling), sampling, sink, adapter=p.adapter,
        end_strings=p.transcript.stops(names), end_ids=p.end_ids,
        banned_first=p.openings([user]) if user else frozenset(),
    )


def complete_job(p: Persona, prompt: str, speaker: str, sampling: Sampling, sink: Sink) -> Job:
    """A continuation of `prompt`: raw text, or, with `speaker`, the opening of their turn."""
    if speaker:
        p.check_speaker(speaker, "as_speaker")
        text = p.transcript.prompt([], p.participants, speaker) + " " + prompt
        ends, end_ids = p.transcript.stops(p.participants), p.end_ids
    else:
        text, ends, end_ids = prompt, (), frozenset({p.tokenizer.eos_token_id} - {None})
    ids = p.transcript.encode(text)
    if not ids:
        raise InvalidArgument("the prompt is empty")
    return Job(_fit(p, ids, sampling), sampling, sink, adapter=p.adapter, end_strings=ends, end_ids=end_ids)


def turn_job(p: Persona, history: Sequence[Turn], names: Sequence[str], speaker: str, opening: str,
             sampling: Sampling, sink: Sink) -> Job:
    """One turn of a simulation: by `speaker`, or (empty) by whichever of `names` the model writes."""
    everyone = p.everyone(names)
    if speaker:
        prompt = p.transcript.prompt(list(history), everyone, speaker) + (f" {opening}" if opening else "")
        allowed: frozenset[int] = frozenset()
    else:
        prompt = p.transcript.prompt(list(history), everyone)
        allowed = p.openings(names)
    return Job(
        _fit(p, p.transcript.encode(prompt), sampling), sampling, sink, adapter=p.adapter,
        end_strings=p.transcript.stops(everyone), end_ids=p.end_ids, allowed_first=allowed,
    )


def split_speaker(text: str, names: Sequence[str]) -> tuple[str | None, str]:
    """(speaker, text) of a turn the model opened with a name (its first token is one of the names'
    openings, so a name there is the speaker tag, with or without its colon); (None, text) if it
    named nobody known."""
    stripped = text.lstrip()
    for name in sorted(names, key=len, reverse=True):
        rest = stripped[len(name):]
        if stripped.startswith(name) and not rest[:1].isalnum():
            return name, rest.removeprefix(":").strip()
    return None, text.strip()
