"""The request bodies of OpenAI's API that Doppel answers, as pydantic models, and their validation.

Unknown fields are ignored (OpenAI-compatible servers differ in their extras, and chat front ends
send them freely); known fields Doppel has no equivalent for are refused when set to anything
but their no-op value, so a caller never believes a setting took effect when it did not.
Beyond OpenAI's fields: `top_k` and `repetition_penalty` (as vLLM and llama.cpp accept them).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ApiError, bad_field, unsupported

MAX_MESSAGES = 2000
MAX_PROMPTS = 64
MAX_STOPS = 16
MAX_TOKENS = 4096  # the engine's limit on max_new_tokens
MAX_N = 64  # the engine's limit on candidates


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str = ""


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class Sampling(BaseModel):
    """The sampling fields both endpoints share."""

    model_config = ConfigDict(extra="allow")
    model: Annotated[str, Field(min_length=1, max_length=400)]
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    stop: Annotated[str, Field(min_length=1, max_length=500)] | Annotated[
        list[Annotated[str, Field(min_length=1, max_length=500)]], Field(max_length=MAX_STOPS)] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: Any = None
    logit_bias: dict[str, float] | None = None

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def refuse_unsupported(self) -> None:
        if self.logprobs not in (None, False, 0):
            raise unsupported("logprobs")
        if self.logit_bias:
            raise unsupported("logit_bias")
        if self.seed is not None and not -(2**63) <= self.seed < 2**63:
            raise bad_field("seed", "must fit in 64 bits")


class ChatCompletionRequest(Sampling):
    messages: Annotated[list[Message], Field(max_length=MAX_MESSAGES)]
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: Any = None

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.top_logprobs:
            raise unsupported("top_logprobs")
        for name in ("tools", "functions"):
            if getattr(self, name):
                raise unsupported(name, "a persona writes chat messages, not tool calls")
        for name in ("tool_choice", "function_call"):
            if getattr(self, name) not in (None, "none", "auto"):
                raise unsupported(name, "a persona writes chat messages, not tool calls")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise unsupported("response_format", "only {\"type\": \"text\"}")
        if self.modalities and self.modalities != ["text"]:
            raise unsupported("modalities", "only [\"text\"]")
        if self.audio:
            raise unsupported("audio")
        if self.max_tokens and self.max_completion_tokens and self.max_tokens != self.max_completion_tokens:
            raise bad_field("max_completion_tokens", "differs from max_tokens; set one of them")


class CompletionRequest(Sampling):
    prompt: Annotated[str, Field(max_length=1 << 20)] | Annotated[
        list[Annotated[str, Field(max_length=1 << 20)]], Field(min_length=1, max_length=MAX_PROMPTS)]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.suffix:
            raise unsupported("suffix")
        if self.best_of not in (None, 1, self.n):
            raise unsupported("best_of", "every candidate is returned: use n")


T = TypeVar("T", bound=Sampling)


def parse(model: type[T], body: bytes) -> T:
    """`body` as a request of `model`, checked: 400 naming the first field that is wrong."""
    try:
        request = model.model_validate_json(body)
    except ValidationError as e:
        raise _invalid(e) from None
    request.refuse_unsupported()
    return request


def _invalid(e: ValidationError) -> ApiError:
    errors = e.errors(include_url=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return ApiError(400, f"the body is not valid JSON: {first['msg']}", code="invalid_json")
    if first["type"] == "model_type" and not first["loc"]:
        return ApiError(400, "the body must be a JSON object", code="invalid_json")
    # of a union (`stop`: a string or a list), the branch that got furthest says the most
    deepest = max((x for x in errors if x["loc"][:1] == first["loc"][:1]), key=lambda x: len(x["loc"]))
    return bad_field(_field(deepest["loc"]), deepest["msg"])


_BRANCHES = {"str", "int", "float", "bool", "none", "TextPart"}


def _field(loc: tuple[Any, ...]) -> str:
    """The field a pydantic location names, without the union branches it went through:
    ("stop", "list[constrained-str]", 0) -> "stop[0]"."""
    parts = [p for p in loc if isinstance(p, int) or not (p in _BRANCHES or "[" in p or "-" in p)]
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
