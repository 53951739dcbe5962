"""bench/inference.py runs end to end, small, against the real service and ends with its JSON line (no timing asserted)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "inference.py"


def test_inference_bench_prints_its_figures(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    args = ["--requests", "8", "--concurrency", "8", "--personas", "2", "--max-new-tokens", "8", "--repeats", "1",
            "--sequential-requests", "4", "--threads", "1", "--cache-dir", str(tmp_path)]
    done = subprocess.run([sys.executable, str(BENCH), *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("tokens_per_s", "sequential_tokens_per_s", "speedup", "spread16_ratio", "ttft_p50_ms", "ttft_p95_ms",
                "sequential_service_tokens_per_s", "mean_rows_per_pass"):
        assert key in figures, key
    for key in ("tokens_per_s", "sequential_tokens_per_s", "speedup", "spread16_ratio", "sequential_service_tokens_per_s"):
        assert math.isfinite(figures[key]) and figures[key] > 0, (key, figures[key])
    assert 0 < figures["ttft_p50_ms"] <= figures["ttft_p95_ms"]
    assert (figures["requests"], figures["concurrency"], figures["personas"], figures["max_new_tokens"]) == (8, 8, 2, 8)
    assert figures["sequential_tokens"] == 4 * 8  # model.generate is forced to the full length
    assert 0 < figures["tokens"] <= 8 * 8 and 0 < figures["spread16_tokens"] <= 8 * 8
    assert figures["mean_rows_per_pass"] > 1  # concurrent requests shared forward passes
    assert "tokens/s" in done.stdout
