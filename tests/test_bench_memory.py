"""bench/memory.py runs end to end on the tiny model and ends with its JSON line (no bound asserted:
how close the estimate comes is a bench figure, see bench/RESULTS.md)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "memory.py"


def test_memory_bench_prints_estimate_and_measured_peak(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    args = ["--models", "tiny", "--methods", "lora", "qlora", "--block-sizes", "64", "--batch-size", "4", "--steps", "2",
            "--messages", "400", "--conversations", "2", "--threads", "1", "--cache-dir", str(tmp_path)]
    done = subprocess.run([sys.executable, str(BENCH), *args], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("estimate", "measured", "ratio", "cases"):
        assert key in figures, key
    lora, qlora = figures["cases"]
    for case, name in ((lora, "tiny/lora/64"), (qlora, "tiny/qlora/64")):
        assert case["case"] == name and case["batch_size"] == 4 and case["block_size"] == 64
        assert case["estimate"] > 0 and case["measured"] > 0 and len(case["steps"]) == 2
        assert name in done.stdout
    assert qlora["estimate"] < lora["estimate"]  # the projections in 4 bits
    assert math.isfinite(figures["ratio"]) and figures["ratio"] > 0
    assert figures["ratio"] in (lora["ratio"], qlora["ratio"]) and "ratio" in done.stdout
