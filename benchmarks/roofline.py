"""Roofline of the training step: matmul FLOPs per step against this machine's single-thread GEMM rate,
and where the rest of the time goes.

FLOPs are counted from the model's shapes (B batch, T target and S source positions, d width, C output
classes, H heads); every product of an (m, k) by a (k, n) matrix costs 2mkn, forward and backward::

    output layer    forward [q ; c] W_o: 2BT(2d)C; backward d[q ; c] and dW_o: 2 · 2BT(2d)C  = 12BTdC
    one head        q W_a: 2BTd², backward dq, dW_a: 2 · 2BTd²                             =  6BTd²
                    scores, context: 2 · 2BTSd; backward dα, dV, dK, d(q W_a): 4 · 2BTSd      = 12BTSd
                    value projection h W_v (if any): 2BSd², backward dh, dW_v: 2 · 2BSd²      =  6BSd²
    H heads         H times the per-head terms; the output layer once (contexts are averaged)

so a single head without value projection costs ``6BTd² + 12BTSd + 12BTdC`` (the count of
:func:`benchmarks.scaling.step_flops`) and the default 8-head model (value projections on)
``8 (6BTd² + 6BSd² + 12BTSd) + 12BTdC``. These are the *model's* FLOPs: what the PyTorch and JAX
twins execute, and the work a step stands for whatever its algorithm.

miniattn executes fewer: it computes ``q W_a`` through the vocabulary (docs/EQUATIONS.md §1.8),
``(E W_a)[y] + (P W_a)[t]`` over the U distinct decoder-input ids of the batch, so the three
``BTd²`` products per head become ``(U + T)d²`` ones (forward ``(U + T)``, dW_a ``(U + T)``, dE ``U``,
dP ``T`` rows): ``6(U + T)d²`` per head instead of ``6BTd²`` (``step_flops(..., distinct=U)``).
Two fractions follow: the *executed* FLOPs' rate against the GEMM rate (how busy the multiply units
are) and the *model* FLOPs' rate against it (model-FLOP utilisation, which credits an algorithm that
skips work; it can exceed 100%). Softmaxes, the embedding scatter-add, the positional sums and
Adam are not counted: the fraction of the GEMM rate is a lower bound on how busy the multiply units are.

The rate it is compared with is measured here (:func:`gemm_rate`): one large square GEMM (n = 2048)
with NumPy's BLAS at one thread, in float32 and float64. :func:`profile_step` profiles one step
(cProfile over repeated steps) and replays the step's GEMMs alone at the model's shapes
(:func:`gemm_replay`), which separates "small GEMMs run below the big-GEMM rate" from "time spent
outside GEMMs".
"""

from __future__ import annotations

import cProfile
import pstats
from typing import NamedTuple

import numpy as np

from benchmarks import Summary, blas_threads, set_threads, summarize, time_interleaved

__all__ = ["step_flops", "gemm_rate", "roofline_rows", "format_roofline", "gemm_replay", "Profile",
           "profile_step", "format_profile"]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def step_flops(batch_size: int, target_length: int, source_length: int, dim: int, classes: int, *,
               heads: int = 1, value_projection: bool | None = None, distinct: int | None = None) -> int:
    """Matmul FLOPs of one training step (forward and backward GEMMs; see the module docstring).

    ``value_projection`` defaults to the model's default: on for ``heads > 1``, off for one head.
    ``distinct``: count ``q W_a`` factored through that many distinct decoder-input ids (miniattn's
    executed FLOPs); None counts it for every position (the model's FLOPs, the twins' count).
    """
    B, T, S, d, C, H = (_positive_int(n, v) for n, v in (
        ("batch_size", batch_size), ("target_length", target_length), ("source_length", source_length),
        ("dim", dim), ("classes", classes), ("heads", heads)))
    vp = (H > 1) if value_projection is None else bool(value_projection)
    query_rows = B * T if distinct is None else _positive_int("distinct", distinct) + T
    per_head = 6 * query_rows * d * d + 12 * B * T * S * d + (6 * B * S * d * d if vp else 0)
    return H * per_head + 12 * B * T * d * C


def gemm_rate(dtype="float64", *, n: int = 2048, threads: int = 1, reps: int = 5) -> Summary:
    """GFLOP/s of an n×n by n×n NumPy matmul at ``threads`` BLAS threads (restored afterwards)."""
    from benchmarks.scaling import matmul_gflops
    before = blas_threads()
    set_threads(_positive_int("threads", threads))
    try:
        return matmul_gflops(_positive_int("n", n), dtype, reps=reps)
    finally:
        if before is not None:
            set_threads(before)


def roofline_rows(timings, rates: dict, *, vocab: int = 60) -> list[dict]:
    """One row per timed cell: FLOPs, GFLOP/s and fractions of the GEMM rate of that dtype.

    ``flops`` is the model's count (unfactored; executed by the PyTorch and JAX twins), ``flops_executed``
    miniattn's (and the factored twins'), with U = V + 1 distinct decoder inputs (<bos> and the V
    content ids; a copy batch of 128 rows of 40 of 60 ids contains all of them). Per implementation:
    ``fraction`` = executed FLOPs / time / GEMM rate, ``model_fraction`` = model FLOPs / time / rate.

    Parameters
    ----------
    timings : list of :class:`benchmarks.step_speed.StepTiming`
    rates : dict dtype name -> Summary of :func:`gemm_rate` (single thread)
    vocab : int
        V of the copy task (C = V + 3 classes; S = T = L + 1).
    """
    rows = []
    for t in timings:
        shape = (t.batch_size, t.length + 1, t.length + 1, t.dim, vocab + 3)
        flops = step_flops(*shape, heads=t.heads)
        factored = step_flops(*shape, heads=t.heads, distinct=min(vocab + 1, t.batch_size * (t.length + 1)))
        peak = rates[t.dtype].median
        row = {"heads": t.heads, "dtype": t.dtype, "dim": t.dim, "batch_size": t.batch_size, "length": t.length,
               "flops": flops, "flops_executed": factored, "peak_gflops": peak}
        for name, executed in (("numpy", factored), ("torch", flops), ("jax", flops),
                               ("torch_factored", factored), ("jax_factored", factored)):
            s = getattr(t, name, None)
            if s is None:
                row[name] = None
                continue
            g = executed / s.median / 1e9
            row[name] = {"seconds": s.median, "gflops": g, "fraction": g / peak,
                         "model_fraction": flops / s.median / 1e9 / peak}
        rows.append(row)
    return rows


def format_roofline(rows: list[dict], rates: dict, threads: int | None = None) -> str:
    """Markdown table of :func:`roofline_rows` (percent of the single-thread GEMM rate)."""
    head = ", ".join(f"{k} {v.median:.1f} GFLOP/s (IQR {v.iqr:.1f})" for k, v in rates.items())
    lines = [f"Single-thread GEMM rate (NumPy, 2048×2048): {head}."
             + (f" Steps timed with {threads} thread(s); with 2 threads the attainable rate is up to 2×, "
                "so a fraction above 100% is possible there." if threads and threads > 1 else ""), "",
             "Executed: the FLOPs each implementation performs (miniattn and the factored twins compute q W_a "
             "through the vocabulary); model: the unfactored count, the same for all (model-FLOP utilisation).", "",
             "| heads | dtype | d | model GFLOP per step | executed by NumPy | NumPy GFLOP/s executed | "
             "NumPy % of 1-thread GEMM, executed | NumPy %, model | PyTorch % | JAX % | "
             "PyTorch (factored) %, executed | JAX (factored) %, executed |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def pct(x, key="fraction"):
        return "—" if x is None else f"{100 * x[key]:.0f}%"

    for r in rows:
        lines.append(f"| {r['heads']} | {r['dtype']} | {r['dim']} | {r['flops'] / 1e9:.2f} | "
                     f"{r['flops_executed'] / 1e9:.2f} | {r['numpy']['gflops']:.1f} | **{pct(r['numpy'])}** | "
                     f"{pct(r['numpy'], 'model_fraction')} | {pct(r['torch'])} | {pct(r['jax'])} | "
                     f"{pct(r.get('torch_factored'))} | {pct(r.get('jax_factored'))} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Where the time goes
# --------------------------------------------------------------------------------------------------

def _single_head_gemms(B: int, T: int, S: int, d: int, C: int, dtype, rng, U: int) -> list[tuple[str, object]]:
    """The GEMMs of one single-head step (no value projection) as closures over random operands, with
    the layouts the model uses (q W_a through the U distinct decoder inputs, stacked (B, T, ·) products
    elsewhere)."""
    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)

    k, dc, qW = r(B, S, d), r(B, T, d), r(B, T, d)
    Eu, P, D, G = r(U, d), r(T, d), r(U, d), r(T, d)
    alpha, ds = r(B, T, S), r(B, T, S)
    W, hid, Wo, dlog = r(d, d), r(B, T, 2 * d), r(2 * d, C), r(B, T, C)
    WoT = np.ascontiguousarray(Wo.T)
    return [
        ("fwd  E[u] W_a (U, d)(d, d)", lambda: Eu @ W),
        ("fwd  P W_a (T, d)(d, d)", lambda: P @ W),
        ("fwd  scores (q W_a) hᵀ", lambda: qW @ k.transpose(0, 2, 1)),
        ("fwd  context α h", lambda: alpha @ k),
        ("fwd  logits [q ; c] W_o", lambda: hid @ Wo),
        ("bwd  d[q ; c] = dlogits W_oᵀ", lambda: dlog @ WoT),
        ("bwd  dW_o = [q ; c]ᵀ dlogits", lambda: hid.reshape(-1, 2 * d).T @ dlog.reshape(-1, C)),
        ("bwd  dV = αᵀ dc", lambda: alpha.transpose(0, 2, 1) @ dc),
        ("bwd  dα = dc Vᵀ", lambda: dc @ k.transpose(0, 2, 1)),
        ("bwd  dK = dscoresᵀ (q W_a)", lambda: ds.transpose(0, 2, 1) @ qW),
        ("bwd  d(q W_a) = dscores K", lambda: ds @ k),
        ("bwd  dE[u] = D W_aᵀ (U rows)", lambda: D @ W.T),
        ("bwd  dP = G W_aᵀ (T rows)", lambda: G @ W.T),
        ("bwd  dW_a = E[u]ᵀ D + Pᵀ G", lambda: Eu.T @ D + P.T @ G),
    ]


def gemm_replay(dim: int = 64, dtype="float32", *, batch_size: int = 128, length: int = 40, vocab: int = 60,
                reps: int = 20) -> dict:
    """Median time of each GEMM of a single-head step, alone, at the model's shapes.

    Returns ``{"gemms": [(name, seconds)], "total": seconds}``; the total is the step's time in
    GEMMs if they ran as they do alone (warm caches: a lower bound for the step's GEMM time).
    """
    B, L, d = (_positive_int(n, v) for n, v in (("batch_size", batch_size), ("length", length), ("dim", dim)))
    T = S = L + 1
    V = _positive_int("vocab", vocab)
    gemms = _single_head_gemms(B, T, S, d, V + 3, np.dtype(dtype), np.random.default_rng(0), min(V + 1, B * T))
    times = time_interleaved(dict(gemms), reps=reps, warmup=2)
    out = [(name, float(np.median(times[name]))) for name, _ in gemms]
    return {"gemms": out, "total": float(sum(t for _, t in out))}


class Profile(NamedTuple):
    """Where one NumPy training step spends its time."""

    dtype: str
    dim: int
    heads: int
    steps: int
    step_seconds: float          #: median of plain (unprofiled) steps
    phases: list                 #: (name, seconds per step), cumulative time of the model's layer calls
    top_own: list                #: (function, seconds per step, calls per step), largest own time first
    gemm: dict                   #: :func:`gemm_replay` (single head only; None otherwise)
    flops: int
    gemm_rate: float             #: single-thread GFLOP/s of the dtype


#: The model's phases: (label, function name in cProfile's stats, file suffix).
_PHASES = [("validate the batch (Seq2SeqAttention._check_batch)", "_check_batch", "seq2seq.py"),
           ("embedding lookups", "embedding_forward", "layers.py"),
           ("projected lookup forward ((E[u] W_a)[y] + (P W_a)[t])", "projected_lookup_forward", "layers.py"),
           ("projected lookup backward (scatter + small GEMMs)", "projected_lookup_backward", "layers.py"),
           ("attention forward (GEMMs + masked softmax)", "attention_forward", "layers.py"),
           ("  of which masked softmax", "masked_softmax", "layers.py"),
           ("output layer forward (GEMM + log-softmax + loss)", "softmax_output_forward", "layers.py"),
           ("output layer backward (2 GEMMs + dlogits)", "softmax_output_backward", "layers.py"),
           ("attention backward (4 GEMMs + softmax backward)", "attention_backward", "layers.py"),
           ("embedding backward (CSR scatter-add)", "embedding_backward", "layers.py"),
           ("multi-head forward (projection GEMMs + heads folded into queries)", "multihead_attention_forward", "layers.py"),
           ("multi-head backward", "multihead_attention_backward", "layers.py"),
           ("Adam update (miniattn.optim.Adam.step)", "step", "optim.py"),
           ("whole loss_and_grads", "loss_and_grads", "seq2seq.py")]


def profile_step(dim: int = 64, dtype="float32", *, heads: int = 1, steps: int = 40, batch_size: int = 128,
                 length: int = 40, vocab: int = 60, replay_reps: int = 20, top: int = 12,
                 gemm_rate_gflops: float | None = None) -> Profile:
    """cProfile ``steps`` NumPy training steps and replay the GEMMs; per-step seconds throughout.

    ``gemm_rate_gflops`` is the single-thread GEMM rate to compare with (measured when None).

    cProfile adds a little overhead per Python call (the step makes a few hundred), so the phase times
    sum to slightly more than the plain step time, which is measured separately.
    """
    from benchmarks.step_speed import make_setup
    s = make_setup(dim, dtype, heads=heads, batch_size=batch_size, length=length, vocab=vocab,
                   with_torch=False, with_jax=False)

    def step():
        _, grads = s.model.loss_and_grads(s.batch)
        s.optimizer.step(grads)

    plain = summarize(time_interleaved({"step": step}, reps=max(5, steps // 2), warmup=3)["step"]).median
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        step()
    prof.disable()
    stats = pstats.Stats(prof).stats   # (file, line, name) -> (cc, nc, tottime, cumtime, callers)
    phases = []
    for label, fname, suffix in _PHASES:
        cum = sum(v[3] for (f, _, n), v in stats.items() if n == fname and f.endswith(suffix))
        if cum > 0:
            phases.append((label, cum / steps))
    own = sorted(((f"{n} ({f.rsplit('/', 1)[-1]}:{line})" if not f.startswith("~") else n, v[2] / steps,
                   v[1] / steps) for (f, line, n), v in stats.items()), key=lambda x: -x[1])[:top]
    L = length
    flops = step_flops(batch_size, L + 1, L + 1, dim, vocab + 3, heads=heads,
                       distinct=min(vocab + 1, batch_size * (L + 1)))      # executed (factored) FLOPs
    rate = gemm_rate_gflops if gemm_rate_gflops is not None else gemm_rate(dtype, threads=1).median
    gemm = gemm_replay(dim, dtype, batch_size=batch_size, length=length, vocab=vocab,
                       reps=replay_reps) if heads == 1 else None
    return Profile(np.dtype(dtype).name, int(dim), int(heads), int(steps), plain, phases, own, gemm, flops,
                   float(rate))


def format_profile(p: Profile) -> str:
    """Markdown: the phases, the functions with the most own time, and the GEMM replay."""
    ms = 1e3
    rate = p.gemm_rate
    lines = [f"Profile of the NumPy step, H={p.heads}, {p.dtype}, d={p.dim} (cProfile over {p.steps} steps; "
             f"plain step {ms * p.step_seconds:.1f} ms; {p.flops / 1e9:.3f} matmul GFLOP executed, "
             f"{ms * p.flops / (rate * 1e9):.1f} ms at the single-thread GEMM rate {rate:.1f} GFLOP/s).", "",
             "| phase (cumulative, per step) | ms |", "|---|---|"]
    lines += [f"| {label} | {ms * t:.2f} |" for label, t in p.phases]
    lines += ["", "| function (own time, per step) | ms | calls per step |", "|---|---|---|"]
    lines += [f"| `{name}` | {ms * t:.2f} | {c:.0f} |" for name, t, c in p.top_own]
    if p.gemm is not None:
        lines += ["", "| GEMM of the step, alone at the model's shape | ms |", "|---|---|"]
        lines += [f"| {name} | {ms * t:.3f} |" for name, t in p.gemm["gemms"]]
        lines += [f"| **all {len(p.gemm['gemms'])} GEMMs** | **{ms * p.gemm['total']:.2f}** |", "",
                  f"GEMMs alone: {ms * p.gemm['total']:.2f} ms = {100 * p.gemm['total'] / p.step_seconds:.0f}% of "
                  f"the step ({p.flops / p.gemm['total'] / 1e9:.1f} GFLOP/s on these shapes, "
                  f"{100 * p.flops / p.gemm['total'] / 1e9 / rate:.0f}% of the big-GEMM rate); "
                  f"the other {ms * (p.step_seconds - p.gemm['total']):.2f} ms are outside GEMMs."]
    return "\n".join(lines)
