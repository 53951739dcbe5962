"""Protos into what the page shows: DataFrames for the plots, Markdown and choices for the widgets.

Pure functions with no Gradio and no network, so the tests check what a person would read
without a browser. Text from an export or a model is escaped before it goes into Markdown.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd
from google.protobuf.timestamp_pb2 import Timestamp

from doppel import enums, fidelity
from doppel.markdown import escape
from doppel.v1 import common_pb2, inference_pb2, ingest_pb2
from doppel.v1 import trainer_pb2 as tr

PRESETS = {
    "quick-cpu": "quick CPU trial: 60 short steps, minutes on a laptop",
    "default": "default: one pass over the data",
    "quality": "quality: three passes with long context (for a GPU)",
}
PARTICIPANT_BARS = 20  # more bars than this do not read; the summary says how many there are


def when(ts: Timestamp) -> str:
    """A timestamp as `YYYY-MM-DD HH:MM` (UTC), or an empty string when unset."""
    if not ts.seconds and not ts.nanos:
        return ""
    return f"{ts.ToDatetime():%Y-%m-%d %H:%M}"


def duration(seconds: float) -> str:
    """`1 h 02 min`, `3 min 05 s` or `42 s`."""
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s} s"


def size(n: int) -> str:
    """Bytes in the largest unit that keeps the number readable."""
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def format_name(value: int) -> str:
    return enums.name(ingest_pb2.ExportFormat, value)


def state_name(value: int) -> str:
    return enums.name(tr.RunState, value)


def method_name(value: int) -> str:
    return enums.name(tr.Method, value) if value else "lora"  # unset is the service's default, LoRA


# --- datasets ---------------------------------------------------------------------------------


def participants_frame(stats: common_pb2.DatasetStats) -> pd.DataFrame:
    """Messages per participant, most first, for a bar chart."""
    rows = [(p.name, p.messages) for p in stats.participants[:PARTICIPANT_BARS]]
    return pd.DataFrame(rows, columns=["participant", "messages"]).astype({"participant": str, "messages": int})


def timeline_frame(stats: common_pb2.DatasetStats) -> pd.DataFrame:
    """Messages per month, oldest first, for a bar chart over time."""
    rows = [(m.month, m.messages) for m in stats.timeline]
    return pd.DataFrame(rows, columns=["month", "messages"]).astype({"month": str, "messages": int})


def dataset_label(d: ingest_pb2.Dataset) -> str:
    return f"{d.name} · {d.stats.messages} messages · {d.id}"


def dataset_choices(datasets: Iterable[ingest_pb2.Dataset]) -> list[tuple[str, str]]:
    return [(dataset_label(d), d.id) for d in datasets]


def speaker_choices(stats: common_pb2.DatasetStats) -> list[tuple[str, str]]:
    """Participants as `Name (messages)` labels, most messages first."""
    return [(f"{p.name} ({p.messages})", p.name) for p in stats.participants]


def dataset_summary(d: ingest_pb2.Dataset) -> str:
    """The dataset's headline figures and the import's warnings, as Markdown."""
    s = d.stats
    formats = ", ".join(dict.fromkeys(format_name(src.format) for src in d.sources)) or "unknown"
    lines = [
        f"### {escape(d.name)}",
        f"`{d.id}` · {formats} · {s.conversations} conversations · {s.messages} messages · "
        f"{len(s.participants)} participants",
    ]
    if s.HasField("first"):
        lines.append(f"From {s.first.ToDatetime():%Y-%m-%d} to {s.last.ToDatetime():%Y-%m-%d}.")
    kept = [src for src in d.sources if src.kept]
    lines.append("The exports it was made from were deleted once parsed; only this dataset's (redacted) messages "
                 "are stored." if not kept else
                 f"{len(kept)} of the {len(d.sources)} exports it was made from "
                 f"{'is' if len(kept) == 1 else 'are'} kept in the store, unredacted: " + ", ".join(
                     escape(src.filename) for src in kept) + " (deleting the dataset deletes them).")
    if len(s.participants) > PARTICIPANT_BARS:
        lines.append(f"The chart shows the {PARTICIPANT_BARS} most active of {len(s.participants)} participants.")
    notes = "\n".join(f"- ⚠ {escape(w)}" for w in d.warnings)
    return "\n\n".join([*lines, notes] if notes else lines)


def preview(conversations: Sequence[common_pb2.Conversation]) -> str:
    """The first conversations as readable transcripts."""
    if not conversations:
        return "*No conversations to preview.*"
    parts = []
    for c in conversations:
        who = ", ".join(escape(p) for p in c.participants)
        parts.append(f"#### {escape(c.title or c.id)}\n*{who}*\n")
        parts += [f"**{escape(m.sender)}** ({when(m.timestamp)}): {escape(m.text)}  " for m in c.messages]
        parts.append("")
    return "\n".join(parts)


# --- training ---------------------------------------------------------------------------------


def base_model_choices(bases: Iterable[tr.BaseModel]) -> list[tuple[str, str]]:
    """Every base, those still on the Hub said so (a run pulls them first)."""
    return [(f"{b.name} ({b.parameters / 1e6:.1f}M parameters{', pulled from the Hub first' if b.hub_id and not b.stored else ''})",
             b.name) for b in bases]


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def base_details(b: tr.BaseModel, device: tr.TrainerDevice | None = None) -> str:
    """A base model: what it is, where it is, the memory a training step needs per method, and
    which of them fit the trainer's device."""
    where = "in the store" if b.stored else ("on the Hub: pulled when a run starts" if b.hub_id else "built in")
    lines = [f"**{escape(b.name)}** · {b.parameters / 1e6:,.1f}M parameters · "
             f"{'chat template' if b.chat_template else 'plain text turns'} · {where}"
             + (" · gated: needs HF_TOKEN" if b.gated else "") + (f" · license {escape(b.license)}" if b.license else "")]
    if b.training_memory:
        m = b.training_memory[0]
        lines.append(f"Memory of a training step ({m.batch_size} × {m.block_size} tokens, bf16; with gradient "
                     "checkpointing): " + ", ".join(f"{x.method} {_gib(x.bytes)} ({_gib(x.checkpointed_bytes)})"
                                                    for x in b.training_memory))
        if device and device.total_bytes:
            def fits(x: tr.TrainingMemory) -> str:
                return ("fits" if x.bytes <= device.free_bytes else "fits with checkpointing"
                        if x.checkpointed_bytes <= device.free_bytes else "does not fit")

            lines.append(f"On the trainer's {escape(device.name)} ({_gib(device.free_bytes)} free of "
                         f"{_gib(device.total_bytes)}): " + ", ".join(f"{x.method} {fits(x)}" for x in b.training_memory))
    return "  \n".join(lines)


def pull_progress(e: tr.PullBaseModelResponse) -> str:
    """A pull's progress bar and what it is doing."""
    done = e.done_bytes / e.total_bytes if e.total_bytes else 0.0
    figures = f" · {e.done_bytes / 2**20:,.1f} of {e.total_bytes / 2**20:,.1f} MiB" if e.total_bytes else ""
    return (f'<div class="doppel-pull"><progress max="1" value="{done:.4f}" style="width:100%"></progress>'
            f"<div>{html.escape(e.message)}{figures}</div></div>")


@dataclass
class RunView:
    """A run as its WatchRun events paint it: the loss curve, samples, progress. Fold events in with `add`."""

    run_id: str = ""
    dashboard_url: str = ""
    state: int = tr.RUN_STATE_PENDING
    step: int = 0
    total_steps: int = 0
    eta_s: float | None = None
    tokens_per_second: float = 0.0
    message: str = ""
    model_id: str = ""
    losses: list[tuple[int, float]] = field(default_factory=list)
    held_out: list[tuple[int, float]] = field(default_factory=list)
    samples: list[common_pb2.Sample] = field(default_factory=list)

    def add(self, e: tr.WatchRunResponse) -> bool:
        """Fold in one event; True when it changed more than the step figures (a redraw is worth it)."""
        notable = e.state != self.state or bool(e.samples) or e.HasField("held_out_loss") or e.message != self.message
        self.state, self.step, self.total_steps = e.state, e.step, e.total_steps or self.total_steps
        self.message, self.tokens_per_second = e.message, e.tokens_per_second
        self.eta_s = e.eta.ToTimedelta().total_seconds() if e.HasField("eta") else None
        if e.HasField("loss"):
            self.losses.append((e.step, e.loss))
        if e.HasField("held_out_loss"):
            self.held_out.append((e.step, e.held_out_loss))
        self.samples.extend(e.samples)
        return notable

    @property
    def ended(self) -> bool:
        return self.state in (tr.RUN_STATE_COMPLETED, tr.RUN_STATE_FAILED, tr.RUN_STATE_CANCELLED)

    def loss_frame(self) -> pd.DataFrame:
        """Training loss per step. One series only: Gradio 6.31's plots fix their colour domain at the first
        value they draw, so a held-out series that starts later would never show; its figures go in `progress`."""
        return pd.DataFrame(self.losses, columns=["step", "loss"]).astype({"step": int, "loss": float})

    def progress(self) -> str:
        """A progress bar with the step, state, ETA and throughput, as HTML."""
        done = self.step / self.total_steps if self.total_steps else 0.0
        if self.state == tr.RUN_STATE_COMPLETED:
            done = 1.0
        figures = [state_name(self.state)]
        if self.total_steps:
            figures.append(f"step {self.step} of {self.total_steps}")
        if self.eta_s is not None and not self.ended:
            figures.append(f"about {duration(self.eta_s)} left")
        if self.losses:
            figures.append(f"loss {self.losses[-1][1]:.3f}")
        if self.held_out:
            step, loss = self.held_out[-1]
            figures.append(f"held-out loss {loss:.3f} at step {step}")
        if self.tokens_per_second:
            figures.append(f"{self.tokens_per_second:,.0f} tokens/s")
        if self.message:
            figures.append(html.escape(self.message))
        return (
            f'<div class="doppel-run"><progress max="1" value="{done:.4f}" style="width:100%"></progress>'
            f'<div>{" · ".join(figures)}</div></div>'
        )

    def links(self) -> str:
        parts = [f"Run `{self.run_id}`"] if self.run_id else []
        if self.dashboard_url:
            parts.append(f"[open in the Prefect dashboard]({self.dashboard_url})")
        if self.model_id:
            parts.append(f"published model `{self.model_id}`: chat with it in the **Chat** tab")
        return " · ".join(parts)

    def samples_markdown(self) -> str:
        """Samples, newest first: what the model writes as it learns."""
        if not self.samples:
            return "*Samples appear here as the run generates them.*"
        out = []
        for s in reversed(self.samples):
            prompt = f"{escape(s.prompt)} → " if s.prompt else ""
            out.append(f"- **step {s.step}**: {prompt}*{escape(s.text)}*")
        return "\n".join(out)


# --- models -----------------------------------------------------------------------------------

MODEL_COLUMNS = ["name", "id", "speakers", "base", "method", "held-out loss", "perplexity", "base perplexity",
                 "fidelity", "size", "created"]


def _figure(value: float) -> float | None:
    return round(value, 3) if value and math.isfinite(value) else None


def models_frame(models: Iterable[tr.PersonaModel]) -> pd.DataFrame:
    """One row per model with its evaluation figures."""
    rows = [
        (m.name, m.id, ", ".join(m.speakers), m.base_model, method_name(m.method),
         _figure(m.evaluation.held_out_loss), _figure(m.evaluation.perplexity), _figure(m.evaluation.base_perplexity),
         "; ".join(fidelity.summary(fidelity.from_proto(f)) for f in m.fidelity), size(m.size_bytes), when(m.created_at))
        for m in models
    ]
    return pd.DataFrame(rows, columns=MODEL_COLUMNS)


def model_label(model_id: str, speakers: Sequence[str], base_model: str) -> str:
    return f"{', '.join(speakers) or '?'} · {base_model} · {model_id}"


def model_choices(models: Iterable[tr.PersonaModel]) -> list[tuple[str, str]]:
    return [(model_label(m.id, m.speakers, m.base_model), m.id) for m in models]


def served_choices(models: Iterable[inference_pb2.ServedModel]) -> list[tuple[str, str]]:
    return [(model_label(m.model_id, m.speakers, m.base_model), m.model_id) for m in models]


def model_details(m: tr.PersonaModel) -> str:
    """A model's evaluation, fidelity and end-of-training samples, as Markdown."""
    ev = m.evaluation
    lines = [
        f"### {escape(m.name)}",
        f"`{m.id}` · {method_name(m.method)} on {escape(m.base_model)} · learned {escape(', '.join(m.speakers))} · "
        f"dataset `{m.dataset_id}` · run `{m.run_id}`",
    ]
    if ev.held_out_tokens:
        lines.append(
            f"On {ev.held_out_tokens} held-out tokens: loss **{ev.held_out_loss:.3f}** (perplexity {ev.perplexity:.1f}) "
            f"against the base model's {ev.base_held_out_loss:.3f} (perplexity {ev.base_perplexity:.1f})."
        )
    else:
        lines.append("No held-out evaluation (the data was too small to hold any out).")
    if m.fidelity:
        lines.append("How much it sounds like its people, on held-out turns: style (person and model side by side), "
                     "who said it, real or generated, copies and leaks.")
        base = [fidelity.from_proto(f) for f in m.base_fidelity]
        lines += [fidelity.markdown(f, b, bars=True).replace("## Fidelity", "#### Fidelity", 1)
                  for f, b in fidelity.paired([fidelity.from_proto(f) for f in m.fidelity], base)]
    else:
        lines.append("Fidelity not measured: `doppel eval` measures it.")
    if m.samples:
        lines.append("**Samples at the end of training**")
        lines.append("\n".join(
            f"- {escape(s.prompt) + ' → ' if s.prompt else ''}*{escape(s.text)}*" for s in m.samples
        ))
    return "\n\n".join(lines)


# --- generated text ---------------------------------------------------------------------------


def transcript(turns: Iterable[tuple[str, str]]) -> str:
    """Turns of a conversation as `**Name**: text` lines."""
    return "\n\n".join(f"**{escape(speaker)}**: {escape(text)}" for speaker, text in turns)


def candidates_markdown(prompt: str, candidates: Sequence[inference_pb2.Candidate]) -> str:
    """Completions of a prompt, numbered, each with the prompt in plain and the continuation in italics."""
    if not candidates:
        return "*No samples.*"
    return "\n\n".join(
        f"**{k}.** {escape(prompt)}*{escape(c.text)}*  \n<small>{c.tokens} tokens, "
        f"{enums.label(inference_pb2.FinishReason, c.finish_reason)}</small>"
        for k, c in enumerate(candidates, 1)
    )
