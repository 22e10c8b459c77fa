"""E3 at the paper's size: the β^px fit alone, then (optionally) E3's translation path end to end.

On a synthetic Multi30k-shaped corpus (:mod:`benchmarks.synthetic_corpus`, written on first use),
read with the same shared text options E3 uses (``--options``, e.g. ``"--min-count 2"``):

* ``fit`` — the paper's embedding bag of words (:func:`analysis.cooccurrence.fit_beta_px`,
  ``method="embedding"``, E3's settings :data:`analysis.experiments.e3_agreement.TEXT_BETA_PX`)
  on the whole training part of E3's held-out split: seconds per epoch (wall and CPU), epochs to the
  best validation loss, the β^px evaluation on the held-out part, and a projection of E3's cost.
  Peak memory: run it under ``/usr/bin/time -v`` (maximum resident set size).
* ``e3`` — E3 itself (``python -m analysis.experiments compute e3``) with ``E3_PARALLEL_SOURCE`` /
  ``_TARGET`` / ``E3_OPTIONS`` set, into a results directory of its own; prints the agreement
  table of the text task and the wall time.

Usage::

    python -m benchmarks.e3_scale fit --corpus /tmp/corpus --options "--min-count 2"
    python -m benchmarks.e3_scale e3  --corpus /tmp/corpus --options "--min-count 2" --results /tmp/e3res

Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["ensure_corpus", "measure_fit", "run_e3", "main"]


def ensure_corpus(directory: Path, pairs: int = 29000, seed: int = 0) -> tuple[Path, Path]:
    """``(parallel.src, parallel.tgt)`` in ``directory``, generated if absent."""
    from benchmarks.synthetic_corpus import parallel_corpus, write_parallel

    directory = Path(directory)
    src, tgt = directory / "parallel.src", directory / "parallel.tgt"
    if not (src.is_file() and tgt.is_file()):
        write_parallel(parallel_corpus(pairs, seed=seed), directory)
    return src, tgt


def measure_fit(src: Path, tgt: Path, options: str, seed_index: int = 0, **overrides) -> dict:
    """Fit β^px exactly as one E3 text-translation run does, and time it."""
    from analysis.cooccurrence import batch_arrays, beta_px_from_fit, fit_beta_px
    from analysis.experiments import e3_agreement as E3
    from analysis.sweep import seed_children, spawn_seed_records

    env = {"E3_PARALLEL_SOURCE": str(src), "E3_PARALLEL_TARGET": str(tgt), "E3_OPTIONS": options}
    tc = E3.text_tasks(env)["text-translation"]
    seed = spawn_seed_records(E3.ROOT_SEED, seed_index + 1)[seed_index]
    task_seq, *_, bow_seq, _ = seed_children(seed, 7)
    t0 = time.perf_counter()
    task = E3._task("text-translation", tc, E3.HELD_OUT_FRACTION, task_seq)
    fit_batch, eval_batch = task.dataset.batch(task.train_indices), task.held_out_batch()
    load = time.perf_counter() - t0
    bp = dict(tc["beta_px"], **overrides)
    method = bp.pop("method")
    t1, c1 = time.perf_counter(), time.process_time()
    fit = fit_beta_px(fit_batch, task.input_vocab_size, task.output_vocab_size, method,
                      embedding=dict(bp, seed=bow_seq))
    fit_wall, fit_cpu = time.perf_counter() - t1, time.process_time() - c1
    t2 = time.perf_counter()
    beta = beta_px_from_fit(fit, eval_batch)
    eval_wall = time.perf_counter() - t2
    s, sm, _, _ = batch_arrays(eval_batch)
    model = fit.model
    return {"pairs": len(task.dataset), "train_pairs": len(task), "held_out_pairs": len(task.held_out_indices),
            "n_in": task.input_vocab_size, "n_out": task.output_vocab_size, "options": tc["options"],
            "beta_px": dict(tc["beta_px"], **overrides), "load_s": round(load, 2),
            "fit_wall_s": round(fit_wall, 1), "fit_cpu_s": round(fit_cpu, 1),
            "epochs": model.epochs, "best_epoch": model.best_epoch,
            "seconds_per_epoch": round(model.seconds_per_epoch, 2),
            "cpu_seconds_per_epoch": round(fit_cpu / model.epochs, 2),
            "val_loss": [round(float(v), 4) for v in model.val_loss],
            "beta_px_eval_s": round(eval_wall, 2), "beta_px_shape": list(beta.shape),
            "unseen_held_out_tokens": float(np.mean(~fit.seen[s[sm]]))}


def run_e3(src: Path, tgt: Path, options: str, results: Path, profile: str = "default", jobs: int = 2) -> dict:
    """``python -m analysis.experiments compute e3`` on the corpus; the text task's agreement rows."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, E3_PARALLEL_SOURCE=str(src), E3_PARALLEL_TARGET=str(tgt), E3_OPTIONS=options,
               JOBS=str(jobs), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(root))
    env.pop("E3_TEXT", None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "analysis.experiments", "compute", "e3", "--profile", profile,
                           "--results", str(results)], env=env, cwd=root, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"E3 failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    summary = json.loads((Path(results) / "e3" / "summary.json").read_text())
    table = next(t for t in summary["tables"] if t["title"].startswith("Agreement"))
    rows = [dict(zip(table["columns"], r)) for r in table["rows"]]
    claims = [{"claim": c["claim"] if "claim" in c else c.get("name"), "verdict": c["verdict"],
               "value": c.get("value")} for c in summary["claims"]]
    return {"wall_s": round(wall, 1), "profile": profile, "jobs": jobs, "rows": rows, "claims": claims}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.e3_scale", description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=("fit", "e3"))
    parser.add_argument("--corpus", required=True, help="directory of parallel.src/.tgt (generated if absent)")
    parser.add_argument("--pairs", type=int, default=29000)
    parser.add_argument("--options", default="--min-count 2", help="E3_OPTIONS (default: '--min-count 2')")
    parser.add_argument("--max-epochs", type=int, default=None, help="fit: override E3's max_epochs")
    parser.add_argument("--batch-size", type=int, default=None, help="fit: override E3's batch_size")
    parser.add_argument("--results", default=None, help="e3: results directory (required for e3)")
    parser.add_argument("--profile", default="default", choices=("quick", "default", "full"))
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    src, tgt = ensure_corpus(Path(args.corpus), args.pairs)
    if args.step == "fit":
        overrides = {k: v for k, v in (("max_epochs", args.max_epochs), ("batch_size", args.batch_size))
                     if v is not None}
        out = measure_fit(src, tgt, args.options, **overrides)
    else:
        if not args.results:
            parser.error("e3 needs --results DIR")
        out = run_e3(src, tgt, args.options, Path(args.results), args.profile, args.jobs)
    print(json.dumps(out, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
