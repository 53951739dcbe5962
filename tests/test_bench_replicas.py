"""bench/replicas.py runs end to end, small, through real replicas behind the real nginx, and ends with its JSON
line (no timing asserted)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from doppel import balancer
from doppel.errors import FailedPrecondition

BENCH = Path(__file__).resolve().parents[1] / "bench" / "replicas.py"


def test_replicas_bench_prints_the_ratio(tmp_path: Path) -> None:
    try:
        balancer.nginx()
    except FailedPrecondition:
        pytest.skip("needs nginx (Debian's nginx package; `make test` installs it)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    args = ["--requests", "8", "--concurrency", "8", "--personas", "4", "--max-new-tokens", "8", "--repeats", "1",
            "--cache-dir", str(tmp_path)]
    done = subprocess.run([sys.executable, str(BENCH), *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert (figures["requests"], figures["replicas"], figures["personas"]) == (8, 2, 4)
    for key in ("one_tokens_per_s", "replicas_tokens_per_s", "ratio"):
        assert math.isfinite(figures[key]) and figures[key] > 0, (key, figures[key])
    # tokens counted on every replica (they may differ from one process's: other threads sum in another order)
    assert 0 < figures["replicas_tokens"] <= 8 * 8 and 0 < figures["one_tokens"] <= 8 * 8
