"""Taking a persona out of Doppel, in a folder other tools load.

* `adapter`: the PEFT adapter and its tokenizer; `PeftModel.from_pretrained(base, folder)` on the
  named base (doppel.json says which) gives the persona.
* `merged`: the adapter merged into its base (a full fine-tune as it is): safetensors, config and
  tokenizer that plain `transformers` loads.
* `gguf`: the merged model as one GGUF file (`to_gguf.py`), for llama.cpp, LM Studio and the like.
* `ollama`: the GGUF and a Modelfile (`ollama.py`) for `ollama create`.

The tokenizer (in a GGUF, its metadata) carries a chat template that renders a conversation
exactly as Doppel does (`chat_template`), and a merged model a generation config whose stop
strings end the persona's turn, so `apply_chat_template` + `generate` there give what Doppel's
inference gives; doppel.json lists those stop strings for every format.
Every export holds `doppel.json`: the persona (speakers, participants, base, recipe, evaluation
and fidelity figures) and a notice that what it writes is generated.

An export is written in a folder beside `out` and renamed into place when whole: a failed one
leaves nothing, and an `out` that exists is refused.

`import_model` brings an adapter or merged export back as a persona model of its own id (an
adapter onto its base, which must be in the store; a merged model as a full one), its base's own
chat template restored from doppel.json so that the inference service renders its turns as before.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from doppel import __version__
from doppel.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from doppel.layout import model_prefix, new_id
from doppel.model import MODELS, Evaluation, FidelityFigures, ModelManifest, Recipe, base_folder, model_folder
from doppel.store import Store
from doppel.transcript import Transcript, Turn, default_user, system_prompt

from . import ollama, to_gguf

Format = Literal["adapter", "merged", "gguf", "ollama"]
FORMATS: tuple[Format, ...] = ("adapter", "merged", "gguf", "ollama")
IMPORTS = ("adapter", "merged")
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
NOTICE = ("This model was fine-tuned with Doppel on a chat history to write like the people in it. What it writes is "
          "generated text: it is not something they said, and must not be passed off as theirs.")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
ABOUT, NOTICE_FILE, README, MODELFILE = "doppel.json", "NOTICE.txt", "README.md", "Modelfile"
MAX_NAME = 200


def chat_template(transcript: Transcript, participants: Sequence[str], speakers: Sequence[str]) -> str:
    """A Jinja chat template that renders messages as Doppel renders a persona's conversation.

    A message's `name` is its speaker; an unnamed assistant message is the persona's, an unnamed user
    message the model's first other participant's (else "User"). System messages are not rendered.
    `add_generation_prompt` opens the persona's turn; `apply_chat_template(..., persona=NAME)` picks
    another speaker of a group model, `user=NAME` another default user."""
    persona = speakers[0]
    user = default_user(participants, persona)

    def lit(value: Any) -> str:  # a Jinja literal (JSON's escapes are Jinja's)
        return json.dumps(value, ensure_ascii=False)

    parts = [
        "{%- set speakers = " + lit(list(speakers)) + " -%}",
        "{%- set persona = persona if persona is defined and persona else " + lit(persona) + " -%}",
        "{%- set user = user if user is defined and user else " + lit(user) + " -%}",
        "{{- " + lit(transcript.header(participants)) + " -}}",
        "{%- for message in messages if message['role'] in ['user', 'assistant'] -%}",
        "{%- set name = message['name'] if 'name' in message and message['name'] else "
        "(persona if message['role'] == 'assistant' else user) -%}",
    ]
    if transcript.kind == "chat":
        ah, _, at = transcript.turn(Turn(persona, ""))  # around a learned speaker's turn, and anyone else's
        uh, _, ut = transcript.turn(Turn("\0", ""))
        parts += [
            "{%- if name in speakers -%}{{- " + lit(ah) + " + name + ': ' + message['content'] + " + lit(at) + " -}}",
            "{%- else -%}{{- " + lit(uh) + " + name + ': ' + message['content'] + " + lit(ut) + " -}}{%- endif -%}",
            "{%- endfor -%}",
            "{%- if add_generation_prompt -%}{{- (" + lit(ah) + " if persona in speakers else " + lit(uh)
            + ") + persona + ':' -}}{%- endif -%}",
        ]
    else:
        text = "message['content']" if transcript.kind == "plain" else f"(message['content'] | replace({lit(transcript.end)}, ''))"
        parts += [
            "{{- name + ': ' + " + text + " + " + lit(transcript.turn(Turn(persona, ""))[2]) + " -}}",
            "{%- endfor -%}",
            "{%- if add_generation_prompt -%}{{- persona + ':' -}}{%- endif -%}",
        ]
    return "".join(parts)


def describe(manifest: ModelManifest, fmt: str, base_chat_template: str | None) -> dict[str, Any]:
    """doppel.json: who the persona is, what it was made from and how it measured (and, for an import,
    the base's own chat template, which the export's replaced)."""
    return {
        "doppel_version": __version__, "format": fmt, "model_id": manifest.id, "name": manifest.name,
        "speakers": manifest.speakers, "participants": manifest.participants, "base_model": manifest.base_model,
        "base_source": manifest.base_source, "base_store_prefix": manifest.base_store_prefix,
        "base_chat_template": base_chat_template, "method": manifest.method, "transcript": manifest.transcript,
        "system_prompt": system_prompt(manifest.participants), "created_at": manifest.created_at.isoformat(),
        "recipe": manifest.recipe.model_dump(mode="json"), "evaluation": manifest.evaluation.model_dump(mode="json"),
        "fidelity": [f.model_dump(mode="json") for f in manifest.fidelity], "notice": NOTICE,
    }


def export(store: Store, manifest: ModelManifest, fmt: str, out: Path, *, cache_dir: Path, dtype: str = "f32",
           quant: str = "") -> list[str]:
    """Write `manifest`'s model to the new folder `out` as `fmt`; the files written, relative to it.

    `dtype` is the weights' type (merged, gguf, ollama); `quant` a GGUF's quantisation instead."""
    if fmt not in FORMATS:
        raise InvalidArgument(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise InvalidArgument(f"unknown dtype {dtype!r}; dtypes: {', '.join(DTYPES)}")
    if quant and (fmt not in ("gguf", "ollama") or quant not in to_gguf.QUANTS):
        raise InvalidArgument(f"quant {quant!r} is not one of a GGUF export's ({', '.join(to_gguf.QUANTS)})"
                              if fmt in ("gguf", "ollama") else f"quant is for gguf and ollama exports, not {fmt}")
    if fmt == "adapter" and not manifest.is_adapter:
        raise InvalidArgument(f"model {manifest.id!r} is a full fine-tune ({manifest.method}), not an adapter: "
                              "export it as merged")
    out = Path(out)
    if out.exists():
        raise AlreadyExists(f"{out} exists; export to a path that does not")
    from transformers import AutoTokenizer

    folder = model_folder(store, manifest, cache_dir)
    weights = base_folder(store, manifest, folder, cache_dir) if manifest.is_adapter and fmt != "adapter" else folder
    converter = to_gguf.check_architecture(_architecture(weights)) if fmt in ("gguf", "ollama") else None
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    base_template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    transcript = Transcript(tokenizer, manifest.speakers, manifest.transcript)  # read before the template changes
    generation = generation_config(manifest, tokenizer, transcript)
    tokenizer.chat_template = chat_template(transcript, manifest.participants, manifest.speakers)
    about = describe(manifest, fmt, base_template) | {"stop": list(transcript.stops(manifest.participants))}
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:
        staged = Path(tmp) / "export"
        staged.mkdir()
        if fmt == "adapter":
            for name in ADAPTER_FILES:
                if (folder / name).exists():
                    shutil.copy2(folder / name, staged / name)
            tokenizer.save_pretrained(staged)
        else:
            merged = staged if fmt == "merged" else Path(tmp) / "merged"
            _merged(manifest, folder, weights, merged, DTYPES[dtype], generation)
            tokenizer.save_pretrained(merged)
        if converter is not None:
            about["gguf"] = gguf_file = f"{_slug(manifest.name) or manifest.id}.{quant or dtype}.gguf"
            to_gguf.convert(converter, merged, staged / gguf_file, quant or dtype, manifest.name)
            (staged / README).write_text(_readme(fmt, gguf_file, manifest.name))
            if fmt == "ollama":
                (staged / MODELFILE).write_text(ollama.modelfile(
                    transcript, manifest.participants, manifest.speakers, gguf_file, name=manifest.name,
                    temperature=generation.temperature, top_p=generation.top_p))
        (staged / ABOUT).write_text(json.dumps(about, indent=2, ensure_ascii=False) + "\n")
        (staged / NOTICE_FILE).write_text(NOTICE + "\n")
        staged.rename(out)
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def _architecture(weights: Path) -> str:
    try:
        return str(json.loads((weights / "config.json").read_text())["architectures"][0])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise FailedPrecondition(f"{weights / 'config.json'} names no model architecture: {e}") from None


def _slug(name: str) -> str:
    """A file name's worth of `name`: lower-case letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]


def _readme(fmt: str, gguf_file: str, name: str) -> str:
    """How to run a GGUF export with llama.cpp (and Ollama)."""
    if fmt == "ollama":
        return (f"# {name} for Ollama\n\n"
                f"    ollama create {_slug(name) or 'persona'} -f Modelfile\n    ollama run {_slug(name) or 'persona'}\n\n"
                "The Modelfile's TEMPLATE renders the chat as Doppel did in training: your messages are the\n"
                "turns of the person doppel.json names as the user, the model's the persona's. Ollama merges\n"
                "consecutive messages of one role into one. The GGUF also runs in llama.cpp:\n\n"
                f"    llama-server -m {gguf_file} --jinja\n\n" + NOTICE + "\n")
    return (f"# {name} as GGUF\n\n"
            f"    llama-server -m {gguf_file} --jinja    # an OpenAI-compatible server; its chat template is Doppel's\n"
            f"    llama-quantize {gguf_file} smaller.gguf Q4_K_M    # smaller weights, with llama.cpp's tools\n\n"
            "LM Studio and other llama.cpp front ends load the file as it is. Stop a persona's turn at the\n"
            "strings doppel.json lists under `stop`.\n\n" + NOTICE + "\n")


def generation_config(manifest: ModelManifest, tokenizer: Any, transcript: Transcript) -> Any:
    """Sampling Doppel's way, a turn ending where Doppel ends it: at its end marker or a new speaker's line."""
    from transformers import GenerationConfig

    ends = {tokenizer.eos_token_id} - {None}  # and the chat template's end-of-turn token (as the inference engine's)
    if transcript.kind == "chat" and (end := tokenizer.convert_tokens_to_ids(transcript.end)) != tokenizer.unk_token_id:
        ends.add(end)
    return GenerationConfig(do_sample=True, temperature=0.8, top_p=0.95, max_new_tokens=64, eos_token_id=sorted(ends),
                            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                            stop_strings=list(transcript.stops(manifest.participants)))


def _merged(manifest: ModelManifest, folder: Path, weights: Path, out: Path, dtype: torch.dtype, generation: Any) -> None:
    """The adapter in `folder` merged into its base in `weights` (a full model: as it is), saved to `out`."""
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(weights, local_files_only=True, dtype=torch.float32)
    if manifest.is_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, folder).merge_and_unload()
    model = model.to(dtype)
    model.generation_config = generation
    model.save_pretrained(out, safe_serialization=True)


def import_model(store: Store, folder: Path, *, name: str = "") -> ModelManifest:
    """The export in `folder` as a new persona model (`name`, else the exported one's); its manifest."""
    from transformers import AutoTokenizer

    about = _about(folder)
    fmt = about["format"]
    if len(name) > MAX_NAME:
        raise InvalidArgument(f"a model name has at most {MAX_NAME} characters, not {len(name)}")
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {ABOUT, NOTICE_FILE}
    weights = {"adapter_config.json"} if fmt == "adapter" else {"config.json"}
    if not weights <= files or not any(f.endswith(".safetensors") for f in files):
        raise InvalidArgument(f"this {fmt} export lacks its weights: it needs {', '.join(sorted(weights))} and .safetensors files")
    prefix = about.get("base_store_prefix") if fmt == "adapter" else None
    if fmt == "adapter" and not (prefix and store.exists(prefix + "config.json")):
        raise FailedPrecondition(f"the adapter's base {about['base_model']!r} is not in this store (no {prefix}config.json): "
                                 "add it first (`doppel bases add` or `doppel bases pull`), or import the merged export")
    try:
        recipe = Recipe.model_validate(about["recipe"])
        manifest = ModelManifest(
            id=new_id("model"), name=name.strip() or about["name"], base_model=about["base_model"],
            base_source=about["base_source"], base_store_prefix=prefix, method=about["method"] if fmt == "adapter" else "full",
            transcript=about["transcript"], speakers=about["speakers"], participants=about["participants"],
            dataset_id=recipe.dataset_id, run_id="", recipe=recipe, evaluation=Evaluation.model_validate(about["evaluation"]),
            fidelity=[FidelityFigures.model_validate(f) for f in about["fidelity"]],
        )
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidArgument(f"{ABOUT} does not describe a persona model: {type(e).__name__}: {e}") from None
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tokenizer.chat_template = about.get("base_chat_template")
    try:
        Transcript(tokenizer, manifest.speakers, manifest.transcript)
    except ValueError as e:
        raise InvalidArgument(f"the export's tokenizer cannot render {manifest.transcript!r} turns: {e}") from None
    model_files = model_prefix(manifest.id)
    try:
        with tempfile.TemporaryDirectory(prefix="doppel-import-") as tmp:
            staged = Path(tmp)
            for f in files:
                (staged / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(folder / f, staged / f)
            tokenizer.save_pretrained(staged)  # the base's template back
            for path in sorted(p for p in staged.rglob("*") if p.is_file()):
                key = path.relative_to(staged).as_posix()
                manifest.size_bytes += store.put_file(model_files + key, path).size
                manifest.files.append(key)
        MODELS.put(store, manifest)
    except BaseException:
        store.delete_prefix(model_files)
        raise
    return manifest


def _about(folder: Path) -> dict[str, Any]:
    try:
        about = json.loads((folder / ABOUT).read_text())
    except FileNotFoundError:
        raise InvalidArgument(f"not a Doppel export: it has no {ABOUT}") from None
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"{ABOUT} is not readable JSON: {e}") from None
    if not isinstance(about, dict) or about.get("format") not in IMPORTS:
        found = about.get("format") if isinstance(about, dict) else None
        raise InvalidArgument(f"{ABOUT} names {'format ' + repr(found) if found else 'no export format'}: Doppel imports "
                              f"{' and '.join(IMPORTS)} exports (a GGUF is llama.cpp's; import the merged export)")
    return about
