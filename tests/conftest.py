"""Shared fixtures: a real SeaweedFS S3 server, a real Prefect server, in-process gRPC servers on port 0."""

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator

import pytest

# Models never come from a hub here, and no server phones home.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DOPPEL_PREPARE_BASE", "0")  # no background conversion in every trainer a test starts
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
# Prefect state of this session lives in a folder of its own, never in ~/.prefect, and no test
# reaches a Prefect server of the developer's: a flow run without the `prefect_api_url` fixture
# gets a temporary server, whose first start on a fresh home outlasts Prefect's default 20 s.
# Set here, before any test module imports prefect (which reads its settings once, on import).
_PREFECT_HOME = tempfile.mkdtemp(prefix="doppel-test-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("PREFECT_API_KEY", None)
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"

pytest_plugins = ["support.seaweed", "support.grpcserver", "support.hubfixtures", "support.inference"]


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)


def _refresh_prefect_settings() -> None:
    """Make an already imported prefect see os.environ again (it snapshots its settings on import)."""
    context = sys.modules.get("prefect.context")
    if context is not None:
        context.refresh_global_settings_context()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory):  # -> support.prefect.PrefectServer
    """A real `prefect server start` on a free loopback port for the whole session (~10-30 s to start)."""
    from support.prefect import start_prefect_server, stop_prefect_server

    try:
        server = start_prefect_server(tmp_path_factory.mktemp("prefect-server"))
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield server
    finally:
        stop_prefect_server(server)


@pytest.fixture(scope="session")
def prefect_api_url(prefect_server) -> Iterator[str]:
    """The API URL of the session's Prefect server, also set as PREFECT_API_URL until the session ends.

    Flows, deployments and `get_client()` in the test process then talk to that server.
    """
    overrides = {
        "PREFECT_API_URL": prefect_server.api_url,
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    _refresh_prefect_settings()
    try:
        yield prefect_server.api_url
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _refresh_prefect_settings()
