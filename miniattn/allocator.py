"""Keep freed memory in the process, so that a training step's temporaries do not page-fault anew.

A NumPy training step allocates and frees the same large temporaries every step: logits (B, T, C),
attention scores (B, T, S), gradients of the same shapes — megabytes each. glibc's allocator serves
allocations above its mmap threshold with fresh ``mmap`` pages and returns freed memory at the top of
the heap to the system once it exceeds the trim threshold, so every step touches new pages and pays
a page fault per 4 KiB (zero-filling the page). Measured on this project's benchmark step (1 BLAS
thread, 2-core AMD EPYC, glibc defaults vs :func:`keep_freed_memory`): single head float32 d = 64
22.1 → 13.3 ms, float64 d = 256 116 → 100 ms, 8 heads float32 d = 64 75 → 56 ms. Importing PyTorch
happens to have the same effect, which is why a step timed beside a PyTorch twin was faster than the
same step in a plain training run.

:func:`keep_freed_memory` raises the mmap threshold and the trim threshold (``mallopt``), so the
process keeps the pages of freed temporaries and reuses them. The arithmetic is untouched (results are
bit-identical); the cost is that the process holds on to its peak heap instead of returning it, which
it would need again at the next step anyway. Only glibc has ``mallopt``; elsewhere the call does
nothing and says so. The command-line entry points (``miniattn``, ``python -m analysis.experiments``,
``python -m benchmarks.run_all``) call it at start-up; a library user can call it once, or set the
environment variables ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` before starting Python.
Processes forked afterwards (the experiments' worker pools) inherit the setting.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MiB = 1 << 20
#: Allocations up to this size come from the heap (glibc accepts up to 32 MiB on every version; newer
#: ones more): the step's temporaries at the benchmark sizes are 1-90 MB.
_MMAP_THRESHOLDS = (256 * _MiB, 32 * _MiB)
#: Free memory at the top of the heap is returned to the system only beyond this.
_TRIM_THRESHOLD = 1024 * _MiB

_STATE = {"done": None}


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse (see the module docstring); True if it took effect.

    Idempotent: later calls return the first call's answer without calling ``mallopt`` again.
    """
    if _STATE["done"] is not None:
        return _STATE["done"]
    ok = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):   # not glibc (musl has no mallopt)
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            mmap_ok = any(mallopt(_M_MMAP_THRESHOLD, size) == 1 for size in _MMAP_THRESHOLDS)
            ok = mmap_ok and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    _STATE["done"] = ok
    return ok
