"""The protos: buf lint passes, and stubs generate into importable `doppel.v1` modules as they are."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from doppel import codegen

ROOT = Path(__file__).resolve().parent.parent


def buf() -> str:
    path = shutil.which("buf", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    assert path, "the buf binary (buf-bin wheel) is not installed"
    return path


def run_buf_lint(cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "BUF_CACHE_DIR": str(cache)}
    return subprocess.run([buf(), "lint"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_buf_lint_passes(tmp_path):
    result = run_buf_lint(ROOT, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint_catches_an_undocumented_rpc(tmp_path):
    shutil.copy(ROOT / "buf.yaml", tmp_path)
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    bad = tmp_path / "proto/doppel/v1/ingest.proto"
    text = bad.read_text()
    bad.write_text(text.replace("  // Lists datasets, newest first.\n", ""))
    result = run_buf_lint(tmp_path, tmp_path / "cache")
    assert result.returncode != 0
    assert "ListDatasets" in result.stdout


def test_every_service_uses_its_own_request_and_response_pair():
    from doppel.v1 import inference_pb2, ingest_pb2, trainer_pb2

    seen: set[str] = set()
    for module in (ingest_pb2, trainer_pb2, inference_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                assert method.input_type.name == f"{method.name}Request"
                assert method.output_type.name == f"{method.name}Response"
                assert method.input_type.full_name not in seen
                seen.add(method.input_type.full_name)


def test_codegen_writes_importable_stubs_with_unrewritten_imports(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    done = codegen.generate(ROOT / "proto", out)
    assert {p.name for p in done} == {"common.proto", "ingest.proto", "trainer.proto", "inference.proto"}
    names = sorted(p.name for p in (out / "doppel/v1").iterdir())
    for stem in ("common", "ingest", "trainer", "inference"):
        assert {f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"} <= set(names)
    assert "from doppel.v1 import common_pb2" in (out / "doppel/v1/ingest_pb2.py").read_text()
    assert "from doppel.v1 import ingest_pb2" in (out / "doppel/v1/ingest_pb2_grpc.py").read_text()
    # Up to date: nothing regenerates. A stub older than its proto: everything does.
    assert codegen.generate(ROOT / "proto", out) == []
    stub = out / "doppel/v1/trainer_pb2.py"
    os.utime(stub, (1, 1))
    assert len(codegen.generate(ROOT / "proto", out)) == 4


@pytest.mark.parametrize("stem", ["ingest", "trainer", "inference"])
def test_installed_stubs_match_the_protos(stem, tmp_path):
    """The stubs setup generated are current: regenerating them gives the same bytes."""
    codegen.generate(ROOT / "proto", tmp_path, force=True)
    fresh = (tmp_path / f"doppel/v1/{stem}_pb2.py").read_bytes()
    assert (ROOT / f"doppel/v1/{stem}_pb2.py").read_bytes() == fresh
