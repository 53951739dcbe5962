"""Settings: embedded-mode defaults, DOPPEL_* overrides, a store URL derived from DOPPEL_HOME."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from doppel.config import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("DOPPEL_"):
            monkeypatch.delenv(key)


def test_defaults_are_the_embedded_mode(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    s = Settings()
    assert s.home == tmp_path / ".doppel"
    assert s.store_url == (tmp_path / ".doppel" / "store").as_uri()
    for addr in (s.ingest_addr, s.trainer_addr, s.inference_addr, s.prefect_api_url):
        assert "127.0.0.1" in addr
    assert s.token() is None


def test_environment_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("DOPPEL_HOME", str(tmp_path))
    monkeypatch.setenv("DOPPEL_STORE_URL", "s3://doppel?endpoint=minio:9000")
    monkeypatch.setenv("DOPPEL_INGEST_ADDR", "ingest:50051")
    monkeypatch.setenv("DOPPEL_API_TOKEN", "t0ken")
    monkeypatch.setenv("DOPPEL_GRACE_S", "2.5")
    s = Settings()
    assert (s.home, s.store_url, s.ingest_addr, s.grace_s) == (
        tmp_path,
        "s3://doppel?endpoint=minio:9000",
        "ingest:50051",
        2.5,
    )
    assert s.token() == "t0ken"
    assert "t0ken" not in repr(s) and "t0ken" not in s.model_dump_json()


def test_bad_values_say_which_variable(monkeypatch):
    monkeypatch.setenv("DOPPEL_UI_PORT", "not-a-port")
    with pytest.raises(ValidationError, match="ui_port"):
        Settings()


def test_the_dashboard_is_where_a_browser_reaches_it():
    assert Settings(prefect_api_url="http://127.0.0.1:4200/api").dashboard_url() == "http://127.0.0.1:4200"
    # in compose the services reach prefect-server:4200, a browser the host's published port
    behind = Settings(prefect_api_url="http://prefect-server:4200/api", prefect_ui_url="https://gpu-box.example:4200/")
    assert behind.dashboard_url() == "https://gpu-box.example:4200"
