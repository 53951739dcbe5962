"""A model's fidelity figures as people read them, one way everywhere.

The trainer measures them (services/trainer/fidelity) into `FidelityFigures`; the Prefect
artifact of a run, `doppel eval`, `doppel models` and the UI's Models tab all show them through
`markdown` and `summary`, and the gRPC API carries them as `doppel.v1.Fidelity` (`to_proto`,
`from_proto`), so every view of one model shows the same figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from doppel.markdown import cell
from doppel.model import FidelityFigures, ReplyPair, StyleFigure
from doppel.v1 import trainer_pb2


def pct(x: float) -> str:
    return "–" if math.isnan(x) else f"{100 * x:.0f}%"


def _num(x: float, digits: int = 2) -> str:
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


def summary(f: FidelityFigures) -> str:
    """One line: style distance, who said it (model's replies), real-or-generated accuracy, copies."""
    return (f"{f.speaker}: style {_num(f.style_distance)}, who said it {pct(f.who_said_it_model)}, "
            f"real/generated {pct(f.real_or_generated)}, copies {pct(f.exact_copies)}")


def _bar(value: float, row: StyleFigure, width: int = 12) -> str:
    """A bar for one side of a style figure, the larger side full width (figures differ in unit)."""
    top = max(abs(row.person), abs(row.model))
    n = round(width * abs(value) / top) if top > 1e-12 else 0
    return "█" * n + "░" * (width - n) + " "


def markdown(f: FidelityFigures, base: FidelityFigures | None = None, *, bars: bool = False) -> str:
    """The figures as markdown tables, beside the base model's alone when given; `bars` draws the
    person's and the model's style figures as bars too."""
    def row(label: str, show: str, base_show: str = "") -> str:
        return f"| {label} | {show} |" + (f" {base_show} |" if base else "")

    def both(label: str, key: str, fmt: Callable[[float], str] = pct) -> str:
        return row(label, fmt(getattr(f, key)), fmt(getattr(base, key)) if base else "")

    leaks = ", ".join(f"{k} {n}" for k, n in f.leak_kinds.items())
    lines = [
        f"## Fidelity of {f.speaker} ({f.replies} held-out replies{f' of {f.dataset_id}' if f.dataset_id else ''})",
        "",
        "| measure | model |" + (" base alone |" if base else ""),
        "|---|---|" + ("---|" if base else ""),
        both("style distance (0 = same)", "style_distance", lambda x: _num(x, 3)),
        row("who said it: real replies / model replies", f"{pct(f.who_said_it_real)} / {pct(f.who_said_it_model)}",
            f"{pct(base.who_said_it_real)} / {pct(base.who_said_it_model)}" if base else ""),
        both("real or generated, CV accuracy (50% = indistinguishable)", "real_or_generated"),
        both("exact copies of training messages", "exact_copies"),
        row("copy a span of >= 20 tokens / >= 8 words", f"{pct(f.token_span_copies)} / {pct(f.word_span_copies)}",
            f"{pct(base.token_span_copies)} / {pct(base.word_span_copies)}" if base else ""),
        both("replies speaking for another participant", "speaking_for_others", str),
        row("replies leaking personal data", f"{f.leaks}{f' ({leaks})' if leaks else ''}", str(base.leaks) if base else ""),
        row("distinct-1 / distinct-2", f"{f.distinct_1:.2f} / {f.distinct_2:.2f}",
            f"{base.distinct_1:.2f} / {base.distinct_2:.2f}" if base else ""),
        both("replies repeating a recent one", "repeated"),
    ]
    if f.style:
        lines += ["", "| style | person | model | difference |", "|---|---|---|---|",
                  *(f"| {r.name} | {_bar(r.person, r) if bars else ''}{r.person:.2f} | "
                    f"{_bar(r.model, r) if bars else ''}{r.model:.2f} | {pct(r.difference)} |" for r in f.style)]
    if f.distinctive:
        lines += ["", "Distinctive words and phrases: " + ", ".join(f"*{cell(t)}*" for t in f.distinctive)]
    if f.pairs:
        lines += ["", "| answering | real | generated |", "|---|---|---|",
                  *(f"| {cell(p.said)} | {cell(p.real)} | {cell(p.generated)} |" for p in f.pairs)]
    return "\n".join(lines) + "\n"


def to_proto(f: FidelityFigures) -> trainer_pb2.Fidelity:
    return trainer_pb2.Fidelity(
        speaker=f.speaker, dataset_id=f.dataset_id, replies=f.replies, style_distance=f.style_distance,
        who_said_it_real=f.who_said_it_real, who_said_it_model=f.who_said_it_model,
        real_or_generated=f.real_or_generated, exact_copies=f.exact_copies, token_span_copies=f.token_span_copies,
        word_span_copies=f.word_span_copies, speaking_for_others=f.speaking_for_others, leaks=f.leaks,
        leak_kinds=f.leak_kinds, distinct_1=f.distinct_1, distinct_2=f.distinct_2, repeated=f.repeated,
        style=[trainer_pb2.StyleFigure(name=s.name, person=s.person, model=s.model) for s in f.style],
        distinctive=f.distinctive,
        pairs=[trainer_pb2.ReplyPair(said=p.said, real=p.real, generated=p.generated) for p in f.pairs],
    )


def from_proto(m: trainer_pb2.Fidelity) -> FidelityFigures:
    return FidelityFigures(
        speaker=m.speaker, dataset_id=m.dataset_id, replies=m.replies, style_distance=m.style_distance,
        who_said_it_real=m.who_said_it_real, who_said_it_model=m.who_said_it_model,
        real_or_generated=m.real_or_generated, exact_copies=m.exact_copies, token_span_copies=m.token_span_copies,
        word_span_copies=m.word_span_copies, speaking_for_others=m.speaking_for_others, leaks=m.leaks,
        leak_kinds=dict(sorted(m.leak_kinds.items())), distinct_1=m.distinct_1, distinct_2=m.distinct_2,
        repeated=m.repeated, style=[StyleFigure(name=s.name, person=s.person, model=s.model) for s in m.style],
        distinctive=list(m.distinctive), pairs=[ReplyPair(said=p.said, real=p.real, generated=p.generated) for p in m.pairs],
    )


def paired(figures: Sequence[FidelityFigures], base: Sequence[FidelityFigures]) -> list[tuple[FidelityFigures, FidelityFigures | None]]:
    """Each speaker's figures with the base model's for the same speaker, if measured."""
    by_speaker = {b.speaker: b for b in base}
    return [(f, by_speaker.get(f.speaker)) for f in figures]
