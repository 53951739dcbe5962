"""Entry point of the inference service: its gRPC bindings for `doppel serve inference`.

A thin adapter in a light process: requests become calls on an `EngineClient` (in the service,
`remote.EngineProcess`, which runs the model cache, the modes and the engines in a process of
its own), and their events become responses. A call that ends early (cancelled, deadline)
aborts its work there, which frees its rows at the engine's next step.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any

from doppel import enums
from doppel.config import Settings
from doppel.errors import InvalidArgument
from doppel.layout import validate_id
from doppel.rpc.server import Service
from doppel.transcript import Turn
from doppel.v1 import inference_pb2 as inf
from doppel.v1 import inference_pb2_grpc

from .client import Call, EngineClient
from .protocol import ChatArgs, CompleteArgs, Delta, Finish, Sampling, ServedInfo, SimulateArgs
from .remote import EngineProcess

FINISH = {f: enums.value(inf.FinishReason, f.value) for f in Finish}


def sampling_from_proto(p: Any, *, n: bool = True) -> Sampling:
    names = ("temperature", "top_k", "top_p", "repetition_penalty", "presence_penalty", "frequency_penalty",
             "max_new_tokens", "seed")
    fields = {k: getattr(p, k) for k in names if p.HasField(k)}
    if n and p.HasField("n"):
        fields["n"] = p.n
    return Sampling(**fields, stop=tuple(p.stop))


MAX_TURNS = 1000  # of one simulation: a conversation, not a stream that runs until the caller leaves

def _turns(turns: Any) -> tuple[Turn, ...]:
    return tuple(Turn(t.speaker, t.text) for t in turns)


def _chat(r: Any) -> ChatArgs:
    return ChatArgs(r.model_id, _turns(r.history), r.as_speaker, r.user_speaker, sampling_from_proto(r.sampling))


def _complete(r: Any) -> CompleteArgs:
    return CompleteArgs(r.model_id, r.prompt, r.as_speaker, sampling_from_proto(r.sampling))


async def _pieces(call: Call[Delta, Any], *, strip: bool) -> AsyncGenerator[dict[str, Any]]:
    """The fields of each streamed piece: a candidate's new text, and on its last piece why it ended and its
    token counts. With `strip`, a reply's opening space (it follows `Name:`) is dropped. Closed with the
    stream, it closes the call at once (which aborts it when it has not ended)."""
    started: set[int] = set()
    async with aclosing(call.__aiter__()) as piles:
        async for pile in piles:
            for d in _merged(pile):
                delta = d.text
                if strip and d.index not in started:
                    delta = delta.lstrip()
                    if delta or d.finish is not None:
                        started.add(d.index)
                if d.finish is not None:
                    yield {"index": d.index, "delta": delta, "finish_reason": FINISH[d.finish], "tokens": d.tokens,
                           "prompt_tokens": d.prompt_tokens}
                elif delta:
                    yield {"index": d.index, "delta": delta}


def _merged(pile: list[Delta]) -> list[Delta]:
    """A pile's deltas, one per candidate: its texts joined, its finish if it finished."""
    merged: dict[int, list[Delta]] = {}
    for event in pile:
        merged.setdefault(event.index, []).append(event)
    return [Delta(k, "".join(d.text for d in ds), ds[-1].finish, ds[-1].tokens, ds[-1].prompt_tokens) for k, ds in merged.items()]


class _Candidates:
    """Whole candidates gathered from a call's deltas."""

    def __init__(self, n: int):
        self.parts: list[list[str]] = [[] for _ in range(n)]
        self.ends: list[Delta | None] = [None] * n

    @property
    def prompt_tokens(self) -> int:
        return max((end.prompt_tokens for end in self.ends if end), default=0)

    def add(self, pile: list[Delta]) -> None:
        for event in pile:
            self.parts[event.index].append(event.text)
            if event.finish is not None:
                self.ends[event.index] = event

    def protos(self, *, strip: bool) -> list[inf.Candidate]:
        out = []
        for parts, end in zip(self.parts, self.ends, strict=True):
            text = "".join(parts)
            out.append(inf.Candidate(text=text.strip() if strip else text, tokens=end.tokens if end else 0,
                                     finish_reason=FINISH[end.finish if end and end.finish else Finish.CANCELLED]))
        return out


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """Thin adapter from `doppel.v1.InferenceService` to an engine."""

    def __init__(self, engine: EngineClient):
        self.engine = engine

    def close(self) -> None:
        self.engine.close()

    async def Chat(self, request, context):
        args = _chat(request)
        out = _Candidates(args.sampling.n)
        call = self.engine.chat(args)
        async for pile in call:
            out.add(pile)
        return inf.ChatResponse(speaker=call.result.speaker if call.result else "", candidates=out.protos(strip=True),
                                prompt_tokens=out.prompt_tokens)

    async def ChatStream(self, request, context):
        async with aclosing(_pieces(self.engine.chat(_chat(request.chat)), strip=True)) as pieces:
            async for d in pieces:
                yield inf.ChatStreamResponse(**d)

    async def Complete(self, request, context):
        args = _complete(request)
        out = _Candidates(args.sampling.n)
        async for pile in self.engine.complete(args):
            out.add(pile)
        # raw continuations keep their leading space
        return inf.CompleteResponse(candidates=out.protos(strip=False), prompt_tokens=out.prompt_tokens)

    async def CompleteStream(self, request, context):
        async with aclosing(_pieces(self.engine.complete(_complete(request.complete)), strip=False)) as pieces:
            async for d in pieces:
                yield inf.CompleteStreamResponse(**d)

    async def Simulate(self, request, context):
        if not 0 <= request.turns <= MAX_TURNS:  # 0 is the default length; a negative one would end before it began
            raise InvalidArgument(f"turns must be 0 (the default length) to {MAX_TURNS}, not {request.turns}")
        args = SimulateArgs(request.model_id, tuple(request.participants), _turns(request.opening), request.first_speaker,
                            request.first_prompt, request.turns, tuple(request.stop),
                            sampling_from_proto(request.sampling, n=False))
        async for pile in self.engine.simulate(args):
            for t in pile:
                yield inf.SimulateResponse(index=t.index, turn=inf.Turn(speaker=t.speaker, text=t.text, timestamp=_now()),
                                           finish_reason=FINISH[t.finish])

    async def ListServedModels(self, request, context):
        listing = await self.engine.listing()
        return inf.ListServedModelsResponse(models=[_served_proto(m) for m in listing if m.loaded or not request.loaded_only])

    async def LoadModel(self, request, context):
        loaded = await self.engine.load(request.model_id)
        out = inf.LoadModelResponse(model=_served_proto(loaded.model))
        out.load_time.FromMilliseconds(int(loaded.seconds * 1000))
        return out

    async def UnloadModel(self, request, context):
        validate_id(request.model_id, "model id")  # an id no model can have is a mistake, not "was not loaded"
        return inf.UnloadModelResponse(was_loaded=await self.engine.unload(request.model_id))

    async def GetEngineStats(self, request, context):
        s = await self.engine.stats()
        return inf.GetEngineStatsResponse(
            queue_capacity=s.queue_capacity, loaded_models=s.loaded_models,
            cache_bytes=s.cache_bytes, cache_budget_bytes=s.cache_budget_bytes,
            forward_passes=s.forward_passes, tokens_generated=s.tokens_generated,
            requests_completed=s.requests_completed, running=s.running, queued=s.queued,
        )


def _now():
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.FromDatetime(datetime.now(UTC))
    return ts


def _served_proto(m: ServedInfo) -> inf.ServedModel:
    out = inf.ServedModel(model_id=m.model_id, base_model=m.base_model, adapter=m.adapter, loaded=m.loaded,
                          memory_bytes=m.memory_bytes, speakers=m.speakers, participants=m.participants, name=m.name)
    if m.last_used is not None:
        out.last_used.FromDatetime(m.last_used)
    if m.created is not None:
        out.created.FromDatetime(m.created)
    return out


def build(settings: Settings) -> list[Service]:
    """The services this process serves."""
    return [Service.of(inf, inference_pb2_grpc, "InferenceService", InferenceServicer(EngineProcess(settings)))]

