"""The `prefect_api_url` fixture gives a real, working Prefect API, and tests keep out of ~/.prefect."""

from __future__ import annotations

import os
from pathlib import Path

import prefect
from prefect.client.orchestration import get_client
from prefect.settings import get_current_settings


def test_prefect_client_reaches_the_fixture_server(prefect_api_url, prefect_server):
    assert prefect_api_url.startswith("http://127.0.0.1:") and prefect_api_url.endswith("/api")
    assert os.environ["PREFECT_API_URL"] == prefect_api_url
    assert str(get_current_settings().api.url) == prefect_api_url
    with get_client(sync_client=True) as client:
        assert str(client.api_url).rstrip("/") == prefect_api_url
        assert client.api_healthcheck() is None
        assert client.api_version() == client.client_version()  # the same prefect on both sides
        # a database of its own, in the fixture's home, holding no flow but those the tests register
        assert (prefect_server.home / "prefect.db").is_file()
        assert {f.name for f in client.read_flows()} <= {"train-persona"}
    print(f"prefect {prefect.__version__} server healthy {prefect_server.started_in_s:.1f} s after start")


def test_prefect_state_lives_in_a_temporary_home():
    home = Path(get_current_settings().home).resolve()
    assert home == Path(os.environ["PREFECT_HOME"]).resolve()
    assert home != (Path.home() / ".prefect").resolve()
