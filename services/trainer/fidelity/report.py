"""Every fidelity figure of one persona in one place, and the markdown table that shows them.

`measure` takes texts only: the person's training messages and the others', the person's real
held-out replies, and the model's replies to the same contexts (grouped by conversation, in
order). What samples those replies is the caller's (`replies.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from doppel.model import FidelityFigures

from . import conduct, style
from .attribution import WhoSaidIt, real_or_generated
from .conduct import Conduct
from .copying import Copying, Tokenize, TrainingIndex
from .style import Compared, Distinctive


@dataclass(frozen=True)
class Fidelity:
    speaker: str
    replies: int
    style: list[Compared]
    style_distance: float
    distinctive: list[Distinctive]  # the person's words and phrases, from the training part
    who_said_it_real: float  # share of the person's real held-out replies attributed to them
    who_said_it_model: float  # share of the model's replies attributed to the person
    real_or_generated: float  # cross-validated accuracy; 0.5: indistinguishable
    copying: Copying
    conduct: Conduct
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (real, generated) for a few held-out turns


def measure(speaker: str, *, train_person: Sequence[str], train_others: Sequence[str], real: Sequence[str],
            generated: Sequence[Sequence[str]], others: Sequence[str], tokenize: Tokenize, pairs: int = 5) -> Fidelity:
    """The figures of `speaker`'s model. `generated[c]` answers the turns whose real replies are
    `real`, in the same order, grouped by conversation `c`."""
    replies = [r for c in generated for r in c]
    if len(replies) != len(real):
        raise ValueError(f"{len(replies)} generated replies for {len(real)} real ones")
    rows = style.compare(style.profile(real), style.profile(replies))
    who = WhoSaidIt(train_person, train_others) if train_person and train_others else None
    both = len(real) >= 2 and len(replies) >= 2
    return Fidelity(
        speaker=speaker,
        replies=len(replies),
        style=rows,
        style_distance=style.distance(rows),
        distinctive=style.distinctive(train_person, train_others),
        who_said_it_real=who.attributed(real) if who else float("nan"),
        who_said_it_model=who.attributed(replies) if who else float("nan"),
        real_or_generated=real_or_generated(real, replies) if both else float("nan"),
        copying=TrainingIndex(train_person, tokenize).measure(replies),
        conduct=conduct.measure(generated, others),
        pairs=list(zip(real, replies, strict=True))[:pairs],
    )


def figures(f: Fidelity) -> FidelityFigures:
    """The figures a model's manifest keeps."""
    c, k = f.copying, f.conduct
    return FidelityFigures(
        speaker=f.speaker, replies=f.replies, style_distance=f.style_distance, who_said_it_real=f.who_said_it_real,
        who_said_it_model=f.who_said_it_model, real_or_generated=f.real_or_generated, exact_copies=c.exact,
        token_span_copies=c.token_span, word_span_copies=c.word_span, speaking_for_others=k.speaking_for_others,
        leaks=k.leaking, distinct_1=k.distinct_1, distinct_2=k.distinct_2, repeated=k.repeated,
    )


def _pct(x: float) -> str:
    return "–" if x != x else f"{100 * x:.0f}%"


def markdown(f: Fidelity) -> str:
    """The figures as a markdown table (the Prefect artifact of a run, the CLI's view)."""
    c, k = f.copying, f.conduct
    lines = [
        f"## Fidelity of {f.speaker} ({f.replies} held-out replies)",
        "",
        "| measure | value |",
        "|---|---|",
        f"| style distance (0 = same) | {f.style_distance:.3f} |",
        f"| who said it: real replies / model replies | {_pct(f.who_said_it_real)} / {_pct(f.who_said_it_model)} |",
        f"| real or generated, CV accuracy (50% = indistinguishable) | {_pct(f.real_or_generated)} |",
        f"| exact copies of training messages | {_pct(c.exact)} |",
        f"| copy a span of >= 20 tokens / >= 8 words | {_pct(c.token_span)} / {_pct(c.word_span)} |",
        f"| replies speaking for another participant | {k.speaking_for_others} |",
        f"| replies leaking personal data | {k.leaking} {dict(k.leaks) or ''} |",
        f"| distinct-1 / distinct-2 | {k.distinct_1:.2f} / {k.distinct_2:.2f} |",
        f"| replies repeating a recent one | {_pct(k.repeated)} |",
        "",
        "| style | person | model | difference |",
        "|---|---|---|---|",
        *(f"| {r.name} | {r.person:.2f} | {r.model:.2f} | {_pct(r.difference)} |" for r in f.style),
    ]
    if f.pairs:
        lines += ["", "| real | generated |", "|---|---|",
                  *(f"| {_cell(a)} | {_cell(b)} |" for a, b in f.pairs)]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")
