"""The experiment driver: an experiment is four small functions, the driver does the rest.

An experiment module (registered in :data:`analysis.experiments.registry.EXPERIMENTS`) defines::

    runs(profile)      -> list[RunSpec]     what to run (sizes, seeds) under a profile
    run(config)        -> dict              one run (module level, so process workers can pickle it)
    claims(results)    -> list[Claim]       verdicts, each with a criterion written in the code
    figures(results)   -> list[Path]        the figures, from the stored results only

A *staged* experiment defines ``runs(profile, results)`` instead: its later runs depend on the
results of earlier ones (see :func:`_staged_sweep`). Optionally, ``tables(results) -> list[dict]`` (``{"title", "columns", "rows"}``),
``notes(results) -> list[str]`` and a ``DESCRIPTION`` string. :func:`compute` runs the sweep
through the result store (reusing every run whose config and code are unchanged), evaluates the
claims and writes ``<results>/<id>/summary.json``; :func:`plot` draws the figures from it. Neither
the report nor the figures ever recompute anything.

Profiles: ``quick`` (a smoke run, every claim marked as such), ``default`` and ``full`` (paper
scale), chosen by ``--profile`` or ``QUICK=1`` / ``FULL=1``.

Command line: ``python -m analysis.experiments {compute,plot,all} ID [--profile P] [--results DIR]``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib
import inspect
import os
import platform
import time
from pathlib import Path
from types import ModuleType

try:   # POSIX: computes of one experiment are serialised with flock
    import fcntl
except ImportError:   # pragma: no cover - Windows
    fcntl = None
from typing import Any, Callable, Iterator, Sequence

from miniattn import io
from analysis.claims import Claim
from analysis.fingerprint import fingerprint
from analysis.store import ResultStore, StoredRun, results_root
from analysis.sweep import run_sweep

__all__ = ["PROFILES", "get_profile", "Results", "compute", "plot", "load_results", "experiment_info"]

PROFILES = ("quick", "default", "full")


def get_profile(profile: str | None = None) -> str:
    """The argument if given, else ``full`` when ``FULL=1``, ``quick`` when ``QUICK=1``, else ``default``."""
    if profile is None:
        yes = ("1", "true", "yes")
        if os.environ.get("FULL", "").strip().lower() in yes:
            profile = "full"
        elif os.environ.get("QUICK", "").strip().lower() in yes:
            profile = "quick"
        else:
            profile = "default"
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    return profile


class Results:
    """The stored runs of one experiment, with the selections its claims and figures need.

    Attributes
    ----------
    experiment : str
    profile : str
    root : Path
        The results root (figures go to ``<root>/figures``).
    records : list of StoredRun
    """

    def __init__(self, experiment: str, profile: str, records: Sequence[StoredRun], root: Path):
        self.experiment, self.profile, self.root = experiment, profile, Path(root)
        self.records = list(records)

    def __iter__(self) -> Iterator[StoredRun]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def where(self, **conditions) -> "Results":
        """The runs whose config has every ``key == value`` (a callable value is a predicate)."""
        def ok(r):
            return all(v(r.config.get(k)) if callable(v) else r.config.get(k) == v for k, v in conditions.items())
        return Results(self.experiment, self.profile, [r for r in self.records if ok(r)], self.root)

    def values(self, key: str) -> list:
        """``data[key]`` of every run, in order."""
        return [r.data[key] for r in self.records]

    def distinct(self, key: str) -> list:
        """The distinct values of ``config[key]``, in order of first appearance."""
        seen: list = []
        for r in self.records:
            v = r.config.get(key)
            if v not in seen:
                seen.append(v)
        return seen

    @property
    def source(self) -> str:
        """The summary file every claim of this experiment is read from (relative to the root)."""
        return f"{self.experiment}/summary.json"

    @property
    def smoke(self) -> bool:
        return self.profile == "quick"


def experiment_info(experiment: str):
    """The registry entry of an experiment id (``e4``) or module name."""
    from analysis.experiments.registry import EXPERIMENTS
    for info in EXPERIMENTS:
        if experiment in (info.id, info.module):
            return info
    raise ValueError(f"unknown experiment {experiment!r}; known: {[e.id for e in EXPERIMENTS]}")


def _module(info) -> ModuleType:
    mod = importlib.import_module(info.module)
    for name in ("runs", "run", "claims", "figures"):
        if not callable(getattr(mod, name, None)):
            raise TypeError(f"experiment module {info.module} must define {name}()")
    return mod


def _optional(mod: ModuleType, name: str, results: Results) -> list:
    fn: Callable | None = getattr(mod, name, None)
    return list(fn(results)) if callable(fn) else []


def _timing(records: Sequence[StoredRun], step_started: float) -> dict[str, Any]:
    begun = [_dt.datetime.fromisoformat(r["started"]) for r in records if r.get("started")]
    ended = [_dt.datetime.fromisoformat(r["finished"]) for r in records if r.get("finished")]
    step_start = _dt.datetime.fromtimestamp(step_started, _dt.timezone.utc)
    return {"compute_time_s": float(sum(r.get("runtime_s", 0.0) for r in records)),
            "runs_span_s": (max(ended) - min(begun)).total_seconds() if begun and ended else None,
            "runs_reused": sum(b < step_start for b in begun),
            "wall_time_s": time.time() - step_started}


#: A staged experiment may not need more rounds than this to list all of its runs.
MAX_STAGES = 5


def _staged_sweep(info, mod: ModuleType, profile: str, code: str, root, executor) -> list[StoredRun]:
    """Run the sweep; for a staged experiment, until its list of runs stops growing.

    ``runs(profile)`` lists every run up front. A *staged* experiment defines
    ``runs(profile, results)``: it is called first with ``results=None`` and then with the results
    so far, and may add runs whose configs depend on them (E6 assembles multi-head models from the
    heads that its first stage classified). Each round reuses every run already stored.
    """
    staged = len(inspect.signature(mod.runs).parameters) >= 2
    specs = mod.runs(profile, None) if staged else mod.runs(profile)
    for _ in range(MAX_STAGES):
        records = run_sweep(info.id, specs, mod.run, code=code, root=root, executor=executor)
        if not staged:
            return records
        more = mod.runs(profile, Results(info.id, profile, records, results_root(root)))
        if [s.name for s in more] == [s.name for s in specs]:
            return records
        specs = more
    raise RuntimeError(f"{info.module}.runs() still lists new runs after {MAX_STAGES} stages")


@contextlib.contextmanager
def _exclusive(experiment_id: str, root):
    """Hold an exclusive lock on one experiment's results while it is computed.

    Two computes of one experiment into one results root would otherwise race: each removes the
    temporaries it finds at start-up (left by an interrupted writer) and may remove the other's
    file in flight. With the lock the second waits, then reuses every run the first wrote. The lock
    is ``fcntl.flock`` on ``<results>/<id>/.compute.lock`` (released by the kernel if the process
    dies); without ``fcntl`` (Windows) computes are not serialised.
    """
    if fcntl is None:
        yield
        return
    directory = Path(results_root(root)) / experiment_id
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".compute.lock", "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def compute(experiment: str, profile: str | None = None, *, root=None, executor=None) -> dict:
    """Run (or reuse) an experiment's sweep, evaluate its claims, write its ``summary.json``.

    Concurrent computes of one experiment into one results root are serialised (:func:`_exclusive`).
    """
    info = experiment_info(experiment)
    with _exclusive(info.id, root):
        return _compute(info, profile, root, executor)


def _compute(info, profile, root, executor) -> dict:
    started = time.time()
    mod = _module(info)
    profile = get_profile(profile)
    code = fingerprint(info.module)
    records = _staged_sweep(info, mod, profile, code, root, executor)
    results = Results(info.id, profile, records, results_root(root))
    claims: list[Claim] = list(mod.claims(results))
    for c in claims:
        if not isinstance(c, Claim):
            raise TypeError(f"{info.module}.claims() must return Claim objects, got {type(c).__name__}")
        c.source = c.source or results.source
    store = ResultStore(info.id, root)
    summary = {
        "experiment": info.id, "title": info.title, "module": info.module, "profile": profile,
        "description": getattr(mod, "DESCRIPTION", (mod.__doc__ or "").strip().split("\n\n")[0]),
        "claims": [c.to_dict() for c in claims],
        "tables": _optional(mod, "tables", results), "notes": _optional(mod, "notes", results),
        "runs": [r.name for r in records], "seeds": [r.config.get("seed") for r in records],
        "code": code, "command": f"python -m analysis.experiments compute {info.id} --profile {profile}",
        "metadata": {"versions": io.package_versions(), "git": io.git_info(), "platform": platform.platform(),
                     "cpu_count": os.cpu_count()},
        "started": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(timespec="seconds"),
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **_timing(records, started),
    }
    store.write_summary(summary)
    return summary


def load_results(experiment: str, root=None) -> tuple[dict, Results]:
    """``(summary, results)`` of a computed experiment, read back from its files."""
    info = experiment_info(experiment)
    store = ResultStore(info.id, root)
    summary = store.load_summary()
    records = [store.load_run(name) for name in summary.get("runs", [])]
    return summary, Results(info.id, summary.get("profile", "default"), records, results_root(root))


def plot(experiment: str, *, root=None) -> list[Path]:
    """Draw an experiment's figures from its stored results; returns their paths."""
    info = experiment_info(experiment)
    mod = _module(info)
    _, results = load_results(info.id, root)
    return [Path(p) for p in mod.figures(results)]
