"""Ingest throughput and memory on synthetic exports: Messenger JSON and WhatsApp text.

    python bench/ingest.py                     # 1,000,000 messages over 1,000 threads each
    python bench/ingest.py --messages 100000   # scaled down

For each format it builds an export in a temporary folder, then measures, each in a fresh
process on one core: parsing alone (messages/s of CPU time), and the whole ingest of the
zipped export into a local store (hash, store the raw file, parse, redact, dedupe, write
shards and manifest; messages/s of wall time), with that process's peak RSS. Targets from
the ingest issue: parse >= 600k msgs/s for Messenger, end to end >= 100k msgs/s, peak RSS
< 500 MB. The last line is one JSON object; its unprefixed keys are the Messenger run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FILE_MESSAGES = 10_000  # Messenger splits long threads into message_N.json files of this size
NAMES = ["Ann Example", "Bob Sample", "Cy Placeholder", "Dora Mock", "Émile Testé"]
WORDS = [
    "hey", "so", "what", "are", "we", "doing", "tonight", "maybe", "pizza", "or", "the", "new", "place", "near",
    "the", "station", "ok", "sounds", "good", "lol"
]


def _mojibake(s: str) -> str:
    """How Meta's exporter writes UTF-8: one code point per byte."""
    return s.encode("utf-8").decode("latin-1")


def _text(rng: random.Random) -> str:
    words = rng.choices(WORDS, k=rng.randint(2, 14))
    if rng.random() < 0.1:
        words.append("café 😀")
    if rng.random() < 0.02:
        words.append("mail me at someone@example.com")
    return " ".join(words)


def build_messenger(root: Path, messages: int, threads: int) -> None:
    rng = random.Random(1)
    per_thread = messages // threads
    start = int(datetime(2022, 1, 1).timestamp() * 1000)
    for t in range(threads):
        folder = root / "your_facebook_activity" / "messages" / "inbox" / f"friend{t}_{1000 + t}"
        folder.mkdir(parents=True)
        people = rng.sample(NAMES, 2)
        msgs = []
        ts = start + t * 1000
        for _ in range(per_thread):
            ts += rng.randint(1_000, 600_000)
            m = {"sender_name": _mojibake(rng.choice(people)), "timestamp_ms": ts, "is_geoblocked_for_viewer": False}
            r = rng.random()
            if r < 0.03:
                m["photos"] = [{"uri": "photo.jpg", "creation_timestamp": ts // 1000}]
            elif r < 0.04:
                m["content"] = _mojibake(f"{people[0]} named the group Fun.")
            else:
                m["content"] = _mojibake(_text(rng))
            msgs.append(m)
        msgs.reverse()  # newest first, as Meta writes them; message_1 is the newest slice
        header = {"participants": [{"name": _mojibake(p)} for p in people], "title": _mojibake(people[1])}
        for i in range(0, len(msgs), FILE_MESSAGES):
            body = {**header, "messages": msgs[i : i + FILE_MESSAGES], "thread_path": f"inbox/friend{t}_{1000 + t}"}
            (folder / f"message_{i // FILE_MESSAGES + 1}.json").write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))


def build_whatsapp(root: Path, messages: int, threads: int) -> None:
    rng = random.Random(2)
    per_thread = messages // threads
    root.mkdir(parents=True)
    for t in range(threads):
        people = rng.sample(NAMES, 2)
        when = datetime(2022, 1, 1) + timedelta(hours=t)
        lines = [f"{when:%d/%m/%Y}, {when:%H:%M} - Messages and calls are end-to-end encrypted. Tap to learn more."]
        for _ in range(per_thread):
            when += timedelta(seconds=rng.randint(1, 900))
            body = "<Media omitted>" if rng.random() < 0.03 else _text(rng)
            if rng.random() < 0.05:
                body += "\nand another line"
            lines.append(f"{when:%d/%m/%Y}, {when:%H:%M} - {rng.choice(people)}: {body}")
        (root / f"WhatsApp Chat with Friend {t}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _one_core() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _parse(path: str, out: mp.Queue) -> None:
    _one_core()
    from services.ingest.parsers import detect
    from services.ingest.source import open_source

    with open_source(path) as source:
        parser = detect(source)
        start = time.process_time()
        count = sum(len(c.messages) for c in parser.parse(source))
        cpu = time.process_time() - start
    out.put({"format": parser.format, "messages": count, "seconds": cpu, "rss_mb": _peak_rss_mb()})


def _ingest(path: str, store_dir: str, out: mp.Queue) -> None:
    _one_core()
    from doppel.store import open_store
    from services.ingest.pipeline import ingest_file

    store = open_store(f"file://{store_dir}")
    start = time.perf_counter()
    manifest = ingest_file(store, Path(path), filename=Path(path).name)
    wall = time.perf_counter() - start
    out.put({"messages": manifest.stats.messages, "seconds": wall, "rss_mb": _peak_rss_mb()})


def _in_child(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    result = q.get()
    p.join()
    if p.exitcode:
        raise SystemExit(f"{target.__name__} failed with exit code {p.exitcode}")
    return result


def run(name: str, build, messages: int, threads: int, tmp: Path) -> dict:
    folder = tmp / name
    t0 = time.perf_counter()
    build(folder, messages, threads)
    archive = shutil.make_archive(str(tmp / name), "zip", root_dir=folder)
    print(f"{name}: built {messages:,} messages in {time.perf_counter() - t0:.1f} s "
          f"({Path(archive).stat().st_size / 1e6:.0f} MB zipped)", flush=True)
    parsed = _in_child(_parse, str(folder))
    ingested = _in_child(_ingest, archive, str(tmp / f"{name}-store"))
    return {
        "format": parsed["format"],
        "parsed_messages": parsed["messages"],
        "parse_msgs_per_s": round(parsed["messages"] / parsed["seconds"]),
        "parse_rss_mb": round(parsed["rss_mb"], 1),
        "stored_messages": ingested["messages"],
        "ingest_msgs_per_s": round(ingested["messages"] / ingested["seconds"]),
        "ingest_seconds": round(ingested["seconds"], 2),
        "peak_rss_mb": round(max(parsed["rss_mb"], ingested["rss_mb"]), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1_000_000, help="messages per export (default 1,000,000)")
    ap.add_argument("--threads", type=int, default=1_000, help="threads/chats per export (default 1,000)")
    args = ap.parse_args()
    threads = max(1, min(args.threads, args.messages))
    with tempfile.TemporaryDirectory(prefix="doppel-bench-") as tmp:
        results = {
            "messenger": run("messenger", build_messenger, args.messages, threads, Path(tmp)),
            "whatsapp": run("whatsapp", build_whatsapp, args.messages, threads, Path(tmp)),
        }
    print(f"\n{'':<10}{'parse msg/s':>14}{'ingest msg/s':>14}{'peak RSS MB':>13}{'stored':>11}")
    for name, r in results.items():
        print(f"{name:<10}{r['parse_msgs_per_s']:>14,}{r['ingest_msgs_per_s']:>14,}{r['peak_rss_mb']:>13}{r['stored_messages']:>11,}")
    m = results["messenger"]
    print("targets: parse >= 600,000 msg/s (messenger), ingest >= 100,000 msg/s, peak RSS < 500 MB")
    print(f"ratios: messenger parse/target {m['parse_msgs_per_s'] / 600_000:.2f}, "
          f"ingest/target {m['ingest_msgs_per_s'] / 100_000:.2f}")
    summary = {k: m[k] for k in ("parse_msgs_per_s", "ingest_msgs_per_s", "peak_rss_mb")}
    summary["messages"] = args.messages
    summary.update({f"whatsapp_{k}": v for k, v in results["whatsapp"].items() if k != "format"})
    print(orjson.dumps(summary).decode())


if __name__ == "__main__":
    main()
