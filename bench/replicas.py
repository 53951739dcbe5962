"""Throughput of inference replicas behind nginx (doppel/balancer.py) against one inference process.

    python bench/replicas.py                          # tiny random model, 8 personas, 2 replicas (~1 min)
    python bench/replicas.py --replicas 2 --threads 1 --requests 64 --concurrency 32

The setup of `bench/inference.py` (a file store, a random base, `--personas` LoRA persona models
on it). Then the same `--requests` streamed chats, spread over every persona, `--concurrency` at
a time, twice: to one `doppel serve inference` process with `--replicas` × `--threads` torch
threads, and through nginx to `--replicas` processes with `--threads` each (the same CPU budget;
on a GPU server, one replica per GPU). Tokens are the engines' own counters, summed over the
replicas. ratio = replicas' tokens/s / one process's, each the best of `--repeats` rounds. The
last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from bench.inference import (
    PERSONAS,
    USER,
    Phase,
    _base,
    _pct,
    _quiet,
    _stats,
    _upload_base,
    chat_requests,
    concurrent_phase,
    histories,
    publish_personas,
    warm_up,
)

UP_TIMEOUT_S = 120


def _serve(tmp: Path, name: str, addr: str, store_url: str, threads: int) -> subprocess.Popen:
    env = {**os.environ, "DOPPEL_STORE_URL": store_url, "DOPPEL_HOME": str(tmp / name),
           "DOPPEL_INFERENCE_THREADS": str(threads)}
    log = (tmp / f"{name}.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "doppel", "serve", "inference", "--listen", addr], env=env,
                            stdout=log, stderr=subprocess.STDOUT)


def _wait(addrs: list[str], procs: list[subprocess.Popen], tmp: Path) -> None:
    from doppel.clients import InferenceClient

    deadline = time.monotonic() + UP_TIMEOUT_S
    for addr in addrs:
        with InferenceClient(addr) as client:
            while True:
                try:
                    client.health(timeout=1)
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                        logs = "\n".join(p.read_text()[-2000:] for p in tmp.glob("*.log"))
                        sys.exit(f"{addr} did not come up:\n{logs}")
                    time.sleep(0.25)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def _phase(client: Any, direct: list[Any], name: str, requests: list[Any], concurrency: int, tokenizer: Any) -> Phase:
    """bench/inference.py's concurrent phase, its tokens counted on every replica."""
    before = [_stats(c) for c in direct]
    phase = concurrent_phase(client, name, requests, concurrency, tokenizer)
    after = [_stats(c) for c in direct]
    phase.tokens = sum(a.tokens_generated - b.tokens_generated for a, b in zip(after, before, strict=True))
    phase.forward_passes = sum(a.forward_passes - b.forward_passes for a, b in zip(after, before, strict=True))
    return phase


def _round(addr: str, direct_addrs: list[str], name: str, args: argparse.Namespace, model_ids: list[str],
           hist: Any, tokenizer: Any) -> list[Phase]:
    from doppel.clients import InferenceClient

    with InferenceClient(addr, timeout=600) as client:
        direct = [InferenceClient(a, timeout=600) for a in direct_addrs]
        try:
            warm_up(client, model_ids, hist, args.concurrency)
            reqs = chat_requests(model_ids, hist[: args.requests], len(model_ids), args.max_new_tokens)
            return [_phase(client, direct, name, reqs, min(args.concurrency, args.requests), tokenizer)
                    for _ in range(args.repeats)]
        finally:
            for c in direct:
                c.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="tiny (random GPT-2, see --layers/--width) or smollm2-135m")
    ap.add_argument("--layers", type=int, default=2, help="with --model tiny: layers (default 2)")
    ap.add_argument("--width", type=int, default=128, help="with --model tiny: hidden size (default 128)")
    ap.add_argument("--personas", type=int, default=8)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each replica")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default="~/.cache/doppel-bench")
    args = ap.parse_args()
    if args.personas > len(PERSONAS):
        sys.exit(f"--personas: at most {len(PERSONAS)}")
    _quiet()
    from doppel import balancer
    from doppel.store import open_store

    nginx = balancer.nginx()
    with tempfile.TemporaryDirectory(prefix="doppel-bench-replicas-") as tmp_name:
        tmp = Path(tmp_name)
        store = open_store((tmp / "store").as_uri())
        texts = [t for h in histories(2000, args.seed + 1) for _, t in h] + PERSONAS + [USER]
        base, tokenizer, described, cache_prefix = _base(args, texts, Path(args.cache_dir).expanduser().resolve())
        _upload_base(store, base, tokenizer, cache_prefix, Path(args.cache_dir).expanduser().resolve(), tmp)
        model_ids, _ = publish_personas(store, base, tokenizer, args)
        del base
        hist = histories(args.requests, args.seed)
        print(f"model: {described}; {args.personas} personas; {args.requests} chats spread over them, "
              f"{args.concurrency} at a time, at most {args.max_new_tokens} new tokens; {os.cpu_count()} cores; "
              f"nginx {nginx}", flush=True)

        [single] = balancer.free_addrs(1)
        procs = [_serve(tmp, "single", single, store.url, args.threads * args.replicas)]
        try:
            _wait([single], procs, tmp)
            one = _round(single, [single], f"1 process, {args.threads * args.replicas} threads", args, model_ids, hist,
                         tokenizer)
        finally:
            _stop(procs)
        addrs = balancer.free_addrs(args.replicas + 1)
        front, replicas = addrs[0], addrs[1:]
        procs = [_serve(tmp, f"replica-{i}", a, store.url, args.threads) for i, a in enumerate(replicas)]
        conf = balancer.write_config(front, replicas, tmp / "balancer")
        procs.append(subprocess.Popen(balancer.command(conf), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        try:
            _wait([*replicas, front], procs, tmp)
            many = _round(front, replicas, f"{args.replicas} replicas x {args.threads} threads behind nginx", args,
                          model_ids, hist, tokenizer)
        finally:
            _stop(procs)
    failed = [e for p in one + many for e in p.errors]
    for p in one + many:
        print(f"  {p.name}: {p.tokens} tokens in {p.seconds:.2f} s, {p.tokens_per_s:,.1f} tokens/s, "
              f"TTFT p50 {_pct(p.ttft_ms, 0.5) or 0:.0f} ms", flush=True)
    if failed:
        sys.exit(f"{len(failed)} requests failed; the first: {failed[0]}")
    best_one, best_many = max(one, key=lambda p: p.tokens_per_s), max(many, key=lambda p: p.tokens_per_s)
    ratio = best_many.tokens_per_s / best_one.tokens_per_s
    print(f"ratio: {args.replicas} replicas / 1 process = {ratio:.2f}", flush=True)
    print(orjson.dumps({
        "model": described, "personas": args.personas, "replicas": args.replicas, "threads": args.threads,
        "requests": args.requests, "concurrency": args.concurrency, "max_new_tokens": args.max_new_tokens,
        "one_tokens_per_s": round(best_one.tokens_per_s, 1), "replicas_tokens_per_s": round(best_many.tokens_per_s, 1),
        "one_tokens": best_one.tokens, "replicas_tokens": best_many.tokens, "ratio": round(ratio, 3),
        "one_ttft_p50_ms": _pct(best_one.ttft_ms, 0.5), "replicas_ttft_p50_ms": _pct(best_many.ttft_ms, 0.5),
    }).decode())


if __name__ == "__main__":
    main()
