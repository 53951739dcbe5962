"""The memory allocator of the processes that train on a CPU.

glibc's malloc keeps the holes that a step's freed temporaries leave between the activations it
saves for the backward pass: SmolLM2 LoRA in passes of 1024 tokens peaks at ~4.8 GB of RSS for
~2.2 GB of tensors. tcmalloc (Debian's libtcmalloc-minimal4) reuses them: ~2.4 GB at the same speed
(bench/RESULTS.md). So the trainer starts the processes that train with it preloaded where the
system has it, as PyTorch's own CPU launcher does (`python -m torch.backends.xeon.run_cpu
--enable-tcmalloc`); where it has not, `trimmer` hands glibc's free pages back between passes when
memory is short.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable, Mapping

from doppel.config import Malloc

LIBRARY = "tcmalloc_minimal"
# peak RSS / the registry's estimate of a training step on a CPU, by the allocator the process runs on
# (one 8 x 510 batch of SmolLM2 LoRA: tcmalloc 2.26 GiB for an estimate of 2.22 in passes of 1024
# tokens; glibc 4.5 and 10.8 GiB for 2.22 and 6.05, in passes of 1024 and a batch at once)
OVERHEAD = {"tcmalloc": 1.1, "glibc": 2.0}


@functools.cache
def library() -> str | None:
    """tcmalloc's shared library as the dynamic loader finds it, or None where the system has none."""
    return ctypes.util.find_library(LIBRARY)


def environment(env: Mapping[str, str], malloc: Malloc = "auto") -> dict[str, str]:
    """`env` for a process that trains: tcmalloc preloaded when `malloc` is auto and the system has it."""
    out = dict(env)
    found = library() if malloc == "auto" else None
    preloaded = out.get("LD_PRELOAD", "").replace(":", " ").split()
    if found and found not in preloaded:
        out["LD_PRELOAD"] = " ".join([found, *preloaded])
        out.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))  # no stderr line per large tensor
    return out


@functools.cache
def allocator() -> str:
    """The malloc this process runs on: "tcmalloc" when preloaded, else "glibc" (the C library's)."""
    try:
        with open("/proc/self/maps") as f:
            return "tcmalloc" if "libtcmalloc" in f.read() else "glibc"
    except OSError:
        return "glibc"


def overhead() -> float:
    """What a CPU step's peak RSS is, as a multiple of the registry's estimate, on this process's malloc."""
    return OVERHEAD[allocator()]


def trimmer() -> Callable[[], object] | None:
    """glibc's `malloc_trim`, which hands the heap's free pages back to the system: 3.7 GB instead of
    4.8 for SmolLM2 in passes of 1024 tokens, at ~15% of the speed (the next pass faults them in
    again). None on tcmalloc, which needs none, and where there is no glibc."""
    if allocator() != "glibc":
        return None
    try:
        return functools.partial(ctypes.CDLL("libc.so.6").malloc_trim, 0)
    except (OSError, AttributeError):
        return None
