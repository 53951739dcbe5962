"""The serving core through the `EngineClient` protocol, in this process (no engine process):
typed answers, aborts, and errors that keep their meaning up to the gRPC status."""

from __future__ import annotations

import asyncio
import os
import time
from contextlib import contextmanager

import grpc
import pytest
import torch

from doppel.clients import InferenceClient
from doppel.config import Settings
from doppel.errors import Internal, NotFound, OutOfMemory
from doppel.rpc.server import Service
from doppel.store import open_store
from doppel.transcript import Turn
from doppel.v1 import common_pb2, inference_pb2_grpc
from doppel.v1 import inference_pb2 as inf
from services.inference.client import RoutingClient
from services.inference.outbox import Outbox
from services.inference.protocol import (
    ChatArgs,
    CompleteArgs,
    Delta,
    Done,
    EngineStats,
    Finish,
    Listing,
    Request,
    Sampling,
    SimulateArgs,
    Spoke,
    TurnDone,
)
from services.inference.server import InferenceServicer
from services.inference.serving import InProcessEngine
from support.grpcserver import BackgroundServer
from support.personas import publish_personas

torch.set_num_threads(1)
HISTORY = (Turn("Bob", "reply 3 ok"), Turn("Carol", "and 3"))


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """(in-process engine, persona model ids)."""
    tmp = tmp_path_factory.mktemp("serving")
    store = open_store(f"file://{tmp}/store")
    ids = publish_personas(store, tmp)
    client = InProcessEngine(Settings(home=tmp / "home", store_url=store.url), store)
    yield client, ids
    client.close()


async def _collect(call) -> list:
    return [event async for pile in call for event in pile]


def test_chat_complete_and_simulate_answer_with_typed_events(engine):
    client, ids = engine

    async def run():
        chat = client.chat(ChatArgs(ids["a0"], HISTORY, "", "", Sampling(n=3, seed=1, max_new_tokens=12)))
        deltas = await _collect(chat)
        complete = client.complete(CompleteArgs(ids["full"], "I love to eat", "", Sampling(seed=2, max_new_tokens=6)))
        completion = await _collect(complete)
        simulate = client.simulate(SimulateArgs(ids["group"], ("Alice", "Bob"), (), "Alice", "hello", 4, (),
                                                Sampling(seed=3, max_new_tokens=10)))
        turns = await _collect(simulate)
        return chat, deltas, complete, completion, simulate, turns

    chat, deltas, complete, completion, simulate, turns = asyncio.run(run())
    assert chat.result == Spoke("Alice")  # the model's first speaker, as no speaker was named
    assert all(isinstance(d, Delta) for d in deltas)
    ends = {d.index: d for d in deltas if d.finish is not None}
    assert sorted(ends) == [0, 1, 2] and all(d.tokens > 0 for d in ends.values())
    assert complete.result is None and completion[-1].finish in (Finish.LENGTH, Finish.STOP)
    assert simulate.result is None and [t.index for t in turns] == [0, 1, 2, 3]
    assert all(isinstance(t, TurnDone) and t.speaker in ("Alice", "Bob") for t in turns)
    assert turns[0].speaker == "Alice" and turns[0].text.startswith("hello")


def test_queries_answer_with_typed_results(engine):
    client, ids = engine

    async def run():
        loaded = await client.load(ids["a1"])
        again = await client.load(ids["a1"])
        listing = await client.listing()
        health = await client.health()
        stats = await client.stats()
        unloaded = await client.unload(ids["a1"]), await client.unload(ids["a1"])
        return loaded, again, listing, health, stats, unloaded

    loaded, again, listing, health, stats, unloaded = asyncio.run(run())
    assert loaded.model.model_id == ids["a1"] and loaded.model.loaded and loaded.model.speakers == ("Bob",)
    assert loaded.seconds > 0 and again.seconds == 0.0
    assert set(ids.values()) <= {m.model_id for m in listing}
    assert health.pid == os.getpid() and health.loaded_models >= 1
    assert isinstance(stats, EngineStats) and stats.loaded_models >= 1 and stats.cache_budget_bytes > 0
    assert unloaded == (True, False)


def test_leaving_a_stream_early_aborts_it_in_the_engine(engine):
    client, ids = engine

    async def run():
        call = client.chat(ChatArgs(ids["a0"], HISTORY, "", "", Sampling(temperature=0, max_new_tokens=1000)))
        async for _ in call:
            break  # a gRPC stream cancelled by its caller ends the same way
        await asyncio.sleep(0)
        deadline = time.monotonic() + 10
        while (stats := await client.stats()).running and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return stats

    assert asyncio.run(run()).running == 0


@contextmanager
def failing_head(client, model_id, error: BaseException, after: int = 2):
    """Make the model's output layer raise `error` from its `after`-th forward pass on (a decode step)."""
    served = client.serving.cache.get(model_id)
    head = next(m for name, m in served.engine.model.named_modules() if name.endswith("lm_head"))
    calls = [0]
    forward = head.forward

    def broken(*args, **kwargs):
        calls[0] += 1
        if calls[0] > after:
            raise error
        return forward(*args, **kwargs)

    head.forward = broken
    try:
        yield calls
    finally:
        head.forward = forward


@pytest.mark.parametrize(("error", "kind"), [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), OutOfMemory),
    (ZeroDivisionError("a bug"), Internal),
])
def test_an_engine_failure_keeps_its_meaning_and_the_engine_goes_on(engine, error, kind):
    client, ids = engine
    args = ChatArgs(ids["full"], HISTORY, "", "", Sampling(temperature=0, max_new_tokens=20))

    async def run():
        with failing_head(client, ids["full"], error) as calls, pytest.raises(kind) as raised:
            await _collect(client.chat(args))
        assert calls[0] > 2, "it failed in a decoding step"
        return raised.value, await _collect(client.chat(args))

    raised, after = asyncio.run(run())
    assert type(error).__name__ in str(raised) or "out of memory" in str(raised)
    assert any(d.finish is not None for d in after)


def test_an_unknown_model_is_not_found(engine):
    client, _ = engine
    with pytest.raises(NotFound, match="model-nope"):
        asyncio.run(_collect(client.chat(ChatArgs("model-nope", HISTORY, "", "", Sampling()))))


def test_through_grpc_an_engine_oom_is_resource_exhausted_and_a_bug_internal(engine):
    client, ids = engine
    servicer = InferenceServicer(client)
    server = BackgroundServer([Service.of(inf, inference_pb2_grpc, "InferenceService", servicer)])
    rpc = InferenceClient(server.addr, timeout=60)
    request = inf.ChatRequest(model_id=ids["full"], sampling=common_pb2.SamplingParams(temperature=0, max_new_tokens=20))
    try:
        codes = []
        for error in (torch.OutOfMemoryError("CUDA out of memory"), KeyError("a bug")):
            with failing_head(client, ids["full"], error), pytest.raises(grpc.RpcError) as e:
                rpc.chat(request)
            codes.append((e.value.code(), e.value.details()))
        assert rpc.chat(request).candidates[0].tokens > 0
    finally:
        rpc.close()
        server.stop()
    assert codes[0][0] == grpc.StatusCode.RESOURCE_EXHAUSTED and "out of memory" in codes[0][1]
    assert codes[1][0] == grpc.StatusCode.INTERNAL and "KeyError" in codes[1][1]


class _Scripted(RoutingClient):
    """A transport that answers every call with the given events."""

    def __init__(self, *events):
        super().__init__()
        self.events = events

    def _start(self, call_id: int, request: Request) -> None:
        self.deliver_soon([(call_id, e) for e in self.events])

    def _cancel(self, call_id: int) -> None:
        pass

    def close(self) -> None:
        pass


def test_an_answer_of_the_wrong_type_is_an_internal_error():
    with pytest.raises(Internal, match="answered Listing to GetStats"):
        asyncio.run(_Scripted(Done(Listing(()))).stats())
    assert asyncio.run(_Scripted(Done(EngineStats(forward_passes=3))).stats()).forward_passes == 3


def test_the_outbox_sends_a_calls_first_event_and_its_end_at_once_and_paces_the_rest():
    piles = []
    outbox = Outbox(piles.append)
    try:
        outbox.put(1, Delta(0, "a"))
        deadline = time.monotonic() + 5
        while not piles and time.monotonic() < deadline:
            time.sleep(0.001)
        for k in range(50):
            outbox.put(1, Delta(0, str(k)))
        outbox.put(1, Done())
        deadline = time.monotonic() + 5
        while sum(len(p) for p in piles) < 52 and time.monotonic() < deadline:
            time.sleep(0.001)
    finally:
        outbox.close()
    assert piles[0] == [(1, Delta(0, "a"))], "the first event went alone, at once"
    assert [e for p in piles for _, e in p] == [Delta(0, "a"), *(Delta(0, str(k)) for k in range(50)), Done()]
    assert len(piles) <= 3, "the rest went in a pile or two, not one send each"


def test_a_model_is_prompted_and_ended_by_the_transcript_its_manifest_records(engine):
    """A plain model trained now ends its turns with EOS; one published before (its manifest says
    "plain") is served as it was trained, a turn ending at a newline."""
    client, ids = engine
    serving = client.serving
    for model_id, kind, end in ((ids["a0"], "plain-eos", "<|endoftext|>"), (ids["full"], "plain", "\n")):
        served = serving.cache.hold(model_id)
        try:
            transcript = serving._persona(served).transcript
            assert (transcript.kind, transcript.end) == (kind, end)
            assert transcript.stops(["Bob"]) == (end, "\nBob:")
        finally:
            serving.cache.release(model_id)
