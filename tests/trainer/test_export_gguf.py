"""GGUF and Ollama exports (services/trainer/to_gguf.py, ollama.py): the file runs in llama.cpp (llama-cpp-python,
built from source) as transformers runs the merged model, loads back in transformers, and the Modelfile's template,
rendered by Go's text/template as Ollama renders it, gives Doppel's own text byte for byte."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from llama_cpp import Llama
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from doppel.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from doppel.model import MODELS, ModelManifest, model_folder
from doppel.transcript import Transcript, Turn, system_prompt
from services.trainer import ollama, to_gguf
from services.trainer.export import export
from support import modelfile
from support.chats import CHATML
from support.personas import PARTICIPANTS, persona_manifest, publish_smollm2_persona

torch.set_num_threads(1)
CHAT = [{"role": "user", "content": "are you coming tonight?"}, {"role": "assistant", "content": "haha yes, in a bit"},
        {"role": "user", "content": "great, bring the \"good\" snacks {{ .System }} ✨"}]


def llama(path: Path, **kw: Any) -> Llama:
    return Llama(model_path=str(path), n_ctx=512, n_threads=1, verbose=False, seed=0, **kw)


def gguf_of(folder: Path) -> Path:
    [path] = folder.glob("*.gguf")
    return path


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    """Alice's persona on the default base (`publish_smollm2_persona`): (store, manifest, cache, a folder)."""
    tmp = tmp_path_factory.mktemp("smol")
    store, manifest, _ = publish_smollm2_persona(tmp)
    return store, manifest, tmp / "cache", tmp


def test_the_default_bases_gguf_decodes_in_llama_cpp_as_the_merged_model_does_in_transformers(smol):
    store, manifest, cache, tmp = smol
    export(store, manifest, "merged", tmp / "merged", cache_dir=cache)
    export(store, manifest, "gguf", tmp / "gguf", cache_dir=cache)
    files = {p.name for p in (tmp / "gguf").iterdir()}
    assert files == {"alice.f32.gguf", "doppel.json", "NOTICE.txt", "README.md"}, files
    about = json.loads((tmp / "gguf" / "doppel.json").read_text())
    assert about["format"] == "gguf" and about["gguf"] == "alice.f32.gguf" and "\nBob:" in about["stop"]
    assert "llama-server -m alice.f32.gguf" in (tmp / "gguf" / "README.md").read_text()

    tokenizer = AutoTokenizer.from_pretrained(tmp / "merged")
    prompt = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    model = llama(gguf_of(tmp / "gguf"))
    assert model.metadata["tokenizer.chat_template"] == tokenizer.chat_template  # Doppel's, for llama.cpp's --jinja
    assert model.tokenize(prompt.encode(), add_bos=False, special=True) == ids
    ours = []
    for token in model.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0):
        ours.append(token)
        if len(ours) == 32:
            break
    merged = AutoModelForCausalLM.from_pretrained(tmp / "merged", dtype=torch.float32).eval()
    merged.generation_config = GenerationConfig()  # 32 greedy tokens, through any end of turn, as llama.cpp's loop
    with torch.no_grad():
        theirs = merged.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=32, min_new_tokens=32,
                                 pad_token_id=0)[0, len(ids):].tolist()
    assert ours == theirs, (tokenizer.decode(ours), tokenizer.decode(theirs))
    # transformers reads the GGUF back (gguf_file=), with the weights it was made from.
    back = AutoModelForCausalLM.from_pretrained(tmp / "gguf", gguf_file=gguf_of(tmp / "gguf").name, dtype=torch.float32)
    x = torch.tensor([ids])
    with torch.no_grad():
        expected = merged(x).logits
        diff = (back.eval()(x).logits - expected).abs().max().item()
    assert diff < 1e-3 * expected.abs().max().item(), diff


def tiny_full(store: Any, tokenizer: Any, arch: str, model_id: str) -> ModelManifest:
    """A full persona model of a small random `arch` (llama, gpt2) over SmolLM2's tokenizer, published. (Not
    qwen2: transformers 5 gives a qwen2 model Qwen's own pre-tokenizer, which llama.cpp's converter cannot
    name for SmolLM2's vocabulary; Qwen's tokenizer cannot be downloaded here.)"""
    from transformers import GPT2Config, LlamaConfig

    from services.trainer.models import publish

    vocab = len(tokenizer)
    config = {
        "llama": LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
        "gpt2": GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=512,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
    }[arch]
    config.initializer_range = 0.2  # logits that differ, so a wrong tensor shows
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config)
    manifest = persona_manifest(model_id, "full", ["Alice"], None, "chat", base_model=f"tiny-{arch}",
                                base_source="path:/nowhere")
    return publish(store, manifest, model, tokenizer)


@pytest.fixture(scope="module")
def tinies(smol):
    store, manifest, cache, tmp = smol
    tokenizer = AutoTokenizer.from_pretrained(model_folder(store, manifest, cache))
    return {arch: tiny_full(store, tokenizer, arch, f"model-tiny-{arch}") for arch in ("llama", "gpt2")}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_each_architecture_doppel_trains_computes_the_same_logits_in_llama_cpp(smol, tinies, arch, tmp_path):
    store, _, cache, _ = smol
    export(store, tinies[arch], "gguf", tmp_path / "gguf", cache_dir=cache)
    export(store, tinies[arch], "merged", tmp_path / "merged", cache_dir=cache)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    ids = tokenizer(tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True),
                    add_special_tokens=False)["input_ids"]
    model = llama(gguf_of(tmp_path / "gguf"), logits_all=True)
    model.eval(ids)
    ours = np.asarray(model.scores[: len(ids)])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = merged(torch.tensor([ids])).logits[0].numpy()
    # fp32 both ways, summed in other orders (llama.cpp's kernels, and its own RoPE and norms): within 0.3%
    assert np.abs(ours - theirs).max() < 3e-3 * np.abs(theirs).max(), np.abs(ours - theirs).max()


def test_q8_0_weights_are_a_quarter_of_f32_and_compute_nearly_the_same(smol, tinies, tmp_path):
    store, _, cache, _ = smol
    export(store, tinies["llama"], "gguf", tmp_path / "f32", cache_dir=cache)
    export(store, tinies["llama"], "gguf", tmp_path / "q8", cache_dir=cache, quant="q8_0")
    assert gguf_of(tmp_path / "q8").name == "alice.q8_0.gguf"
    ids = list(range(100, 140))
    scores = []
    for folder in ("f32", "q8"):
        model = llama(gguf_of(tmp_path / folder), logits_all=True)
        model.eval(ids)
        scores.append(np.asarray(model.scores[: len(ids)]))
    cosine = (scores[0] * scores[1]).sum() / np.linalg.norm(scores[0]) / np.linalg.norm(scores[1])
    assert cosine > 0.999, cosine
    # The embedding and output matrices dominate: 8.5 bits a weight against 32.
    assert gguf_of(tmp_path / "q8").stat().st_size < 0.4 * gguf_of(tmp_path / "f32").stat().st_size


HISTORY = [Turn("Bob", "are you coming?"), Turn("Alice", "haha yes\nin a bit, \"maybe\""),
           Turn("Bob", "great {{ .Prompt }} ✨ \\ bring snacks"), Turn("Alice", "ok")]


def as_messages(history: list[Turn], persona: str) -> list[dict[str, str]]:
    return [{"role": "assistant" if t.speaker == persona else "user", "content": t.text} for t in history]


@pytest.mark.parametrize("kind", ["plain-eos", "plain", "chat"])
@pytest.mark.parametrize("speakers", [["Alice"], ["Alice", "Bob", "Carol"]])
def test_the_modelfile_renders_a_chat_as_doppel_does_byte_for_byte(kind, speakers, tmp_path):
    from doppel.tiny import tiny_model
    from support.personas import TEXTS

    tokenizer = copy.deepcopy(tiny_model(TEXTS[:50], seed=0, block_size=128)[1])
    if kind == "chat":
        tokenizer.chat_template = CHATML
    transcript = Transcript(tokenizer, speakers, kind)
    text = ollama.modelfile(transcript, PARTICIPANTS, speakers, "alice.f16.gguf", name="Alice \"A\" ✨",
                            temperature=0.8, top_p=0.95)
    assert text.isascii()
    parsed = modelfile.parse(text)
    commands = dict(parsed)
    assert commands["model"] == "./alice.f16.gguf" and commands["system"] == system_prompt(PARTICIPANTS)
    assert [v for k, v in parsed if k == "stop"] == list(transcript.stops(PARTICIPANTS))
    assert commands["temperature"] == "0.8" and commands["top_p"] == "0.95"
    history = HISTORY if kind != "plain" else [Turn(t.speaker, t.text.replace("\n", " ")) for t in HISTORY]
    rendered = modelfile.render(commands["template"], commands["system"], as_messages(history, "Alice"), tmp_path)
    assert rendered == transcript.prompt(history, PARTICIPANTS, "Alice")
    # A system message of the caller's stands where Doppel's names the participants (in a chat template's system turn).
    own = modelfile.render(commands["template"], commands["system"],
                           [{"role": "system", "content": "Two old friends."}, *as_messages(history, "Alice")], tmp_path)
    expected = transcript.prompt(history, PARTICIPANTS, "Alice")
    assert own == (expected.replace(system_prompt(PARTICIPANTS), "Two old friends.", 1) if kind == "chat" else expected)


def test_a_name_a_modelfile_cannot_hold_is_rendered_by_the_template_and_left_out_of_the_rest(tmp_path):
    from doppel.tiny import tiny_model
    from support.personas import TEXTS

    tokenizer = copy.deepcopy(tiny_model(TEXTS[:50], seed=0, block_size=128)[1])
    tokenizer.chat_template = CHATML
    participants = ["Zoë\u200d", 'Ann """ Lee']  # a zero-width joiner Ollama's parser would drop; a closing quote
    transcript = Transcript(tokenizer, participants[:1], "chat")
    parsed = modelfile.parse(ollama.modelfile(transcript, participants, participants[:1], "z.gguf", name="z",
                                              temperature=1, top_p=1))
    commands = dict(parsed)
    assert "system" not in commands and [v for k, v in parsed if k == "stop"] == ["<|im_end|>"]
    history = [Turn(participants[1], "hi"), Turn(participants[0], "hey")]
    rendered = modelfile.render(commands["template"], "", as_messages(history, participants[0]), tmp_path)
    assert rendered == transcript.prompt(history, participants, participants[0])


def test_an_ollama_export_holds_the_gguf_its_modelfile_names(smol, tmp_path):
    store, manifest, cache, _ = smol
    export(store, manifest, "ollama", tmp_path / "ollama", cache_dir=cache, dtype="f16")
    files = {p.name for p in (tmp_path / "ollama").iterdir()}
    assert files == {"alice.f16.gguf", "Modelfile", "doppel.json", "NOTICE.txt", "README.md"}, files
    commands = dict(modelfile.parse((tmp_path / "ollama" / "Modelfile").read_text()))
    assert commands["model"] == "./alice.f16.gguf"
    assert "ollama create alice -f Modelfile" in (tmp_path / "ollama" / "README.md").read_text()
    tokenizer = AutoTokenizer.from_pretrained(model_folder(store, manifest, cache))
    history = [Turn("Bob", "are you coming?"), Turn("Alice", "yes"), Turn("Bob", "great")]
    rendered = modelfile.render(commands["template"], commands["system"], as_messages(history, "Alice"), tmp_path)
    assert rendered == Transcript(tokenizer, ["Alice"], "chat").prompt(history, PARTICIPANTS, "Alice")
    model = llama(tmp_path / "ollama" / "alice.f16.gguf")
    assert model.tokenize(rendered.encode(), add_bos=False, special=True) == tokenizer(
        rendered, add_special_tokens=False)["input_ids"]


def test_bad_gguf_exports_are_refused_and_write_nothing(smol, tinies, models_store, tmp_path, tmp_path_factory,
                                                       monkeypatch):
    store, manifest, cache, _ = smol
    cases = [("merged", {"quant": "q8_0"}, InvalidArgument, "quant is for gguf and ollama exports, not merged"),
             ("gguf", {"quant": "q4_k_m"}, InvalidArgument, "quant 'q4_k_m' is not one of a GGUF export's"),
             ("ollama", {"dtype": "f8"}, InvalidArgument, "unknown dtype 'f8'")]
    for fmt, kw, error, message in cases:
        with pytest.raises(error, match=message):
            export(store, manifest, fmt, tmp_path / "out", cache_dir=cache, **kw)
    # A model whose tokenizer llama.cpp does not know (one trained on the spot): the converter's reason.
    tiny_store, ids, tiny_tmp = models_store
    with pytest.raises(FailedPrecondition, match="llama.cpp's converter could not convert this model: .*pre-tokenizer"):
        export(tiny_store, MODELS.get(tiny_store, ids["full"]), "gguf", tmp_path / "out", cache_dir=tiny_tmp / "cache")
    # An architecture the converter does not convert is refused before any work.
    prefix = f"models/{tinies['gpt2'].id}/"
    config = json.loads(store.get(prefix + "config.json"))
    store.put(prefix + "config.json", json.dumps({**config, "architectures": ["DoppelTestForCausalLM"]}).encode())
    try:
        with pytest.raises(InvalidArgument, match="'DoppelTestForCausalLM' cannot be exported as GGUF"):
            export(store, tinies["gpt2"], "ollama", tmp_path / "out", cache_dir=tmp_path_factory.mktemp("cache"))
    finally:
        store.put(prefix + "config.json", json.dumps(config).encode())
    monkeypatch.setenv(to_gguf.CONVERTER_ENV, str(tmp_path / "nowhere.py"))
    with pytest.raises(FailedPrecondition, match="set DOPPEL_GGUF_CONVERTER"):
        export(store, manifest, "gguf", tmp_path / "out", cache_dir=cache)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "taken").mkdir()
    with pytest.raises(AlreadyExists):
        export(store, manifest, "gguf", tmp_path / "taken", cache_dir=cache)
    assert [p.name for p in tmp_path.iterdir()] == ["taken"] and not list((tmp_path / "taken").iterdir())


def test_the_cli_exports_an_ollama_model_through_the_trainer_service(smol, tinies, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from doppel.cli.main import app
    from support.grpcserver import trainer_server

    server = trainer_server(smol[0], tmp_path / "home")
    monkeypatch.setenv("DOPPEL_TRAINER_ADDR", server.addr)
    try:
        out = tmp_path / "out" / "alice"
        done = CliRunner().invoke(app, ["models", "export", tinies["llama"].id, "--format", "ollama", "--quant", "q8_0",
                                        "--out", str(out)])
        assert done.exit_code == 0, done.output
        assert done.stdout.startswith(f"exported {tinies['llama'].id} as ollama to {out}: 5 files")
        commands = dict(modelfile.parse((out / "Modelfile").read_text()))
        assert commands["model"] == "./alice.q8_0.gguf" and (out / "alice.q8_0.gguf").is_file()
        done = CliRunner().invoke(app, ["models", "export", tinies["llama"].id, "--format", "merged", "--quant", "q8_0",
                                        "--out", str(tmp_path / "out" / "m")])
        assert done.exit_code == 1 and "quant is for gguf and ollama exports" in done.stderr
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["alice"]
    finally:
        server.stop()
