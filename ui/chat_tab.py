"""The Chat tab: talk to a persona model, replies streamed as they are sampled, with `n` candidates to pick from.

The conversation lives in a `gr.State` as (speaker, text) pairs, so it keeps who said what
even when the person switches sides; the Chatbot is drawn from it, the user's participant
on the right.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import gradio as gr
import grpc

from doppel.v1 import inference_pb2 as inf
from ui import forms, views
from ui.backend import Backend, checked_input, reported, warn

OUTSIDER = "You"  # who the user is when they play nobody from the chat
Turns = list[tuple[str, str]]


def served_models(backend: Backend, selected: str | None) -> Any:
    """A dropdown update listing the models the inference service serves, newest first (model ids sort by
    creation time, see `doppel.layout.new_id`), keeping `selected` if still there, else the newest."""
    try:
        models = backend.inference.list_served_models(inf.ListServedModelsRequest()).models
    except grpc.RpcError as err:
        warn(err, backend.inference)
        return gr.update()
    choices = views.served_choices(sorted(models, key=lambda m: m.model_id, reverse=True))
    ids = [v for _, v in choices]
    return gr.update(choices=choices, value=selected if selected in ids else (ids[0] if ids else None))


def served_model(backend: Backend, model_id: str) -> inf.ServedModel:
    """The inference service's entry for `model_id`; a gr.Error when it serves no such model."""
    with reported(backend.inference):
        models = backend.inference.list_served_models(inf.ListServedModelsRequest()).models
    for m in models:
        if m.model_id == model_id:
            return m
    raise gr.Error(f"The inference service does not serve model {model_id!r} (was it deleted?); press Refresh.")


def stream_candidates(backend: Backend, request: inf.ChatRequest) -> Iterator[list[str]]:
    """The texts of every candidate so far, after each streamed piece."""
    texts: list[str] = []
    with reported(backend.inference):
        for piece in backend.inference.chat_stream(inf.ChatStreamRequest(chat=request)):
            while len(texts) <= piece.index:
                texts.append("")
            texts[piece.index] += piece.delta
            yield texts


def bubbles(turns: Turns, user: str) -> list[dict[str, str]]:
    """Chatbot messages: the user's participant on the right, everyone else on the left, named."""
    return [
        {"role": "user", "content": text} if speaker == user
        else {"role": "assistant", "content": f"**{views.escape(speaker)}**: {views.escape(text)}"}
        for speaker, text in turns
    ]


def candidate_choices(texts: Sequence[str]) -> list[tuple[str, int]]:
    return [(f"{k + 1}. {text or '(empty)'}", k) for k, text in enumerate(texts)]


class ChatTab:
    """Handlers of the Chat tab; `render` lays it out inside the app's Blocks."""

    def __init__(self, backend: Backend):
        self.backend = backend

    # --- handlers -----------------------------------------------------------------------------

    def refresh(self, selected: str | None) -> Any:
        return served_models(self.backend, selected)

    def pick_model(self, model_id: str | None) -> tuple[Any, ...]:
        """Who the model plays (its persona) and who the user plays (another participant); a fresh chat."""
        hidden = gr.update(choices=[], visible=False)
        if not model_id:
            return gr.update(choices=[], value=None), gr.update(choices=[], value=None), [], [], hidden, []
        return self._sides(served_model(self.backend, model_id))

    def _sides(self, m: inf.ServedModel) -> tuple[Any, ...]:
        """The side dropdowns for a fresh chat with `m`: its learned speakers first, the user someone else."""
        everyone = list(dict.fromkeys([*m.speakers, *m.participants]))  # the ones it learned first
        persona = everyone[0] if everyone else None
        others = [p for p in everyone if p != persona]
        user_choices = [(p, p) for p in everyone] + [(f"{OUTSIDER} (nobody in the chat)", OUTSIDER)]
        return (gr.update(choices=[(f"{p} (learned)" if p in m.speakers else p, p) for p in everyone], value=persona),
                gr.update(choices=user_choices, value=others[0] if others else OUTSIDER),
                [], [], gr.update(choices=[], visible=False), [])

    def send(
        self, model_id: str | None, persona: str | None, user: str | None, message: str, turns: Turns, n: float,
        temperature: float, max_new_tokens: float, seed: str,
    ) -> Iterator[tuple[Any, ...]]:
        """The user's message, then the persona's reply streamed: (chat, turns, message box, picker, candidates)."""
        if not message or not message.strip():
            raise gr.Error("Type a message first.")
        if not model_id or not persona:
            raise gr.Error("Pick a model first (train one in the Train tab).")
        turns = [*turns, (user or OUTSIDER, message.strip())]
        yield from self._reply(model_id, persona, user, turns, n, temperature, max_new_tokens, seed, clear_box=True)

    def regenerate(
        self, model_id: str | None, persona: str | None, user: str | None, turns: Turns, n: float,
        temperature: float, max_new_tokens: float, seed: str,
    ) -> Iterator[tuple[Any, ...]]:
        """Sample the persona's last reply again (or a first one, when the model has not replied yet)."""
        if not model_id or not persona:
            raise gr.Error("Pick a model first (train one in the Train tab).")
        if turns and turns[-1][0] == persona:
            turns = turns[:-1]
        yield from self._reply(model_id, persona, user, turns, n, temperature, max_new_tokens, seed, clear_box=False)

    def _reply(
        self, model_id: str, persona: str, user: str | None, turns: Turns, n: float, temperature: float,
        max_new_tokens: float, seed: str, *, clear_box: bool,
    ) -> Iterator[tuple[Any, ...]]:
        if persona == user:
            raise gr.Error(f"You and the model both play {persona}; choose someone else for one of you.")
        user = user or OUTSIDER
        with checked_input():
            params = forms.sampling(temperature=temperature, max_new_tokens=max_new_tokens, n=n, seed=seed)
        m = served_model(self.backend, model_id)
        request = inf.ChatRequest(
            model_id=model_id,
            history=[inf.Turn(speaker=s, text=t) for s, t in turns],
            as_speaker=persona,
            user_speaker=user if user in m.participants else "",  # the service knows only the model's participants
            sampling=params,
        )
        hidden = gr.update(choices=[], visible=False)
        # the message box keeps the text until the reply came: a failed reply loses nothing typed
        yield bubbles(turns, user), gr.skip(), gr.skip(), hidden, []
        texts: list[str] = []
        for texts in stream_candidates(self.backend, request):
            yield bubbles([*turns, (persona, texts[0])], user), gr.skip(), gr.skip(), hidden, gr.skip()
        texts = list(texts) or [""]
        done = [*turns, (persona, texts[0])]
        pick = gr.update(choices=candidate_choices(texts), value=0, visible=True) if len(texts) > 1 else hidden
        yield bubbles(done, user), done, "" if clear_box else gr.skip(), pick, texts

    def choose(self, index: int | None, candidates: list[str], turns: Turns, user: str | None) -> tuple[Any, Turns]:
        """Put candidate `index` in place of the persona's last reply."""
        if index is None or not turns or index >= len(candidates):
            return gr.skip(), turns
        turns = [*turns[:-1], (turns[-1][0], candidates[index])]
        return bubbles(turns, user or OUTSIDER), turns

    # --- layout -------------------------------------------------------------------------------

    def render(self) -> gr.Tab:
        with gr.Tab("Chat", id="chat") as tab:
            gr.Markdown(
                "⚠ **Generated text.** Replies are written by a model trained on a chat history, "
                "not by the person it imitates."
            )
            with gr.Row():
                model = gr.Dropdown(label="Persona model", choices=[], value=None, scale=4, elem_id="chat-model")
                reload = gr.Button("↻ Refresh", scale=0, min_width=120)
            with gr.Row():
                persona = gr.Dropdown(label="The model plays", choices=[], elem_id="chat-persona")
                user = gr.Dropdown(label="You play", choices=[], elem_id="chat-user")
            chat = gr.Chatbot(label="Chat (replies are generated)", height=380, elem_id="chat-log",
                              feedback_options=None)
            with gr.Row():
                message = gr.Textbox(show_label=False, placeholder="Type a message and press Enter", scale=5,
                                     elem_id="chat-message")
                send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
            picks = gr.Radio(label="Candidates: pick the reply to keep", choices=[], visible=False,
                             elem_id="chat-candidates")
            with gr.Row():
                regenerate = gr.Button("↻ Regenerate reply", elem_id="chat-regenerate")
                clear = gr.Button("Clear chat")
            with gr.Accordion("Sampling", open=False):
                with gr.Row():
                    n = gr.Slider(label="Candidates per reply", minimum=1, maximum=4, step=1, value=1)
                    temperature = gr.Slider(label="Temperature (0: greedy)", minimum=0, maximum=2, step=0.05,
                                            value=0.8)
                    max_new_tokens = gr.Slider(label="Longest reply (tokens)", minimum=8, maximum=256, step=8,
                                               value=64)
                    seed = gr.Textbox(label="Seed", placeholder="empty: fresh samples each time")
            turns = gr.State([])
            candidates = gr.State([])

            sampling = [n, temperature, max_new_tokens, seed]
            outputs = [chat, turns, message, picks, candidates]
            for trigger in (send.click, message.submit):
                trigger(self.send, [model, persona, user, message, turns, *sampling], outputs,
                        show_progress="hidden", api_visibility="private")
            regenerate.click(self.regenerate, [model, persona, user, turns, *sampling], outputs,
                             show_progress="hidden", api_visibility="private")
            picks.input(self.choose, [picks, candidates, turns, user], [chat, turns], api_visibility="private")
            clear.click(lambda: ([], [], gr.update(choices=[], visible=False), []), None,
                        [chat, turns, picks, candidates], api_visibility="private")
            sides = [persona, user, turns, chat, picks, candidates]
            model.input(self.pick_model, model, sides, api_visibility="private")
            for trigger in (reload.click, tab.select):
                trigger(self.refresh, model, model, api_visibility="private").then(
                    self._fill_sides, [model, persona, user], sides, api_visibility="private")
        return tab

    def _fill_sides(self, model_id: str | None, persona: str | None, user: str | None) -> tuple[Any, ...]:
        """After a refresh: keep the chat when its sides still fit the chosen model, else start afresh."""
        if not model_id:
            return self.pick_model(model_id)
        m = served_model(self.backend, model_id)
        if persona in m.participants and (user in m.participants or user == OUTSIDER):
            return (gr.skip(),) * 6
        return self._sides(m)
