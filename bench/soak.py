"""Soak: minutes of mixed load against a whole running stack, and what its processes hold before and after.

    python bench/soak.py                          # its own `doppel up` in a temporary DOPPEL_HOME, 5 minutes
    python bench/soak.py --minutes 30 --clients 2
    python bench/soak.py --attach                 # a stack already running at DOPPEL_*_ADDR, store DOPPEL_STORE_URL

By default it starts `python -m doppel up` with DOPPEL_HOME a temporary folder and every address
on a free loopback port; the store is that home's folder, so the supervisor imports the demo
export there once it is up. While the stack starts, the bench publishes four tiny persona models
into its store the way the trainer publishes them (`services.trainer.models.publish`): LoRA
adapters for Alice and for Bob on one random 2-layer GPT-2 base (`doppel.tiny`), a group adapter
that learned Alice, Bob and Carol, and a full model of Alice. The inference service reads models
from the store when first asked, so none needs a restart. With `--attach` the stack is the one
DOPPEL_* names (token included); the models go into its store and are deleted again at the end.

Then every model is loaded (LoadModel) and one call of each kind made, untimed: what a first
call costs (a model in the cache, a tokenizer, lazy imports) is not growth. With its own stack
the inference part runs while the UI starts, the upload once the demo import is done (the
supervisor imports it only into a store with no dataset). Setup takes 1-1.5 minutes on a busy
2-core machine, most of it `doppel up` (the Prefect server's first start). Then a snapshot of
every process of the stack: RSS, open file descriptors and threads of the supervisor, its
children and theirs (the inference engine process, multiprocessing helpers), found with psutil
from the supervisor's pid (`bench.proctree`; with --attach, from the processes listening on the
stack's ports, or `--pid`). Then for `--minutes` (5), `--clients` (1) threads of each kind call
back to back, one call at a time each, until the time is up (calls in flight then finish):

* upload: the demo export (`doppel.demo.export_zip()`, ~1,000 messages, a 90 kB zip) as a new
  dataset, then delete: that dataset deleted again (one thread does both, in turn);
* chat: a unary Chat to the four models in turn (the group model as Carol), a 2-turn history,
  at most `--max-new-tokens` (16), temperature 1, n=1, a new seed each call;
* chat_stream: the same request as ChatStream, read to its last piece;
* simulate: Simulate on the group model, `--turns` (4) turns among all three.

Every call has a deadline of `--deadline-s` (120). Latency is the wall time of a successful call
as the client sees it (a stream's: to its last piece); p50/p95 are nearest-rank. A call fails on
a gRPC error (counted by status code), another exception (by its type), or an answer that is not
whole (INCOMPLETE: no candidate, a stream with no last piece, fewer turns than asked). After the
load, a second snapshot; every `--sample-s` (10) s in between the stack's totals and each
process's RSS are recorded (the timeline), to tell steady growth from a step. Also counted: datasets left behind, restarts
the supervisor announced, processes whose pid changed, and (own stack) any process of the tree
still alive once `doppel up` has stopped. No targets: the figures are for a note. The last
line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import grpc
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.proctree import Usage, alive, snapshot, stack_roots
from bench.stack import start_stack
from doppel.clients import InferenceClient, IngestClient, rpc_error_message
from doppel.store.base import Store
from doppel.v1 import common_pb2
from doppel.v1 import inference_pb2 as inf
from doppel.v1 import ingest_pb2 as ing

KINDS = ["upload", "delete", "chat", "chat_stream", "simulate"]
PEOPLE = ["Alice", "Bob", "Carol"]
TEXTS = [f"Alice: message number {i} about things\nBob: reply {i} ok\nCarol: and {i}" for i in range(200)]
HISTORY = [("Bob", "reply 3 ok"), ("Carol", "and 3")]
MB = 1 << 20


# -- the models ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Models:
    """What the bench published: (model id, who it speaks as, who the user is) to chat with, the group model."""

    chat: list[tuple[str, str, str]]
    group: str
    prefixes: list[str]  # everything written, to delete from a store that outlives the bench


def publish_models(store: Store, run: str) -> Models:
    """Two LoRA personas and a group adapter on one tiny base in the store, and a full model."""
    import warnings

    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    from doppel.layout import model_prefix
    from doppel.model import ModelManifest, Recipe
    from doppel.tiny import tiny_model
    from services.trainer.models import publish

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    base_prefix = f"base-models/soak-{run}/"
    base, tok = tiny_model(TEXTS, seed=0, block_size=512)
    with tempfile.TemporaryDirectory(prefix="doppel-soak-base-") as tmp:
        base.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        files = sorted((p for p in Path(tmp).rglob("*") if p.is_file()), key=lambda p: (p.name == "config.json", str(p)))
        for path in files:
            store.put_file(base_prefix + path.relative_to(tmp).as_posix(), path)

    def manifest(kind: str, method: str, speakers: list[str], prefix: str | None) -> ModelManifest:
        recipe = Recipe(dataset_id="soak", speakers=speakers, base_model="tiny", method=method, preset="default",
                        model_name="-".join(speakers))
        return ModelManifest(id=f"soak-{run}-{kind}", name="-".join(speakers), base_model="tiny",
                             base_source="registry:tiny", base_store_prefix=prefix, method=method, transcript="plain-eos",
                             speakers=speakers, participants=PEOPLE, dataset_id="soak", run_id="soak", recipe=recipe)

    ids = {}
    for k, (kind, speakers) in enumerate([("alice", ["Alice"]), ("bob", ["Bob"]), ("group", PEOPLE)]):
        torch.manual_seed(100 + k)
        peft = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["c_attn"], init_lora_weights=False))
        ids[kind] = publish(store, manifest(kind, "lora", speakers, base_prefix), peft, tok).id
    full, _ = tiny_model(TEXTS, seed=5, block_size=512)
    ids["full"] = publish(store, manifest("full", "full", ["Alice"], None), full, tok).id
    chat = [(ids["alice"], "Alice", "Bob"), (ids["bob"], "Bob", "Carol"), (ids["full"], "Alice", "Carol"),
            (ids["group"], "Carol", "Alice")]
    return Models(chat, ids["group"], [base_prefix, *(model_prefix(i) for i in ids.values())])


# -- the load ------------------------------------------------------------------------------------

@dataclass
class Tally:
    """Calls of every kind: latencies of the successful ones, errors by code, the first message of each code."""

    latencies_ms: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: dict[str, Counter[str]] = field(default_factory=lambda: {k: Counter() for k in KINDS})
    messages: dict[str, dict[str, str]] = field(default_factory=lambda: {k: {} for k in KINDS})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, kind: str, fn: Callable[[], Any], whole: Callable[[Any], bool] = lambda _: True) -> Any | None:
        """fn()'s result, its latency counted; None, the error counted, when it failed or its answer is not whole."""
        start = time.perf_counter()
        try:
            out = fn()
            code, message = (None, "") if whole(out) else ("INCOMPLETE", f"not a whole answer: {str(out)[:200]!r}")
        except grpc.RpcError as e:
            code, message = (e.code().name if e.code() else "UNKNOWN"), rpc_error_message(e)
        except Exception as e:  # noqa: BLE001 - counted and reported, the load goes on
            code, message = type(e).__name__, repr(e)
        ms = (time.perf_counter() - start) * 1000
        with self.lock:
            if code is None:
                self.latencies_ms[kind].append(ms)
            else:
                self.errors[kind][code] += 1
                self.messages[kind].setdefault(code, message[:300])
        return out if code is None else None


@dataclass(frozen=True)
class Load:
    """What every load thread needs."""

    ingest: IngestClient
    inference: InferenceClient
    models: Models
    export: bytes
    max_new_tokens: int
    turns: int
    deadline_s: float
    tally: Tally
    stop: threading.Event


def _sampling(load: Load, seed: int) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=load.max_new_tokens, n=1, seed=seed)


def chat_request(load: Load, k: int, seed: int) -> inf.ChatRequest:
    model_id, me, user = load.models.chat[k % len(load.models.chat)]
    history = [inf.Turn(speaker=s, text=t) for s, t in HISTORY]
    return inf.ChatRequest(model_id=model_id, history=history, as_speaker=me, user_speaker=user, sampling=_sampling(load, seed))


def _upload_parts(load: Load, name: str) -> Iterator[ing.UploadRequest]:
    from doppel.demo import FILENAME

    data = load.export
    header = ing.UploadHeader(filename=FILENAME, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), dataset_name=name)
    yield ing.UploadRequest(header=header)
    yield ing.UploadRequest(chunk=data)


def ingest_once(load: Load, name: str) -> bool:
    """Upload the export as a new dataset, then delete it; whether both went through."""
    t = load.tally
    dataset = t.call("upload", lambda: load.ingest.upload(_upload_parts(load, name), timeout=load.deadline_s).dataset,
                     lambda d: bool(d.id))
    if dataset is None:
        return False
    request = ing.DeleteDatasetRequest(dataset_id=dataset.id)
    return t.call("delete", lambda: load.ingest.delete_dataset(request, timeout=load.deadline_s)) is not None


def chat_once(load: Load, k: int, seed: int) -> bool:
    request = chat_request(load, k, seed)
    return load.tally.call("chat", lambda: load.inference.chat(request, timeout=load.deadline_s),
                           lambda r: len(r.candidates) == 1) is not None


def stream_once(load: Load, k: int, seed: int) -> bool:
    request = inf.ChatStreamRequest(chat=chat_request(load, k, seed))
    return load.tally.call("chat_stream", lambda: list(load.inference.chat_stream(request, timeout=load.deadline_s)),
                           lambda pieces: bool(pieces) and pieces[-1].finish_reason != inf.FINISH_REASON_UNSPECIFIED) is not None


def simulate_once(load: Load, seed: int) -> bool:
    request = inf.SimulateRequest(model_id=load.models.group, participants=PEOPLE, turns=load.turns,
                                  sampling=_sampling(load, seed))
    return load.tally.call("simulate", lambda: list(load.inference.simulate(request, timeout=load.deadline_s)),
                           lambda turns: len(turns) == load.turns) is not None


def worker(load: Load, kind: str, index: int) -> None:
    """Calls of one kind, back to back, until told to stop; a short pause after a failure, so a dead service
    is not hammered."""
    k = 0
    while not load.stop.is_set():
        seed = index * 1_000_000 + k
        if kind == "ingest":
            ok = ingest_once(load, f"soak {index}-{k}")
        elif kind == "chat":
            ok = chat_once(load, k, seed)
        elif kind == "chat_stream":
            ok = stream_once(load, k, seed)
        else:
            ok = simulate_once(load, seed)
        k += 1
        if not ok:
            load.stop.wait(0.5)


def warm_up(load: Load, *, inference: bool = True, ingest: bool = True) -> None:
    """Every model loaded and one call of each kind, outside the figures; SystemExit naming what failed."""
    scratch = Tally()
    warm = dataclasses.replace(load, tally=scratch)
    if inference:
        for model_id in [m for m, _, _ in load.models.chat]:
            load.inference.load_model(inf.LoadModelRequest(model_id=model_id), timeout=300)
        for k in range(len(load.models.chat)):
            chat_once(warm, k, k)
            stream_once(warm, k, k)
        simulate_once(warm, 0)
    if ingest:
        ingest_once(warm, "soak warm-up")
    failed = {kind: dict(messages) for kind, messages in scratch.messages.items() if messages}
    if failed:
        raise SystemExit(f"the warm-up calls failed: {failed}")


# -- the stack -----------------------------------------------------------------------------------

# -- the figures ---------------------------------------------------------------------------------

def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


def _usage(u: Usage | None) -> dict[str, Any] | None:
    return None if u is None else {"pid": u.pid, "rss_mb": round(u.rss / MB, 1), "fds": u.fds, "threads": u.threads}


def _sample(t: float, snap: dict[str, Usage]) -> dict[str, Any]:
    """One point of the timeline: the totals, and each process's RSS."""
    return {"t": round(t, 1), **_totals(snap), "rss_mb_by_process": {n: round(u.rss / MB, 1) for n, u in snap.items()}}


def _totals(snap: dict[str, Usage]) -> dict[str, Any]:
    return {"processes": len(snap), "rss_mb": round(sum(u.rss for u in snap.values()) / MB, 1),
            "fds": sum(u.fds for u in snap.values()), "threads": sum(u.threads for u in snap.values())}


def process_figures(start: dict[str, Usage], end: dict[str, Usage]) -> list[dict[str, Any]]:
    """One entry a process name, in the start snapshot's order then new ones: start, end, their difference."""
    out = []
    for name in [*start, *(n for n in end if n not in start)]:
        a, b = start.get(name), end.get(name)
        delta = None if a is None or b is None else {
            "rss_mb": round((b.rss - a.rss) / MB, 1), "fds": b.fds - a.fds, "threads": b.threads - a.threads}
        out.append({"name": name, "start": _usage(a), "end": _usage(b), "delta": delta,
                    "restarted": a is not None and b is not None and a.pid != b.pid})
    return out


def call_figures(tally: Tally, seconds: float) -> dict[str, dict[str, Any]]:
    out = {}
    for kind in KINDS:
        lat, errors = tally.latencies_ms[kind], tally.errors[kind]
        calls = len(lat) + sum(errors.values())
        out[kind] = {"calls": calls, "ok": len(lat), "errors": sum(errors.values()), "errors_by_code": dict(errors),
                     "per_s": round(calls / seconds, 2) if seconds else None, "p50_ms": _r(_pct(lat, 0.5)),
                     "p95_ms": _r(_pct(lat, 0.95)), "max_ms": _r(max(lat, default=None))}
    return out


def print_tables(figures: dict[str, Any]) -> None:
    def cell(x: Any, fmt: str = "") -> str:
        return "-" if x is None else format(x, fmt)

    def signed(x: Any, fmt: str) -> str:
        return "-" if x is None else format(x, "+" + fmt)

    print(f"\n{'process':<30}{'pid':>8}{'RSS MB':>9}{'end':>8}{'Δ':>7}{'fds':>6}{'end':>6}{'Δ':>5}"
          f"{'threads':>9}{'end':>6}{'Δ':>5}")
    for p in figures["processes"]:
        a, b, d = p["start"] or {}, p["end"] or {}, p["delta"] or {}
        pid = f"{a.get('pid', '-')}" + ("*" if p["restarted"] else "")
        print(f"{p['name']:<30}{pid:>8}{cell(a.get('rss_mb'), '.1f'):>9}{cell(b.get('rss_mb'), '.1f'):>8}"
              f"{signed(d.get('rss_mb'), '.1f'):>7}{cell(a.get('fds')):>6}{cell(b.get('fds')):>6}{signed(d.get('fds'), 'd'):>5}"
              f"{cell(a.get('threads')):>9}{cell(b.get('threads')):>6}{signed(d.get('threads'), 'd'):>5}")
    t = figures["total"]
    print(f"{'total':<30}{'':>8}{t['start']['rss_mb']:>9.1f}{t['end']['rss_mb']:>8.1f}{t['delta']['rss_mb']:>+7.1f}"
          f"{t['start']['fds']:>6}{t['end']['fds']:>6}{t['delta']['fds']:>+5}"
          f"{t['start']['threads']:>9}{t['end']['threads']:>6}{t['delta']['threads']:>+5}")
    print("start: after the warm-up, as the load began; end: as it ended; * the pid changed in between (a restart)")
    print(f"\n{'kind':<14}{'calls':>8}{'errors':>8}{'calls/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}  errors by code")
    for kind, c in figures["calls"].items():
        codes = ", ".join(f"{code} {n}" for code, n in sorted(c["errors_by_code"].items())) or "-"
        print(f"{kind:<14}{c['calls']:>8}{c['errors']:>8}{cell(c['per_s'], '.2f'):>9}{cell(c['p50_ms'], '.0f'):>9}"
              f"{cell(c['p95_ms'], '.0f'):>9}{cell(c['max_ms'], '.0f'):>9}  {codes}")
    for kind, messages in figures["first_errors"].items():
        for code, message in messages.items():
            print(f"  first {kind} {code}: {message}")
    e = figures["engine"]
    print(f"\nload: {figures['seconds']:.0f} s, {figures['clients']} client thread(s) a kind; engine: "
          f"{cell(e.get('tokens_generated'))} tokens, {cell(e.get('requests_completed'))} requests, cache "
          f"{cell(e.get('cache_mb_start'), '.1f')} -> {cell(e.get('cache_mb_end'), '.1f')} MB; datasets left behind: "
          f"{cell(figures['datasets_left'])}; restarts announced: {cell(figures['restarts'])}; "
          f"still running after stop: {figures['left_running'] if figures['left_running'] is not None else '-'}")
    print(f"setup {figures['setup_s']:.0f} s (doppel up {cell(figures['up_s'], '.0f')} s), warm-up {figures['warmup_s']:.0f} s, "
          f"stop {cell(figures['stop_s'], '.0f')} s; load average {figures['load_average']} on {figures['cpus']} cores")


# -- the run -------------------------------------------------------------------------------------

def _datasets(client: IngestClient) -> int:
    n, token = 0, ""
    while True:
        page = client.list_datasets(ing.ListDatasetsRequest(page_token=token), timeout=30)
        n += len(page.datasets)
        if not (token := page.next_page_token):
            return n


def _engine(client: InferenceClient) -> inf.GetEngineStatsResponse | None:
    try:
        return client.get_engine_stats(inf.GetEngineStatsRequest(), timeout=30)
    except grpc.RpcError:
        return None


def new_load(args: argparse.Namespace, ingest: IngestClient, inference: InferenceClient, models: Models) -> Load:
    from doppel.demo import export_zip

    return Load(ingest, inference, models, export_zip(), args.max_new_tokens, args.turns, args.deadline_s, Tally(),
                threading.Event())


def timed_warm_up(load: Load, **parts: bool) -> float:
    """`warm_up`, said; the seconds it took."""
    print(f"warming up: {'loading the models, ' if parts.get('inference', True) else ''}one call of each kind...", flush=True)
    t0 = time.monotonic()
    warm_up(load, **parts)
    return time.monotonic() - t0


def soak(args: argparse.Namespace, load: Load, roots: Callable[[], list[int]]) -> dict[str, Any]:
    """Snapshot, load for the duration while sampling the totals, snapshot again: the figures."""
    ingest, inference = load.ingest, load.inference
    datasets_before, engine_before = _datasets(ingest), _engine(inference)
    start = snapshot(roots())
    began = time.monotonic()
    timeline = [_sample(0.0, start)]
    kinds = ["ingest", "chat", "chat_stream", "simulate"]
    threads = [threading.Thread(target=worker, args=(load, kind, i), name=f"{kind}-{i}", daemon=True)
               for i in range(args.clients) for kind in kinds]
    print(f"load: {len(threads)} threads ({', '.join(kinds)}; {args.clients} of each) for {args.duration_s:.0f} s", flush=True)
    for t in threads:
        t.start()
    while (left := args.duration_s - (time.monotonic() - began)) > 0:
        if load.stop.wait(min(args.sample_s, left)):
            break
        if time.monotonic() - began < args.duration_s - 1:  # the end snapshot is the last sample
            timeline.append(_sample(time.monotonic() - began, snapshot(roots())))
            done = sum(len(v) + sum(load.tally.errors[k].values()) for k, v in load.tally.latencies_ms.items())
            print(f"  {timeline[-1]['t']:>6.0f} s: {done} calls, stack RSS {timeline[-1]['rss_mb']:.0f} MB, "
                  f"{timeline[-1]['fds']} fds, {timeline[-1]['threads']} threads", flush=True)
    load.stop.set()
    for t in threads:
        t.join(args.deadline_s * 2 + 10)
    seconds = time.monotonic() - began
    end = snapshot(roots())
    timeline.append(_sample(seconds, end))
    engine_after = _engine(inference)
    engine: dict[str, Any] = {}
    if engine_before is not None and engine_after is not None:
        engine = {"tokens_generated": engine_after.tokens_generated - engine_before.tokens_generated,
                  "requests_completed": engine_after.requests_completed - engine_before.requests_completed,
                  "forward_passes": engine_after.forward_passes - engine_before.forward_passes,
                  "loaded_models": engine_after.loaded_models,
                  "cache_mb_start": round(engine_before.cache_bytes / MB, 1),
                  "cache_mb_end": round(engine_after.cache_bytes / MB, 1)}
    ts, te = _totals(start), _totals(end)
    return {
        "seconds": round(seconds, 1),
        "calls": call_figures(load.tally, seconds),
        "errors": sum(sum(c.values()) for c in load.tally.errors.values()),
        "first_errors": {k: m for k, m in load.tally.messages.items() if m},
        "processes": process_figures(start, end),
        "total": {"start": ts, "end": te, "delta": {"rss_mb": round(te["rss_mb"] - ts["rss_mb"], 1),
                                                    "fds": te["fds"] - ts["fds"], "threads": te["threads"] - ts["threads"]}},
        "timeline": timeline,
        "engine": engine,
        "datasets_left": _datasets(ingest) - datasets_before,
        "stuck_threads": sum(t.is_alive() for t in threads),
        "last_pids": [u.pid for u in end.values()],
    }


def run_own(args: argparse.Namespace) -> dict[str, Any]:
    """The soak against a `doppel up` of its own, stopped at the end; with what stopping it left running."""
    from doppel.store import open_store

    with tempfile.TemporaryDirectory(prefix="doppel-soak-", ignore_cleanup_errors=True) as tmp:
        t0 = time.monotonic()
        stack = start_stack(Path(tmp) / "home")
        try:
            print(f"starting doppel up (pid {stack.proc.pid}, DOPPEL_HOME {tmp}/home); publishing the models meanwhile",
                  flush=True)
            with open_store((Path(tmp) / "home" / "store").resolve().as_uri()) as store:
                models = publish_models(store, uuid.uuid4().hex[:8])
            env = stack.env
            with IngestClient(env["DOPPEL_INGEST_ADDR"], timeout=60) as ingest, \
                    InferenceClient(env["DOPPEL_INFERENCE_ADDR"], timeout=60) as inference:
                # the services are up before the UI: warm inference up while it starts, ingest once the
                # demo import is done (the supervisor imports it only into a store with no dataset)
                if stack.wait_for(("inference healthy after", "Press Ctrl-C"), args.up_timeout_s) is None:
                    raise SystemExit(f"the services not up within {args.up_timeout_s:g} s:\n{stack.output()[-3000:]}")
                load = new_load(args, ingest, inference, models)
                warmup_s = timed_warm_up(load, ingest=False)
                if stack.wait_for(("Press Ctrl-C",), args.up_timeout_s) is None:
                    raise SystemExit(f"doppel up not up within {args.up_timeout_s:g} s:\n{stack.output()[-3000:]}")
                up_s = time.monotonic() - t0
                print(f"doppel up is up after {up_s:.1f} s; waiting for its demo import", flush=True)
                stack.wait_for(("imported the demo chats", "could not import the demo", "the demo chats are there"), 60)
                warmup_s += timed_warm_up(load, inference=False)
                setup_s = time.monotonic() - t0
                before = stack.output()
                figures = soak(args, load, lambda: [stack.proc.pid])
                during = stack.output()[len(before):]
        finally:
            t1 = time.monotonic()
            stack.stop()
            stop_s = time.monotonic() - t1
        time.sleep(1)  # what SIGTERM stops goes within its grace; anything left after that is stuck
        left = [p for p in figures.pop("last_pids") if alive(p)]
        for pid in left:  # ours: started by our doppel up
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    names = {u["pid"]: p["name"] for p in figures["processes"] for u in (p["end"],) if u}
    return {**figures, "mode": "own", "up_s": round(up_s, 1), "setup_s": round(setup_s, 1), "warmup_s": round(warmup_s, 1),
            "stop_s": round(stop_s, 1), "restarts": during.count("; restarting it in "),
            "left_running": [names.get(p, str(p)) for p in left]}


def run_attached(args: argparse.Namespace) -> dict[str, Any]:
    """The soak against the stack DOPPEL_* names; the models it published deleted again."""
    from doppel.config import Settings
    from doppel.store import open_store

    settings = Settings()
    ports = {int(a.rsplit(":", 1)[1]) for a in (settings.ingest_addr, settings.trainer_addr, settings.inference_addr)}
    roots = (lambda: args.pid) if args.pid else (lambda: stack_roots(ports))
    if not roots():
        print("note: no process of the stack found on this machine (by its ports); pass --pid", flush=True)
    t0 = time.monotonic()
    with open_store(settings.store_url) as store, IngestClient.from_settings(settings) as ingest, \
            InferenceClient.from_settings(settings) as inference:
        models = publish_models(store, uuid.uuid4().hex[:8])
        try:
            load = new_load(args, ingest, inference, models)
            warmup_s = timed_warm_up(load)
            setup_s = time.monotonic() - t0
            figures = soak(args, load, roots)
        finally:
            for model_id in [m for m, _, _ in models.chat]:
                with contextlib.suppress(grpc.RpcError):
                    inference.unload_model(inf.UnloadModelRequest(model_id=model_id), timeout=30)
            for prefix in models.prefixes:
                store.delete_prefix(prefix)
    figures.pop("last_pids")
    return {**figures, "mode": "attach", "up_s": None, "setup_s": round(setup_s, 1), "warmup_s": round(warmup_s, 1),
            "stop_s": None, "restarts": None, "left_running": None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="how long the load runs (default 5)")
    ap.add_argument("--seconds", type=float, help="the same in seconds; overrides --minutes")
    ap.add_argument("--attach", action="store_true", help="load the stack DOPPEL_*_ADDR names instead of starting one")
    ap.add_argument("--pid", type=int, action="append", help="with --attach: a root of the stack's processes "
                                                             "(repeatable; default: found from its ports)")
    ap.add_argument("--clients", type=int, default=1, help="threads of each kind of load (default 1: 4 threads)")
    ap.add_argument("--max-new-tokens", type=int, default=16, help="tokens per reply or turn at most (default 16)")
    ap.add_argument("--turns", type=int, default=4, help="turns of each simulated conversation (default 4)")
    ap.add_argument("--deadline-s", type=float, default=120.0, help="deadline of every call (default 120)")
    ap.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples of the totals (default 10)")
    ap.add_argument("--up-timeout-s", type=float, default=240.0, help="how long doppel up may take to start (default 240)")
    args = ap.parse_args()
    args.duration_s = args.seconds if args.seconds is not None else args.minutes * 60
    if args.duration_s <= 0 or min(args.clients, args.max_new_tokens, args.turns) < 1 or args.sample_s <= 0:
        ap.error("the duration, --sample-s, --clients, --max-new-tokens and --turns must be positive")
    if args.pid and not args.attach:
        ap.error("--pid goes with --attach")

    run = run_attached if args.attach else run_own
    figures = run(args)
    figures.update({"clients": args.clients, "max_new_tokens": args.max_new_tokens, "turns": args.turns,
                    "deadline_s": args.deadline_s, "cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2)})
    print_tables(figures)
    print(orjson.dumps(figures).decode())


if __name__ == "__main__":
    main()
