"""docker-compose.gpu.yml, deploy/*.env and deploy/Dockerfile, checked without a Docker engine.

A compose file that validates can still run nothing: a command the CLI lacks, a `DOPPEL_*`
variable with a typo (Settings ignores unknown ones silently), a port that differs between the
listen address, the published port and the health check. These tests read the files the way
compose does (tests/support/compose.py) and hold them to the code.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from doppel.config import Settings
from support.compose import (
    COMPOSE,
    DOCKERFILE,
    EXAMPLE_ENV,
    ROOT,
    MissingVariable,
    dockerfile_env,
    load_compose,
    read_env_file,
    services,
    variables_in,
)

BIN = Path(sys.executable).parent
# What a filled-in `.env` holds: the example, with its empty secrets set.
FILLED = {k: v or f"not-a-secret-{k.lower()}" for k, v in read_env_file(EXAMPLE_ENV).items()}
GRPC = {"ingest": "ingest_addr", "trainer": "trainer_addr", "inference": "inference_addr"}
LONG_RUNNING = {"minio", "postgres", "prefect-server", *GRPC, "ui", "openai", "inference-2", "balancer"}
GPU_SERVICES = {"trainer": "TRAINER_GPUS", "inference": "INFERENCE_GPUS", "inference-2": "INFERENCE_2_GPUS"}


@pytest.fixture(scope="module")
def stack():
    return services(FILLED)


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is missing from the venv: pip install -e '.[test]' (it is in the test extras)")
    return str(path)


def test_compose_file_follows_the_compose_specification():
    done = subprocess.run([_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfiles_pass_hadolint():
    stand_ins = sorted((ROOT / "deploy" / "local").glob("*.Dockerfile"))
    assert stand_ins, "deploy/local/ holds the stand-ins' Dockerfiles"
    done = subprocess.run([_tool("hadolint"), str(DOCKERFILE), *map(str, stand_ins)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_runs_doppel_as_a_non_root_user_offline():
    text = DOCKERFILE.read_text()
    assert re.search(r'^ENTRYPOINT \["doppel"\]$', text, re.M), "compose commands assume the entrypoint is `doppel`"
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0")), f"the last USER is {user[-1:]}"
    env = dockerfile_env()
    assert env["HF_HUB_OFFLINE"] == "1" and env["DO_NOT_TRACK"] == "1" and env["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert "python -m doppel.codegen" in text, "the image must carry the generated gRPC stubs"
    for image in re.findall(r"^ARG \w+_IMAGE=(\S+)|^FROM (\S+)", text, re.M):
        ref = next(i for i in image if i)
        assert ref.startswith("$") or (":" in ref and not ref.endswith(":latest")), f"unpinned base image {ref}"


def test_a_missing_secret_stops_compose_with_a_message():
    unfilled = {k: v for k, v in FILLED.items() if k != "MINIO_ROOT_PASSWORD"}
    with pytest.raises(MissingVariable, match="MINIO_ROOT_PASSWORD: set MINIO_ROOT_PASSWORD in .env"):
        services(unfilled)


def test_example_env_names_every_variable_the_compose_file_interpolates():
    used = variables_in(COMPOSE.read_text())
    assert used <= set(FILLED), f"not in deploy/example.env: {sorted(used - set(FILLED))}"


def _parse(argv: list[str]) -> list[str]:
    """The command path of `doppel ARGV`; its arguments are parsed (choices checked) as the CLI would, not run."""
    import typer.main

    from doppel.cli.main import app

    command, path, rest = typer.main.get_command(app), [], list(argv)
    while hasattr(command, "commands") and rest and rest[0] in command.commands:  # a group (typer's own click)
        path.append(rest[0])
        command = command.commands[rest.pop(0)]
    assert not hasattr(command, "commands"), f"`doppel {' '.join(argv)}` names a group, not a command"
    try:
        command.make_context(" ".join(["doppel", *path]), rest)
    except Exception as e:
        if not hasattr(e, "format_message"):
            raise
        pytest.fail(f"`doppel {' '.join(argv)}`: {e.format_message()}")
    return path


def test_every_doppel_command_exists(stack):
    """Each container's command (after the `doppel` entrypoint) and `doppel` health check parses, and answers --help."""
    paths = set()
    for s in stack.values():
        if s.builds_doppel:
            paths.add(tuple(_parse(s.command)))
        if s.healthcheck[:1] == ["doppel"]:
            paths.add(tuple(_parse(s.healthcheck[1:])))
    assert {("serve",), ("ui",), ("healthcheck",)} <= paths
    for path in sorted(paths):
        done = subprocess.run([sys.executable, "-m", "doppel", *path, "--help"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"`doppel {' '.join(path)} --help`: {done.stdout}{done.stderr}"


def test_every_doppel_variable_is_a_setting():
    """Settings ignores unknown DOPPEL_* variables, so a typo would silently fall back to a default."""
    fields = {f"DOPPEL_{name.upper()}" for name in Settings.model_fields}
    texts = {COMPOSE: COMPOSE.read_text(), **{p: p.read_text() for p in sorted((ROOT / "deploy").glob("*.env"))}}
    unknown = {f"{path.name}: {name}" for path, text in texts.items()
               for name in re.findall(r"\bDOPPEL_[A-Z0-9_]+", text) if name not in fields}
    assert not unknown, f"not fields of doppel.config.Settings: {sorted(unknown)}"


def test_every_setting_in_a_container_parses(stack):
    """What each Doppel container gets builds a Settings, with the addresses in the compose network."""
    for s in stack.values():
        if not s.builds_doppel:
            continue
        env = {k.removeprefix("DOPPEL_").lower(): v for k, v in s.env.items() if k.startswith("DOPPEL_")}
        settings = Settings(**env)
        for name, field in GRPC.items():
            assert getattr(settings, field).split(":")[0] == name, (s.name, field)
        assert urlsplit(settings.prefect_api_url).hostname == "prefect-server"
        if "DOPPEL_STORE_URL" in s.env:
            store = urlsplit(settings.store_url)
            assert store.scheme == "s3" and "endpoint=minio:9000" in store.query, settings.store_url
            assert s.env["AWS_ACCESS_KEY_ID"] and s.env["AWS_SECRET_ACCESS_KEY"], f"{s.name} has no store credentials"


def _port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def test_ports_agree_between_settings_publishing_and_health_checks(stack):
    common = read_env_file(ROOT / "deploy" / "common.env")
    for name, field in GRPC.items():
        s = stack[name]
        listen = s.env["DOPPEL_LISTEN"]
        assert listen.startswith("0.0.0.0:"), f"{name} must bind every interface of its container, not {listen}"
        port = _port(listen)
        assert common[f"DOPPEL_{field.upper()}"] == f"{name}:{port}", f"others reach {name} elsewhere"
        assert [c for _, _, c in s.published] == [port], f"{name} publishes {s.published}, listens on {port}"
        assert s.healthcheck == ["doppel", "healthcheck", f"127.0.0.1:{port}"], s.healthcheck

    ui = stack["ui"]
    assert ui.env["DOPPEL_UI_HOST"] == "0.0.0.0"
    ui_port = int(ui.env["DOPPEL_UI_PORT"])
    assert [c for _, _, c in ui.published] == [ui_port]
    assert f"http://127.0.0.1:{ui_port}/" in " ".join(ui.healthcheck)

    gateway = stack["openai"]
    assert gateway.command == ["serve", "openai"] and gateway.env["DOPPEL_LISTEN"].startswith("0.0.0.0:")
    api_port = _port(gateway.env["DOPPEL_LISTEN"])
    assert [c for _, _, c in gateway.published] == [api_port]
    assert f"http://127.0.0.1:{api_port}/health" in " ".join(gateway.healthcheck)
    assert set(gateway.spec["depends_on"]) == {"inference"} and "DOPPEL_API_TOKEN" in gateway.env

    prefect = stack["prefect-server"]
    command = prefect.command
    prefect_port = int(command[command.index("--port") + 1])
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert [c for _, _, c in prefect.published] == [prefect_port]
    assert f"http://127.0.0.1:{prefect_port}/api/health" in " ".join(prefect.healthcheck)
    for key in ("DOPPEL_PREFECT_API_URL", "PREFECT_API_URL"):  # `doppel up` sets both; `prefect` commands read the second
        assert common[key] == f"http://prefect-server:{prefect_port}/api", key

    assert {c for _, _, c in stack["minio"].published} == {9000, 9001}
    for s in stack.values():
        for host_ip, _, _ in s.published:
            assert host_ip == FILLED["PUBLISH_HOST"], f"{s.name} publishes on {host_ip!r}, not PUBLISH_HOST"


def test_trainer_and_inference_reserve_their_gpus_and_nothing_else_does(stack):
    for s in stack.values():
        devices = s.spec.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
        if s.name in GPU_SERVICES:
            assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), s.name
            # the GPUs .env gives it, not every GPU
            assert [d.get("device_ids") for d in devices] == [[FILLED[GPU_SERVICES[s.name]]]], devices
            assert not any("count" in d for d in devices), devices
        else:
            assert not devices, f"{s.name} reserves {devices}"


def test_the_replicas_profile_puts_nginx_in_front_of_two_inference_replicas(stack):
    replica, balancer, first = stack["inference-2"], stack["balancer"], stack["inference"]
    assert replica.spec["profiles"] == balancer.spec["profiles"] == ["replicas"] and "profiles" not in first.spec
    assert replica.command == first.command and replica.env == first.env and not replica.published
    port = _port(first.env["DOPPEL_LISTEN"])
    argv = balancer.command
    assert argv[0] == "balancer" and [argv[i + 1] for i, a in enumerate(argv) if a == "--replica"] == [
        f"inference:{port}", f"inference-2:{port}"]
    assert balancer.env["DOPPEL_LISTEN"] == f"0.0.0.0:{port}" and [c for _, _, c in balancer.published] == [port]
    assert balancer.healthcheck == ["doppel", "healthcheck", f"127.0.0.1:{port}"]
    assert set(balancer.spec["depends_on"]) == {"inference", "inference-2"}
    # the UI and the OpenAI API reach inference where INFERENCE_ADDR says: the balancer, with the profile's value
    balanced = services({**FILLED, "INFERENCE_ADDR": f"balancer:{port}"})
    for name in ("ui", "openai"):
        assert stack[name].env["DOPPEL_INFERENCE_ADDR"] == f"inference:{port}", name
        assert balanced[name].env["DOPPEL_INFERENCE_ADDR"] == f"balancer:{port}", name


def test_the_cpu_override_leaves_no_service_asking_for_a_gpu(tmp_path):
    """deploy/compose.cpu.yml, as compose merges it, with every profile on: no service reserves a device."""
    import json

    env = tmp_path / ".env"
    env.write_text("".join(f"{k}={v}\n" for k, v in FILLED.items()))
    done = subprocess.run([_tool("docker-compose"), "-p", "t", "--project-directory", str(ROOT), "--env-file", str(env),
                           "--profile", "*", "-f", str(COMPOSE), "-f", str(ROOT / "deploy" / "compose.cpu.yml"),
                           "config", "--format", "json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    merged = json.loads(done.stdout)["services"]
    assert set(GPU_SERVICES) <= set(merged)
    assert not {name for name, spec in merged.items() if spec.get("deploy", {}).get("resources", {}).get("reservations")}


def test_health_checks_gate_every_dependency(stack):
    for s in stack.values():
        if s.name in LONG_RUNNING:
            assert s.healthcheck, f"{s.name} has no health check"
            assert s.spec.get("restart") == "unless-stopped", f"{s.name} restart is {s.spec.get('restart')}"
        for dep, how in s.spec.get("depends_on", {}).items():
            condition = how.get("condition")
            if stack[dep].name in LONG_RUNNING:
                assert condition == "service_healthy", f"{s.name} -> {dep}: {condition}"
            else:  # a one-shot job such as minio-init
                assert condition == "service_completed_successfully", f"{s.name} -> {dep}: {condition}"
    assert set(stack["ui"].spec["depends_on"]) == set(GRPC)
    assert "prefect-server" in stack["trainer"].spec["depends_on"]
    assert "postgres" in stack["prefect-server"].spec["depends_on"]
    db = stack["prefect-server"].env["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert db.startswith("postgresql+asyncpg://") and "@postgres:5432/" in db


def test_caches_live_in_named_volumes(stack):
    """Converted base models (DOPPEL_HOME/cache) and the Hugging Face cache survive a container's replacement."""
    raw_volumes = set(load_compose().get("volumes") or {})
    env = dockerfile_env()
    for name in ("trainer", "inference", "inference-2"):
        mounts = {m.split(":")[1]: m.split(":")[0] for m in stack[name].spec["volumes"]}
        for target in (env["DOPPEL_HOME"], env["HF_HOME"]):
            assert mounts.get(target) in raw_volumes, f"{name}: no named volume at {target}"
    assert stack["inference-2"].spec["volumes"] != stack["inference"].spec["volumes"], "each replica has a home of its own"
    for name, target in (("minio", "/data"), ("postgres", "/var/lib/postgresql/data")):
        mounts = {m.split(":")[1]: m.split(":")[0] for m in stack[name].spec["volumes"]}
        assert mounts.get(target) in raw_volumes, f"{name}: no named volume at {target}"


SECRET = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|_KEY_ID")
SECRET_VALUE = re.compile(r"PASSWORD|SECRET|TOKEN")  # an access key is a user name: the example may name one


def test_no_secret_is_written_in_the_compose_file_or_the_env_files():
    raw = load_compose()

    def walk(node, path=""):
        if isinstance(node, dict):
            for k, v in node.items():
                yield from walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, f"{path}[{i}]")
        else:
            yield path, str(node)

    for path, value in walk(raw):
        key = path.rsplit(".", 1)[-1]
        if SECRET.search(key):
            # a required ${X:?...} variable, or an optional one that is empty unless .env sets it
            assert re.fullmatch(r"\$\{[A-Z_]+(:\?[^}]+|:-)\}", value), f"{path} is not a ${{...:?}} or ${{...:-}} variable: {value}"
        for userinfo in re.findall(r"://([^@/\s]+)@", value):  # credentials inside a URL
            assert ":${" in userinfo, f"{path} writes credentials in a URL: {value}"
    for env_file in sorted((ROOT / "deploy").glob("*.env")):
        for key, value in read_env_file(env_file).items():
            if SECRET_VALUE.search(key):
                assert env_file == EXAMPLE_ENV and value == "", f"{env_file.name}: {key} holds a value"


def test_only_the_trainer_may_reach_the_hub_and_only_when_the_operator_allows_it(stack):
    assert stack["trainer"].env["HF_HUB_OFFLINE"] == "1"  # the example's choice: no pulls
    for name in ("ingest", "inference", "ui"):
        assert "HF_TOKEN" not in stack[name].env and "HF_HUB_OFFLINE" not in stack[name].env  # the image's 1 holds
    allowed = services({**FILLED, "HUB_OFFLINE": "0", "HF_TOKEN": "hf_x", "HF_ENDPOINT": "http://mirror:8080"})["trainer"].env
    assert (allowed["HF_HUB_OFFLINE"], allowed["HF_TOKEN"], allowed["HF_ENDPOINT"]) == ("0", "hf_x", "http://mirror:8080")
