"""Services share only contracts and the store: no service imports another, the library imports no
service (but its `doppel/cli/`, the top of the house, may), and the UI imports no service.

The checker reads the source (ast), so it sees every `import x` and `from x import y`, relative ones
resolved, inside functions and `if TYPE_CHECKING:` blocks too, without importing anything.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("services", "doppel", "ui")


def _module(path: Path, root: Path) -> tuple[str, bool]:
    """`services/ingest/datasets.py` -> ("services.ingest.datasets", False); a package's `__init__.py` -> (its name, True)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if package else parts), package


def imported(source: str, module: str, *, package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything `source`, the text of `module`, imports.

    `from a.b import c` yields both `a.b` and `a.b.c` (c may be a submodule); relative imports are
    resolved against `module` (`package`: whether `module` is a package's `__init__`).
    """
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".") if package else module.split(".")[:-1]
                if node.level - 1 > len(parts) - 1:
                    yield node.lineno, "." * node.level + (node.module or "")  # above the top: reported as is
                    continue
                base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield node.lineno, base
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}"


def violation(importer: str, name: str) -> str | None:
    """Why `importer` may not import `name`, or None if it may."""
    src, dst = importer.split("."), name.split(".")
    if src[0] == "services" and dst[0] == "services" and len(src) > 1 and len(dst) > 1 and src[1] != dst[1]:
        return f"services/{src[1]} imports services/{dst[1]}: services share only contracts and the store"
    if src[0] == "doppel" and src[1:2] != ["cli"] and dst[0] in ("services", "ui"):
        return f"the library imports {dst[0]}/ (only doppel/cli/ may)"
    if src[0] == "ui" and dst[0] == "services":
        return "the UI imports a service: it talks to them only through doppel's clients"
    return None


def check(root: Path) -> list[str]:
    """Every forbidden import under `root`'s services/, doppel/ and ui/: `path:line: module imports name: why`,
    one per line of source (the first forbidden name on it)."""
    found: dict[tuple[str, int], str] = {}
    for top in CHECKED:
        for path in sorted((root / top).rglob("*.py")):
            module, package = _module(path, root)
            where = path.relative_to(root).as_posix()
            for line, name in imported(path.read_text(encoding="utf-8"), module, package=package):
                why = violation(module, name)
                if why:
                    found.setdefault((where, line), f"{where}:{line}: {module} imports {name}: {why}")
    return list(found.values())


def test_the_tree_keeps_its_boundaries() -> None:
    problems = check(ROOT)
    assert not problems, "forbidden imports:\n" + "\n".join(problems)


def test_the_checker_reports_a_bad_import_in_a_synthetic_tree(tmp_path: Path) -> None:
    files = {
        "services/__init__.py": "",
        "services/a/__init__.py": "from . import x\n",  # its own package: fine
        "services/a/x.py": "from services.b import y\nimport services.a.z\n",
        "services/a/rel.py": "def late():\n    from ..b.y import f\n    from .x import g\n",
        "services/b/__init__.py": "from ..a import x\n",
        "services/b/y.py": "import doppel.dataset\n",
        "doppel/__init__.py": "",
        "doppel/lib.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import ui.app\n",
        "doppel/cli/main.py": "from services.a import x\nimport ui.app\n",  # the top of the house: fine
        "ui/__init__.py": "",
        "ui/view.py": "from doppel import dataset\nfrom services.a.x import f\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    where = sorted(p.split(": ", 1)[0] + " -> " + p.split(" imports ", 1)[1].split(":", 1)[0] for p in check(tmp_path))
    assert where == [
        "doppel/lib.py:3 -> ui.app",
        "services/a/rel.py:2 -> services.b.y",
        "services/a/x.py:1 -> services.b",
        "services/b/__init__.py:1 -> services.a",
        "ui/view.py:2 -> services.a.x",
    ]
    assert all("services share only contracts" in p for p in check(tmp_path) if p.startswith("services/"))


def test_relative_imports_resolve_against_the_importing_module() -> None:
    names = [n for _, n in imported("from ..ingest import datasets\nfrom . import runs\n", "services.trainer.flow")]
    assert names == ["services.ingest", "services.ingest.datasets", "services.trainer", "services.trainer.runs"]
    names = [n for _, n in imported("from .parsers import detect\n", "services.ingest", package=True)]
    assert names == ["services.ingest.parsers", "services.ingest.parsers.detect"]
