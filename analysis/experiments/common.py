"""Shared machinery of the experiments: result store, seeds, sweeps, executors and statistics.

Every experiment E1-E7 is a module with ``compute(profile)``, ``plot()`` and ``main()``. Its compute
step is a *sweep* of independent runs (one seed, one setting each) followed by a *summary* that
aggregates them; both are result files under ``results/<exp>/``:

    results/<exp>/runs/<name>.json   one run: config, seed, metadata, scalar results
    results/<exp>/runs/<name>.npz    the same run's arrays (learning curves, trajectories), if any
    results/<exp>/summary.json       the aggregate the plots and REPORT.md are built from

Why this layout:

* **Reuse when up to date.** Every file records the SHA-256 of its canonical-JSON config (which
  includes the profile, the seeds and the experiment's ``code_version``). A file whose hash matches
  the requested config is reused; otherwise the run is recomputed. Switching ``FULL=1`` therefore
  recomputes, and rerunning with nothing changed costs only the hashing.
* **Resumable, never half-written.** Each file is written to a temporary file in the same directory
  and moved into place with :func:`os.replace` (atomic on POSIX; helpers of :mod:`miniattn.io`). The ``.npz`` is written before the
  ``.json``, so a ``.json`` whose hash matches means the run is complete. A sweep writes each run as
  soon as it finishes; an interrupted sweep recomputes only the unfinished runs.
* **Independent, recorded seeds.** Run ``i`` of a sweep gets ``SeedSequence(root, spawn_key=(i,))``
  (the ``i``-th child of ``SeedSequence(root).spawn(n)``); the pair (entropy, spawn_key) is stored in
  the run's config, so any run can be repeated alone, bit-identically.
* **Pluggable parallelism.** Runs go through a :class:`concurrent.futures.Executor` chosen by the
  environment: ``EXECUTOR=process`` (default; ``JOBS=n`` workers, default ``os.cpu_count()``),
  ``EXECUTOR=serial`` (in-process, for debugging), ``EXECUTOR=dask SCHEDULER=tcp://host:port`` (a
  ``dask.distributed`` cluster; needs the ``distributed`` extra). Files are written by the parent
  process only, so workers need no shared file system.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as _dt
import hashlib
import importlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from miniattn import io as _io

__all__ = [
    "PROFILES", "get_profile", "results_root", "figures_root", "repo_root",
    "canonical_json", "config_hash", "to_jsonable",
    "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_save_npz",
    "run_metadata", "package_versions", "git_revision",
    "seed_record", "spawn_seed_records", "rng_from_record", "seed_children", "keyed_run",
    "success_summary",
    "ResultStore", "Run", "SerialExecutor", "make_executor", "run_sweep", "Progress",
    "summarize", "wilson_interval", "write_summary", "load_summary", "experiment_cli",
]

PROFILES = ("default", "full")
"""``default``: fast, scaled down (whole pipeline < 15 min on 2 cores); ``full``: paper scale."""


# --------------------------------------------------------------------------------------------------
# locations and profile
# --------------------------------------------------------------------------------------------------

def repo_root() -> Path:
    """The repository root (the parent of ``analysis/``)."""
    return Path(__file__).resolve().parents[2]


def results_root(root: str | os.PathLike | None = None) -> Path:
    """Where results live: ``root`` if given, else ``$MINIATTN_RESULTS``, else ``./results``.

    Relative to the current directory (``make reproduce`` runs from the repository root), so tests
    can point it at a temporary directory.
    """
    if root is not None:
        return Path(root)
    return Path(os.environ.get("MINIATTN_RESULTS", "results"))


def figures_root(root: str | os.PathLike | None = None) -> Path:
    """``<results>/figures``."""
    return results_root(root) / "figures"


def get_profile(profile: str | None = None) -> str:
    """Resolve the profile: the argument if given, else ``full`` when ``FULL=1``, else ``default``.

    Raises
    ------
    ValueError
        If ``profile`` is not one of :data:`PROFILES`.
    """
    if profile is None:
        profile = "full" if os.environ.get("FULL", "").strip() in ("1", "true", "yes") else "default"
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    return profile


# --------------------------------------------------------------------------------------------------
# hashing and JSON
# --------------------------------------------------------------------------------------------------

def to_jsonable(obj: Any) -> Any:
    """Plain JSON data of ``obj`` (:func:`miniattn.io.to_jsonable`: NumPy -> Python, NaN/inf -> None).

    JSON has no NaN/inf; writing them as ``null`` keeps the files standard and makes "undefined"
    explicit (e.g. the spread of a single value).
    """
    try:
        return _io.to_jsonable(obj)
    except TypeError as exc:
        raise TypeError(f"cannot store this value in a result file: {exc}") from None


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace) of ``to_jsonable(obj)``: the hashed form."""
    return json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 hex digest of the canonical JSON of ``config``.

    Key order does not matter; any change of a value (profile, seed, size, code_version) does.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}")
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------------

def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path`` (temp file in the same directory, fsync, ``os.replace``)."""
    _io.atomic_write_bytes(path, data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``path``."""
    _io.atomic_write_text(path, text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``to_jsonable(obj)`` as indented, key-sorted JSON (stable diffs)."""
    text = json.dumps(to_jsonable(obj), indent=1, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def atomic_save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """Atomically write ``arrays`` as an uncompressed ``.npz`` (object arrays refused: no pickle)."""
    _io.atomic_save_npz(path, **arrays)
    return Path(path)


def _remove_stale_temps(directory: Path) -> None:
    """Remove temp files a killed writer left behind (only the parent process writes here)."""
    if directory.is_dir():
        for p in directory.glob(".*.tmp"):
            try:
                p.unlink()
            except FileNotFoundError:
                pass


# --------------------------------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------------------------------

def package_versions() -> dict[str, str | None]:
    """Versions of python, numpy, scipy, matplotlib, miniattn (None when not installed)."""
    return _io.package_versions()


_GIT_CACHE: dict[str, Any] = {}


def git_revision() -> dict[str, Any]:
    """``{"revision": sha or None, "dirty": bool or None}`` of the repository (cached per process)."""
    if not _GIT_CACHE:
        _GIT_CACHE.update(_io.git_info(repo_root()) or {"revision": None, "dirty": None})
    return dict(_GIT_CACHE)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_metadata() -> dict[str, Any]:
    """Package versions, git revision (+ dirty flag), platform and CPU count, for every result file."""
    return {"versions": package_versions(), "git": git_revision(), "platform": platform.platform(),
            "cpu_count": os.cpu_count()}


# --------------------------------------------------------------------------------------------------
# seeds
# --------------------------------------------------------------------------------------------------

def seed_record(seq: np.random.SeedSequence) -> dict[str, Any]:
    """The (entropy, spawn_key) pair that recreates ``seq`` exactly; stored in each run's config."""
    if not isinstance(seq, np.random.SeedSequence):
        raise TypeError(f"seq must be a numpy.random.SeedSequence, got {type(seq).__name__}")
    return {"entropy": int(seq.entropy), "spawn_key": [int(k) for k in seq.spawn_key]}


def spawn_seed_records(root_seed: int, n: int, *, offset: int = 0) -> list[dict[str, Any]]:
    """Records of ``SeedSequence(root_seed).spawn(offset + n)[offset:]``: independent child seeds.

    Children ``i`` are identified by ``spawn_key=(i,)`` and do not depend on ``n``, so adding seeds
    to a sweep (``FULL=1``) keeps the first ones -- and their results -- unchanged.
    """
    if not isinstance(root_seed, (int, np.integer)) or isinstance(root_seed, bool) or root_seed < 0:
        raise ValueError(f"root_seed must be a non-negative integer, got {root_seed!r}")
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    return [seed_record(np.random.SeedSequence(int(root_seed), spawn_key=(int(i),)))
            for i in range(offset, offset + n)]


def rng_from_record(record: Mapping[str, Any]) -> np.random.Generator:
    """A fresh ``numpy.random.Generator`` (PCG64) from a :func:`seed_record`."""
    try:
        seq = np.random.SeedSequence(int(record["entropy"]),
                                     spawn_key=tuple(int(k) for k in record["spawn_key"]))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"record must have 'entropy' and 'spawn_key', got {record!r}") from exc
    return np.random.default_rng(seq)


def seed_children(record: Mapping[str, Any], n: int) -> list[np.random.SeedSequence]:
    """``n`` independent child sequences of a run's seed: spawn keys ``record.spawn_key + (i,)``.

    Built from the spawn key (not with ``SeedSequence.spawn``, whose counter would make a second
    call give different children), so a run can draw e.g. child 0 for the model's initialisation
    and child 1 for training, reproducibly.
    """
    try:
        entropy = int(record["entropy"])
        key = tuple(int(k) for k in record["spawn_key"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"record must have 'entropy' and 'spawn_key', got {record!r}") from exc
    return [np.random.SeedSequence(entropy, spawn_key=key + (i,)) for i in range(n)]


def keyed_run(prefix: str, config: Mapping[str, Any]) -> "Run":
    """A :class:`Run` named ``<prefix>-<first 10 hex digits of the config hash>``.

    Runs whose configs differ (e.g. between profiles) then have different files and never overwrite
    each other; switching back to a profile reuses its runs.
    """
    return Run(f"{prefix}-{config_hash(config)[:10]}", config)


def success_summary(successes: Sequence[bool], *, confidence: float = 0.95) -> dict[str, Any]:
    """``{"n", "k", "rate", "ci": [low, high]}`` of a list of booleans (Wilson interval)."""
    flags = [bool(x) for x in successes]
    if not flags:
        raise ValueError("successes must not be empty")
    k, n = sum(flags), len(flags)
    lo, hi = wilson_interval(k, n, confidence=confidence)
    return {"n": n, "k": k, "rate": k / n, "ci": [lo, hi]}


# --------------------------------------------------------------------------------------------------
# result store
# --------------------------------------------------------------------------------------------------

def _split_arrays(result: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """NumPy arrays go to the ``.npz``; everything else (scalars, lists, dicts) to the JSON."""
    data, arrays = {}, {}
    for k, v in result.items():
        (arrays if isinstance(v, np.ndarray) and v.ndim > 0 else data)[k] = v
    return data, arrays


class ResultStore:
    """Result files of one experiment under ``<root>/<experiment>/``.

    Parameters
    ----------
    experiment : str
        Short id (``"e1"``); the directory name.
    root : path, optional
        The results root (default :func:`results_root`).
    """

    def __init__(self, experiment: str, root: str | os.PathLike | None = None):
        if not isinstance(experiment, str) or not experiment or "/" in experiment:
            raise ValueError(f"experiment must be a non-empty name without '/', got {experiment!r}")
        self.experiment = experiment
        self.dir = results_root(root) / experiment
        self.runs_dir = self.dir / "runs"

    def run_path(self, name: str) -> Path:
        """The JSON path of run ``name`` (its arrays are beside it with suffix ``.npz``)."""
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ValueError(f"run name must be a non-empty file name without '/', got {name!r}")
        return self.runs_dir / f"{name}.json"

    def is_current(self, name: str, config: Mapping[str, Any]) -> bool:
        """True if run ``name`` exists, is complete and was computed with exactly ``config``."""
        path = self.run_path(name)
        try:
            with open(path) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return False
        if meta.get("config_hash") != config_hash(config):
            return False
        return not meta.get("arrays") or path.with_suffix(".npz").is_file()

    def save_run(self, name: str, config: Mapping[str, Any], result: Mapping[str, Any], *,
                 started: str, finished: str, runtime_s: float, worker: str | None = None) -> Path:
        """Write run ``name``: arrays to ``.npz`` first, then the JSON (the completion marker)."""
        path = self.run_path(name)
        data, arrays = _split_arrays(result)
        if arrays:
            atomic_save_npz(path.with_suffix(".npz"), arrays)
        record = {
            "experiment": self.experiment, "name": name, "config": dict(config),
            "config_hash": config_hash(config), "seed": config.get("seed"),
            "metadata": run_metadata(), "started": started, "finished": finished,
            "runtime_s": float(runtime_s), "worker": worker, "data": data,
            "arrays": sorted(arrays) if arrays else [],
        }
        return atomic_write_json(path, record)

    def load_run(self, name: str, *, arrays: bool = True) -> dict[str, Any]:
        """The stored record of run ``name``; ``record["data"]`` holds its results (arrays merged)."""
        path = self.run_path(name)
        with open(path) as f:
            record = json.load(f)
        if arrays and record.get("arrays"):
            with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
                record["data"].update({k: z[k] for k in z.files})
        return record

    def clean_temps(self) -> None:
        """Remove temporary files left by an interrupted writer."""
        _remove_stale_temps(self.dir)
        _remove_stale_temps(self.runs_dir)


# --------------------------------------------------------------------------------------------------
# executors and sweeps
# --------------------------------------------------------------------------------------------------

class SerialExecutor(cf.Executor):
    """An :class:`~concurrent.futures.Executor` that runs each call in-process, at submit time.

    For debugging (``EXECUTOR=serial``: breakpoints and tracebacks work) and for tests.
    """

    def __init__(self):
        self._shutdown = False

    def submit(self, fn, /, *args, **kwargs):
        if self._shutdown:
            raise RuntimeError("cannot submit after shutdown")
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - delivered through the future, like a pool
            if isinstance(exc, KeyboardInterrupt):
                raise
            fut.set_exception(exc)
        return fut

    def shutdown(self, wait=True, *, cancel_futures=False):
        self._shutdown = True


def make_executor(kind: str | None = None, *, jobs: int | None = None,
                  scheduler: str | None = None) -> cf.Executor:
    """The executor the environment asks for.

    Parameters
    ----------
    kind : {"process", "serial", "dask"}, optional
        Default ``$EXECUTOR`` or ``"process"``.
    jobs : int, optional
        Worker processes for ``"process"``; default ``$JOBS`` or ``os.cpu_count()``.
    scheduler : str, optional
        Address of a dask scheduler (``tcp://host:port``) for ``"dask"``; default ``$SCHEDULER``.

    Raises
    ------
    ValueError
        Unknown ``kind``, ``jobs`` < 1, or ``"dask"`` without a scheduler address.
    ImportError
        ``"dask"`` when ``dask.distributed`` is not installed (install the ``distributed`` extra).
    """
    kind = (kind or os.environ.get("EXECUTOR") or "process").strip().lower()
    if kind == "serial":
        return SerialExecutor()
    if kind == "process":
        if jobs is None:
            env = os.environ.get("JOBS", "").strip()
            try:
                jobs = int(env) if env else (os.cpu_count() or 1)
            except ValueError:
                raise ValueError(f"JOBS must be a positive integer, got {env!r}") from None
        if not isinstance(jobs, (int, np.integer)) or jobs < 1:
            raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
        return cf.ProcessPoolExecutor(max_workers=int(jobs))
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
        # Closing the executor should also close the client's connection.
        _close = executor.shutdown

        def shutdown(wait=True, *, cancel_futures=False):
            try:
                _close(wait=wait)
            finally:
                client.close()
        executor.shutdown = shutdown  # type: ignore[method-assign]
        return executor
    raise ValueError(f"EXECUTOR must be one of 'process', 'serial', 'dask', got {kind!r}")


class Run:
    """One unit of a sweep: a unique ``name`` and the JSON-able ``config`` passed to the function."""

    __slots__ = ("name", "config")

    def __init__(self, name: str, config: Mapping[str, Any]):
        self.name = name
        self.config = dict(config)

    def __repr__(self) -> str:
        return f"Run({self.name!r}, {self.config!r})"


def _execute(fn: Callable[[dict], Mapping[str, Any]], config: dict) -> tuple[dict, str, str, float, str]:
    """Worker side: call ``fn(config)`` and time it. Module-level so that it pickles."""
    started = _now()
    t0 = time.perf_counter()
    result = fn(config)
    runtime = time.perf_counter() - t0
    if not isinstance(result, Mapping):
        raise TypeError(f"a run function must return a dict, {fn.__name__} returned "
                        f"{type(result).__name__}")
    return dict(result), started, _now(), runtime, f"{platform.node()}:{os.getpid()}"


def _fmt_seconds(s: float) -> str:
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


class Progress:
    """Progress lines on stderr: ``[e4] run 7/40 done (name) 0.8s | elapsed 12s, ETA 1m03s``.

    The ETA assumes the remaining runs cost, on average, what the finished ones did.
    """

    def __init__(self, experiment: str, total: int, stream=None):
        self.experiment, self.total, self.done = experiment, total, 0
        self.stream = stream if stream is not None else sys.stderr
        self.t0 = time.perf_counter()

    def message(self, text: str) -> None:
        print(f"[{self.experiment}] {text}", file=self.stream, flush=True)

    def step(self, name: str, runtime_s: float) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        self.message(f"run {self.done}/{self.total} done ({name}) {runtime_s:.1f}s | "
                     f"elapsed {_fmt_seconds(elapsed)}, ETA {_fmt_seconds(eta)}")


def run_sweep(experiment: str, runs: Sequence[Run], fn: Callable[[dict], Mapping[str, Any]], *,
              root: str | os.PathLike | None = None, executor: cf.Executor | None = None,
              progress_stream=None) -> list[dict[str, Any]]:
    """Compute every run of a sweep that is not up to date, writing each as it finishes.

    Parameters
    ----------
    experiment : str
        Experiment id; files go to ``<root>/<experiment>/runs/<run.name>.json``.
    runs : sequence of Run
        Unique names. ``run.config`` is what ``fn`` receives and what is hashed.
    fn : callable ``config -> dict``
        Must be importable by workers (a module-level function). Values that are NumPy arrays go to
        the run's ``.npz``; the rest must be JSON-able.
    root : path, optional
        Results root (default :func:`results_root`).
    executor : Executor, optional
        Default :func:`make_executor` from the environment (and shut down afterwards). Runs that are
        all up to date start no executor at all.

    Returns
    -------
    records : list of dict
        The stored record of each run, in the order of ``runs`` (see :meth:`ResultStore.load_run`).

    Notes
    -----
    On an exception or ``KeyboardInterrupt`` the pending runs are cancelled; runs already finished
    are on disk, so rerunning resumes with only the unfinished runs.
    """
    store = ResultStore(experiment, root)
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"run names must be unique within a sweep; repeated: {dup}")
    for r in runs:
        if not isinstance(r, Run):
            raise TypeError(f"runs must contain Run objects, got {type(r).__name__}")
        store.run_path(r.name)  # validates the name
    store.clean_temps()
    todo = [r for r in runs if not store.is_current(r.name, r.config)]
    progress = Progress(experiment, len(todo), progress_stream)
    if len(todo) < len(runs):
        progress.message(f"{len(runs) - len(todo)}/{len(runs)} runs up to date, reused")
    if todo:
        own = executor is None
        ex = make_executor() if own else executor
        progress.message(f"computing {len(todo)} runs with {type(ex).__name__}")
        futures: dict[cf.Future, Run] = {}
        error: list[BaseException] = []

        def handle(fut: cf.Future) -> None:
            if fut.cancelled():
                return
            r = futures[fut]
            exc = fut.exception()
            if exc is not None:
                # Stop starting new runs, but keep every run that finishes: a rerun then
                # resumes after the failure instead of repeating finished work.
                if not error:
                    error.append(exc)
                    progress.message(f"run {r.name} failed: {exc!r}; cancelling pending runs")
                    for other in futures:
                        other.cancel()
                return
            result, started, finished, runtime, worker = fut.result()
            store.save_run(r.name, r.config, result, started=started, finished=finished,
                           runtime_s=runtime, worker=worker)
            progress.step(r.name, runtime)

        try:
            if isinstance(ex, SerialExecutor):
                # In-process: each run is finished at submit time; save it at once (resumable).
                for r in todo:
                    if error:
                        break
                    fut = ex.submit(_execute, fn, r.config)
                    futures[fut] = r
                    handle(fut)
            else:
                for r in todo:
                    futures[ex.submit(_execute, fn, r.config)] = r
                for fut in cf.as_completed(futures):
                    handle(fut)
        except BaseException:  # KeyboardInterrupt/SystemExit: stop now, finished runs are on disk
            for fut in futures:
                fut.cancel()
            if own:
                ex.shutdown(wait=False, cancel_futures=True)
                own = False
            raise
        finally:
            if own:
                ex.shutdown(wait=True)
        if error:
            raise error[0]
    return [store.load_run(r.name) for r in runs]


# --------------------------------------------------------------------------------------------------
# statistics over seeds
# --------------------------------------------------------------------------------------------------

def summarize(values: Iterable[float], *, confidence: float = 0.95, method: str = "t",
              rng: np.random.Generator | None = None, n_boot: int = 10_000,
              bounds: tuple[float, float] | None = None) -> dict[str, float | int]:
    """Mean, spread and a confidence interval of the mean over independent runs (seeds).

    Parameters
    ----------
    values : 1-D array-like of float, length n >= 1, finite
    confidence : float in (0, 1)
    method : {"t", "bootstrap"}
        ``"t"``: mean ± t_{n-1, (1+c)/2} · sem (assumes roughly normal means).
        ``"bootstrap"``: percentile interval of ``n_boot`` resampled means (needs ``rng``).
    rng : numpy.random.Generator
        Required for ``"bootstrap"``.
    bounds : (low, high), optional
        The range the quantity cannot leave (e.g. (0, 1) for a rate): the interval is clipped to
        it, since a t-interval over few seeds can otherwise extend past it.

    Returns
    -------
    dict with ``n``, ``mean``, ``std`` (ddof = 1), ``sem`` = std/√n, ``ci_low``, ``ci_high``,
    ``median``, ``min``, ``max``. With n = 1 the spread and interval are NaN (undefined).
    """
    x = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("values must be finite (no NaN or inf)")
    if not (isinstance(confidence, (float, int)) and 0 < confidence < 1):
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if method not in ("t", "bootstrap"):
        raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}")
    n = x.size
    mean = float(x.mean())
    out = {"n": int(n), "mean": mean, "median": float(np.median(x)), "min": float(x.min()),
           "max": float(x.max()), "std": math.nan, "sem": math.nan, "ci_low": math.nan,
           "ci_high": math.nan}
    if n < 2:
        return out
    std = float(x.std(ddof=1))
    sem = std / math.sqrt(n)
    out.update(std=std, sem=sem)
    if method == "t":
        from scipy import stats
        half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * sem
        out.update(ci_low=mean - half, ci_high=mean + half)
    else:
        if not isinstance(rng, np.random.Generator):
            raise TypeError("method='bootstrap' needs rng, a numpy.random.Generator")
        if not isinstance(n_boot, (int, np.integer)) or n_boot < 100:
            raise ValueError(f"n_boot must be an integer >= 100, got {n_boot!r}")
        means = x[rng.integers(0, n, size=(int(n_boot), n))].mean(axis=1)
        lo, hi = np.quantile(means, [0.5 - confidence / 2, 0.5 + confidence / 2])
        out.update(ci_low=float(lo), ci_high=float(hi))
    if bounds is not None:
        out.update(ci_low=max(out["ci_low"], bounds[0]), ci_high=min(out["ci_high"], bounds[1]))
    return out


def wilson_interval(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a success rate ``successes / n``.

    ``(p̂ + z²/2n ± z √(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)`` with ``z`` the normal quantile. Unlike
    p̂ ± z·se it stays inside [0, 1] and is not degenerate at 0/n or n/n (e.g. 20/20 successes).

    Raises
    ------
    ValueError
        ``n`` < 1, ``successes`` outside ``[0, n]``, or ``confidence`` outside (0, 1).
    """
    for name, v in (("successes", successes), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n] = [0, {n}], got {successes}")
    if not (isinstance(confidence, (float, int)) and 0 < confidence < 1):
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    from scipy import stats
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Clip rounding error so that 0/n gives exactly 0 and n/n exactly 1.
    return (max(0.0, centre - half) if successes else 0.0, min(1.0, centre + half) if successes < n else 1.0)


# --------------------------------------------------------------------------------------------------
# summaries (what plots and the report read)
# --------------------------------------------------------------------------------------------------

def write_summary(experiment: str, summary: Mapping[str, Any], *, config: Mapping[str, Any],
                  runs: Sequence[Mapping[str, Any]] = (), started: float,
                  root: str | os.PathLike | None = None) -> Path:
    """Write ``<root>/<experiment>/summary.json``: the experiment's aggregate and its provenance.

    Parameters
    ----------
    summary : mapping
        Experiment-specific content. Keys the report understands: ``title``, ``description``
        (markdown), ``claims`` (rows with ``claim``, ``paper``, ``ours``, ``ci``, ``holds``,
        ``source``), ``tables``, ``figures``, ``notes``, ``command``.
    config : mapping
        The experiment-level config (profile, sizes, code_version); hashed.
    runs : sequence of run records
        Their files, total compute time and seeds are recorded.
    started : float
        ``time.time()`` at the start of the compute step (for the wall time).
    """
    store = ResultStore(experiment, root)
    run_time = float(sum(r.get("runtime_s", 0.0) for r in runs))
    # When the runs were computed: a compute step that reuses runs from an earlier one takes seconds,
    # so its own wall time says nothing about what the results cost; the span of the runs does.
    begun = [_dt.datetime.fromisoformat(r["started"]) for r in runs if r.get("started")]
    ended = [_dt.datetime.fromisoformat(r["finished"]) for r in runs if r.get("finished")]
    step_start = _dt.datetime.fromtimestamp(int(started), _dt.timezone.utc)
    record = dict(summary)
    record.update({
        "experiment": experiment, "config": dict(config), "config_hash": config_hash(config),
        "profile": config.get("profile"), "metadata": run_metadata(),
        "started": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(timespec="seconds"),
        "finished": _now(), "wall_time_s": time.time() - started,
        "compute_time_s": run_time,
        "runs_span_s": (max(ended) - min(begun)).total_seconds() if begun and ended else None,
        "runs_reused": sum(b < step_start for b in begun),
        "runs": [os.fspath(store.run_path(r["name"]).relative_to(store.dir)) for r in runs],
        "seeds": [r.get("seed") for r in runs],
    })
    if not record.get("command"):
        record["command"] = _INVOCATION.get("command") or (
            f"python -m analysis.experiments.<module> compute --profile {config.get('profile')}")
    return atomic_write_json(store.dir / "summary.json", record)


def load_summary(experiment: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read ``<root>/<experiment>/summary.json`` (FileNotFoundError if the experiment has not run)."""
    path = ResultStore(experiment, root).dir / "summary.json"
    with open(path) as f:
        return json.load(f)


def summary_is_current(experiment: str, config: Mapping[str, Any],
                       root: str | os.PathLike | None = None) -> bool:
    """True if the summary exists and was written for exactly ``config``."""
    try:
        return load_summary(experiment, root).get("config_hash") == config_hash(config)
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------------------------------
# command line shared by the experiment modules
# --------------------------------------------------------------------------------------------------

_INVOCATION: dict[str, str] = {}


def experiment_cli(module_name: str, argv: Sequence[str] | None = None) -> int:
    """``python -m analysis.experiments.<module> {compute,plot,all} [--profile P] [--results DIR]``.

    The module is imported by its package name (not as ``__main__``) so that its run functions
    pickle by reference for the process pool.
    """
    import argparse

    mod = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"python -m {module_name}", description=(mod.__doc__ or "").split("\n")[0])
    parser.add_argument("step", choices=("compute", "plot", "all"))
    parser.add_argument("--profile", choices=PROFILES, default=None,
                        help="default: 'full' if FULL=1 in the environment, else 'default'")
    parser.add_argument("--results", default=None, help="results root (default ./results)")
    args = parser.parse_args(argv)
    if args.results is not None:
        os.environ["MINIATTN_RESULTS"] = args.results
    try:
        if args.step in ("compute", "all"):
            profile = get_profile(args.profile)
            _INVOCATION["command"] = f"python -m {module_name} compute --profile {profile}"
            mod.compute(profile)
        if args.step in ("plot", "all"):
            mod.plot()
    except KeyboardInterrupt:
        # Finished runs are already on disk (each written atomically as it finished).
        print(f"[{getattr(mod, 'EXP', module_name)}] interrupted: finished runs are kept; rerun the same "
              "command to compute only the rest", file=sys.stderr, flush=True)
        return 130
    return 0
