"""The batching engine on a tiny random model: batched text equals one-at-a-time text, and batching is real."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from peft import LoraConfig, get_peft_model

from doppel.errors import InvalidArgument, Overloaded
from doppel.tiny import tiny_model
from services.inference.engine import Engine, Finish, Job
from services.inference.protocol import Sampling

torch.set_num_threads(1)
TEXTS = [f"Alice: message number {i} about things\nBob: reply {i} ok" for i in range(200)]
PROMPTS = ["Alice: hi", "Bob: reply 3 ok\nAlice: message", "x", "Alice: message number 12 about things\nBob:"]
GREEDY = Sampling(temperature=0, max_new_tokens=16)


class Collector:
    """Sinks for many jobs; `wait()` until every candidate finished."""

    def __init__(self) -> None:
        self.parts: dict[tuple[int, int], list[str]] = {}
        self.finish: dict[tuple[int, int], Finish] = {}
        self.first_at: dict[tuple[int, int], float] = {}
        self._expected = self._jobs = 0
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)

    def job(self, tok, prompt: str, sampling: Sampling, **kw) -> Job:
        """A job whose candidates are keyed (job number, index) in the order jobs are made."""
        n = self._jobs
        self._jobs += 1
        self._expected += sampling.n

        def sink(index: int, delta: str, finish: Finish | None) -> None:
            with self._lock:
                self.parts.setdefault((n, index), []).append(delta)
                if delta and (n, index) not in self.first_at:
                    self.first_at[(n, index)] = time.monotonic()
                if finish is not None:
                    self.finish[(n, index)] = finish
                    self._done.notify_all()

        return Job(tok(prompt)["input_ids"], sampling, sink, **kw)

    def text(self, n: int, index: int = 0) -> str:
        return "".join(self.parts.get((n, index), []))

    def wait(self, timeout: float = 60) -> None:
        """Until every candidate of every job made so far finished."""
        with self._lock:
            done = self._done.wait_for(lambda: len(self.finish) == self._expected, timeout)
        assert done, f"{len(self.finish)}/{self._expected} candidates finished"


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_model(TEXTS, seed=0, block_size=256)
    return model.eval(), tok


@pytest.fixture
def engine(tiny):
    model, tok = tiny
    e = Engine(model, tok, max_batch=16, queue_capacity=8, name="test")
    yield e
    e.stop()


def solo(engine: Engine, tok, prompt: str, sampling: Sampling = GREEDY, **kw) -> str:
    c = Collector()
    engine.submit(c.job(tok, prompt, sampling, **kw))
    c.wait()
    return c.text(0)


def test_a_batch_gives_each_prompt_the_text_it_gets_alone(engine, tiny):
    _, tok = tiny
    alone = [solo(engine, tok, p) for p in PROMPTS]
    passes = engine.stats.forward_passes
    c = Collector()
    for p in PROMPTS:  # different lengths: left padding in one cache
        engine.submit(c.job(tok, p, GREEDY))
    c.wait()
    assert [c.text(n) for n in range(len(PROMPTS))] == alone
    assert all(len(t) > 0 for t in alone)
    # alone: 4 x (1 prefill + 15 decode steps); together: far fewer passes for the same tokens
    assert engine.stats.forward_passes - passes <= 20


def test_requests_join_and_leave_a_running_batch(engine, tiny):
    _, tok = tiny
    long, short = Sampling(temperature=0, max_new_tokens=40), Sampling(temperature=0, max_new_tokens=5)
    alone = [solo(engine, tok, PROMPTS[0], long), solo(engine, tok, PROMPTS[1], short), solo(engine, tok, PROMPTS[3], long)]
    c = Collector()
    engine.submit(c.job(tok, PROMPTS[0], long))
    time.sleep(0.05)  # the first is decoding when the others arrive
    engine.submit(c.job(tok, PROMPTS[1], short))
    engine.submit(c.job(tok, PROMPTS[3], long))
    c.wait()
    assert [c.text(0), c.text(1), c.text(2)] == alone
    assert c.finish[(1, 0)] is Finish.LENGTH


def test_n_candidates_are_rows_of_one_batch_and_a_seed_repeats_them(engine, tiny):
    _, tok = tiny
    s = Sampling(temperature=1.0, n=4, seed=11, max_new_tokens=12)
    runs = []
    for _ in range(2):
        c = Collector()
        before = engine.stats.forward_passes
        engine.submit(c.job(tok, "Alice: hi", s))
        c.wait()
        runs.append([c.text(0, k) for k in range(4)])
        assert engine.stats.forward_passes - before <= 12  # 1 prefill + 11 steps, for all four
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 1


def test_mixed_adapters_share_forward_passes_and_keep_their_own_text():
    base, tok = tiny_model(TEXTS, seed=0, block_size=256)  # peft wraps it in place: not the shared one
    torch.manual_seed(1)
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["c_attn"], init_lora_weights=False), adapter_name="a")
    torch.manual_seed(2)
    peft.add_adapter("b", LoraConfig(r=4, target_modules=["c_attn"], init_lora_weights=False))
    peft.eval()
    e = Engine(peft, tok, max_batch=16, name="mixed")
    try:
        alone = {a: solo(e, tok, PROMPTS[1], adapter=a) for a in ("a", "b", None)}
        assert len(set(alone.values())) == 3, "the adapters change the text"
        c = Collector()
        before = e.stats.forward_passes
        for a in ("a", "b", None):
            e.submit(c.job(tok, PROMPTS[1], GREEDY, adapter=a))
        c.wait()
        assert [c.text(0), c.text(1), c.text(2)] == [alone["a"], alone["b"], alone[None]]
        assert e.stats.forward_passes - before <= 20  # alone: 3 x 16; a late joiner costs a prefill or two
    finally:
        e.stop()


def _tiny_llama(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_stacked_adapters_give_what_peft_gives_a_mixed_batch(kind):
    """Rows of adapters with different ranks, targets and scalings, and a row with none: the
    stacked weights and hooks give PEFT's own mixed-batch logits, on GPT-2's Conv1D layers and
    on Llama's (SmolLM2's) linear ones."""
    from services.inference.lora import MixedLora

    base, tok = tiny_model(TEXTS, seed=0, block_size=256)
    first = "c_attn"
    if kind == "llama":
        base, first = _tiny_llama(len(tok)), "q_proj"
    torch.manual_seed(1)
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=[first], init_lora_weights=False), adapter_name="a")
    torch.manual_seed(2)
    peft.add_adapter("b", LoraConfig(r=8, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
    peft.eval()
    ids = torch.tensor([tok(t)["input_ids"][:5] for t in TEXTS[:4]])
    rows = ["a", "b", "__base__", "a"]
    with torch.inference_mode():
        expected = peft(input_ids=ids, adapter_names=rows).logits
        mixed = MixedLora.of(peft)
        assert mixed is not None
        with mixed.rows(rows):
            got = peft(input_ids=ids).logits
        assert torch.allclose(got, expected, atol=1e-5)
        assert not torch.allclose(got[0], got[1], atol=1e-3), "the adapters differ"
        mixed.close()
        assert torch.allclose(peft(input_ids=ids).logits, peft(input_ids=ids, adapter_names=["a"] * 4).logits), \
            "closed: the hooks are gone"


def test_end_strings_stop_a_turn_and_are_not_sent(engine, tiny):
    _, tok = tiny
    text = solo(engine, tok, PROMPTS[0], Sampling(temperature=0, max_new_tokens=30))
    stop = text[3:5]
    c = Collector()
    engine.submit(c.job(tok, PROMPTS[0], Sampling(temperature=0, max_new_tokens=30), end_strings=(stop,)))
    c.wait()
    assert c.text(0) == text[: text.find(stop)] and c.finish[(0, 0)] is Finish.END_OF_TURN
    c = Collector()
    engine.submit(c.job(tok, PROMPTS[0], Sampling(temperature=0, max_new_tokens=30, stop=(stop,))))
    c.wait()
    assert c.finish[(0, 0)] is Finish.STOP


def test_a_cancelled_job_frees_its_rows(engine, tiny):
    _, tok = tiny
    c = Collector()
    job = c.job(tok, PROMPTS[0], Sampling(temperature=1.0, max_new_tokens=4000, n=3))
    engine.submit(job)
    deadline = time.monotonic() + 10
    while engine.stats.running == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    job.cancel()
    c.wait()
    assert set(c.finish.values()) == {Finish.CANCELLED}
    deadline = time.monotonic() + 10
    while not engine.idle() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.idle() and engine.stats.running == 0


def test_a_full_queue_is_overloaded_not_a_crash(tiny):
    model, tok = tiny
    e = Engine(model, tok, max_batch=1, queue_capacity=2, name="small")
    try:
        c = Collector()
        jobs = [c.job(tok, "x", Sampling(temperature=1.0, max_new_tokens=200)) for _ in range(3)]
        e.submit(jobs[0])
        deadline = time.monotonic() + 10
        while e.stats.running == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        e.submit(jobs[1])
        e.submit(jobs[2])
        with pytest.raises(Overloaded, match="queue is full"):
            e.submit(c.job(tok, "x", GREEDY))
        for j in jobs:
            j.cancel()
    finally:
        e.stop()


def test_bad_sampling_is_refused():
    with pytest.raises(InvalidArgument, match="top_p"):
        Sampling(top_p=0)
    with pytest.raises(InvalidArgument, match="n must be"):
        Sampling(n=0)


def test_jobs_cancelled_while_queued_give_their_place(tiny):
    model, tok = tiny
    e = Engine(model, tok, max_batch=1, queue_capacity=1, name="queue")
    try:
        c = Collector()
        running = c.job(tok, "x", Sampling(temperature=1.0, max_new_tokens=200))
        e.submit(running)
        deadline = time.monotonic() + 10
        while e.stats.running == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        queued = c.job(tok, "x", GREEDY)
        e.submit(queued)
        queued.cancel()
        e.submit(c.job(tok, "x", GREEDY))  # the cancelled one's place
        running.cancel()
        c.wait()
        assert c.finish[(2, 0)] is not Finish.CANCELLED
    finally:
        e.stop()


def test_prefills_group_prompts_of_similar_length():
    from services.inference.engine import _by_length

    jobs = [Job([0] * n, GREEDY, lambda *a: None) for n in (40, 10, 12, 100, 15, 60)]
    assert [[len(j.prompt_ids) for j in g] for g in _by_length(jobs)] == [[10, 12, 15], [40, 60], [100]]
    # and at most `tokens` padded tokens a pass, but never less than one job
    assert [[len(j.prompt_ids) for j in g] for g in _by_length(jobs, tokens=100)] == [[10, 12, 15], [40], [60], [100]]


def test_the_roomy_cache_holds_what_concatenation_would():
    from services.inference.kvcache import RoomyLayer

    layer, expected, rows = RoomyLayer(), None, 3
    torch.manual_seed(0)
    for step in range(150):  # past several rounds of room
        if step == 70:  # the engine drops a row: the layer's tensors are replaced
            layer.keys, layer.values = layer.keys[[0, 2]], layer.values[[0, 2]]
            expected, rows = expected[[0, 2]], 2
        k = torch.randn(rows, 2, 5 if step == 0 else 1, 4)
        keys, values = layer.update(k, -k)
        expected = k if expected is None else torch.cat([expected, k], 2)
        assert torch.equal(keys, expected) and torch.equal(values, -expected)
    assert layer.get_seq_length() == 5 + 149


def test_done_rows_ride_along_until_dropping_them_pays(engine, tiny):
    """A row that finished stays in the batch (nothing sampled or sent for it) while fewer than a
    quarter are done, and leaves when rows join; no row's text changes for it."""
    _, tok = tiny
    long, short = Sampling(temperature=0, max_new_tokens=30), Sampling(temperature=0, max_new_tokens=2)
    prompts = [PROMPTS[k % len(PROMPTS)] + " " * (k // len(PROMPTS)) for k in range(6)]
    alone = [solo(engine, tok, p, short if k == 0 else long) for k, p in enumerate(prompts)]
    late_alone = solo(engine, tok, PROMPTS[1], long)
    seen: list[tuple[int, int]] = []  # (forward pass, rows in the batch) each time job 1 sends text
    finished_at: list[int] = []  # the pass in which job 0 finished
    c = Collector()
    jobs = [c.job(tok, p, short if k == 0 else long) for k, p in enumerate(prompts)]
    sinks = [jobs[0].sink, jobs[1].sink]
    jobs[0].sink = lambda i, d, f: (f and finished_at.append(engine.stats.forward_passes), sinks[0](i, d, f))
    jobs[1].sink = lambda *a: (seen.append((engine.stats.forward_passes, len(engine._batch))), sinks[1](*a))
    for j in jobs:
        engine.submit(j)
    deadline = time.monotonic() + 10
    while (0, 0) not in c.finish and time.monotonic() < deadline:
        time.sleep(0.005)
    late = [c.job(tok, PROMPTS[1], long) for _ in range(2)]
    for j in late:
        engine.submit(j)  # they join while the done row rides along
    c.wait()
    assert [c.text(k) for k in range(6)] == alone and [c.text(6), c.text(7)] == [late_alone] * 2
    assert c.finish[(0, 0)] is Finish.LENGTH
    after = [rows for step, rows in seen if step > finished_at[0]]
    assert after[0] == 6, "the done row rode along in the steps after it finished"
    assert max(after) == 7, "it left the batch when the late ones joined"


def test_stacking_roomy_layers_left_pads_each_with_zeros():
    from services.inference.kvcache import RoomyLayer

    torch.manual_seed(0)
    layers, parts = [], []
    for rows, width in ((2, 7), (3, 4), (1, 9)):
        layer, k = RoomyLayer(), torch.randn(rows, 2, width, 4)
        layer.update(k, -k)
        layers.append(layer)
        parts.append(torch.cat([torch.zeros(rows, 2, 9 - width, 4), k], 2))
    expected = torch.cat(parts)
    layers[0].stack(layers, 9)
    assert torch.equal(layers[0].keys, expected) and torch.equal(layers[0].values, -expected)
    step = torch.randn(6, 2, 1, 4)  # the next decoding step appends in place
    keys, values = layers[0].update(step, -step)
    assert torch.equal(keys, torch.cat([expected, step], 2)) and torch.equal(values, -keys)


def test_gpt2_gelu_is_swapped_for_the_one_kernel_gelu_with_the_same_outputs(tiny):
    import copy

    from transformers.activations import GELUTanh, NewGELUActivation

    from services.inference.engine import _fuse_activations

    model, tok = tiny
    original = copy.deepcopy(model)
    original.apply(lambda m: [setattr(m, n, NewGELUActivation()) for n, c in m.named_children() if type(c) is GELUTanh])
    fused = copy.deepcopy(original)
    _fuse_activations(fused)
    kinds = {type(m) for m in fused.modules()}
    assert GELUTanh in kinds and NewGELUActivation not in kinds
    ids = torch.tensor([tok(PROMPTS[3])["input_ids"]])
    with torch.inference_mode():
        assert torch.allclose(original(ids).logits, fused(ids).logits, atol=1e-5)
