"""The trainer process serves the `train-persona` deployment: a Prefect runner in a thread of its own.

The runner registers the deployment (so the dashboard shows its parameter form), polls the
Prefect API for scheduled runs of it, whoever created them, and runs each in a child process;
it kills that process when the run is cancelled and marks the run crashed when it dies. The
child reads its settings from `DOPPEL_*` variables, so `start` exports this process's
settings to the environment it inherits, with tcmalloc preloaded where the system has it (heap.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from typing import TYPE_CHECKING

from doppel.config import Settings
from doppel.errors import FailedPrecondition

from . import heap

if TYPE_CHECKING:
    from prefect.runner import Runner

log = logging.getLogger(__name__)


class _QuietAtCapacity(logging.Filter):
    """Drops the runner's "N scheduled runs skipped (at capacity)", which it says at every poll (twice a
    second) while runs wait for a busy trainer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "skipped (at capacity)" not in record.getMessage()


_QUIET = _QuietAtCapacity()


class DeploymentRunner:
    """Serves the deployment until `stop`; `limit` runs at a time."""

    def __init__(self, settings: Settings, *, limit: int = 1, poll_s: float = 1.0):
        self.settings, self.limit, self.poll_s = settings, limit, poll_s
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: Runner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Register the deployment and start polling; raises if the Prefect API cannot be reached."""
        os.environ.update(heap.environment({**os.environ, **self.settings.environment()}, self.settings.train_malloc))
        logging.getLogger("prefect.runner").addFilter(_QUIET)
        self._thread = threading.Thread(target=self._main, name="prefect-runner", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise FailedPrecondition(
                f"cannot serve the train-persona deployment on the Prefect API at {self.settings.prefect_api_url}: "
                f"{self._error or 'no answer in time'}"
            )

    def _main(self) -> None:
        from prefect.settings import PREFECT_API_URL, PREFECT_RUNNER_POLL_FREQUENCY, temporary_settings

        updates = {PREFECT_API_URL: self.settings.prefect_api_url, PREFECT_RUNNER_POLL_FREQUENCY: self.poll_s}
        with temporary_settings(updates=updates):
            try:
                asyncio.run(self._serve())
            except BaseException as e:
                self._error = e
                self._ready.set()
                log.exception("the Prefect runner stopped")

    async def _serve(self) -> None:
        from prefect.deployments.runner import EntrypointType
        from prefect.runner import Runner

        from .flow import FLOW, train_persona

        self._loop = asyncio.get_running_loop()
        runner = Runner(name=f"doppel-trainer-{socket.gethostname()}-{os.getpid()}", limit=self.limit,
                        pause_on_shutdown=False, query_seconds=self.poll_s)
        deployment = await train_persona.ato_deployment(
            name=FLOW, entrypoint_type=EntrypointType.MODULE_PATH, description="Fine-tune a persona model on a dataset."
        )
        await runner.aadd_deployment(deployment)
        self._runner = runner
        self._ready.set()
        log.info("serving the %s deployment from %s", FLOW, self.settings.prefect_api_url)
        await runner.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop polling and kill the runs in flight (Prefect marks them cancelled)."""
        if self._runner is not None and self._loop is not None and self._loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._runner.astop(), self._loop)
            try:
                future.result(timeout)
            except Exception:
                log.exception("stopping the Prefect runner")
        if self._thread is not None:
            self._thread.join(timeout)
