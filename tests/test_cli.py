"""The `doppel` command: help everywhere, health checks, one service, and the stack."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
import typer.main
from typer.testing import CliRunner

from doppel import demo
from doppel.cli.main import app
from doppel.clients import InferenceClient, IngestClient, ServiceClient
from doppel.config import Settings
from doppel.demo import make_demo
from doppel.v1 import inference_pb2, ingest_pb2
from services.ingest.server import build as build_ingest
from services.trainer.recipe import MIN_MESSAGES
from support.processes import free_port, read_until
from ui.app import health as ui_health
from ui.backend import Backend

runner = CliRunner()


def all_commands(group, path: tuple[str, ...] = ()):
    """Every command path under `group` (typer's groups come from its own copy of click: no isinstance)."""
    for name, command in group.commands.items():
        yield (*path, name)
        if hasattr(command, "commands"):
            yield from all_commands(command, (*path, name))


def test_every_command_has_help():
    commands = list(all_commands(typer.main.get_command(app)))
    assert {("up",), ("serve",), ("healthcheck",), ("config",), ("version",), ("ui",), ("models", "show")} <= set(commands)
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
        "DOPPEL_UI_PORT": str(free_port()),
        "DOPPEL_OPENAI_ADDR": f"127.0.0.1:{free_port()}",
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


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def pid_running(pid: int) -> bool:
    """Alive and not a zombie: a zombie has exited (its sockets are closed) but is not reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


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


def start_up(env: dict[str, str], *args: str) -> tuple[subprocess.Popen, str]:
    """`doppel up` running and up; its output up to "Press Ctrl-C"."""
    proc = doppel("up", *args, env=env)
    try:
        return proc, read_until(proc, "Press Ctrl-C", timeout=180)
    except BaseException:
        stop_up(proc, set())
        raise


def running_stack(up_home: Path, tmp_path: Path, **extra: str):
    """A running `doppel up` on a store of its own (so it imports the demo); stopped afterwards with any
    child it left, whatever the test did."""
    env = {**stack_env(up_home), "DOPPEL_STORE_URL": (tmp_path / "store").as_uri(), **extra}
    proc, output = start_up(env)
    pids = set(child_pids(output).values())
    try:
        yield proc, env, output
    finally:
        stop_up(proc, pids)


@pytest.fixture
def stack(up_home, tmp_path):
    yield from running_stack(up_home, tmp_path)


@pytest.fixture
def slow_restart_stack(up_home, tmp_path):
    """A stack whose restarts wait 3 s: longer than a health check's 2 s (whose retries would otherwise reach
    a service restarted 1 s after its crash, and find it up)."""
    yield from running_stack(up_home, tmp_path, DOPPEL_RESTART_BACKOFF_S="3")


def read_all(proc: subprocess.Popen) -> str:
    try:
        return proc.communicate(timeout=30)[0] or ""
    except (ValueError, subprocess.TimeoutExpired):
        return ""


def ui_url(env: dict[str, str]) -> str:
    return f"http://127.0.0.1:{env['DOPPEL_UI_PORT']}"


def datasets(env: dict[str, str]) -> list:
    with IngestClient(env["DOPPEL_INGEST_ADDR"]) as client:
        return list(client.list_datasets(ingest_pb2.ListDatasetsRequest()).datasets)


def test_up_serves_everything_and_ctrl_c_leaves_no_child(stack):
    proc, env, output = stack
    pids = child_pids(output)
    assert set(pids) == {"ui", "openai", "prefect", "ingest", "trainer", "inference"}
    assert children_of(proc.pid) == set(pids.values())
    # The UI came last, once the services it talks to were healthy; the banner shows it first.
    assert output.index("ingest, trainer, inference healthy after") < output.index("starting the UI")
    banner = output.split("Doppel is up:\n", 1)[1].splitlines()
    assert banner[0].split()[:2] == ["ui", ui_url(env)]
    assert http_status(ui_url(env)) == 200
    assert (Path(env["DOPPEL_HOME"]) / "logs" / "ui.log").exists()
    # So did the OpenAI-compatible API, which answers its health check once inference does.
    api = f"http://{env['DOPPEL_OPENAI_ADDR']}/v1"
    assert f"openai     {api}  (pid {pids['openai']})" in output
    assert http_status(api.removesuffix("/v1") + "/health") == 200
    assert output.index("ingest, trainer, inference healthy after") < output.index("OpenAI-compatible API at")
    services = ["ingest", "trainer", "inference"]
    for name in services:
        addr = env[f"DOPPEL_{name.upper()}_ADDR"]
        assert f"{name}" in output and addr in output
        with ServiceClient(addr) as client:
            assert client.health() == 1
    assert f"store      {env['DOPPEL_STORE_URL']}\n" in output
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
    # An empty store gets the demo chats, through the ingest service, and a hint where to go next.
    said = read_until(proc, "Next: open")
    assert "imported the demo chats as dataset ds-" in said and f"Next: open {ui_url(env)}" in said
    [dataset] = datasets(env)
    assert dataset.name == demo.DATASET_NAME and f"dataset {dataset.id} ({dataset.name})" in said
    # A second `doppel up` here is refused before it starts anything.
    second = doppel("up", env=env)
    out = read_all(second)
    assert second.returncode == 1, out
    assert "Doppel is already running: ingest at" in out
    assert f"ui at {ui_url(env)}, openai at http://{env['DOPPEL_OPENAI_ADDR']}/v1 answers" in out
    proc.send_signal(signal.SIGINT)
    rest = read_all(proc)
    assert proc.returncode == 0, rest
    assert "stopped" in rest
    assert not any(pid_alive(pid) for pid in pids.values())


@pytest.mark.skipif(not Path("/usr/sbin/nginx").exists() and not shutil.which("nginx"), reason="needs nginx")
def test_up_runs_inference_replicas_behind_nginx_and_restarts_one_that_dies(up_home, tmp_path):
    env = {**stack_env(up_home), "DOPPEL_STORE_URL": (tmp_path / "store").as_uri(), "DOPPEL_INFERENCE_THREADS": "1"}
    proc, output = start_up(env, "--inference-replicas", "2")
    pids = child_pids(output)
    try:
        assert {"inference-1", "inference-2", "balancer"} <= set(pids) and "inference" not in pids
        assert children_of(proc.pid) == set(pids.values())
        addr = env["DOPPEL_INFERENCE_ADDR"]
        assert f"balancer   {addr} (nginx, in front of the 2 inference replicas)" in output
        conf = (up_home / "balancer" / "nginx.conf").read_text()
        replicas = [line.split()[1] for line in output.splitlines() if line.strip().startswith("inference-")
                    and "(pid " in line]
        assert len(replicas) == 2 and all(f"server {r} " in conf for r in replicas)
        with InferenceClient(addr) as client:
            assert client.health() == 1
            client.list_served_models(inference_pb2.ListServedModelsRequest())
        # One replica dies: calls go to the other, and `doppel up` restarts it.
        os.kill(pids["inference-1"], signal.SIGKILL)
        with InferenceClient(addr) as client:
            for _ in range(5):
                client.list_served_models(inference_pb2.ListServedModelsRequest())
        said = read_until(proc, "inference-1 healthy again", timeout=120)
        assert "inference-1 was killed by SIGKILL; restarting it" in said
        proc.send_signal(signal.SIGINT)
        rest = read_all(proc)
        assert proc.returncode == 0 and "stopped" in rest, rest
        assert not any(pid_alive(pid) for pid in pids.values())
    finally:
        stop_up(proc, set(pids.values()))


class Answers200(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_up_refuses_to_start_twice(grpc_server, prefect_server, tmp_path):
    """What answers at the stack's addresses is another `doppel up` (here: a real ingest, a real Prefect
    server, an HTTP server where the UI would be)."""
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
    # Only the UI's port is taken: refused too.
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers200) as ui:
        threading.Thread(target=ui.serve_forever, daemon=True).start()
        env = {**stack_env(tmp_path), "DOPPEL_UI_PORT": str(ui.server_port)}
        fourth = doppel("up", env=env)
        out = read_all(fourth)
        ui.shutdown()
    assert fourth.returncode == 1, out
    assert f"Doppel is already running: ui at http://127.0.0.1:{ui.server_port} answers" in out
    assert not (tmp_path / "logs" / "prefect.log").exists()


def test_up_restarts_a_service_that_dies_and_leaves_the_rest_running(slow_restart_stack):
    proc, env, output = slow_restart_stack
    pids = child_pids(output)
    addr = env["DOPPEL_INFERENCE_ADDR"]
    backend = Backend(Settings(**{k.removeprefix("DOPPEL_").lower(): v for k, v in env.items()}))
    try:
        assert ui_health(backend).count("#16a34a") == 3
        os.kill(pids["inference"], signal.SIGKILL)
        gone_by = time.monotonic() + 10  # the signal is sent; the process's sockets close as it exits, a moment later
        while pid_running(pids["inference"]):
            assert time.monotonic() < gone_by
            time.sleep(0.02)
        # Down until its restart (3 s of backoff, then seconds of start-up): the UI's line says so, and no more.
        down = ui_health(backend)
        assert down.count("#dc2626") == 1 and f"Not answering: inference at `{addr}`" in down
        said = read_until(proc, "inference healthy again", timeout=120)
        assert "inference was killed by SIGKILL; restarting it in 3 s (attempt 1 of 4 within 60 s" in said
        new_pid = int(said.split("restarted inference (pid ", 1)[1].split(",", 1)[0])
        assert f"restarted inference (pid {new_pid}, attempt 1)" in said and "stopping" not in said
        assert new_pid != pids["inference"]
        with ServiceClient(addr) as client:
            assert client.health() == 1
        # The others never stopped: same processes, still the supervisor's only children.
        others = {name: pid for name, pid in pids.items() if name != "inference"}
        assert children_of(proc.pid) == {*others.values(), new_pid}
        assert http_status(ui_url(env)) == 200
        # The UI's line turns green by itself, over the same channels (no UI restart, no new client).
        deadline = time.monotonic() + 10
        while ui_health(backend).count("#16a34a") < 3:
            assert time.monotonic() < deadline, ui_health(backend)
            time.sleep(0.5)
        # So does the OpenAI-compatible API, over its own channel.
        while http_status(f"http://{env['DOPPEL_OPENAI_ADDR']}/health") != 200:
            assert time.monotonic() < deadline
            time.sleep(0.5)
    finally:
        backend.close()
    proc.send_signal(signal.SIGINT)
    rest = read_all(proc)
    assert proc.returncode == 0, rest
    assert not any(pid_alive(pid) for pid in [*others.values(), new_pid])


def test_up_stops_when_a_child_crashes_in_a_loop(up_home, tmp_path):
    """Ingest's port is taken (bound, not listening: nothing answers there), so it dies at every start."""
    env = {**stack_env(up_home), "DOPPEL_STORE_URL": (tmp_path / "store").as_uri(),
           "DOPPEL_RESTART_BACKOFF_S": "0.1", "DOPPEL_RESTART_LIMIT": "3"}
    host, port = env["DOPPEL_INGEST_ADDR"].split(":")
    with socket.socket() as taken:
        taken.bind((host, int(port)))
        proc = doppel("up", env=env)
        try:
            out = proc.communicate(timeout=180)[0]
        finally:
            stop_up(proc, set())
    assert proc.returncode == 1, out
    assert "ingest exited with code 1; restarting it in 0.1 s (attempt 1 of 2 within 60 s" in out
    assert "ingest exited with code 1; restarting it in 0.2 s (attempt 2 of 2 within 60 s" in out
    error = f"error: ingest exited with code 1, 3 crashes within 60 s: not restarting it; the end of {up_home}"
    assert error in out and "logs/ingest.log:" in out
    assert f"cannot listen on {env['DOPPEL_INGEST_ADDR']}" in out.split(error, 1)[1]  # the log's tail
    assert "Doppel is up" not in out and out.rstrip().endswith("stopped")
    # The rest of the stack stopped with it.
    assert http_status(f"{env['DOPPEL_PREFECT_API_URL']}/health") is None
    with ServiceClient(env["DOPPEL_TRAINER_ADDR"]) as client, pytest.raises(grpc.RpcError):
        client.health(timeout=1)


@pytest.mark.timeout(600)  # two stacks, one after the other
def test_up_imports_the_demo_once(stack):
    """The first run on an empty store imports the demo; `doppel up --demo` then finds it and adds no copy."""
    proc, env, _ = stack
    read_until(proc, "Next: open")
    proc.send_signal(signal.SIGINT)
    rest = read_all(proc)
    assert proc.returncode == 0, rest
    again, output = start_up(env, "--demo")
    try:
        said = read_until(again, "demo chats")
        assert "the demo chats are there already: dataset ds-" in said
        assert [d.name for d in datasets(env)] == [demo.DATASET_NAME]
    finally:
        stop_up(again, set(child_pids(output).values()))


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


def test_the_demo_export_is_what_make_demo_writes():
    assert {f.name: f.read_text(encoding="utf-8") for f in demo.export_files()} == make_demo.build()


def test_the_demo_export_has_three_voices_to_learn(tmp_path):
    path = tmp_path / demo.FILENAME
    path.write_bytes(demo.export_zip())
    assert demo.export_zip() == path.read_bytes()  # the same upload every time: one raw copy in the store
    shown = json.loads(runner.invoke(app, ["inspect", str(path)]).output)
    assert (shown["format"], shown["conversations"]) == ("whatsapp", 3)
    assert 600 <= shown["messages"] <= 1200
    assert set(shown["participants"]) == {"Mara Quist", "Jonah Pell", "Beatrice Ashdown"}
    assert min(shown["participants"].values()) >= 5 * MIN_MESSAGES
    said: dict[str, list[str]] = {}
    for line in runner.invoke(app, ["inspect", str(path), "--messages"]).output.splitlines():
        message = json.loads(line)
        said.setdefault(message["sender"], []).append(message["text"])
    jonah, beatrice = said["Jonah Pell"], said["Beatrice Ashdown"]
    assert sum("lol" in text for text in jonah) > len(jonah) / 4 and not any("lol" in text for text in beatrice)
    assert sum(map(len, beatrice)) / len(beatrice) > 3 * sum(map(len, jonah)) / len(jonah)


def test_a_bad_duration_option_names_the_option_and_what_would_do(tmp_path):
    path = tmp_path / demo.FILENAME
    path.write_bytes(demo.export_zip())
    result = runner.invoke(app, ["inspect", str(path), "--session-gap", "soon"])
    said = " ".join(result.output.replace("│", " ").split())  # the words, out of rich's error box
    assert result.exit_code == 2
    assert "Invalid value for '--session-gap': 'soon' is not a duration such as 90s, 30m, 6h or 1d" in said
    gap = runner.invoke(app, ["inspect", str(path), "--session-gap", "6h"])
    assert gap.exit_code == 0 and json.loads(gap.output)["format"] == "whatsapp"


def dataset_names(addr: str) -> list[str]:
    with IngestClient(addr) as client:
        return sorted(d.name for d in client.list_datasets(ingest_pb2.ListDatasetsRequest()).datasets)


def test_first_run_imports_the_demo_into_an_empty_store_once(grpc_server, tmp_path):
    ingest = grpc_server(build_ingest(Settings(home=tmp_path)))
    settings = Settings(home=tmp_path, ingest_addr=ingest.addr)
    said = demo.first_run(settings, always=False, ui_url="http://ui")
    assert said.startswith("imported the demo chats as dataset ds-") and "Next: open http://ui" in said
    assert "messages by Mara Quist (" in said
    assert demo.first_run(settings, always=False, ui_url="http://ui") is None
    assert demo.first_run(settings, always=True, ui_url="http://ui").startswith("the demo chats are there already")
    assert dataset_names(ingest.addr) == [demo.DATASET_NAME]


def test_first_run_leaves_a_used_store_alone_unless_asked(grpc_server, tmp_path):
    ingest = grpc_server(build_ingest(Settings(home=tmp_path)))
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(
        json.dumps({"conversation": "c", "sender": who, "text": "hi", "timestamp": f"2024-01-01T10:0{i}:00Z"}) + "\n"
        for i, who in enumerate(["A", "B"])
    ))
    with IngestClient(ingest.addr) as client:
        client.upload_file(mine, ingest_pb2.UploadHeader(filename=mine.name, dataset_name="mine"))
    settings = Settings(home=tmp_path, ingest_addr=ingest.addr)
    assert demo.first_run(settings, always=False, ui_url="http://ui") is None
    assert dataset_names(ingest.addr) == ["mine"]
    assert demo.first_run(settings, always=True, ui_url="http://ui").startswith("imported the demo chats")
    assert dataset_names(ingest.addr) == [demo.DATASET_NAME, "mine"]


def test_first_run_says_why_the_import_failed(tmp_path):
    settings = Settings(home=tmp_path, ingest_addr=f"127.0.0.1:{free_port()}", rpc_timeout_s=2)
    said = demo.first_run(settings, always=False, ui_url="http://ui")
    assert said.startswith("warning: could not import the demo chats: "), said
    assert "UNAVAILABLE" in said or "DEADLINE_EXCEEDED" in said, said  # which one comes first is gRPC's choice
