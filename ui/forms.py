"""Form values into request protos: what a person typed, with blanks meaning "the service's default".

Pure functions with no Gradio and no network. Only what a widget cannot say is checked here
(a duration's syntax); the services check the values and the page shows what they say.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from doppel import enums
from doppel.durations import parse_duration
from doppel.v1 import common_pb2, ingest_pb2
from doppel.v1 import trainer_pb2 as tr

AUTO_FORMAT = "auto"
FORMATS = [AUTO_FORMAT, *enums.names(ingest_pb2.ExportFormat).values()]
REDACTIONS = {
    "personal data (emails, phones, cards, IBANs)": ingest_pb2.REDACTION_PERSONAL,
    "personal data and URLs": ingest_pb2.REDACTION_PERSONAL_AND_URLS,
    "personal data, URLs, street addresses and names (all but the speakers kept)":
        ingest_pb2.REDACTION_PERSONAL_URLS_AND_NAMES,
    "nothing: store the text as written": ingest_pb2.REDACTION_OFF,
}
SCHEDULES = {name: enums.value(tr.LrSchedule, name) for name in ("cosine", "linear", "constant")}  # the usual first


def names(text: str | None) -> list[str]:
    """Comma- or newline-separated names, trimmed, blanks dropped."""
    return [n.strip() for n in re.split(r"[,\n]", text or "") if n.strip()]


def ingest_options(
    *,
    format: str = AUTO_FORMAT,
    exclude_conversations: str = "",
    exclude_senders: str = "",
    min_messages: float | None = None,
    session_gap: str = "",
    merge_window: str = "",
    scripts: Iterable[str] = (),
    script_min_fraction: float | None = None,
    redaction: str = "",
    keep_duplicates: bool = False,
    timezone: str = "",
    keep_raw: bool = False,
    keep_names: str = "",
) -> ingest_pb2.IngestOptions:
    """IngestOptions from the Import tab's fields."""
    options = ingest_pb2.IngestOptions(
        format=enums.value(ingest_pb2.ExportFormat, format) if format != AUTO_FORMAT else ingest_pb2.EXPORT_FORMAT_UNSPECIFIED,
        exclude_conversations=names(exclude_conversations),
        exclude_senders=names(exclude_senders),
        scripts=list(scripts),
        redaction=REDACTIONS.get(redaction, ingest_pb2.REDACTION_UNSPECIFIED),
        keep_names=names(keep_names),
        keep_duplicates=keep_duplicates,
        timezone=(timezone or "").strip(),
        keep_raw=keep_raw,
    )
    if min_messages is not None:
        options.min_messages = int(min_messages)
    if script_min_fraction is not None and scripts:
        options.script_min_fraction = script_min_fraction
    for field, text, what in (("session_gap", session_gap, "session gap"), ("merge_window", merge_window, "merge window")):
        if (value := parse_duration(text, what)) is not None:
            getattr(options, field).FromTimedelta(value)
    return options


def number(text: str | float | None, what: str, kind: type[int] | type[float] = float) -> int | float | None:
    """A typed number (Gradio's Number cannot be blank, so optional ones are textboxes); blank is None."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else kind(text)
    if not text.strip():
        return None
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{what}: {text.strip()!r} is not a number") from None
    if kind is int and not value.is_integer():
        raise ValueError(f"{what}: {text.strip()!r} is not a whole number")
    return kind(value)


def _set(message: object, values: dict[str, object]) -> None:
    """Set the fields whose value is given; None and blanks stay unset (the recipe's default)."""
    for name, value in values.items():
        if value is not None and value != "":
            setattr(message, name, value)


def training_spec(
    *,
    dataset_id: str,
    speakers: Iterable[str],
    base_model: str,
    method: str = "lora",
    preset: str = "default",
    model_name: str = "",
    max_steps: str = "",
    epochs: str = "",
    learning_rate: str = "",
    lr_schedule: str = "",
    batch_size: str = "",
    block_size: str = "",
    sample_every: str = "",
    seed: str = "",
    lora_rank: str = "",
    devices: str = "",
) -> tr.TrainingSpec:
    """A TrainingSpec from the Train tab's fields; blank ones take the preset's values."""
    spec = tr.TrainingSpec(
        dataset_id=dataset_id or "",
        speakers=list(speakers),
        base_model=(base_model or "").strip(),
        method=enums.value(tr.Method, method or "lora"),
        preset=preset or "default",
        model_name=(model_name or "").strip(),
    )
    _set(spec.hyperparameters, {
        "max_steps": number(max_steps, "Steps", int), "epochs": number(epochs, "Epochs"),
        "learning_rate": number(learning_rate, "Learning rate"), "batch_size": number(batch_size, "Batch size", int),
        "block_size": number(block_size, "Block size", int),
        "sample_every": number(sample_every, "Sample every", int), "seed": number(seed, "Seed", int),
        "lr_schedule": SCHEDULES.get(lr_schedule or ""),
    })
    if spec.method != tr.METHOD_FULL:
        _set(spec.lora, {"rank": number(lora_rank, "LoRA rank", int)})
    _set(spec, {"devices": number(devices, "Devices", int)})
    return spec


def sampling(
    *,
    temperature: float | None = None,
    max_new_tokens: float | None = None,
    n: float | None = None,
    seed: str | float | None = None,
) -> common_pb2.SamplingParams:
    """SamplingParams with only the fields given; the service's defaults fill the rest."""
    params = common_pb2.SamplingParams()
    _set(params, {
        "temperature": temperature, "max_new_tokens": number(max_new_tokens, "Longest reply", int),
        "n": number(n, "Candidates", int), "seed": number(seed, "Seed", int),
    })
    return params
