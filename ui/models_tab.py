"""The Models tab: every persona model with its evaluation, fidelity figures and samples; measure its fidelity
again; export one as a zip to download; delete one, after a confirmation."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import grpc
import pandas as pd

from doppel import enums
from doppel.v1 import trainer_pb2 as tr
from ui import views
from ui.backend import Backend, reported, warn

QUANTS = ("q8_0",)  # a GGUF's quantisations the trainer makes (services/trainer/to_gguf.py), offered beside the dtypes


class ModelsTab:
    """Handlers of the Models tab; `render` lays it out inside the app's Blocks."""

    def __init__(self, backend: Backend):
        self.backend = backend

    # --- handlers -----------------------------------------------------------------------------

    def _models(self) -> list[tr.PersonaModel]:
        models: list[tr.PersonaModel] = []
        token = ""
        while True:
            page = self.backend.trainer.list_models(tr.ListModelsRequest(page_token=token))
            models += page.models
            if not (token := page.next_page_token):
                return models

    def refresh(self, selected: str | None) -> tuple[Any, Any, str]:
        """(table of models, model dropdown, details of the selected one)."""
        try:
            models = self._models()
        except grpc.RpcError as err:
            warn(err, self.backend.trainer)
            return gr.skip(), gr.skip(), gr.skip()
        by_id = {m.id: m for m in models}
        keep = selected if selected in by_id else (models[0].id if models else None)
        details = views.model_details(by_id[keep]) if keep else "*No models yet: train one in the Train tab.*"
        return views.models_frame(models), gr.update(choices=views.model_choices(models), value=keep), details

    def show(self, model_id: str | None) -> str:
        if not model_id:
            return ""
        with reported(self.backend.trainer):
            return views.model_details(self.backend.trainer.get_model(tr.GetModelRequest(model_id=model_id)).model)

    def measure(self, model_id: str | None, progress: gr.Progress = gr.Progress()) -> str:
        """Measure the model's fidelity again on its own dataset (the figures become the model's), then show it."""
        if not model_id:
            raise gr.Error("Pick a model to measure.")
        with reported(self.backend.trainer):
            for e in self.backend.trainer.evaluate_model(tr.EvaluateModelRequest(model_id=model_id)):
                progress((e.done, e.total) if e.total else None, desc=e.message)
        gr.Info(f"Measured the fidelity of {model_id}.")
        return self.show(model_id)

    def export(self, model_id: str | None, fmt: str, dtype: str, progress: gr.Progress = gr.Progress()) -> str:
        """The model exported as `fmt` through the trainer, zipped: the path of the zip to download."""
        if not model_id:
            raise gr.Error("Pick a model to export.")
        folder = Path(tempfile.mkdtemp(prefix="doppel-export-"))
        weights = {"quant": dtype} if dtype in QUANTS else {"dtype": dtype}
        request = tr.ExportModelRequest(model_id=model_id, format=enums.values(tr.ModelExportFormat)[fmt], **weights)
        try:
            with reported(self.backend.trainer):
                self.backend.trainer.export_to(request, folder / model_id, progress=lambda done, total: progress(
                    (done, total) if total else None, desc="receiving", unit="bytes"))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        archive = shutil.make_archive(str(folder / f"{model_id}-{fmt}"), "zip", folder, model_id)
        shutil.rmtree(folder / model_id)
        gr.Info(f"Exported {model_id} as {fmt}: download it below.")
        return archive

    def ask(self, model_id: str | None) -> tuple[Any, str]:
        """Show the confirmation row, naming what would be deleted."""
        if not model_id:
            raise gr.Error("Pick a model to delete.")
        return gr.update(visible=True), f"Delete model `{model_id}` and all its files? This cannot be undone."

    def delete(self, model_id: str | None) -> tuple[Any, pd.DataFrame | Any, Any, str]:
        """Delete the model, hide the confirmation, and list what is left."""
        if not model_id:
            raise gr.Error("Pick a model to delete.")
        with reported(self.backend.trainer):
            removed = self.backend.trainer.delete_model(tr.DeleteModelRequest(model_id=model_id)).objects_deleted
        gr.Info(f"Deleted model {model_id} ({removed} files).")
        return (gr.update(visible=False), *self.refresh(None))

    # --- layout -------------------------------------------------------------------------------

    def render(self) -> gr.Tab:
        with gr.Tab("Models", id="models") as tab:
            with gr.Row():
                model = gr.Dropdown(label="Model", choices=[], value=None, scale=4, elem_id="models-model")
                reload = gr.Button("↻ Refresh", scale=0, min_width=120)
                measure = gr.Button("Measure fidelity", scale=0, min_width=160, elem_id="models-measure")
                remove = gr.Button("Delete…", variant="stop", scale=0, min_width=120, elem_id="models-delete")
            with gr.Row(visible=False) as confirm_row:
                question = gr.Markdown()
                yes = gr.Button("Yes, delete it", variant="stop", scale=0, min_width=160, elem_id="models-confirm")
                no = gr.Button("Keep it", scale=0, min_width=120)
            with gr.Row():
                fmt = gr.Dropdown(label="Export as", choices=list(enums.values(tr.ModelExportFormat)), value="merged",
                                  scale=2, elem_id="models-export-format",
                                  info="adapter: for peft on its base; merged: a standalone transformers model; "
                                       "gguf: for llama.cpp and LM Studio; ollama: GGUF + Modelfile")
                dtype = gr.Dropdown(label="Weights", choices=["f32", "f16", "bf16", *QUANTS], value="f32", scale=1,
                                    info="q8_0: GGUF only")
                export = gr.Button("Export", scale=0, min_width=120, elem_id="models-export")
                download = gr.File(label="Download", interactive=False, scale=3, elem_id="models-download")
            table = gr.Dataframe(value=views.models_frame([]), label="Persona models (lower held-out loss is better)",
                                 interactive=False, wrap=True, elem_id="models-table")
            details = gr.Markdown(elem_id="models-details")

            listing = [table, model, details]
            for trigger in (reload.click, tab.select):
                trigger(self.refresh, model, listing, api_visibility="private")
            model.input(self.show, model, details, api_visibility="private")
            measure.click(self.measure, model, details, api_visibility="private")
            export.click(self.export, [model, fmt, dtype], download, api_visibility="private")
            remove.click(self.ask, model, [confirm_row, question], api_visibility="private")
            no.click(lambda: gr.update(visible=False), None, confirm_row, api_visibility="private")
            yes.click(self.delete, model, [confirm_row, *listing], api_visibility="private")
        return tab
