"""`doppel chat`, `doppel generate` and `doppel simulate`: talk to persona models through the inference service.

`chat` is a terminal conversation: the user types turns as one participant and the model
answers as its persona, streamed as it is sampled; with `-n 2` or more it shows the candidates
and lets the user keep one. Piped input works too (one user turn per line, replies printed,
exit at the end), so scripts and tests can drive it. `generate` continues a prompt several
times; `simulate` streams a whole conversation among the model's speakers.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, cast

import typer

from doppel import enums
from doppel.cli.context import call, fail, settings
from doppel.transcript import default_user

HELP = "/reset clears the conversation, /quit (or Ctrl-D) exits"

Model = Annotated[str, typer.Option("--model", help="Persona model id (see `doppel models`).")]
Temperature = Annotated[float | None, typer.Option("--temperature", help="Softmax temperature; 0 is greedy.")]
TopK = Annotated[int | None, typer.Option("--top-k", help="Keep the k most likely tokens; 0 disables.")]
TopP = Annotated[float | None, typer.Option("--top-p", help="Keep the tokens whose probability reaches p; 1 disables.")]
RepetitionPenalty = Annotated[
    float | None, typer.Option("--repetition-penalty", help="Penalty for tokens already generated; 1 disables.")
]
MaxNewTokens = Annotated[int | None, typer.Option("--max-new-tokens", help="Most tokens in one reply.")]
Stop = Annotated[list[str], typer.Option("--stop", help="Stop before this string (repeatable).")]
Seed = Annotated[int | None, typer.Option("--seed", help="Seed, for reproducible samples.")]


def _sampling(
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    max_new_tokens: int | None = None,
    stop: list[str] | None = None,
    n: int | None = None,
    seed: int | None = None,
) -> Any:
    """SamplingParams with only the fields the user gave; the service's defaults fill the rest."""
    from doppel.v1 import common_pb2

    given: dict[str, Any] = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "repetition_penalty": repetition_penalty,
             "max_new_tokens": max_new_tokens, "n": n, "seed": seed}
    return common_pb2.SamplingParams(**{k: v for k, v in given.items() if v is not None}, stop=stop or [])


def _finish(value: int) -> str:
    from doppel.v1 import inference_pb2

    return enums.label(inference_pb2.FinishReason, value)


def _served(client: Any, model_id: str) -> Any:
    """The model's entry in ListServedModels; exits when the service does not serve it."""
    import grpc

    from doppel.clients import rpc_error_message
    from doppel.v1 import inference_pb2 as inf

    try:
        models = client.list_served_models(inf.ListServedModelsRequest()).models
    except grpc.RpcError as err:
        fail(f"{client.addr}: {rpc_error_message(err)}")
    for m in models:
        if m.model_id == model_id:
            return m
    known = ", ".join(m.model_id for m in models[:10]) or "none"
    fail(f"model {model_id!r} is not served by {client.addr} (models there: {known}; `doppel models` lists them)")


def _pick_speakers(model: Any, as_speaker: str, me: str) -> tuple[str, str]:
    """(who replies, who the user is): the options, else the persona and the first other participant."""
    persona = as_speaker or (model.speakers[0] if model.speakers else "")
    if not persona:
        fail(f"model {model.model_id!r} names no speaker; choose one with --as")
    user = me or default_user(model.participants, persona)
    if user == persona:
        fail(f"--me and --as are both {persona!r}; the model never writes a turn for the user's speaker")
    return persona, user


class _Session:
    """One chat: the history sent with each request, and how replies are asked for and shown."""

    def __init__(self, client: Any, model_id: str, persona: str, user: str, sampling: Any, interactive: bool,
                 known_user: bool = True):
        self.client, self.model_id, self.persona, self.user = client, model_id, persona, user
        self.sampling, self.interactive, self.known_user = sampling, interactive, known_user
        self.history: list[Any] = []

    def request(self) -> Any:
        """The request for the next reply; with --seed, turn k samples with seed + k (reproducible, not repetitive)."""
        from doppel.v1 import inference_pb2 as inf

        sampling = type(self.sampling)()
        sampling.CopyFrom(self.sampling)
        if sampling.HasField("seed"):
            sampling.seed += sum(t.speaker == self.persona for t in self.history)
        return inf.ChatRequest(model_id=self.model_id, history=self.history, as_speaker=self.persona,
                               user_speaker=self.user if self.known_user else "", sampling=sampling)

    def say(self, text: str) -> None:
        """The user's turn, then the model's reply; a failed reply takes the user's turn back."""
        import grpc

        from doppel.clients import rpc_error_message
        from doppel.v1 import inference_pb2 as inf

        self.history.append(inf.Turn(speaker=self.user, text=text))
        try:
            reply = self._stream() if self.sampling.n <= 1 else self._choose()
        except grpc.RpcError as err:
            self.history.pop()
            if not self.interactive:
                fail(f"{self.client.addr}: {rpc_error_message(err)}")
            typer.echo(f"error: {self.client.addr}: {rpc_error_message(err)}", err=True)
            return
        if reply is None:  # interrupted before any text: as if the turn had not been sent
            self.history.pop()
            return
        self.history.append(inf.Turn(speaker=self.persona, text=reply))

    def _stream(self) -> str | None:
        """Stream one reply, printed as it comes; Ctrl-C stops it and keeps what came."""
        from doppel.v1 import inference_pb2 as inf

        call = self.client.chat_stream(inf.ChatStreamRequest(chat=self.request()))
        parts: list[str] = []
        named = False  # `Name: ` is printed with the first piece, so an error is not left after a bare name
        try:
            for piece in call:
                if not named:
                    typer.echo(f"{self.persona}: ", nl=False)
                    named = True
                if piece.index == 0 and piece.delta:
                    parts.append(piece.delta)
                    typer.echo(piece.delta, nl=False)
        except KeyboardInterrupt:
            call.cancel()
            typer.echo(" [stopped]" if named else "[stopped]")
            return "".join(parts) or None
        except BaseException:
            if named:
                typer.echo()
            raise
        typer.echo(f"{self.persona}: " if not named else "")
        return "".join(parts)

    def _choose(self) -> str:
        """Sample n candidates, show them numbered, keep the one the user picks (the first when piped)."""
        response = self.client.chat(self.request())
        candidates = list(response.candidates)
        if not candidates:
            return ""
        typer.echo(f"{response.speaker or self.persona}:")
        for k, c in enumerate(candidates, 1):
            typer.echo(f"  [{k}] {c.text}")
        if not self.interactive:
            return candidates[0].text
        while True:
            try:
                answer = input(f"keep which? 1-{len(candidates)}, Enter for 1: ").strip()
            except EOFError:
                answer = ""
            if not answer:
                return candidates[0].text
            if answer.isdigit() and 1 <= int(answer) <= len(candidates):
                return candidates[int(answer) - 1].text
            typer.echo(f"type a number from 1 to {len(candidates)}", err=True)


def _lines(interactive: bool, prompt: str) -> Any:
    """The user's lines: typed at a prompt on a terminal, else read from stdin until EOF."""
    if not interactive:
        for line in sys.stdin:
            yield line.rstrip("\r\n")
        return
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    while True:
        try:
            yield input(prompt)
        except EOFError:
            typer.echo()
            return


def chat(
    model: Model,
    as_speaker: Annotated[str, typer.Option("--as", help="Who replies; default: the model's persona.")] = "",
    me: Annotated[str, typer.Option("--me", help="Who you are; default: the first other participant, else User.")] = "",
    temperature: Temperature = None,
    top_k: TopK = None,
    top_p: TopP = None,
    repetition_penalty: RepetitionPenalty = None,
    max_new_tokens: MaxNewTokens = None,
    stop: Stop = [],  # noqa: B006 - typer reads the default
    n: Annotated[int | None, typer.Option("-n", "--n", help="Candidates per reply; 2 or more lets you pick one.")] = None,
    seed: Seed = None,
) -> None:
    """Chat with a persona model: type your turns, it replies as the persona, streamed.

    On a terminal, /reset clears the conversation, /quit or Ctrl-D exits and Ctrl-C stops a reply.
    Piped: each line is one of your turns; the command exits at the end.
    """
    from doppel.clients import InferenceClient

    sampling = _sampling(temperature, top_k, top_p, repetition_penalty, max_new_tokens, stop, n, seed)
    interactive = sys.stdin.isatty()
    with InferenceClient.from_settings(settings()) as client:
        served = _served(client, model)
        persona, user = _pick_speakers(served, as_speaker, me)
        # the service checks user_speaker against the model's participants: a name it never saw goes as nobody
        session = _Session(client, model, persona, user, sampling, interactive, known_user=user in served.participants)
        if interactive:
            typer.echo(f"chatting with {persona} ({model}) as {user}; {HELP}", err=True)
        try:
            for line in _lines(interactive, f"{user}: "):
                command = line.strip()
                if command in ("/quit", "/exit"):
                    break
                if command == "/reset":
                    session.history.clear()
                    typer.echo("(conversation cleared)", err=True)
                    continue
                if command in ("/help", "/?"):
                    typer.echo(HELP, err=True)
                    continue
                if not command:
                    continue
                if not interactive:  # no prompt echoed the line: show it, so the output reads as a transcript
                    typer.echo(f"{user}: {line}")
                session.say(line)
        except KeyboardInterrupt:
            typer.echo()


def generate(
    model: Model,
    prompt: Annotated[str, typer.Option("--prompt", help="Text to continue, e.g. 'I love to eat'.")],
    as_speaker: Annotated[str, typer.Option("--as", help="Speaker whose turn the prompt opens; default: raw text.")] = "",
    temperature: Temperature = None,
    top_k: TopK = None,
    top_p: TopP = None,
    repetition_penalty: RepetitionPenalty = None,
    max_new_tokens: MaxNewTokens = None,
    stop: Stop = [],  # noqa: B006
    n: Annotated[int | None, typer.Option("-n", "--n", help="Number of samples.")] = None,
    seed: Seed = None,
) -> None:
    """Continue a prompt n times; prints each sample, numbered, as the prompt followed by its continuation."""
    from doppel.clients import InferenceClient
    from doppel.v1 import inference_pb2 as inf

    sampling = _sampling(temperature, top_k, top_p, repetition_penalty, max_new_tokens, stop, n, seed)
    request = inf.CompleteRequest(model_id=model, prompt=prompt, as_speaker=as_speaker, sampling=sampling)
    response = call(InferenceClient, "complete", request)
    opening = f"{as_speaker}: {prompt}" if as_speaker else prompt
    for k, c in enumerate(response.candidates, 1):
        if k > 1:
            typer.echo()
        typer.echo(f"--- {k}  ({c.tokens} tokens, {_finish(c.finish_reason)})")
        typer.echo(opening + c.text)


def _opening_turn(text: str) -> Any:
    from doppel.v1 import inference_pb2 as inf

    speaker, sep, said = text.partition(":")
    if not sep or not speaker.strip():
        raise typer.BadParameter(f"{text!r} is not a turn such as 'Ann: hi'", param_hint="--opening")
    return inf.Turn(speaker=speaker.strip(), text=said.strip())


def simulate(
    model: Model,
    participants: Annotated[
        list[str], typer.Option("--participants", help="Who takes part, comma-separated (repeatable): speakers the model "
                                "learned; default: all of them.")
    ] = [],  # noqa: B006
    turns: Annotated[int, typer.Option("--turns", help="Turns to generate.")] = 10,
    opening: Annotated[list[str], typer.Option("--opening", help="An opening turn, 'Name: text' (repeatable).")] = [],  # noqa: B006
    first_speaker: Annotated[str, typer.Option("--first-speaker", help="Speaker of the first generated turn.")] = "",
    first_prompt: Annotated[str, typer.Option("--first-prompt", help="Start of the first generated turn's text.")] = "",
    stop: Annotated[
        list[str], typer.Option("--stop", help="End the conversation at a turn containing this (repeatable).")
    ] = [],  # noqa: B006
    temperature: Temperature = None,
    top_k: TopK = None,
    top_p: TopP = None,
    repetition_penalty: RepetitionPenalty = None,
    max_new_tokens: MaxNewTokens = None,
    seed: Seed = None,
) -> None:
    """Write a conversation among a group model's speakers, printing each turn as it is generated.

    Every participant must be a speaker the model learned (train a group model with several
    --persona); the model picks who speaks next, and a turn that repeats a recent one is sampled again.
    """
    import grpc

    from doppel.clients import InferenceClient, rpc_error_message
    from doppel.v1 import inference_pb2 as inf

    if turns < 1:
        fail("--turns must be at least 1", 2)
    names = [p.strip() for group in participants for p in group.split(",") if p.strip()]
    openings = [_opening_turn(t) for t in opening]
    sampling = _sampling(temperature, top_k, top_p, repetition_penalty, max_new_tokens, None, None, seed)
    request = inf.SimulateRequest(model_id=model, participants=names, opening=openings, first_speaker=first_speaker,
                                  first_prompt=first_prompt, turns=turns, stop=stop, sampling=sampling)
    for t in openings:
        typer.echo(f"{t.speaker}: {t.text}")
    with InferenceClient.from_settings(settings()) as client:
        call = client.simulate(request)
        try:
            for r in call:
                typer.echo(f"{r.turn.speaker}: {r.turn.text}")
        except KeyboardInterrupt:
            cast(grpc.Call, call).cancel()  # a streaming call is both the iterator and the grpc.Call
            typer.echo("[stopped]", err=True)
            raise typer.Exit(130) from None
        except grpc.RpcError as err:
            fail(f"{client.addr}: {rpc_error_message(err)}")
