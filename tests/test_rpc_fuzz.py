"""Every RPC of every service, fed hostile requests built from the protos' descriptors (hypothesis).

One real server on port 0 hosts the three real servicers over one store, which holds persona
models (so inference and model lookups get past NOT_FOUND) and no dataset. Each answer must be OK
or a client error that fits (INVALID_ARGUMENT, NOT_FOUND...), never UNKNOWN, INTERNAL, a status
too big to send or a hang, and the server must still say SERVING after each. Nothing heavy
starts: with no dataset every StartRun and EvaluateModel stops at its checks, the Hub is offline
(tests/conftest.py) so PullBaseModel stops at its first question, and aimed inference calls ask
for a few tokens of tiny models. Set DOPPEL_FUZZ_EXAMPLES to run more examples per RPC.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import duration_pb2
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from doppel.config import Settings
from doppel.errors import MESSAGE_BYTES, clip, quote
from doppel.rpc.server import Service
from doppel.store import open_store
from doppel.v1 import common_pb2, inference_pb2, inference_pb2_grpc, ingest_pb2, ingest_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from services.inference.remote import EngineProcess
from services.inference.server import InferenceServicer
from services.ingest.server import IngestServicer
from services.trainer.server import TrainerServicer
from support.grpcserver import BackgroundServer
from support.personas import PARTICIPANTS, publish_personas
from support.protofuzz import INT_RANGES, messages, raw_requests, texts

EXAMPLES = int(os.environ.get("DOPPEL_FUZZ_EXAMPLES", "15"))
RAW_EXAMPLES = max(EXAMPLES // 3, 4)
# The answers a hostile request may get: anything else is a bug (UNKNOWN, INTERNAL), a status that
# did not fit (RESOURCE_EXHAUSTED, "metadata size exceeds"), or a hang (DEADLINE_EXCEEDED).
ALLOWED = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE,
}
CALL_TIMEOUT_S = 60
SERVICES = [
    ingest_pb2.DESCRIPTOR.services_by_name["IngestService"],
    trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"],
    inference_pb2.DESCRIPTOR.services_by_name["InferenceService"],
]
METHODS = [m for s in SERVICES for m in s.methods]
GENERATING = {"Chat", "ChatStream", "Complete", "Simulate"}


@dataclass
class Stack:
    channel: grpc.Channel
    health: health_pb2_grpc.HealthStub
    model_ids: list[str]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, prefect_api_url) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("fuzz")
    store = open_store(f"file://{tmp}/store")
    ids = publish_personas(store, tmp)
    settings = Settings(home=tmp / "home", store_url=store.url, prefect_api_url=prefect_api_url)
    ingest = IngestServicer(settings, store=store)
    trainer = TrainerServicer(settings, store, serve_runs=False)  # no runner: nothing here may train
    inference = InferenceServicer(EngineProcess(settings))
    server = BackgroundServer([
        Service.of(ingest_pb2, ingest_pb2_grpc, "IngestService", ingest),
        Service.of(trainer_pb2, trainer_pb2_grpc, "TrainerService", trainer),
        Service.of(inference_pb2, inference_pb2_grpc, "InferenceService", inference),
    ])
    channel = grpc.insecure_channel(server.addr)
    try:
        yield Stack(channel, health_pb2_grpc.HealthStub(channel), sorted(ids.values()))
    finally:
        channel.close()
        server.stop()
        trainer.close()
        inference.close()
        store.close()


def _identity(data: bytes) -> bytes:
    return data


def call(stack: Stack, method: MethodDescriptor, requests: list[bytes]) -> tuple[grpc.StatusCode, str]:
    """Send serialised `requests` (a stream for client-streaming RPCs, else the first), read every
    response, and return the status code and its details."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    kind = {(False, False): stack.channel.unary_unary, (False, True): stack.channel.unary_stream,
            (True, False): stack.channel.stream_unary, (True, True): stack.channel.stream_stream}
    rpc = kind[(method.client_streaming, method.server_streaming)](
        path, request_serializer=_identity, response_deserializer=_identity)
    try:
        answer = rpc(iter(requests) if method.client_streaming else requests[0], timeout=CALL_TIMEOUT_S)
        if method.server_streaming:
            for _ in answer:
                pass
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def assert_answered_and_serving(stack: Stack, method: MethodDescriptor, code: grpc.StatusCode, details: str) -> None:
    assert code in ALLOWED, f"{method.full_name} answered {code.name}: {details}"
    assert len(details.encode()) <= MESSAGE_BYTES + 100, f"{method.full_name}: {len(details):,}-character details"
    for name in ("", method.containing_service.full_name):
        reply = stack.health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _sane_sampling() -> st.SearchStrategy[common_pb2.SamplingParams]:
    """Sampling that may pass the checks (a few tokens, a few candidates), with extreme values where they are allowed."""
    positive = st.one_of(st.sampled_from([1e-30, 1.0, 1e30, float("inf")]), st.floats(1e-3, 10))
    lo, hi = INT_RANGES[common_pb2.SamplingParams.DESCRIPTOR.fields_by_name["seed"].type]
    return st.builds(
        common_pb2.SamplingParams,
        temperature=st.one_of(st.just(0.0), positive), repetition_penalty=positive,
        top_p=st.one_of(st.just(1.0), st.floats(1e-30, 1.0)),
        top_k=st.one_of(st.just(0), st.integers(0, 2**31 - 1)),
        max_new_tokens=st.integers(1, 6), n=st.integers(1, 3),
        seed=st.one_of(st.sampled_from([lo, hi, -1, 0]), st.integers(lo, hi)),
        stop=st.lists(texts().filter(bool), max_size=2),
    )


def _aimed(method: MethodDescriptor, model_ids: list[str]) -> st.SearchStrategy[Message] | None:
    """Hostile requests to `method` made to get past its first checks, or None: generating RPCs name a
    model that exists with sampling that may pass and a few turns; StartRun names a speaker, a base
    and a well-formed dataset id (of no dataset, so it ends at NOT_FOUND at most); client streams
    open with a header. Every other field stays hostile."""
    hostile = messages(method.input_type, [*model_ids, *PARTICIPANTS])
    if method.name in GENERATING:
        def generate(request: Message, model_id: str, sampling: common_pb2.SamplingParams, turns: int) -> Message:
            target = request.chat if method.name == "ChatStream" else request
            target.model_id = model_id
            target.sampling.CopyFrom(sampling)
            if method.name == "Simulate":
                request.turns = turns
            return request

        return st.builds(generate, hostile, st.sampled_from(model_ids), _sane_sampling(), st.integers(-2, 3))
    if method.name == "StartRun":
        def train(request: Message, speakers: list[str]) -> Message:
            request.spec.dataset_id, request.spec.base_model = "ds-none", "tiny"
            request.spec.ClearField("speakers")
            request.spec.speakers.extend(speakers)
            return request

        return st.builds(train, hostile, st.lists(st.sampled_from(PARTICIPANTS), min_size=1, max_size=3))
    if "header" in method.input_type.fields_by_name:
        header = method.input_type.fields_by_name["header"].message_type

        def opened(request: Message, head: Message) -> Message:
            request.header.CopyFrom(head)
            return request

        return st.builds(opened, hostile, messages(header, [*model_ids, *PARTICIPANTS]))
    return None


def requests_for(method: MethodDescriptor, stack: Stack) -> st.SearchStrategy[list[Message]]:
    """A request (one to three for client streams) for `method`, sometimes naming things that exist.

    Delete RPCs never get the names of real models, which the rest of the module needs."""
    known = [] if method.name.startswith("Delete") else [*stack.model_ids, *PARTICIPANTS]
    hostile = messages(method.input_type, known)
    aimed = _aimed(method, stack.model_ids)
    if method.client_streaming:
        first = st.one_of(hostile, aimed) if aimed is not None else hostile
        return st.builds(lambda head, rest: [head, *rest], first, st.lists(hostile, max_size=2))
    return st.lists(st.one_of(hostile, aimed) if aimed is not None else hostile, min_size=1, max_size=1)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.full_name.removeprefix("doppel.v1."))
def test_hostile_requests_get_a_client_error_and_the_server_stays_up(stack, method):
    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(requests_for(method, stack))
    def check(requests: list[Message]) -> None:
        code, details = call(stack, method, [r.SerializeToString() for r in requests])
        event(code.name)  # how far requests got: pytest --hypothesis-show-statistics
        assert_answered_and_serving(stack, method, code, details)

    check()


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.full_name.removeprefix("doppel.v1."))
def test_bytes_that_do_not_decode_are_invalid_argument(stack, method):
    cls = GetMessageClass(method.input_type)

    @settings(max_examples=RAW_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(raw_requests(method.input_type))
    def check(data: bytes) -> None:
        code, details = call(stack, method, [data])
        try:
            cls.FromString(data)
        except DecodeError:
            assert code is grpc.StatusCode.INVALID_ARGUMENT, f"{method.full_name} answered {code.name}: {details}"
            assert "not a valid message" in details and method.input_type.full_name in details
        assert_answered_and_serving(stack, method, code, details)

    check()


INVALID_UTF8 = b"\x0a\x02\xc3\x28"  # field 1, a string in every request below, holding bytes that are not UTF-8


@pytest.mark.parametrize("path", ["/doppel.v1.IngestService/GetDataset", "/doppel.v1.TrainerService/WatchRun",
                                  "/doppel.v1.InferenceService/LoadModel"])
def test_a_request_that_does_not_decode_is_invalid_argument_not_unknown(stack, path):
    code, details = call(stack, _method(path), [INVALID_UTF8])
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert f"the request to {path} is not a valid message" in details and "UTF-8" in details


def test_a_stream_message_that_does_not_decode_is_invalid_argument(stack):
    header = ingest_pb2.UploadRequest(header=ingest_pb2.UploadHeader(filename="x.jsonl")).SerializeToString()
    method = _method("/doppel.v1.IngestService/Upload")
    code, details = call(stack, method, [header, b"\x12\x05abc"])  # a chunk cut short
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a valid message" in details and "doppel.v1.UploadRequest" in details


def test_a_100000_character_id_is_answered_with_a_short_message_quoting_its_start(stack):
    request = ingest_pb2.GetDatasetRequest(dataset_id="x" * 100_000).SerializeToString()
    code, details = call(stack, _method("/doppel.v1.IngestService/GetDataset"), [request])
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details == f"invalid dataset id {'x' * 60!r}... (100,000 characters): use 1-64 letters, digits, '-' or '_'"


def _upload(filename: str = "x.jsonl", **options) -> list[bytes]:
    header = ingest_pb2.UploadHeader(filename=filename, options=ingest_pb2.IngestOptions(**options))
    return [ingest_pb2.UploadRequest(header=header).SerializeToString(), ingest_pb2.UploadRequest(chunk=b"{").SerializeToString()]


def _one(message: Message) -> list[bytes]:
    return [message.SerializeToString()]


# What fuzzing found, once each: (RPC, requests, the code it must get, words its details must hold).
FOUND = {
    "a duration past protobuf's range (OverflowError)": (
        "/doppel.v1.TrainerService/StartRun",
        _one(trainer_pb2.StartRunRequest(spec=trainer_pb2.TrainingSpec(
            hyperparameters=trainer_pb2.Hyperparameters(session_gap=duration_pb2.Duration(seconds=2**62))))),
        grpc.StatusCode.INVALID_ARGUMENT, ["spec.hyperparameters.session_gap", "Duration"]),
    "the same in a stream's first message": (
        "/doppel.v1.IngestService/Upload", _upload(session_gap=duration_pb2.Duration(seconds=-(2**40))),
        grpc.StatusCode.INVALID_ARGUMENT, ["header.options.session_gap"]),
    "a zone that is a folder of zones (IsADirectoryError)": (
        "/doppel.v1.IngestService/Upload", _upload(timezone="America"),
        grpc.StatusCode.INVALID_ARGUMENT, ["'America' is not an IANA time zone"]),
    "a zone name too long for a file (OSError)": (
        "/doppel.v1.IngestService/ImportExport",
        _one(ingest_pb2.ImportExportRequest(key="raw/x", options=ingest_pb2.IngestOptions(timezone="é" * 300))),
        grpc.StatusCode.INVALID_ARGUMENT, ["(300 characters) is not an IANA time zone"]),
    "a file name too long for the file system (OSError)": (
        "/doppel.v1.IngestService/Upload", _upload("x" * 100_000 + ".jsonl"),
        grpc.StatusCode.INVALID_ARGUMENT, ["characters left out", "supported formats"]),
    "a page token past what Prefect can count (UNAVAILABLE)": (
        "/doppel.v1.TrainerService/ListRuns", _one(trainer_pb2.ListRunsRequest(page_token="9" * 30)),
        grpc.StatusCode.INVALID_ARGUMENT, ["invalid page token '999999999999999999999999999999'"]),
    "only unknown run states (the filter was ignored: every run listed)": (
        "/doppel.v1.TrainerService/ListRuns", _one(trainer_pb2.ListRunsRequest(states=[99])),
        grpc.StatusCode.INVALID_ARGUMENT, ["unknown run states [99]; use pending (1)"]),
    "a simulation of 2**31 - 1 turns (ran until the caller left)": (
        "/doppel.v1.InferenceService/Simulate", _one(inference_pb2.SimulateRequest(model_id="model-a0", turns=2**31 - 1)),
        grpc.StatusCode.INVALID_ARGUMENT, ["turns must be 0 (the default length) to 1000"]),
    "a negative number of turns (answered OK, with no turns)": (
        "/doppel.v1.InferenceService/Simulate", _one(inference_pb2.SimulateRequest(model_id="model-a0", turns=-1)),
        grpc.StatusCode.INVALID_ARGUMENT, ["turns must be 0"]),
    "unloading an id no model can have (answered OK)": (
        "/doppel.v1.InferenceService/UnloadModel", _one(inference_pb2.UnloadModelRequest(model_id="../x")),
        grpc.StatusCode.INVALID_ARGUMENT, ["invalid model id '../x'"]),
}


@pytest.mark.parametrize("case", FOUND)
def test_what_fuzzing_found_is_a_client_error(stack, case):
    path, requests, expected, words = FOUND[case]
    method = _method(path)
    code, details = call(stack, method, requests)
    assert code is expected, details
    for w in words:
        assert w in details
    assert_answered_and_serving(stack, method, code, details)


def test_an_oversized_message_is_resource_exhausted_and_the_server_stays_up(grpc_server):
    server = grpc_server([], max_message_mb=1)
    with grpc.insecure_channel(server.addr) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=_identity,
                                    response_deserializer=health_pb2.HealthCheckResponse.FromString)
        big = health_pb2.HealthCheckRequest(service="x" * (2 * 1024 * 1024)).SerializeToString()
        with pytest.raises(grpc.RpcError) as e:
            check(big, timeout=10)
        assert e.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        ok = check(health_pb2.HealthCheckRequest().SerializeToString(), timeout=10)
        assert ok.status == health_pb2.HealthCheckResponse.SERVING


def test_quote_and_clip_keep_messages_short_and_say_what_was_cut():
    assert quote("abc") == "'abc'" and quote(7) == "7"
    assert quote("y" * 61) == f"{'y' * 60!r}... (61 characters)"
    assert quote(b"\xff" * 100, limit=2) == "b'\\xff\\xff'... (100 bytes)"
    assert clip("short") == "short"
    long = "start " + "é" * 5000 + " the end says what to do"
    clipped = clip(long)
    assert len(clipped.encode()) <= 1100 and clipped.startswith("start ") and clipped.endswith("what to do")
    assert "characters left out" in clipped


def _method(path: str) -> MethodDescriptor:
    service, name = path.strip("/").split("/")
    return next(s for s in SERVICES if s.full_name == service).methods_by_name[name]
