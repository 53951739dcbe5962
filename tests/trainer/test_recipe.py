"""services.trainer.recipe: presets, overrides, defaults, and request validation."""

from __future__ import annotations

import pytest

from doppel.errors import InvalidArgument
from services.trainer.recipe import (
    DEFAULT_BASE,
    PRESETS,
    Hyperparameters,
    LoraSettings,
    Recipe,
    TrainRequest,
    parse_request,
    resolve,
)


def request(**kw: object) -> TrainRequest:
    return TrainRequest(dataset_id="ds1", speakers=kw.pop("speakers", ["Alice"]), **kw)  # type: ignore[arg-type]


def test_default_preset_gives_the_class_defaults() -> None:
    r = resolve(request())
    assert r == Recipe(dataset_id="ds1", speakers=["Alice"], base_model=DEFAULT_BASE, method="lora",
                       preset="default", model_name="Alice")
    assert (r.learning_rate, r.batch_size, r.block_size, r.max_steps, r.lora_rank, r.lora_alpha) == (2e-4, 8, 512, None, 16, 32.0)


def test_preset_fills_unset_values() -> None:
    r = resolve(request(preset="quick-cpu"))
    assert (r.max_steps, r.block_size, r.batch_size, r.learning_rate, r.lora_layers) == (14, 256, 8, 2e-3, 10)
    assert r.epochs == 1.0 and r.lora_rank == 16  # what the preset leaves unset keeps the default
    q = resolve(request(preset="quality"))
    assert (q.epochs, q.block_size, q.learning_rate, q.lora_rank, q.lora_alpha) == (3.0, 1024, 1e-4, 32, 64.0)
    assert q.max_steps is None


def test_request_values_override_the_preset() -> None:
    r = resolve(request(
        preset="quality",
        lora=LoraSettings(rank=4, dropout=0.0, target_modules=["c_attn"]),
        hyperparameters=Hyperparameters(block_size=128, learning_rate=1e-3, seed=7, sample_prompts=["hi"],
                                        gradient_checkpointing=False, sample_every=0),
    ))
    assert (r.block_size, r.learning_rate, r.seed, r.lora_rank, r.lora_dropout) == (128, 1e-3, 7, 4, 0.0)
    assert r.lora_target_modules == ["c_attn"]
    assert r.sample_prompts == ["hi"]
    assert r.gradient_checkpointing is False and r.sample_every == 0  # falsy values set on purpose still count
    assert (r.epochs, r.lora_alpha) == (3.0, 64.0)  # not overridden: the preset's


def test_full_fine_tuning_gets_a_gentler_default_learning_rate() -> None:
    assert resolve(request(method="full")).learning_rate == 5e-5
    assert resolve(request(method="lora")).learning_rate == 2e-4
    # a preset's or the request's learning rate wins over the full default
    assert resolve(request(method="full", preset="quality")).learning_rate == 1e-4
    assert resolve(request(method="full", hyperparameters=Hyperparameters(learning_rate=3e-4))).learning_rate == 3e-4


def test_unknown_preset_lists_the_presets() -> None:
    with pytest.raises(InvalidArgument) as e:
        resolve(request(preset="turbo"))
    assert "'turbo'" in str(e.value)
    for name in PRESETS:
        assert name in str(e.value)


def test_model_name_from_speakers_unless_given() -> None:
    assert resolve(request(speakers=["Alice", "Bob"])).model_name == "Alice-Bob"
    assert resolve(request(speakers=["Alice"], model_name="ali")).model_name == "ali"


def test_speakers_are_deduplicated_and_empty_ones_dropped() -> None:
    assert request(speakers=["Alice", "", "Bob", "Alice"]).speakers == ["Alice", "Bob"]


@pytest.mark.parametrize("speakers", [[], [""], ["", ""]])
def test_no_speakers_is_refused(speakers: list[str]) -> None:
    with pytest.raises(InvalidArgument, match=r"speakers: .*name at least one speaker"):
        parse_request({"dataset_id": "ds1", "speakers": speakers})


def test_empty_base_model_means_the_default() -> None:
    assert resolve(request(base_model="")).base_model == DEFAULT_BASE
    assert resolve(request(base_model="tiny")).base_model == "tiny"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"hyperparameters": {"batch_size": 0}}, "hyperparameters.batch_size"),
        ({"hyperparameters": {"learning_rate": -1}}, "hyperparameters.learning_rate"),
        ({"hyperparameters": {"held_out_fraction": 1}}, "hyperparameters.held_out_fraction"),
        ({"hyperparameters": {"block_size": 8}}, "hyperparameters.block_size"),
        ({"hyperparameters": {"lr_schedule": "step"}}, "hyperparameters.lr_schedule"),
        ({"hyperparameters": {"batchsize": 4}}, "hyperparameters.batchsize"),
        ({"lora": {"rank": 0}}, "lora.rank"),
        ({"method": "dora"}, "method"),
        ({"dataset_id": None}, "dataset_id"),
    ],
)
def test_parse_request_errors_name_the_field(patch: dict, field: str) -> None:
    data = {"dataset_id": "ds1", "speakers": ["Alice"], **patch}
    with pytest.raises(InvalidArgument) as e:
        parse_request(data)
    assert str(e.value).startswith("invalid training request: ")
    assert f"{field}: " in str(e.value)


def test_parse_request_reads_the_json_form() -> None:
    r = parse_request({"dataset_id": "ds1", "speakers": ["Alice"], "method": "full",
                       "hyperparameters": {"batch_size": 4, "epochs": 2}})
    assert isinstance(r, TrainRequest)
    assert (r.method, r.hyperparameters.batch_size, r.hyperparameters.epochs) == ("full", 4, 2.0)
    assert parse_request(r) is r
    missing = pytest.raises(InvalidArgument, match="speakers: Field required")
    with missing:
        parse_request({"dataset_id": "ds1"})
