"""What crosses between the inference service's gRPC front end and its engine.

The front end (`server`) reaches the engine only through an `client.EngineClient`, whose
methods send the requests below and read the events that answer them: a call's deltas or
turns, then `Done` with its typed result, or `Failed` with a `DoppelError`. The engine runs in a
process of its own (`engine_process`) so that its thread and the gRPC event loop do not take
turns on one GIL; tests run it in-process. Nothing here imports torch, so the front end stays a
light process.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from enum import Enum

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
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
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
            (-2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]"),
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
class ListModels:
    """Every model: the loaded ones and the store's. Answered with `Listing`."""


@dataclass(frozen=True)
class LoadModel:
    """Load a model now. Answered with `Loaded`."""

    model_id: str


@dataclass(frozen=True)
class UnloadModel:
    """Answered with `Unloaded`."""

    model_id: str


@dataclass(frozen=True)
class GetStats:
    """Answered with `EngineStats`."""


@dataclass(frozen=True)
class Health:
    """Whether the engine answers at all. Answered with `Healthy`."""


Request = ChatArgs | CompleteArgs | SimulateArgs | ListModels | LoadModel | UnloadModel | GetStats | Health


@dataclass(frozen=True)
class Start:
    call: int
    request: Request


@dataclass(frozen=True)
class Cancel:
    call: int


# --- answers ---------------------------------------------------------------------------------

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
    created: datetime | None = None
    name: str = ""


@dataclass(frozen=True)
class Spoke:
    """How a chat ended: who spoke (the model's first speaker when the request named none)."""

    speaker: str


@dataclass(frozen=True)
class Listing:
    models: tuple[ServedInfo, ...]


@dataclass(frozen=True)
class Loaded:
    model: ServedInfo
    seconds: float  # 0.0 when it was loaded already


@dataclass(frozen=True)
class Unloaded:
    was_loaded: bool


@dataclass(frozen=True)
class Healthy:
    pid: int
    loaded_models: int


@dataclass
class EngineStats:
    """Counters of the engines (an engine's own, or added up over all of them with `+`), and
    the model cache's size where the serving core fills it in."""

    forward_passes: int = 0
    tokens_generated: int = 0
    requests_completed: int = 0
    running: int = 0
    queued: int = 0
    loaded_models: int = 0
    cache_bytes: int = 0
    cache_budget_bytes: int = 0
    queue_capacity: int = 0

    def __add__(self, other: EngineStats) -> EngineStats:
        return EngineStats(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


Result = Spoke | Listing | Loaded | Unloaded | Healthy | EngineStats


# --- events (engine -> front end) ---------------------------------------------------------------

@dataclass(frozen=True)
class Delta:
    """Text added to candidate `index`; `finish` (and its token count, and its prompt's) on its last delta."""

    index: int
    text: str
    finish: Finish | None = None
    tokens: int = 0
    prompt_tokens: int = 0


@dataclass(frozen=True)
class TurnDone:
    """One turn of a simulation."""

    index: int
    speaker: str
    text: str
    finish: Finish


@dataclass(frozen=True)
class Done:
    """The call ended; `result` answers it (None for completions and simulations)."""

    result: Result | None = None


@dataclass(frozen=True)
class Failed:
    error: DoppelError


Event = Delta | TurnDone | Done | Failed
