"""Run every benchmark and print Markdown tables: ``python -m benchmarks.run_all [--quick] ...``.

``make bench`` calls this. Sections (``--only`` picks some):

* ``speed``      — one seq2seq training step (one head and 8 heads), NumPy vs PyTorch eager vs JAX jit,
  after equivalence checks (:mod:`benchmarks.step_speed`);
* ``roofline``   — matmul FLOPs of every ``speed`` cell against the measured single-thread GEMM rate,
  and a profile of the float32 d = 64 single-head step (:mod:`benchmarks.roofline`);
* ``scaling``    — step time against B, L, d with fitted slopes, and the fraction of the measured
  matmul rate (:mod:`benchmarks.scaling`);
* ``prediction`` — reduced ODE vs simulating a learning curve, free copy model and seq2seq
  (rate-corrected reduced dynamics) (:mod:`benchmarks.prediction_cost`).

``--quick`` runs tiny sizes with two or three reps: it exercises every code path in seconds, and its
numbers mean nothing. ``--threads`` sets NumPy's BLAS, PyTorch and XLA (JAX) to the same thread count
(default: NumPy's current count; XLA takes 1 or "all cores", set before JAX is first imported). ``--markdown`` / ``--json`` write the tables / raw results atomically.
"""

from __future__ import annotations

import argparse
import sys
import time

from benchmarks import blas_threads, jax_seq2seq, machine_info, set_threads
from miniattn.allocator import keep_freed_memory

SECTIONS = ("speed", "roofline", "scaling", "prediction")


def _plain(obj):
    """NamedTuples -> dicts (recursively), so the raw results keep their field names in JSON."""
    if hasattr(obj, "_asdict"):
        out = {k: _plain(v) for k, v in obj._asdict().items()}
        if hasattr(obj, "iqr"):
            out["iqr"] = obj.iqr
        if hasattr(obj, "ok"):
            out["ok"] = obj.ok
        return out
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes and reps: checks the code paths in seconds")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    p.add_argument("--reps", type=int, default=None,
                   help="timed reps per single-head cell of the step comparison (default 30; 3 with --quick)")
    p.add_argument("--reps-multihead", type=int, default=None,
                   help="timed reps per multi-head cell (default 20; 3 with --quick)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for NumPy's BLAS and PyTorch alike (default: NumPy's current BLAS threads)")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if it is installed")
    p.add_argument("--no-jax", action="store_true", help="leave JAX out even if it is installed")
    p.add_argument("--dims", type=int, nargs="+", default=[64, 256], help="model widths of the step comparison")
    p.add_argument("--heads", type=int, nargs="+", default=[1, 8], help="head counts of the step comparison")
    p.add_argument("--profile-steps", type=int, default=None,
                   help="steps under cProfile in the roofline section (default 40; 5 with --quick)")
    p.add_argument("--dtypes", nargs="+", choices=("float64", "float32"), default=["float64", "float32"])
    p.add_argument("--scaling-dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--markdown", metavar="PATH", help="also write the tables to this file")
    p.add_argument("--json", metavar="PATH", help="also write the raw results (with machine info) as JSON")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    # As the training entry points do (miniattn/allocator.py): every implementation in this process
    # then runs with the same allocator setting, whether or not PyTorch (which has the same effect) is imported.
    keep_freed_memory()
    reps = args.reps if args.reps is not None else (3 if args.quick else 30)
    reps_mh = args.reps_multihead if args.reps_multihead is not None else (3 if args.quick else 20)
    if reps < 1 or reps_mh < 1:
        raise SystemExit("--reps and --reps-multihead must be >= 1")
    if any(h < 1 for h in args.heads):
        raise SystemExit("--heads must be >= 1")
    threads = args.threads if args.threads is not None else (blas_threads() or 1)
    if threads < 1:
        raise SystemExit("--threads must be >= 1")
    set_threads(threads)
    # XLA reads its thread flags once, when JAX is first imported: set them before anything imports it.
    jax_seq2seq.configure_threads(threads)
    use_jax = not args.no_jax and jax_seq2seq.jax_available()
    info = machine_info()
    jax_desc = (f"JAX {info['jax']} (XLA CPU threads {info['threads']['jax']})" if use_jax else
                f"JAX not used ({'--no-jax' if args.no_jax else jax_seq2seq.jax_unavailable_reason()})")
    header = (f"date {info['date']}; {info['cpu']}, {info['cores']} cores, load average "
              f"{', '.join(f'{x:.1f}' for x in info['loadavg']) if info['loadavg'] else 'n/a'}; "
              f"Python {info['python']}, NumPy {info['numpy']} ({info['blas']}), SciPy {info['scipy']}, "
              f"PyTorch {info['torch'] or 'not installed'}, {jax_desc}; threads: NumPy BLAS "
              f"{info['threads']['numpy_blas']}, PyTorch {info['threads']['torch']}; git {info['git']}"
              + ("; QUICK run (sizes too small to mean anything)" if args.quick else ""))
    print(header, flush=True)
    md = ["## Machine", "", header, ""]
    raw = {"machine": info, "args": vars(args)}
    t0 = time.perf_counter()

    size = dict(batch_size=8, length=6, vocab=9) if args.quick else dict(batch_size=128, length=40, vocab=60)
    speed = None
    if "speed" in args.only:
        from benchmarks import step_speed
        print("\n# Training step: NumPy vs PyTorch eager vs JAX jit", flush=True)
        dims = [8, 16] if args.quick else args.dims
        heads = [1, 2] if args.quick else args.heads
        speed = step_speed.run(dims, args.dtypes, heads=heads,
                               reps=lambda H, dt, d: reps if H == 1 else reps_mh,
                               warmup=1 if args.quick else 3, with_torch=not args.no_torch, with_jax=use_jax,
                               **size)
        table = step_speed.format_table(speed)
        print(table, flush=True)
        md += ["## Training step: NumPy vs PyTorch eager vs JAX jit", "", table, ""]
        raw["speed"] = speed

    if "roofline" in args.only:
        from benchmarks import roofline
        print("\n# Roofline", flush=True)
        gemm_n = 256 if args.quick else 2048
        rates = {dt: roofline.gemm_rate(dt, n=gemm_n, threads=1, reps=2 if args.quick else 5)
                 for dt in ("float32", "float64")}
        md += ["## Roofline", ""]
        raw["roofline"] = {"gemm_rate_1thread": rates, "gemm_n": gemm_n}
        if speed is not None:
            rows = roofline.roofline_rows(speed["timings"], rates, vocab=size["vocab"])
            table = roofline.format_roofline(rows, rates, threads)
            raw["roofline"]["cells"] = rows
        else:
            table = ("Single-thread GEMM rate: " + ", ".join(f"{k} {v.median:.1f} GFLOP/s" for k, v in rates.items())
                     + " (no `speed` section, so no per-cell fractions).")
        print(table, flush=True)
        prof_d = 16 if args.quick else 64
        steps = args.profile_steps if args.profile_steps is not None else (5 if args.quick else 40)
        prof = roofline.profile_step(prof_d, "float32", steps=steps, replay_reps=3 if args.quick else 20,
                                     gemm_rate_gflops=rates["float32"].median, **size)
        ptable = roofline.format_profile(prof)
        print("\n" + ptable, flush=True)
        md += [table, "", ptable, ""]
        raw["roofline"]["profile"] = prof

    if "scaling" in args.only:
        from benchmarks import scaling
        print(f"\n# Scaling ({args.scaling_dtype})", flush=True)
        res = scaling.run(dtype=args.scaling_dtype, reps=2 if args.quick else 7, quick=args.quick)
        table = scaling.format_table(res)
        print(table, flush=True)
        md += [f"## Scaling ({args.scaling_dtype})", "", table, ""]
        raw["scaling"] = res

    if "prediction" in args.only:
        from benchmarks import prediction_cost
        print("\n# Cost of the analytic prediction", flush=True)
        res = prediction_cost.run(quick=args.quick, reps=1 if args.quick else 2)
        table = prediction_cost.format_table(res)
        print(table, flush=True)
        md += ["## Cost of the analytic prediction", "", table, ""]
        raw["prediction"] = res

    elapsed = time.perf_counter() - t0
    print(f"\n(total {elapsed:.0f} s)", flush=True)
    raw["elapsed_seconds"] = elapsed
    if args.markdown:
        from miniattn.io import atomic_write_text
        atomic_write_text(args.markdown, "\n".join(md))
    if args.json:
        from miniattn.io import atomic_write_json
        atomic_write_json(args.json, _plain(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
