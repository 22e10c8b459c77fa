"""How the seq2seq training step scales with batch size B, length L and width d, and how close it gets
to the machine's matmul throughput.

Three one-dimensional scans on a log-log grid around B = 128, L = 40, d = 64 (copy task with
replacement, V = 60, so L may exceed V; S = T = L + 1 with <bos>/<eos>), each summarised by the slope
of ``log time`` against ``log size`` (least squares). Expectations from the FLOP count below: slope
≈ 1 in B (every term is linear in B); in L between 1 and 2 (the d² and dC terms grow like T, the
attention term like T·S); in d between 1 and 2 (the d² term takes over as d grows). A fourth scan
times the attention block alone (forward + backward, dot-product scores after a d×d projection) in
L, where the T·S term dominates once S > d.

Matmul FLOPs of one step (single head, shared table, no value projection, C output classes)::

    forward    q W_a: 2BTd²   scores: 2BTSd   context: 2BTSd   logits: 2BT(2d)C
    backward   dhidden, dW_o: 2·2BT(2d)C     attention: 4·2BTSd     dq, dW_a: 2·2BTd²
    total      6BTd² + 12BTSd + 12BTdC                                  (:func:`step_flops`)

Elementwise work (softmaxes, additions, the embedding scatter, Adam) is not counted, so the
fraction of peak reported by :func:`run` is a lower bound on how busy the BLAS is.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from benchmarks import Summary, summarize, time_interleaved
from benchmarks.step_speed import make_setup
from miniattn.layers import attention_backward, attention_forward

__all__ = ["step_flops", "matmul_gflops", "step_time", "attention_time", "fit_slope", "Scan", "scan", "run",
           "format_table", "VOCAB"]

#: Content vocabulary of the copy task in every scan (C = VOCAB + 3 output classes).
VOCAB = 60


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def step_flops(batch_size: int, target_length: int, source_length: int, dim: int, classes: int) -> int:
    """Matmul FLOPs of one training step: ``6BTd² + 12BTSd + 12BTdC`` (see the module docstring)."""
    B, T, S, d, C = (_positive_int(n, v) for n, v in (("batch_size", batch_size), ("target_length", target_length),
                                                       ("source_length", source_length), ("dim", dim),
                                                       ("classes", classes)))
    return 6 * B * T * d * d + 12 * B * T * S * d + 12 * B * T * d * C


def matmul_gflops(n: int = 1536, dtype="float64", *, reps: int = 5) -> Summary:
    """Measured throughput (GFLOP/s) of an n×n by n×n matrix product (``2n³`` FLOPs), median of reps."""
    n = _positive_int("n", n)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    times = time_interleaved({"mm": lambda: a @ b}, reps=reps, warmup=1)["mm"]
    return summarize(2.0 * n ** 3 / times / 1e9)


def step_time(batch_size: int, length: int, dim: int, dtype="float64", *, vocab: int = VOCAB, reps: int = 7,
              warmup: int = 2) -> Summary:
    """Seconds per NumPy training step (forward, backward, Adam) at the given size; median of reps."""
    s = make_setup(dim, dtype, batch_size=batch_size, length=length, vocab=vocab, with_torch=False,
                   mode="replacement")

    def step():
        _, grads = s.model.loss_and_grads(s.batch)
        s.optimizer.step(grads)

    return summarize(time_interleaved({"step": step}, reps=reps, warmup=warmup)["step"])


def attention_time(batch_size: int, length: int, dim: int, dtype="float64", *, reps: int = 7,
                   warmup: int = 2) -> Summary:
    """Seconds for attention forward + backward alone (T = S = length, bilinear scores); median of reps."""
    B, L, d = _positive_int("batch_size", batch_size), _positive_int("length", length), _positive_int("dim", dim)
    rng = np.random.default_rng(0)
    # Scale 1/sqrt(d) keeps the scores O(1), as in the model at initialisation.
    q, k, dc = (rng.standard_normal((B, L, d)).astype(dtype) / np.sqrt(d) for _ in range(3))
    W = (rng.standard_normal((d, d)) / np.sqrt(d)).astype(dtype)

    def fwd_bwd():
        _, cache = attention_forward(q, k, k, W)
        attention_backward(dc, cache)

    return summarize(time_interleaved({"attention": fwd_bwd}, reps=reps, warmup=warmup)["attention"])


def fit_slope(sizes, times) -> float:
    """Least-squares slope of ``log(times)`` against ``log(sizes)`` (the scaling exponent)."""
    x = np.asarray(sizes, dtype=np.float64)
    y = np.asarray(times, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError(f"sizes and times must be 1-d of one length >= 2, got {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and np.all(x > 0) and np.all(y > 0)):
        raise ValueError("sizes and times must be positive and finite")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


class Scan(NamedTuple):
    """Times along one axis of the grid, with the fitted exponent."""

    axis: str                   #: "B", "L", "d" (training step) or "L (attention)"
    sizes: tuple
    times: tuple                #: median seconds at each size
    slope: float                #: fitted exponent over all sizes
    slope_top: float            #: exponent between the two largest sizes
    fixed: dict                 #: the sizes held fixed


def scan(axis: str, sizes, *, base=(128, 40, 64), dtype="float64", reps: int = 7) -> Scan:
    """Time the step (or, for ``axis="L (attention)"``, the attention block) along one axis.

    Parameters
    ----------
    axis : {"B", "L", "d", "L (attention)"}
    sizes : sequence of int (at least 2)
    base : (B, L, d)
        The sizes held fixed.
    """
    if axis not in ("B", "L", "d", "L (attention)"):
        raise ValueError(f"axis must be 'B', 'L', 'd' or 'L (attention)', got {axis!r}")
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes must hold at least two values, got {sizes}")
    B0, L0, d0 = base
    times = []
    for n in sizes:
        if axis == "L (attention)":
            times.append(attention_time(B0, n, d0, dtype, reps=reps).median)
            continue
        B, L, d = (n if axis == "B" else B0), (n if axis == "L" else L0), (n if axis == "d" else d0)
        times.append(step_time(B, L, d, dtype, reps=reps).median)
    fixed = {k: v for k, v in zip("BLd", base) if not axis.startswith(k)}
    return Scan(axis, sizes, tuple(times), fit_slope(sizes, times), fit_slope(sizes[-2:], times[-2:]), fixed)


def run(*, dtype="float64", reps: int = 7, quick: bool = False, verbose: bool = True) -> dict:
    """All scans, the machine's matmul throughput, and the fraction of it each scan's largest size reaches.

    Returns
    -------
    dict
        ``{"scans": [Scan, ...], "matmul_gflops": Summary, "largest": [dict per training-step scan],
        "dtype": str}``; each ``largest`` entry holds B, L, d, the step's matmul FLOPs, its median
        time, the achieved GFLOP/s and ``fraction`` = achieved / measured matmul GFLOP/s.
    """
    if quick:
        grids = {"B": (8, 16, 32), "L": (5, 10, 20), "d": (16, 32, 64), "L (attention)": (16, 32, 64)}
        base, mm_n = (32, 10, 32), 256
    else:
        grids = {"B": (16, 32, 64, 128, 256), "L": (10, 20, 40, 80, 160), "d": (32, 64, 128, 256, 512),
                 "L (attention)": (40, 80, 160, 320, 640)}
        base, mm_n = (128, 40, 64), 1536
    mm = matmul_gflops(mm_n, dtype, reps=max(3, reps // 2))
    if verbose:
        print(f"  matmul {mm_n}x{mm_n} ({np.dtype(dtype).name}): {mm.median:.1f} GFLOP/s", flush=True)
    scans, largest = [], []
    for axis, sizes in grids.items():
        b = (32, base[1], base[2]) if axis == "L (attention)" else base
        sc = scan(axis, sizes, base=b, dtype=dtype, reps=reps)
        scans.append(sc)
        if verbose:
            pts = ", ".join(f"{n}: {1e3 * t:.1f}" for n, t in zip(sc.sizes, sc.times))
            print(f"  {axis:14s} slope {sc.slope:.2f} (top pair {sc.slope_top:.2f})   ms: {pts}", flush=True)
        if axis == "L (attention)":
            continue
        B, L, d = (sc.sizes[-1] if axis == k else v for k, v in zip("BLd", base))
        flops = step_flops(B, L + 1, L + 1, d, VOCAB + 3)   # C = V + 3 ids (pad, bos, eos)
        achieved = flops / sc.times[-1] / 1e9
        largest.append({"axis": axis, "B": B, "L": L, "d": d, "flops": flops, "seconds": sc.times[-1],
                        "gflops": achieved, "fraction": achieved / mm.median})
        if verbose:
            print(f"    largest {axis}: B={B} L={L} d={d}: {flops / 1e9:.2f} GFLOP in {1e3 * sc.times[-1]:.0f} ms "
                  f"= {achieved:.1f} GFLOP/s = {100 * achieved / mm.median:.0f}% of the matmul rate", flush=True)
    return {"scans": scans, "matmul_gflops": mm, "largest": largest, "dtype": np.dtype(dtype).name}


def format_table(result: dict) -> str:
    """Markdown table of :func:`run`'s scans and throughput."""
    lines = ["| scan | fixed | sizes | median ms per step | fitted slope | slope of top pair |",
             "|---|---|---|---|---|---|"]
    for sc in result["scans"]:
        fixed = ", ".join(f"{k}={v}" for k, v in sc.fixed.items())
        lines.append(f"| {sc.axis} | {fixed} | {', '.join(map(str, sc.sizes))} | "
                     f"{', '.join(f'{1e3 * t:.1f}' for t in sc.times)} | **{sc.slope:.2f}** | {sc.slope_top:.2f} |")
    mm = result["matmul_gflops"]
    lines += ["", f"Measured matmul rate ({result['dtype']}): {mm.median:.1f} GFLOP/s (IQR {mm.iqr:.1f}).", "",
              "| largest size of scan | B | L | d | matmul GFLOP per step | ms per step | GFLOP/s | % of matmul rate |",
              "|---|---|---|---|---|---|---|---|"]
    for big in result["largest"]:
        lines.append(f"| {big['axis']} | {big['B']} | {big['L']} | {big['d']} | {big['flops'] / 1e9:.2f} | "
                     f"{1e3 * big['seconds']:.0f} | {big['gflops']:.1f} | **{100 * big['fraction']:.0f}%** |")
    return "\n".join(lines)
