"""The trainer's modules import without warnings on stderr (each trainer process imports them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_training_modules_import_in_silence_offline():
    """On a CPU with AVX512-BF16, bitsandbytes (imported by peft) said twice that it could not fetch
    a Hub kernel; elsewhere it says nothing either way."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    done = subprocess.run([sys.executable, "-c", "import services.trainer.finetune, peft, bitsandbytes"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
