"""The `doppel` command: help everywhere, health checks, one service, and the stack."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
import typer.main
from typer.testing import CliRunner

from doppel.cli.main import app
from doppel.clients import ServiceClient
from services.ingest.server import build as build_ingest

runner = CliRunner()


def all_commands(group: click.Group, path: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from all_commands(command, (*path, name))


def test_every_command_has_help():
    commands = list(all_commands(typer.main.get_command(app)))
    assert {("up",), ("serve",), ("healthcheck",), ("config",), ("version",)} <= set(commands)
    for command in [(), *commands]:
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, (command, result.output)
        assert "Usage" in result.output


def test_config_prints_settings_with_the_token_masked(tmp_path):
    env = {"DOPPEL_HOME": str(tmp_path), "DOPPEL_API_TOKEN": "hunter2", "DOPPEL_INGEST_ADDR": "10.0.0.1:1"}
    result = runner.invoke(app, ["config"], env=env)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["store_url"] == (tmp_path / "store").as_uri()
    assert shown["ingest_addr"] == "10.0.0.1:1"
    assert "hunter2" not in result.output


def test_healthcheck_exit_codes(grpc_server, tmp_path):
    from doppel.config import Settings

    server = grpc_server(build_ingest(Settings(home=tmp_path)))
    ok = runner.invoke(app, ["healthcheck", server.addr])
    assert (ok.exit_code, ok.output.strip()) == (0, f"{server.addr}: SERVING")
    ok = runner.invoke(app, ["healthcheck", server.addr, "--service", "doppel.v1.IngestService"])
    assert ok.exit_code == 0
    unknown = runner.invoke(app, ["healthcheck", server.addr, "--service", "doppel.v1.Nope"])
    assert unknown.exit_code == 1 and "NOT_FOUND" in unknown.output
    port = free_port()
    down = runner.invoke(app, ["healthcheck", f"127.0.0.1:{port}", "--timeout", "1"])
    assert down.exit_code == 1
    assert f"127.0.0.1:{port}: no answer within 1 s; is the service running there?" in down.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(addr: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with ServiceClient(addr) as client:
            try:
                if client.health(timeout=1) == 1:
                    return
            except Exception:  # noqa: BLE001 - not up yet
                pass
        time.sleep(0.2)
    raise AssertionError(f"{addr} never turned SERVING")


def doppel(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "doppel", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stack_env(tmp_path: Path) -> dict[str, str]:
    return {
        "DOPPEL_HOME": str(tmp_path),
        "DOPPEL_INGEST_ADDR": f"127.0.0.1:{free_port()}",
        "DOPPEL_TRAINER_ADDR": f"127.0.0.1:{free_port()}",
        "DOPPEL_INFERENCE_ADDR": f"127.0.0.1:{free_port()}",
        "DOPPEL_GRACE_S": "2",
    }


def test_serve_stops_gracefully_on_sigterm(tmp_path):
    env = stack_env(tmp_path)
    proc = doppel("serve", "ingest", env=env)
    try:
        wait_serving(env["DOPPEL_INGEST_ADDR"])
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "shutting down" in out and "stopped" in out


def read_until(proc: subprocess.Popen, marker: str, timeout: float = 90) -> str:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"{marker!r} not printed; got:\n{''.join(seen)}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def child_pids(output: str) -> dict[str, int]:
    pids = {}
    for line in output.splitlines():
        if "(pid " in line:
            pids[line.split()[0]] = int(line.rsplit("(pid ", 1)[1].rstrip(")"))
    return pids


@pytest.fixture
def stack(tmp_path):
    """A running `doppel up`; teardown kills it and any child it left, whatever the test did."""
    env = stack_env(tmp_path)
    proc = doppel("up", env=env)
    pids: dict[str, int] = {}
    try:
        output = read_until(proc, "Press Ctrl-C")
        pids.update(child_pids(output))
        yield proc, env, output
    finally:
        proc.kill()
        for pid in pids.values():
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def read_all(proc: subprocess.Popen) -> str:
    try:
        return proc.communicate(timeout=30)[0] or ""
    except (ValueError, subprocess.TimeoutExpired):
        return ""


def test_up_serves_everything_and_ctrl_c_leaves_no_child(stack):
    proc, env, output = stack
    pids = child_pids(output)
    assert set(pids) == {"ingest", "trainer", "inference"}
    for name in pids:
        addr = env[f"DOPPEL_{name.upper()}_ADDR"]
        assert f"{name}" in output and addr in output
        with ServiceClient(addr) as client:
            assert client.health() == 1
    assert f"store      file://{env['DOPPEL_HOME']}/store" in output
    proc.send_signal(signal.SIGINT)
    rest = read_all(proc)
    assert proc.returncode == 0, rest
    assert "stopped" in rest
    assert not any(pid_alive(pid) for pid in pids.values())


def test_up_refuses_to_start_twice(stack):
    _, env, _ = stack
    second = doppel("up", env=env)
    out = read_all(second)
    assert second.returncode == 1
    assert "already running" in out


def test_up_stops_the_stack_when_a_child_dies(stack):
    proc, _, output = stack
    pids = child_pids(output)
    os.kill(pids["trainer"], signal.SIGKILL)
    rest = read_all(proc)
    assert proc.returncode == 1
    assert "trainer exited with code -9" in rest
    assert not any(pid_alive(pid) for pid in pids.values())


def test_a_bad_setting_names_the_variable():
    result = runner.invoke(app, ["config"], env={"DOPPEL_UI_PORT": "http"})
    assert result.exit_code == 2
    assert "DOPPEL_UI_PORT='http'" in result.output
    assert "Traceback" not in result.output


def test_up_refuses_a_bad_store_url_before_starting_anything(tmp_path):
    url = "s3://bucket?endpoint=127.0.0.1:1&access_key=k&secret_key=hunter2"
    env = {"DOPPEL_HOME": str(tmp_path), "DOPPEL_STORE_URL": url}
    result = runner.invoke(app, ["up"], env=env)
    assert result.exit_code == 2
    assert "DOPPEL_STORE_URL" in result.output and "cannot reach" in result.output
    assert "hunter2" not in result.output
    assert not (tmp_path / "logs").exists()
