"""Two trainer processes (`doppel serve trainer`) serving the one `train-persona` deployment through one Prefect
server: each run is claimed by exactly one of them, and a run waits while both are busy rather than failing."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid

from prefect.client.orchestration import PrefectClient

from doppel.clients import TrainerClient
from doppel.store import open_store
from doppel.v1 import trainer_pb2 as tr
from support.chats import chat, ingest_chat
from support.processes import doppel_process, free_port, log_tail, stop
from support.replicas import wait_serving

QUICK = dict(max_steps=20, batch_size=8, block_size=128, learning_rate=1e-2, save_every=10, sample_every=20)


async def run_counts(api_url: str, run_ids: list[str]) -> list[int]:
    """How many times Prefect saw each flow run enter Running."""
    async with PrefectClient(api_url) as client:
        return [(await client.read_flow_run(uuid.UUID(r))).run_count for r in run_ids]


def test_two_trainers_serve_one_deployment_and_share_three_runs(seaweed, prefect_api_url, tmp_path):
    store_url = seaweed.store_url(f"w-{uuid.uuid4().hex[:16]}")
    dataset = ingest_chat(open_store(store_url), tmp_path, chat())
    addrs, procs = [f"127.0.0.1:{free_port()}" for _ in range(2)], []
    try:
        for i, addr in enumerate(addrs):
            env = {**os.environ, "DOPPEL_STORE_URL": store_url, "DOPPEL_PREFECT_API_URL": prefect_api_url,
                   "PREFECT_API_URL": prefect_api_url, "DOPPEL_HOME": str(tmp_path / f"trainer-{i}"),
                   "DOPPEL_TRAIN_THREADS": "1", "DOPPEL_PREPARE_BASE": "0"}
            procs.append(doppel_process(["serve", "trainer", "--listen", addr], env, tmp_path / f"trainer-{i}.log"))
        for addr in addrs:
            wait_serving(addr, tmp_path)
        with TrainerClient(addrs[0], timeout=60) as client:
            started = [client.start_run(tr.StartRunRequest(spec=tr.TrainingSpec(
                dataset_id=dataset, speakers=["Alice"], base_model="tiny",
                hyperparameters=tr.Hyperparameters(**QUICK, seed=seed)))).run.run_id for seed in range(3)]
            for run_id in started:
                events = list(client.watch_run(tr.WatchRunRequest(run_id=run_id, from_start=True), timeout=600))
                assert events[-1].state == tr.RUN_STATE_COMPLETED, (events[-1].message, *map(log_tail, tmp_path.glob("*.log")))
            done = [client.get_run(tr.GetRunRequest(run_id=r)).run for r in started]
        # Both trainers ran some of the runs, and each run was run by one of them, once.
        host = socket.gethostname()
        assert {r.worker for r in done} == {f"{host}:{p.pid}" for p in procs}, [r.worker for r in done]
        assert asyncio.run(run_counts(prefect_api_url, started)) == [1, 1, 1]
        # Two runs at a time: the one that waited started once another had finished.
        first, second, third = sorted(done, key=lambda r: r.started_at.ToDatetime())
        assert third.started_at.ToDatetime() >= min(first.finished_at.ToDatetime(), second.finished_at.ToDatetime())
    finally:
        for proc in procs:
            stop(proc, grace_s=15)

