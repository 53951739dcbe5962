"""InferenceService through a real gRPC server, with tiny random models and adapters made here."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import torch
from typer.testing import CliRunner

from doppel.cli.main import app
from doppel.v1 import common_pb2
from doppel.v1 import inference_pb2 as inf
from support.inference import Running

torch.set_num_threads(1)


def sampling(**kw) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(**kw)


@pytest.fixture(scope="module")
def served(models_store):
    """(client, model ids, servicer) of one inference service."""
    store, ids, tmp = models_store
    running = Running(store, tmp / "home")
    yield running.client, ids, running.servicer
    running.close()


def chat(client, model_id, **kw) -> inf.ChatResponse:
    history = [inf.Turn(speaker="Bob", text="reply 3 ok"), inf.Turn(speaker="Carol", text="and 3")]
    return client.chat(inf.ChatRequest(model_id=model_id, history=history, **kw))


def test_chat_gives_n_different_candidates_and_a_seed_repeats_them(served):
    client, ids, _ = served
    s = sampling(n=4, seed=3, temperature=1.0, max_new_tokens=16)
    first = chat(client, ids["a0"], sampling=s)
    again = chat(client, ids["a0"], sampling=s)
    assert first.speaker == "Alice" and len(first.candidates) == 4
    assert [c.text for c in first.candidates] == [c.text for c in again.candidates]
    assert len({c.text for c in first.candidates}) > 1
    assert all(c.tokens > 0 and c.finish_reason != inf.FINISH_REASON_UNSPECIFIED for c in first.candidates)


def test_a_stream_sends_the_same_text_as_chat(served):
    client, ids, _ = served
    s = sampling(temperature=0, max_new_tokens=24)
    whole = chat(client, ids["a1"], sampling=s).candidates[0]
    history = [inf.Turn(speaker="Bob", text="reply 3 ok"), inf.Turn(speaker="Carol", text="and 3")]
    pieces = list(client.chat_stream(inf.ChatStreamRequest(chat=inf.ChatRequest(model_id=ids["a1"], history=history, sampling=s))))
    assert "".join(p.delta for p in pieces) == whole.text
    assert pieces[-1].finish_reason == whole.finish_reason != inf.FINISH_REASON_UNSPECIFIED


def test_the_model_never_speaks_as_the_users_participant(served):
    client, ids, _ = served
    texts = []
    for seed in range(6):
        r = chat(client, ids["group"], as_speaker="Alice", user_speaker="Bob",
                 sampling=sampling(n=8, seed=seed, temperature=1.3, max_new_tokens=40))
        texts += [c.text for c in r.candidates]
    assert len(texts) == 48
    assert not any(t.startswith("Bob:") or "\nBob:" in t for t in texts)
    with pytest.raises(grpc.RpcError) as e:
        chat(client, ids["group"], as_speaker="Bob", user_speaker="Bob")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_streamed_completion_sends_the_same_text_and_every_reply_counts_its_prompt(served):
    client, ids, _ = served
    s = sampling(n=2, temperature=0, max_new_tokens=12)
    whole = client.complete(inf.CompleteRequest(model_id=ids["full"], prompt="I love to eat", sampling=s))
    pieces = list(client.stub.CompleteStream(inf.CompleteStreamRequest(
        complete=inf.CompleteRequest(model_id=ids["full"], prompt="I love to eat", sampling=s))))
    for k in range(2):
        mine = [p for p in pieces if p.index == k]
        assert "".join(p.delta for p in mine) == whole.candidates[k].text
        assert mine[-1].finish_reason == whole.candidates[k].finish_reason and mine[-1].tokens == whole.candidates[k].tokens
        assert all(not p.finish_reason and not p.tokens for p in mine[:-1])
    assert whole.prompt_tokens == pieces[-1].prompt_tokens > 0
    longer = client.complete(inf.CompleteRequest(model_id=ids["full"], prompt="I love to eat a lot of things", sampling=s))
    assert longer.prompt_tokens > whole.prompt_tokens
    reply = chat(client, ids["a0"], sampling=s)
    assert reply.prompt_tokens > 0


def test_complete_continues_a_raw_prompt(served):
    client, ids, _ = served
    s = sampling(n=3, seed=1, max_new_tokens=10)
    r = client.complete(inf.CompleteRequest(model_id=ids["full"], prompt="I love to eat", sampling=s))
    assert len(r.candidates) == 3 and all(c.tokens > 0 for c in r.candidates)
    assert len({c.text for c in r.candidates}) > 1


def test_simulate_writes_turns_among_the_participants(served):
    client, ids, _ = served
    turns = list(client.simulate(inf.SimulateRequest(
        model_id=ids["group"], participants=["Alice", "Bob"], first_speaker="Alice", first_prompt="hello",
        turns=6, sampling=sampling(seed=2, max_new_tokens=20))))
    assert [t.index for t in turns] == list(range(6))
    assert turns[0].turn.speaker == "Alice" and turns[0].turn.text.startswith("hello")
    assert all(t.turn.speaker in ("Alice", "Bob") for t in turns)


def test_a_simulation_with_a_speaker_the_model_never_learned_is_refused_with_what_to_do(served, monkeypatch):
    client, ids, _ = served
    request = inf.SimulateRequest(model_id=ids["a0"], participants=["Alice", "Bob"], turns=6)  # a0 learned Alice only
    with pytest.raises(grpc.RpcError) as e:
        list(client.simulate(request))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "did not learn to write as 'Bob'" in e.value.details()
    assert "doppel train --dataset d --persona Alice --persona Bob" in e.value.details()
    assert f"doppel chat --model {ids['a0']} --me Bob" in e.value.details()
    monkeypatch.setenv("DOPPEL_INFERENCE_ADDR", client.addr)
    result = CliRunner().invoke(app, ["simulate", "--model", ids["a0"], "--participants", "Alice,Bob", "--turns", "6"])
    assert result.exit_code == 1 and "Alice:" not in result.stdout
    assert "'Bob'" in result.stderr and "--persona Alice --persona Bob" in result.stderr


def test_a_group_model_simulates_each_participant_taking_turns(served):
    client, ids, _ = served
    for seed in range(3):
        turns = list(client.simulate(inf.SimulateRequest(
            model_id=ids["group"], participants=["Alice", "Bob"], turns=8, sampling=sampling(seed=seed, max_new_tokens=8))))
        speakers = [t.turn.speaker for t in turns]
        assert len(speakers) == 8 and set(speakers) == {"Alice", "Bob"}, speakers
        assert not any(speakers[k] == speakers[k + 1] == speakers[k + 2] for k in range(6)), speakers


def test_a_simulation_never_says_the_same_thing_twice_in_a_row(served):
    client, ids, _ = served
    # greedy sampling on this tiny model repeats a turn straight away (and gives empty ones) unless sampled again
    turns = list(client.simulate(inf.SimulateRequest(
        model_id=ids["group"], participants=["Alice", "Bob"], turns=8, sampling=sampling(temperature=0.0, max_new_tokens=12))))
    said = [" ".join(t.turn.text.split()).casefold() for t in turns]
    assert len(said) == 8 and all(said), said
    assert not any(said[k] in said[max(0, k - 4):k] for k in range(len(said))), said


def test_unknown_models_and_speakers_are_clear_errors(served):
    client, ids, _ = served
    with pytest.raises(grpc.RpcError) as e:
        chat(client, "model-nope")
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "model-nope" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        chat(client, ids["a0"], as_speaker="Zed")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "Alice, Bob, Carol" in e.value.details()


def test_concurrent_requests_share_forward_passes(served):
    client, ids, _ = served
    s = sampling(temperature=1.0, max_new_tokens=12, seed=5)
    chat(client, ids["a0"], sampling=s)  # loaded
    chat(client, ids["a1"], sampling=s)
    stats = client.get_engine_stats(inf.GetEngineStatsRequest())
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda k: chat(client, ids[f"a{k % 2}"], sampling=s), range(16)))
    after = client.get_engine_stats(inf.GetEngineStatsRequest())
    tokens = sum(c.tokens for r in replies for c in r.candidates)
    passes = after.forward_passes - stats.forward_passes
    assert tokens > 16 and passes < tokens / 2, (passes, tokens)  # one at a time would need about one pass per token


def test_a_cancelled_stream_frees_its_slot(served):
    client, ids, _ = served
    request = inf.ChatStreamRequest(chat=inf.ChatRequest(model_id=ids["a0"], sampling=sampling(max_new_tokens=1000, temperature=0)))
    stream = client.chat_stream(request)
    next(iter(stream))
    assert client.get_engine_stats(inf.GetEngineStatsRequest()).running == 1  # greedy: no end of turn soon
    stream.cancel()
    deadline = time.monotonic() + 10
    while client.get_engine_stats(inf.GetEngineStatsRequest()).running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.get_engine_stats(inf.GetEngineStatsRequest()).running == 0


def test_a_full_queue_answers_resource_exhausted(models_store):
    store, ids, tmp = models_store
    running = Running(store, tmp / "home-small", inference_queue=2, inference_max_batch=1)
    client = running.client
    try:
        client.load_model(inf.LoadModelRequest(model_id=ids["full"]))
        # greedy raw text with no end string: it runs to max_new_tokens (a second or more here), holding the one row
        long = inf.CompleteRequest(model_id=ids["full"], prompt="x", sampling=sampling(max_new_tokens=1000, temperature=0))
        # Sent at once: one runs, two wait in the queue, and the rest find it full. (Polling the
        # stats for "1 running, 2 queued" raced with the engine, which now runs the long one in ~1 s.)
        calls = [client.stub.Complete.future(long) for _ in range(6)]
        refused = []
        for call in calls:
            try:
                call.result(timeout=60)
            except grpc.RpcError as e:
                refused.append(e)
        assert len(refused) >= 3, [e.code() for e in refused]
        assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry" in e.details() for e in refused), refused
        assert client.get_engine_stats(inf.GetEngineStatsRequest()).requests_completed >= 1
    finally:
        running.close()


def test_ten_times_the_queue_in_concurrent_chats_sheds_the_excess_with_a_retry_hint(models_store):
    import psutil

    from doppel.rpc.interceptors import RETRY_AFTER_KEY

    store, ids, tmp = models_store
    capacity = 4
    running = Running(store, tmp / "home-overload", inference_queue=capacity, inference_max_batch=2)
    client = running.client
    try:
        assert chat(client, ids["a0"], sampling=sampling(max_new_tokens=2)).candidates  # loaded and warm
        engine = psutil.Process(running.servicer.engine.pid)
        request = inf.ChatRequest(model_id=ids["a0"], history=[inf.Turn(speaker="Bob", text="hi")],
                                  sampling=sampling(max_new_tokens=24, temperature=1.0, seed=1))
        sent = time.monotonic()
        calls = [client.stub.Chat.future(request) for _ in range(10 * capacity)]
        admitted, refused = [], []
        for call in calls:
            try:
                reply = call.result(timeout=120)
                admitted.append(time.monotonic() - sent)
                assert reply.candidates and reply.candidates[0].tokens > 0
            except grpc.RpcError as e:
                refused.append(e)
        assert refused and all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused), {e.code() for e in refused}
        hints = [dict(e.trailing_metadata() or ()).get(RETRY_AFTER_KEY) for e in refused]
        assert all(h is not None and int(h) > 0 for h in hints), hints  # each says when to try again
        assert len(admitted) >= capacity  # at least a queue's worth was served
        assert engine.is_running() and running.servicer.engine.pid == engine.pid  # no crash, no out-of-memory restart
        admitted.sort()
        p95 = admitted[min(len(admitted) - 1, int(0.95 * len(admitted)))]
        print(f"overload: {len(calls)} chats, {len(admitted)} admitted, {len(refused)} refused; "
              f"admitted latency p50 {admitted[len(admitted) // 2]:.2f} s, p95 {p95:.2f} s")
        assert chat(client, ids["a0"], sampling=sampling(max_new_tokens=2)).candidates  # and it still serves
    finally:
        running.close()


def test_load_list_and_unload(served):
    client, ids, _ = served
    loaded = client.load_model(inf.LoadModelRequest(model_id=ids["a1"])).model
    assert loaded.loaded and loaded.adapter and loaded.speakers == ["Bob"]
    listed = {m.model_id: m for m in client.list_served_models(inf.ListServedModelsRequest()).models}
    assert set(ids.values()) <= set(listed) and listed[ids["a1"]].loaded
    assert client.unload_model(inf.UnloadModelRequest(model_id=ids["a1"])).was_loaded
    assert not client.unload_model(inf.UnloadModelRequest(model_id=ids["a1"])).was_loaded
    assert ids["a1"] not in {m.model_id for m in client.list_served_models(inf.ListServedModelsRequest(loaded_only=True)).models}
    assert chat(client, ids["a1"], sampling=sampling(max_new_tokens=4)).candidates  # loads again on demand


def test_the_cache_evicts_under_its_budget_and_reloads_on_demand(models_store):
    store, ids, tmp = models_store
    running = Running(store, tmp / "home-budget", inference_cache_mb=4)  # one tiny model (~3 MB) at a time
    client = running.client
    try:
        def loaded() -> set[str]:
            return {m.model_id for m in client.list_served_models(inf.ListServedModelsRequest(loaded_only=True)).models}

        first = chat(client, ids["a0"], sampling=sampling(max_new_tokens=3))
        assert first.candidates
        assert loaded() == {ids["a0"]}
        second = chat(client, ids["full"], sampling=sampling(max_new_tokens=3))
        assert second.candidates
        assert loaded() == {ids["full"]}, "the adapter and its base made room"
        stats = client.get_engine_stats(inf.GetEngineStatsRequest())
        assert stats.cache_bytes <= stats.cache_budget_bytes == 4 * 2**20
        # the evicted engine's counters stay in the totals (each candidate's end-of-turn token is counted there too)
        replies = [*first.candidates, *second.candidates]
        assert 0 <= stats.tokens_generated - sum(c.tokens for c in replies) <= len(replies)
        assert stats.requests_completed == 2
        assert chat(client, ids["a0"], sampling=sampling(max_new_tokens=3)).candidates
        assert loaded() == {ids["a0"]}
    finally:
        running.close()


def test_the_front_end_process_does_not_load_torch():
    """The engine (torch, the models) runs in a process of its own; the gRPC process stays light."""
    import subprocess
    import sys

    code = "import sys, services.inference.server; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_dead_engine_process_fails_its_calls_and_the_next_call_starts_another(models_store):
    import os
    import signal

    store, ids, tmp = models_store
    running = Running(store, tmp / "home-crash")
    client = running.client
    try:
        first_pid = running.servicer.engine.pid
        request = inf.ChatStreamRequest(chat=inf.ChatRequest(model_id=ids["a0"], sampling=sampling(max_new_tokens=1000, temperature=0)))
        stream = client.chat_stream(request)
        next(iter(stream))
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(grpc.RpcError) as e:
            list(stream)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "engine process stopped" in e.value.details()
        assert chat(client, ids["a0"], sampling=sampling(max_new_tokens=4)).candidates
        assert running.servicer.engine.pid not in (None, first_pid)
    finally:
        running.close()


def test_repeated_engine_kills_leak_no_process_descriptor_or_memory(models_store):
    import os
    import signal

    import psutil

    store, ids, tmp = models_store
    running = Running(store, tmp / "home-kills")
    me = psutil.Process()
    try:
        assert chat(running.client, ids["a0"], sampling=sampling(max_new_tokens=2)).candidates  # warm: one engine up
        fds, rss = me.num_fds(), me.memory_info().rss

        def engines() -> set[int]:  # this module's other services have engines too
            return {c.pid for c in me.children(recursive=True) if "engine_process" in " ".join(c.cmdline())}

        others = engines() - {running.servicer.engine.pid}
        killed = []
        for _ in range(4):
            pid = running.servicer.engine.pid
            stream = running.client.chat_stream(inf.ChatStreamRequest(chat=inf.ChatRequest(
                model_id=ids["a0"], sampling=sampling(max_new_tokens=1000, temperature=0))))
            next(iter(stream))
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            with pytest.raises(grpc.RpcError) as e:
                list(stream)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert chat(running.client, ids["a0"], sampling=sampling(max_new_tokens=2)).candidates
        assert engines() == others | {running.servicer.engine.pid} and running.servicer.engine.pid not in killed
        assert not [pid for pid in killed if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        assert not [c for c in me.children(recursive=True) if c.status() == psutil.STATUS_ZOMBIE]  # every one reaped
        assert me.num_fds() <= fds + 2  # a stray pipe per kill would show as 4 or more
        assert me.memory_info().rss - rss < 64 * 2**20  # the front end holds no engine's memory
    finally:
        running.close()
