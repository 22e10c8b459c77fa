"""Run every benchmark and print Markdown tables: ``python -m benchmarks.run_all [--quick] ...``.

``make bench`` calls this. Sections (``--only`` picks some):

* ``speed``      — one seq2seq training step, NumPy vs PyTorch eager, after an equivalence check
  (:mod:`benchmarks.step_speed`);
* ``scaling``    — step time against B, L, d with fitted slopes, and the fraction of the measured
  matmul rate (:mod:`benchmarks.scaling`);
* ``prediction`` — reduced ODE vs simulating a learning curve (:mod:`benchmarks.prediction_cost`).

``--quick`` runs tiny sizes with two or three reps: it exercises every code path in seconds, and its
numbers mean nothing. ``--threads`` sets NumPy's BLAS and PyTorch to the same thread count (default:
NumPy's current count). ``--markdown`` / ``--json`` write the tables / raw results atomically.
"""

from __future__ import annotations

import argparse
import sys
import time

from benchmarks import blas_threads, machine_info, set_threads

SECTIONS = ("speed", "scaling", "prediction")


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
                   help="timed reps per size for the step comparison (default 30; 3 with --quick)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for NumPy's BLAS and PyTorch alike (default: NumPy's current BLAS threads)")
    p.add_argument("--no-torch", action="store_true", help="time NumPy alone even if PyTorch is installed")
    p.add_argument("--dims", type=int, nargs="+", default=[64, 256], help="model widths of the step comparison")
    p.add_argument("--dtypes", nargs="+", choices=("float64", "float32"), default=["float64", "float32"])
    p.add_argument("--scaling-dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--markdown", metavar="PATH", help="also write the tables to this file")
    p.add_argument("--json", metavar="PATH", help="also write the raw results (with machine info) as JSON")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    reps = args.reps if args.reps is not None else (3 if args.quick else 30)
    if reps < 1:
        raise SystemExit("--reps must be >= 1")
    threads = args.threads if args.threads is not None else (blas_threads() or 1)
    if threads < 1:
        raise SystemExit("--threads must be >= 1")
    set_threads(threads)
    info = machine_info()
    header = (f"date {info['date']}; {info['cpu']}, {info['cores']} cores, load average "
              f"{', '.join(f'{x:.1f}' for x in info['loadavg']) if info['loadavg'] else 'n/a'}; "
              f"Python {info['python']}, NumPy {info['numpy']} ({info['blas']}), SciPy {info['scipy']}, "
              f"PyTorch {info['torch'] or 'not installed'}; threads: NumPy BLAS {info['threads']['numpy_blas']}, "
              f"PyTorch {info['threads']['torch']}; git {info['git']}"
              + ("; QUICK run (sizes too small to mean anything)" if args.quick else ""))
    print(header, flush=True)
    md = ["## Machine", "", header, ""]
    raw = {"machine": info, "args": vars(args)}
    t0 = time.perf_counter()

    if "speed" in args.only:
        from benchmarks import step_speed
        print("\n# Training step: NumPy vs PyTorch", flush=True)
        size = dict(batch_size=8, length=6, vocab=9) if args.quick else {}
        dims = [8, 16] if args.quick else args.dims
        res = step_speed.run(dims, args.dtypes, reps=reps, warmup=1 if args.quick else 3,
                             with_torch=not args.no_torch, **size)
        table = step_speed.format_table(res)
        print(table, flush=True)
        md += ["## Training step: NumPy vs PyTorch eager", "", table, ""]
        raw["speed"] = res

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
