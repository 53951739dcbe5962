"""Every fidelity figure of one persona in one place.

`measure` takes texts only: the person's training messages and the others', the person's real
held-out replies, and the model's replies to the same contexts (grouped by conversation, in
order). What samples those replies is the caller's (`replies.py`). `figures` turns the result
into the `FidelityFigures` a manifest keeps, which `doppel.fidelity` shows as a table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from doppel.model import FidelityFigures, ReplyPair, StyleFigure

from . import conduct, style
from .attribution import WhoSaidIt, real_or_generated
from .conduct import Conduct
from .copying import Copying, Tokenize, TrainingIndex
from .style import Distinctive


@dataclass(frozen=True)
class Fidelity:
    speaker: str
    replies: int
    style: list[StyleFigure]
    style_distance: float
    distinctive: list[Distinctive]  # the person's words and phrases, from the training part
    who_said_it_real: float  # share of the person's real held-out replies attributed to them
    who_said_it_model: float  # share of the model's replies attributed to the person
    real_or_generated: float  # cross-validated accuracy; 0.5: indistinguishable
    copying: Copying
    conduct: Conduct
    pairs: list[ReplyPair] = field(default_factory=list)  # a few held-out turns, answered


def measure(speaker: str, *, train_person: Sequence[str], train_others: Sequence[str], real: Sequence[str],
            generated: Sequence[Sequence[str]], others: Sequence[str], tokenize: Tokenize, said: Sequence[str] = (),
            pairs: int = 5) -> Fidelity:
    """The figures of `speaker`'s model. `generated[c]` answers the turns whose real replies are
    `real`, in the same order, grouped by conversation `c`; `said` is what each answered (shown
    with the first `pairs` of them)."""
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
        pairs=[ReplyPair(said=s, real=a, generated=b)
               for s, a, b in zip(list(said) or [""] * len(real), real, replies, strict=True)][:pairs],
    )


def figures(f: Fidelity, dataset_id: str = "") -> FidelityFigures:
    """The figures a model's manifest keeps."""
    c, k = f.copying, f.conduct
    return FidelityFigures(
        speaker=f.speaker, dataset_id=dataset_id, replies=f.replies, style_distance=f.style_distance,
        who_said_it_real=f.who_said_it_real, who_said_it_model=f.who_said_it_model,
        real_or_generated=f.real_or_generated, exact_copies=c.exact,
        token_span_copies=c.token_span, word_span_copies=c.word_span, speaking_for_others=k.speaking_for_others,
        leaks=k.leaking, leak_kinds=k.leaks, distinct_1=k.distinct_1, distinct_2=k.distinct_2, repeated=k.repeated,
        style=f.style, distinctive=[d.term for d in f.distinctive], pairs=f.pairs,
    )
