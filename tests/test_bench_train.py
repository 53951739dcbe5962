"""bench/train.py runs end to end on the tiny model and ends with its JSON line (no timing asserted)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "train.py"


def test_train_bench_prints_its_figures(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    args = ["--model", "tiny", "--steps", "2", "--warmup", "1", "--messages", "400", "--conversations", "4",
            "--block-size", "128", "--threads", "1", "--cache-dir", str(tmp_path)]
    done = subprocess.run([sys.executable, str(BENCH), *args], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    for key in ("tokens_per_s", "baseline_tokens_per_s", "ratio", "peak_mem_mb", "mfu"):
        assert key in figures, key
    assert figures["mfu"] is None  # CPU
    assert figures["tokens_per_s"] > 0 and figures["baseline_tokens_per_s"] > 0
    assert math.isfinite(figures["ratio"]) and figures["ratio"] > 0
    assert figures["peak_mem_mb"] > 0
    assert figures["steps"] == 2 and figures["block_size"] == 128
    assert figures["baseline_padding_fraction"] > figures["padding_fraction"]
    assert "tokens/s (real)" in done.stdout
    # fitted and run as a run on this CPU is: passes of 1024 tokens, on tcmalloc (services/trainer/heap.py)
    assert (figures["pass_tokens"], figures["gradient_checkpointing"], figures["malloc"]) == (1024, False, "tcmalloc")
