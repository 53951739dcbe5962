"""The compose topology, run as local processes: import, train from the Prefect API, chat.

No Docker engine here, so each service of docker-compose.gpu.yml is started as its own process
with the command compose gives its container (entrypoint `doppel` + `command`) and the
environment compose would give it (deploy/*.env, then `environment:` interpolated from a `.env`).
Only what a container network provides is rewritten: service names and ports become free
loopback ports, MinIO is SeaweedFS (the bucket made as minio-init makes it), postgres+Prefect is
a local Prefect server, DOPPEL_HOME is a folder per service. Health is waited for with the
compose health check commands themselves. Every client is a separate process, as another
service on the network would be: the `doppel` CLI for the import, Prefect's client creating a
flow run of `train-persona` the way the dashboard's Run form does, and InferenceClient.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.compose import EXAMPLE_ENV, Service, dockerfile_env, read_env_file, services
from support.processes import die_with_parent, free_port, log_tail, stop
from support.stack import CHAT, CREATE_AND_WATCH, OPENAI_CHAT, whatsapp_export

pytestmark = pytest.mark.timeout(600)

HEALTHY_TIMEOUT_S = 180.0
# What this 2-core, GPU-less machine needs on top of compose's settings: one thread each (the
# services share two cores with the Prefect server and SeaweedFS), a short shutdown grace.
CPU_OVERRIDES = {"DOPPEL_TRAIN_THREADS": "1", "DOPPEL_INFERENCE_THREADS": "1", "DOPPEL_GRACE_S": "2",
                 "DOPPEL_PREPARE_BASE": "0"}
IMAGE_PATHS = {"PATH", "DOPPEL_HOME", "PREFECT_HOME", "HF_HOME"}  # image folders: a tmp folder each here
DOPPEL_SERVICES = ("ingest", "trainer", "inference")


class Topology:
    """The compose services as processes on loopback, with compose's names mapped to real addresses."""

    def __init__(self, tmp: Path, stack: dict[str, Service], s3_endpoint: str, prefect_api_url: str, token: str):
        self.tmp, self.stack, self.s3_endpoint, self.token = tmp, stack, s3_endpoint, token
        prefect_port = int(prefect_api_url.rsplit(":", 1)[1].split("/")[0])
        # (service, container port) -> loopback port, for every port a Doppel service publishes
        self.ports = {(name, container): free_port()
                      for name in (*DOPPEL_SERVICES, "ui", "openai") for _, _, container in stack[name].published}
        self.ports[("prefect-server", 4200)] = prefect_port
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def addr(self, service: str, port: int) -> str:
        return f"127.0.0.1:{self.ports[(service, port)]}"

    def rewrite(self, service: str, value: str) -> str:
        """A value as `service` sees it in compose, as it must read on loopback here."""
        value = value.replace("minio:9000", self.s3_endpoint)

        def other(m: re.Match) -> str:
            key = (m.group(1), int(m.group(2)))
            if key not in self.ports:
                raise AssertionError(f"{service}: {m.group(0)} is no port that {m.group(1)} publishes")
            return self.addr(*key)

        value = re.sub(r"\b(ingest|trainer|inference|ui|prefect-server):(\d+)\b", other, value)
        # its own listen address and health check: this service's port, on loopback
        return re.sub(r"\b(?:0\.0\.0\.0|127\.0\.0\.1):(\d+)\b",
                      lambda m: self.addr(service, int(m.group(1))) if (service, int(m.group(1))) in self.ports
                      else m.group(0), value)

    def env(self, service: str) -> dict[str, str]:
        s = self.stack[service]
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("DOPPEL_", "AWS_")) and k not in ("PREFECT_API_URL", "PREFECT_HOME")}
        image = {k: v for k, v in dockerfile_env().items() if k not in IMAGE_PATHS}
        env = {k: self.rewrite(service, v) for k, v in s.env.items()}
        if env.get("DOPPEL_UI_HOST") == "0.0.0.0":
            env["DOPPEL_UI_HOST"] = "127.0.0.1"
        if "DOPPEL_UI_PORT" in env:
            env["DOPPEL_UI_PORT"] = str(self.ports[(service, int(env["DOPPEL_UI_PORT"]))])
        home = self.tmp / service
        return {**base, **image, **env, **CPU_OVERRIDES, "DOPPEL_HOME": str(home),
                "PREFECT_HOME": str(home / "prefect"), "HF_HOME": str(self.tmp / "hf")}

    @staticmethod
    def argv(words: list[str]) -> list[str]:
        """A container command as a local one: `doppel` and `python` are this venv's."""
        if words[:1] == ["doppel"]:
            return [sys.executable, "-m", "doppel", *words[1:]]
        if words[:1] == ["python"]:
            return [sys.executable, *words[1:]]
        return words

    def start(self, service: str) -> None:
        s = self.stack[service]
        assert s.builds_doppel, f"{service} does not run the Doppel image"
        log = self.tmp / f"{service}.log"
        argv = self.argv(["doppel", *(self.rewrite(service, w) for w in s.command)])
        with open(log, "wb") as out:
            self.procs[service] = subprocess.Popen(argv, env=self.env(service), stdin=subprocess.DEVNULL, stdout=out,
                                                   stderr=subprocess.STDOUT, cwd=self.tmp, preexec_fn=die_with_parent)
        self.logs[service] = log

    def healthy(self, service: str) -> bool:
        """The compose health check of `service`, run here."""
        check = self.argv([self.rewrite(service, w) for w in self.stack[service].healthcheck])
        assert check, f"{service} has no health check"
        return subprocess.run(check, env=self.env(service), capture_output=True, timeout=30).returncode == 0

    def wait_healthy(self, names: list[str]) -> float:
        started, pending = time.monotonic(), list(names)
        while pending:
            for name in pending:
                if self.procs[name].poll() is not None:
                    pytest.fail(f"{name} exited with {self.procs[name].returncode}:\n{log_tail(self.logs[name])}")
            if time.monotonic() - started > HEALTHY_TIMEOUT_S:
                tails = "\n".join(f"--- {n} ---\n{log_tail(self.logs[n])}" for n in pending)
                pytest.fail(f"not healthy after {HEALTHY_TIMEOUT_S:.0f} s: {pending}\n{tails}")
            pending = [n for n in pending if not self.healthy(n)]
            if pending:
                time.sleep(1)
        return time.monotonic() - started

    def stop(self) -> None:
        for name in reversed(list(self.procs)):  # the UI first, as compose stops dependents first
            stop(self.procs[name], grace_s=10)

    def tails(self) -> str:
        return "\n".join(f"--- {n} ---\n{log_tail(p, 30)}" for n, p in self.logs.items())


@pytest.fixture
def topology(tmp_path: Path, seaweed, prefect_server) -> Iterator[Topology]:
    bucket = f"t-{uuid.uuid4().hex[:16]}"
    seaweed.client().make_bucket(bucket)  # minio-init's `mc mb`
    dotenv = {**read_env_file(EXAMPLE_ENV), "STORE_BUCKET": bucket, "STORE_ACCESS_KEY": seaweed.access_key,
              "STORE_SECRET_KEY": seaweed.secret_key, "DOPPEL_API_TOKEN": secrets.token_urlsafe(16),
              "MINIO_ROOT_PASSWORD": "unused-here", "POSTGRES_PASSWORD": "unused-here"}
    topo = Topology(tmp_path, services(dotenv), seaweed.endpoint, prefect_server.api_url, dotenv["DOPPEL_API_TOKEN"])
    try:
        yield topo
    finally:
        topo.stop()
        with contextlib.suppress(Exception):  # cleanup is best effort
            seaweed.client().remove_bucket(bucket)


def _client(topo: Topology, argv: list[str], extra: dict[str, str] | None = None, timeout: float = 120,
            **kwargs) -> subprocess.CompletedProcess:
    """A process of another service on the network: only the addresses and the token, nothing of the stack's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOPPEL_", "AWS_"))}
    env.update({"DOPPEL_INGEST_ADDR": topo.addr("ingest", 50051), "DOPPEL_TRAINER_ADDR": topo.addr("trainer", 50052),
                "DOPPEL_INFERENCE_ADDR": topo.addr("inference", 50053), "DOPPEL_HOME": str(topo.tmp / "client")})
    env.update(extra if extra is not None else {"DOPPEL_API_TOKEN": topo.token})
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


def test_compose_topology_imports_trains_from_the_prefect_api_and_chats(topology: Topology, tmp_path: Path):
    t0 = time.monotonic()
    for name in DOPPEL_SERVICES:
        topology.start(name)
    services_up = topology.wait_healthy(list(DOPPEL_SERVICES))
    topology.start("ui")
    topology.start("openai")
    ui_up = topology.wait_healthy(["ui", "openai"])

    # Auth is on, as compose requires a token: a client without it is refused.
    refused = _client(topology, [sys.executable, "-m", "doppel", "datasets", "list"], extra={})
    assert refused.returncode != 0 and "UNAUTHENTICATED" in refused.stdout + refused.stderr, refused

    export = whatsapp_export(tmp_path / "WhatsApp Chat with Bob.txt")
    done = _client(topology, [sys.executable, "-m", "doppel", "ingest", str(export), "--name", "topology"])
    assert done.returncode == 0, done.stdout + done.stderr + topology.tails()
    dataset = re.search(r"^dataset (\S+)", done.stdout, re.M).group(1)
    assert re.search(r"^\s+\d+\s+Alice$", done.stdout, re.M), done.stdout

    request = {"dataset_id": dataset, "speakers": ["Alice"], "base_model": "tiny", "preset": "quick-cpu",
               "hyperparameters": {"max_steps": 12, "block_size": 128, "save_every": 6, "sample_every": 0}}
    t_train = time.monotonic()
    api_url = topology.env("trainer")["DOPPEL_PREFECT_API_URL"]  # compose's, rewritten to the local server
    created = _client(topology, [sys.executable, "-c", CREATE_AND_WATCH, api_url, json.dumps(request)], timeout=450)
    assert created.returncode == 0, created.stdout + created.stderr + topology.tails()
    run = json.loads(created.stdout.strip().splitlines()[-1])
    assert run["state"] == "COMPLETED", f"{run}\n{topology.tails()}"
    trained = time.monotonic() - t_train

    runs = _client(topology, [sys.executable, "-m", "doppel", "runs", "show", run["id"]])
    assert runs.returncode == 0, runs.stdout + runs.stderr
    shown = json.loads(runs.stdout)
    model_id = shown["modelId"]
    dashboard = topology.env("trainer")["DOPPEL_PREFECT_UI_URL"]  # where a browser opens it, not prefect-server:4200
    assert shown["dashboardUrl"] == f"{dashboard}/runs/flow-run/{run['id']}", shown
    models = _client(topology, [sys.executable, "-m", "doppel", "models"])
    assert models.returncode == 0 and models.stdout.startswith(f"{model_id}  "), models.stdout + models.stderr

    talked = _client(topology, [sys.executable, "-c", CHAT, model_id], timeout=240)
    assert talked.returncode == 0, talked.stdout + talked.stderr + topology.tails()
    reply = json.loads(talked.stdout.strip().splitlines()[-1])
    assert model_id in reply["served"]
    assert reply["speaker"] == "Alice" and len(reply["texts"]) == 2, reply
    api = f"http://{topology.addr('openai', 8000)}/v1"
    said = _client(topology, [sys.executable, "-c", OPENAI_CHAT, api, topology.token, model_id], timeout=240)
    assert said.returncode == 0, said.stdout + said.stderr + topology.tails()
    assert json.loads(said.stdout.strip().splitlines()[-1]) == {"refused": 401, "name": "Alice", "replied": True}

    print(f"\nservices healthy in {services_up:.1f} s, UI in {ui_up:.1f} s, training {trained:.1f} s, "
          f"all {time.monotonic() - t0:.1f} s")
