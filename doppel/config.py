"""Settings of every Doppel process, read from `DOPPEL_*` environment variables.

The defaults are the embedded mode: loopback addresses, a store folder under
`DOPPEL_HOME`, a local Prefect server. The GPU deployment sets the same variables to
other values; no code branches on which mode it is in. Build `Settings()` once in a
process's `main()` and pass it down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The allocator of the processes that train (services/trainer/heap.py)
Malloc = Literal["auto", "system"]


class Settings(BaseSettings):
    """Resolved configuration; each field documents its environment variable."""

    model_config = SettingsConfigDict(env_prefix="DOPPEL_", extra="ignore")

    home: Path = Field(
        default=Path("~/.doppel"),
        description="DOPPEL_HOME: folder for local state (the default store, caches, logs).",
    )
    store_url: str = Field(
        default="",
        description="DOPPEL_STORE_URL: file:///path or s3://bucket?endpoint=host:port; "
        "empty means file://$DOPPEL_HOME/store.",
    )
    ingest_addr: str = Field(default="127.0.0.1:50051", description="DOPPEL_INGEST_ADDR: ingest's gRPC address.")
    trainer_addr: str = Field(default="127.0.0.1:50052", description="DOPPEL_TRAINER_ADDR: trainer's gRPC address.")
    inference_addr: str = Field(
        default="127.0.0.1:50053", description="DOPPEL_INFERENCE_ADDR: inference's gRPC address."
    )
    listen: str = Field(
        default="",
        description="DOPPEL_LISTEN: address a service binds to; empty means its own *_ADDR.",
    )
    openai_addr: str = Field(
        default="127.0.0.1:8000", description="DOPPEL_OPENAI_ADDR: host:port of the OpenAI-compatible HTTP API "
        "(`doppel serve openai`).",
    )
    openai_max_request_kb: int = Field(
        default=1024, ge=1, description="DOPPEL_OPENAI_MAX_REQUEST_KB: largest request body the OpenAI-compatible API "
        "reads; a larger one is refused with 413.",
    )
    inference_replicas: int = Field(
        default=1, ge=1, le=64, description="DOPPEL_INFERENCE_REPLICAS: inference processes `doppel up` runs behind "
        "nginx at DOPPEL_INFERENCE_ADDR (1: one process there, no balancer).",
    )
    ui_host: str = Field(default="127.0.0.1", description="DOPPEL_UI_HOST: interface the UI binds to.")
    ui_port: int = Field(default=7860, description="DOPPEL_UI_PORT: port of the UI.")
    prefect_api_url: str = Field(
        default="http://127.0.0.1:4200/api", description="DOPPEL_PREFECT_API_URL: the Prefect server's API."
    )
    prefect_ui_url: str = Field(
        default="",
        description="DOPPEL_PREFECT_UI_URL: where a browser opens the Prefect dashboard (the runs' links); "
        "default: DOPPEL_PREFECT_API_URL without /api.",
    )
    api_token: SecretStr | None = Field(
        default=None, description="DOPPEL_API_TOKEN: when set, every RPC needs it as a bearer token."
    )
    rpc_timeout_s: float = Field(default=30.0, description="DOPPEL_RPC_TIMEOUT_S: default deadline of a client call.")
    grace_s: float = Field(default=10.0, description="DOPPEL_GRACE_S: how long shutdown waits for calls in flight.")
    max_message_mb: int = Field(default=64, description="DOPPEL_MAX_MESSAGE_MB: largest gRPC message.")
    prepare_base: bool = Field(
        default=True, description="DOPPEL_PREPARE_BASE: the trainer readies the default base model in the background "
        "when it starts (converted or pulled into the store), so that a first run need not wait for it."
    )
    train_threads: int = Field(
        default=0, ge=0, description="DOPPEL_TRAIN_THREADS: CPU threads a training run uses; 0 lets torch choose."
    )
    train_malloc: Malloc = Field(
        default="auto", description="DOPPEL_TRAIN_MALLOC: auto: the processes that train run on tcmalloc where the "
        "system has it (Debian's libtcmalloc-minimal4), half the memory of the C library's malloc on a CPU; system: "
        "on the C library's.",
    )
    train_nodes: int = Field(
        default=1, ge=1, le=1024, description="DOPPEL_TRAIN_NODES: machines a run on several devices spans: this "
        "trainer's and DOPPEL_TRAIN_NODES - 1 more, each running `doppel train-node`.",
    )
    train_rendezvous: str = Field(
        default="", description="DOPPEL_TRAIN_RENDEZVOUS: host:port of this trainer where a run's machines meet "
        "(torchrun's c10d rendezvous), reachable from all of them; needed when DOPPEL_TRAIN_NODES > 1.",
    )
    train_jobs: Path | None = Field(
        default=None, description="DOPPEL_TRAIN_JOBS: a folder every machine of a run mounts at the same path, where "
        "the trainer writes each run's job for `doppel train-node` to join; needed when DOPPEL_TRAIN_NODES > 1 "
        "(default: a temporary folder of this machine).",
    )
    inference_cache_mb: int = Field(
        default=0, ge=0, description="DOPPEL_INFERENCE_CACHE_MB: memory budget of the model cache; 0: 80% of free GPU "
        "memory on a GPU, 4096 on CPU.",
    )
    inference_threads: int = Field(
        default=0, ge=0, description="DOPPEL_INFERENCE_THREADS: CPU threads of the inference service; 0 lets torch choose."
    )
    inference_max_batch: int = Field(default=64, ge=1, description="DOPPEL_INFERENCE_MAX_BATCH: most rows per forward pass.")
    inference_queue: int = Field(
        default=256, ge=1, description="DOPPEL_INFERENCE_QUEUE: requests that may wait per base model before RESOURCE_EXHAUSTED."
    )
    restart_backoff_s: float = Field(
        default=1.0, gt=0, description="DOPPEL_RESTART_BACKOFF_S: `doppel up` restarts a child that died after this "
        "long, doubled for each earlier crash of it within DOPPEL_RESTART_WINDOW_S (at most 30 s).",
    )
    restart_limit: int = Field(
        default=5, ge=1, description="DOPPEL_RESTART_LIMIT: crashes of one child within DOPPEL_RESTART_WINDOW_S that "
        "stop `doppel up` instead of a restart (1: the first one does).",
    )
    restart_window_s: float = Field(
        default=60.0, gt=0, description="DOPPEL_RESTART_WINDOW_S: how far back `doppel up` counts a child's crashes."
    )
    log_level: str = Field(default="INFO", description="DOPPEL_LOG_LEVEL: Python logging level.")

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        self.home = self.home.expanduser()
        if not self.store_url:
            self.store_url = (self.home / "store").resolve().as_uri()
        return self

    def environment(self) -> dict[str, str]:
        """These settings as `DOPPEL_*` variables, for a child process that builds its own `Settings()`."""
        out = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            out[f"DOPPEL_{name.upper()}"] = str(value)
        return out

    def dashboard_url(self) -> str:
        """The Prefect dashboard's address as a browser reaches it."""
        return (self.prefect_ui_url or self.prefect_api_url.rstrip("/").removesuffix("/api")).rstrip("/")

    def token(self) -> str | None:
        """The API token as plain text, or None when auth is off."""
        return self.api_token.get_secret_value() if self.api_token else None
