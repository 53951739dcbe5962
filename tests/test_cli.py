"""The `doppel` command: help everywhere, health checks, one service, and the stack."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
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
        "DOPPEL_PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api",
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


def children_of(pid: int) -> set[int]:
    """The live children of `pid`, from /proc."""
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def environment_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def http_status(url: str) -> int | None:
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5) as response:
            return response.status
    except (OSError, http.client.HTTPException):
        return None


def stop_up(proc: subprocess.Popen, pids: set[int]) -> None:
    """Whatever a test did: SIGTERM `doppel up` (it stops its children), then SIGKILL all that is left."""
    pids |= children_of(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def up_home(tmp_path_factory) -> Path:
    """One DOPPEL_HOME for this module's stacks: the Prefect server's first start (migrations) is paid once."""
    return tmp_path_factory.mktemp("up")


@pytest.fixture
def stack(up_home):
    """A running `doppel up`; teardown stops it and any child it left, whatever the test did."""
    env = stack_env(up_home)
    proc = doppel("up", env=env)
    pids: set[int] = set()
    try:
        output = read_until(proc, "Press Ctrl-C")
        pids.update(child_pids(output).values())
        yield proc, env, output
    finally:
        stop_up(proc, pids)


def read_all(proc: subprocess.Popen) -> str:
    try:
        return proc.communicate(timeout=30)[0] or ""
    except (ValueError, subprocess.TimeoutExpired):
        return ""


def test_up_serves_everything_and_ctrl_c_leaves_no_child(stack):
    proc, env, output = stack
    pids = child_pids(output)
    assert set(pids) == {"prefect", "ingest", "trainer", "inference"}
    assert children_of(proc.pid) == set(pids.values())
    services = ["ingest", "trainer", "inference"]
    for name in services:
        addr = env[f"DOPPEL_{name.upper()}_ADDR"]
        assert f"{name}" in output and addr in output
        with ServiceClient(addr) as client:
            assert client.health() == 1
    assert f"store      file://{env['DOPPEL_HOME']}/store" in output
    # The Prefect server came first, healthy before any service started; the banner shows its dashboard.
    api = env["DOPPEL_PREFECT_API_URL"]
    assert output.index("prefect healthy after") < output.index("starting ingest, trainer, inference")
    assert f"prefect    {api.removesuffix('/api')} (dashboard)" in output
    assert http_status(f"{api}/health") == 200
    assert http_status(api.removesuffix("/api")) == 200  # the dashboard, from the bundle under DOPPEL_HOME
    home = Path(env["DOPPEL_HOME"])
    assert (home / "prefect" / "prefect.db").exists() and (home / "prefect" / "ui").is_dir()
    assert (home / "logs" / "prefect.log").exists()
    # Every child talks to that server and keeps quiet.
    for name, pid in pids.items():
        child_env = environment_of(pid)
        assert child_env["PREFECT_API_URL"] == api, name
        assert child_env["DO_NOT_TRACK"] == "1" and child_env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false", name
        assert child_env["PREFECT_HOME"] == str(home / "prefect"), name
    assert environment_of(pids["prefect"])["PREFECT_UI_STATIC_DIRECTORY"] == str(home / "prefect" / "ui")
    proc.send_signal(signal.SIGINT)
    rest = read_all(proc)
    assert proc.returncode == 0, rest
    assert "stopped" in rest
    assert not any(pid_alive(pid) for pid in pids.values())


def test_up_refuses_to_start_twice(grpc_server, prefect_server, tmp_path):
    """What answers at the stack's addresses is another `doppel up` (here: a real ingest, a real Prefect server)."""
    from doppel.config import Settings

    ingest = grpc_server(build_ingest(Settings(home=tmp_path / "other")))
    env = {**stack_env(tmp_path), "DOPPEL_INGEST_ADDR": ingest.addr}
    second = doppel("up", env=env)
    out = read_all(second)
    assert second.returncode == 1, out
    assert f"Doppel is already running: ingest at {ingest.addr} answers" in out
    # Only the Prefect server's address is taken: refused too, before anything starts.
    env = {**stack_env(tmp_path), "DOPPEL_PREFECT_API_URL": prefect_server.api_url}
    third = doppel("up", env=env)
    out = read_all(third)
    assert third.returncode == 1, out
    assert f"a Prefect server already answers at {prefect_server.api_url}" in out
    assert not (tmp_path / "logs" / "prefect.log").exists()


@pytest.mark.parametrize("victim", ["trainer", "prefect"])
def test_up_stops_the_stack_when_a_child_dies(stack, victim):
    proc, _, output = stack
    pids = child_pids(output)
    os.kill(pids[victim], signal.SIGKILL)
    rest = read_all(proc)
    assert proc.returncode == 1
    assert f"{victim} exited with code -9" in rest
    assert f"logs/{victim}.log" in rest
    assert not any(pid_alive(pid) for pid in pids.values())


def test_up_sigterm_while_prefect_starts_leaves_no_child(tmp_path):
    env = stack_env(tmp_path)
    proc = doppel("up", env=env)
    pids: set[int] = set()
    try:
        read_until(proc, "starting the Prefect server", timeout=30)
        deadline = time.monotonic() + 10
        while not pids and time.monotonic() < deadline:
            pids = children_of(proc.pid)
            time.sleep(0.05)
        assert len(pids) == 1  # the server only; the services wait for its health
        proc.send_signal(signal.SIGTERM)
        rest = read_all(proc)
        assert proc.returncode == 0, rest
        assert "stopped" in rest and "Doppel is up" not in rest
        assert not any(pid_alive(pid) for pid in pids)
        assert not (tmp_path / "logs" / "ingest.log").exists()
    finally:
        stop_up(proc, pids)


def test_up_starts_no_service_until_prefect_is_healthy(tmp_path):
    env = stack_env(tmp_path)
    proc = doppel("up", "--timeout", "1", env=env)  # a fresh Prefect home takes far longer than 1 s
    try:
        out = read_all(proc)
        assert proc.returncode == 1, out
        assert "error: prefect not healthy after 1 s" in out
        assert "starting ingest" not in out
        assert not (tmp_path / "logs" / "ingest.log").exists()
        assert (tmp_path / "logs" / "prefect.log").exists()
        assert http_status(f"{env['DOPPEL_PREFECT_API_URL']}/health") is None
    finally:
        stop_up(proc, set())


@pytest.mark.parametrize(
    "url",
    ["https://127.0.0.1:4200/api", "http://10.0.0.1:4200/api", "http://prefect.example.com/api",
     "http://127.0.0.1:4200/", "http://127.0.0.1:99999/api"],
)
def test_up_refuses_a_prefect_url_it_cannot_serve(tmp_path, url):
    result = runner.invoke(app, ["up"], env={"DOPPEL_HOME": str(tmp_path), "DOPPEL_PREFECT_API_URL": url})
    assert result.exit_code == 2, result.output
    assert f"DOPPEL_PREFECT_API_URL={url!r}" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "logs").exists()


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
