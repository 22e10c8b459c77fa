"""Sweeps: many independent runs, computed in parallel, each written as soon as it finishes.

* :class:`RunSpec` — one run: a unique name and the JSON-able config its function receives.
* Seeds: run i of a sweep gets ``SeedSequence(root, spawn_key=(i,))`` (:func:`spawn_seed_records`),
  stored in its config as (entropy, spawn_key), so any run can be repeated alone, bit-identically;
  :func:`seed_children` splits a run's seed into independent streams (init, data, ...).
* Executors (:func:`make_executor`): ``EXECUTOR=process`` (default; ``JOBS=n`` workers, default the
  CPU count), ``serial`` (in-process: tracebacks and breakpoints work), ``dask`` with
  ``SCHEDULER=tcp://host:port`` (the ``distributed`` extra). Only the parent process writes files.
* :func:`run_sweep` — compute every run that is not current in the :class:`~analysis.store.ResultStore`
  and return every run's record. An interrupted sweep keeps its finished runs; rerunning computes
  only the rest. On Ctrl-C the pool's workers are terminated at once, not awaited.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as _dt
import os
import platform
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from miniattn import io
from miniattn._validate import integer
from miniattn.progress import SweepProgress
from analysis.store import ResultStore, StoredRun, config_hash

__all__ = ["RunSpec", "spec", "seed_record", "spawn_seed_records", "seed_children", "SerialExecutor",
           "make_executor", "run_sweep"]


class RunSpec(NamedTuple):
    """One run of a sweep: ``name`` (unique within the experiment) and ``config`` (JSON-able)."""

    name: str
    config: dict


def spec(prefix: str, config: Mapping[str, Any]) -> RunSpec:
    """A :class:`RunSpec` named ``<prefix>-<first 10 hex digits of the config hash>``.

    Runs whose configs differ (e.g. between profiles) get different files and never overwrite each
    other; switching back to a profile reuses its runs.
    """
    return RunSpec(f"{prefix}-{config_hash(config)[:10]}", dict(config))


def seed_record(seq: np.random.SeedSequence) -> dict[str, Any]:
    """The (entropy, spawn_key) pair that recreates ``seq`` exactly."""
    if not isinstance(seq, np.random.SeedSequence):
        raise TypeError(f"seq must be a numpy.random.SeedSequence, got {type(seq).__name__}")
    return {"entropy": int(seq.entropy), "spawn_key": [int(k) for k in seq.spawn_key]}


def spawn_seed_records(root_seed: int, n: int, *, offset: int = 0) -> list[dict[str, Any]]:
    """Records of the children ``offset .. offset + n − 1`` of ``SeedSequence(root_seed)``.

    Child i is ``spawn_key=(i,)`` whatever ``n`` is, so adding seeds keeps the first ones (and their
    results) unchanged.
    """
    root_seed = integer("root_seed", root_seed, 0)
    n = integer("n", n, 0)
    offset = integer("offset", offset, 0)
    return [seed_record(np.random.SeedSequence(root_seed, spawn_key=(i,))) for i in range(offset, offset + n)]


def seed_children(record: Mapping[str, Any], n: int) -> list[np.random.SeedSequence]:
    """``n`` independent child sequences of a run's seed: spawn keys ``record.spawn_key + (i,)``.

    Built from the spawn key (not ``SeedSequence.spawn``, whose counter would give different
    children on a second call).
    """
    try:
        entropy = int(record["entropy"])
        key = tuple(int(k) for k in record["spawn_key"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"record must have 'entropy' and 'spawn_key', got {record!r}") from exc
    return [np.random.SeedSequence(entropy, spawn_key=key + (i,)) for i in range(integer("n", n, 0))]


class SerialExecutor(cf.Executor):
    """An executor that runs each call in-process at submit time (``EXECUTOR=serial``, tests)."""

    def __init__(self):
        self._shutdown = False

    def submit(self, fn, /, *args, **kwargs):
        if self._shutdown:
            raise RuntimeError("cannot submit after shutdown")
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - delivered through the future, like a pool
            fut.set_exception(exc)
        return fut

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._shutdown = True


def _jobs_from_env() -> int:
    env = os.environ.get("JOBS", "").strip()
    if not env:
        return os.cpu_count() or 1
    try:
        jobs = int(env)
    except ValueError:
        raise ValueError(f"JOBS must be a positive integer, got {env!r}") from None
    if jobs < 1:
        raise ValueError(f"JOBS must be a positive integer, got {env!r}")
    return jobs


def make_executor(kind: str | None = None, *, jobs: int | None = None,
                  scheduler: str | None = None) -> cf.Executor:
    """The executor the environment asks for (``EXECUTOR``, ``JOBS``, ``SCHEDULER``; see the module)."""
    kind = (kind or os.environ.get("EXECUTOR") or "process").strip().lower()
    if kind == "serial":
        return SerialExecutor()
    if kind == "process":
        jobs = _jobs_from_env() if jobs is None else integer("jobs", jobs, 1)
        return cf.ProcessPoolExecutor(max_workers=jobs)
    if kind == "dask":
        scheduler = scheduler or os.environ.get("SCHEDULER")
        if not scheduler:
            raise ValueError("EXECUTOR=dask needs a scheduler address: SCHEDULER=tcp://host:port")
        try:
            from dask.distributed import Client
        except ImportError as exc:
            raise ImportError("EXECUTOR=dask needs dask.distributed; install the optional extra: "
                              "pip install -e '.[distributed]'") from exc
        client = Client(scheduler)
        executor = client.get_executor()
        close = executor.shutdown

        def shutdown(wait=True, *, cancel_futures=False):
            try:
                close(wait=wait)
            finally:
                client.close()
        executor.shutdown = shutdown  # type: ignore[method-assign]
        return executor
    raise ValueError(f"EXECUTOR must be one of 'process', 'serial', 'dask', got {kind!r}")


def _now() -> str:
    # Milliseconds: a compute step that starts within a second of the last run must still see it as earlier.
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _execute(fn: Callable[[dict], Mapping[str, Any]], config: dict) -> tuple[dict, dict]:
    """Worker side: call ``fn(config)``, time it. Module-level so that it pickles."""
    started = _now()
    t0 = time.perf_counter()
    result = fn(config)
    runtime = time.perf_counter() - t0
    if not isinstance(result, Mapping):
        raise TypeError(f"a run function must return a dict, {fn.__name__} returned {type(result).__name__}")
    return dict(result), {"started": started, "finished": _now(), "runtime_s": runtime,
                          "worker": f"{platform.node()}:{os.getpid()}"}


def _terminate(executor: cf.Executor) -> None:
    """Stop a process pool now: cancel what is queued and kill the workers (no orphans, no waiting)."""
    processes = list((getattr(executor, "_processes", None) or {}).values()) if isinstance(executor, cf.ProcessPoolExecutor) else []
    executor.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        try:
            p.terminate()
        except (OSError, AttributeError):
            pass
    for p in processes:
        try:
            p.join(timeout=5)
        except (OSError, AttributeError, AssertionError):
            pass


def run_sweep(experiment: str, runs: Sequence[RunSpec], fn: Callable[[dict], Mapping[str, Any]], *,
              code: str, root=None, executor: cf.Executor | None = None,
              progress_stream=None) -> list[StoredRun]:
    """Compute every run of a sweep that is not current, writing each as it finishes.

    Parameters
    ----------
    experiment : str
        Experiment id; files go to ``<root>/<experiment>/runs/<name>.json``.
    runs : sequence of RunSpec
    fn : callable ``config -> dict``
        Importable by workers (module level). NumPy arrays of the result go to the ``.npz``.
    code : str
        The fingerprint of the code ``fn`` runs (:func:`analysis.fingerprint.fingerprint`).
    executor : Executor, optional
        Default :func:`make_executor` (started only when some run must be computed).

    Returns
    -------
    list of StoredRun, in the order of ``runs``.
    """
    store = ResultStore(experiment, root)
    for r in runs:
        if not isinstance(r, RunSpec):
            raise TypeError(f"runs must contain RunSpec objects, got {type(r).__name__}")
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"run names must be unique within a sweep; repeated: "
                         f"{sorted({n for n in names if names.count(n) > 1})}")
    for r in runs:
        store.run_path(r.name)
    store.clean_temps()
    todo = [r for r in runs if not store.is_current(r.name, r.config, code)]
    env = {"versions": io.package_versions(), "git": io.git_info(), "platform": platform.platform(),
           "cpu_count": os.cpu_count(),
           "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    if todo:
        own = executor is None
        ex = make_executor() if own else executor
        workers = getattr(ex, "_max_workers", 1)
        progress = SweepProgress(experiment, len(todo), progress_stream, workers=workers)
        if len(todo) < len(runs):
            progress.message(f"{len(runs) - len(todo)}/{len(runs)} runs up to date, reused")
        progress.message(f"computing {len(todo)} runs with {type(ex).__name__}")
        failure: list[BaseException] = []

        def finish(fut: cf.Future, r: RunSpec) -> None:
            exc = fut.exception()
            if exc is not None:
                if not failure:
                    failure.append(exc)
                    progress.message(f"run {r.name} failed: {exc!r}; no new runs are started")
                return
            result, timing = fut.result()
            store.save_run(r.name, r.config, code, result, metadata={**env, **timing})
            progress.step(r.name, timing["runtime_s"])

        try:
            if isinstance(ex, SerialExecutor):
                for r in todo:
                    if failure:
                        break
                    finish(ex.submit(_execute, fn, r.config), r)
            else:
                futures = {ex.submit(_execute, fn, r.config): r for r in todo}
                for fut in cf.as_completed(futures):
                    if fut.cancelled():
                        continue
                    finish(fut, futures[fut])
                    if failure:
                        for other in futures:
                            other.cancel()   # running ones finish and are kept
        except BaseException:  # KeyboardInterrupt, SystemExit: stop now; finished runs are on disk
            if own:
                _terminate(ex)
                own = False
            raise
        finally:
            if own:
                ex.shutdown(wait=True)
        if failure:
            raise failure[0]
    return [store.load_run(r.name) for r in runs]
