"""One training step of the seq2seq model: miniattn (NumPy) against the same model in PyTorch eager
and in JAX (jit).

A step is forward, backward and an Adam update of :class:`miniattn.models.seq2seq.Seq2SeqAttention`
(one head, or ``heads = H`` averaged heads with per-head value projections) on one copy batch
(``CopyTask(L, V, "subset")``: V + 3 ids with <pad>/<bos>/<eos>, S = T = L + 1)::

    NumPy:    loss, grads = model.loss_and_grads(batch);  adam.step(grads)       (miniattn.optim.Adam)
    PyTorch:  opt.zero_grad(); loss = twin.loss(batch); loss.backward(); opt.step()  (torch.optim.Adam)
    JAX:      params, m, v, loss = jit(value_and_grad + hand-written Adam)(...); block_until_ready

Before anything is timed, :func:`check_equivalence` proves each twin computes the same thing: from
the same initial parameters the loss and every gradient agree (relative max-norm error, float64
≤ 1e-10, float32 ≤ 1e-4), and after one Adam step every parameter agrees (float64 ≤ 1e-10 relative
to the parameter's scale; float32 ≤ 1e-4, see :data:`TOLERANCES`). Timings (:func:`time_step`) interleave the implementations
rep by rep with the same batch (data sampling is not timed), and summarise the per-rep ratios
NumPy / PyTorch and NumPy / JAX by their medians and interquartile ranges. PyTorch and JAX are both
optional: without one, its columns say "not installed" and the rest is timed as usual.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from benchmarks import Summary, summarize, time_interleaved
from benchmarks import jax_seq2seq
from benchmarks.jax_seq2seq import JaxSeq2Seq, jax_available
from benchmarks.torch_seq2seq import TorchSeq2Seq, torch_available
from miniattn.models.seq2seq import Seq2SeqAttention
from miniattn.optim import Adam
from miniattn.tasks import CopyTask

__all__ = ["TOLERANCES", "Setup", "make_setup", "Equivalence", "check_equivalence", "StepTiming", "time_step",
           "run", "format_table"]

#: Acceptance tolerances of :func:`check_equivalence`, by dtype: (loss and gradients, Adam-updated params).
#: The float32 parameter tolerance is the gradient one: Adam's first step is ``lr · g / (|g| + ε)``
#: with ε = 1e-8, so for a gradient entry near ε it amplifies float32 rounding of that entry ~1/ε-fold
#: (measured, single head d = 128: an ``out_W`` gradient of 3.88e-9 in NumPy vs 3.99e-9 in PyTorch —
#: rounding at 6e-7 of the gradient's scale — moved the parameter by 2.79e-4 vs 2.85e-4, i.e. 1.7e-5
#: of the parameter's scale). 1e-5, the earlier value, failed there for that reason alone.
TOLERANCES = {"float64": (1e-10, 1e-10), "float32": (1e-4, 1e-4)}


class Setup(NamedTuple):
    """A NumPy model with its Adam optimiser, one copy batch, and (where installed) the twins."""

    model: Seq2SeqAttention
    optimizer: Adam
    batch: object                 #: miniattn.batch.Seq2SeqBatch
    twin: TorchSeq2Seq | None
    twin_optimizer: object        #: torch.optim.Adam or None
    twin_batch: object            #: benchmarks.torch_seq2seq.TorchBatch or None
    jax_twin: JaxSeq2Seq | None = None     #: carries its own Adam state
    jax_batch: object = None               #: benchmarks.jax_seq2seq.JaxBatch or None
    twin_factored: TorchSeq2Seq | None = None      #: PyTorch with q W_a through the vocabulary
    twin_factored_optimizer: object = None
    jax_twin_factored: JaxSeq2Seq | None = None    #: JAX with q W_a through the vocabulary


def make_setup(dim: int, dtype="float64", *, heads: int = 1, batch_size: int = 128, length: int = 40,
               vocab: int = 60, seed: int = 0, with_torch: bool = True, with_jax: bool = False,
               lr: float = 1e-3, mode: str = "subset", factored_peers: bool = False) -> Setup:
    """Build the implementations from one seed, with identical initial parameters.

    Parameters
    ----------
    dim : int
        Model width d.
    dtype : "float32" or "float64"
    heads : int
        H; ``heads > 1`` is the multi-head model with per-head value projections (its default).
    batch_size, length, vocab : int
        B, L and V of ``CopyTask(L, V, mode)``.
    seed : int
        Seeds a SeedSequence, spawned into the parameter and the data streams.
    with_torch : bool
        Build the PyTorch twin (ignored, and None, when PyTorch is not installed).
    with_jax : bool
        Build the JAX twin (ignored, and None, when JAX is not installed).
    lr : float
        Adam learning rate of every optimiser (betas 0.9/0.999, eps 1e-8).
    mode : str
        Copy mode; ``"replacement"`` allows L > V (the scaling benchmark's long sequences).
    factored_peers : bool
        Also build the "same algorithm" twins (``factored=True``: ``q W_a`` through the vocabulary,
        as miniattn computes it) of each installed framework.
    """
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    task = CopyTask(length, vocab, mode)
    init_ss, data_ss = np.random.SeedSequence(seed).spawn(2)
    model = Seq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length,
                             task.target_length, dim=dim, heads=heads, rng=np.random.default_rng(init_ss),
                             dtype=dt)
    batch = task.sample(np.random.default_rng(data_ss), batch_size)
    twin = twin_opt = twin_batch = jtwin = jbatch = None
    if with_torch and torch_available():
        twin = TorchSeq2Seq.from_numpy(model)
        twin_opt = twin.make_adam(lr=lr)
        twin_batch = TorchSeq2Seq.batch(batch)
    twin_f = twin_f_opt = jtwin_f = None
    if with_torch and torch_available() and factored_peers:
        twin_f = TorchSeq2Seq.from_numpy(model, factored=True)
        twin_f_opt = twin_f.make_adam(lr=lr)
    if with_jax and jax_available():
        jtwin = JaxSeq2Seq.from_numpy(model, lr=lr)
        jbatch = JaxSeq2Seq.batch(batch)
        if factored_peers:
            jtwin_f = JaxSeq2Seq.from_numpy(model, factored=True, lr=lr)
    return Setup(model, Adam(model.params, lr=lr), batch, twin, twin_opt, twin_batch, jtwin, jbatch,
                 twin_f, twin_f_opt, jtwin_f)


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Relative max-norm error ``max|a − b| / max(max|b|, tiny)`` in float64."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(float(np.max(np.abs(b))), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(a - b))) / scale


class Equivalence(NamedTuple):
    """Agreement of NumPy and a twin from the same initial parameters (all relative max-norm errors)."""

    dtype: str
    dim: int
    loss_numpy: float
    loss_torch: float              #: the twin's loss (PyTorch's or JAX's, see ``framework``)
    loss_err: float
    grad_err: dict                 #: name -> relative error of the gradient
    param_err_after_adam: dict     #: name -> relative error of the parameter after one Adam step
    tol_grad: float
    tol_param: float
    framework: str = "torch"       #: "torch" or "jax"
    heads: int = 1
    factored: bool = False         #: the twin computes q W_a through the vocabulary

    @property
    def ok(self) -> bool:
        return (self.loss_err <= self.tol_grad and max(self.grad_err.values()) <= self.tol_grad
                and max(self.param_err_after_adam.values()) <= self.tol_param)


def check_equivalence(dim: int, dtype="float64", *, framework: str = "torch", heads: int = 1,
                      factored: bool = False, **kwargs) -> Equivalence:
    """Loss, gradients and one Adam step of NumPy vs the PyTorch or JAX twin from identical parameters.

    Parameters
    ----------
    dim : int
    dtype : "float32" or "float64"
    framework : "torch" or "jax"
    heads : int
    factored : bool
        Check the framework's "same algorithm" twin (``q W_a`` through the vocabulary).
    **kwargs
        Passed to :func:`make_setup` (batch_size, length, vocab, seed).

    Returns
    -------
    Equivalence
        ``ok`` is True when every error is within :data:`TOLERANCES`.

    Raises
    ------
    ImportError
        Without the framework.
    """
    if framework not in ("torch", "jax"):
        raise ValueError(f"framework must be 'torch' or 'jax', got {framework!r}")
    if framework == "torch" and not torch_available():
        raise ImportError("check_equivalence needs PyTorch (the optional benchmark extra)")
    if framework == "jax" and not jax_available():
        raise ImportError("check_equivalence(framework='jax') needs JAX (pip install 'jax[cpu]')")
    s = make_setup(dim, dtype, heads=heads, with_torch=framework == "torch", with_jax=framework == "jax",
                   factored_peers=factored, **kwargs)
    if factored:
        s = s._replace(twin=s.twin_factored, twin_optimizer=s.twin_factored_optimizer, jax_twin=s.jax_twin_factored)
    loss_np, grads_np = s.model.loss_and_grads(s.batch)
    if framework == "torch":
        loss_t, grads_t = s.twin.loss_and_grads(s.twin_batch)
    else:
        loss_t, grads_t = s.jax_twin.loss_and_grads(s.jax_batch)
    grad_err = {k: _rel_err(grads_np[k], grads_t[k]) for k in grads_np}
    # One Adam step each, from the gradients just compared (torch keeps its .grad from the backward;
    # the JAX step recomputes the same gradients inside its jitted step).
    s.optimizer.step(grads_np)
    if framework == "torch":
        s.twin_optimizer.step()
        after_t = s.twin.numpy_params()
    else:
        s.jax_twin.step(s.jax_batch)
        after_t = s.jax_twin.numpy_params()
    param_err = {k: _rel_err(s.model.params[k], after_t[k]) for k in after_t}
    tol_grad, tol_param = TOLERANCES[np.dtype(dtype).name]
    return Equivalence(np.dtype(dtype).name, int(dim), float(loss_np), float(loss_t),
                       abs(loss_np - loss_t) / abs(loss_t), grad_err, param_err, tol_grad, tol_param,
                       framework, int(heads), bool(factored))


class StepTiming(NamedTuple):
    """Interleaved timings of one training step (seconds per step)."""

    dtype: str
    dim: int
    batch_size: int
    length: int
    numpy: Summary
    torch: Summary | None
    ratio: Summary | None          #: per-rep NumPy time / PyTorch time
    heads: int = 1
    jax: Summary | None = None
    ratio_jax: Summary | None = None   #: per-rep NumPy time / JAX time
    torch_factored: Summary | None = None          #: PyTorch, q W_a through the vocabulary
    ratio_torch_factored: Summary | None = None
    jax_factored: Summary | None = None            #: JAX, q W_a through the vocabulary
    ratio_jax_factored: Summary | None = None


def time_step(dim: int, dtype="float64", *, heads: int = 1, reps: int = 30, warmup: int = 3,
              with_torch: bool = True, with_jax: bool = False, factored_peers: bool = False,
              **kwargs) -> StepTiming:
    """Median step time of each implementation and of the per-rep ratios, interleaved.

    Every model keeps training on the same batch during timing (the work per step does not depend on
    the parameter values). The JAX step compiles during the first warm-up call, so ``warmup`` must be
    at least 1 for JAX's times to exclude compilation (it is raised to 1 when JAX is timed).
    ``**kwargs`` go to :func:`make_setup`.
    """
    s = make_setup(dim, dtype, heads=heads, with_torch=with_torch, with_jax=with_jax,
                   factored_peers=factored_peers, **kwargs)

    def numpy_step():
        _, grads = s.model.loss_and_grads(s.batch)
        s.optimizer.step(grads)

    fns = {"numpy": numpy_step}
    if s.twin is not None:
        fns["torch"] = lambda: s.twin.step(s.twin_batch, s.twin_optimizer)
    if s.jax_twin is not None:
        fns["jax"] = lambda: s.jax_twin.step(s.jax_batch)
        warmup = max(1, warmup)
    if s.twin_factored is not None:
        fns["torch_factored"] = lambda: s.twin_factored.step(s.twin_batch, s.twin_factored_optimizer)
    if s.jax_twin_factored is not None:
        fns["jax_factored"] = lambda: s.jax_twin_factored.step(s.jax_batch)
    times = time_interleaved(fns, reps=reps, warmup=warmup)
    t_np = summarize(times["numpy"])
    out = {}
    for fw in ("torch", "jax", "torch_factored", "jax_factored"):
        if fw in times:
            out[fw] = (summarize(times[fw]), summarize(times["numpy"] / times[fw]))
        else:
            out[fw] = (None, None)
    return StepTiming(np.dtype(dtype).name, int(dim), s.batch.source.shape[0], s.batch.source.shape[1] - 1,
                      t_np, out["torch"][0], out["torch"][1], int(heads), out["jax"][0], out["jax"][1],
                      *out["torch_factored"], *out["jax_factored"])


def _name(framework: str, factored: bool = False) -> str:
    return ("PyTorch" if framework == "torch" else "JAX") + (" (factored)" if factored else "")


def _report(e: Equivalence) -> str:
    name = _name(e.framework, e.factored)
    return (f"  equivalence {name} H={e.heads} {e.dtype} d={e.dim}: loss {e.loss_err:.1e}, grads ≤ "
            f"{max(e.grad_err.values()):.1e}, params after Adam ≤ {max(e.param_err_after_adam.values()):.1e} "
            f"(tolerances {e.tol_grad:g}/{e.tol_param:g}) -> {'OK' if e.ok else 'FAILED'}")


def run(dims=(64, 256), dtypes=("float64", "float32"), *, heads=(1,), reps: int = 30, warmup: int = 3,
        batch_size: int = 128, length: int = 40, vocab: int = 60, with_torch: bool = True,
        with_jax: bool = True, factored_peers: bool = True, verbose: bool = True) -> dict:
    """Equivalence checks, then interleaved timings, for every (heads, dtype, d).

    With ``factored_peers`` each framework is timed twice: as a user would first write the model
    (``q W_a`` for every position) and with miniattn's algorithm (``q W_a`` through the vocabulary,
    docs/EQUATIONS.md §1.8), so that the ratio against the second separates the algorithm from the
    implementation.

    ``reps`` may be an int or a callable ``(heads, dtype, d) -> int`` (fewer reps for the slow cells).

    Returns
    -------
    dict
        ``{"equivalence": [Equivalence, ...] (empty without PyTorch and JAX), "timings":
        [StepTiming, ...], "torch": bool, "jax": bool, "jax_missing": str or None}``.
    """
    use_torch = with_torch and torch_available()
    use_jax = with_jax and jax_available()
    jax_missing = None
    if with_jax and not use_jax:
        jax_missing = jax_seq2seq.jax_unavailable_reason() or "not installed"
    size = dict(batch_size=batch_size, length=length, vocab=vocab)
    cells = [(H, dt, d) for H in heads for dt in dtypes for d in dims]
    frameworks = [fw for fw, on in (("torch", use_torch), ("jax", use_jax)) if on]
    equiv = []
    for fw in frameworks:
        for factored in ((False, True) if factored_peers else (False,)):
            for H, dt, d in cells:
                e = check_equivalence(d, dt, framework=fw, heads=H, factored=factored, **size)
                equiv.append(e)
                if verbose:
                    print(_report(e), flush=True)
                if not e.ok:
                    raise AssertionError(f"NumPy and {_name(fw, factored)} disagree (H={H}, {dt}, d={d}): {e}")
    if verbose:
        if not use_torch:
            print("  PyTorch is not installed (or --no-torch): no PyTorch check or timing", flush=True)
        if not use_jax:
            print(f"  JAX is not available ({jax_missing or '--no-jax'}): no JAX check or timing", flush=True)
    timings = []
    for H, dt, d in cells:
        n = reps(H, dt, d) if callable(reps) else reps
        t = time_step(d, dt, heads=H, reps=n, warmup=warmup, with_torch=use_torch, with_jax=use_jax,
                      factored_peers=factored_peers, **size)
        timings.append(t)
        if verbose:
            print("  " + _row(t), flush=True)
    return {"equivalence": equiv, "timings": timings, "torch": use_torch, "jax": use_jax,
            "jax_missing": jax_missing}


def _ms(x: Summary | None) -> str:
    return "not installed" if x is None else f"{1e3 * x.median:.1f} ({1e3 * x.iqr:.1f})"


def _ratio(r: Summary | None, bold: bool = True) -> str:
    if r is None:
        return "—"
    med = f"**{r.median:.2f}**" if bold else f"{r.median:.2f}"
    return f"{med} [{r.q25:.2f}, {r.q75:.2f}]"


def _row(t: StepTiming) -> str:
    base = f"H={t.heads} {t.dtype} d={t.dim}: NumPy {1e3 * t.numpy.median:.1f} ms (IQR {1e3 * t.numpy.iqr:.1f})"
    for name, x, r in (("PyTorch", t.torch, t.ratio), ("JAX", t.jax, t.ratio_jax),
                       ("PyTorch-f", t.torch_factored, t.ratio_torch_factored),
                       ("JAX-f", t.jax_factored, t.ratio_jax_factored)):
        if x is None:
            if not name.endswith("-f"):
                base += f", {name} not installed"
        else:
            base += (f", {name} {1e3 * x.median:.1f} ms (IQR {1e3 * x.iqr:.1f}), NumPy/{name} "
                     f"{r.median:.2f} [{r.q25:.2f}, {r.q75:.2f}]")
    return base


def format_table(result: dict) -> str:
    """Markdown tables of :func:`run`: ms per step (median, IQR), ratios NumPy / twin (median [IQR]),
    then the equivalence checks."""
    lines = ["| heads | dtype | d | B | L | NumPy ms (median, IQR) | PyTorch ms | JAX ms | "
             "NumPy / PyTorch median [q25, q75] | NumPy / JAX median [q25, q75] | reps |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in result["timings"]:
        lines.append(f"| {t.heads} | {t.dtype} | {t.dim} | {t.batch_size} | {t.length} | {_ms(t.numpy)} | "
                     f"{_ms(t.torch)} | {_ms(t.jax)} | {_ratio(t.ratio)} | {_ratio(t.ratio_jax)} | {t.numpy.n} |")
    if any(t.torch_factored is not None or t.jax_factored is not None for t in result["timings"]):
        lines += ["", "Against the same algorithm: each framework computing q W_a through the vocabulary too "
                  "(`factored=True` twins, timed in the same interleaved reps).", "",
                  "| heads | dtype | d | PyTorch (factored) ms | JAX (factored) ms | "
                  "NumPy / PyTorch (factored) median [q25, q75] | NumPy / JAX (factored) median [q25, q75] |",
                  "|---|---|---|---|---|---|---|"]
        for t in result["timings"]:
            lines.append(f"| {t.heads} | {t.dtype} | {t.dim} | {_ms(t.torch_factored)} | {_ms(t.jax_factored)} | "
                         f"{_ratio(t.ratio_torch_factored)} | {_ratio(t.ratio_jax_factored)} |")
    if result.get("jax_missing"):
        lines += ["", f"JAX: {result['jax_missing']} — its columns are empty."]
    if result["equivalence"]:
        lines += ["", "| twin | heads | dtype | d | loss rel. err | max grad rel. err | max param rel. err after Adam "
                  "| tolerances |", "|---|---|---|---|---|---|---|---|"]
        for e in result["equivalence"]:
            name = _name(e.framework, e.factored)
            lines.append(f"| {name} | {e.heads} | {e.dtype} | {e.dim} | {e.loss_err:.1e} | "
                         f"{max(e.grad_err.values()):.1e} | {max(e.param_err_after_adam.values()):.1e} | "
                         f"{e.tol_grad:g} / {e.tol_param:g} |")
    return "\n".join(lines)
