"""A training run outlives a restart of the Prefect server it reports to."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from urllib.parse import urlsplit

from doppel.clients import TrainerClient
from doppel.config import Settings
from doppel.rpc.server import Service
from doppel.store import open_store
from doppel.v1 import trainer_pb2 as tr
from doppel.v1 import trainer_pb2_grpc
from services.trainer import runs
from services.trainer.server import TrainerServicer
from support.chats import chat, ingest_chat
from support.grpcserver import BackgroundServer
from support.prefect import start_prefect_server, stop_prefect_server


def _flow_run_state(api_url: str, run_id: str) -> str:
    from prefect.client.orchestration import PrefectClient

    async def read() -> str:
        async with PrefectClient(api_url) as client:
            return str((await client.read_flow_run(uuid.UUID(run_id))).state_type.value)

    return asyncio.run(read())


def test_a_run_completes_across_a_prefect_server_restart(seaweed, tmp_path):
    saved = dict(os.environ)  # the trainer's runner points this process's Prefect settings at its server
    prefect = start_prefect_server(tmp_path / "prefect")
    settings = Settings(home=tmp_path / "home", store_url=seaweed.store_url(f"r-{uuid.uuid4().hex[:16]}"),
                        prefect_api_url=prefect.api_url, train_threads=1)
    store = open_store(settings.store_url)
    dataset = ingest_chat(store, tmp_path, chat())
    servicer = TrainerServicer(settings, store)
    server = BackgroundServer([Service.of(tr, trainer_pb2_grpc, "TrainerService", servicer)])
    client = TrainerClient(server.addr, timeout=60)
    try:
        spec = tr.TrainingSpec(dataset_id=dataset, speakers=["Alice"], base_model="tiny", hyperparameters=tr.Hyperparameters(
            max_steps=300, batch_size=8, block_size=128, learning_rate=1e-2, save_every=50, sample_every=0, seed=1))
        run_id = client.start_run(tr.StartRunRequest(spec=spec)).run.run_id
        deadline = time.monotonic() + 180
        while (started := runs.find_record(store, run_id)) is None or started.step < 20:
            assert time.monotonic() < deadline, "the run did not start training"
            time.sleep(0.2)
        stop_prefect_server(prefect)  # mid-run: the flow's reports and the runner's polls meet a closed port
        time.sleep(3)
        assert runs.load_record(store, run_id).state == "running"
        prefect = start_prefect_server(tmp_path / "prefect", port=urlsplit(prefect.api_url).port)
        deadline = time.monotonic() + 300
        while (record := runs.load_record(store, run_id)).state == "running":
            assert time.monotonic() < deadline, f"still running at step {record.step}"
            time.sleep(0.5)
        assert record.state == "completed" and record.step == 300 and record.model_id, record.message
        for _ in range(60):  # the flow run's last state reaches Prefect just after the record
            if _flow_run_state(prefect.api_url, run_id) == "COMPLETED":
                break
            time.sleep(0.5)
        assert _flow_run_state(prefect.api_url, run_id) == "COMPLETED"
        got = client.get_run(tr.GetRunRequest(run_id=run_id)).run
        assert got.state == tr.RUN_STATE_COMPLETED and got.model_id == record.model_id
    finally:
        client.close()
        server.stop()
        servicer.close()
        stop_prefect_server(prefect)
        store.close()
        os.environ.clear()
        os.environ.update(saved)
