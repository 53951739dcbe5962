"""The Import tab: upload an export with the ingest options, then see the dataset's stats and first conversations."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gradio as gr
import grpc
import pandas as pd

from doppel.v1 import ingest_pb2
from ui import forms, views
from ui.backend import Backend, checked_input, reported, warn

NEW_DATASET = ""
SCRIPTS = ["Latin", "Cyrillic", "Greek", "Arabic", "Hebrew", "Han", "Hiragana", "Katakana", "Hangul", "Devanagari",
           "Thai"]


class ImportTab:
    """Handlers of the Import tab; `render` lays it out inside the app's Blocks."""

    def __init__(self, backend: Backend):
        self.backend = backend

    # --- handlers -----------------------------------------------------------------------------

    def upload(
        self, file: str | None, dataset_name: str, target: str, format: str, redaction: str, min_messages: float | None,
        exclude_conversations: str, exclude_senders: str, session_gap: str, merge_window: str, scripts: list[str],
        script_min_fraction: float, timezone: str, keep_duplicates: bool, keep_raw: bool, keep_names: str = "",
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[Any, ...]:
        """Upload `file` into a new dataset (or `target`), then show it: (datasets, targets, *`show`)."""
        if not file:
            raise gr.Error("Choose an export first: a zip, a folder's zip or a single file.")
        with checked_input():
            options = forms.ingest_options(
                format=format, exclude_conversations=exclude_conversations, exclude_senders=exclude_senders,
                min_messages=min_messages, session_gap=session_gap, merge_window=merge_window, scripts=scripts,
                script_min_fraction=script_min_fraction, redaction=redaction, keep_duplicates=keep_duplicates,
                timezone=timezone, keep_raw=keep_raw, keep_names=keep_names,
            )
        path = Path(file)
        header = ingest_pb2.UploadHeader(filename=path.name, dataset_id=target or "", dataset_name=dataset_name or "",
                                         options=options)
        total = max(1, os.path.getsize(path))
        progress(0, desc=f"uploading {path.name}")

        def sent(n: int) -> None:
            progress(n / total, desc=f"uploading {path.name}" if n < total else "parsing the export")

        with reported(self.backend.ingest):
            dataset = self.backend.ingest.upload_file(path, header, progress=sent).dataset
        progress(1, desc="reading the dataset back")
        shown = self.show(dataset.id)
        gr.Info(f"Imported {dataset.stats.messages} messages into {dataset.name}.")
        return (*self.refresh(dataset.id, target), *shown)

    def show(self, dataset_id: str | None) -> tuple[str, pd.DataFrame, pd.DataFrame, str]:
        """(summary, messages per participant, messages per month, preview) of a dataset."""
        if not dataset_id:
            empty = ingest_pb2.Dataset()
            return ("*Upload an export, or pick a dataset, to see its stats.*", views.participants_frame(empty.stats),
                    views.timeline_frame(empty.stats), "")
        with reported(self.backend.ingest):
            dataset = self.backend.ingest.get_dataset(ingest_pb2.GetDatasetRequest(dataset_id=dataset_id)).dataset
            conversations = self.backend.ingest.preview_dataset(
                ingest_pb2.PreviewDatasetRequest(dataset_id=dataset_id, max_conversations=3, max_messages=12)
            ).conversations
        return (views.dataset_summary(dataset), views.participants_frame(dataset.stats),
                views.timeline_frame(dataset.stats), views.preview(conversations))

    def refresh(self, selected: str | None, target: str | None, *, quiet: bool = False) -> tuple[Any, Any]:
        """The dataset dropdown and the "add to" one (a new dataset or any existing one), keeping what was chosen.

        Quiet, a service that does not answer changes nothing (the header already says so).
        """
        try:
            datasets = self.backend.ingest.list_datasets(ingest_pb2.ListDatasetsRequest()).datasets
        except grpc.RpcError as err:
            if not quiet:
                warn(err, self.backend.ingest)
            return gr.skip(), gr.skip()
        choices = views.dataset_choices(datasets)
        ids = [value for _, value in choices]
        return (gr.update(choices=choices, value=selected if selected in ids else None),
                gr.update(choices=[("a new dataset", NEW_DATASET), *choices],
                          value=target if target in ids else NEW_DATASET))

    def load(self, selected: str | None, target: str | None) -> tuple[Any, Any]:
        """`refresh` when the page opens or the tab is chosen: quiet, as the header says which services do not answer."""
        return self.refresh(selected, target, quiet=True)

    # --- layout -------------------------------------------------------------------------------

    def render(self) -> gr.Tab:
        with gr.Tab("Import", id="import") as tab:
            gr.Markdown(
                "Drop the export your messenger gave you: Facebook Messenger, Instagram, Discord "
                "(DiscordChatExporter), WhatsApp, Telegram, Slack, a Reddit CSV, or Doppel's JSONL; "
                "a zip, or a single file."
            )
            with gr.Row():
                with gr.Column(scale=2):
                    file = gr.File(label="Export (zip or file)", type="filepath", elem_id="import-file")
                with gr.Column(scale=1):
                    name = gr.Textbox(label="Dataset name", placeholder="default: the file name")
                    target = gr.Dropdown(label="Add to", choices=[("a new dataset", NEW_DATASET)], value=NEW_DATASET)
                    start = gr.Button("Import", variant="primary", elem_id="import-button")
            with gr.Accordion("Options", open=False):
                with gr.Row():
                    fmt = gr.Dropdown(label="Format", choices=forms.FORMATS, value=forms.AUTO_FORMAT,
                                      info="auto detects it from the content")
                    redaction = gr.Dropdown(label="Replace before storing", choices=list(forms.REDACTIONS),
                                            value=next(iter(forms.REDACTIONS)))
                    min_messages = gr.Number(label="Fewest messages a conversation keeps", value=2, minimum=1,
                                             precision=0)
                with gr.Row():
                    exclude_conversations = gr.Textbox(label="Leave out conversations",
                                                       placeholder="titles or participants, comma-separated")
                    exclude_senders = gr.Textbox(label="Leave out senders", placeholder="names, comma-separated")
                    keep_names = gr.Textbox(label="Names that stay", placeholder="speakers, comma-separated",
                                            info="when names are replaced: everyone else becomes `<PERSON_1>`, `<PERSON_2>`, ...")
                with gr.Row():
                    session_gap = gr.Textbox(label="Split conversations at pauses longer than",
                                             placeholder="e.g. 6h; empty keeps threads whole")
                    merge_window = gr.Textbox(label="Merge one sender's messages sent within",
                                              placeholder="e.g. 2m; empty merges nothing")
                    timezone = gr.Textbox(label="Time zone of exports that wrote local time",
                                          placeholder="e.g. Europe/Berlin; empty keeps it as written")
                with gr.Row():
                    scripts = gr.CheckboxGroup(label="Keep only conversations mostly written in", choices=SCRIPTS)
                    script_fraction = gr.Slider(label="Share of letters in those scripts", minimum=0, maximum=1,
                                                value=0.5, step=0.05)
                    keep_duplicates = gr.Checkbox(label="Keep messages the dataset already holds", value=False)
                    keep_raw = gr.Checkbox(label="Keep the export itself in the store (unredacted; by default it is "
                                                 "deleted once parsed)", value=False, elem_id="import-keep-raw")
            gr.Markdown("## Dataset")
            with gr.Row():
                dataset = gr.Dropdown(label="Dataset", choices=[], value=None, scale=4, elem_id="import-dataset")
                reload = gr.Button("↻ Refresh", scale=0, min_width=120)
            summary = gr.Markdown("*Upload an export, or pick a dataset, to see its stats.*", elem_id="import-summary")
            with gr.Row():
                by_person = gr.BarPlot(x="participant", y="messages", title="Messages per participant", sort="-y",
                                       y_lim=[0, None], height=300, elem_id="import-participants")
                by_month = gr.BarPlot(x="month", y="messages", title="Messages per month", sort="x",
                                      y_lim=[0, None], height=300,
                                      elem_id="import-timeline")
            with gr.Accordion("First conversations", open=True):
                preview = gr.Markdown(elem_id="import-preview")

            shown = [summary, by_person, by_month, preview]
            start.click(
                self.upload,
                [file, name, target, fmt, redaction, min_messages, exclude_conversations, exclude_senders, session_gap,
                 merge_window, scripts, script_fraction, timezone, keep_duplicates, keep_raw, keep_names],
                [dataset, target, *shown],
                api_visibility="private",
            )
            dataset.input(self.show, dataset, shown, api_visibility="private")
            reload.click(self.refresh, [dataset, target], [dataset, target], api_visibility="private")
            tab.select(self.load, [dataset, target], [dataset, target], api_visibility="private")
        self.load_io = [dataset, target]
        return tab
