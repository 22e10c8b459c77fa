"""Speed and scaling benchmarks of miniattn (not tests; run with ``python -m benchmarks.run_all``).

Modules: :mod:`benchmarks.step_speed` (one seq2seq training step, NumPy vs PyTorch eager),
:mod:`benchmarks.scaling` (step time against B, L, d; fraction of the machine's matmul throughput),
:mod:`benchmarks.prediction_cost` (reduced dynamics vs simulating the free-parameter and seq2seq copy models),
:mod:`benchmarks.torch_seq2seq` (the PyTorch twin). This package holds the helpers they share:
BLAS/PyTorch thread control, interleaved timing, robust summaries and a machine description.

Timings on a shared machine are noisy, so every comparison interleaves its candidates rep by rep
(a load spike then hits both alike), reports medians and interquartile ranges, never means.
"""

from __future__ import annotations

import ctypes
import datetime
import glob
import os
import platform
import subprocess
import time
from typing import Callable, NamedTuple, Sequence

import numpy as np

__all__ = ["blas_threads", "set_threads", "thread_method", "thread_report", "Summary", "summarize", "time_interleaved",
           "machine_info", "git_revision"]


# --------------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------------

def _openblas():
    """NumPy's bundled OpenBLAS as a ctypes library and its symbol suffix, or (None, None).

    The fallback when ``threadpoolctl`` (the ``bench`` extra) is not installed. NumPy wheels ship
    ``scipy_openblas`` with prefixed symbols (``scipy_openblas_get_num_threads64_``); older ones ship
    plain ``openblas_get_num_threads``.
    """
    libdir = os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libdir, "*openblas*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas_", "64_"), ("scipy_openblas_", ""), ("openblas_", "64_"),
                               ("openblas_", "")):
            if hasattr(lib, f"{prefix}get_num_threads{suffix}"):
                return lib, (prefix, suffix)
    return None, None


_LIB, _NAMES = _openblas()
try:   # threadpoolctl knows every BLAS NumPy may be linked against (OpenBLAS, MKL, BLIS)
    import threadpoolctl as _tpc
except ImportError:
    _tpc = None
_LIMITER: list = []   # keeps the current threadpoolctl limiter alive (its limits last as long as it does)


def thread_method() -> str:
    """How :func:`set_threads` controls NumPy's BLAS: "threadpoolctl" or "OpenBLAS C API"."""
    return "threadpoolctl" if _tpc is not None else "OpenBLAS C API (threadpoolctl not installed)"


def blas_threads() -> int | None:
    """Number of threads NumPy's BLAS uses for one matmul (None if it cannot be queried)."""
    if _tpc is not None:
        counts = [i["num_threads"] for i in _tpc.threadpool_info() if i.get("user_api") == "blas"]
        if counts:
            return int(max(counts))
    if _LIB is None:
        return None
    prefix, suffix = _NAMES
    return int(getattr(_LIB, f"{prefix}get_num_threads{suffix}")())


def set_threads(n: int) -> dict:
    """Use ``n`` threads in NumPy's BLAS and in PyTorch (if installed); return what each reports.

    NumPy's BLAS through ``threadpoolctl.threadpool_limits`` when threadpoolctl is installed (the
    ``bench`` extra), else NumPy's OpenBLAS C API. JAX's XLA thread pool is fixed when JAX is
    imported: see :func:`benchmarks.jax_seq2seq.configure_threads`.

    Parameters
    ----------
    n : int >= 1

    Returns
    -------
    dict
        ``{"numpy_blas": int or None, "torch": int or None, "jax": int or None}`` read back after setting.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (threads) must be an integer >= 1, got {n!r}")
    if _tpc is not None:
        _LIMITER[:] = [_tpc.threadpool_limits(limits=int(n), user_api="blas")]
    elif _LIB is not None:
        prefix, suffix = _NAMES
        getattr(_LIB, f"{prefix}set_num_threads{suffix}")(ctypes.c_int(int(n)))
    try:
        import torch
        torch.set_num_threads(int(n))
    except ImportError:
        pass
    return thread_report()


def thread_report() -> dict:
    """Threads currently used by NumPy's BLAS, by PyTorch and by XLA for JAX (None where unavailable;
    XLA's count is the one configured before JAX was imported, None if it has not been)."""
    try:
        import torch
        torch_threads = int(torch.get_num_threads())
    except ImportError:
        torch_threads = None
    from benchmarks.jax_seq2seq import jax_threads
    return {"numpy_blas": blas_threads(), "torch": torch_threads, "jax": jax_threads()}


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------

class Summary(NamedTuple):
    """Median and interquartile range of repeated measurements."""

    median: float
    q25: float
    q75: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q75 - self.q25


def summarize(values: Sequence[float]) -> Summary:
    """Median and quartiles of ``values`` (at least one finite value)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError(f"values must be a non-empty 1-d sequence of finite numbers, got shape {v.shape}")
    q25, med, q75 = np.percentile(v, [25, 50, 75])
    return Summary(float(med), float(q25), float(q75), int(v.size))


def time_interleaved(fns: dict[str, Callable[[], object]], *, reps: int, warmup: int = 3) -> dict[str, np.ndarray]:
    """Wall-clock seconds of each callable, interleaved rep by rep.

    Each callable runs ``warmup`` times untimed, then rep ``r`` times every callable once in turn
    (rotating the starting one each rep, so neither always follows the other). Interleaving puts a
    burst of load from other processes on every candidate alike, so per-rep ratios stay meaningful.

    Parameters
    ----------
    fns : dict name -> callable
    reps : int >= 1
    warmup : int >= 0

    Returns
    -------
    dict name -> array (reps,) of seconds
    """
    if not fns:
        raise ValueError("fns must hold at least one callable")
    if isinstance(reps, bool) or not isinstance(reps, (int, np.integer)) or reps < 1:
        raise ValueError(f"reps must be an integer >= 1, got {reps!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0, got {warmup!r}")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    out = {name: np.empty(reps) for name in names}
    clock = time.perf_counter
    for r in range(reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            t0 = clock()
            fns[name]()
            out[name][r] = clock() - t0
    return out


# --------------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------------

def git_revision() -> str | None:
    """Short git revision of the working tree (with ``-dirty``), or None outside a repository."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              check=True, cwd=os.path.dirname(os.path.abspath(__file__)),
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    """CPU, core count, load, library versions and thread settings, for the results table."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    import scipy
    from benchmarks.jax_seq2seq import jax_version
    from benchmarks.torch_seq2seq import torch_version
    blas = None
    try:
        cfg = np.show_config(mode="dicts")
        b = cfg["Build Dependencies"]["blas"]
        blas = f"{b.get('name')} {b.get('version')}"
    except Exception:   # show_config's layout differs between NumPy versions; this is cosmetic
        pass
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": cpu, "cores": os.cpu_count(), "loadavg": load, "python": platform.python_version(),
            "numpy": np.__version__, "scipy": scipy.__version__, "blas": blas, "torch": torch_version(),
            "jax": jax_version(), "threads": thread_report(), "git": git_revision()}
