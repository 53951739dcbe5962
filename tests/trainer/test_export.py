"""Exports of a persona (services/trainer/export.py): loaded back with plain transformers and peft, their chat
template rendering as Doppel renders, and bad requests refused with nothing written."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from doppel.errors import AlreadyExists, InvalidArgument
from doppel.model import MODELS, base_folder, model_folder
from doppel.tiny import tiny_model
from doppel.transcript import Transcript, Turn
from services.trainer.export import NOTICE, chat_template, export
from support.chats import CHATML
from support.personas import PARTICIPANTS, TEXTS

torch.set_num_threads(1)
TOLERANCE = 1e-5  # of a logit, fp32 merged weights against the adapter applied at run time


@pytest.fixture(scope="module")
def plain_tokenizer() -> Any:
    return tiny_model(TEXTS[:50], seed=0, block_size=128)[1]


HISTORY = [Turn("Bob", "are you coming?"), Turn("Alice", "haha yes\nin a bit"), Turn("Carol", "me too <|endoftext|>"),
           Turn("Bob", "great")]


def messages(history: list[Turn], persona: str, user: str) -> list[dict[str, str]]:
    """The history as a chat client sends it: the persona's lines the assistant's, unnamed where they may be."""
    out: list[dict[str, str]] = [{"role": "system", "content": "ignored: a persona learned a chat, not instructions"}]
    for t in history:
        if t.speaker == persona:
            out.append({"role": "assistant", "content": t.text})
        elif t.speaker == user:
            out.append({"role": "user", "content": t.text})
        else:
            out.append({"role": "user", "name": t.speaker, "content": t.text})
    return out


@pytest.mark.parametrize("kind", ["plain-eos", "plain", "chat"])
@pytest.mark.parametrize("speakers", [["Alice"], ["Carol", "Alice"]])
def test_the_chat_template_renders_a_conversation_as_doppel_does(plain_tokenizer, kind, speakers):
    tokenizer = copy.deepcopy(plain_tokenizer)
    if kind == "chat":
        tokenizer.chat_template = CHATML
    transcript = Transcript(tokenizer, speakers, kind)
    tokenizer.chat_template = chat_template(transcript, PARTICIPANTS, speakers)
    persona = speakers[0]
    user = next(p for p in PARTICIPANTS if p != persona)  # who an unnamed user message is, by default
    rendered = tokenizer.apply_chat_template(messages(HISTORY, persona, user), tokenize=False, add_generation_prompt=True)
    assert rendered == transcript.prompt(HISTORY, PARTICIPANTS, persona)
    whole = tokenizer.apply_chat_template(messages(HISTORY, persona, user), tokenize=False)
    assert whole == transcript.text(HISTORY, PARTICIPANTS)
    # Another speaker of a group model, and another default user, by name.
    other = speakers[-1]
    again = tokenizer.apply_chat_template(messages(HISTORY, other, "Bob"), tokenize=False, add_generation_prompt=True,
                                          persona=other, user="Bob")
    assert again == transcript.prompt(HISTORY, PARTICIPANTS, other)


@pytest.fixture(scope="module")
def exported(models_store, tmp_path_factory):
    """Model ids, the store, and a function exporting a model as a format into a fresh folder."""
    store, ids, tmp = models_store
    out = tmp_path_factory.mktemp("exports")

    def run(kind: str, fmt: str, **kw) -> Path:
        where = out / f"{kind}-{fmt}-{len(list(out.iterdir()))}"
        export(store, MODELS.get(store, ids[kind]), fmt, where, cache_dir=tmp / "cache", **kw)
        return where

    return ids, store, tmp, run


def served(store, model_id: str, cache: Path) -> Any:
    """The model as the inference service loads it: its base with its adapter applied at run time."""
    manifest = MODELS.get(store, model_id)
    folder = model_folder(store, manifest, cache)
    if not manifest.is_adapter:
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(base_folder(store, manifest, folder, cache), dtype=torch.float32)
    return PeftModel.from_pretrained(base, folder).eval()


def prompt_ids(folder: Path, persona_history: list[dict[str, str]]) -> torch.Tensor:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = tokenizer.apply_chat_template(persona_history, tokenize=False, add_generation_prompt=True)
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])


CHAT = [{"role": "user", "content": "reply 3 ok"}, {"role": "assistant", "content": "and 3"},
        {"role": "user", "content": "message number 4 about things"}]


@pytest.mark.parametrize("kind", ["a0", "group", "full"])
def test_a_merged_model_loads_with_plain_transformers_and_computes_what_doppel_serves(exported, kind):
    ids, store, tmp, run = exported
    folder = run(kind, "merged")
    merged = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    x = prompt_ids(folder, CHAT)
    with torch.no_grad():
        diff = (merged(x).logits - served(store, ids[kind], tmp / "cache")(x).logits).abs().max().item()
    assert diff < TOLERANCE, diff
    about = json.loads((folder / "doppel.json").read_text())
    manifest = MODELS.get(store, ids[kind])
    assert about["speakers"] == manifest.speakers and about["participants"] == PARTICIPANTS
    assert about["model_id"] == ids[kind] and about["format"] == "merged" and about["notice"] == NOTICE
    assert (folder / "NOTICE.txt").read_text().strip() == NOTICE
    # Generation stops where Doppel's turn ends: the stop strings and end tokens travel with the model.
    config = json.loads((folder / "generation_config.json").read_text())
    assert "\nBob:" in config["stop_strings"] and config["eos_token_id"]


def test_a_merged_model_can_be_half_precision(exported):
    _, _, _, run = exported
    folder = run("a0", "merged", dtype="bf16")
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_an_adapter_loads_with_plain_peft_on_its_base(exported):
    ids, store, tmp, run = exported
    folder = run("a1", "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "doppel.json", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()}
    manifest = MODELS.get(store, ids["a1"])
    base = AutoModelForCausalLM.from_pretrained(base_folder(store, manifest, model_folder(store, manifest, tmp / "cache"),
                                                            tmp / "cache"), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, folder).eval()
    x = prompt_ids(folder, CHAT)
    with torch.no_grad():
        assert torch.equal(model(x).logits, served(store, ids["a1"], tmp / "cache")(x).logits)
    assert json.loads((folder / "doppel.json").read_text())["base_model"] == "tiny"


def test_bad_exports_are_refused_and_write_nothing(exported, tmp_path):
    ids, store, tmp, _ = exported
    full, adapter = MODELS.get(store, ids["full"]), MODELS.get(store, ids["a0"])
    cases = [(full, "adapter", {}, InvalidArgument, "full fine-tune"),
             (adapter, "onnx", {}, InvalidArgument, "unknown export format 'onnx'"),
             (adapter, "merged", {"dtype": "f8"}, InvalidArgument, "unknown dtype 'f8'")]
    for manifest, fmt, kw, error, message in cases:
        with pytest.raises(error, match=message):
            export(store, manifest, fmt, tmp_path / "out", cache_dir=tmp / "cache", **kw)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "taken").mkdir()
    with pytest.raises(AlreadyExists, match="exists"):
        export(store, adapter, "merged", tmp_path / "taken", cache_dir=tmp / "cache")
    assert list((tmp_path / "taken").iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["taken"]


@pytest.fixture(scope="module")
def trainer(models_store, tmp_path_factory):
    """The trainer service's address, on a real gRPC server (no runner: nothing here trains)."""
    from support.grpcserver import trainer_server

    server = trainer_server(models_store[0], tmp_path_factory.mktemp("trainer-home"))
    yield server.addr
    server.stop()


def test_the_cli_exports_through_the_trainer_service(trainer, exported, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from doppel.cli.main import app

    ids, store, tmp, _ = exported
    monkeypatch.setenv("DOPPEL_TRAINER_ADDR", trainer)
    out = tmp_path / "jonah"
    done = CliRunner().invoke(app, ["models", "export", ids["a0"], "--format", "merged", "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith(f"exported {ids['a0']} as merged to {out}: ")
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    x = prompt_ids(out, CHAT)
    with torch.no_grad():
        assert (merged(x).logits - served(store, ids["a0"], tmp / "cache")(x).logits).abs().max() < TOLERANCE
    assert [p.name for p in tmp_path.iterdir()] == ["jonah"]  # nothing staged is left beside it
    # Refusals, each saying why, and nothing written.
    for args, message in ((["--out", str(out)], "exists"),
                          (["--out", str(tmp_path / "x"), "--format", "onnx"],
                           "--format must be one of adapter, merged, gguf, ollama"),
                          (["--out", str(tmp_path / "x"), "--format", "gguf"],  # a tokenizer llama.cpp does not know
                           "FAILED_PRECONDITION: llama.cpp's converter could not convert this model"),
                          (["--out", str(tmp_path / "y"), "--dtype", "f8"], "unknown dtype 'f8'")):
        done = CliRunner().invoke(app, ["models", "export", ids["a0"], *args])
        assert done.exit_code != 0 and message in done.stderr, done.output
    done = CliRunner().invoke(app, ["models", "export", ids["full"], "--format", "adapter", "--out", str(tmp_path / "z")])
    assert done.exit_code == 1 and "INVALID_ARGUMENT" in done.stderr and "full fine-tune" in done.stderr
    done = CliRunner().invoke(app, ["models", "export", "model-nope", "--out", str(tmp_path / "z")])
    assert done.exit_code == 1 and "NOT_FOUND" in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["jonah"]


def test_smollm2_merged_computes_what_its_adapter_served_on_the_base_does(tmp_path):
    """The default base (the shipped GGUF, converted), a LoRA of random non-zero weights on every projection,
    published as the trainer publishes, exported merged in fp32: the same logits, and the chat template
    renders ChatML as Doppel's transcript does."""
    from support.personas import publish_smollm2_persona

    store, manifest, base = publish_smollm2_persona(tmp_path)
    out = tmp_path / "merged"
    export(store, manifest, "merged", out, cache_dir=tmp_path / "cache")
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    x = prompt_ids(out, CHAT)
    with torch.no_grad():
        expected = served(store, manifest.id, tmp_path / "cache")(x).logits
        diff = (merged(x).logits - expected).abs().max().item()
    assert diff < 1e-3 * expected.abs().max().item(), diff  # fp32 sums in another order over 576-wide rows
    text = AutoTokenizer.from_pretrained(out).apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    transcript = Transcript(base.tokenizer, ["Alice"], "chat")
    turns = [Turn("Bob", "reply 3 ok"), Turn("Alice", "and 3"), Turn("Bob", "message number 4 about things")]
    assert text == transcript.prompt(turns, PARTICIPANTS, "Alice") and text.endswith("<|im_start|>assistant\nAlice:")
    # Imported back, the model's tokenizer has SmolLM2's own template again, which Doppel's transcript reads.
    from services.trainer.export import import_model

    back = import_model(store, out)
    tokenizer = AutoTokenizer.from_pretrained(model_folder(store, back, tmp_path / "cache"))
    assert tokenizer.chat_template == base.tokenizer.chat_template
    assert Transcript(tokenizer, ["Alice"], "chat").prompt(turns, PARTICIPANTS, "Alice") == text


def test_an_export_imported_back_serves_the_same_greedy_replies(exported, trainer, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from doppel.cli.main import app
    from doppel.v1 import common_pb2
    from doppel.v1 import inference_pb2 as inf
    from support.inference import Running

    ids, store, tmp, run = exported
    monkeypatch.setenv("DOPPEL_TRAINER_ADDR", trainer)
    made = {}
    for fmt in ("adapter", "merged"):
        folder = run("group", fmt)
        done = CliRunner().invoke(app, ["models", "import", str(folder), "--name", f"back-{fmt}"])
        assert done.exit_code == 0, done.output
        made[fmt] = done.stdout.split(" as ", 1)[1].split(" ", 1)[0]
        manifest = MODELS.get(store, made[fmt])
        assert manifest.name == f"back-{fmt}" and manifest.speakers == PARTICIPANTS and manifest.id != ids["group"]
        assert manifest.method == ("lora" if fmt == "adapter" else "full") and manifest.run_id == ""
        assert manifest.recipe == MODELS.get(store, ids["group"]).recipe
    inference = Running(store, tmp / "serving")
    try:
        def replies(model_id: str) -> list[str]:
            history = [inf.Turn(speaker="Bob", text="reply 3 ok"), inf.Turn(speaker="Carol", text="and 3")]
            return [inference.client.chat(inf.ChatRequest(
                model_id=model_id, history=history, as_speaker=speaker, user_speaker="Bob",
                sampling=common_pb2.SamplingParams(temperature=0, max_new_tokens=24))).candidates[0].text
                for speaker in ("Alice", "Carol")]

        original = replies(ids["group"])
        assert replies(made["adapter"]) == original and replies(made["merged"]) == original
    finally:
        inference.close()


def test_what_is_not_an_export_is_refused_and_nothing_is_stored(exported, trainer, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from doppel.cli.main import app

    ids, store, tmp, run = exported
    monkeypatch.setenv("DOPPEL_TRAINER_ADDR", trainer)
    before = {m.id for m in MODELS.records(store)}
    (tmp_path / "empty").mkdir()
    done = CliRunner().invoke(app, ["models", "import", str(tmp_path / "empty")])
    assert done.exit_code == 2 and "not a Doppel export" in done.stderr
    adapter = run("a0", "adapter")
    about = json.loads((adapter / "doppel.json").read_text())
    broken = [("base_store_prefix", "base-models/gone/", "FAILED_PRECONDITION", "is not in this store"),
              ("format", "gguf", "INVALID_ARGUMENT", "Doppel imports adapter and merged exports"),
              ("recipe", {"method": "lora"}, "INVALID_ARGUMENT", "does not describe a persona model")]
    for key, value, code, message in broken:
        (adapter / "doppel.json").write_text(json.dumps({**about, key: value}))
        done = CliRunner().invoke(app, ["models", "import", str(adapter)])
        assert done.exit_code == 1 and code in done.stderr and message in done.stderr, done.output
    (adapter / "doppel.json").write_text(json.dumps(about))
    (adapter / "adapter_model.safetensors").unlink()
    done = CliRunner().invoke(app, ["models", "import", str(adapter)])
    assert done.exit_code == 1 and "lacks its weights" in done.stderr
    assert {m.id for m in MODELS.records(store)} == before
    assert not [i.key for i in store.list("models/") if i.key.split("/")[1] not in before]


def test_a_damaged_or_escaping_download_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    """The client's side of ExportModel: every file checked against its size and sha256, every path kept inside."""
    import hashlib

    from doppel.clients import TrainerClient
    from doppel.v1 import trainer_pb2 as tr

    def parts(path: str, data: bytes, sha: str) -> list[tr.ExportModelResponse]:
        return [tr.ExportModelResponse(summary=tr.ExportSummary(files=1, total_bytes=len(data))),
                tr.ExportModelResponse(file=tr.UploadedFile(path=path, size_bytes=len(data), sha256=sha)),
                tr.ExportModelResponse(chunk=data)]

    good = hashlib.sha256(b"weights").hexdigest()
    client = TrainerClient("127.0.0.1:1")
    cases = [(parts("model.safetensors", b"weightz", good), "damaged"), (parts("../evil", b"weights", good), "not a relative path")]
    for sent, message in cases:
        monkeypatch.setattr(client, "export_model", lambda request, timeout=None, sent=sent: iter(sent))
        with pytest.raises(InvalidArgument, match=message):
            client.export_to(tr.ExportModelRequest(model_id="m"), tmp_path / "out")
        assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(client, "export_model", lambda request, timeout=None: iter(parts("a/b.json", b"weights", good)))
    seen = []
    assert client.export_to(tr.ExportModelRequest(model_id="m"), tmp_path / "out", progress=lambda *a: seen.append(a)) == ["a/b.json"]
    assert (tmp_path / "out" / "a" / "b.json").read_bytes() == b"weights" and seen == [(7, 7)]
    client.close()
