"""services.trainer.ranks: a run on two `gloo` processes launched by torchrun takes the steps one process takes,
rank 0 alone reports and checkpoints, and a rank that dies fails the launch with the reason; its checkpoint resumes."""

from __future__ import annotations

import math
import os
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

from doppel.errors import DoppelError
from doppel.model import SampleText
from doppel.tiny import tiny_model
from doppel.transcript import Transcript
from services.trainer import finetune, previews, ranks
from services.trainer.basemodels import from_folder
from services.trainer.recipe import Hyperparameters, Recipe, TrainRequest, resolve
from services.trainer.samples import split_sessions, tokenise
from support.chats import chat
from support.processes import rank_pid

BLOCK = 64
# Losses of one and of two processes agree to this (relative): the ranks pad their shares to other widths
# and sum in another order, so float results differ in the last bits and grow a little over the steps
# (measured over 12 steps of the tiny model: losses within 6e-6, the trained weights' norms 3e-5).
SAME = 1e-4


def recipe(method: str = "lora", **hp: Any) -> Recipe:
    hp = {"block_size": BLOCK, "batch_size": 6, "gradient_accumulation_steps": 2, "max_steps": 12, "learning_rate": 1e-2,
          "save_every": 4, "sample_every": 6, "seed": 3, **hp}
    return resolve(TrainRequest(dataset_id="ds", speakers=["Alice"], base_model="tiny", method=method,  # type: ignore[arg-type]
                                hyperparameters=Hyperparameters(**hp)))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ranks.Job]:
    """A folder holding the tiny base (no dropout: every rank and the lone process then compute the same function),
    and a job on the learnable chat."""
    texts = [f"{m.sender}: {m.text}" for c in chat() for m in c.messages]
    model, tokenizer = tiny_model(texts, block_size=BLOCK)
    model.config.update({"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0})
    folder = tmp_path_factory.mktemp("base")
    ranks.save_base(folder, model, tokenizer)
    split = split_sessions(chat(), ["Alice"], session_gap=timedelta(hours=6), held_out_fraction=0.1)
    transcript = Transcript(tokenizer, ["Alice"])
    found = previews.openings(split.held_out, ["Alice"], [])
    job = ranks.Job(samples=tokenise(split.train, transcript, BLOCK), held_out=tokenise(split.held_out, transcript, BLOCK)[:8],
                    openings=found, recipe=recipe(), pad_id=tokenizer.pad_token_id, checkpoint=None)
    return folder, job


def apart(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """How far weights `a` are from `b`, as a whole (one weight alone can differ more: Adam magnifies the float
    noise of a gradient near 0)."""
    return math.sqrt(sum(float((a[k] - w).norm()) ** 2 for k, w in b.items()) / sum(float(w.norm()) ** 2 for w in b.values()))


class Heard:
    """What the flow's callbacks were handed."""

    def __init__(self, on_step: Any = None):
        self.steps: list[finetune.Progress] = []
        self.checkpoints: dict[int, bytes] = {}
        self.samples: list[tuple[int, list[SampleText], float]] = []
        self.on_step = on_step

    def callbacks(self) -> finetune.Callbacks:
        def step(p: finetune.Progress) -> None:
            self.steps.append(p)
            if self.on_step:
                self.on_step(p)

        return finetune.Callbacks(on_step=step, on_checkpoint=self.checkpoints.__setitem__)

    def on_samples(self, step: int, texts: list[SampleText], loss: float) -> None:
        self.samples.append((step, texts, loss))


@pytest.fixture
def gloo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranks on the CPU, with gloo, even on a machine with GPUs."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def launch(base: tuple[Path, ranks.Job], tmp: Path, devices: int, heard: Heard, **change: Any) -> tuple[finetune.Result, dict]:
    folder, job = base
    tmp.mkdir()
    (tmp / "base").symlink_to(folder / "base")
    return ranks.train(tmp, ranks.Job(**{**job.__dict__, **change}), devices, heard.callbacks(), heard.on_samples, threads=1)


@pytest.mark.usefixtures("gloo")
def test_two_ranks_take_the_steps_one_process_takes(base: tuple[Path, ranks.Job], tmp_path: Path) -> None:
    one, two = Heard(), Heard()
    alone, weights_alone = launch(base, tmp_path / "one", 1, one)
    shared, weights_shared = launch(base, tmp_path / "two", 2, two)
    assert [s for s, _ in shared.losses] == [s for s, _ in alone.losses] == list(range(1, 13))
    assert [loss for _, loss in shared.losses] == pytest.approx([loss for _, loss in alone.losses], rel=SAME)
    assert alone.losses[-1][1] < alone.losses[0][1] * 0.8  # it learnt something, the same on both
    assert weights_shared.keys() == weights_alone.keys() and any("lora" in k for k in weights_alone)
    assert apart(weights_shared, weights_alone) < SAME
    # rank 0 alone reported: each step once, the checkpoints, and the samples at step 6
    assert [p.step for p in two.steps] == list(range(1, 13)) and all(p.total == 12 for p in two.steps)
    assert [p.loss for p in two.steps] == [loss for _, loss in shared.losses]
    assert sorted(two.checkpoints) == [4, 8, 12]
    assert [(step, len(texts)) for step, texts, _ in two.samples] == [(6, len(base[1].openings))] and two.samples[0][2] > 0
    assert not list((tmp_path / "two").glob("checkpoint-*")), "relayed checkpoints are not left behind"


@pytest.mark.usefixtures("gloo")
def test_two_ranks_match_the_loop_without_torchrun(base: tuple[Path, ranks.Job], tmp_path: Path) -> None:
    """The launched path against finetune.train in this process, with no process group at all."""
    folder, job = base
    model, _ = from_folder(folder / "base", torch.float32)
    torch.manual_seed(job.recipe.seed)
    model = finetune.prepare_model(model, job.recipe)
    here = finetune.train(model, job.samples, job.recipe, pad_id=job.pad_id)
    shared, _ = launch(base, tmp_path / "two", 2, Heard())
    assert [loss for _, loss in shared.losses] == pytest.approx([loss for _, loss in here.losses], rel=SAME)


@pytest.mark.usefixtures("gloo")
def test_a_killed_rank_fails_the_launch_and_its_checkpoint_resumes(base: tuple[Path, ranks.Job], tmp_path: Path) -> None:
    killed = tmp_path / "killed"

    def kill_at_step_6(p: finetune.Progress) -> None:
        if p.step == 6:
            os.kill(rank_pid(os.getpid(), 1), signal.SIGKILL)

    first = Heard(on_step=kill_at_step_6)
    with pytest.raises(DoppelError, match=r"training on 2 devices failed: rank 1 .*exited with -9 .*SIGKILL"):
        launch(base, killed, 2, first)
    assert 4 in first.checkpoints and max(first.checkpoints) < 12
    resumed_at = max(first.checkpoints)
    again = Heard()
    resumed, _ = launch(base, tmp_path / "again", 2, again, checkpoint=first.checkpoints[resumed_at])
    assert [p.step for p in again.steps] == list(range(resumed_at + 1, 13))
    plain, _ = launch(base, tmp_path / "plain", 2, Heard())
    assert [loss for _, loss in resumed.losses] == pytest.approx([loss for _, loss in plain.losses], rel=SAME)


@pytest.mark.usefixtures("gloo")
def test_a_full_fine_tune_is_sharded_and_takes_the_steps_one_process_takes(base: tuple[Path, ranks.Job], tmp_path: Path) -> None:
    """FSDP: each rank holds a share of the weights and Adam's moments; the losses, the trained weights and the
    checkpoints are those of one process, and a checkpoint of either resumes on the other."""
    full = recipe("full", learning_rate=1e-3)
    one, two = Heard(), Heard()
    alone, weights_alone = launch(base, tmp_path / "one", 1, one, recipe=full)
    shared, weights_shared = launch(base, tmp_path / "two", 2, two, recipe=full)
    assert [loss for _, loss in shared.losses] == pytest.approx([loss for _, loss in alone.losses], rel=SAME)
    assert alone.losses[-1][1] < alone.losses[0][1] * 0.8
    assert weights_shared.keys() == weights_alone.keys() and len(weights_alone) > 20  # every weight, whole
    assert all(weights_shared[k].shape == w.shape for k, w in weights_alone.items())
    assert apart(weights_shared, weights_alone) < SAME
    assert sorted(two.checkpoints) == [4, 8, 12] and [p.step for p in two.steps] == list(range(1, 13))
    assert one.samples and not two.samples, "a sharded model samples only at the end, in the flow"
    # a checkpoint of the sharded run resumes on one process, and one process's on two sharded ranks
    on_one, _ = launch(base, tmp_path / "to-one", 1, Heard(), recipe=full, checkpoint=two.checkpoints[4])
    on_two, _ = launch(base, tmp_path / "to-two", 2, Heard(), recipe=full, checkpoint=one.checkpoints[8])
    assert [loss for _, loss in on_one.losses] == pytest.approx([loss for _, loss in alone.losses], rel=SAME)
    assert [loss for _, loss in on_two.losses] == pytest.approx([loss for _, loss in alone.losses], rel=SAME)


@pytest.mark.usefixtures("gloo")
def test_an_error_in_a_rank_is_the_reason_the_launch_gives(base: tuple[Path, ranks.Job], tmp_path: Path) -> None:
    fp16 = recipe("full", precision="fp16")
    with pytest.raises(DoppelError, match=r"training on 2 devices failed: rank \d .*exited with 1 .*: doppel.errors.DoppelError: "
                                          r"a full fine-tune on several devices trains in bf16 or fp32, not fp16"):
        launch(base, tmp_path / "fp16", 2, Heard(), recipe=fp16)


def torchrun_report(folder: Path, failures: dict[int, tuple[int, Exception | None]]) -> Path:
    """A log ending as torchrun's does, written by torch's own code in a new `folder` (a rank's error file is
    read by its name): `failures` maps a rank to its exit code and the exception it recorded (`record`), if any."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ErrorHandler, ProcessFailure

    folder.mkdir()
    found = {}
    for rank, (exitcode, error) in failures.items():
        file = folder / f"error-{rank}.json"
        if error is not None:
            os.environ["TORCHELASTIC_ERROR_FILE"] = str(file)
            try:
                raise error
            except type(error) as e:
                ErrorHandler().record_exception(e)
            finally:
                del os.environ["TORCHELASTIC_ERROR_FILE"]
        found[rank] = ProcessFailure(local_rank=rank, pid=100 + rank, exitcode=exitcode, error_file=str(file))
    log = folder / "launch.log"
    log.write_text(f"torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
                   f"{ChildFailedError('services.trainer.ranks', found).format_msg()}\n")
    return log


def test_the_reason_is_the_rank_that_died_not_the_one_that_lost_it(tmp_path: Path) -> None:
    """torchrun's root cause is the earliest failure to the second: rank 0, which lost its peer in the same
    second as rank 1 was killed, is named first; the reason still names rank 1."""
    lost = RuntimeError("[../gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:7320: Connection reset by peer")
    log = torchrun_report(tmp_path / "killed", {0: (-signal.SIGTERM, lost), 1: (-signal.SIGKILL, None)})
    assert "rank      : 0" in log.read_text().split("Root Cause")[1], "torchrun itself names rank 0 first"
    assert ranks._reason(log) == "rank 1 (local_rank: 1) exited with -9 (pid: 101) (SIGKILL): Signal 9 (SIGKILL) received by PID 101"
    # both stopped by torchrun (a cancelled run): its root cause stands
    stopped = torchrun_report(tmp_path / "stopped", {0: (-signal.SIGTERM, None), 1: (-signal.SIGTERM, None)})
    assert ranks._reason(stopped).startswith("rank 0 (local_rank: 0) exited with -15 (pid: 100) (SIGTERM)")
    # a rank's own exception beats its peer's lost connection, whichever torchrun saw first
    broke = torchrun_report(tmp_path / "broke", {0: (1, lost), 1: (1, ValueError("bad batch"))})
    assert ranks._reason(broke) == "rank 1 (local_rank: 1) exited with 1 (pid: 101): ValueError: bad batch"
    # no report (torchrun itself failed): its last line
    (bare := tmp_path / "bare.log").write_text("starting\nValueError: unrecognised arguments: --bad\n\n")
    assert ranks._reason(bare) == "ValueError: unrecognised arguments: --bad"


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_gpus_take_the_steps_one_takes(base: tuple[Path, ranks.Job], tmp_path: Path, method: str) -> None:
    """The same on GPUs with NCCL (`pytest -m gpu tests/trainer/test_ranks.py`), DDP and FSDP; fp32, so the CPU's tolerance."""
    fp32 = recipe(method, precision="fp32", learning_rate=1e-2 if method == "lora" else 1e-3)
    alone, _ = launch(base, tmp_path / "one", 1, Heard(), recipe=fp32)
    shared, _ = launch(base, tmp_path / "two", 2, Heard(), recipe=fp32)
    assert [loss for _, loss in shared.losses] == pytest.approx([loss for _, loss in alone.losses], rel=SAME)


def test_several_machines_need_a_rendezvous_and_a_shared_folder(tmp_path: Path) -> None:
    from doppel.config import Settings
    from doppel.errors import FailedPrecondition
    from services.trainer.flow import meeting_for

    assert meeting_for(Settings(home=tmp_path), "run", "lora") == ranks.Meeting()
    with pytest.raises(FailedPrecondition, match="DOPPEL_TRAIN_NODES=2 needs DOPPEL_TRAIN_RENDEZVOUS .* and DOPPEL_TRAIN_JOBS"):
        meeting_for(Settings(home=tmp_path, train_nodes=2, train_rendezvous="10.0.0.1:29400"), "run", "lora")
    both = Settings(home=tmp_path, train_nodes=2, train_rendezvous="10.0.0.1:29400", train_jobs=tmp_path)
    assert meeting_for(both, "run", "lora") == ranks.Meeting(2, "10.0.0.1:29400", "run-1")
    with pytest.raises(DoppelError, match="QLoRA trains on one device"):
        meeting_for(both, "run", "qlora")
    # what every machine runs: torchrun meeting the others at the rendezvous, under the attempt's id
    argv = ranks.command(tmp_path, 4, meeting_for(both, "run", "lora"))
    assert argv[1:3] == ["-m", "torch.distributed.run"] and argv[-3:] == ["-m", "services.trainer.ranks", str(tmp_path)]
    assert {"--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=10.0.0.1:29400", "--rdzv-id=run-1",
            "--nproc-per-node=4"} <= set(argv) and "--standalone" not in argv
