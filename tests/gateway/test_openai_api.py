"""The OpenAI-compatible API with clients no one here wrote (the `openai` package, LangChain), over a real
inference service on tiny persona models made here, and raw HTTP for what clients hide (errors, limits,
disconnects)."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import openai
import pytest
import torch

from doppel.config import Settings
from doppel.v1 import common_pb2
from doppel.v1 import inference_pb2 as inf
from support.gateway import BackgroundGateway
from support.inference import Running
from support.personas import PARTICIPANTS

torch.set_num_threads(1)
TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def inference(models_store):
    store, _, tmp = models_store
    running = Running(store, tmp / "home")
    yield running
    running.close()


@pytest.fixture(scope="module")
def stack(models_store, inference):
    """(gateway, model ids, inference service) with auth on: the gateway and the service share the token."""
    store, ids, tmp = models_store
    gateway = BackgroundGateway(Settings(home=tmp / "gw", store_url=store.url, inference_addr=inference.server.addr,
                                         api_token=TOKEN))
    yield gateway, ids, inference
    gateway.stop()


@pytest.fixture
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack[0].url, api_key=TOKEN, max_retries=0, timeout=120)


def post(gateway: BackgroundGateway, path: str, body, *, token: str | None = TOKEN, timeout=120) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{gateway.url}{path}", json=body, headers=headers, timeout=timeout)


def running_rows(inference: Running) -> int:
    return inference.client.get_engine_stats(inf.GetEngineStatsRequest()).running


def wait_no_rows(inference: Running, timeout: float = 15) -> int:
    deadline = time.monotonic() + timeout
    while (rows := running_rows(inference)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return rows


HELLO = [{"role": "user", "content": "reply 3 ok"}]


# --- models -------------------------------------------------------------------------------------

def test_models_lists_every_model_and_each_persona_by_name(client, stack):
    _, ids, _ = stack
    models = {m.id: m for m in client.models.list().data}
    assert set(ids.values()) | set(PARTICIPANTS) == set(models)
    group = models[ids["group"]]
    assert group.owned_by == "doppel" and group.created > 0
    assert group.speakers == PARTICIPANTS and group.base_model == "tiny"  # Doppel's own fields ride along
    # A persona's name stands for the newest model that learned them, replying as them.
    assert models["Bob"].root == ids["group"] and models["Bob"].speaker == "Bob"
    assert client.models.retrieve(f"{ids['group']}:Carol").speaker == "Carol"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve(f"{ids['a0']}:Bob")  # a0 learned Alice only
    assert "did not learn to write as 'Bob'" in e.value.message
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("Nobody Known")
    assert e.value.code == "model_not_found"


# --- chat -------------------------------------------------------------------------------------

def test_chat_gives_n_choices_a_seed_repeats_them_and_usage_counts_tokens(client, stack, inference):
    _, ids, _ = stack
    ask = dict(model=ids["a0"], messages=HELLO, n=3, seed=7, temperature=1.0, max_tokens=12)
    first, again = client.chat.completions.create(**ask), client.chat.completions.create(**ask)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2] and len(set(texts)) > 1
    assert texts == [c.message.content for c in again.choices]
    assert texts != [c.message.content for c in client.chat.completions.create(**{**ask, "seed": 8}).choices]
    assert all(c.message.role == "assistant" and c.finish_reason in ("stop", "length") for c in first.choices)
    assert first.object == "chat.completion" and first.id.startswith("chatcmpl-") and first.model == ids["a0"]
    # Usage is the service's own count: the same request over gRPC gives the same tokens.
    grpc_answer = inference.client.chat(inf.ChatRequest(
        model_id=ids["a0"], history=[inf.Turn(speaker="Bob", text="reply 3 ok")], as_speaker="Alice", user_speaker="Bob",
        sampling=common_pb2.SamplingParams(n=3, seed=7, temperature=1.0, max_new_tokens=12)))
    assert texts == [c.text for c in grpc_answer.candidates]
    assert first.usage.completion_tokens == sum(c.tokens for c in grpc_answer.candidates) > 0
    assert first.usage.prompt_tokens == grpc_answer.prompt_tokens > 0
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens


def test_a_stream_sends_the_same_reply_in_openais_chunks_then_usage(client, stack):
    _, ids, _ = stack
    ask = dict(model="Carol", messages=HELLO, temperature=0, max_tokens=24)
    whole = client.chat.completions.create(**ask)
    chunks = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert len({c.id for c in chunks}) == 1
    assert whole.choices[0].message.name == "Carol"


def test_a_stream_of_n_choices_ends_each_one(client, stack):
    _, ids, _ = stack
    chunks = list(client.chat.completions.create(model=ids["a1"], messages=HELLO, n=4, seed=2, max_tokens=10, stream=True))
    ended = [c.choices[0].index for c in chunks if c.choices[0].finish_reason]
    assert sorted(ended) == [0, 1, 2, 3]
    texts = {k: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices[0].index == k) for k in range(4)}
    assert len(set(texts.values())) > 1


def test_the_async_client_serves_concurrent_requests(stack):
    gateway, ids, _ = stack

    async def main():
        async with openai.AsyncOpenAI(base_url=gateway.url, api_key=TOKEN, max_retries=0) as aclient:
            asks = [aclient.chat.completions.create(model=ids[f"a{k % 2}"], messages=HELLO, seed=k, max_tokens=8)
                    for k in range(8)]
            stream = await aclient.chat.completions.create(model=ids["a0"], messages=HELLO, seed=1, max_tokens=8,
                                                           stream=True)
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream])
            return await asyncio.gather(*asks), streamed

    replies, streamed = asyncio.run(main())
    assert len(replies) == 8 and all(r.choices[0].message.content is not None for r in replies)
    assert streamed == replies[0].choices[0].message.content or replies[0].model == ids["a0"]
    assert all(r.usage.completion_tokens > 0 for r in replies)


def test_names_pick_the_speakers_and_the_persona_never_writes_a_turn_for_anyone_else(client, stack):
    _, ids, _ = stack
    replies = []
    for model, user in ((f"{ids['group']}:Alice", "Bob"), (f"{ids['group']}:Carol", "Alice"), ("Alice", "Carol")):
        for seed in range(3):
            messages = [{"role": "user", "name": user, "content": "message number 4 about things"},
                        {"role": "assistant", "content": "and 4"}, {"role": "user", "name": user, "content": "reply 5 ok"}]
            r = client.chat.completions.create(model=model, messages=messages, n=8, seed=seed, temperature=1.3,
                                               max_tokens=40)
            assert {c.message.name for c in r.choices} == {model.rsplit(":", 1)[-1]}
            replies += [c.message.content for c in r.choices]
    assert len(replies) == 72
    tags = [f"{p}:" for p in PARTICIPANTS]
    spoke_for_others = [t for t in replies if any(t.startswith(tag) or f"\n{tag}" in t for tag in tags)]
    assert not spoke_for_others
    with pytest.raises(openai.BadRequestError) as e:  # the user may not play the persona
        client.chat.completions.create(model="Alice", messages=[{"role": "user", "name": "Alice", "content": "hi"}])
    assert e.value.param == "messages"


def test_system_messages_are_not_shown_to_the_persona(client, stack):
    _, ids, _ = stack
    ask = dict(model=ids["a0"], temperature=0, max_tokens=16)
    plain = client.chat.completions.create(messages=HELLO, **ask)
    told = client.chat.completions.create(messages=[{"role": "system", "content": "You are a pirate."}, *HELLO], **ask)
    assert told.choices[0].message.content == plain.choices[0].message.content
    assert told.usage.prompt_tokens == plain.usage.prompt_tokens
    parts = client.chat.completions.create(messages=[{"role": "user", "content": [{"type": "text", "text": "reply 3 ok"}]}],
                                           **ask)
    assert parts.choices[0].message.content == plain.choices[0].message.content


def test_penalties_reach_the_sampler(client, stack, inference):
    _, ids, _ = stack
    ask = dict(model=ids["full"], messages=HELLO, temperature=0, max_tokens=32)
    plain = client.chat.completions.create(**ask).choices[0].message.content
    penalised = client.chat.completions.create(**ask, frequency_penalty=2.0, presence_penalty=1.0).choices[0].message.content
    assert penalised != plain
    grpc_answer = inference.client.chat(inf.ChatRequest(
        model_id=ids["full"], history=[inf.Turn(speaker="Bob", text="reply 3 ok")], as_speaker="Alice", user_speaker="Bob",
        sampling=common_pb2.SamplingParams(temperature=0, max_new_tokens=32, frequency_penalty=2.0, presence_penalty=1.0)))
    assert penalised == grpc_answer.candidates[0].text


def test_langchain_chat_openai_talks_to_a_persona(stack, monkeypatch):
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    monkeypatch.setenv("LANGSMITH_TRACING", "false")
    gateway, ids, _ = stack
    llm = ChatOpenAI(model="Carol", base_url=gateway.url, api_key=TOKEN, temperature=0, max_tokens=16, max_retries=0)
    answer = llm.invoke([HumanMessage("reply 3 ok")])
    streamed = "".join(chunk.content for chunk in llm.stream([HumanMessage("reply 3 ok")]))
    assert isinstance(answer.content, str) and streamed == answer.content
    assert answer.usage_metadata["output_tokens"] > 0 and answer.response_metadata["finish_reason"] in ("stop", "length")


# --- completions ----------------------------------------------------------------------------

def test_completions_continue_each_prompt_n_ways_with_echo_and_stream(client, stack):
    _, ids, _ = stack
    r = client.completions.create(model=ids["full"], prompt=["I love to eat", "We"], n=3, seed=4, max_tokens=8, echo=True)
    assert [c.index for c in r.choices] == list(range(6)) and r.object == "text_completion"
    assert all(c.text.startswith("I love to eat") for c in r.choices[:3]) and all(c.text.startswith("We") for c in r.choices[3:])
    assert len({c.text for c in r.choices[:3]}) > 1
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0
    greedy = dict(model=ids["full"], prompt=["I love to eat", "We"], temperature=0, max_tokens=10)
    whole = client.completions.create(**greedy)
    chunks = list(client.completions.create(**greedy, stream=True, stream_options={"include_usage": True}))
    for k in range(2):
        assert "".join(c.choices[0].text for c in chunks if c.choices and c.choices[0].index == k) == whole.choices[k].text
    assert chunks[-1].usage == whole.usage


def test_a_persona_name_opens_their_turn_in_a_completion(client, stack):
    _, ids, _ = stack
    raw = client.completions.create(model=ids["a0"], prompt="hello", temperature=0, max_tokens=6)
    as_alice = client.completions.create(model="Alice", prompt="hello", temperature=0, max_tokens=6)
    assert as_alice.usage.prompt_tokens > raw.usage.prompt_tokens  # `Alice:` came before the prompt


# --- errors, limits, auth --------------------------------------------------------------------

@pytest.mark.parametrize(("body", "param"), [
    ({"temperature": 5}, "temperature"),
    ({"n": 65}, "n"),
    ({"stop": [""]}, "stop[0]"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"frequency_penalty": 3}, "frequency_penalty"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"logprobs": True}, "logprobs"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0].type"),
    ({"messages": "hi"}, "messages"),
])
def test_a_bad_field_is_a_400_that_names_it(stack, body, param):
    gateway, ids, _ = stack
    r = post(gateway, "/chat/completions", {"model": ids["a0"], "messages": HELLO, **body})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and param.split("[")[0] in error["message"] and error["type"] == "invalid_request_error"


def test_errors_are_openais_shape_with_the_right_status_and_no_traceback(stack):
    gateway, ids, _ = stack
    assert post(gateway, "/chat/completions", {"model": "nobody", "messages": HELLO}).status_code == 404
    r = httpx.post(f"{gateway.url}/chat/completions", content=b"{not json", timeout=30,
                   headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    big = {"model": ids["a0"], "messages": [{"role": "user", "content": "x" * (1024 * 1024)}]}
    r = post(gateway, "/chat/completions", big)
    assert r.status_code == 413 and "DOPPEL_OPENAI_MAX_REQUEST_KB" in r.json()["error"]["message"]
    r = httpx.get(f"{gateway.url}/embeddings", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["message"]
    for r in (post(gateway, "/completions", {"model": ids["a0"], "prompt": [1, 2]}),
              post(gateway, "/chat/completions", {"model": ids["a0"], "messages": HELLO, "n": 0})):
        assert r.status_code == 400 and "Traceback" not in r.text and 'File "' not in r.text


def test_without_the_token_every_route_but_health_is_401(stack):
    gateway, ids, _ = stack
    for token in (None, "wrong"):
        r = post(gateway, "/chat/completions", {"model": ids["a0"], "messages": HELLO}, token=token)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        assert httpx.get(f"{gateway.url}/models", headers=headers, timeout=30).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.url, api_key="wrong", max_retries=0).models.list()
    assert httpx.get(f"{gateway.root}/health", timeout=30).json() == {"status": "ok", "inference": "SERVING"}


def test_a_full_queue_is_429_with_retry_after(models_store):
    store, ids, tmp = models_store
    small = Running(store, tmp / "home-small", inference_queue=1, inference_max_batch=1)
    gateway = BackgroundGateway(Settings(home=tmp / "gw-small", inference_addr=small.server.addr))
    try:
        small.client.load_model(inf.LoadModelRequest(model_id=ids["full"]))
        long = {"model": ids["full"], "prompt": "x", "temperature": 0, "max_tokens": 1000}

        async def main():
            async with httpx.AsyncClient(timeout=120) as http:
                return await asyncio.gather(*(http.post(f"{gateway.url}/completions", json=long) for _ in range(6)))

        answers = asyncio.run(main())
        refused = [r for r in answers if r.status_code == 429]
        assert len(refused) >= 3, [r.status_code for r in answers]
        assert all(int(r.headers["Retry-After"]) >= 1 and r.json()["error"]["type"] == "rate_limit_error" for r in refused)
        assert any(r.status_code == 200 for r in answers)
    finally:
        gateway.stop()
        small.close()


def test_inference_down_is_503(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    gateway = BackgroundGateway(Settings(home=tmp_path, inference_addr=f"127.0.0.1:{port}"))
    try:
        r = httpx.post(f"{gateway.url}/chat/completions", json={"model": "x", "messages": HELLO}, timeout=60)
        assert r.status_code == 503 and "not reachable" in r.json()["error"]["message"]
        assert httpx.get(f"{gateway.root}/health", timeout=30).status_code == 503
    finally:
        gateway.stop()


# --- a caller that leaves -------------------------------------------------------------------

def generated(inference: Running) -> int:
    return inference.client.get_engine_stats(inf.GetEngineStatsRequest()).tokens_generated


def test_a_stream_closed_mid_reply_frees_its_rows(stack):
    gateway, ids, inference = stack
    body = {"model": ids["full"], "prompt": "x", "n": 8, "temperature": 0, "max_tokens": 1000, "stream": True}
    before = generated(inference)
    with httpx.stream("POST", f"{gateway.url}/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert any(next(lines).startswith("data: {") for _ in range(8))
        assert running_rows(inference) == 8  # greedy raw text with no end: each would run 1,000 tokens
    assert wait_no_rows(inference) == 0
    assert generated(inference) - before < 8 * 1000 / 2  # stopped, not run to the end


def test_a_plain_request_whose_caller_gives_up_frees_its_rows(stack):
    gateway, ids, inference = stack
    body = {"model": ids["full"], "prompt": "x", "n": 8, "temperature": 0, "max_tokens": 1000}
    before = generated(inference)
    with pytest.raises(httpx.ReadTimeout):
        post(gateway, "/completions", body, timeout=httpx.Timeout(60, read=0.5))
    assert wait_no_rows(inference) == 0
    assert generated(inference) - before < 8 * 1000 / 2
