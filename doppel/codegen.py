"""Generates the gRPC stubs in `doppel/v1/` from `proto/doppel/v1/*.proto`.

Run as `python -m doppel.codegen` (the Makefile's setup does). The proto folders mirror
the Python package, so protoc writes `from doppel.v1 import common_pb2` imports that work
as they are: nothing is rewritten. Stubs are rebuilt only when a proto is newer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _stale(proto: Path, out: Path, proto_root: Path) -> bool:
    stem = out / proto.relative_to(proto_root).with_suffix("")
    outputs = [stem.with_name(stem.name + s) for s in SUFFIXES]
    return any(not o.exists() or o.stat().st_mtime < proto.stat().st_mtime for o in outputs)


def generate(proto_root: Path = ROOT / "proto", out: Path = ROOT, force: bool = False) -> list[Path]:
    """Compiles every proto under `proto_root` into `out` if any is stale; returns the protos compiled."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(proto_root.rglob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {proto_root}")
    if not force and not any(_stale(p, out, proto_root) for p in protos):
        return []
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *map(str, protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    return protos


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto-root", type=Path, default=ROOT / "proto")
    parser.add_argument("--out", type=Path, default=ROOT)
    parser.add_argument("--force", action="store_true", help="regenerate even when up to date")
    ns = parser.parse_args(argv)
    done = generate(ns.proto_root, ns.out, ns.force)
    print(f"generated stubs for {len(done)} proto files" if done else "stubs are up to date", file=sys.stderr)


if __name__ == "__main__":
    main()
