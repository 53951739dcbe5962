"""Fixtures of the Hub stand-in (support.hubserver), for every test that downloads from "the Hub"."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.hubserver import HubServer, point_hub_at, tiny_repo_files


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The files of a tiny random GPT-2 repo (model and tokenizer)."""
    return tiny_repo_files(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A started stand-in, with this process's huggingface_hub and transformers pointed at it (cache in tmp_path)."""
    with HubServer() as server:
        point_hub_at(monkeypatch, server, tmp_path / "hf-home")
        yield server
