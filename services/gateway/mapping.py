"""OpenAI requests as inference requests, and inference answers as OpenAI's objects.

A chat's messages become the conversation's turns: the persona is the assistant and the caller the
user. A message's `name` says who spoke it (in a group chat, which participant the user plays, or
which speaker an earlier assistant line was); an unnamed user message is the model's first other
participant (else "User"), as `doppel chat` does, and an unnamed assistant message the persona.
The user's participant is sent as `user_speaker`, so the model never writes their turn. System
and developer messages are not shown to the model: a persona learned a chat, not instructions.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from doppel.transcript import default_user
from doppel.v1 import common_pb2
from doppel.v1 import inference_pb2 as inf

from .errors import bad_field, unsupported
from .personas import Target
from .schema import ChatCompletionRequest, CompletionRequest, Message, Sampling

FINISH = {inf.FINISH_REASON_LENGTH: "length", inf.FINISH_REASON_STOP: "stop", inf.FINISH_REASON_END_OF_TURN: "stop",
          inf.FINISH_REASON_CANCELLED: "stop", inf.FINISH_REASON_UNSPECIFIED: None}


def sampling(r: Sampling, limit: int | None) -> common_pb2.SamplingParams:
    """The request's sampling fields that are set; the rest keep the service's defaults."""
    fields: dict[str, Any] = {
        "n": r.n, "temperature": r.temperature, "top_p": r.top_p, "top_k": r.top_k, "max_new_tokens": limit, "seed": r.seed,
        "presence_penalty": r.presence_penalty, "frequency_penalty": r.frequency_penalty,
        "repetition_penalty": r.repetition_penalty,
    }
    return common_pb2.SamplingParams(stop=r.stops, **{k: v for k, v in fields.items() if v is not None})


def _text(m: Message, at: int) -> str:
    if m.content is None or isinstance(m.content, str):
        return m.content or ""
    for k, part in enumerate(m.content):
        if part.type != "text":
            raise unsupported(f"messages[{at}].content[{k}].type", f"{part.type!r}: only text parts")
    return "".join(part.text for part in m.content)


def chat_request(r: ChatCompletionRequest, target: Target) -> inf.ChatRequest:
    persona = target.speaker
    unnamed = default_user(target.model.participants, persona)
    history, user = [], unnamed
    for at, m in enumerate(r.messages):
        if m.role in ("tool", "function"):
            raise unsupported(f"messages[{at}].role", f"{m.role!r}: a persona writes chat messages, not tool calls")
        if m.role in ("system", "developer"):
            continue
        text = _text(m, at)
        if m.role == "user":
            speaker = user = m.name or unnamed
        else:
            speaker = m.name or persona
        if text.strip():
            history.append(inf.Turn(speaker=speaker, text=text))
    if user == persona:
        raise bad_field("messages", f"the user speaks as {persona!r}, the persona this model replies as; name the user "
                                    "differently (a message's `name`) or ask for another speaker (`model`: id:speaker)")
    known = user in target.model.participants
    return inf.ChatRequest(model_id=target.model_id, history=history, as_speaker=persona,
                           user_speaker=user if known else "", sampling=sampling(r, r.limit))


def complete_request(r: CompletionRequest, target: Target, prompt: str) -> inf.CompleteRequest:
    """A raw continuation of `prompt`; for a persona named in `model`, the opening of their turn."""
    return inf.CompleteRequest(model_id=target.model_id, prompt=prompt, as_speaker=target.speaker if target.named else "",
                               sampling=sampling(r, r.max_tokens))


class Reply:
    """The common fields of one answer: its id, time and model as the caller named it."""

    def __init__(self, prefix: str, model: str):
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "system_fingerprint": None}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_completion(reply: Reply, answer: inf.ChatResponse) -> dict[str, Any]:
    choices = [{"index": k, "message": {"role": "assistant", "content": c.text, "name": answer.speaker, "refusal": None},
                "finish_reason": FINISH[c.finish_reason], "logprobs": None} for k, c in enumerate(answer.candidates)]
    return {**reply.head("chat.completion"), "choices": choices,
            "usage": usage(answer.prompt_tokens, sum(c.tokens for c in answer.candidates))}


def chat_chunk(reply: Reply, index: int, delta: dict[str, Any], finish: str | None = None,
               with_usage: bool = False) -> dict[str, Any]:
    out = {**reply.head("chat.completion.chunk"),
           "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}]}
    if with_usage:
        out["usage"] = None
    return out


def text_completion(reply: Reply, answers: list[inf.CompleteResponse], prompts: list[str], echo: bool) -> dict[str, Any]:
    choices = []
    for p, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        n = len(answer.candidates)
        choices += [{"index": p * n + k, "text": (prompt if echo else "") + c.text,
                     "finish_reason": FINISH[c.finish_reason], "logprobs": None} for k, c in enumerate(answer.candidates)]
    return {**reply.head("text_completion"), "choices": choices,
            "usage": usage(sum(a.prompt_tokens for a in answers), sum(c.tokens for a in answers for c in a.candidates))}


def text_chunk(reply: Reply, index: int, text: str, finish: str | None = None, with_usage: bool = False) -> dict[str, Any]:
    out = {**reply.head("text_completion"),
           "choices": [{"index": index, "text": text, "finish_reason": finish, "logprobs": None}]}
    if with_usage:
        out["usage"] = None
    return out


def usage_chunk(reply: Reply, kind: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The last chunk of a stream with `stream_options.include_usage`: no choices, the whole stream's usage."""
    return {**reply.head(kind), "choices": [], "usage": usage(prompt_tokens, completion_tokens)}
