"""The fidelity measures on hand-made texts whose figures are known, and the replies they measure."""

from __future__ import annotations

import time

import pytest
import torch

from doppel import personal
from services.trainer.fidelity import conduct, style
from services.trainer.fidelity.copying import TrainingIndex


def stats(messages, turn_sizes=()):
    return {s.name: s.value for s in style.profile(messages, turn_sizes)}


def test_a_profile_holds_the_distributions_and_shares_it_was_given():
    got = stats(["hi", "hello there!", "what? why?", "ok...", "See https://x.org 😀😀"], turn_sizes=[1, 3, 2])
    assert got["characters mean"] == pytest.approx((2 + 12 + 10 + 5 + 20) / 5)
    assert got["words p50"] == 2  # 1, 2, 2, 1 and 4 words ("see", "https", "x", "org"; emoji are none)
    assert got["words p90"] == pytest.approx(2 + 0.6 * (4 - 2))
    assert got["emoji mean"] == pytest.approx(2 / 5) and got["emoji p90"] == pytest.approx(1.2)
    assert got["! per message"] == pytest.approx(1 / 5)
    assert got["? per message"] == pytest.approx(2 / 5)
    assert got["... per message"] == pytest.approx(1 / 5)
    assert got["starts lowercase"] == pytest.approx(4 / 5)
    assert got["all lowercase"] == pytest.approx(4 / 5)
    assert got["with a link"] == pytest.approx(1 / 5)
    assert got["with a placeholder"] == 0
    assert got["messages per turn"] == 2


def test_placeholders_and_empty_input():
    assert stats(["call me on <PHONE>", "ok"])["with a placeholder"] == 0.5
    empty = stats([])
    assert empty["characters mean"] == 0 and empty["starts lowercase"] == 0 and "messages per turn" not in empty


def test_the_distance_is_zero_for_the_same_style_and_grows_with_the_difference():
    person = style.profile(["lol yeah", "omg no way!!", "haha ok", "see u soon"])
    same = style.profile(["haha ok", "lol yeah", "see u soon", "omg no way!!"])
    close = style.profile(["lol ok", "omg yes!!", "haha sure", "see you soon"])
    far = style.profile(["Dear colleague, I hope this message finds you well. Kind regards.",
                         "Thank you for your patience; I will reply by Monday."])
    d_same, d_close, d_far = (style.distance(style.compare(person, p)) for p in (same, close, far))
    assert d_same == 0
    assert 0 < d_close < d_far <= 1
    row = next(r for r in style.compare(person, far) if r.name == "starts lowercase")
    assert (row.person, row.model, row.difference) == (1.0, 0.0, 1.0)


def test_distinctive_words_are_the_persons_own():
    person = ["honestly the train was late again", "honestly cannot wait", "honestly no idea"] * 3 + ["the train"]
    others = ["the train is here", "the meeting is at ten", "see you at the train"] * 3
    top = style.distinctive(person, others, top=3)
    assert top[0].term == "honestly" and top[0].count == 9
    assert "the" not in [d.term for d in top] and "train" not in [d.term for d in top]
    assert all(a.z >= b.z for a, b in zip(top, top[1:], strict=False))


def _tokens(text: str) -> list[int]:
    return [ord(c) for c in text]  # a byte-ish tokenizer: one token a character


def test_a_model_that_copies_training_messages_is_caught():
    training = ["i will be there around six, the bus was late again today", "ok", "see you at the station tonight"]
    index = TrainingIndex(training, _tokens)
    parrot = ["I will be there around six, the bus was late again today", "ok"]
    original = ["running late, start without me", "pizza?"]
    stitched = ["yes i will be there around six, the bus was late, sorry"]  # 8+ copied words, 20+ copied characters
    assert index.measure(parrot).exact == 1.0
    assert index.measure(original).exact == 0 and index.measure(original).token_span == 0
    assert index.measure(original).word_span == 0
    copied = index.measure(stitched)
    assert copied.exact == 0 and copied.token_span == 1.0 and copied.word_span == 1.0
    short = index.measure(["the bus was late"])  # 4 words, 16 characters: below both spans
    assert (short.token_span, short.word_span) == (0, 0)


def test_the_copy_index_stays_fast_on_many_messages():
    vocabulary = [f"w{k}" for k in range(5000)]
    messages = [" ".join(vocabulary[(k * 7 + j * 13) % 5000] for j in range(10)) for k in range(100_000)]
    t0 = time.monotonic()
    index = TrainingIndex(messages, lambda t: [hash(w) for w in t.split()])
    built = time.monotonic() - t0
    assert index.copies_words(messages[99_999]) and index.is_exact_copy(messages[12_345])
    assert not index.copies_words(" ".join(vocabulary[:10]) + " zzz")
    print(f"\nindexed 100k messages in {built:.1f} s")  # ~1M messages stays in tens of seconds


def test_a_model_that_writes_the_users_turn_is_caught():
    others = ["Bob", "Carol Ann"]
    assert conduct.speaks_for("sure thing\nBob: and then what", others) == "Bob"
    assert conduct.speaks_for("carol ann: hi", others) == "Carol Ann"
    assert conduct.speaks_for("I told Bob: no way", others) is None  # a colon mid-line is speech, not a turn
    assert conduct.speaks_for("see you Bobby", others) is None
    measured = conduct.measure([["hi", "Bob: hey"], ["ok"]], others)
    assert measured.speaking_for_others == 1 and measured.replies == 3


def test_leaks_use_the_redaction_rule():
    assert conduct.leaks("mail me at ann@example.com or call +44 20 7946 0958") == ["email", "phone"]
    assert conduct.leaks("card 4111 1111 1111 1111 and DE89 3704 0044 0532 0130 00") == ["card", "iban"]
    assert conduct.leaks("see https://example.com/123456789 on 2024-01-05 at 10:30") == []
    assert [k for k, _ in personal.find("https://x.org/a")] == ["url"]
    measured = conduct.measure([["ann@example.com", "x@y.org and b@c.org", "call 020 7946 0958 or ann@example.com"]], [])
    assert measured.leaks == {"email": 3, "phone": 1} and measured.leaking == 3


def test_repetition_counts_loops_and_variety():
    loop = ["i'll strim tomorrow", "I'll strim tomorrow ", "sure", "i'll strim tomorrow", "ok", "fine", "sure"]
    assert conduct.repeats(loop, window=3) == 2  # the 2nd and the 4th; the last "sure" is 4 back
    assert conduct.repeats(loop, window=4) == 3
    assert conduct.distinct(["a b c", "d e f"], 1) == 1.0
    assert conduct.distinct(["a a a a"], 1) == 0.25
    assert conduct.distinct(["a b a b"], 2) == pytest.approx(2 / 3)
    measured = conduct.measure([loop], ["Jonah"])
    assert measured.repeated == pytest.approx(2 / 7) and measured.distinct_1 < 1


def _voices(seed: int, n: int) -> tuple[list[str], list[str]]:
    """A person who writes lowercase with "lol" and no full stops, and others who write formally."""
    import random

    rng = random.Random(seed)
    topics = ["train", "dinner", "movie", "work", "weekend", "party", "coffee", "game", "trip", "call"]
    person = [f"lol the {rng.choice(topics)} was {rng.choice(['wild', 'so good', 'meh', 'a mess'])} haha" for _ in range(n)]
    others = [f"The {rng.choice(topics)} is at {rng.randint(1, 12)} o'clock. Please confirm." for _ in range(n)]
    return person, others


def test_who_said_it_tells_the_persons_voice_from_the_others():
    from services.trainer.fidelity.attribution import WhoSaidIt

    person, others = _voices(0, 60)
    clf = WhoSaidIt(person, others)
    held_person, held_others = _voices(1, 20)
    assert clf.attributed(held_person) >= 0.9
    assert clf.attributed(held_others) <= 0.1
    assert clf.attributed(["The coffee is at 3 o'clock. Please confirm."]) == 0
    with pytest.raises(ValueError, match="someone else"):
        WhoSaidIt(person, [])


def test_real_or_generated_is_a_coin_toss_only_when_they_read_alike():
    from services.trainer.fidelity.attribution import real_or_generated

    person_a, formal = _voices(2, 40)
    person_b, _ = _voices(3, 40)
    assert real_or_generated(person_a, formal) >= 0.9  # a "model" that writes like someone else
    alike = real_or_generated(person_a, person_b)  # the same voice, other samples
    assert 0.2 <= alike <= 0.8, alike


def test_the_report_puts_every_figure_in_its_table():
    from doppel.fidelity import markdown
    from services.trainer.fidelity import report

    person, others = _voices(4, 40)
    real, _ = _voices(5, 10)
    parrot = [[person[0], person[1]], [person[2], "Bob: my turn now", "mail me at ann@example.com", *person[3:8]]]
    f = report.measure("Ann", train_person=person, train_others=others, real=real, generated=parrot,
                       others=["Bob"], tokenize=_tokens)
    assert f.replies == 10 and f.copying.exact == pytest.approx(8 / 10)
    assert f.conduct.speaking_for_others == 1 and f.conduct.leaks == {"email": 1}
    assert f.who_said_it_real == 1.0 and f.who_said_it_model >= 0.8  # 8 are the person's own lines
    figures = report.figures(f, "ds")
    assert (figures.exact_copies, figures.speaking_for_others, figures.leaks, figures.leak_kinds) == (0.8, 1, 1, {"email": 1})
    assert figures.dataset_id == "ds" and figures.style == f.style and figures.pairs == f.pairs
    assert [p.real for p in figures.pairs] == real[:5] and [p.said for p in figures.pairs] == [""] * 5
    table = markdown(figures)
    assert "| exact copies of training messages | 80% |" in table
    assert "| replies speaking for another participant | 1 |" in table
    assert "| replies leaking personal data | 1 (email 1) |" in table
    assert "| style distance (0 = same) |" in table and "| characters mean |" in table
    with pytest.raises(ValueError, match="9 generated replies for 10"):
        report.measure("Ann", train_person=person, train_others=others, real=real, generated=[person[:9]],
                       others=["Bob"], tokenize=_tokens)


def _sessions(n: int):
    from doppel.transcript import Turn
    from services.trainer.samples import Session

    lines = ["how was work", "long day, the train was late again", "pizza tonight?", "yes please, with olives"]
    return [Session(f"c{k}", ["Ann", "Bob"], [Turn("Bob" if j % 2 == 0 else "Ann", lines[(j + k) % 4]) for j in range(6)])
            for k in range(n)]


def test_targets_are_the_persons_held_out_turns_with_what_came_before():
    from services.trainer.fidelity.replies import targets

    found = targets(_sessions(3), "Ann", limit=100)
    assert len(found) == 9 and {t.conversation for t in found} == {0, 1, 2}
    first = found[0]
    assert first.real == _sessions(3)[0].turns[1].text and [t.speaker for t in first.context] == ["Bob"]
    assert len(found[2].context) == 5 and found[2].context[-1].speaker == "Bob"
    assert len(targets(_sessions(3), "Ann", limit=4)) == 4


def test_the_model_answers_each_target_as_one_turn_without_touching_the_callers_rng():
    from doppel.tiny import tiny_model
    from doppel.transcript import Transcript
    from services.trainer.fidelity.replies import sample, targets

    sessions = _sessions(8)
    model, tokenizer = tiny_model([t.text for s in sessions for t in s.turns] + ["Ann: hi\nBob: yo"])
    transcript = Transcript(tokenizer, ["Ann"])
    found = targets(sessions, "Ann")
    state = torch.random.get_rng_state()
    t0 = time.monotonic()
    replies = sample(model, tokenizer, transcript, found, seed=3, max_new_tokens=24)
    took = time.monotonic() - t0
    assert torch.equal(state, torch.random.get_rng_state())
    assert len(replies) == len(found) == 24
    assert all("\nBob:" not in r and "\nAnn:" not in r for r in replies)
    assert replies == sample(model, tokenizer, transcript, found, seed=3, max_new_tokens=24)
    print(f"\n{len(replies)} replies in {took:.1f} s on the tiny model")


def test_a_reply_is_a_whole_multi_line_turn_ended_at_eos_or_another_participants_line():
    from doppel.tiny import tiny_model
    from doppel.transcript import Transcript
    from services.trainer.fidelity.replies import sample, targets
    from support.scripted import scripted_lm

    sessions = _sessions(2)
    _, tokenizer = tiny_model([t.text for s in sessions for t in s.turns] + ["Ann: hi\nBob: yo"])
    transcript = Transcript(tokenizer, ["Ann"])
    found = targets(sessions, "Ann")  # prompts of several lengths: a left-padded batch
    assert len({len(t.context) for t in found}) > 1
    for script, reply in ((" line one\nline two<|endoftext|>\nBob: more", "line one\nline two"),
                          (" line one\nline two\nBob: and me", "line one\nline two")):
        replies = sample(scripted_lm(tokenizer, script), tokenizer, transcript, found, max_new_tokens=24, batch_size=4)
        assert replies == [reply] * len(found), script
