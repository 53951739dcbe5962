"""Persona fidelity: a short persona run on each chat's people, measured against its base model alone.

    python bench/fidelity.py --threads 1                       # smollm2-135m, quick-cpu, every person, both chats
    python bench/fidelity.py --base-model tiny --threads 1     # the tiny model: a quick check of the machinery
    python bench/fidelity.py --chat hard --persona Otis        # one person of one chat
    python bench/fidelity.py --model model-... --chat demo     # a published model (trained on that chat)

Two chats:

* `demo`: the bundled demo export (`doppel/demo`), read through the real ingest pipeline. Its
  three voices come from small phrase banks, so a tuned model can replay lines it has seen, and
  every figure is flattered (the bench shows how many of the person's *real* held-out replies are
  themselves copies of their training lines: the share a perfect copier would score).
* `hard`: `bench/hardchat.py`, four people with large vocabularies, multi-line messages and emoji,
  whose replies follow the topic of the message they answer.

For each person, with the trainer's own code and no Prefect (the split of `split_sessions`, the
base of `load_base_model`, `Transcript`, `tokenise`, `finetune`): the base model alone answers
the person's held-out turns in their real context (`services.trainer.fidelity.evaluate`), the
base is trained with the recipe `resolve` gives (`--preset`, default quick-cpu), and the tuned
model answers the same turns with the same seed. Each evaluation is timed on its own, as is
training; held-out loss is measured for both too. The tuned model should beat its base on
style distance (lower) and who-said-it (a larger share of its replies attributed to the
person); the comparison table says where it does not.

The last line is one JSON object with every figure: `chats.<chat>.personas.<person>.tuned` and
`.base` (the FidelityFigures, style figures as name -> value), the person's own style figures,
timings (`train_s`, `tuned_eval_s`, `base_eval_s`, replies) and the chat's properties.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import hardchat

CHATS = ("demo", "hard")


def _quiet() -> None:
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
    warnings.filterwarnings("ignore", category=FutureWarning)


def say(*parts: Any) -> None:
    print(*parts, flush=True)


def peak_rss_mb() -> float:
    """Peak RSS of this process so far (CPU memory; the interpreter and libraries included)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# -- the chats ---------------------------------------------------------------------------------

def demo_conversations(tmp: Path) -> list[Any]:
    """The demo export as the ingest service stores it (parsed, filtered, redacted), read back."""
    from doppel import dataset, demo
    from doppel.store import open_store
    from services.ingest.pipeline import Target, ingest_file

    path = tmp / demo.FILENAME
    path.write_bytes(demo.export_zip())
    store = open_store((tmp / "demo-store").as_uri())
    manifest = ingest_file(store, path, filename=demo.FILENAME, target=Target(name=demo.DATASET_NAME))
    return list(dataset.conversations(store, manifest))


def chat_conversations(chat: str, tmp: Path, *, messages: int, seed: int) -> list[Any]:
    return demo_conversations(tmp) if chat == "demo" else hardchat.conversations(messages, seed=seed)


def people_of(convs: list[Any]) -> list[str]:
    """Senders, most messages first."""
    from collections import Counter

    counts = Counter(m.sender for c in convs for m in c.messages)
    return [p for p, _ in counts.most_common()]


def pick(wanted: list[str] | None, people: list[str]) -> list[str]:
    """The people `--persona` names (full name or first name, any case), or everyone."""
    if not wanted:
        return people
    out = []
    for w in wanted:
        key = w.casefold()
        out += [p for p in people if key in (p.casefold(), p.split()[0].casefold()) and p not in out]
    return out


# -- figures -----------------------------------------------------------------------------------

def _num(x: Any) -> Any:
    return None if isinstance(x, float) and math.isnan(x) else x


def flat(f: Any) -> dict[str, Any]:
    """A FidelityFigures as JSON: every figure, style figures as name -> the model's value."""
    d = f.model_dump(mode="python", exclude={"pairs", "distinctive", "style", "speaker", "dataset_id"})
    d = {k: _num(v) for k, v in d.items()}
    d["style"] = {s.name: round(s.model, 4) for s in f.style}
    return d


def verdict(tuned: Any, base: Any) -> dict[str, bool | None]:
    def better(a: float, b: float, lower: bool) -> bool | None:
        if math.isnan(a) or math.isnan(b):
            return None
        return a < b if lower else a > b

    return {"beats_base_style": better(tuned.style_distance, base.style_distance, True),
            "beats_base_who_said_it": better(tuned.who_said_it_model, base.who_said_it_model, False)}


def style_side_by_side(tuned: Any, base: Any) -> str:
    """The person's style figures beside the tuned model's and the base's, and which is nearer."""
    theirs = {s.name: s for s in base.style}
    lines = ["| style | person | tuned | base | nearer |", "|---|---|---|---|---|"]
    for s in tuned.style:
        b = theirs.get(s.name)
        if b is None:
            continue
        near = "tuned" if s.difference < b.difference else "base" if b.difference < s.difference else "="
        lines.append(f"| {s.name} | {s.person:.2f} | {s.model:.2f} | {b.model:.2f} | {near} |")
    return "\n".join(lines)


# -- one persona -------------------------------------------------------------------------------

def _evaluate(model: Any, tokenizer: Any, transcript: Any, split: Any, persona: str, args: argparse.Namespace,
              dataset_id: str) -> tuple[Any, float, float, list[tuple[Any, str]]]:
    """(FidelityFigures, seconds in all, seconds writing the replies, (target, reply) of every reply)."""
    import inspect

    from services.trainer import fidelity
    from services.trainer.fidelity import replies

    sampled_at: list[float] = []
    answered: list[tuple[Any, str]] = []
    sample = replies.sample

    def keeping(model: Any, tokenizer: Any, transcript: Any, found: Any, **kwargs: Any) -> list[str]:
        """`replies.sample`, keeping what it wrote for the bench's own figures (`topics`)."""
        out = sample(model, tokenizer, transcript, found, **kwargs)
        answered.extend(zip(found, out, strict=True))
        return out

    def progress(done: int, total: int) -> None:
        if done == total:
            sampled_at.append(time.perf_counter())

    extra = {"progress": progress} if "progress" in inspect.signature(fidelity.evaluate).parameters else {}
    t0 = time.perf_counter()
    replies.sample = keeping  # evaluate calls it through the module
    try:
        found = fidelity.evaluate(model, tokenizer, transcript, split, [persona], limit=args.limit, seed=args.seed,
                                  max_new_tokens=args.max_new_tokens, **extra)
    finally:
        replies.sample = sample
    seconds = time.perf_counter() - t0
    if not found:
        raise SystemExit(f"{persona} has no held-out turns to answer in this chat")
    sample_s = (sampled_at[-1] - t0) if sampled_at else math.nan
    return fidelity.figures(found[0], dataset_id), seconds, sample_s, answered


def topics(answered: list[tuple[Any, str]], persona: str) -> dict[str, Any]:
    """Hard chat only: do replies keep the topic of the message they answer (the last turn by someone
    else in their context)? Of the replies where both have a topic (`hardchat.topic_of`), the share
    on the answered message's topic, for the real replies and the model's; and the share of the
    model's replies that use any topic's words at all."""
    def answered_topic(target: Any) -> str | None:
        said = next((t for t in reversed(target.context) if t.speaker != persona), None)
        return hardchat.topic_of(said.text) if said else None

    def share(pairs: list[tuple[str | None, str | None]]) -> tuple[float | None, int]:
        both = [(a, b) for a, b in pairs if a and b]
        return (round(sum(a == b for a, b in both) / len(both), 4) if both else None), len(both)

    context = [answered_topic(t) for t, _ in answered]
    real, n_real = share([(c, hardchat.topic_of(t.real)) for c, (t, _) in zip(context, answered, strict=True)])
    model, n_model = share([(c, hardchat.topic_of(r)) for c, (_, r) in zip(context, answered, strict=True)])
    with_topic = sum(hardchat.topic_of(r) is not None for _, r in answered) / len(answered) if answered else 0.0
    return {"real_same_topic": real, "real_pairs": n_real, "model_same_topic": model, "model_pairs": n_model,
            "model_with_topic": round(with_topic, 4)}


def real_baseline(split: Any, persona: str, limit: int, transcript: Any) -> dict[str, float]:
    """The copying and repetition figures of the person's own real held-out replies (the ones
    answered), measured like the model's: how many are exact copies of their training messages,
    share a >= 20-token or >= 8-word span with one, and their distinct-1/2. A model that writes
    like the person scores about these; one that only replayed training lines could score the
    exact-copy share at best."""
    from services.trainer.fidelity import conduct, replies
    from services.trainer.fidelity.copying import TrainingIndex

    real = [t.real for t in replies.targets(split.held_out, persona, limit=limit)]
    train = [t.text for s in split.train for t in s.turns if t.speaker == persona]
    c = TrainingIndex(train, transcript.encode).measure(real)
    return {"exact_copies": round(c.exact, 4), "token_span_copies": round(c.token_span, 4),
            "word_span_copies": round(c.word_span, 4), "distinct_1": round(conduct.distinct(real, 1), 4),
            "distinct_2": round(conduct.distinct(real, 2), 4)}


def train_and_measure(chat: str, convs: list[Any], persona: str, args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    import torch

    from doppel.fidelity import markdown
    from doppel.store import open_store
    from doppel.transcript import Transcript
    from services.trainer import finetune
    from services.trainer.basemodels import load_base_model
    from services.trainer.recipe import Hyperparameters, TrainRequest, resolve
    from services.trainer.samples import split_sessions, tokenise

    hyper = {"max_steps": args.steps, "seed": args.seed, "save_every": 10**9}
    recipe = resolve(TrainRequest(
        dataset_id=f"bench-{chat}", speakers=[persona], base_model=args.base_model, preset=args.preset,
        hyperparameters=Hyperparameters(**{k: v for k, v in hyper.items() if v is not None}),
    ))
    t0 = time.perf_counter()
    split = split_sessions(convs, recipe.speakers, session_gap=timedelta(seconds=recipe.session_gap_s),
                           held_out_fraction=recipe.held_out_fraction)
    store = open_store(cache.joinpath("store").as_uri())
    base = load_base_model(recipe.base_model, store, cache_dir=cache / "models",
                           texts=(t.text for s in split.train for t in s.turns), seed=recipe.seed,
                           block_size=recipe.block_size)
    tokenizer = base.tokenizer
    transcript = Transcript(tokenizer, recipe.speakers)
    train, held_out = tokenise(split.train, transcript, recipe.block_size), tokenise(split.held_out, transcript, recipe.block_size)
    device = finetune.device_for()
    model = base.model.to(device)
    prepare_s = time.perf_counter() - t0
    pad_id = tokenizer.pad_token_id
    train_turns, held_turns = split.turns([persona])
    say(f"\n### {chat}: {persona} — {base.name} ({base.source}), {transcript.kind} transcript; "
        f"{train_turns} training turns, {held_turns} held out; {len(train)} windows")

    base_loss, held_tokens = finetune.held_out_loss(model, held_out, pad_id=pad_id)
    base_figures, base_eval_s, base_sample_s, base_answered = _evaluate(model.eval(), tokenizer, transcript, split,
                                                                        persona, args, recipe.dataset_id)
    rss = {"after_base_eval": peak_rss_mb()}
    say(f"base alone: {base_figures.replies} replies in {base_eval_s:.1f} s; held-out loss {base_loss:.3f}; "
        f"peak RSS {rss['after_base_eval']:,.0f} MB")

    model = finetune.prepare_model(model, recipe)
    total = finetune.total_steps(len(train), recipe)
    every = max(1, total // 6)

    def on_step(p: Any) -> None:
        if p.step % every == 0 or p.step == p.total:
            say(f"  step {p.step}/{p.total}: loss {p.loss:.3f}, {p.tokens_per_s:,.0f} tokens/s")

    t1 = time.perf_counter()
    result = finetune.train(model, train, recipe, pad_id=pad_id, callbacks=finetune.Callbacks(on_step=on_step))
    train_s = time.perf_counter() - t1
    rss["after_train"] = peak_rss_mb()
    loss, _ = finetune.held_out_loss(model, held_out, pad_id=pad_id)
    figures, eval_s, sample_s, answered = _evaluate(model.eval(), tokenizer, transcript, split, persona, args,
                                                    recipe.dataset_id)
    rss["after_tuned_eval"] = peak_rss_mb()
    say(f"tuned: {result.step} steps in {train_s:.1f} s; {figures.replies} replies in {eval_s:.1f} s; "
        f"held-out loss {loss:.3f}; peak RSS after training {rss['after_train']:,.0f} MB, "
        f"after its evaluation {rss['after_tuned_eval']:,.0f} MB\n")
    say(markdown(figures, base_figures))
    say(style_side_by_side(figures, base_figures) + "\n")
    real = real_baseline(split, persona, args.limit, transcript)
    out = _persona_figures(figures, base_figures)
    if chat == "hard":
        out["topics"] = _topic_figures(answered, base_answered, persona)
    out.update({
        "train_s": round(train_s, 2), "steps": result.step, "final_train_loss": round(result.losses[-1][1], 4),
        "tuned_eval_s": round(eval_s, 2), "base_eval_s": round(base_eval_s, 2),
        "tuned_sample_s": _num(round(sample_s, 2)), "base_sample_s": _num(round(base_sample_s, 2)),
        "prepare_s": round(prepare_s, 2), "held_out_loss": _num(round(loss, 4)), "base_held_out_loss": _num(round(base_loss, 4)),
        "held_out_tokens": held_tokens, "train_turns": train_turns, "held_out_turns": held_turns,
        "train_windows": len(train), "real_exact_copies": real["exact_copies"], "real": real, "transcript": transcript.kind,
        "base_source": base.source, "peak_rss_mb": rss, "recipe": {k: v for k, v in recipe.model_dump(mode="json").items()
                                              if k in ("max_steps", "epochs", "batch_size", "block_size", "learning_rate",
                                                       "lora_rank", "held_out_fraction", "seed")},
    })
    del model, base
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def _topic_figures(answered: list[tuple[Any, str]], base_answered: list[tuple[Any, str]], persona: str) -> dict[str, Any]:
    tuned, base = topics(answered, persona), topics(base_answered, persona)
    say(f"replies on the topic of the message they answer: real {_pct(tuned['real_same_topic'])} "
        f"({tuned['real_pairs']}), tuned {_pct(tuned['model_same_topic'])} ({tuned['model_pairs']}), "
        f"base {_pct(base['model_same_topic'])} ({base['model_pairs']}); replies using topic words at all: "
        f"tuned {_pct(tuned['model_with_topic'])}, base {_pct(base['model_with_topic'])}\n")
    return {"real_same_topic": tuned["real_same_topic"], "tuned_same_topic": tuned["model_same_topic"],
            "base_same_topic": base["model_same_topic"], "tuned_with_topic": tuned["model_with_topic"],
            "base_with_topic": base["model_with_topic"], "tuned_pairs": tuned["model_pairs"],
            "base_pairs": base["model_pairs"], "real_pairs": tuned["real_pairs"]}


def _persona_figures(figures: Any, base_figures: Any) -> dict[str, Any]:
    return {"replies": figures.replies, "person_style": {s.name: round(s.person, 4) for s in figures.style},
            "tuned": flat(figures), "base": flat(base_figures), **verdict(figures, base_figures)}


def measure_published(chat: str, convs: list[Any], args: argparse.Namespace, cache: Path) -> dict[str, dict[str, Any]]:
    """--model: a published model and its base alone on this chat's held-out turns (its recipe's split)."""
    from doppel.config import Settings
    from doppel.fidelity import markdown
    from doppel.model import MODELS
    from doppel.store import open_store
    from doppel.transcript import Transcript
    from services.trainer.basemodels import load_base_model
    from services.trainer.evaluation import load_model
    from services.trainer.samples import split_sessions

    settings = Settings()
    store = open_store(args.store or settings.store_url)
    manifest = MODELS.get(store, args.model)
    recipe = manifest.recipe
    people = people_of(convs)
    missing = [s for s in manifest.speakers if s not in people]
    if missing:
        raise SystemExit(f"the {chat} chat has no messages of {', '.join(missing)}, whom {manifest.id} speaks as")
    split = split_sessions(convs, manifest.speakers, session_gap=timedelta(seconds=recipe.session_gap_s),
                           held_out_fraction=recipe.held_out_fraction)
    model, tokenizer = load_model(store, manifest, settings.home / "cache")
    try:  # rendered as the model was trained
        transcript = Transcript(tokenizer, manifest.speakers, kind=manifest.transcript)  # type: ignore[call-arg]
    except TypeError:  # a Transcript that knows one kind per tokenizer
        transcript = Transcript(tokenizer, manifest.speakers)
    out = {}
    for persona in pick(args.persona, manifest.speakers):
        figures, eval_s, sample_s, answered = _evaluate(model, tokenizer, transcript, split, persona, args, chat)
        if manifest.method == "lora":
            with model.disable_adapter():
                base_figures, base_eval_s, base_sample_s, base_answered = _evaluate(
                    model, tokenizer, transcript, split, persona, args, chat)
        else:
            alone = load_base_model(manifest.base_model, store, cache_dir=cache / "models").model
            alone = alone.to(next(model.parameters()).device).eval()
            base_figures, base_eval_s, base_sample_s, base_answered = _evaluate(
                alone, tokenizer, transcript, split, persona, args, chat)
            del alone
        say(f"\n### {chat}: {persona} — model {manifest.id} ({manifest.base_model}, {manifest.method})")
        say(markdown(figures, base_figures))
        say(style_side_by_side(figures, base_figures) + "\n")
        result = _persona_figures(figures, base_figures)
        if chat == "hard":
            result["topics"] = _topic_figures(answered, base_answered, persona)
        result.update({"model_id": manifest.id, "train_s": None, "tuned_eval_s": round(eval_s, 2),
                       "base_eval_s": round(base_eval_s, 2), "tuned_sample_s": _num(round(sample_s, 2)),
                       "base_sample_s": _num(round(base_sample_s, 2)),
                       "real": (real := real_baseline(split, persona, args.limit, transcript)),
                       "real_exact_copies": real["exact_copies"]})
        out[persona] = result
    return out


# -- the report --------------------------------------------------------------------------------

def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _f3(x: Any) -> str:
    return "–" if x is None else f"{x:.3f}"


def comparison(chats: dict[str, Any]) -> str:
    lines = [
        "| chat | person | replies | style distance tuned / base | who said it tuned / base (real) "
        "| real-or-generated tuned / base | exact copies tuned / base (real) | 8-word span copies tuned / base (real) "
        "| distinct-2 tuned / base (real) | held-out loss tuned / base | train s | eval s tuned / base "
        "| beats base: style, who |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for chat, c in chats.items():
        for person, p in c["personas"].items():
            t, b = p["tuned"], p["base"]
            yes = {True: "yes", False: "**no**", None: "–"}
            lines.append(
                f"| {chat} | {person} | {p['replies']} | {_f3(t['style_distance'])} / {_f3(b['style_distance'])} "
                f"| {_pct(t['who_said_it_model'])} / {_pct(b['who_said_it_model'])} ({_pct(t['who_said_it_real'])}) "
                f"| {_pct(t['real_or_generated'])} / {_pct(b['real_or_generated'])} "
                f"| {_pct(t['exact_copies'])} / {_pct(b['exact_copies'])} ({_pct(p['real_exact_copies'])}) "
                f"| {_pct(t['word_span_copies'])} / {_pct(b['word_span_copies'])} ({_pct(p['real']['word_span_copies'])}) "
                f"| {t['distinct_2']:.2f} / {b['distinct_2']:.2f} ({p['real']['distinct_2']:.2f}) "
                f"| {_f3(p.get('held_out_loss'))} / {_f3(p.get('base_held_out_loss'))} "
                f"| {p['train_s'] if p.get('train_s') is not None else '–'} "
                f"| {p['tuned_eval_s']} / {p['base_eval_s']} "
                f"| {yes[p['beats_base_style']]}, {yes[p['beats_base_who_said_it']]} |"
            )
    on_topic = [(chat, person, p["topics"]) for chat, c in chats.items() for person, p in c["personas"].items()
                if p.get("topics")]
    if on_topic:
        lines += ["", "| chat | person | replies on the answered message's topic: real / tuned / base "
                      "| replies using topic words: tuned / base |", "|---|---|---|---|"]
        lines += [f"| {chat} | {person} | {_pct(t['real_same_topic'])} / {_pct(t['tuned_same_topic'])} / "
                  f"{_pct(t['base_same_topic'])} | {_pct(t['tuned_with_topic'])} / {_pct(t['base_with_topic'])} |"
                  for chat, person, t in on_topic]
    return "\n".join(lines)


def main() -> None:
    from services.trainer.fidelity.evaluate import LIMIT, MAX_NEW_TOKENS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chat", choices=[*CHATS, "both"], default="both")
    ap.add_argument("--persona", action="append",
                    help="a person to train (full or first name; repeat for more); default: every person of the chat")
    ap.add_argument("--base-model", default="smollm2-135m", help="registry name (smollm2-135m, tiny), local path or hub id")
    ap.add_argument("--preset", default="quick-cpu", help="the recipe preset (default quick-cpu)")
    ap.add_argument("--steps", type=int, help="optimizer steps (default: the preset's)")
    ap.add_argument("--model", help="evaluate this published model (from --store) instead of training one")
    ap.add_argument("--store", help="with --model: the store URL (default: DOPPEL_STORE_URL / ~/.doppel's)")
    ap.add_argument("--limit", type=int, default=LIMIT, help=f"held-out replies per person (default {LIMIT})")
    ap.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS,
                    help=f"longest reply sampled (default {MAX_NEW_TOKENS}, the evaluation's)")
    ap.add_argument("--messages", type=int, default=8000, help="messages in the hard chat (default 8,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's; 1 on a shared machine)")
    ap.add_argument("--cache-dir", default=os.environ.get("DOPPEL_BENCH_CACHE", "~/.cache/doppel-bench"),
                    help="store and model cache (smollm2-135m is converted into it once)")
    args = ap.parse_args()
    if args.limit < 2:
        ap.error("--limit must be at least 2")
    if args.model and args.chat == "both":
        ap.error("--model evaluates on one chat: name it with --chat demo or --chat hard")

    import torch

    _quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = Path(args.cache_dir).expanduser().resolve()
    chats: dict[str, Any] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="doppel-bench-fidelity-") as tmp:
        for chat in (CHATS if args.chat == "both" else (args.chat,)):
            convs = chat_conversations(chat, Path(tmp), messages=args.messages, seed=args.seed)
            props = hardchat.properties(convs)
            people = people_of(convs)
            say(f"## {chat} chat: {props['messages']:,} messages in {len(convs)} conversations by "
                + ", ".join(f"{p} ({props['people'][p]['messages']})" for p in people)
                + (f"; replies on the answered message's topic: {_pct(props['reply_same_topic'])} "
                   f"(chance {_pct(props['reply_same_topic_chance'])})" if chat == "hard" else ""))
            if args.model:
                personas = measure_published(chat, convs, args, cache)
            else:
                chosen = pick(args.persona, people)
                if args.persona and not chosen:
                    say(f"(no one in the {chat} chat is named {', '.join(args.persona)})")
                personas = {p: train_and_measure(chat, convs, p, args, cache) for p in chosen}
            chats[chat] = {"properties": props, "personas": personas}
    if not any(c["personas"] for c in chats.values()):
        raise SystemExit(f"no person named {', '.join(args.persona or [])} in the chats")
    device = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    say(f"## Tuned against base alone ({args.base_model if not args.model else args.model}, "
        f"{args.preset if not args.model else 'published'}, {device}, {torch.get_num_threads()} threads)\n")
    say(comparison(chats))
    all_p = [p for c in chats.values() for p in c["personas"].values()]
    replies = sum(p["replies"] for p in all_p)
    eval_s = sum(p["tuned_eval_s"] for p in all_p)
    figures = {
        "base_model": args.base_model if not args.model else None, "model": args.model, "preset": args.preset,
        "steps": args.steps, "limit": args.limit, "max_new_tokens": args.max_new_tokens, "seed": args.seed,
        "threads": torch.get_num_threads(), "device": device,
        "personas": len(all_p), "replies": replies,
        "tuned_eval_s": round(eval_s, 2), "base_eval_s": round(sum(p["base_eval_s"] for p in all_p), 2),
        "eval_s_per_200_replies": round(200 * eval_s / replies, 2) if replies else None,
        "train_s": round(sum(p["train_s"] or 0 for p in all_p), 2),
        "beats_base_style": all(p["beats_base_style"] for p in all_p),
        "beats_base_who_said_it": all(p["beats_base_who_said_it"] for p in all_p),
        "total_s": round(time.perf_counter() - started, 2),
        "chats": chats,
    }
    say(f"\nevaluation: {replies} tuned replies in {eval_s:.1f} s ({figures['eval_s_per_200_replies']} s per 200); "
        f"tuned beats base on style distance for every person: {figures['beats_base_style']}, "
        f"on who-said-it: {figures['beats_base_who_said_it']}")
    print(orjson.dumps(figures).decode())


if __name__ == "__main__":
    main()
