"""docker-compose.gpu.yml for real: images built, containers up, reached through published ports.

The stack runs as a user runs it, with the two overrides a machine without a GPU and without a
registry needs (deploy/compose.cpu.yml, deploy/compose.local.yml; images from
`python3 deploy/images.py local`, cached). Then, only through the ports published on 127.0.0.1:
an import, a `tiny` training run started from the Prefect API as the dashboard's form does, a
chat with the token, the UI page in Chromium; `restart` keeps datasets and models, a killed
inference container comes back by its restart policy, the `replicas` profile serves through
nginx, and `down` removes only what `up` made.

Starts `dockerd` when none answers and stops only what it started; skipped where no Docker
engine can be started (no `dockerd`, not root). `make test` installs docker.io and mmdebstrap
where apt-get is available, so CI runs it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.compose import COMPOSE, EXAMPLE_ENV, ROOT, read_env_file
from support.hubserver import tiny_repo_files
from support.stack import CHAT, CREATE_AND_WATCH, OPENAI_CHAT, whatsapp_export

pytestmark = [pytest.mark.live_stack, pytest.mark.timeout(1800)]

OVERRIDES = (ROOT / "deploy" / "compose.cpu.yml", ROOT / "deploy" / "compose.local.yml",
             ROOT / "tests" / "deploy" / "compose.hub.yml")
HUB_REPO = "doppel-test/Tiny-GPT2"  # what the Hub stand-in inside the stack serves
PORTS = {"minio": 9000, "prefect-server": 4200, "ingest": 50051, "trainer": 50052, "inference": 50053, "ui": 7860,
         "openai": 8000}
LONG_RUNNING = ("minio", "postgres", "prefect-server", "ingest", "trainer", "inference", "ui", "openai")
HOST = "127.0.0.1"
CHROMIUM = "/usr/bin/chromium"


def _docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return done


def _answers() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="module")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A Docker engine: the running one, or a `dockerd` started here and stopped afterwards."""
    if _answers():
        yield
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0 or shutil.which("docker") is None:
        pytest.skip("no Docker engine can be started here (needs root and Debian's docker.io: apt-get install docker.io)")
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([dockerd], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not _answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("dockerd did not start:\n" + log.read_text(errors="replace")[-3000:])
            time.sleep(1)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Stack:
    project: str
    env_file: Path
    token: str
    home: Path

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        files = [a for f in (COMPOSE, *OVERRIDES) for a in ("-f", str(f))]
        argv = [str(Path(sys.executable).parent / "docker-compose"), "-p", self.project,
                "--project-directory", str(ROOT), "--env-file", str(self.env_file), *files, *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done

    def container(self, service: str) -> dict:
        ids = self.compose("ps", "-aq", service).stdout.split()
        assert len(ids) == 1, f"{service}: containers {ids}"
        return json.loads(_docker("inspect", ids[0]).stdout)[0]

    def wait_healthy(self, services: tuple[str, ...] = LONG_RUNNING, timeout: float = 420) -> float:
        t0 = time.monotonic()
        while True:
            states = {s: self.container(s)["State"] for s in services}
            waiting = {s: st.get("Health", {}).get("Status", st["Status"]) for s, st in states.items()
                       if st.get("Health", {}).get("Status") != "healthy"}
            if not waiting:
                return time.monotonic() - t0
            looping = [s for s in states if self.container(s)["RestartCount"] > 3]
            if looping:
                raise AssertionError(f"crash-looping: {looping}\n{self.logs()}")
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"not healthy after {timeout:.0f} s: {waiting}\n{self.logs()}")
            time.sleep(2)

    def logs(self, lines: int = 30) -> str:
        return self.compose("logs", "--no-color", "--tail", str(lines), check=False).stdout[-12000:]

    def client(self, argv: list[str], *, token: bool = True, timeout: float = 120,
               inference_port: int = 50053) -> subprocess.CompletedProcess:
        """A process on the host, reaching the stack through its published ports only."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOPPEL_", "AWS_", "PREFECT_API"))}
        env.update({"DOPPEL_INGEST_ADDR": f"{HOST}:50051", "DOPPEL_TRAINER_ADDR": f"{HOST}:50052",
                    "DOPPEL_INFERENCE_ADDR": f"{HOST}:{inference_port}", "DOPPEL_HOME": str(self.home)})
        if token:
            env["DOPPEL_API_TOKEN"] = self.token
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def _inventory() -> dict[str, set[str]]:
    return {kind: set(_docker(kind, "ls", "-q", *(["-a"] if kind == "container" else [])).stdout.split())
            for kind in ("container", "network", "volume")}


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) != 0


# what building the images may take on the engine's disk before a rebuild drops what it replaced
IMAGES_NEED_GIB = 8


@pytest.fixture(scope="module")
def images(docker_engine: None) -> dict[str, str]:
    root = _docker("info", "--format", "{{.DockerRootDir}}").stdout.strip()
    free = shutil.disk_usage(root).free / 2**30
    if free < IMAGES_NEED_GIB:  # a full disk fails every later test that writes, each less clearly
        pytest.fail(f"the images need up to {IMAGES_NEED_GIB} GiB on {root} and {free:.1f} GiB is free: "
                    "see `docker system df`; `docker image prune -f` removes images no tag names")
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "deploy" / "images.py"), "local"],
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout + done.stderr[-6000:]
    print(f"\nimages ready in {time.monotonic() - t0:.0f} s")
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def stack(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    busy = [p for p in (*PORTS.values(), 9001) if not _port_free(p)]
    if busy:
        pytest.fail(f"the stack publishes ports {busy} on {HOST}, and something listens there already")
    tmp = tmp_path_factory.mktemp("live")
    token = secrets.token_urlsafe(24)
    dotenv = {**read_env_file(EXAMPLE_ENV), "MINIO_ROOT_PASSWORD": secrets.token_urlsafe(18),
              "STORE_SECRET_KEY": secrets.token_urlsafe(18), "POSTGRES_PASSWORD": secrets.token_urlsafe(18),
              "DOPPEL_API_TOKEN": token, "DEPLOY_IMAGE": images["doppel"], "PREFECT_UI_URL": f"http://{HOST}:4200"}
    hub_repo = Path(tempfile.mkdtemp(prefix="doppel-live-hub-"))  # outside pytest's 0700 folders: the hub's user reads it
    hub_repo.chmod(0o755)
    for name, data in tiny_repo_files(tmp).items():
        (hub_repo / name).write_bytes(data)
        (hub_repo / name).chmod(0o644)
    dotenv["HUB_REPO_DIR"] = str(hub_repo)
    env_file = tmp / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in dotenv.items()))
    s = Stack(f"doppel-live-{secrets.token_hex(3)}", env_file, token, tmp / "client")
    before = _inventory()
    t0 = time.monotonic()
    try:
        s.compose("up", "-d", "--no-build", timeout=600)
        healthy = s.wait_healthy()
        print(f"\nstack healthy {healthy:.0f} s after `up` ({time.monotonic() - t0:.0f} s in all)")
        s.before = before  # type: ignore[attr-defined]
        yield s
    finally:
        with contextlib.suppress(Exception):
            s.compose("down", "-v", "--remove-orphans", timeout=300)
        shutil.rmtree(hub_repo, ignore_errors=True)


def test_every_service_is_healthy_runs_unprivileged_and_publishes_on_loopback_only(stack: Stack):
    for service in LONG_RUNNING:
        info = stack.container(service)
        bindings = info["HostConfig"]["PortBindings"] or {}
        hosts = {b["HostIp"] for spec in bindings.values() for b in spec}
        assert hosts <= {HOST}, f"{service} publishes on {hosts}"
    for service in ("ingest", "trainer", "inference", "ui"):
        info = stack.container(service)
        assert info["Config"]["User"] == "10001:10001", info["Config"]["User"]
        uid = stack.compose("exec", "-T", service, "id", "-u").stdout.strip()
        assert uid == "10001", f"{service} runs as uid {uid}"
    # the image has tcmalloc, which the trainer preloads in the processes that train (services/trainer/heap.py)
    found = stack.compose("exec", "-T", "trainer", "python", "-c",
                          "from services.trainer import heap; print(heap.library())").stdout.strip()
    assert found.startswith("libtcmalloc_minimal.so"), found
    for service in ("ingest", "trainer", "inference"):
        done = stack.client([sys.executable, "-m", "doppel", "healthcheck", f"{HOST}:{PORTS[service]}"])
        assert done.returncode == 0, f"{service}: {done.stdout}{done.stderr}"
    refused = stack.client([sys.executable, "-m", "doppel", "datasets", "list"], token=False)
    assert refused.returncode != 0 and "UNAUTHENTICATED" in refused.stdout + refused.stderr, refused


def test_import_train_from_the_prefect_api_and_chat(stack: Stack, tmp_path: Path):
    export = whatsapp_export(tmp_path / "WhatsApp Chat with Bob.txt")
    done = stack.client([sys.executable, "-m", "doppel", "ingest", str(export), "--name", "live"])
    assert done.returncode == 0, done.stdout + done.stderr + stack.logs()
    dataset = next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("dataset "))

    request = {"dataset_id": dataset, "speakers": ["Alice"], "base_model": "tiny", "preset": "quick-cpu",
               "hyperparameters": {"max_steps": 12, "block_size": 128, "save_every": 6, "sample_every": 0}}
    t0 = time.monotonic()
    created = stack.client([sys.executable, "-c", CREATE_AND_WATCH, f"http://{HOST}:4200/api", json.dumps(request)],
                           timeout=450)
    assert created.returncode == 0, created.stdout + created.stderr + stack.logs()
    run = json.loads(created.stdout.strip().splitlines()[-1])
    assert run["state"] == "COMPLETED", f"{run}\n{stack.logs()}"
    print(f"\ntraining run {run['id']} completed in {time.monotonic() - t0:.0f} s")

    shown = json.loads(stack.client([sys.executable, "-m", "doppel", "runs", "show", run["id"]]).stdout)
    model_id = shown["modelId"]
    assert shown["dashboardUrl"] == f"http://{HOST}:4200/runs/flow-run/{run['id']}", shown
    talked = stack.client([sys.executable, "-c", CHAT, model_id], timeout=240)
    assert talked.returncode == 0, talked.stdout + talked.stderr + stack.logs()
    reply = json.loads(talked.stdout.strip().splitlines()[-1])
    assert reply["speaker"] == "Alice" and len(reply["texts"]) == 2, reply
    said = stack.client([sys.executable, "-c", OPENAI_CHAT, f"http://{HOST}:{PORTS['openai']}/v1", stack.token, model_id],
                        timeout=240)
    assert said.returncode == 0, said.stdout + said.stderr + stack.logs()
    assert json.loads(said.stdout.strip().splitlines()[-1]) == {"refused": 401, "name": "Alice", "replied": True}
    stack.made = (dataset, model_id)  # type: ignore[attr-defined]


def test_the_trainer_pulls_a_base_from_the_hub_inside_the_stack(stack: Stack):
    pulled = stack.client([sys.executable, "-m", "doppel", "bases", "pull", HUB_REPO], timeout=240)
    hub_env = stack.compose("exec", "-T", "trainer", "sh", "-c", "env | grep ^HF_", check=False).stdout
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr + hub_env + stack.logs()
    assert pulled.stdout.startswith("tiny-gpt2 ") and " stored " in pulled.stdout, pulled.stdout
    listed = stack.client([sys.executable, "-m", "doppel", "bases"])
    assert any(line.startswith("tiny-gpt2 ") and " stored " in line for line in listed.stdout.splitlines()), listed.stdout


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"needs Debian's chromium at {CHROMIUM}")
def test_the_ui_page_opens_in_a_browser_and_logs_in_with_the_token(stack: Stack):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page()
        page.goto(f"http://{HOST}:7860/", wait_until="load")
        page.get_by_label("username").fill("someone")
        page.get_by_label("password").fill(stack.token)
        page.get_by_role("button", name="Login").click()
        expect(page.locator("#doppel-status")).to_contain_text("inference", timeout=60_000)
        expect(page.locator("#doppel-status")).not_to_contain_text("Not answering")
        browser.close()


def test_restart_keeps_datasets_and_models(stack: Stack):
    dataset, model_id = getattr(stack, "made", (None, None))
    if dataset is None:
        pytest.skip("the import-and-train test did not get as far as a model")
    stack.compose("restart", timeout=300)  # every container at once: the services start beside the S3 server
    stack.wait_healthy()
    crashed = {s: n for s in LONG_RUNNING if (n := stack.container(s)["RestartCount"])}
    assert not crashed, f"services exited while their store started, and came back by the restart policy: {crashed}"
    datasets = stack.client([sys.executable, "-m", "doppel", "datasets", "list"])
    assert dataset in datasets.stdout, datasets.stdout + datasets.stderr
    models = stack.client([sys.executable, "-m", "doppel", "models"])
    assert model_id in models.stdout, models.stdout + models.stderr


def test_a_killed_inference_container_comes_back_by_its_restart_policy(stack: Stack):
    before = stack.container("inference")
    os.kill(before["State"]["Pid"], signal.SIGKILL)  # a crash, not `docker stop`: the policy applies
    deadline = time.monotonic() + 120
    while stack.container("inference")["RestartCount"] == before["RestartCount"]:
        assert time.monotonic() < deadline, "the inference container did not restart"
        time.sleep(1)
    stack.wait_healthy(("inference",))
    done = stack.client([sys.executable, "-m", "doppel", "healthcheck", f"{HOST}:50053"])
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_replicas_profile_serves_one_persona_from_one_replica_behind_nginx(stack: Stack):
    """What example.env says to set: a second inference replica and nginx come up, a chat through the balancer's
    published port and one through the OpenAI API (now reaching inference through nginx) both answer, and nginx's
    access log shows every call for the persona went to one replica. Then the profile is taken down again."""
    _, model_id = getattr(stack, "made", (None, None))
    if model_id is None:
        pytest.skip("the import-and-train test did not get as far as a model")
    plain = stack.env_file.read_text()
    port = int(read_env_file(stack.env_file)["BALANCER_PORT"])
    stack.env_file.write_text(plain + "COMPOSE_PROFILES=replicas\nINFERENCE_ADDR=balancer:50053\n")
    try:
        stack.compose("up", "-d", "--no-build", timeout=600)
        stack.wait_healthy((*LONG_RUNNING, "inference-2", "balancer"))
        for _ in range(3):
            talked = stack.client([sys.executable, "-c", CHAT, model_id], timeout=240, inference_port=port)
            assert talked.returncode == 0, talked.stdout + talked.stderr + stack.logs()
        said = stack.client([sys.executable, "-c", OPENAI_CHAT, f"http://{HOST}:{PORTS['openai']}/v1", stack.token,
                             model_id], timeout=240)
        assert said.returncode == 0, said.stdout + said.stderr + stack.logs()
        calls = stack.compose("logs", "--no-color", "balancer").stdout
        went = re.findall(rf'model={re.escape(model_id)} upstream="([^"]+)" status=200', calls)
        assert len(went) >= 4 and len(set(went)) == 1, calls[-4000:]
    finally:
        stack.compose("--profile", "replicas", "rm", "--stop", "--force", "--volumes", "inference-2", "balancer", check=False)
        stack.env_file.write_text(plain)
        stack.compose("up", "-d", "--no-build", timeout=600)  # the UI and the API reach `inference` again
        _docker("volume", "rm", f"{stack.project}_inference-2-home", check=False)
    stack.wait_healthy()


def test_down_removes_only_what_up_created(stack: Stack):
    before: dict[str, set[str]] = stack.before  # type: ignore[attr-defined]
    stack.compose("down", timeout=300)
    after = _inventory()
    assert after["container"] == before["container"]
    assert after["network"] == before["network"]
    kept = after["volume"] - before["volume"]
    assert before["volume"] <= after["volume"] and kept, "named volumes outlive `down` (without -v)"
    assert all(v.startswith(stack.project + "_") for v in kept), kept
    stack.compose("down", "-v", timeout=300)
    assert _inventory()["volume"] == before["volume"]


def test_a_rebuild_removes_the_images_it_replaces(images: dict[str, str], tmp_path: Path):
    """Each build of a changed tree used to leave its previous image and builder stage behind
    (57 GB after a day of runs, then tests failed for want of disk)."""
    spec = importlib.util.spec_from_file_location("deploy_images", ROOT / "deploy" / "images.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE} AS builder\nCOPY value /value\n"
                          "FROM ${BASE_IMAGE}\nCOPY --from=builder /value /value\n")
    tag = f"doppel-test-rebuild:{secrets.token_hex(4)}"
    built = []
    try:
        for value in ("one", "two"):
            (tmp_path / "value").write_text(value)
            build._build(str(dockerfile), tag, str(tmp_path), BASE_IMAGE=images["base"])
            built.append((build.image_id(tag), build.image_id(f"{tag}-builder")))
        (first, first_builder), (second, second_builder) = built
        assert None not in (second, second_builder) and first != second and first_builder != second_builder
        assert build.image_id(first) is None and build.image_id(first_builder) is None
        assert build.image_id(images["base"]) is not None
    finally:
        _docker("image", "rm", tag, f"{tag}-builder", check=False)
