"""Inference throughput: the service's continuous batching against one-at-a-time `generate`.

    python bench/inference.py                                   # tiny random model on CPU (~1 min)
    python bench/inference.py --layers 4 --width 256            # a bigger random GPT-2
    python bench/inference.py --model smollm2-135m --max-new-tokens 32   # on a GPU

Sets everything up itself in a temporary folder: a file store, a base model uploaded once to
`base-models/bench-base/`, and `--personas` (16) LoRA adapters (rank 8, every linear layer,
random non-zero weights, one seed each) published as persona models on that one base. Then:

* sequential: `--sequential-requests` (default `--requests`) chat prompts, one at a time,
  through plain `model.generate` on persona 0's PeftModel in this process: the baseline of
  serving without the engine. Each generates exactly `--max-new-tokens` tokens
  (`min_new_tokens` = `max_new_tokens`, so no end of turn).
* sequential (service): the same prompts one at a time as unary `Chat` calls to the service:
  what batching alone gains, with the service's own per-token overhead on both sides.
* concurrent, 1 persona: `--requests` (64) `ChatStream` calls from `--concurrency` (64)
  threads at once, all to persona 0.
* concurrent, N personas: the same requests spread round-robin over the `--personas` models,
  which share the base: one engine, mixed adapters in one batch.

The service is the real `InferenceServicer` on a real gRPC server on port 0, run in a child
process so the 64 client threads do not share its GIL; it runs its engines in a process of its
own, as it always does (`services.inference.engine_process`). Every
request is a chat history of 4-10 turns (prompt token counts are printed), sampled with
temperature 1, no top-k/top-p, a seed per request (the same seeds in each phase) and
`max_new_tokens` as given. The service may end a reply early at the end of a turn; with random
weights that is rare, and tokens/s counts the tokens actually generated either way: in the
service, the engine's `tokens_generated` counter (GetEngineStats) over the phase, which counts
every sampled token, the one that ended a turn included. TTFT is the time from sending a
ChatStream request to its first non-empty text delta, as the client sees it (queueing and
prefill included). Models are loaded (LoadModel) and warmed up before anything is timed.
Every phase runs `--repeats` (3) times, the phases interleaved, and each phase's fastest round
is reported: other work on the machine only ever slows a round down. On a small, shared CPU
`--threads 1` (torch threads in each process) gives much steadier figures.

speedup = concurrent 1-persona tokens/s / sequential generate tokens/s; service_speedup uses
the sequential service figure instead; spread16_ratio = N-persona tokens/s / 1-persona tokens/s.
Targets: speedup >= 5x on a CPU with a small model, >= 25x on a GPU with a <= 1B model. The
last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.synthetic import NAMES, histories

USER = "Sam"
PERSONAS = NAMES
BASE_PREFIX = "base-models/bench-base/"


# -- the models ----------------------------------------------------------------------------

def _quiet() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def _base(args: argparse.Namespace, texts: list[str], cache: Path) -> tuple[Any, Any, str, str | None]:
    """(model, tokenizer, description, store prefix in the cache store or None) of the base model."""
    from doppel.tiny import tiny_model
    from services.trainer.basemodels import load_base_model

    if args.model == "tiny":
        model, tokenizer = tiny_model(texts, seed=0, block_size=512)
        if (args.layers, args.width) != (2, 128):
            import torch
            from transformers import GPT2Config, GPT2LMHeadModel

            config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_layer=args.layers, n_embd=args.width,
                                n_head=max(4, args.width // 64), bos_token_id=tokenizer.eos_token_id,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = GPT2LMHeadModel(config)
        return model, tokenizer, f"tiny GPT-2 ({args.layers} layers, {args.width} wide, vocab {len(tokenizer):,})", None
    from doppel.store import open_store

    base = load_base_model(args.model, open_store(cache.joinpath("store").as_uri()), cache_dir=cache / "models")
    return base.model, base.tokenizer, f"{args.model} ({base.source})", base.store_prefix


def _upload_base(store: Any, model: Any, tokenizer: Any, cache_prefix: str | None, cache: Path, tmp: Path) -> None:
    """The base's files under BASE_PREFIX, config.json last: copied from the cache store, else saved here."""
    if cache_prefix is not None:  # already in the cache store (e.g. smollm2's bf16 conversion): copy it as is
        from doppel.store import open_store

        source = open_store(cache.joinpath("store").as_uri())
        keys = sorted((i.key for i in source.list(cache_prefix)), key=lambda k: (k.endswith("/config.json"), k))
        for key in keys:
            local = tmp / "base-copy" / key[len(cache_prefix):]
            source.get_file(key, local)
            store.put_file(BASE_PREFIX + key[len(cache_prefix):], local)
        return
    folder = tmp / "base"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: (p.name == "config.json", str(p)))
    for path in files:
        store.put_file(BASE_PREFIX + path.relative_to(folder).as_posix(), path)


def publish_personas(store: Any, base: Any, tokenizer: Any, args: argparse.Namespace) -> tuple[list[str], Any]:
    """`args.personas` LoRA persona models on the one base; (their ids, persona 0's PeftModel)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from doppel.model import ModelManifest, Recipe
    from doppel.transcript import Transcript
    from services.trainer.models import publish

    kind = Transcript(tokenizer, [PERSONAS[0]]).kind
    ids, first = [], None
    for i in range(args.personas):
        persona = PERSONAS[i]
        torch.manual_seed(1000 + i)
        peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                                    init_lora_weights=False))
        recipe = Recipe(dataset_id="bench", speakers=[persona], base_model=args.model, method="lora", preset="default",
                        model_name=persona, lora_rank=8, lora_alpha=16.0)
        manifest = ModelManifest(
            id=f"bench-{i:02d}-{persona.lower()}", name=persona, base_model=args.model, base_source=f"store:{BASE_PREFIX}",
            base_store_prefix=BASE_PREFIX, method="lora", transcript=kind, speakers=[persona],
            participants=[persona, USER], dataset_id="bench", run_id="bench", recipe=recipe,
        )
        publish(store, manifest, peft_model, tokenizer, None)
        ids.append(manifest.id)
        if i == 0:
            first = peft_model
        else:
            del peft_model
    return ids, first


# -- the phases -------------------------------------------------------------------------------

@dataclass
class Phase:
    """What one timed run of requests gave."""

    name: str
    requests: int = 0
    tokens: int = 0
    seconds: float = 0.0
    ttft_ms: list[float] = field(default_factory=list)
    forward_passes: int = 0
    texts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


# -- the baseline -----------------------------------------------------------------------------

def prompt_ids(tokenizer: Any, persona: str, history: list[tuple[bool, str]]) -> list[int]:
    """The prompt a chat request becomes, rendered the way the service renders it (`Transcript.prompt`)."""
    from doppel.transcript import Transcript, Turn

    transcript = Transcript(tokenizer, [persona])
    turns = [Turn(persona if mine else USER, text) for mine, text in history]
    return transcript.encode(transcript.prompt(turns, [persona, USER], persona))


def sequential_generate(model: Any, tokenizer: Any, prompts: list[list[int]], max_new: int, device: Any) -> Phase:
    """Each prompt through `model.generate`, one at a time, exactly `max_new` sampled tokens each."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def one(ids: list[int], seed: int) -> int:
        torch.manual_seed(seed)
        x = torch.tensor([ids], device=device)
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=True, temperature=1.0, top_k=0,
                             top_p=1.0, max_new_tokens=max_new, min_new_tokens=max_new, pad_token_id=pad)
        return out.shape[1] - x.shape[1]

    phase = Phase("sequential model.generate", requests=len(prompts))
    with torch.inference_mode():
        one(prompts[0], 0)  # warm-up, untimed
        _sync(device)
        start = time.perf_counter()
        phase.tokens = sum(one(ids, k) for k, ids in enumerate(prompts))
        _sync(device)
        phase.seconds = time.perf_counter() - start
    phase.forward_passes = phase.tokens  # one row a pass (prefill and decode steps)
    return phase


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- the service ------------------------------------------------------------------------------

def _serve(home: str, store_url: str, threads: int, env: dict[str, str], conn: Any) -> None:
    """Child process: the real servicer on a real gRPC server on port 0, until the parent says stop."""
    import asyncio

    os.environ.update(env)
    try:
        from doppel.config import Settings
        from doppel.rpc.server import Service, start_server
        from doppel.v1 import inference_pb2, inference_pb2_grpc
        from services.inference.remote import EngineProcess
        from services.inference.server import InferenceServicer

        async def run() -> None:
            settings = Settings(home=Path(home), store_url=store_url, inference_threads=threads)
            servicer = InferenceServicer(EngineProcess(settings))
            service = Service.of(inference_pb2, inference_pb2_grpc, "InferenceService", servicer)
            running = await start_server([service], "127.0.0.1:0", grace=1.0)
            conn.send(("port", running.port))
            await asyncio.to_thread(conn.recv)
            await running.stop()
            close = getattr(servicer, "close", None)
            if close is not None:
                await asyncio.to_thread(close)

        asyncio.run(run())
    except BaseException as e:  # noqa: BLE001 - the parent reports it
        import traceback

        conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[k]


def _stats(client: Any) -> Any:
    from doppel.v1 import inference_pb2 as inf

    return client.get_engine_stats(inf.GetEngineStatsRequest())


def chat_requests(model_ids: list[str], hist: list[list[tuple[bool, str]]], spread: int, max_new: int) -> list[Any]:
    """ChatRequests for `hist`, request k to persona k % spread, each with its own seed."""
    from doppel.v1 import common_pb2
    from doppel.v1 import inference_pb2 as inf

    out = []
    for k, h in enumerate(hist):
        persona = PERSONAS[k % spread]
        sampling = common_pb2.SamplingParams(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
                                             max_new_tokens=max_new, n=1, seed=k)
        turns = [inf.Turn(speaker=persona if mine else USER, text=t) for mine, t in h]
        out.append(inf.ChatRequest(model_id=model_ids[k % spread], history=turns, as_speaker=persona,
                                   user_speaker=USER, sampling=sampling))
    return out


def concurrent_phase(client: Any, name: str, requests: list[Any], concurrency: int, tokenizer: Any) -> Phase:
    """`requests` as ChatStream calls from `concurrency` threads released together; TTFT per request."""
    from doppel.clients import rpc_error_message
    from doppel.v1 import inference_pb2 as inf

    phase = Phase(name, requests=len(requests))
    texts: list[str] = [""] * len(requests)
    ttft: list[float | None] = [None] * len(requests)
    errors: list[str] = []
    lock = threading.Lock()
    next_index = iter(range(len(requests)))
    gate = threading.Barrier(concurrency + 1)

    def worker() -> None:
        gate.wait()
        while True:
            with lock:
                k = next(next_index, None)
            if k is None:
                return
            parts = []
            sent = time.perf_counter()
            try:
                for piece in client.chat_stream(inf.ChatStreamRequest(chat=requests[k])):
                    if piece.delta:
                        if ttft[k] is None:
                            ttft[k] = (time.perf_counter() - sent) * 1000
                        parts.append(piece.delta)
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(rpc_error_message(e) if hasattr(e, "code") else repr(e))
            texts[k] = "".join(parts)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    before = _stats(client)
    gate.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    phase.seconds = time.perf_counter() - start
    after = _stats(client)
    phase.tokens = after.tokens_generated - before.tokens_generated
    phase.forward_passes = after.forward_passes - before.forward_passes
    if phase.tokens <= 0:  # an engine that keeps no counter: count the text's tokens instead
        phase.tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    phase.ttft_ms = [t for t in ttft if t is not None]
    phase.texts, phase.errors = texts, errors
    return phase


def sequential_service(client: Any, requests: list[Any]) -> Phase:
    """`requests` as unary Chat calls, one at a time; tokens from each candidate's count."""
    phase = Phase("sequential Chat (service)", requests=len(requests))
    before = _stats(client)
    start = time.perf_counter()
    for r in requests:
        phase.tokens += sum(c.tokens for c in client.chat(r, timeout=600).candidates)
    phase.seconds = time.perf_counter() - start
    phase.forward_passes = _stats(client).forward_passes - before.forward_passes
    return phase


def warm_up(client: Any, model_ids: list[str], hist: list[list[tuple[bool, str]]], concurrency: int) -> float:
    """Load every model, then a burst of short requests on persona 0 and one over every persona; the load time."""
    from concurrent.futures import ThreadPoolExecutor

    from doppel.v1 import inference_pb2 as inf

    start = time.perf_counter()
    for model_id in model_ids:
        client.load_model(inf.LoadModelRequest(model_id=model_id), timeout=600)
    load_s = time.perf_counter() - start
    width = min(len(hist), concurrency)
    with ThreadPoolExecutor(width) as pool:  # full-width bursts: the batch shapes the timed phases will see
        for spread in (1, len(model_ids)):
            list(pool.map(lambda r: client.chat(r, timeout=600), chat_requests(model_ids, hist[:width], spread, 4)))
    return load_s


# -- the run and the report ---------------------------------------------------------------------

def _start_service(tmp: Path, store_url: str, threads: int) -> tuple[Any, Any, str]:
    """(process, pipe, address) of the service in a child process."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = ctx.Process(target=_serve, args=(str(tmp / "home"), store_url, threads, env, child), daemon=True)
    process.start()
    if not parent.poll(300):
        process.kill()
        sys.exit("the inference service did not start within 300 s")
    kind, value = parent.recv()
    if kind == "error":
        sys.exit(f"the inference service failed to start: {value}")
    return process, parent, f"127.0.0.1:{value}"


def _stop_service(process: Any, pipe: Any) -> None:
    try:
        pipe.send("stop")
    except OSError:
        pass
    process.join(30)
    if process.is_alive():
        process.kill()


def _run(args: argparse.Namespace) -> tuple[dict[str, Phase], dict[str, Any]]:
    """Set up, run every phase `args.repeats` times (interleaved) and keep each phase's fastest round."""
    import torch

    from doppel.clients import InferenceClient
    from doppel.store import open_store

    sequential_n = args.sequential_requests or args.requests
    cache = Path(args.cache_dir).expanduser().resolve()
    hist = histories(max(args.requests, sequential_n), args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    best: dict[str, Phase] = {}
    failed: list[str] = []

    def keep(phase: Phase) -> None:
        print(f"  {phase.name}: {phase.tokens} tokens in {phase.seconds:.2f} s, {phase.tokens_per_s:,.1f} tokens/s"
              + (f", TTFT p50 {_pct(phase.ttft_ms, 0.5):.0f} ms" if phase.ttft_ms else ""), flush=True)
        for e in sorted(set(phase.errors)):
            print(f"  error ({phase.errors.count(e)}x): {e}", flush=True)
        failed.extend(phase.errors)
        if not phase.errors and (phase.name not in best or phase.tokens_per_s > best[phase.name].tokens_per_s):
            best[phase.name] = phase

    with tempfile.TemporaryDirectory(prefix="doppel-bench-inference-") as tmp_name:
        tmp = Path(tmp_name)
        store = open_store((tmp / "store").as_uri())
        t0 = time.perf_counter()
        texts = [t for h in histories(2000, args.seed + 1) for _, t in h] + PERSONAS + [USER]
        base, tokenizer, described, cache_prefix = _base(args, texts, cache)
        params = sum(p.numel() for p in base.parameters())
        _upload_base(store, base, tokenizer, cache_prefix, cache, tmp)
        model_ids, persona0 = publish_personas(store, base, tokenizer, args)
        del base
        prompts = [prompt_ids(tokenizer, PERSONAS[0], h) for h in hist]
        print(f"model: {described}, {params / 1e6:.1f} M params; {args.personas} LoRA adapters (r=8, all linear "
              f"layers, random weights) on one base; set up in {time.perf_counter() - t0:.1f} s", flush=True)
        lengths = [len(p) for p in prompts[: args.requests]]
        load = f", load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores" if device.type == "cpu" else ""
        print(f"workload: {args.requests} chat requests from {args.concurrency} threads, prompts of "
              f"{min(lengths)}-{max(lengths)} tokens (mean {sum(lengths) / len(lengths):.0f}), at most "
              f"{args.max_new_tokens} new tokens, temperature 1; device {device.type}{load}", flush=True)
        if device.type == "cpu" and not args.threads and os.getloadavg()[0] >= 0.5:
            print("note: other processes are busy and torch uses every core: its threads then thrash and the "
                  "timings swing widely; --threads 1 is steadier", flush=True)
        # on a GPU the service runs bf16 (its model cache's default there): the baseline does too
        persona0.to(device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32).eval()

        process, pipe, addr = _start_service(tmp, store.url, args.threads)
        try:
            with InferenceClient(addr, timeout=600) as client:
                print(f"service on {addr}: loading {args.personas} models and warming up...", flush=True)
                load_s = warm_up(client, model_ids, hist, args.concurrency)
                print(f"  loaded in {load_s:.2f} s", flush=True)
                for round_ in range(1, args.repeats + 1):
                    print(f"round {round_} of {args.repeats}", flush=True)
                    keep(sequential_generate(persona0, tokenizer, prompts[:sequential_n], args.max_new_tokens, device))
                    if not args.no_service_sequential:
                        keep(sequential_service(client, chat_requests(model_ids, hist[:sequential_n], 1,
                                                                      args.max_new_tokens)))
                    for spread in (1, args.personas):
                        name = "concurrent, 1 persona" if spread == 1 else f"concurrent, {spread} personas"
                        reqs = chat_requests(model_ids, hist[: args.requests], spread, args.max_new_tokens)
                        keep(concurrent_phase(client, name, reqs, min(args.concurrency, args.requests), tokenizer))
        finally:
            _stop_service(process, pipe)
    if failed:
        sys.exit(f"{len(failed)} requests failed; the first: {failed[0]}")
    info = {"model": described, "params": params, "device": device.type, "load_s": load_s,
            "sequential_requests": sequential_n, "threads": args.threads or torch.get_num_threads()}
    return best, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="base model: tiny (random GPT-2, see --layers/--width), "
                                                    "smollm2-135m, a local path or a cached hub id (default tiny)")
    ap.add_argument("--layers", type=int, default=2, help="with --model tiny: layers (default 2)")
    ap.add_argument("--width", type=int, default=128, help="with --model tiny: hidden size (default 128)")
    ap.add_argument("--requests", type=int, default=64, help="requests in each concurrent phase (default 64)")
    ap.add_argument("--concurrency", type=int, default=64, help="client threads sending them (default 64)")
    ap.add_argument("--personas", type=int, default=16, help="persona models on the one base (default 16)")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="tokens per reply at most (default 32)")
    ap.add_argument("--sequential-requests", type=int, help="requests in each sequential run (default --requests)")
    ap.add_argument("--no-service-sequential", action="store_true", help="skip the one-at-a-time service run")
    ap.add_argument("--repeats", type=int, default=3,
                    help="rounds of every phase, interleaved; each phase's fastest round counts (default 3)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the bench and engine processes (default torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-dir", default=os.environ.get("DOPPEL_BENCH_CACHE", "~/.cache/doppel-bench"),
                    help="where smollm2-135m is converted once (not used by tiny)")
    args = ap.parse_args()
    if min(args.requests, args.concurrency, args.personas, args.max_new_tokens, args.repeats) < 1:
        ap.error("--requests, --concurrency, --personas, --max-new-tokens and --repeats must be at least 1")
    if args.personas > len(PERSONAS):
        ap.error(f"--personas is at most {len(PERSONAS)}")

    import torch

    _quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    best, info = _run(args)
    seq = best["sequential model.generate"]
    service_seq = best.get("sequential Chat (service)")
    one = best["concurrent, 1 persona"]
    spread = best[f"concurrent, {args.personas} personas"] if args.personas > 1 else one

    def r(x: float | None, nd: int = 1) -> float | None:
        return None if x is None else round(x, nd)

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 3) if b else None

    figures = {
        "tokens_per_s": r(one.tokens_per_s),
        "sequential_tokens_per_s": r(seq.tokens_per_s),
        "speedup": ratio(one.tokens_per_s, seq.tokens_per_s),
        "spread16_tokens_per_s": r(spread.tokens_per_s),
        "spread16_ratio": ratio(spread.tokens_per_s, one.tokens_per_s),
        "ttft_p50_ms": r(_pct(one.ttft_ms, 0.5)),
        "ttft_p95_ms": r(_pct(one.ttft_ms, 0.95)),
        "spread16_ttft_p50_ms": r(_pct(spread.ttft_ms, 0.5)),
        "spread16_ttft_p95_ms": r(_pct(spread.ttft_ms, 0.95)),
        "sequential_service_tokens_per_s": r(service_seq.tokens_per_s) if service_seq else None,
        "service_speedup": ratio(one.tokens_per_s, service_seq.tokens_per_s) if service_seq else None,
        "tokens": one.tokens,
        "spread16_tokens": spread.tokens,
        "sequential_tokens": seq.tokens,
        "seconds": r(one.seconds, 3),
        "spread16_seconds": r(spread.seconds, 3),
        "sequential_seconds": r(seq.seconds, 3),
        "mean_rows_per_pass": ratio(one.tokens, one.forward_passes),
        "spread16_mean_rows_per_pass": ratio(spread.tokens, spread.forward_passes),
        "load_s": r(info["load_s"], 3),
        "model": info["model"],
        "params": info["params"],
        "device": info["device"],
        "requests": args.requests,
        "sequential_requests": info["sequential_requests"],
        "concurrency": args.concurrency,
        "personas": args.personas,
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "threads": info["threads"],
    }

    def cell(x: float | None, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    print(f"\n{'fastest of ' + str(args.repeats) + ' rounds':<28}{'requests':>9}{'tokens':>8}{'seconds':>9}"
          f"{'tokens/s':>10}{'TTFT p50':>10}{'TTFT p95':>10}{'rows/pass':>10}")
    for p in best.values():
        print(f"{p.name:<28}{p.requests:>9}{p.tokens:>8}{p.seconds:>9.2f}{p.tokens_per_s:>10,.1f}"
              f"{cell(_pct(p.ttft_ms, 0.5), '.0f'):>10}{cell(_pct(p.ttft_ms, 0.95), '.0f'):>10}"
              f"{cell(p.tokens / p.forward_passes if p.forward_passes else None, '.1f'):>10}")
    print("tokens/s: tokens generated / wall time of the phase; TTFT: ms to the first text delta; "
          "rows/pass: tokens generated / forward passes (prefills included)")
    extra = f", {figures['service_speedup']:.2f}x one-at-a-time service calls" if figures["service_speedup"] else ""
    print(f"speedup: {figures['speedup']:.2f}x sequential model.generate{extra}; "
          f"{args.personas} personas / 1 persona: {figures['spread16_ratio']:.3f}")
    print("targets: speedup >= 5x on CPU with a small model, >= 25x on a GPU with a <= 1B model")
    print(orjson.dumps(figures).decode())


if __name__ == "__main__":
    main()
