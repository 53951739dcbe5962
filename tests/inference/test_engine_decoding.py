"""Each row's text, decoded as tokens come, and a failed step told to every job in flight.

A scripted model (it "generates" a fixed token sequence after any prompt, and can be made to
fail) drives the engine with a byte-level BPE tokenizer, so the tokens, and where characters
split over them, are known.
"""

from __future__ import annotations

import random
import threading
from types import SimpleNamespace

import pytest
import torch

from doppel.errors import Internal, OutOfMemory
from doppel.tiny import tiny_model
from services.inference.decoder import MAX_WAIT, RowDecoder, decoder_of
from services.inference.engine import Engine, Finish, Job
from services.inference.protocol import Sampling

torch.set_num_threads(1)
TEXTS = [f"Alice: message number {i} about things\nBob: reply {i} ok" for i in range(200)]
EMOJI = "ok 😀 and 🦜🦜 é done, ünïcödé 👍🏽 bye"  # none of these characters in TEXTS: split over byte tokens
PROMPT = [5, 6, 7]


@pytest.fixture(scope="module")
def tok():
    return tiny_model(TEXTS, seed=0, block_size=64)[1]


class Scripted(torch.nn.Module):
    """A causal LM that continues any `PROMPT` with `script`, one token a step (greedy picks
    it), for every row; `fail` raises on the next forward pass."""

    def __init__(self, vocab: int, script: list[int]):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.vocab, self.script = vocab, script
        self.fail: Exception | None = None

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=True, **kwargs):
        if self.fail is not None:
            e, self.fail = self.fail, None
            raise e
        rows, width = input_ids.shape
        k = torch.zeros(rows, 1, width, 1)
        cache.update(k, k, 0)
        made = (position_ids[:, -1] + 1 - len(PROMPT)).clamp(0, len(self.script) - 1)  # tokens generated so far
        logits = torch.full((rows, width, self.vocab), -1e9)
        logits[torch.arange(rows), -1, torch.tensor(self.script)[made]] = 0.0
        return SimpleNamespace(logits=logits, cache=cache)


class Run:
    """One job's deltas and how each of its candidates ended."""

    def __init__(self, sampling: Sampling, **kw):
        self.parts: dict[int, list[str]] = {}
        self.finish: dict[int, Finish] = {}
        self.done = threading.Event()
        self.job = Job(list(PROMPT), sampling, self.sink, **kw)

    def sink(self, index: int, delta: str, finish: Finish | None) -> None:
        self.parts.setdefault(index, []).append(delta)
        if finish is not None:
            self.finish[index] = finish
            if len(self.finish) == self.job.sampling.n:
                self.done.set()

    @property
    def deltas(self) -> list[str]:
        return self.parts.get(0, [])

    def text(self, index: int = 0) -> str:
        return "".join(self.parts.get(index, []))


def run(engine: Engine, sampling: Sampling, **kw) -> Run:
    r = Run(sampling, **kw)
    engine.submit(r.job)
    assert r.done.wait(30)
    return r


@pytest.fixture
def scripted(tok):
    engines = []

    def make(text: str) -> tuple[Engine, Scripted, list[int]]:
        script = tok(text)["input_ids"]
        model = Scripted(len(tok), script)
        engines.append(Engine(model, tok, max_batch=8, name="scripted"))
        return engines[-1], model, script

    yield make
    for e in engines:
        e.stop()


def test_deltas_add_up_to_the_full_decode_and_never_show_a_broken_character(scripted, tok):
    engine, _, script = scripted(EMOJI)
    assert "\ufffd" in "".join(tok.decode([t]) for t in script), "the emoji are split over byte-level tokens"
    r = run(engine, Sampling(temperature=0, max_new_tokens=len(script)))
    assert r.text() == tok.decode(script) == EMOJI and r.finish[0] is Finish.LENGTH
    assert not any("\ufffd" in d for d in r.deltas)
    assert r.job.tokens == {0: len(script)}


def test_a_stop_string_spanning_tokens_stops_and_is_not_sent(scripted, tok):
    engine, _, script = scripted("hello world STOP here")
    assert len(tok("lo wo")["input_ids"]) > 1
    r = run(engine, Sampling(temperature=0, max_new_tokens=len(script), stop=("lo wo", "zzz")))
    assert r.text() == "hel" and r.finish[0] is Finish.STOP
    r = run(engine, Sampling(temperature=0, max_new_tokens=len(script)), end_strings=("d ST",))
    assert r.text() == "hello worl" and r.finish[0] is Finish.END_OF_TURN
    # a stop string beginning in the split bytes of an emoji, and a later one: the first wins
    engine, _, script = scripted(EMOJI)
    r = run(engine, Sampling(temperature=0, max_new_tokens=len(script), stop=("bye", "🦜é")), end_strings=("🦜 é",))
    assert r.text() == "ok 😀 and 🦜" and r.finish[0] is Finish.END_OF_TURN


def test_an_end_token_ends_the_turn_with_the_text_before_it(scripted, tok):
    engine, _, script = scripted("ab 😀 cd")
    end = script[4]  # inside the emoji's bytes: the broken character before it is said at the end
    r = run(engine, Sampling(temperature=0, max_new_tokens=50), end_ids=frozenset({end}))
    assert r.text() == tok.decode(script[:4]) and r.finish[0] is Finish.END_OF_TURN and r.job.tokens == {0: 4}


@pytest.mark.parametrize(("kind", "script", "reply"), [
    (None, "line one\nline two<|endoftext|>\nBob: more", "line one\nline two"),  # plain-eos: to the EOS token
    (None, "line one\nline two\nBob: and me", "line one\nline two"),  # ...or to a line opened as anyone
    (None, "line one\nCarol: hi<|endoftext|>", "line one"),
    ("plain", "line one\nline two<|endoftext|>", "line one"),  # a model published before: its first newline
])
def test_a_served_plain_turn_spans_lines_and_ends_by_the_transcripts_rule(scripted, tok, kind, script, reply):
    """The end strings and tokens of a chat job (what serving passes the engine) over a model writing `script`."""
    from doppel.transcript import Transcript, Turn
    from services.inference.modes import Persona, chat_job

    persona = Persona("m", ["Alice"], ["Alice", "Bob", "Carol"], Transcript(tok, ["Alice"], kind), max_positions=64)
    sampling = Sampling(temperature=0, max_new_tokens=24)
    job = chat_job(persona, [Turn("Bob", "hi\nthere")], "Alice", "Bob", sampling, lambda *a: None)
    engine, _, _ = scripted(script)
    r = run(engine, sampling, end_strings=job.end_strings, end_ids=job.end_ids)
    assert r.text() == reply and r.finish[0] is Finish.END_OF_TURN


def test_decoding_a_token_costs_the_same_however_long_the_text():
    """Each step decodes a few tokens, not the whole text: the tokens passed to `decode` per step
    do not grow with the length of the output."""
    _, tok = tiny_model(TEXTS, seed=0, block_size=64)
    ids = tok(" ".join([EMOJI] * 80))["input_ids"]
    assert len(ids) > 2000
    passed: list[int] = []

    def decode(part: list[int]) -> str:
        passed.append(len(part))
        return tok.decode(part)

    decoder = RowDecoder(decode, stop=("never seen",), max_new_tokens=len(ids) + 1)
    per_step, deltas = [], []
    for token in ids:
        passed.clear()
        delta, finish = decoder.add(token)
        assert finish is None
        deltas.append(delta)
        per_step.append(sum(passed))
    assert max(per_step) <= 2 * MAX_WAIT + 2
    assert sum(per_step[-500:]) <= sum(per_step[:500]) * 1.1  # no growth
    assert "".join(deltas) + decoder.pending == tok.decode(ids)
    assert not any("\ufffd" in d for d in deltas)


def test_random_tokens_stream_what_the_full_decode_gives(tok):
    """Whatever the bytes (broken UTF-8 the model never mends included), the deltas add up to
    the full decode, and a delta shows a replacement character only where the final text has one."""
    decode = decoder_of(tok)
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(len(tok)) for _ in range(rng.randrange(1, 40))]
        decoder = RowDecoder(decode, max_new_tokens=len(ids))
        deltas = [decoder.add(t)[0] for t in ids]
        full = tok.decode(ids)
        assert "".join(deltas) == full
        for k in range(len(deltas)):  # what a stream showed at any time is where the final text begins
            assert full.startswith("".join(deltas[:k]))


@pytest.mark.parametrize(("failure", "kind", "words"), [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), OutOfMemory, "out of memory"),
    (RuntimeError("CUDA error: out of memory"), OutOfMemory, "out of memory"),
    (RuntimeError("index 7 is out of bounds"), Internal, "RuntimeError: index 7 is out of bounds"),
])
def test_a_failed_step_fails_every_job_in_it_and_the_engine_serves_the_next(scripted, failure, kind, words):
    engine, model, script = scripted("hello world STOP here")
    full = "hello world STOP here"
    sampling = Sampling(temperature=0, max_new_tokens=len(script))
    runs = [Run(Sampling(temperature=0, max_new_tokens=len(script), n=2)), Run(sampling)]
    sink = runs[0].sink

    def fail_once_decoding(index: int, delta: str, finish: Finish | None) -> None:
        if delta and not model.failed:  # the jobs are decoding: the next step fails
            model.failed = True
            model.fail = failure
        sink(index, delta, finish)

    model.failed = False
    runs[0].job.sink = fail_once_decoding
    for r in runs:
        engine.submit(r.job)
    for r in runs:
        assert r.done.wait(30)
        assert isinstance(r.job.error, kind) and words in str(r.job.error)
        assert set(r.finish.values()) == {Finish.CANCELLED}
        assert all(full.startswith(r.text(k)) and r.text(k) != full for k in r.finish)
    after = run(engine, sampling)
    assert after.job.error is None and after.text() == full and after.finish[0] is Finish.LENGTH


def test_a_failed_prefill_fails_the_jobs_it_admitted(scripted):
    engine, model, script = scripted("hello world")
    model.fail = ValueError("a broken prompt")
    failed = run(engine, Sampling(temperature=0, max_new_tokens=len(script), n=3))
    assert isinstance(failed.job.error, Internal) and "ValueError: a broken prompt" in str(failed.job.error)
    assert failed.finish == dict.fromkeys(range(3), Finish.CANCELLED) and failed.text() == ""
    assert run(engine, Sampling(temperature=0, max_new_tokens=len(script))).text() == "hello world"
    assert engine.stats.running == 0


def test_greedy_text_is_what_generate_gives():
    """The engine's greedy text is the model's own `generate`, decoded."""
    model, tok = tiny_model(TEXTS, seed=0, block_size=256)
    model.eval()
    prompt = tok("Alice: message number 12 about things\nBob:")["input_ids"]
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=24, min_new_tokens=24, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    expected = tok.decode(out[0, len(prompt):].tolist())
    engine = Engine(model, tok, max_batch=4, name="generate")
    try:
        r = Run(Sampling(temperature=0, max_new_tokens=24))
        r.job.prompt_ids = prompt
        engine.submit(r.job)
        assert r.done.wait(30)
        assert r.text() == expected
    finally:
        engine.stop()
