"""The Conversations tab: a whole fake conversation among a group model's participants, and prompt completions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from doppel.v1 import inference_pb2 as inf
from ui import forms, views
from ui.backend import Backend, checked_input, reported
from ui.chat_tab import served_model, served_models

LET_MODEL_CHOOSE = ""
PARTICIPANTS = "Who takes part"
RAW_TEXT = ""


def opening_turns(text: str) -> list[tuple[str, str]]:
    """`Name: text` lines as turns; a line without a name is a ValueError that quotes it."""
    turns = []
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        speaker, sep, said = line.partition(":")
        if not sep or not speaker.strip():
            raise ValueError(f"Opening: {line.strip()!r} is not a turn such as 'Ann: hi'")
        turns.append((speaker.strip(), said.strip()))
    return turns


class ConversationsTab:
    """Handlers of the Conversations tab; `render` lays it out inside the app's Blocks."""

    def __init__(self, backend: Backend):
        self.backend = backend

    # --- handlers -----------------------------------------------------------------------------

    def refresh(self, selected: str | None) -> Any:
        return served_models(self.backend, selected)

    def pick_model(self, model_id: str | None) -> tuple[Any, Any, Any]:
        """Participants to choose from (the speakers the model learned: a simulation writes every turn),
        first speakers, and who a prompt opens (anyone in the chat)."""
        if not model_id:
            empty = gr.update(choices=[], value=None)
            return gr.update(choices=[], value=[], label=PARTICIPANTS), empty, empty
        m = served_model(self.backend, model_id)
        learned = list(m.speakers)
        everyone = list(dict.fromkeys([*learned, *m.participants]))
        label = PARTICIPANTS if len(learned) > 1 else (
            f"{PARTICIPANTS} (this model learned only {', '.join(learned)}: to write conversations between people, "
            "train a group model that learns each of them in the Train tab)")
        first = [("let the model choose", LET_MODEL_CHOOSE), *((p, p) for p in learned)]
        opens = [("nobody: continue the raw text", RAW_TEXT), *((p, p) for p in everyone)]
        return (gr.update(choices=learned, value=learned, label=label), gr.update(choices=first, value=LET_MODEL_CHOOSE),
                gr.update(choices=opens, value=learned[0] if learned else RAW_TEXT))

    def simulate(
        self, model_id: str | None, participants: list[str], first_speaker: str, first_prompt: str, opening: str,
        turns: float, temperature: float, max_new_tokens: float, seed: str,
    ) -> Iterator[str]:
        """The conversation as Markdown, growing by one turn as each is generated."""
        if not model_id:
            raise gr.Error("Pick a model first (train a group model in the Train tab).")
        with checked_input():
            openings = opening_turns(opening)
            params = forms.sampling(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
        request = inf.SimulateRequest(
            model_id=model_id, participants=participants, opening=[inf.Turn(speaker=s, text=t) for s, t in openings],
            first_speaker=first_speaker or "", first_prompt=(first_prompt or "").strip(), turns=int(turns),
            sampling=params,
        )
        written = list(openings)
        yield views.transcript(written) or "*Writing…*"
        with reported(self.backend.inference):
            for reply in self.backend.inference.simulate(request):
                written.append((reply.turn.speaker, reply.turn.text))
                yield views.transcript(written)

    def complete(
        self, model_id: str | None, prompt: str, as_speaker: str, n: float, temperature: float, max_new_tokens: float,
        seed: str,
    ) -> str:
        """`n` continuations of the prompt, as Markdown."""
        if not model_id:
            raise gr.Error("Pick a model first (train one in the Train tab).")
        if not prompt or not prompt.strip():
            raise gr.Error("Type a prompt to continue, e.g. 'I love to eat'.")
        with checked_input():
            params = forms.sampling(temperature=temperature, max_new_tokens=max_new_tokens, n=n, seed=seed)
        request = inf.CompleteRequest(model_id=model_id, prompt=prompt, as_speaker=as_speaker or "", sampling=params)
        with reported(self.backend.inference):
            candidates = self.backend.inference.complete(request).candidates
        opening = f"{as_speaker}: {prompt}" if as_speaker else prompt
        return views.candidates_markdown(opening, candidates)

    # --- layout -------------------------------------------------------------------------------

    def render(self) -> gr.Tab:
        with gr.Tab("Conversations", id="conversations") as tab:
            gr.Markdown("⚠ **Generated text.** Everything below is written by a model, not by the people named.")
            with gr.Row():
                model = gr.Dropdown(label="Model (a group model learned several speakers)", choices=[], value=None,
                                    scale=4, elem_id="sim-model")
                reload = gr.Button("↻ Refresh", scale=0, min_width=120)
            with gr.Tab("Whole conversation"):
                with gr.Row():
                    participants = gr.CheckboxGroup(label=PARTICIPANTS, elem_id="sim-participants")
                    first_speaker = gr.Dropdown(label="Who speaks first", choices=[], elem_id="sim-first")
                    turns = gr.Slider(label="Turns", minimum=1, maximum=40, step=1, value=8, elem_id="sim-turns")
                with gr.Row():
                    first_prompt = gr.Textbox(label="Start of the first turn (optional)", placeholder="e.g. hey, guess what")
                    opening = gr.Textbox(label="Opening turns (optional), one 'Name: text' a line", lines=2)
                simulate = gr.Button("Write a conversation", variant="primary", elem_id="sim-start")
                conversation = gr.Markdown(elem_id="sim-output", max_height=480)
            with gr.Tab("Complete a prompt"):
                with gr.Row():
                    prompt = gr.Textbox(label="Prompt", placeholder="I love to eat", scale=3, elem_id="complete-prompt")
                    as_speaker = gr.Dropdown(label="As whose turn", choices=[], scale=1)
                    n = gr.Slider(label="Samples", minimum=1, maximum=8, step=1, value=3, scale=1)
                complete = gr.Button("Complete", variant="primary", elem_id="complete-start")
                completions = gr.Markdown(elem_id="complete-output")
            with gr.Accordion("Sampling", open=False):
                with gr.Row():
                    temperature = gr.Slider(label="Temperature (0: greedy)", minimum=0, maximum=2, step=0.05,
                                            value=0.9)
                    max_new_tokens = gr.Slider(label="Longest turn or sample (tokens)", minimum=8, maximum=256,
                                               step=8, value=48)
                    seed = gr.Textbox(label="Seed", placeholder="empty: fresh samples each time")

            sampling = [temperature, max_new_tokens, seed]
            simulate.click(self.simulate, [model, participants, first_speaker, first_prompt, opening, turns, *sampling],
                           conversation, show_progress="minimal", api_visibility="private")
            complete.click(self.complete, [model, prompt, as_speaker, n, *sampling], completions,
                           show_progress="minimal", api_visibility="private")
            sides = [participants, first_speaker, as_speaker]
            model.input(self.pick_model, model, sides, api_visibility="private")
            for trigger in (reload.click, tab.select):
                trigger(self.refresh, model, model, api_visibility="private").then(
                    self._fill, [model, participants], sides, api_visibility="private")
        return tab

    def _fill(self, model_id: str | None, participants: list[str]) -> tuple[Any, Any, Any]:
        """After a refresh: keep the choices when they still fit the chosen model, else fill them in afresh."""
        if model_id and participants and set(participants) <= set(served_model(self.backend, model_id).speakers):
            return gr.skip(), gr.skip(), gr.skip()
        return self.pick_model(model_id)
