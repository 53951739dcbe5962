"""`doppel ingest` (through the running service) and `doppel inspect` (local, no services).

Both take the same processing options, declared once below. `inspect` applies none of them
unless asked: it shows what the export holds, as parsed. `ingest` uses the service's
defaults (redaction on, at least 2 messages a conversation, dedupe).
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from doppel import enums
from doppel.cli.context import call, fail, settings
from doppel.durations import parse_duration


def option_duration(text: str | None, option: str) -> timedelta | None:
    """A duration option's value (`doppel.durations`); a bad one is a usage error naming the option."""
    try:
        return parse_duration(text)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint=f"'{option}'") from None


def _format_name(value: int) -> str:
    from doppel.v1 import ingest_pb2

    return enums.name(ingest_pb2.ExportFormat, value)


Format = Annotated[str, typer.Option("--format", help="Export format; default: detect from the content.")]
ExcludeConversation = Annotated[
    list[str], typer.Option("--exclude-conversation", help="Drop conversations with this title or participant (repeatable).")
]
ExcludeSender = Annotated[list[str], typer.Option("--exclude-sender", help="Drop messages from this sender (repeatable).")]
SessionGap = Annotated[str, typer.Option("--session-gap", help="Split conversations at gaps longer than this, e.g. 6h.")]
MergeWindow = Annotated[
    str, typer.Option("--merge-window", help="Merge one sender's consecutive messages within this, e.g. 2m.")
]
Script = Annotated[list[str], typer.Option("--script", help="Keep conversations mostly in this script, e.g. Latin (repeatable).")]
ScriptFraction = Annotated[float, typer.Option("--script-min-fraction", help="Share of letters that must be in --script.")]
Timezone = Annotated[str, typer.Option("--timezone", help="IANA zone for exports that wrote local time, e.g. Europe/Berlin.")]
REDACT_HELP = ("off, personal, personal_and_urls, or personal_urls_and_names (also street addresses, and "
               "everyone's name but --keep-name's: <PERSON_1>, ...).")
KeepName = Annotated[
    list[str], typer.Option("--keep-name", help="With personal_urls_and_names: a speaker whose name stays (repeatable).")
]


# command-line parameter -> IngestOptions field, for the options both commands take
_OPTION_FIELDS = {
    "format": "format",
    "exclude_conversation": "exclude_conversations",
    "exclude_sender": "exclude_senders",
    "min_messages": "min_messages",
    "session_gap": "session_gap",
    "merge_window": "merge_window",
    "script": "scripts",
    "script_min_fraction": "script_min_fraction",
    "redact": "redaction",
    "keep_name": "keep_names",
    "timezone": "timezone",
}


def _options(params: dict[str, Any], **extra: Any) -> Any:
    """IngestOptions from a command's parameters; InvalidArgument names a bad one."""
    from services.ingest.options import IngestOptions

    values = {field: params[name] for name, field in _OPTION_FIELDS.items()}
    values["session_gap"] = option_duration(values["session_gap"], "--session-gap")
    values["merge_window"] = option_duration(values["merge_window"], "--merge-window")
    return IngestOptions.build(**values, **extra)


def ingest(
    path: Annotated[Path, typer.Argument(help="The export: a zip, an unpacked folder or a single file.")],
    dataset: Annotated[str, typer.Option("--dataset", help="Add to this dataset id; default: a new dataset.")] = "",
    name: Annotated[str, typer.Option("--name", help="Name of a new dataset; default: the file name.")] = "",
    format: Format = "",
    exclude_conversation: ExcludeConversation = [],  # noqa: B006 - typer reads the default
    exclude_sender: ExcludeSender = [],  # noqa: B006
    min_messages: Annotated[int, typer.Option("--min-messages", help="Drop shorter conversations.")] = 2,
    session_gap: SessionGap = "",
    merge_window: MergeWindow = "",
    script: Script = [],  # noqa: B006
    script_min_fraction: ScriptFraction = 0.5,
    redact: Annotated[str, typer.Option("--redact", help=REDACT_HELP)] = "personal",
    keep_name: KeepName = [],  # noqa: B006
    keep_duplicates: Annotated[bool, typer.Option("--keep-duplicates", help="Keep messages the dataset holds already.")] = False,
    timezone: Timezone = "",
    keep_raw: Annotated[bool, typer.Option("--keep-raw", help="Keep the export itself in the store; by default "
                                           "it is deleted once parsed.")] = False,
) -> None:
    """Upload an export to the ingest service and print the new dataset's id and stats."""
    import grpc
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from doppel.clients import IngestClient, rpc_error_message
    from doppel.errors import DoppelError
    from doppel.v1 import ingest_pb2
    from services.ingest.convert import options_to_proto
    from services.ingest.pipeline import local_export

    params = dict(locals())
    if not path.exists():
        fail(f"{path}: no such file or folder")
    try:
        options = _options(params, keep_duplicates=keep_duplicates, keep_raw=keep_raw)
    except DoppelError as e:
        fail(str(e), 2)
    header = ingest_pb2.UploadHeader(
        filename=path.name + (".zip" if path.is_dir() else ""),
        dataset_id=dataset,
        dataset_name=name,
        options=options_to_proto(options),
    )
    with local_export(path) as upload, IngestClient.from_settings(settings()) as client:
        columns = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn()]
        with Progress(*columns, transient=True, disable=not sys.stderr.isatty()) as bar:
            task = bar.add_task(f"uploading {path.name}", total=upload.stat().st_size)
            try:
                reply = client.upload_file(upload, header, progress=lambda n: bar.update(task, completed=n))
            except grpc.RpcError as err:
                fail(f"{client.addr}: {rpc_error_message(err)}")
    d = reply.dataset
    stats = d.stats
    typer.echo(f"dataset {d.id}  ({d.name})")
    typer.echo(f"  format         {_format_name(d.sources[-1].format)}")
    source = d.sources[-1]
    typer.echo(f"  export         {f'kept at {source.key}' if source.kept else 'deleted once parsed (--keep-raw keeps it)'}")
    typer.echo(f"  conversations  {stats.conversations}")
    typer.echo(f"  messages       {stats.messages}")
    if stats.HasField("first"):
        typer.echo(f"  from           {stats.first.ToDatetime():%Y-%m-%d} to {stats.last.ToDatetime():%Y-%m-%d}")
    for p in stats.participants[:10]:
        typer.echo(f"  {p.messages:>8}  {p.name}")
    if len(stats.participants) > 10:
        typer.echo(f"  ... and {len(stats.participants) - 10} more participants")
    for w in d.warnings:
        typer.echo(f"  note: {w}")


def inspect(
    path: Annotated[Path, typer.Argument(help="The export: a zip, an unpacked folder or a single file.")],
    messages: Annotated[bool, typer.Option("--messages", help="Print every message as one JSON line instead.")] = False,
    format: Format = "",
    exclude_conversation: ExcludeConversation = [],  # noqa: B006
    exclude_sender: ExcludeSender = [],  # noqa: B006
    min_messages: Annotated[int, typer.Option("--min-messages", help="Drop shorter conversations.")] = 1,
    session_gap: SessionGap = "",
    merge_window: MergeWindow = "",
    script: Script = [],  # noqa: B006
    script_min_fraction: ScriptFraction = 0.5,
    redact: Annotated[str, typer.Option("--redact", help=REDACT_HELP)] = "off",
    keep_name: KeepName = [],  # noqa: B006
    dedupe: Annotated[bool, typer.Option("--dedupe", help="Drop repeated messages.")] = False,
    timezone: Timezone = "",
) -> None:
    """Parse an export here, with no service, and print what it holds as JSON.

    What the parser read past and the filters dropped is listed under `warnings`; with
    `--messages` it goes to stderr, one `note:` line each, like `ingest` prints it.
    """
    from doppel.conversation import format_timestamp
    from doppel.dataset import StatsAccumulator
    from doppel.errors import DoppelError
    from services.ingest.dedupe import SeenIndex
    from services.ingest.filters import Filters
    from services.ingest.parsers import parse, parser_for
    from services.ingest.pseudonyms import for_import
    from services.ingest.source import open_source

    params = dict(locals())
    out = sys.stdout.buffer
    try:
        options = _options(params, keep_duplicates=not dedupe)
        stats = StatsAccumulator()
        with open_source(path) as source:
            name, parsed = parse(source, options.format)
            filters = Filters(options, SeenIndex(), for_import(options, parser_for(name), source, None))
            for c in filters.apply_all(parsed):
                stats.add(c)
                if messages:
                    out.write(b"".join(
                        orjson.dumps(
                            {"conversation": c.id, "sender": m.sender, "text": m.text,
                             "timestamp": format_timestamp(m.timestamp)},
                            option=orjson.OPT_APPEND_NEWLINE,
                        )
                        for m in c.messages
                    ))
            scrub = filters.pseudonyms.text if filters.pseudonyms else str
            warnings = [*map(scrub, source.warnings), *filters.counts.warnings()]
    except DoppelError as e:
        fail(str(e))
    if not messages:
        s = stats.result()
        summary = {
            "format": name,
            "conversations": s.conversations,
            "messages": s.messages,
            "participants": s.participants,
            "first": format_timestamp(s.first) if s.first else None,
            "last": format_timestamp(s.last) if s.last else None,
            "warnings": warnings,
        }
        out.write(orjson.dumps(summary, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_INDENT_2))
    out.flush()
    if messages:
        for w in warnings:
            typer.echo(f"note: {w}", err=True)


datasets_app = typer.Typer(help="List, show and delete datasets in the ingest service.", no_args_is_help=True)


def _call(method: str, request: Any, **kwargs: Any) -> Any:
    from doppel.clients import IngestClient

    return call(IngestClient, method, request, **kwargs)


@datasets_app.command("list")
def list_datasets() -> None:
    """One line per dataset, newest first: id, name, conversations, messages, format."""
    from doppel.v1 import ingest_pb2

    token = ""
    while True:
        page = _call("list_datasets", ingest_pb2.ListDatasetsRequest(page_token=token))
        for d in page.datasets:
            fmt = ",".join(dict.fromkeys(_format_name(s.format) for s in d.sources))
            typer.echo(f"{d.id}  {d.name!r}  {d.stats.conversations} conversations  {d.stats.messages} messages  {fmt}")
        token = page.next_page_token
        if not token:
            break


@datasets_app.command("show")
def show_dataset(dataset_id: Annotated[str, typer.Argument(help="Dataset id.")]) -> None:
    """A dataset's manifest as JSON."""
    from google.protobuf.json_format import MessageToJson

    from doppel.v1 import ingest_pb2

    typer.echo(MessageToJson(_call("get_dataset", ingest_pb2.GetDatasetRequest(dataset_id=dataset_id)).dataset))


@datasets_app.command("delete")
def delete_dataset(dataset_id: Annotated[str, typer.Argument(help="Dataset id.")]) -> None:
    """Delete a dataset, and its raw export unless another dataset uses it."""
    from doppel.v1 import ingest_pb2

    r = _call("delete_dataset", ingest_pb2.DeleteDatasetRequest(dataset_id=dataset_id))
    typer.echo(f"deleted {dataset_id}: {r.objects_deleted} objects")
