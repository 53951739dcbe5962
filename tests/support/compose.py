"""Reading docker-compose.gpu.yml and deploy/*.env the way Docker Compose does, without Docker.

There is no Docker engine on these machines, so the deploy tests resolve what compose would
give each container themselves: `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`
and `$$` interpolation from a `.env`-like mapping, `env_file` lists (later files win) and then
`environment` (which wins over the files). YAML anchors and `<<` merges are PyYAML's.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.gpu.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
EXAMPLE_ENV = ROOT / "deploy" / "example.env"

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class MissingVariable(KeyError):
    """A `${VAR:?message}` whose variable is unset or empty: compose refuses to start."""


def load_compose(path: Path = COMPOSE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and `#` comments skipped; quotes around a value removed."""
    out: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            raise ValueError(f"{path}:{number}: not KEY=VALUE: {line!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def interpolate(value: Any, variables: dict[str, str]) -> Any:
    """`value` (any YAML node) with every `${...}` resolved from `variables`, as compose does."""
    if isinstance(value, dict):
        return {k: interpolate(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        current = variables.get(name)
        if op == ":-":
            return current if current else arg
        if op == "-":
            return arg if current is None else current
        if op in (":?", "?") and (current is None or (op == ":?" and not current)):
            raise MissingVariable(f"{name}: {arg}")
        return current or ""

    return _VAR.sub(one, value)


def variables_in(text: str) -> set[str]:
    """Names of the variables a compose file interpolates (not the `$$` ones the container's shell reads)."""
    return {m.group(1) or m.group(4) for m in _VAR.finditer(text) if m.group(0) != "$$"}


@dataclass(frozen=True)
class Service:
    """One compose service as its container would see it, after interpolation."""

    name: str
    spec: dict[str, Any]
    env: dict[str, str]  # env_file entries, then `environment`

    @property
    def command(self) -> list[str]:
        command = self.spec.get("command", [])
        return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]

    @property
    def healthcheck(self) -> list[str]:
        """The health check's argv (CMD form) or `["sh", "-c", ...]` (CMD-SHELL form); [] when none."""
        test = self.spec.get("healthcheck", {}).get("test", [])
        if isinstance(test, str):
            return ["sh", "-c", test]
        if test and test[0] == "CMD":
            return list(test[1:])
        if test and test[0] == "CMD-SHELL":
            return ["sh", "-c", test[1]]
        return []

    @property
    def published(self) -> list[tuple[str, int, int]]:
        """(host interface, host port, container port) of each `ports` entry."""
        out = []
        for entry in self.spec.get("ports", []):
            if isinstance(entry, dict):
                out.append((entry.get("host_ip", ""), int(entry["published"]), int(entry["target"])))
                continue
            parts = str(entry).rsplit(":", 2)
            host_ip, host, container = ([""] * (3 - len(parts)) + parts)
            out.append((host_ip, int(host), int(container.split("/")[0])))
        return out

    @property
    def builds_doppel(self) -> bool:
        """Whether the service runs the image built from deploy/Dockerfile."""
        return self.spec.get("build", {}).get("dockerfile") == "deploy/Dockerfile"


def services(variables: dict[str, str], path: Path = COMPOSE) -> dict[str, Service]:
    """Every service of the compose file with `variables` as its `.env`."""
    raw = load_compose(path)
    out = {}
    for name, spec in raw["services"].items():
        spec = interpolate(spec, variables)
        env: dict[str, str] = {}
        files = spec.get("env_file", [])
        for f in [files] if isinstance(files, str) else files:
            env.update(read_env_file(path.parent / (f if isinstance(f, str) else f["path"])))
        environment = spec.get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        env.update({k: "" if v is None else str(v) for k, v in environment.items()})
        out[name] = Service(name, spec, env)
    return out


def dockerfile_env(path: Path = DOCKERFILE) -> dict[str, str]:
    """The ENV of the Dockerfile's last stage (the image the services run), continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    env: dict[str, str] = {}
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        if not words:
            continue
        if words[0].upper() == "FROM":
            env = {}
        elif words[0].upper() == "ENV" and len(words) == 2:
            for item in shlex.split(words[1]):
                key, _, value = item.partition("=")
                env[key] = value
    return env
