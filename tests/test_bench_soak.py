"""bench/soak.py starts its own `doppel up`, loads it with every kind of call for a few seconds and ends with
its JSON line: every process with its start and end figures (no bound asserted on timings or growth: those
are figures for a note, see bench/RESULTS.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "soak.py"
KINDS = {"upload", "delete", "chat", "chat_stream", "simulate"}


def test_soak_bench_prints_its_figures() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    args = ["--seconds", "8", "--sample-s", "4", "--max-new-tokens", "8", "--turns", "3"]
    done = subprocess.run([sys.executable, str(BENCH), *args], env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["mode"] == "own" and figures["seconds"] >= 8
    assert set(figures["calls"]) == KINDS
    for kind, c in figures["calls"].items():
        assert c["calls"] > 0 and c["calls"] == c["ok"] + c["errors"], kind
        assert c["errors"] == sum(c["errors_by_code"].values()), kind
        if c["ok"]:
            assert 0 < c["p50_ms"] <= c["p95_ms"] <= c["max_ms"], kind
    names = [p["name"] for p in figures["processes"]]
    assert {"supervisor", "prefect", "ingest", "trainer", "inference", "ui"} <= set(names), names
    assert any(n.startswith("inference/") for n in names), names  # the engine process, a grandchild
    for p in figures["processes"]:
        for when in ("start", "end"):
            assert p[when] is not None, (p["name"], when)
            assert p[when]["pid"] > 0 and p[when]["rss_mb"] > 0 and p[when]["fds"] > 0 and p[when]["threads"] > 0
        assert abs(p["delta"]["rss_mb"] - (p["end"]["rss_mb"] - p["start"]["rss_mb"])) <= 0.11  # each rounded
        assert p["delta"]["fds"] == p["end"]["fds"] - p["start"]["fds"]
    total = figures["total"]
    assert total["start"]["processes"] == len(names) and total["end"]["fds"] > 0
    assert len(figures["timeline"]) >= 2 and figures["timeline"][0]["t"] == 0
    for key in ("datasets_left", "restarts", "left_running", "engine", "errors", "setup_s", "warmup_s"):
        assert key in figures, key
    assert isinstance(figures["left_running"], list) and figures["engine"]["tokens_generated"] > 0
    assert "errors by code" in done.stdout and "supervisor" in done.stdout
