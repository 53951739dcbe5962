"""The Models tab: every persona model with its evaluation, fidelity figures and samples; measure its fidelity
again; delete one, after a confirmation."""

from __future__ import annotations

from typing import Any

import gradio as gr
import grpc
import pandas as pd

from doppel.v1 import trainer_pb2 as tr
from ui import views
from ui.backend import Backend, reported, warn


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
            table = gr.Dataframe(value=views.models_frame([]), label="Persona models (lower held-out loss is better)",
                                 interactive=False, wrap=True, elem_id="models-table")
            details = gr.Markdown(elem_id="models-details")

            listing = [table, model, details]
            for trigger in (reload.click, tab.select):
                trigger(self.refresh, model, listing, api_visibility="private")
            model.input(self.show, model, details, api_visibility="private")
            measure.click(self.measure, model, details, api_visibility="private")
            remove.click(self.ask, model, [confirm_row, question], api_visibility="private")
            no.click(lambda: gr.update(visible=False), None, confirm_row, api_visibility="private")
            yes.click(self.delete, model, [confirm_row, *listing], api_visibility="private")
        return tab
