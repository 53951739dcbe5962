"""Between the wire and the core: proto messages to and from the ingest core's models.

The servicer stays a thin adapter because everything it would otherwise do by hand lives
here, once. Naive local timestamps travel as if they were UTC, with `naive_local_time` set.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from doppel import enums
from doppel.conversation import Conversation
from doppel.dataset import DatasetManifest, DatasetStats
from doppel.v1 import common_pb2, ingest_pb2

from .options import IngestOptions, Redaction

# The parsers' format names and the core's redactions are the enums' short names (`doppel.enums`).
FORMATS = enums.names(ingest_pb2.ExportFormat)
FORMAT_ENUMS = enums.values(ingest_pb2.ExportFormat)
REDACTIONS = {value: Redaction(name) for value, name in enums.names(ingest_pb2.Redaction).items()}
REDACTION_ENUMS = {redaction: value for value, redaction in REDACTIONS.items()}


def _duration(d: Duration, present: bool) -> timedelta | None:
    return d.ToTimedelta() if present else None


def options_from_proto(p: ingest_pb2.IngestOptions) -> IngestOptions:
    """Core options from the request; unset fields take the core's defaults."""
    values: dict[str, object] = {
        "format": FORMATS.get(p.format, ""),
        "exclude_conversations": list(p.exclude_conversations),
        "exclude_senders": list(p.exclude_senders),
        "session_gap": _duration(p.session_gap, p.HasField("session_gap")),
        "merge_window": _duration(p.merge_window, p.HasField("merge_window")),
        "scripts": list(p.scripts),
        "redaction": REDACTIONS.get(p.redaction, Redaction.personal),
        "keep_names": list(p.keep_names),
        "keep_duplicates": p.keep_duplicates,
        "keep_raw": p.keep_raw,
        "timezone": p.timezone,
    }
    if p.HasField("min_messages"):
        values["min_messages"] = p.min_messages
    if p.HasField("script_min_fraction"):
        values["script_min_fraction"] = p.script_min_fraction
    return IngestOptions.build(**values)


def options_to_proto(o: IngestOptions) -> ingest_pb2.IngestOptions:
    p = ingest_pb2.IngestOptions(
        format=FORMAT_ENUMS.get(o.format, ingest_pb2.EXPORT_FORMAT_UNSPECIFIED),
        exclude_conversations=o.exclude_conversations,
        exclude_senders=o.exclude_senders,
        min_messages=o.min_messages,
        scripts=o.scripts,
        script_min_fraction=o.script_min_fraction,
        redaction=REDACTION_ENUMS[o.redaction],
        keep_names=o.keep_names,
        keep_duplicates=o.keep_duplicates,
        keep_raw=o.keep_raw,
        timezone=o.timezone,
    )
    if o.session_gap is not None:
        p.session_gap.FromTimedelta(o.session_gap)
    if o.merge_window is not None:
        p.merge_window.FromTimedelta(o.merge_window)
    return p


def _timestamp(dt: datetime) -> tuple[Timestamp, bool]:
    """A proto Timestamp and whether it is naive local time (sent as if UTC)."""
    ts = Timestamp()
    naive = dt.tzinfo is None
    ts.FromDatetime(dt.replace(tzinfo=UTC) if naive else dt)
    return ts, naive


def stats_to_proto(s: DatasetStats) -> common_pb2.DatasetStats:
    p = common_pb2.DatasetStats(
        conversations=s.conversations,
        messages=s.messages,
        participants=[common_pb2.ParticipantCount(name=n, messages=c) for n, c in s.participants.items()],
        timeline=[common_pb2.MonthCount(month=k, messages=v) for k, v in s.timeline.items()],
    )
    if s.first is not None:
        p.first.CopyFrom(_timestamp(s.first)[0])
    if s.last is not None:
        p.last.CopyFrom(_timestamp(s.last)[0])
    return p


def dataset_to_proto(m: DatasetManifest) -> ingest_pb2.Dataset:
    p = ingest_pb2.Dataset(
        id=m.id,
        name=m.name,
        sources=[
            ingest_pb2.SourceExport(
                key=s.key,
                sha256=s.sha256,
                size_bytes=s.size_bytes,
                filename=s.filename,
                format=FORMAT_ENUMS.get(s.format, ingest_pb2.EXPORT_FORMAT_UNSPECIFIED),
                kept=s.kept,
            )
            for s in m.sources
        ],
        parser_version=m.parser_version,
        options=options_to_proto(IngestOptions.build(**m.options)),
        stats=stats_to_proto(m.stats),
        warnings=m.warnings,
    )
    p.created_at.FromDatetime(m.created_at)
    p.updated_at.FromDatetime(m.updated_at)
    return p


def conversation_to_proto(c: Conversation) -> common_pb2.Conversation:
    p = common_pb2.Conversation(id=c.id, title=c.title, source_format=c.source_format, participants=c.participants)
    for m in c.messages:
        ts, naive = _timestamp(m.timestamp)
        p.messages.add(
            sender=m.sender, text=m.text, timestamp=ts, naive_local_time=naive, reply_to=m.reply_to or "", id=m.id or ""
        )
    return p
