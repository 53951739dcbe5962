"""Typed clients of the three services, for the CLI, the UI and other services.

Each method takes and returns the generated messages, so a call reads like the proto.
Channels come from `doppel.rpc.channel.open_channel`: the API token, a default deadline
on unary calls and retries on UNAVAILABLE are applied there, once for every method.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from doppel.config import Settings
from doppel.files import Received, sha256_of
from doppel.rpc.channel import open_channel
from doppel.v1 import inference_pb2 as inf
from doppel.v1 import inference_pb2_grpc, ingest_pb2_grpc, trainer_pb2_grpc
from doppel.v1 import ingest_pb2 as ing
from doppel.v1 import trainer_pb2 as tr

Timeout = float | None
UPLOAD_CHUNK = 1 << 20  # well under the default 64 MiB message limit


class ServiceClient:
    """A channel to one service; close it, or use the client as a context manager."""

    def __init__(self, addr: str, *, token: str | None = None, timeout: Timeout = 30.0, max_message_mb: int = 64):
        self.addr = addr
        self.channel = open_channel(addr, token=token, timeout=timeout, max_message_mb=max_message_mb)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    @classmethod
    def from_settings(cls, settings: Settings, addr: str | None = None) -> Self:
        """A client for the service at `addr`, or at the address `settings` gives it."""
        return cls(
            addr or cls._addr(settings),
            token=settings.token(),
            timeout=settings.rpc_timeout_s,
            max_message_mb=settings.max_message_mb,
        )

    @staticmethod
    def _addr(settings: Settings) -> str:
        raise NotImplementedError

    def health(self, service: str = "", *, timeout: Timeout = 5.0) -> health_pb2.HealthCheckResponse.ServingStatus:
        """The standard health check of `service` ("" is the whole server)."""
        return self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout).status

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class IngestClient(ServiceClient):
    """Client of `doppel.v1.IngestService`."""

    def __init__(self, addr: str, **kwargs):
        super().__init__(addr, **kwargs)
        self.stub = ingest_pb2_grpc.IngestServiceStub(self.channel)

    @staticmethod
    def _addr(settings: Settings) -> str:
        return settings.ingest_addr

    def upload(self, parts: Iterable[ing.UploadRequest], *, timeout: Timeout = None) -> ing.UploadResponse:
        return self.stub.Upload(iter(parts), timeout=timeout)

    def upload_file(
        self,
        path: str | os.PathLike[str],
        header: ing.UploadHeader,
        *,
        chunk_bytes: int = UPLOAD_CHUNK,
        progress: Callable[[int], None] | None = None,
        timeout: Timeout = None,
    ) -> ing.UploadResponse:
        """Upload a local file in chunks after `header`, with its size and sha256 filled in;
        `progress` is called with the bytes sent so far."""
        full = ing.UploadHeader()
        full.CopyFrom(header)
        full.size_bytes = os.path.getsize(path)
        full.sha256 = sha256_of(path)

        def parts() -> Iterator[ing.UploadRequest]:
            yield ing.UploadRequest(header=full)
            sent = 0
            with open(path, "rb") as f:
                while chunk := f.read(chunk_bytes):
                    yield ing.UploadRequest(chunk=chunk)
                    sent += len(chunk)
                    if progress:
                        progress(sent)

        return self.upload(parts(), timeout=timeout)

    def import_export(self, request: ing.ImportExportRequest, *, timeout: Timeout = None) -> ing.ImportExportResponse:
        return self.stub.ImportExport(request, timeout=timeout)

    def list_datasets(self, request: ing.ListDatasetsRequest, *, timeout: Timeout = None) -> ing.ListDatasetsResponse:
        return self.stub.ListDatasets(request, timeout=timeout)

    def get_dataset(self, request: ing.GetDatasetRequest, *, timeout: Timeout = None) -> ing.GetDatasetResponse:
        return self.stub.GetDataset(request, timeout=timeout)

    def preview_dataset(
        self, request: ing.PreviewDatasetRequest, *, timeout: Timeout = None
    ) -> ing.PreviewDatasetResponse:
        return self.stub.PreviewDataset(request, timeout=timeout)

    def delete_dataset(self, request: ing.DeleteDatasetRequest, *, timeout: Timeout = None) -> ing.DeleteDatasetResponse:
        return self.stub.DeleteDataset(request, timeout=timeout)


class TrainerClient(ServiceClient):
    """Client of `doppel.v1.TrainerService`."""

    def __init__(self, addr: str, **kwargs):
        super().__init__(addr, **kwargs)
        self.stub = trainer_pb2_grpc.TrainerServiceStub(self.channel)

    @staticmethod
    def _addr(settings: Settings) -> str:
        return settings.trainer_addr

    def start_run(self, request: tr.StartRunRequest, *, timeout: Timeout = None) -> tr.StartRunResponse:
        return self.stub.StartRun(request, timeout=timeout)

    def get_run(self, request: tr.GetRunRequest, *, timeout: Timeout = None) -> tr.GetRunResponse:
        return self.stub.GetRun(request, timeout=timeout)

    def list_runs(self, request: tr.ListRunsRequest, *, timeout: Timeout = None) -> tr.ListRunsResponse:
        return self.stub.ListRuns(request, timeout=timeout)

    def cancel_run(self, request: tr.CancelRunRequest, *, timeout: Timeout = None) -> tr.CancelRunResponse:
        return self.stub.CancelRun(request, timeout=timeout)

    def watch_run(self, request: tr.WatchRunRequest, *, timeout: Timeout = None) -> Iterator[tr.WatchRunResponse]:
        return self.stub.WatchRun(request, timeout=timeout)

    def list_base_models(
        self, request: tr.ListBaseModelsRequest, *, timeout: Timeout = None
    ) -> tr.ListBaseModelsResponse:
        return self.stub.ListBaseModels(request, timeout=timeout)

    def add_base_model(
        self, path: str | os.PathLike[str], name: str, *, chunk_bytes: int = UPLOAD_CHUNK,
        progress: Callable[[int, int], None] | None = None, timeout: Timeout = None,
    ) -> tr.AddBaseModelResponse:
        """Upload a base model: a folder written by `save_pretrained` (only the files a stored base
        keeps) or one `.gguf` file; `progress(sent, total)` in bytes."""
        from doppel.bases import kept

        root = Path(path)
        if root.is_file():
            files = [(root.name, root)]
        else:
            files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())
            files = [(rel, p) for rel, p in files if kept(rel)]
        header = tr.AddBaseModelRequest(header=tr.AddBaseModelHeader(name=name, source=root.name))
        return self.stub.AddBaseModel(_sent(header, files, tr.AddBaseModelRequest, chunk_bytes, progress), timeout=timeout)

    def import_model(
        self, path: str | os.PathLike[str], name: str = "", *, chunk_bytes: int = UPLOAD_CHUNK,
        progress: Callable[[int, int], None] | None = None, timeout: Timeout = None,
    ) -> tr.ImportModelResponse:
        """Upload a folder that `export_to` wrote (an adapter or a merged model) as a new model named `name`
        (empty: the exported one's); `progress(sent, total)` in bytes."""
        root = Path(path)
        if not (root / "doppel.json").is_file():
            raise FileNotFoundError(f"{root} is not a Doppel export: it has no doppel.json")
        files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())
        header = tr.ImportModelRequest(header=tr.ImportModelHeader(name=name))
        return self.stub.ImportModel(_sent(header, files, tr.ImportModelRequest, chunk_bytes, progress), timeout=timeout)

    def pull_base_model(self, request: tr.PullBaseModelRequest, *, timeout: Timeout = None) -> Iterator[tr.PullBaseModelResponse]:
        return self.stub.PullBaseModel(request, timeout=timeout)

    def list_models(self, request: tr.ListModelsRequest, *, timeout: Timeout = None) -> tr.ListModelsResponse:
        return self.stub.ListModels(request, timeout=timeout)

    def get_model(self, request: tr.GetModelRequest, *, timeout: Timeout = None) -> tr.GetModelResponse:
        return self.stub.GetModel(request, timeout=timeout)

    def evaluate_model(self, request: tr.EvaluateModelRequest, *, timeout: Timeout = None) -> Iterator[tr.EvaluateModelResponse]:
        return self.stub.EvaluateModel(request, timeout=timeout)

    def delete_model(self, request: tr.DeleteModelRequest, *, timeout: Timeout = None) -> tr.DeleteModelResponse:
        return self.stub.DeleteModel(request, timeout=timeout)

    def export_model(self, request: tr.ExportModelRequest, *, timeout: Timeout = None) -> Iterator[tr.ExportModelResponse]:
        return self.stub.ExportModel(request, timeout=timeout)

    def export_to(self, request: tr.ExportModelRequest, out: str | os.PathLike[str], *,
                  progress: Callable[[int, int], None] | None = None, timeout: Timeout = None) -> list[str]:
        """Export a model into the new folder `out`, each file checked against its size and sha256; the
        files, relative to `out`. Written beside it and renamed when whole: a failed export leaves nothing.
        `progress(received, total)` in bytes."""
        target = Path(out)
        if target.exists():
            raise FileExistsError(f"{target} exists; export to a path that does not")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{target.name}-", dir=target.parent) as tmp:
            staged = Path(tmp) / "export"
            files = received_files(self.export_model(request, timeout=timeout), staged, progress)
            staged.rename(target)
        return files


class InferenceClient(ServiceClient):
    """Client of `doppel.v1.InferenceService`."""

    def __init__(self, addr: str, **kwargs):
        super().__init__(addr, **kwargs)
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)

    @staticmethod
    def _addr(settings: Settings) -> str:
        return settings.inference_addr

    def chat(self, request: inf.ChatRequest, *, timeout: Timeout = None) -> inf.ChatResponse:
        return self.stub.Chat(request, timeout=timeout)

    def chat_stream(self, request: inf.ChatStreamRequest, *, timeout: Timeout = None) -> Iterator[inf.ChatStreamResponse]:
        return self.stub.ChatStream(request, timeout=timeout)

    def complete(self, request: inf.CompleteRequest, *, timeout: Timeout = None) -> inf.CompleteResponse:
        return self.stub.Complete(request, timeout=timeout)

    def simulate(self, request: inf.SimulateRequest, *, timeout: Timeout = None) -> Iterator[inf.SimulateResponse]:
        return self.stub.Simulate(request, timeout=timeout)

    def list_served_models(
        self, request: inf.ListServedModelsRequest, *, timeout: Timeout = None
    ) -> inf.ListServedModelsResponse:
        return self.stub.ListServedModels(request, timeout=timeout)

    def load_model(self, request: inf.LoadModelRequest, *, timeout: Timeout = None) -> inf.LoadModelResponse:
        return self.stub.LoadModel(request, timeout=timeout)

    def unload_model(self, request: inf.UnloadModelRequest, *, timeout: Timeout = None) -> inf.UnloadModelResponse:
        return self.stub.UnloadModel(request, timeout=timeout)

    def get_engine_stats(
        self, request: inf.GetEngineStatsRequest, *, timeout: Timeout = None
    ) -> inf.GetEngineStatsResponse:
        return self.stub.GetEngineStats(request, timeout=timeout)


def _sent(header: Any, files: list[tuple[str, Path]], part: Callable[..., Any], chunk_bytes: int,
          progress: Callable[[int, int], None] | None) -> Iterator[Any]:
    """An upload's parts: `header`, then each file's path, size and sha256 and its bytes, as messages `part` makes."""
    total, sent = sum(p.stat().st_size for _, p in files), 0
    yield header
    for rel, p in files:
        yield part(file=tr.UploadedFile(path=rel, size_bytes=p.stat().st_size, sha256=sha256_of(p)))
        with open(p, "rb") as f:
            while chunk := f.read(chunk_bytes):
                yield part(chunk=chunk)
                sent += len(chunk)
                if progress:
                    progress(sent, total)


def received_files(parts: Iterable[tr.ExportModelResponse], folder: Path,
                   progress: Callable[[int, int], None] | None) -> list[str]:
    """Write an export's files under `folder` (made here); their paths. InvalidArgument when a file is not
    what its header said, or its path would leave the folder."""
    folder.mkdir(parents=True)
    received, total, files = Received(folder, header=False), 0, []
    try:
        for part in parts:
            kind = part.WhichOneof("part")
            if kind == "summary":
                total = part.summary.total_bytes
            elif kind == "file":
                received.start(part.file.path, part.file.size_bytes, part.file.sha256)
                files.append(part.file.path)
            else:
                received.write(part.chunk)
                if progress:
                    progress(received.received, total)
        received.finish()
    finally:
        received.close()
    return files


def rpc_error_message(err: grpc.RpcError) -> str:
    """One line for a person: the status code's name and the server's message."""
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    return f"{code.name if code else 'ERROR'}: {details}"
