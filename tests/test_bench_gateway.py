"""bench/gateway.py runs end to end, small, through the real gateway and service, and ends with its JSON line
(no timing asserted)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gateway.py"


def test_gateway_bench_prints_the_ratio(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    args = ["--requests", "8", "--concurrency", "8", "--personas", "2", "--max-new-tokens", "8", "--repeats", "1",
            "--threads", "1", "--cache-dir", str(tmp_path)]
    done = subprocess.run([sys.executable, str(BENCH), *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert (figures["requests"], figures["concurrency"], figures["max_new_tokens"]) == (8, 8, 8)
    for key in ("grpc_tokens_per_s", "gateway_tokens_per_s", "ratio"):
        assert math.isfinite(figures[key]) and figures[key] > 0, (key, figures[key])
    # the same seeded chats both ways: the engine wrote the same tokens for each
    assert 0 < figures["grpc_tokens"] == figures["gateway_tokens"] <= 8 * 8
    assert figures["gateway_ttft_p50_ms"] > 0 and "ratio" in done.stdout
