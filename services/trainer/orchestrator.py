"""Runs as Prefect sees them: create, read, list and cancel flow runs of `train-persona`.

Talks to the API at `Settings.prefect_api_url` with a client of its own (not Prefect's
process-wide settings), and maps Prefect's state types to a run's life-cycle states. Prefect
is the authority on state: a process that was killed or cancelled writes no record, so
`merge` lays the flow run's state over what the store says.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowFilter, FlowFilterName
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.objects import State as PrefectState
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Cancelling, Scheduled

from doppel.errors import FailedPrecondition, InvalidArgument, NotFound, StorageUnavailable

from .flow import DEPLOYMENT, FLOW
from .recipe import TrainRequest
from .runs import RunRecord, State

_STATES: dict[StateType, State] = {
    StateType.SCHEDULED: "pending",
    StateType.PENDING: "pending",
    StateType.PAUSED: "pending",
    StateType.RUNNING: "running",
    StateType.COMPLETED: "completed",
    StateType.FAILED: "failed",
    StateType.CRASHED: "failed",
    StateType.CANCELLING: "cancelling",
    StateType.CANCELLED: "cancelled",
}


@dataclass
class FlowRunView:
    """What a flow run tells about a run."""

    id: str
    state: State
    message: str
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    parameters: dict[str, Any]


def dashboard_url(dashboard: str, run_id: str) -> str:
    """The run's page in the dashboard at `dashboard` (Settings.dashboard_url)."""
    return f"{dashboard}/runs/flow-run/{run_id}"


def _view(fr: FlowRun) -> FlowRunView:
    state = fr.state
    kind = _STATES.get(state.type, "pending") if state else "pending"
    message = (state.message or "") if state else ""
    if state and state.type is StateType.CRASHED:
        message = f"crashed: {message}" if message else "crashed: the training process died"
    ended = fr.end_time if kind in ("completed", "failed", "cancelled") else None
    return FlowRunView(str(fr.id), kind, message, fr.created, fr.start_time, ended, dict(fr.parameters or {}))


def merge(record: RunRecord | None, view: FlowRunView) -> RunRecord:
    """The store's record with Prefect's state laid over it (a record is made for a run that has none yet)."""
    if record is None:
        try:
            request = TrainRequest.model_validate(view.parameters.get("request") or {})
        except Exception:  # noqa: BLE001 - a run created with a bad form: show it, it will fail at once
            request = TrainRequest.model_construct(dataset_id="", speakers=[])
        record = RunRecord(id=view.id, request=request, created_at=view.created_at or datetime.now(UTC))
    flow_says_more = view.state in ("completed", "failed", "cancelled", "cancelling") or record.state == "pending"
    if flow_says_more and record.state != view.state and not (view.state == "failed" and record.state == "failed"):
        record.state = view.state
        if view.message and (view.state != "completed"):
            record.message = view.message
    record.started_at = record.started_at or view.started_at
    if record.state in ("completed", "failed", "cancelled"):
        record.finished_at = record.finished_at or view.finished_at or datetime.now(UTC)
    return record


class Orchestrator:
    """Prefect-side operations on runs, through one API URL."""

    def __init__(self, api_url: str):
        self.api_url = api_url

    def client(self) -> PrefectClient:
        return PrefectClient(self.api_url)

    async def _call(self, what: str, fn: Any) -> Any:
        try:
            async with self.client() as client:
                return await fn(client)
        except (NotFound, InvalidArgument, FailedPrecondition, ObjectNotFound):
            raise
        except Exception as e:
            raise StorageUnavailable(f"the Prefect API at {self.api_url} failed to {what}: {e}") from e

    async def create(self, request: TrainRequest) -> FlowRunView:
        """A flow run of the deployment; FAILED_PRECONDITION when no trainer serves it yet."""

        async def go(client: PrefectClient) -> FlowRun:
            try:
                deployment = await client.read_deployment_by_name(DEPLOYMENT)
            except ObjectNotFound:
                raise FailedPrecondition(
                    f"no deployment {DEPLOYMENT!r} on the Prefect server at {self.api_url}: start the trainer service"
                ) from None
            return await client.create_flow_run_from_deployment(
                deployment.id, parameters={"request": request.model_dump(mode="json")}, tags=["doppel"]
            )

        return _view(await self._call("create a flow run", go))

    async def read(self, run_id: str) -> FlowRunView | None:
        try:
            uuid = UUID(run_id)
        except ValueError:
            return None

        async def go(client: PrefectClient) -> FlowRun | None:
            try:
                return await client.read_flow_run(uuid)
            except ObjectNotFound:
                return None

        fr = await self._call("read a flow run", go)
        return _view(fr) if fr is not None else None

    async def list(self, limit: int, offset: int) -> list[FlowRunView]:
        """Flow runs of the flow, newest first."""

        async def go(client: PrefectClient) -> list[FlowRun]:
            return await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW])),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=limit,
                offset=offset,
            )

        return [_view(fr) for fr in await self._call("list flow runs", go)]

    async def cancel(self, run_id: str) -> None:
        """Ask Prefect to cancel: a scheduled run is cancelled at once, a running one's process is killed."""
        view = await self.read(run_id)
        if view is None:
            raise NotFound(f"run {run_id!r} not found")

        async def go(client: PrefectClient) -> None:
            state: PrefectState[Any] = (
                Cancelled(message="cancelled") if view.state == "pending" else Cancelling(message="cancel requested")
            )
            await client.set_flow_run_state(UUID(run_id), state, force=True)

        if view.state not in ("completed", "failed", "cancelled"):
            await self._call("cancel a flow run", go)

    async def delete(self, run_id: str) -> int:
        """Remove a run from Prefect: its artifacts (reports and fidelity pairs quote messages; Prefect
        keeps them past their flow run), then the flow run, whose logs Prefect removes with it. The
        number of objects removed; 0 for a run Prefect does not have."""
        try:
            uuid = UUID(run_id)
        except ValueError:
            return 0

        async def go(client: PrefectClient) -> int:
            found = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[uuid]))
            artifacts = await client.read_artifacts(artifact_filter=found)
            for artifact in artifacts:
                await client.delete_artifact(artifact.id)
            try:
                await client.delete_flow_run(uuid)
            except ObjectNotFound:
                return len(artifacts)
            return len(artifacts) + 1

        removed: int = await self._call("delete a flow run", go)
        return removed

    async def reschedule(self, run_id: str) -> None:
        """Schedule a run again (what the dashboard's retry does): it resumes from its checkpoint."""

        async def go(client: PrefectClient) -> None:
            await client.set_flow_run_state(UUID(run_id), Scheduled(), force=True)

        await self._call("reschedule a flow run", go)

