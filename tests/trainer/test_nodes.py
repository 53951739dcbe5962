"""One run on two machines, played here by two processes: a trainer (`doppel serve trainer`, DOPPEL_TRAIN_NODES=2)
and a `doppel train-node`, sharing a jobs folder and meeting at a rendezvous on loopback, as two servers would over
a network and a shared mount. Each trains with one gloo process; the run takes both."""

from __future__ import annotations

import os
import time
import uuid

from doppel.clients import TrainerClient
from doppel.store import open_store
from doppel.v1 import trainer_pb2 as tr
from support.chats import chat, ingest_chat
from support.processes import doppel_process, free_port, log_tail, stop
from support.replicas import wait_serving

QUICK = dict(max_steps=40, batch_size=8, block_size=128, learning_rate=1e-2, save_every=20, sample_every=20, seed=2)


def test_a_run_spans_the_trainer_and_a_train_node(seaweed, prefect_api_url, tmp_path):
    store_url = seaweed.store_url(f"n-{uuid.uuid4().hex[:16]}")
    dataset = ingest_chat(open_store(store_url), tmp_path, chat())
    jobs, addr = tmp_path / "jobs", f"127.0.0.1:{free_port()}"
    common = {**os.environ, "DOPPEL_TRAIN_JOBS": str(jobs), "DOPPEL_TRAIN_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    trainer_env = {**common, "DOPPEL_STORE_URL": store_url, "DOPPEL_PREFECT_API_URL": prefect_api_url,
                   "PREFECT_API_URL": prefect_api_url, "DOPPEL_HOME": str(tmp_path / "trainer"), "DOPPEL_PREPARE_BASE": "0",
                   "DOPPEL_TRAIN_NODES": "2", "DOPPEL_TRAIN_RENDEZVOUS": f"127.0.0.1:{free_port()}"}
    node_log, trainer_log = tmp_path / "node.log", tmp_path / "trainer.log"
    node = doppel_process(["train-node"], {**common, "DOPPEL_HOME": str(tmp_path / "node")}, node_log)
    trainer = doppel_process(["serve", "trainer", "--listen", addr], trainer_env, trainer_log)
    try:
        wait_serving(addr, tmp_path)
        deadline = time.monotonic() + 60
        while "waiting for runs" not in node_log.read_text():
            assert node.poll() is None and time.monotonic() < deadline, log_tail(node_log)
            time.sleep(0.5)
        with TrainerClient(addr, timeout=60) as client:
            spec = tr.TrainingSpec(dataset_id=dataset, speakers=["Alice"], base_model="tiny", devices=1,
                                   hyperparameters=tr.Hyperparameters(**QUICK))
            run = client.start_run(tr.StartRunRequest(spec=spec)).run
            events = list(client.watch_run(tr.WatchRunRequest(run_id=run.run_id, from_start=True), timeout=600))
            assert events[-1].state == tr.RUN_STATE_COMPLETED, (events[-1].message, log_tail(trainer_log), log_tail(node_log))
            assert any("40 steps on 2 devices (2 machines)" in e.message for e in events)
            assert {e.step for e in events if e.samples} >= {20, 40}  # rank 0's, wherever it ran
            assert client.get_run(tr.GetRunRequest(run_id=run.run_id)).run.devices == 2
        said = node_log.read_text()
        assert f"joining run {run.run_id}-1 (2 machines" in said and f"run {run.run_id}-1: done" in said, said
        assert not list(jobs.iterdir()), "the job folder goes when the run is done"
    finally:
        stop(trainer, grace_s=15)
        stop(node, grace_s=5)
