"""doppel.fidelity: the one way fidelity figures are shown and carried over gRPC."""

from __future__ import annotations

import math

from doppel import fidelity
from doppel.model import FidelityFigures, ReplyPair, StyleFigure


def _figures(**kw) -> FidelityFigures:
    return FidelityFigures(**{
        "speaker": "Ann", "dataset_id": "ds-1", "replies": 40, "style_distance": 0.25, "who_said_it_real": 0.9,
        "who_said_it_model": 0.6, "real_or_generated": math.nan, "exact_copies": 0.05, "token_span_copies": 0.1,
        "word_span_copies": 0.125, "speaking_for_others": 1, "leaks": 2, "leak_kinds": {"email": 1, "phone": 1},
        "distinct_1": 0.5, "distinct_2": 0.75, "repeated": 0.0,
        "style": [StyleFigure(name="characters mean", person=40.0, model=10.0), StyleFigure(name="emoji mean", person=0.0, model=0.0)],
        "distinctive": ["strim", "see ya"],
        "pairs": [ReplyPair(said="Bob: how | are *you*", real="line one\nline two", generated="<b>hi</b>")],
        **kw,
    })


def test_figures_survive_the_proto_unchanged_nan_included():
    f = _figures()
    back = fidelity.from_proto(fidelity.to_proto(f))
    assert math.isnan(back.real_or_generated)
    assert back.model_dump(exclude={"real_or_generated"}) == f.model_dump(exclude={"real_or_generated"})


def test_the_table_shows_every_figure_and_people_s_text_literally():
    table = fidelity.markdown(_figures())
    assert table.startswith("## Fidelity of Ann (40 held-out replies of ds-1)")
    for row in ("| style distance (0 = same) | 0.250 |", "| who said it: real replies / model replies | 90% / 60% |",
                "| real or generated, CV accuracy (50% = indistinguishable) | – |", "| exact copies of training messages | 5% |",
                "| copy a span of >= 20 tokens / >= 8 words | 10% / 12% |", "| replies speaking for another participant | 1 |",
                "| replies leaking personal data | 2 (email 1, phone 1) |", "| distinct-1 / distinct-2 | 0.50 / 0.75 |",
                "| characters mean | 40.00 | 10.00 | 75% |", "| emoji mean | 0.00 | 0.00 | 0% |"):
        assert row in table, row
    assert "*strim*, *see ya*" in table
    assert r"| Bob: how \| are \*you\* | line one<br>line two | &lt;b&gt;hi&lt;/b&gt; |" in table


def test_the_base_model_alone_gets_a_column_and_style_rows_can_be_bars():
    base = _figures(style_distance=0.5, who_said_it_model=0.1)
    table = fidelity.markdown(_figures(), base, bars=True)
    assert "| measure | model | base alone |" in table
    assert "| style distance (0 = same) | 0.250 | 0.500 |" in table
    assert "| who said it: real replies / model replies | 90% / 60% | 90% / 10% |" in table
    assert "| characters mean | ████████████ 40.00 | ███░░░░░░░░░ 10.00 | 75% |" in table
    assert [(f.speaker, b) for f, b in fidelity.paired([_figures()], [])] == [("Ann", None)]


def test_the_summary_is_one_line_of_the_headline_figures():
    assert fidelity.summary(_figures()) == "Ann: style 0.25, who said it 60%, real/generated –, copies 5%"
