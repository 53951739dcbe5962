"""The server bootstrap, interceptors and clients, through real gRPC servers on port 0."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from doppel import errors
from doppel.clients import IngestClient, ServiceClient, TrainerClient
from doppel.rpc.server import Service
from doppel.v1 import ingest_pb2, ingest_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from support.grpcserver import BackgroundServer


class FakeIngest(ingest_pb2_grpc.IngestServiceServicer):
    """Raises a typed core error from each method, the way a real core would."""

    async def ListDatasets(self, request, context):
        return ingest_pb2.ListDatasetsResponse(datasets=[ingest_pb2.Dataset(id="ds-1", name="friends")])

    async def GetDataset(self, request, context):
        raise errors.NotFound(f"dataset {request.dataset_id!r} does not exist")

    async def PreviewDataset(self, request, context):
        raise errors.ParseError("export.zip", "unexpected end of JSON", line=3, entry="messages/inbox/a/message_1.json")

    async def DeleteDataset(self, request, context):
        raise RuntimeError("secret internal detail")

    async def ImportExport(self, request, context):
        raise errors.Overloaded("the ingest queue is full", retry_after=2.5)

    async def Upload(self, request_iterator, context):
        size = 0
        async for part in request_iterator:
            if part.WhichOneof("part") == "header":
                raise errors.InvalidArgument("the header must come first, once")
            size += len(part.chunk)
        raise errors.FailedPrecondition(f"received {size} bytes without a header")


class FakeTrainer(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self):
        self.list_calls = 0

    async def WatchRun(self, request, context):
        yield trainer_pb2.WatchRunResponse(state=trainer_pb2.RUN_STATE_RUNNING, step=1, total_steps=10)
        raise errors.NotFound(f"run {request.run_id!r} vanished")

    async def ListRuns(self, request, context):
        self.list_calls += 1
        raise errors.StorageUnavailable("the store at s3://x does not answer")

    async def GetRun(self, request, context):
        await asyncio.sleep(float(request.run_id))
        return trainer_pb2.GetRunResponse(run=trainer_pb2.Run(run_id=request.run_id))


def services(trainer: FakeTrainer | None = None) -> list[Service]:
    return [
        Service.of(ingest_pb2, ingest_pb2_grpc, "IngestService", FakeIngest()),
        Service.of(trainer_pb2, trainer_pb2_grpc, "TrainerService", trainer or FakeTrainer()),
    ]


@pytest.fixture
def server(grpc_server):
    return grpc_server(services())


def code_and_details(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_health_reports_serving_for_the_server_and_each_service(server):
    with ServiceClient(server.addr) as client:
        assert client.health() == health_pb2.HealthCheckResponse.SERVING
        assert client.health("doppel.v1.IngestService") == health_pb2.HealthCheckResponse.SERVING
        assert client.health("doppel.v1.TrainerService") == health_pb2.HealthCheckResponse.SERVING
        code, _ = code_and_details(lambda: client.health("doppel.v1.NoSuchService"))
        assert code is grpc.StatusCode.NOT_FOUND


def list_services(channel, metadata=()) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                        metadata=metadata, timeout=5)
    return sorted(s.name for reply in replies for s in reply.list_services_response.service)


def test_reflection_lists_every_service(server):
    with grpc.insecure_channel(server.addr) as channel:
        assert list_services(channel) == [
            "doppel.v1.IngestService",
            "doppel.v1.TrainerService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        ]


def test_typed_errors_become_status_codes_with_readable_messages(server):
    with IngestClient(server.addr) as ingest:
        code, details = code_and_details(lambda: ingest.get_dataset(ingest_pb2.GetDatasetRequest(dataset_id="nope")))
        assert (code, details) == (grpc.StatusCode.NOT_FOUND, "dataset 'nope' does not exist")

        code, details = code_and_details(lambda: ingest.preview_dataset(ingest_pb2.PreviewDatasetRequest()))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert details == "export.zip, line 3, entry messages/inbox/a/message_1.json: unexpected end of JSON"

        code, details = code_and_details(lambda: ingest.delete_dataset(ingest_pb2.DeleteDatasetRequest()))
        assert code is grpc.StatusCode.INTERNAL
        assert "DeleteDataset" in details and "RuntimeError" in details
        assert "secret internal detail" not in details and "Traceback" not in details


def test_overloaded_carries_a_retry_hint(server):
    with IngestClient(server.addr) as ingest, pytest.raises(grpc.RpcError) as info:
        ingest.import_export(ingest_pb2.ImportExportRequest(key="raw/x"))
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details() == "the ingest queue is full"
    assert dict(info.value.trailing_metadata())["retry-after-ms"] == "2500"


def test_errors_in_streams_keep_what_was_sent_before(server):
    with TrainerClient(server.addr) as trainer, IngestClient(server.addr) as ingest:
        events = trainer.watch_run(trainer_pb2.WatchRunRequest(run_id="r1"))
        assert next(events).step == 1
        code, details = code_and_details(lambda: next(events))
        assert (code, details) == (grpc.StatusCode.NOT_FOUND, "run 'r1' vanished")

        chunks = [ingest_pb2.UploadRequest(chunk=b"abc"), ingest_pb2.UploadRequest(chunk=b"de")]
        code, details = code_and_details(lambda: ingest.upload(chunks))
        assert (code, details) == (grpc.StatusCode.FAILED_PRECONDITION, "received 5 bytes without a header")


def test_methods_a_servicer_lacks_answer_unimplemented(server):
    with TrainerClient(server.addr) as trainer:
        code, details = code_and_details(lambda: trainer.list_models(trainer_pb2.ListModelsRequest()))
    assert code is grpc.StatusCode.UNIMPLEMENTED
    assert "/doppel.v1.TrainerService/ListModels" in details


def test_unavailable_is_retried_by_the_client(grpc_server):
    trainer = FakeTrainer()
    server = grpc_server(services(trainer))
    with TrainerClient(server.addr) as client:
        code, details = code_and_details(lambda: client.list_runs(trainer_pb2.ListRunsRequest()))
    assert (code, details) == (grpc.StatusCode.UNAVAILABLE, "the store at s3://x does not answer")
    assert trainer.list_calls == 5  # maxAttempts of the retry policy


def test_a_call_made_while_the_server_restarts_succeeds():
    first = BackgroundServer(services())
    port = first.running.port
    first.stop()
    later: list[BackgroundServer] = []
    starter = threading.Timer(0.5, lambda: later.append(BackgroundServer(services(), listen=f"127.0.0.1:{port}")))
    starter.start()
    try:
        with IngestClient(f"127.0.0.1:{port}") as ingest:
            reply = ingest.list_datasets(ingest_pb2.ListDatasetsRequest())
        assert [d.id for d in reply.datasets] == ["ds-1"]
    finally:
        starter.join()
        for s in later:
            s.stop()


def test_client_default_deadline_applies_to_unary_calls(server):
    with TrainerClient(server.addr, timeout=0.3) as trainer:
        code, _ = code_and_details(lambda: trainer.get_run(trainer_pb2.GetRunRequest(run_id="2")))
        assert code is grpc.StatusCode.DEADLINE_EXCEEDED
        assert trainer.get_run(trainer_pb2.GetRunRequest(run_id="0.5"), timeout=5).run.run_id == "0.5"


def test_auth_requires_the_token_except_for_health(grpc_server):
    server = grpc_server(services(), token="s3cret")
    request = ingest_pb2.ListDatasetsRequest()
    with IngestClient(server.addr) as anonymous, IngestClient(server.addr, token="wrong") as wrong:
        for client in (anonymous, wrong):
            code, details = code_and_details(lambda c=client: c.list_datasets(request))
            assert code is grpc.StatusCode.UNAUTHENTICATED
            assert "DOPPEL_API_TOKEN" in details
        assert anonymous.health() == health_pb2.HealthCheckResponse.SERVING
        with TrainerClient(server.addr) as trainer:
            code, _ = code_and_details(lambda: next(trainer.watch_run(trainer_pb2.WatchRunRequest(run_id="r"))))
            assert code is grpc.StatusCode.UNAUTHENTICATED
        code, _ = code_and_details(lambda: list_services(anonymous.channel))
        assert code is grpc.StatusCode.UNAUTHENTICATED
    with IngestClient(server.addr, token="s3cret") as client:
        assert [d.id for d in client.list_datasets(request).datasets] == ["ds-1"]
        assert "doppel.v1.IngestService" in list_services(client.channel)
        # Typed errors still map behind auth.
        code, _ = code_and_details(lambda: client.get_dataset(ingest_pb2.GetDatasetRequest(dataset_id="x")))
        assert code is grpc.StatusCode.NOT_FOUND


def test_graceful_stop_lets_calls_in_flight_finish():
    server = BackgroundServer(services(), grace=5.0)
    result: dict = {}

    def slow_call():
        with TrainerClient(server.addr) as trainer:
            result["run"] = trainer.get_run(trainer_pb2.GetRunRequest(run_id="1.0"), timeout=10).run

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(0.4)
    server.stop()
    caller.join()
    assert result["run"].run_id == "1.0"
    with IngestClient(server.addr, timeout=2) as ingest:
        code, _ = code_and_details(lambda: ingest.list_datasets(ingest_pb2.ListDatasetsRequest()))
    assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_a_taken_port_is_a_clear_error(server):
    with pytest.raises(errors.FailedPrecondition, match="cannot listen on 127.0.0.1:"):
        BackgroundServer(services(), listen=server.addr)
