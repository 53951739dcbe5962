"""A few LoRA steps on the default base model, SmolLM2-135M-Instruct, through its chat template (slow: ~1-2 min)."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from doppel.model import ModelManifest
from doppel.store import open_store
from doppel.transcript import Transcript
from services.trainer import basemodels, finetune, models
from services.trainer.recipe import TrainRequest, resolve
from services.trainer.samples import split_sessions, tokenise
from support.chats import chat

pytestmark = pytest.mark.slow


def test_lora_steps_on_smollm2_publish_a_loadable_adapter(tmp_path):
    store = open_store(f"file://{tmp_path}/store")
    recipe = resolve(TrainRequest(dataset_id="d", speakers=["Alice"], hyperparameters={
        "max_steps": 4, "batch_size": 4, "block_size": 128, "learning_rate": 1e-3, "save_every": 2}))
    base = basemodels.load_base_model(recipe.base_model, store, cache_dir=tmp_path / "cache")
    transcript = Transcript(base.tokenizer, recipe.speakers)
    assert transcript.kind == "chat" and transcript.end == "<|im_end|>"
    split = split_sessions(chat(conversations=2, messages=60), recipe.speakers, session_gap=timedelta(hours=6),
                           held_out_fraction=0.1)
    train, held_out = tokenise(split.train, transcript, 128), tokenise(split.held_out, transcript, 128)
    pad = base.tokenizer.pad_token_id
    base_loss, tokens = finetune.held_out_loss(base.model, held_out, pad_id=pad)
    model = finetune.prepare_model(base.model, recipe)
    checkpoints = []
    result = finetune.train(model, train, recipe, pad_id=pad,
                            callbacks=finetune.Callbacks(on_checkpoint=lambda s, b: checkpoints.append(s)))
    assert result.step == 4 and checkpoints == [2, 4] and all(math.isfinite(loss) for _, loss in result.losses)
    loss, _ = finetune.held_out_loss(model, held_out, pad_id=pad)
    assert tokens > 0 and loss < base_loss  # the repertoire is easy to learn, even in 4 steps
    manifest = ModelManifest(
        id="model-smol", name="Alice", base_model=recipe.base_model, base_source=base.source,
        base_store_prefix=base.store_prefix, method="lora", transcript=transcript.kind, speakers=["Alice"],
        participants=["Alice", "Bob"], dataset_id="d", run_id="r", recipe=recipe,
    )
    models.publish(store, manifest, model, base.tokenizer)
    local = tmp_path / "download"
    for prefix, into in ((base.store_prefix, local / "base"), ("models/model-smol/", local / "model")):
        for info in store.list(prefix):
            store.get_file(info.key, into / info.key.removeprefix(prefix))
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(local / "base", dtype=torch.float32), local / "model")
    again, _ = finetune.held_out_loss(reloaded, held_out, pad_id=pad)
    assert again == pytest.approx(loss, rel=1e-3)
