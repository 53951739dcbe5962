"""The Train tab: choose data, speakers, base model and recipe; start a run and follow it live; cancel it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import gradio as gr
import grpc

from doppel.v1 import ingest_pb2
from doppel.v1 import trainer_pb2 as tr
from ui import forms, views
from ui.backend import Backend, checked_input, reported, warn

REDRAW_S = 0.5  # step events come many a second on a fast machine; the page needs a few


class TrainTab:
    """Handlers of the Train tab; `render` lays it out inside the app's Blocks."""

    def __init__(self, backend: Backend):
        self.backend = backend

    # --- handlers -----------------------------------------------------------------------------

    def refresh(self, dataset: str | None, base: str | None) -> tuple[Any, Any]:
        """The dataset and base-model dropdowns, keeping what was chosen when it still exists."""
        datasets, bases = gr.update(), gr.update()
        try:
            listed = self.backend.ingest.list_datasets(ingest_pb2.ListDatasetsRequest()).datasets
            choices = views.dataset_choices(listed)
            ids = [v for _, v in choices]
            datasets = gr.update(choices=choices, value=dataset if dataset in ids else (ids[0] if ids else None))
        except grpc.RpcError as err:
            warn(err, self.backend.ingest)
        try:
            registry = self.backend.trainer.list_base_models(tr.ListBaseModelsRequest()).base_models
            names = [b.name for b in registry]
            keep = base if base else (names[0] if names else None)
            bases = gr.update(choices=views.base_model_choices(registry), value=keep)
        except grpc.RpcError as err:
            warn(err, self.backend.trainer)
        return datasets, bases

    def speakers(self, dataset_id: str | None, chosen: list[str] | None = None) -> Any:
        """The participants of a dataset to choose speakers from; keeps `chosen` ones, else the most active."""
        if not dataset_id:
            return gr.update(choices=[], value=[])
        with reported(self.backend.ingest):
            stats = self.backend.ingest.get_dataset(ingest_pb2.GetDatasetRequest(dataset_id=dataset_id)).dataset.stats
        choices = views.speaker_choices(stats)
        names = [v for _, v in choices]
        kept = [n for n in chosen or [] if n in names]
        return gr.update(choices=choices, value=kept or names[:1])

    def start(
        self, dataset_id: str | None, speakers: list[str], base_model: str | None, method: str, preset: str,
        model_name: str, max_steps: str, epochs: str, learning_rate: str, lr_schedule: str, batch_size: str,
        block_size: str, sample_every: str, seed: str, lora_rank: str, devices: str = "",
    ) -> Iterator[tuple[Any, ...]]:
        """Start a run, then follow it until it ends: (run id, progress, loss curve, samples, links) per update."""
        if not dataset_id:
            raise gr.Error("Choose a dataset first (import one in the Import tab).")
        if not speakers:
            raise gr.Error("Choose at least one speaker for the model to learn.")
        with checked_input():
            spec = forms.training_spec(
                dataset_id=dataset_id, speakers=speakers, base_model=base_model or "", method=method, preset=preset,
                model_name=model_name, max_steps=max_steps, epochs=epochs, learning_rate=learning_rate,
                lr_schedule=lr_schedule, batch_size=batch_size, block_size=block_size, sample_every=sample_every,
                seed=seed, lora_rank=lora_rank, devices=devices,
            )
        with reported(self.backend.trainer):
            run = self.backend.trainer.start_run(tr.StartRunRequest(spec=spec)).run
        yield from self.follow(run)

    def follow(self, run: tr.Run) -> Iterator[tuple[Any, ...]]:
        """Updates of the run's widgets from its WatchRun events, at most every REDRAW_S, and always the last."""
        view = views.RunView(run_id=run.run_id, dashboard_url=run.dashboard_url, state=run.state)
        yield self._paint(view)
        drawn = time.monotonic()
        with reported(self.backend.trainer):
            for event in self.backend.trainer.watch_run(tr.WatchRunRequest(run_id=run.run_id, from_start=True)):
                notable = view.add(event)
                if notable or time.monotonic() - drawn >= REDRAW_S:
                    yield self._paint(view)
                    drawn = time.monotonic()
            view.model_id = self.backend.trainer.get_run(tr.GetRunRequest(run_id=run.run_id)).run.model_id
        yield self._paint(view)
        if view.state == tr.RUN_STATE_COMPLETED:
            gr.Info(f"Training finished: model {view.model_id} is ready in the Chat tab.")
        elif view.state == tr.RUN_STATE_FAILED:
            gr.Warning(f"Training failed: {view.message}")

    @staticmethod
    def _paint(view: views.RunView) -> tuple[Any, ...]:
        return view.run_id, view.progress(), view.loss_frame(), view.samples_markdown(), view.links()

    def pull(self, model: str, revision: str) -> Iterator[tuple[str, Any]]:
        """Pull a base model from the Hugging Face Hub into the store: (progress, base dropdown) as it goes."""
        if not model or not model.strip():
            raise gr.Error("Name a model to pull: a hub id such as Qwen/Qwen2.5-0.5B-Instruct, or a curated name.")
        request = tr.PullBaseModelRequest(model=model.strip(), revision=(revision or "").strip())
        last = time.monotonic()
        with reported(self.backend.trainer):
            for e in self.backend.trainer.pull_base_model(request):
                if e.HasField("base_model"):
                    bases = self.backend.trainer.list_base_models(tr.ListBaseModelsRequest()).base_models
                    yield (views.pull_progress(e), gr.update(choices=views.base_model_choices(bases), value=e.base_model.name))
                elif time.monotonic() - last >= REDRAW_S or not e.total_bytes:
                    last = time.monotonic()
                    yield views.pull_progress(e), gr.skip()

    def describe_base(self, name: str | None) -> str:
        """What the chosen base needs to train, per method (the registry's estimates)."""
        if not name:
            return ""
        with reported(self.backend.trainer):
            listed = self.backend.trainer.list_base_models(tr.ListBaseModelsRequest())
        found = next((b for b in listed.base_models if b.name == name), None)
        if found is None:
            return "*Not a listed base: a local path, store key or cached hub id.*"
        return views.base_details(found, listed.device if listed.HasField("device") else None)

    def cancel(self, run_id: str) -> str:
        """Ask the trainer to cancel the run being followed; the follow ends when the run does."""
        if not run_id:
            raise gr.Error("No run to cancel: start one first.")
        with reported(self.backend.trainer):
            run = self.backend.trainer.cancel_run(tr.CancelRunRequest(run_id=run_id)).run
        gr.Info(f"Run {run.run_id}: {views.state_name(run.state)}.")
        return run_id

    # --- layout -------------------------------------------------------------------------------

    def render(self) -> gr.Tab:
        with gr.Tab("Train", id="train") as tab:
            with gr.Row():
                dataset = gr.Dropdown(label="Dataset", choices=[], value=None, scale=4, elem_id="train-dataset")
                reload = gr.Button("↻ Refresh", scale=0, min_width=120)
            speakers = gr.CheckboxGroup(
                label="Who the model learns to sound like",
                info="One person makes a persona; several make a group model that can write whole conversations.",
                elem_id="train-speakers",
            )
            with gr.Row():
                base = gr.Dropdown(label="Base model", choices=[], value=None, allow_custom_value=True,
                                   info="a name, a local path or a hub id in the cache", elem_id="train-base")
                method = gr.Radio(label="Method", choices=[("LoRA adapter", "lora"), ("QLoRA (4-bit base)", "qlora"),
                                                                   ("all weights", "full")],
                                  value="lora")
                preset = gr.Radio(label="Preset", choices=[(label, name) for name, label in views.PRESETS.items()],
                                  value="quick-cpu", elem_id="train-preset")
            base_info = gr.Markdown(elem_id="train-base-info")
            with gr.Accordion("Pull a base model from the Hugging Face Hub", open=False):
                with gr.Row():
                    pull_model = gr.Textbox(label="Hub id or curated name", placeholder="Qwen/Qwen2.5-0.5B-Instruct",
                                            scale=3, elem_id="train-pull-model")
                    pull_revision = gr.Textbox(label="Revision", placeholder="main", scale=1)
                    pull = gr.Button("Pull", scale=0, min_width=120, elem_id="train-pull")
                pulled = gr.HTML(elem_id="train-pull-progress")
            with gr.Accordion("Hyperparameters (empty: the preset's value)", open=False):
                with gr.Row():
                    model_name = gr.Textbox(label="Model name", placeholder="default: the speakers")
                    max_steps = gr.Textbox(label="Steps", placeholder="e.g. 200", elem_id="train-steps")
                    epochs = gr.Textbox(label="Epochs (unless steps)", placeholder="e.g. 1")
                    learning_rate = gr.Textbox(label="Learning rate", placeholder="e.g. 2e-4")
                    schedule = gr.Dropdown(label="Schedule", choices=[("preset's", ""), *((s, s) for s in forms.SCHEDULES)],
                                           value="")
                with gr.Row():
                    batch_size = gr.Textbox(label="Batch size", placeholder="e.g. 8")
                    block_size = gr.Textbox(label="Block size (tokens)", placeholder="e.g. 256")
                    sample_every = gr.Textbox(label="Sample every N steps", placeholder="0: only at the end",
                                              elem_id="train-sample-every")
                    seed = gr.Textbox(label="Seed", placeholder="e.g. 0")
                    lora_rank = gr.Textbox(label="LoRA rank", placeholder="e.g. 16")
                    devices = gr.Textbox(label="Devices", placeholder="default: every GPU of the trainer")
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="train-start")
                cancel = gr.Button("Cancel run", variant="stop", elem_id="train-cancel")
            run_id = gr.Textbox(visible=False)
            links = gr.Markdown(elem_id="train-links")
            progress = gr.HTML(elem_id="train-progress")
            with gr.Row():
                loss = gr.LinePlot(x="step", y="loss", title="Training loss", height=320, elem_id="train-loss")
                with gr.Column():
                    gr.Markdown("#### Samples (generated text)")
                    samples = gr.Markdown("*Samples appear here as the run generates them.*", elem_id="train-samples",
                                          max_height=320)

            reload.click(self.refresh, [dataset, base], [dataset, base], api_visibility="private").then(
                self.speakers, [dataset, speakers], speakers, api_visibility="private")
            tab.select(self.refresh, [dataset, base], [dataset, base], api_visibility="private").then(
                self.speakers, [dataset, speakers], speakers, api_visibility="private")
            dataset.input(self.speakers, [dataset, speakers], speakers, api_visibility="private")
            start.click(
                self.start,
                [dataset, speakers, base, method, preset, model_name, max_steps, epochs, learning_rate, schedule,
                 batch_size, block_size, sample_every, seed, lora_rank, devices],
                [run_id, progress, loss, samples, links],
                show_progress="hidden",
                api_visibility="private",
            )
            cancel.click(self.cancel, run_id, run_id, api_visibility="private")
            pull.click(self.pull, [pull_model, pull_revision], [pulled, base], show_progress="hidden",
                       api_visibility="private").then(self.describe_base, base, base_info, api_visibility="private")
            base.change(self.describe_base, base, base_info, api_visibility="private")
        return tab
