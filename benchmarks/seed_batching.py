"""Many seeds at once: K free-copy models as one seed-batched computation vs K runs on 2 processes.

The E5/E7 sweeps train hundreds of :class:`~miniattn.models.free_copy.FreeAttentionCopyModel` runs
(L = V ≈ 20-40, SGD, a few hundred steps each), one process per core. This benchmark asks whether
stepping K seeds as one :class:`~miniattn.models.free_copy_seeds.FreeAttentionCopySeeds` computation
beats the sweep's way. Every cell trains K seeds of the plain model at L = V, B = 128, SGD (lr 5,
the E5 rate), each seed drawing its own batches from its own stream, and is timed as wall-clock per
seed-step (total seconds / (K · steps)), sampling included:

* ``batched-1t`` — one process, BLAS 1 thread: :func:`~miniattn.models.free_copy_seeds.train_seeds`
  on all K seeds;
* ``batched-2t`` — the same with 2 BLAS threads;
* ``pool-2p`` — the sweep's way: ``concurrent.futures.ProcessPoolExecutor(max_workers=2)``, 1 BLAS
  thread per worker, one job per seed running the unbatched model through the same per-step loop
  (sample, ``loss_and_grads``, finiteness checks, ``SGD.step``, finiteness check);
* ``batched-2p`` — both: the same pool, two jobs each training K/2 seeds batched (K = 1: one job).

The pool is started and warmed up (workers forked, modules imported) before anything is timed, as in
a sweep of hundreds of runs where start-up is paid once. Cells are interleaved rep by rep (rotating
order) and summarised by the median over reps. Speed-up = pool-2p time / candidate time (> 1: the
candidate is faster than the sweep's way).

Before timing, :func:`check_equivalence` confirms at the benchmark's shape, with 1 and 2 BLAS
threads, that every seed's loss and gradients from the batched model equal the unbatched model's
bit for bit, and that ``train_seeds`` for a few steps ends at the unbatched loop's parameters.

Run (the machine is shared: keep it short, and nice)::

    nice -n 10 .venv/bin/python -m benchmarks.seed_batching                  # 369 s at load 7-9; --reps 1 for ~1/3
    .venv/bin/python -m benchmarks.seed_batching --quick                      # tiny, seconds
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import ctypes
import os
import sys
import time
from typing import NamedTuple, Sequence

import numpy as np

from benchmarks import blas_threads, git_revision, summarize
from miniattn.models.free_copy import FreeAttentionCopyModel
from miniattn.models.free_copy_seeds import FreeAttentionCopySeeds, stack_batches, train_seeds
from miniattn.optim import SGD
from miniattn.tasks import CopyTask
from miniattn.train import seed_streams

__all__ = ["METHODS", "FULL", "QUICK", "set_blas_threads", "check_equivalence", "Cell", "run", "format_table",
           "main"]

#: The candidates, in table order.
METHODS = ("batched-1t", "batched-2t", "pool-2p", "batched-2p")

#: The issue's grid, and a smoke grid. ``seed_steps``: each cell runs max(min_steps, seed_steps // K) steps.
FULL = dict(lengths=(20, 40), ks=(1, 4, 16, 64), batch_size=128, lr=5.0, seed_steps=160, min_steps=10, reps=3)
QUICK = dict(lengths=(4,), ks=(1, 2), batch_size=8, lr=5.0, seed_steps=4, min_steps=2, reps=1)


def set_blas_threads(n: int) -> int | None:
    """Set NumPy's bundled OpenBLAS to ``n`` threads (ctypes; PyTorch is not imported); return the count read back."""
    import benchmarks
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (threads) must be an integer >= 1, got {n!r}")
    if benchmarks._LIB is not None:
        prefix, suffix = benchmarks._NAMES
        getattr(benchmarks._LIB, f"{prefix}set_num_threads{suffix}")(ctypes.c_int(int(n)))
    return blas_threads()


def _models(L: int, seeds: Sequence[int]) -> list[FreeAttentionCopyModel]:
    """Seed s initialised from its own generator (child 0 of SeedSequence(s), as the simulations do)."""
    return [FreeAttentionCopyModel(L, L, rng=np.random.default_rng(np.random.SeedSequence(s, spawn_key=(0,))))
            for s in seeds]


def _task(L: int) -> CopyTask:
    return CopyTask(L, L, "permutation", specials=False)


def _train_unbatched(model: FreeAttentionCopyModel, task, lr: float, steps: int, batch_size: int, seed: int) -> None:
    """The unbatched per-step loop of :func:`miniattn.train.train` (no evaluation): sample, pass, checks, SGD."""
    rng = np.random.default_rng(seed_streams(seed)[0])
    opt = SGD(model.params, lr=lr)
    for _ in range(steps):
        loss, grads = model.loss_and_grads(task.sample(rng, batch_size))
        if not np.isfinite(loss) or not all(np.all(np.isfinite(g)) for g in grads.values()):
            raise FloatingPointError("non-finite loss or gradient")
        with np.errstate(over="ignore", invalid="ignore"):
            opt.step(grads)
        if not all(np.all(np.isfinite(p)) for p in model.params.values()):
            raise FloatingPointError("non-finite parameters")


def _train_batched(L: int, seeds: Sequence[int], lr: float, steps: int, batch_size: int) -> float:
    model = FreeAttentionCopySeeds.from_models(_models(L, seeds))
    t0 = time.perf_counter()
    train_seeds(model, _task(L), SGD(model.params, lr=lr), steps=steps, batch_size=batch_size, seeds=list(seeds))
    return time.perf_counter() - t0


# --- pool jobs (module-level, so that they pickle) --------------------------------------------------

def _worker_init() -> None:
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    set_blas_threads(1)


def _job_ready() -> int | None:
    return blas_threads()


def _job_unbatched(L: int, seed: int, lr: float, steps: int, batch_size: int) -> float:
    model = _models(L, [seed])[0]
    t0 = time.perf_counter()
    _train_unbatched(model, _task(L), lr, steps, batch_size, seed)
    return time.perf_counter() - t0


def _job_batched(L: int, seeds: tuple, lr: float, steps: int, batch_size: int) -> float:
    return _train_batched(L, seeds, lr, steps, batch_size)


# --- equivalence --------------------------------------------------------------------------------------

def check_equivalence(L: int, batch_size: int, *, K: int = 3, steps: int = 3, lr: float = 5.0) -> dict:
    """Bit-equality of the batched model with K unbatched ones at this shape, with the current BLAS threads.

    Returns
    -------
    dict
        ``grads_identical`` (every seed's loss and gradients equal, bit for bit) and
        ``train_identical`` (parameters after ``steps`` SGD steps equal, bit for bit).
    """
    task, seeds = _task(L), list(range(K))
    rng = np.random.default_rng(0)
    models = _models(L, seeds)
    batches = [task.sample(rng, batch_size) for _ in range(K)]
    losses, grads = FreeAttentionCopySeeds.from_models(models).loss_and_grads(stack_batches(batches))
    same = True
    for k, (m, b) in enumerate(zip(models, batches)):
        loss, ref = m.loss_and_grads(b)
        same &= bool(loss == losses[k]) and all(np.array_equal(grads[n][k], g) for n, g in ref.items())
    batched = FreeAttentionCopySeeds.from_models(models)
    train_seeds(batched, task, SGD(batched.params, lr=lr), steps=steps, batch_size=batch_size, seeds=seeds)
    trained = True
    for k, (m, s) in enumerate(zip(models, seeds)):
        _train_unbatched(m, task, lr, steps, batch_size, s)
        trained &= all(np.array_equal(batched.params[n][k], p) for n, p in m.params.items())
    return {"grads_identical": same, "train_identical": trained}


# --- timing -------------------------------------------------------------------------------------------

class Cell(NamedTuple):
    L: int
    K: int
    steps: int
    per_seed_step_ms: dict     #: method -> Summary of ms per seed-step


def _time_pool(pool: cf.Executor, jobs) -> float:
    t0 = time.perf_counter()
    futures = [pool.submit(fn, *args) for fn, args in jobs]
    for f in futures:
        f.result()
    return time.perf_counter() - t0


def run(*, lengths, ks, batch_size: int, lr: float, seed_steps: int, min_steps: int, reps: int,
        progress=None) -> tuple[list[Cell], dict]:
    """Time every (L, K) cell with every method of :data:`METHODS`.

    Parameters
    ----------
    lengths, ks : sequences of int
        L = V values and seed counts K.
    batch_size, lr : B per seed and the SGD rate.
    seed_steps, min_steps : int
        A cell runs ``max(min_steps, seed_steps // K)`` steps.
    reps : int
        Interleaved repetitions per cell.
    progress : callable, optional
        ``progress(cell)`` after every cell.

    Returns
    -------
    cells : list of Cell
    checks : dict (L, threads) -> :func:`check_equivalence` result
    """
    checks = {}
    for L in lengths:
        for threads in (1, 2):
            if set_blas_threads(threads) not in (threads, None):
                raise RuntimeError(f"NumPy's BLAS did not take {threads} threads (reads back {blas_threads()})")
            checks[(L, threads)] = check_equivalence(L, batch_size, lr=lr)
    set_blas_threads(1)
    cells = []
    with cf.ProcessPoolExecutor(max_workers=2, initializer=_worker_init) as pool:
        # Warm-up: fork both workers and import everything before timing.
        worker_threads = {f.result() for f in [pool.submit(_job_ready) for _ in range(4)]}
        if worker_threads - {1, None}:
            raise RuntimeError(f"pool workers use {sorted(worker_threads)} BLAS threads, expected 1")
        for L in lengths:
            _time_pool(pool, [(_job_unbatched, (L, 0, lr, 2, batch_size))] * 2)
            _train_batched(L, [0, 1], lr, 2, batch_size)
            for K in ks:
                steps = max(min_steps, seed_steps // K)
                seeds = tuple(range(K))
                halves = [seeds[: (K + 1) // 2], seeds[(K + 1) // 2:]]

                def batched(threads):
                    set_blas_threads(threads)
                    try:
                        return _train_batched(L, seeds, lr, steps, batch_size)
                    finally:
                        set_blas_threads(1)

                fns = {
                    "batched-1t": lambda: batched(1),
                    "batched-2t": lambda: batched(2),
                    "pool-2p": lambda: _time_pool(pool, [(_job_unbatched, (L, s, lr, steps, batch_size))
                                                         for s in seeds]),
                    "batched-2p": lambda: _time_pool(pool, [(_job_batched, (L, h, lr, steps, batch_size))
                                                            for h in halves if h]),
                }
                times = {m: [] for m in METHODS}
                for r in range(reps):
                    order = METHODS[r % len(METHODS):] + METHODS[:r % len(METHODS)]
                    for m in order:
                        times[m].append(fns[m]() / (K * steps) * 1e3)
                cells.append(Cell(L, K, steps, {m: summarize(times[m]) for m in METHODS}))
                if progress is not None:
                    progress(cells[-1])
    return cells, checks


def format_table(cells: Sequence[Cell], checks: dict, header: str) -> str:
    """Markdown table of ``cells`` (medians [q25, q75], speed-ups vs ``pool-2p``) and the ``checks`` line.

    Parameters
    ----------
    cells : sequence of Cell
    checks : dict (L, threads) -> dict of :func:`check_equivalence`
    header : str
        The provenance line printed above the table.
    """
    lines = [header, "",
             "| L = V | K | steps | " + " | ".join(f"{m} ms/seed-step" for m in METHODS)
             + " | speed-up batched-1t | batched-2t | batched-2p |",
             "|---|---|---|" + "---|" * (len(METHODS) + 3)]
    for c in cells:
        med = {m: c.per_seed_step_ms[m].median for m in METHODS}
        times = " | ".join(f"{med[m]:.2f} [{c.per_seed_step_ms[m].q25:.2f}, {c.per_seed_step_ms[m].q75:.2f}]"
                           for m in METHODS)
        ups = " | ".join(f"**{med['pool-2p'] / med[m]:.2f}**" for m in ("batched-1t", "batched-2t", "batched-2p"))
        lines.append(f"| {c.L} | {c.K} | {c.steps} | {times} | {ups} |")
    lines.append("")
    lines.append("Equivalence before timing (bit-identical per seed: loss and grads / params after 3 SGD steps): "
                 + "; ".join(f"L={L}, {t} thread{'s' if t > 1 else ''}: {v['grads_identical']} / {v['train_identical']}"
                             for (L, t), v in checks.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one rep (a smoke run)")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--markdown", action="store_true", help="print the markdown table only")
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.reps is not None:
        cfg["reps"] = args.reps
    load = os.getloadavg()
    started = time.time()
    header = (f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} cores, load average "
              f"{load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} at start; NumPy {np.__version__}; "
              f"B = {cfg['batch_size']}, SGD lr {cfg['lr']}, plain model, {cfg['reps']} interleaved reps; "
              f"git {git_revision()}")
    progress = None if args.markdown else (lambda c: print(f"  L={c.L} K={c.K}: " + ", ".join(
        f"{m} {s.median:.2f}" for m, s in c.per_seed_step_ms.items()) + " ms/seed-step", file=sys.stderr))
    cells, checks = run(**cfg, progress=progress)
    end_load = os.getloadavg()
    print(format_table(cells, checks, header))
    print(f"\nwall time {time.time() - started:.0f} s; load average at end {end_load[0]:.1f}, {end_load[1]:.1f}, "
          f"{end_load[2]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
