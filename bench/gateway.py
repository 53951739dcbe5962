"""The OpenAI-compatible API's overhead: concurrent streamed chats through it against the gRPC API.

    python bench/gateway.py --threads 1                     # tiny random model, 64 streams (~1 min)
    python bench/gateway.py --concurrency 16 --requests 16

The setup of `bench/inference.py` (a file store, a random base, `--personas` LoRA persona
models on it, the real inference service in a child process), and `doppel serve openai` in
another child process in front of it, as `doppel up` runs them. Each round sends the same
`--requests` chats twice, `--concurrency` at a time: as gRPC `ChatStream` calls (from threads,
bench/inference.py's concurrent phase), and as streamed `POST /v1/chat/completions` (from one
asyncio `httpx` client, reading the server-sent events). Same histories, personas, seeds and
sampling (temperature 1, no top-k/top-p), so the engine does the same work; tokens are the
engine's own counter over each phase. TTFT: from sending a request to its first text.

ratio = gateway tokens/s / gRPC tokens/s, each phase's best of `--repeats` rounds (target on
this machine: >= 0.9). The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
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
    Phase,
    _base,
    _pct,
    _quiet,
    _start_service,
    _stats,
    _stop_service,
    _upload_base,
    chat_requests,
    concurrent_phase,
    histories,
    publish_personas,
    warm_up,
)

UP_TIMEOUT_S = 60


def messages_of(request: Any) -> list[dict[str, str]]:
    """A ChatRequest's history as OpenAI messages: the persona's turns the assistant's, the rest the user's."""
    return [{"role": "assistant", "content": t.text} if t.speaker == request.as_speaker else
            {"role": "user", "name": t.speaker, "content": t.text} for t in request.history]


def body_of(request: Any) -> dict[str, Any]:
    s = request.sampling
    return {"model": request.model_id, "messages": messages_of(request), "stream": True, "temperature": s.temperature,
            "top_p": s.top_p, "top_k": s.top_k, "max_tokens": s.max_new_tokens, "seed": s.seed, "n": 1}


def start_gateway(tmp: Path, inference_addr: str) -> tuple[subprocess.Popen, str]:
    """`doppel serve openai` on a free port in front of `inference_addr`; (process, base URL)."""
    import httpx

    from support.processes import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOPPEL_")}
    env.update({"DOPPEL_HOME": str(tmp / "gateway"), "DOPPEL_INFERENCE_ADDR": inference_addr, "DOPPEL_LOG_LEVEL": "WARNING"})
    proc = subprocess.Popen([sys.executable, "-m", "doppel", "serve", "openai", "--listen", f"127.0.0.1:{port}"], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + UP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the gateway exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx.get(f"{root}/health", timeout=2).status_code == 200:
                return proc, f"{root}/v1"
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    sys.exit(f"the gateway did not answer within {UP_TIMEOUT_S} s")


def gateway_phase(client: Any, url: str, requests: list[Any], concurrency: int) -> Phase:
    """`requests` as streamed chat completions, `concurrency` at a time, from one asyncio client."""
    import httpx

    phase = Phase("concurrent, gateway", requests=len(requests))
    ttft: list[float | None] = [None] * len(requests)
    texts = [""] * len(requests)

    async def one(http: httpx.AsyncClient, k: int, gate: asyncio.Semaphore) -> None:
        async with gate:
            parts = []
            sent = time.perf_counter()
            try:
                async with http.stream("POST", f"{url}/chat/completions", json=body_of(requests[k])) as r:
                    if r.status_code != 200:
                        phase.errors.append(f"HTTP {r.status_code}: {(await r.aread()).decode()[:200]}")
                        return
                    async for line in r.aiter_lines():
                        if not line.startswith("data: {"):
                            continue
                        chunk = orjson.loads(line[6:])
                        if "error" in chunk:
                            phase.errors.append(chunk["error"]["message"])
                        for choice in chunk.get("choices", []):
                            if text := choice["delta"].get("content"):
                                if ttft[k] is None:
                                    ttft[k] = (time.perf_counter() - sent) * 1000
                                parts.append(text)
            except httpx.HTTPError as e:
                phase.errors.append(repr(e))
            texts[k] = "".join(parts)

    async def run() -> None:
        gate = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(timeout=600, limits=limits) as http:
            await asyncio.gather(*(one(http, k, gate) for k in range(len(requests))))

    before = _stats(client)
    start = time.perf_counter()
    asyncio.run(run())
    phase.seconds = time.perf_counter() - start
    after = _stats(client)
    phase.tokens = after.tokens_generated - before.tokens_generated
    phase.forward_passes = after.forward_passes - before.forward_passes
    phase.ttft_ms = [t for t in ttft if t is not None]
    phase.texts = texts
    return phase


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="base model: tiny (random GPT-2) or a registry name / path")
    ap.add_argument("--layers", type=int, default=2, help="with --model tiny: layers (default 2)")
    ap.add_argument("--width", type=int, default=128, help="with --model tiny: hidden size (default 128)")
    ap.add_argument("--requests", type=int, default=64, help="chats in each phase (default 64)")
    ap.add_argument("--concurrency", type=int, default=64, help="streams at once (default 64)")
    ap.add_argument("--personas", type=int, default=4, help="persona models on the one base (default 4)")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="tokens per reply at most (default 64)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; each phase's best is reported (default 3)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the engine (default torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=os.environ.get("DOPPEL_BENCH_CACHE", "~/.cache/doppel-bench"),
                    help="where a converted --model base is kept between runs")
    args = ap.parse_args()
    _quiet()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # support.processes

    from doppel.clients import InferenceClient
    from doppel.store import open_store

    hist = histories(args.requests, args.seed)
    best: dict[str, Phase] = {}
    with tempfile.TemporaryDirectory(prefix="doppel-bench-gateway-") as tmp_name:
        tmp = Path(tmp_name)
        store = open_store((tmp / "store").as_uri())
        texts = [t for h in histories(2000, args.seed + 1) for _, t in h] + PERSONAS
        base, tokenizer, described, cache_prefix = _base(args, texts, Path(args.cache_dir).expanduser().resolve())
        _upload_base(store, base, tokenizer, cache_prefix, Path(args.cache_dir).expanduser().resolve(), tmp)
        model_ids, _ = publish_personas(store, base, tokenizer, args)
        del base
        process, pipe, addr = _start_service(tmp, store.url, args.threads)
        gateway, url = start_gateway(tmp, addr)
        print(f"model: {described}; {args.personas} personas; {args.requests} chats, {args.concurrency} at a time, "
              f"<= {args.max_new_tokens} new tokens; inference {addr}, gateway {url}", flush=True)
        try:
            with InferenceClient(addr, timeout=600) as client:
                warm_up(client, model_ids, hist, args.concurrency)
                requests = chat_requests(model_ids, hist, args.personas, args.max_new_tokens)
                gateway_phase(client, url, requests[: args.concurrency], args.concurrency)  # its connections, warm
                for round_ in range(1, args.repeats + 1):
                    print(f"round {round_} of {args.repeats}", flush=True)
                    for phase in (concurrent_phase(client, "concurrent, gRPC", requests, args.concurrency, tokenizer),
                                  gateway_phase(client, url, requests, args.concurrency)):
                        print(f"  {phase.name}: {phase.tokens} tokens in {phase.seconds:.2f} s, "
                              f"{phase.tokens_per_s:,.1f} tokens/s, TTFT p50 {_pct(phase.ttft_ms, 0.5) or 0:.0f} ms",
                              flush=True)
                        if phase.errors:
                            sys.exit(f"{len(phase.errors)} requests failed in {phase.name}; the first: {phase.errors[0]}")
                        if phase.name not in best or phase.tokens_per_s > best[phase.name].tokens_per_s:
                            best[phase.name] = phase
        finally:
            gateway.terminate()
            gateway.wait(30)
            _stop_service(process, pipe)
    grpc_, http = best["concurrent, gRPC"], best["concurrent, gateway"]
    ratio = http.tokens_per_s / grpc_.tokens_per_s if grpc_.tokens_per_s else 0.0
    print(f"\ngRPC {grpc_.tokens_per_s:,.1f} tokens/s, gateway {http.tokens_per_s:,.1f} tokens/s: ratio {ratio:.2f} "
          f"(target >= 0.9); TTFT p50 {_pct(grpc_.ttft_ms, 0.5) or 0:.0f} vs {_pct(http.ttft_ms, 0.5) or 0:.0f} ms")
    print(orjson.dumps({
        "model": described, "requests": args.requests, "concurrency": args.concurrency, "personas": args.personas,
        "max_new_tokens": args.max_new_tokens, "grpc_tokens_per_s": round(grpc_.tokens_per_s, 1),
        "gateway_tokens_per_s": round(http.tokens_per_s, 1), "ratio": round(ratio, 3),
        "grpc_tokens": grpc_.tokens, "gateway_tokens": http.tokens,
        "grpc_ttft_p50_ms": _pct(grpc_.ttft_ms, 0.5), "gateway_ttft_p50_ms": _pct(http.ttft_ms, 0.5),
        "grpc_ttft_p95_ms": _pct(grpc_.ttft_ms, 0.95), "gateway_ttft_p95_ms": _pct(http.ttft_ms, 0.95),
    }).decode())


if __name__ == "__main__":
    main()
