"""doppel.enums: proto enum values by short name, and the cores' names are exactly those short names."""

from __future__ import annotations

from typing import get_args

import pytest
from grpc_health.v1 import health_pb2

from doppel import enums
from doppel.v1 import inference_pb2, ingest_pb2
from doppel.v1 import trainer_pb2 as tr


def test_a_short_name_is_the_value_name_without_the_enum_prefix_in_lower_case():
    assert enums.name(tr.RunState, tr.RUN_STATE_COMPLETED) == "completed"
    assert enums.name(ingest_pb2.ExportFormat, ingest_pb2.EXPORT_FORMAT_DISCORD_CSV) == "discord_csv"
    assert enums.label(inference_pb2.FinishReason, inference_pb2.FINISH_REASON_END_OF_TURN) == "end of turn"
    assert enums.name(tr.RunState, 0) == "unspecified"


def test_a_number_from_a_newer_peer_shows_as_the_number():
    assert enums.name(tr.RunState, 99) == "99" and enums.label(inference_pb2.FinishReason, 42) == "42"


def test_names_and_values_leave_out_unspecified_and_keep_the_proto_order():
    assert enums.names(tr.LrSchedule) == {1: "constant", 2: "linear", 3: "cosine"}
    assert enums.values(tr.Precision) == {"fp32": 1, "bf16": 2, "fp16": 3}
    assert list(enums.values(ingest_pb2.ExportFormat))[:2] == ["messenger", "instagram"]
    # an enum without an _UNSPECIFIED zero has no prefix and keeps its zero
    status = health_pb2.HealthCheckResponse.ServingStatus
    assert enums.names(status)[0] == "unknown" and enums.name(status, health_pb2.HealthCheckResponse.SERVING) == "serving"


def test_value_takes_any_case_and_lists_the_names_when_it_does_not_know_one():
    assert enums.value(tr.Method, "full") == tr.METHOD_FULL
    assert enums.value(ingest_pb2.ExportFormat, " WhatsApp ") == ingest_pb2.EXPORT_FORMAT_WHATSAPP
    assert enums.value(tr.Method, "QLoRA") == tr.METHOD_QLORA
    with pytest.raises(ValueError, match=r"^'dora' is not a Method; use one of lora, full, qlora$"):
        enums.value(tr.Method, "dora")
    with pytest.raises(ValueError):
        enums.value(tr.Method, "unspecified")


def test_the_cores_names_are_the_enums_short_names():
    from services.ingest.options import Redaction
    from services.ingest.parsers import FORMATS
    from services.trainer import recipe, runs

    assert set(FORMATS) == set(enums.values(ingest_pb2.ExportFormat))
    assert {r.value for r in Redaction} == set(enums.values(ingest_pb2.Redaction))
    assert set(get_args(recipe.Method)) == set(enums.values(tr.Method))
    assert set(get_args(recipe.Schedule)) == set(enums.values(tr.LrSchedule))
    assert set(get_args(recipe.Precision)) == {"auto", *enums.values(tr.Precision)}
    assert set(get_args(runs.State)) == set(enums.values(tr.RunState))
