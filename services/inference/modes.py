"""The ways to ask a persona model for text, as engine jobs: chat, complete, and simulate's turns.

Prompts are rendered by `doppel.transcript.Transcript` of the kind the model's manifest records,
exactly as the model was trained. A reply is one turn, of one or more lines: it ends where
`Transcript.stops` says (the end-of-turn marker: EOS for plain models, `<|im_end|>` for ChatML,
a newline for plain models published before EOS ended their turns; or where the model starts a
line as any participant, `\\nName:`), so the model never writes a turn for the user; a reply may
not open with the user's own tag either.

A simulation is written by a group model: every participant must be a speaker it learned (a
persona model learned one person; writing anyone else's turns with it would only put its
persona's words in their mouth). The model picks who speaks next among the participants, but
nobody gets more than `MAX_RUN` turns in a row while someone else could speak. A turn that
repeats one of the last `LOOKBACK` turns (case and spacing aside) is sampled again, up to
`RETRIES` times, with another seed (and, for a greedy request, some temperature), so a
conversation does not loop on one line; so is an empty turn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

from doppel.errors import InvalidArgument
from doppel.transcript import Transcript, Turn

from .engine import Job, Sink
from .protocol import Finish, Sampling

MAX_RUN = 2  # most turns in a row by one speaker of a simulation, while another could speak
LOOKBACK = 4  # a simulated turn may not repeat one of this many turns before it...
RETRIES = 3  # ...unless it was sampled again this many times
RETRY_TEMPERATURE = 0.8  # the least temperature a turn is sampled again with (a greedy one would repeat itself)


@dataclass
class Persona:
    """What the modes need of a served model."""

    model_id: str
    speakers: list[str]  # the speakers it learned
    participants: list[str]  # everyone in its training data
    transcript: Transcript
    max_positions: int  # the model's context length
    adapter: str | None = None
    dataset_id: str = ""  # the dataset it learned from, for the advice in errors
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

    def simulated(self, participants: Sequence[str], first: str = "") -> list[str]:
        """The participants of a simulation (every learned speaker when none are given): all of them
        speakers the model learned, and its first speaker, when given, among them."""
        names = [self.check_speaker(n, "participant") for n in dict.fromkeys(participants)] or list(self.speakers)
        if first:
            self.check_speaker(first, "first_speaker")
        unlearned = [n for n in dict.fromkeys([*names, first]) if n and n not in self.speakers]
        if unlearned:
            raise InvalidArgument(self._unlearned(unlearned, names))
        if first and first not in names:
            raise InvalidArgument(f"first_speaker {first!r} is not one of the participants ({', '.join(names)})")
        return names

    def _unlearned(self, unlearned: list[str], names: list[str]) -> str:
        """Why a simulation cannot voice `unlearned`, and what to do instead."""
        they = ", ".join(repr(n) for n in unlearned)
        learned = ", ".join(repr(n) for n in self.speakers) or "nobody"
        personas = " ".join(f"--persona {_quoted(n)}" for n in dict.fromkeys([*self.speakers, *names]))
        dataset = _quoted(self.dataset_id) if self.dataset_id else "DATASET"
        return (
            f"model {self.model_id!r} did not learn to write as {they} (it learned {learned} only), and a "
            f"simulation writes every participant's turns. Train a group model that learns each of them "
            f"(`doppel train --dataset {dataset} {personas}`, or choose them all as personas in the Train tab), "
            f"or simulate only {learned}; to play {unlearned[0]!r} yourself, chat with this model "
            f"(`doppel chat --model {_quoted(self.model_id)} --me {_quoted(unlearned[0])}`)"
        )

    def everyone(self, extra: Sequence[str] = ()) -> list[str]:
        return list(dict.fromkeys([*self.participants, *extra]))

    @cached_property
    def end_ids(self) -> frozenset[int]:
        """Token ids that end a turn: EOS, and the transcript's end-of-turn token (the chat template's)."""
        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        if self.transcript.kind != "plain":  # a marker of its own, not the newline
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


def _quoted(word: str) -> str:
    """`word` as one word of a shell command."""
    return word if word and all(c.isalnum() or c in "-_.:@" for c in word) else "'" + word.replace("'", "'\\''") + "'"


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


def takers(history: Sequence[Turn], names: Sequence[str]) -> list[str]:
    """Who may write the next turn of a simulation: any of `names` but one who wrote the last
    `MAX_RUN` turns, when someone else can speak."""
    run = history[-MAX_RUN:]
    if len(names) > 1 and len(run) == MAX_RUN and len({t.speaker for t in run}) == 1:
        return [n for n in names if n != run[0].speaker]
    return list(names)


def rotation(history: Sequence[Turn], names: Sequence[str]) -> str:
    """The one of `names` after the last speaker of `history` (the first when they are not among them)."""
    last = history[-1].speaker if history else ""
    return names[(names.index(last) + 1) % len(names)] if last in names else names[0]


def normalised(text: str) -> str:
    return " ".join(text.split()).casefold()


def repeats(text: str, history: Sequence[Turn], lookback: int = LOOKBACK) -> bool:
    """Whether `text` says what one of the last `lookback` turns said, case and spacing aside (empty never does)."""
    said = normalised(text)
    return bool(said) and any(normalised(t.text) == said for t in history[-lookback:])


def resampling(sampling: Sampling, index: int, attempt: int) -> Sampling:
    """The settings of try `attempt` (from 0) at turn `index` of a simulation: a seeded request samples
    every turn, and every try, with a seed of its own (reproducible, yet not the same draws each
    turn), and a try after the first is never greedy."""
    if sampling.seed is not None:
        sampling = replace(sampling, seed=(sampling.seed + index + attempt * 1_000_003) % 2**62)
    if attempt and sampling.temperature < RETRY_TEMPERATURE:
        sampling = replace(sampling, temperature=RETRY_TEMPERATURE)
    return sampling


@dataclass(frozen=True)
class Written:
    """A sampled turn of a simulation."""

    speaker: str
    text: str
    finish: Finish


def fresh_turn(sample: Callable[[int], Written], history: Sequence[Turn], speakers: Sequence[str],
               retries: int = RETRIES) -> Written:
    """`sample(attempt)`, for attempt 0, 1..., until it gives a turn by one of `speakers` that says something
    and repeats none of the last turns of `history`: after `retries` more tries, the last one (a
    cancelled one at once)."""
    turn = sample(0)
    for attempt in range(1, retries + 1):
        if turn.finish is Finish.CANCELLED or (
            turn.speaker in speakers and normalised(turn.text) and not repeats(turn.text, history)
        ):
            break
        turn = sample(attempt)
    return turn


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
