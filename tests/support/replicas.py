"""Inference replicas as real processes (`doppel serve inference`) behind a real nginx (`doppel.balancer`)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import grpc

from doppel import balancer
from doppel.clients import InferenceClient, ServiceClient
from support.processes import die_with_parent, doppel_process, log_tail, stop


class Replicas:
    """`n` inference processes over the store at `store_url`, and nginx in front of them at `addr`."""

    def __init__(self, store_url: str, folder: Path, n: int = 2):
        self.folder, self.store_url = folder, store_url
        self.addrs = balancer.free_addrs(n)
        self.procs = [self._start(i) for i in range(n)]
        self.addr = balancer.free_addrs(1)[0]
        conf = balancer.write_config(self.addr, self.addrs, folder / "balancer")
        self.access_log = folder / "balancer" / "access.log"
        self.nginx = subprocess.Popen(balancer.command(conf), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                      preexec_fn=die_with_parent)
        for addr in [*self.addrs, self.addr]:
            wait_serving(addr, folder)

    def _start(self, i: int) -> subprocess.Popen:
        env = {**os.environ, "DOPPEL_STORE_URL": self.store_url, "DOPPEL_HOME": str(self.folder / f"home-{i}"),
               "DOPPEL_INFERENCE_THREADS": "1"}
        return doppel_process(["serve", "inference", "--listen", self.addrs[i]], env, self.folder / f"inference-{i}.log")

    def client(self, i: int | None = None) -> InferenceClient:
        """A client of the balancer, or of replica `i` directly."""
        return InferenceClient(self.addr if i is None else self.addrs[i], timeout=120)

    def loaded(self) -> list[set[str]]:
        """The models each replica holds loaded (asked directly)."""
        from doppel.v1 import inference_pb2 as inf

        out = []
        for i in range(len(self.addrs)):
            with self.client(i) as client:
                answer = client.list_served_models(inf.ListServedModelsRequest(loaded_only=True))
                out.append({m.model_id for m in answer.models})
        return out

    def close(self) -> None:
        stop(self.nginx)
        for proc in self.procs:
            stop(proc, grace_s=5)


def wait_serving(addr: str, logs: Path, timeout: float = 120) -> None:
    """Until the gRPC health check at `addr` answers; AssertionError with the tails of `logs`/*.log if it never does."""
    deadline = time.monotonic() + timeout
    with ServiceClient(addr) as client:
        while time.monotonic() < deadline:
            try:
                client.health(timeout=1)
                return
            except grpc.RpcError:
                time.sleep(0.25)
    raise AssertionError(f"{addr} not serving after {timeout} s:\n" + "\n".join(log_tail(p) for p in sorted(logs.glob("*.log"))))
