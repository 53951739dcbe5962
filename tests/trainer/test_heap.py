"""The allocator of the processes that train (services/trainer/heap.py): tcmalloc, preloaded where the system has it."""

from __future__ import annotations

import os
import subprocess
import sys

from services.trainer import heap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROBE = "from services.trainer import heap; print(heap.allocator(), heap.trimmer() is not None, heap.overhead())"


def _child(env: dict[str, str]) -> list[str]:
    """What a fresh Python started with `env` says of its allocator."""
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert not out.stderr.strip(), out.stderr  # tcmalloc's "large alloc" lines would show here
    return out.stdout.split()


def test_a_process_started_with_the_training_environment_runs_on_tcmalloc():
    found = heap.library()
    assert found, "the system has no tcmalloc: `make test` installs Debian's libtcmalloc-minimal4"
    env = heap.environment({**os.environ, "LD_PRELOAD": ""})
    assert env["LD_PRELOAD"] == found
    assert _child(env) == ["tcmalloc", "False", str(heap.OVERHEAD["tcmalloc"])]  # no trimming on tcmalloc


def test_system_malloc_leaves_the_environment_and_trims():
    plain = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    assert heap.environment(plain, "system") == plain
    assert _child(plain) == ["glibc", "True", str(heap.OVERHEAD["glibc"])]


def test_a_library_already_preloaded_is_kept_and_tcmalloc_not_added_twice():
    other = "libm.so.6"
    once = heap.environment({"LD_PRELOAD": other})
    assert once["LD_PRELOAD"].split() == [heap.library(), other]
    assert heap.environment(once) == once
    assert _child({**os.environ, **once})[0] == "tcmalloc"
