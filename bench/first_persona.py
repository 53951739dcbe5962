"""A newcomer's first persona: from a fresh `doppel up` to a trained demo persona, timed.

    python bench/first_persona.py                                  # Jonah Pell, quick-cpu, smollm2-135m
    python bench/first_persona.py --persona "Mara Quist" --preset default
    python bench/first_persona.py --train-arg=--steps --train-arg=30   # any `doppel train` option

What a new user does, as the README says it: `doppel up` in a fresh DOPPEL_HOME (nothing
converted or cached yet: the base model is converted from its GGUF by the first run, as it
would be for them), which imports the demo chats; then `doppel train --dataset <demo> --persona
P --preset quick-cpu` until the model is published. The clock starts when `doppel up` says it is
up. Printed: the time to the model, each phase of the run (from the run's own events: loading,
training, evaluating, fidelity, publishing), the model's held-out loss and fidelity figures
(from its manifest), so that a faster preset can be checked for a persona no worse than before,
and its first reply through the inference service (what the newcomer does next).
The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stack import start_stack
from doppel.clients import InferenceClient
from doppel.model import MODELS
from doppel.store import open_store
from doppel.v1 import inference_pb2 as inf
from services.trainer import runs

FIGURES = ("replies", "style_distance", "who_said_it_model", "who_said_it_real", "real_or_generated",
           "exact_copies", "word_span_copies", "distinct_2", "speaking_for_others", "leaks")


def phases(events: list[runs.Event]) -> list[tuple[str, float]]:
    """(what the run said it was doing, seconds until it said the next thing), in order."""
    said = [e for e in events if e.message and not e.samples]
    return [(a.message.split(":")[0], (b.time - a.time).total_seconds()) for a, b in zip(said, said[1:], strict=False)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--persona", default="Jonah Pell")
    ap.add_argument("--preset", default="quick-cpu")
    ap.add_argument("--base-model", default="", help="default: the trainer's default (smollm2-135m)")
    ap.add_argument("--train-arg", action="append", default=[], help="one more `doppel train` argument (repeatable)")
    ap.add_argument("--say", default="are you coming to the plot on saturday?", help="the first line said to the persona")
    ap.add_argument("--up-timeout-s", type=float, default=300)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="doppel-first-", ignore_cleanup_errors=True) as tmp:
        home = Path(tmp) / "home"
        t0 = time.monotonic()
        stack = start_stack(home)
        try:
            print(f"starting doppel up in a fresh DOPPEL_HOME ({home})", flush=True)
            if stack.wait_for(("Press Ctrl-C",), args.up_timeout_s) is None:
                raise SystemExit(f"doppel up not up within {args.up_timeout_s:g} s:\n{stack.output()[-3000:]}")
            if stack.wait_for(("imported the demo chats", "could not import the demo"), 60) != "imported the demo chats":
                raise SystemExit(f"no demo import:\n{stack.output()[-3000:]}")
            up_s = time.monotonic() - t0
            dataset = re.search(r"imported the demo chats as dataset (\S+)", stack.output())
            assert dataset, stack.output()
            print(f"up after {up_s:.1f} s; demo dataset {dataset[1]}; training {args.persona} with {args.preset}", flush=True)
            command = [sys.executable, "-m", "doppel", "train", "--dataset", dataset[1], "--persona", args.persona,
                       "--preset", args.preset, *(["--base-model", args.base_model] if args.base_model else []),
                       *args.train_arg]
            t1 = time.monotonic()
            done = subprocess.run(command, env=stack.env, capture_output=True, text=True)
            persona_s = time.monotonic() - t1
            if done.returncode:
                raise SystemExit(f"doppel train failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
            model_id = re.search(r"^model (\S+)$", done.stdout, re.M)
            run_id = re.search(r"^run (\S+)$", done.stdout, re.M)
            assert model_id and run_id, done.stdout
            with open_store((home / "store").resolve().as_uri()) as store:
                manifest = MODELS.get(store, model_id[1])
                events = runs.read_events(store, run_id[1])
            t2 = time.monotonic()  # what the newcomer does next: says something to the persona
            with InferenceClient(stack.env["DOPPEL_INFERENCE_ADDR"], timeout=300) as inference:
                said = inference.chat(inf.ChatRequest(model_id=model_id[1], user_speaker="Mara Quist",
                                                      history=[inf.Turn(speaker="Mara Quist", text=args.say)]))
            reply_s, reply = time.monotonic() - t2, said.candidates[0].text
        finally:
            stack.stop()

    steps = [e for e in events if e.tokens_per_s]
    figures = next((f for f in manifest.fidelity if f.speaker == args.persona), None)
    ev, recipe = manifest.evaluation, manifest.recipe
    out: dict[str, Any] = {
        "persona_s": round(persona_s, 1), "up_s": round(up_s, 1), "persona": args.persona, "preset": args.preset,
        "base_model": manifest.base_model, "steps": len(steps),
        "recipe": {k: getattr(recipe, k) for k in ("max_steps", "batch_size", "block_size", "learning_rate",
                                                    "lora_rank", "lora_dropout", "gradient_accumulation_steps")},
        "phases": [[name, round(s, 1)] for name, s in phases(events)],
        "tokens_per_s": round(sum(e.tokens_per_s or 0 for e in steps) / len(steps), 1) if steps else None,
        "held_out_loss": ev.held_out_loss if ev else None, "base_held_out_loss": ev.base_held_out_loss if ev else None,
        "fidelity": {k: getattr(figures, k) for k in FIGURES} if figures else None,
        "first_reply_s": round(reply_s, 1), "first_reply": reply,
    }
    print(f"\n{args.persona} with {args.preset}: the model {persona_s:.0f} s after `doppel up` was up "
          f"({persona_s / 60:.1f} min; doppel up itself took {up_s:.0f} s)")
    for name, s in out["phases"]:
        print(f"  {name:<40}{s:>8.1f} s")
    if ev:
        print(f"held-out loss {ev.held_out_loss:.4f} (base {ev.base_held_out_loss:.4f})")
    if figures:
        print("fidelity: " + ", ".join(f"{k} {getattr(figures, k):.3g}" for k in FIGURES))
    print(f"first reply, {reply_s:.1f} s later (the model loaded): Mara Quist: {args.say}\n  {args.persona}: {reply}")
    print(orjson.dumps(out).decode())


if __name__ == "__main__":
    main()
