"""What crosses between the inference service's gRPC front end and its engine process.

The engine runs in a process of its own (`worker`) so that its thread and the gRPC event loop
do not take turns on one GIL: the front end (`remote`, `server`) turns calls into the requests
below and the worker answers each with events. Nothing here imports torch, so the front end
stays a light process.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from doppel.errors import DoppelError, InvalidArgument
from doppel.transcript import Turn


class Finish(Enum):
    LENGTH = "length"
    STOP = "stop"
    END_OF_TURN = "end_of_turn"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Sampling:
    """How a request samples; `n` rows per request."""

    temperature: float = 0.8
    top_k: int = 0
    top_p: float = 0.95
    repetition_penalty: float = 1.0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    n: int = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.temperature >= 0, "temperature must be >= 0"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (1 <= self.max_new_tokens <= 4096, "max_new_tokens must be in 1-4096"),
            (1 <= self.n <= 64, "n must be in 1-64"),
            (all(self.stop), "stop strings must not be empty"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise InvalidArgument("invalid sampling: " + "; ".join(problems))


# --- requests (front end -> worker) ------------------------------------------------------------

@dataclass(frozen=True)
class ChatArgs:
    """`speaker`'s next turn after `history` (`speaker` empty: the model's first speaker)."""

    model_id: str
    history: tuple[Turn, ...]
    speaker: str
    user: str
    sampling: Sampling


@dataclass(frozen=True)
class CompleteArgs:
    model_id: str
    prompt: str
    speaker: str
    sampling: Sampling


@dataclass(frozen=True)
class SimulateArgs:
    model_id: str
    participants: tuple[str, ...]
    opening: tuple[Turn, ...]
    first_speaker: str
    first_prompt: str
    turns: int
    stop: tuple[str, ...]
    sampling: Sampling


@dataclass(frozen=True)
class Query:
    """A call on the model cache: "listing", "load", "unload" (`model_id`) or "stats"."""

    method: str
    model_id: str = ""


Request = ChatArgs | CompleteArgs | SimulateArgs | Query


@dataclass(frozen=True)
class Start:
    call: int
    request: Request


@dataclass(frozen=True)
class Cancel:
    call: int


# --- events (worker -> front end) ---------------------------------------------------------------

@dataclass(frozen=True)
class Delta:
    """Text added to candidate `index`; `finish` (and its token count) on its last delta."""

    index: int
    text: str
    finish: Finish | None = None
    tokens: int = 0


@dataclass(frozen=True)
class TurnDone:
    """One turn of a simulation."""

    index: int
    speaker: str
    text: str
    finish: Finish


@dataclass(frozen=True)
class Done:
    """The call ended; `value` is its result (a chat's speaker, a query's answer)."""

    value: Any = None


@dataclass(frozen=True)
class Failed:
    error: DoppelError


Event = Delta | TurnDone | Done | Failed


# --- answers to queries ------------------------------------------------------------------------

@dataclass(frozen=True)
class ServedInfo:
    model_id: str
    base_model: str
    adapter: bool
    speakers: tuple[str, ...]
    participants: tuple[str, ...]
    loaded: bool
    memory_bytes: int = 0
    last_used: datetime | None = None


@dataclass(frozen=True)
class EngineCounts:
    forward_passes: int
    tokens_generated: int
    requests_completed: int
    running: int
    queued: int
    loaded_models: int
    cache_bytes: int
    cache_budget_bytes: int
