"""services.trainer.finetune: batch order, collation, the training loop, resuming, held-out loss, OOM."""

from __future__ import annotations

import io
import math
import random
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from doppel.errors import DoppelError
from doppel.tiny import tiny_model
from doppel.transcript import Transcript
from services.trainer import finetune
from services.trainer.finetune import GROUP, Callbacks, batch_order, collate, held_out_loss, total_steps
from services.trainer.recipe import Hyperparameters, LoraSettings, Recipe, TrainRequest, resolve
from services.trainer.samples import IGNORE, Sample, split_sessions, tokenise
from support.chats import chat

BLOCK = 64
CPU = torch.device("cpu")


def recipe(method: str = "lora", *, lora: dict | None = None, **hp: Any) -> Recipe:
    hp.setdefault("block_size", BLOCK)
    return resolve(TrainRequest(dataset_id="ds", speakers=["Alice"], base_model="tiny", method=method,  # type: ignore[arg-type]
                                lora=LoraSettings(**(lora or {})), hyperparameters=Hyperparameters(**hp)))


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [f"{m.sender}: {m.text}" for c in chat() for m in c.messages]


@pytest.fixture(scope="module")
def data(texts: list[str]) -> tuple[list[Sample], list[Sample], int]:
    """(train samples, held-out samples, pad id) of the learnable chat, plain lines, BLOCK tokens."""
    _, tokenizer = tiny_model(texts, block_size=BLOCK)
    transcript = Transcript(tokenizer, ["Alice"])
    split = split_sessions(chat(), ["Alice"], session_gap=timedelta(hours=6), held_out_fraction=0.1)
    return tokenise(split.train, transcript, BLOCK), tokenise(split.held_out, transcript, BLOCK), tokenizer.pad_token_id


def fresh(texts: list[str], r: Recipe, *, dropout: bool = True) -> Any:
    """The tiny model, same weights every time (seed 0), prepared for `r`."""
    model, _ = tiny_model(texts, seed=0, block_size=BLOCK)
    if not dropout:
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    return finetune.prepare_model(model, r)


@torch.no_grad()
def mean_loss(model: Any, samples: list[Sample]) -> float:
    """Cross-entropy per scored token, one unpadded sample at a time (the label at position 0 has no context)."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for s in samples:
        logits = model(input_ids=torch.tensor([s.input_ids])).logits[0, :-1]
        labels = torch.tensor(s.labels[1:])
        total += float(F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum"))
        count += int((labels != IGNORE).sum())
    model.train(was)
    return total / count


def trainable(model: Any) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}


# --- batch order ---------------------------------------------------------------------------


def test_batch_order_is_a_function_of_seed_and_epoch() -> None:
    lengths = [random.Random(1).randint(5, 60) for _ in range(300)]
    a = batch_order(lengths, 4, seed=3, epoch=0)
    assert a == batch_order(lengths, 4, seed=3, epoch=0)
    assert a != batch_order(lengths, 4, seed=3, epoch=1)
    assert a != batch_order(lengths, 4, seed=4, epoch=0)
    assert batch_order(lengths, 4, seed=3, epoch=1) == batch_order(lengths, 4, seed=3, epoch=1)


@pytest.mark.parametrize(("n", "batch_size"), [(1, 4), (7, 8), (50, 8), (1000, 3), (3 * 4 * GROUP + 5, 4)])
def test_batch_order_covers_every_index_once(n: int, batch_size: int) -> None:
    lengths = [random.Random(n).randint(1, 100) for _ in range(n)]
    for epoch in range(3):
        batches = batch_order(lengths, batch_size, seed=0, epoch=epoch)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(n))
        assert all(1 <= len(b) <= batch_size for b in batches)
        windows = math.ceil(n / (batch_size * GROUP))
        assert sum(len(b) < batch_size for b in batches) <= windows  # only a window's last batch is short


def test_one_window_is_sorted_by_length_then_cut_into_batches() -> None:
    lengths = list(range(10, 60))
    random.Random(5).shuffle(lengths)  # distinct lengths: the grouping is fully determined
    by_length = sorted(range(50), key=lambda i: lengths[i])
    batches = batch_order(lengths, 8, seed=0, epoch=0)
    assert sorted(map(tuple, batches)) == sorted(tuple(by_length[k : k + 8]) for k in range(0, 50, 8))
    assert [len(b) for b in batches].count(2) == 1
    # batches are shuffled, not served shortest first
    assert batches != [by_length[k : k + 8] for k in range(0, 50, 8)]


def test_batches_are_grouped_by_length_within_each_window() -> None:
    """Two lengths, three windows: sorted windows leave at most one mixed batch each."""
    batch_size, windows = 4, 3
    n = windows * batch_size * GROUP
    rng = random.Random(0)
    lengths = [rng.choice([10, 20]) for _ in range(n)]
    batches = batch_order(lengths, batch_size, seed=0, epoch=0)
    mixed = sum(len({lengths[i] for i in b}) > 1 for b in batches)
    assert mixed <= windows
    # the same samples batched without grouping would mostly mix
    shuffled = list(range(n))
    rng.shuffle(shuffled)
    ungrouped = [shuffled[k : k + batch_size] for k in range(0, n, batch_size)]
    assert sum(len({lengths[i] for i in b}) > 1 for b in ungrouped) > n // batch_size // 2


# --- collate and step counts ---------------------------------------------------------------


def test_collate_cuts_each_sample_after_its_last_trained_token_and_pads_to_the_longest() -> None:
    samples = [Sample([5, 6, 7], [IGNORE, 6, 7]), Sample([8, 9, 10, 11, 12], [IGNORE, IGNORE, 10, 11, IGNORE])]
    batch = collate(samples, pad_id=0, device=CPU)
    # token 7 predicts nothing trained, nor do 11 and 12: the rows end at the last token that does
    assert batch["input_ids"].tolist() == [[5, 6, 0], [8, 9, 10]]
    assert batch["targets"].tolist() == [[6, 7, IGNORE], [IGNORE, 10, 11]]  # the labels, shifted
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert all(t.dtype == torch.long for t in batch.values())
    single = collate([Sample([1, 2], [1, 2])], pad_id=99, device=CPU)  # a label at 0 has no token before it
    assert single["input_ids"].tolist() == [[1]] and single["targets"].tolist() == [[2]]


def test_total_steps_follows_epochs_max_steps_and_accumulation() -> None:
    assert total_steps(100, recipe(batch_size=8)) == 13  # ceil(100 / 8)
    assert total_steps(100, recipe(batch_size=8, gradient_accumulation_steps=2)) == 7  # ceil(13 / 2)
    assert total_steps(100, recipe(batch_size=8, gradient_accumulation_steps=2, epochs=2)) == 14
    assert total_steps(100, recipe(batch_size=8, gradient_accumulation_steps=2, epochs=1.5)) == 11  # ceil(10.5)
    assert total_steps(100, recipe(batch_size=8, epochs=3, max_steps=5)) == 5
    assert total_steps(3, recipe(batch_size=8, gradient_accumulation_steps=4)) == 1
    assert total_steps(100, recipe(batch_size=8, epochs=0.01)) == 1


def test_a_run_makes_total_steps_steps(texts: list[str], data: tuple[list[Sample], list[Sample], int]) -> None:
    train, _, pad = data
    r = recipe("lora", batch_size=16, gradient_accumulation_steps=2, epochs=1.5, save_every=1000)
    steps, saved = [], []
    result = finetune.train(fresh(texts, r), train, r, pad_id=pad,
                            callbacks=Callbacks(on_step=lambda p: steps.append((p.step, p.total)),
                                                on_checkpoint=lambda s, b: saved.append(s)))
    expected = math.ceil(1.5 * math.ceil(math.ceil(len(train) / 16) / 2))
    assert result.total == result.step == expected
    assert steps == [(k, expected) for k in range(1, expected + 1)]
    assert saved == [expected]  # at the end
    assert [s for s, _ in result.losses] == list(range(1, expected + 1))


def test_no_samples_is_an_error(texts: list[str]) -> None:
    r = recipe("lora", max_steps=1)
    with pytest.raises(DoppelError, match="no training samples"):
        finetune.train(fresh(texts, r), [], r, pad_id=0)


# --- learning --------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "lr", "drop"), [("lora", 1e-2, 0.8), ("full", 3e-3, 0.35)])
def test_loss_falls_on_a_learnable_chat(texts: list[str], data: tuple[list[Sample], list[Sample], int],
                                        method: str, lr: float, drop: float) -> None:
    train, held, pad = data
    r = recipe(method, max_steps=30, batch_size=8, learning_rate=lr, warmup_ratio=0.0)
    model = fresh(texts, r)
    before, n = held_out_loss(model, held, pad_id=pad)
    result = finetune.train(model, train, r, pad_id=pad)
    after, n_after = held_out_loss(model, held, pad_id=pad)
    assert n == n_after > 0
    assert after < before - drop if method == "lora" else after < before * drop
    first = sum(loss for _, loss in result.losses[:5]) / 5
    last = sum(loss for _, loss in result.losses[-5:]) / 5
    assert last < first
    assert not model.training  # left in eval mode


def test_lora_trains_only_the_adapter(texts: list[str], data: tuple[list[Sample], list[Sample], int]) -> None:
    train, _, pad = data
    r = recipe("lora", max_steps=3, learning_rate=1e-2)
    model = fresh(texts, r)
    frozen = {k: p.detach().clone() for k, p in model.named_parameters() if not p.requires_grad}
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in k for k in names)
    before = trainable(model)
    finetune.train(model, train, r, pad_id=pad)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    assert any(not torch.equal(after[k], v) for k, v in before.items())


# --- resuming --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "full"])
def test_resuming_from_a_checkpoint_reproduces_the_uninterrupted_run(
    texts: list[str], data: tuple[list[Sample], list[Sample], int], method: str
) -> None:
    train, _, pad = data
    # warmup, a cosine schedule, dropout and more than one epoch: every piece of state matters
    r = recipe(method, max_steps=12, save_every=4, batch_size=16, learning_rate=3e-3, warmup_ratio=0.25,
               lr_schedule="cosine", lora={"dropout": 0.1})
    assert len(train) < 12 * 16
    saved: dict[int, bytes] = {}
    model = fresh(texts, r)
    whole = finetune.train(model, train, r, pad_id=pad, callbacks=Callbacks(on_checkpoint=saved.__setitem__))
    assert sorted(saved) == [4, 8, 12]
    assert whole.step == 12 and [s for s, _ in whole.losses] == list(range(1, 13))

    torch.manual_seed(1234)  # a different LoRA initialisation: the checkpoint must bring the weights
    resumed_model = fresh(texts, r)
    steps: list[int] = []
    resumed = finetune.train(resumed_model, train, r, pad_id=pad, checkpoint=saved[8],
                             callbacks=Callbacks(on_step=lambda p: steps.append(p.step)))
    assert steps == [9, 10, 11, 12]
    assert resumed.step == 12
    assert [s for s, _ in resumed.losses] == list(range(1, 13))
    assert resumed.losses[:8] == whole.losses[:8]
    for (_, a), (_, b) in zip(resumed.losses[8:], whole.losses[8:], strict=True):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7)
    want, got = trainable(model), trainable(resumed_model)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.allclose(got[k], want[k], rtol=1e-6, atol=1e-7), k
    # and the model did move after step 8: the comparison is not between untouched weights
    at8 = torch.load(io.BytesIO(saved[8]), weights_only=False)["weights"]
    assert any(not torch.allclose(at8[k], want[k]) for k in want)


# --- gradient accumulation ---------------------------------------------------------------------


def test_gradient_accumulation_matches_one_big_batch(texts: list[str], data: tuple[list[Sample], list[Sample], int]) -> None:
    train, _, pad = data
    # eight samples of different lengths: per-micro-batch means would differ from the per-token mean
    samples = sorted(train, key=lambda s: len(s.input_ids))[:: max(1, len(train) // 8)][:8]
    assert len(samples) == 8 and len({s.trained_tokens for s in samples}) > 2
    runs = []
    for batch_size, accum in ((8, 1), (4, 2)):
        r = recipe("full", max_steps=2, batch_size=batch_size, gradient_accumulation_steps=accum,
                   learning_rate=1e-3, warmup_ratio=0.0, lr_schedule="constant")
        model = fresh(texts, r, dropout=False)
        runs.append((finetune.train(model, samples, r, pad_id=pad).losses, trainable(model)))
    (big, w_big), (acc, w_acc) = runs
    assert acc[0][1] == pytest.approx(big[0][1], rel=1e-5)
    assert acc[1][1] == pytest.approx(big[1][1], rel=1e-4)  # same gradient, so the same update
    # the per-token mean over the whole step, as computed by hand
    assert big[0][1] == pytest.approx(mean_loss(fresh(texts, recipe("full"), dropout=False), samples), rel=1e-5)


# --- held-out loss -----------------------------------------------------------------------------


def test_held_out_loss_of_nothing_is_nan(texts: list[str]) -> None:
    loss, n = held_out_loss(fresh(texts, recipe("full")), [], pad_id=0)
    assert math.isnan(loss) and n == 0


def test_held_out_loss_is_the_mean_over_trained_tokens(texts: list[str], data: tuple[list[Sample], list[Sample], int]) -> None:
    _, held, pad = data
    model = fresh(texts, recipe("full"))
    model.train()
    got, n = held_out_loss(model, held, pad_id=pad, batch_size=8)
    assert model.training  # the mode is restored
    count = sum(sum(label != IGNORE for label in s.labels[1:]) for s in held)
    assert n == count > 0
    assert math.isfinite(got)
    assert got == pytest.approx(mean_loss(model, held), rel=1e-5)
    assert held_out_loss(model, held, pad_id=pad, batch_size=1) == (pytest.approx(got, rel=1e-5), n)


# --- out of memory -----------------------------------------------------------------------------

OOM_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import torch
    torch.set_num_threads(1)
    from services.trainer import finetune
    from doppel.tiny import tiny_model
    from services.trainer.recipe import Hyperparameters, TrainRequest, resolve
    from services.trainer.samples import Sample

    block, batch = 2048, 64
    model, _ = tiny_model(["Alice: haha yes", "Bob: what are you doing"] * 20, block_size=block)
    recipe = resolve(TrainRequest(dataset_id="ds", speakers=["Alice"], base_model="tiny", method="full",
        hyperparameters=Hyperparameters(max_steps=1, batch_size=batch, block_size=block, precision="fp32")))
    model = finetune.prepare_model(model, recipe)
    samples = [Sample([5] * block, [5] * block) for _ in range(batch)]
    # the logits alone are batch * block * 2048 * 4 bytes = 1 GiB; allow 256 MiB more than now
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + 256 * 2**20, resource.RLIM_INFINITY))
    try:
        finetune.train(model, samples, recipe, pad_id=0)
    except finetune.OutOfMemory as e:
        print("OUT OF MEMORY:", e)
        sys.exit(0)
    print("trained without running out of memory")
    sys.exit(1)
    """
)


def test_a_real_allocation_failure_is_out_of_memory() -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", OOM_SCRIPT],
        cwd=root, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("OUT OF MEMORY:")]
    assert "can't allocate memory" in line or "out of memory" in line.lower()
    assert "LoRA" in line
    assert "batch size" in line
    assert "block size" in line


def test_lora_layers_adapts_the_last_layers_only_and_the_backward_pass_stops_there(texts: list[str],
                                                                                    data: tuple[list[Sample], list[Sample], int]) -> None:
    """`lora_layers=1` on the 2-layer tiny GPT-2: adapters in layer 1 alone, every projection of it;
    layer 0 gets no gradient at all (autograd does not go below the first adapted layer)."""
    train, _, pad = data
    model = fresh(texts, recipe("lora", lora={"layers": 1}))
    adapted = {name.split(".lora_A")[0] for name, _ in model.named_parameters() if ".lora_A" in name}
    assert adapted and all(".h.1." in name for name in adapted)
    assert {name.rsplit(".", 1)[-1] for name in adapted} == {"c_attn", "c_proj", "c_fc"}
    everything = {name.split(".lora_A")[0] for name, _ in fresh(texts, recipe("lora")).named_parameters() if ".lora_A" in name}
    assert adapted == {n for n in everything if ".h.1." in n}
    seen: list[str] = []
    for name, module in model.named_modules():
        if name.endswith(("h.0", "h.1")):
            module.register_full_backward_hook(lambda m, gi, go, name=name: seen.append(name))
    loss, n = finetune.token_loss(model, collate(train[:4], pad, CPU, pack=True))
    loss.backward()
    assert seen == [n for n in seen if n.endswith("h.1")] and seen
