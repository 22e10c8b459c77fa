"""One training step of the seq2seq model: miniattn (NumPy) against the same model in PyTorch eager.

A step is forward, backward and an Adam update of :class:`miniattn.models.seq2seq.Seq2SeqAttention`
on one copy batch (``CopyTask(L, V, "subset")``: V + 3 ids with <pad>/<bos>/<eos>, S = T = L + 1)::

    NumPy:    loss, grads = model.loss_and_grads(batch);  adam.step(grads)       (miniattn.optim.Adam)
    PyTorch:  opt.zero_grad(); loss = twin.loss(batch); loss.backward(); opt.step()  (torch.optim.Adam)

Before anything is timed, :func:`check_equivalence` proves the two compute the same thing: from the
same initial parameters the loss and every gradient agree (relative max-norm error, float64 ≤ 1e-10,
float32 ≤ 1e-4), and after one Adam step every parameter agrees (float64 ≤ 1e-10 relative to the
parameter's scale; float32 ≤ 1e-5). Timings (:func:`time_step`) interleave the two rep by rep with
the same batch (data sampling is not timed), and summarise the per-rep ratio NumPy / PyTorch by its
median and interquartile range. Without PyTorch the NumPy step is timed alone and the table says so.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from benchmarks import Summary, summarize, time_interleaved
from benchmarks.torch_seq2seq import TorchSeq2Seq, torch_available
from miniattn.models.seq2seq import Seq2SeqAttention
from miniattn.optim import Adam
from miniattn.tasks import CopyTask

__all__ = ["TOLERANCES", "Setup", "make_setup", "Equivalence", "check_equivalence", "StepTiming", "time_step",
           "run", "format_table"]

#: Acceptance tolerances of :func:`check_equivalence`, by dtype: (loss and gradients, Adam-updated params).
TOLERANCES = {"float64": (1e-10, 1e-10), "float32": (1e-4, 1e-5)}


class Setup(NamedTuple):
    """A NumPy model with its Adam optimiser, one copy batch, and (if PyTorch exists) the twin."""

    model: Seq2SeqAttention
    optimizer: Adam
    batch: object                 #: miniattn.batch.Seq2SeqBatch
    twin: TorchSeq2Seq | None
    twin_optimizer: object        #: torch.optim.Adam or None
    twin_batch: object            #: benchmarks.torch_seq2seq.TorchBatch or None


def make_setup(dim: int, dtype="float64", *, batch_size: int = 128, length: int = 40, vocab: int = 60,
               seed: int = 0, with_torch: bool = True, lr: float = 1e-3, mode: str = "subset") -> Setup:
    """Build both implementations from one seed, with identical initial parameters.

    Parameters
    ----------
    dim : int
        Model width d.
    dtype : "float32" or "float64"
    batch_size, length, vocab : int
        B, L and V of ``CopyTask(L, V, mode)``.
    seed : int
        Seeds a SeedSequence, spawned into the parameter and the data streams.
    with_torch : bool
        Build the PyTorch twin (ignored, and None, when PyTorch is not installed).
    lr : float
        Adam learning rate of both optimisers (betas 0.9/0.999, eps 1e-8).
    mode : str
        Copy mode; ``"replacement"`` allows L > V (the scaling benchmark's long sequences).
    """
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    task = CopyTask(length, vocab, mode)
    init_ss, data_ss = np.random.SeedSequence(seed).spawn(2)
    model = Seq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length,
                             task.target_length, dim=dim, rng=np.random.default_rng(init_ss), dtype=dt)
    batch = task.sample(np.random.default_rng(data_ss), batch_size)
    twin = twin_opt = twin_batch = None
    if with_torch and torch_available():
        twin = TorchSeq2Seq.from_numpy(model)
        twin_opt = twin.make_adam(lr=lr)
        twin_batch = TorchSeq2Seq.batch(batch)
    return Setup(model, Adam(model.params, lr=lr), batch, twin, twin_opt, twin_batch)


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Relative max-norm error ``max|a − b| / max(max|b|, tiny)`` in float64."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(float(np.max(np.abs(b))), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(a - b))) / scale


class Equivalence(NamedTuple):
    """Agreement of NumPy and PyTorch from the same initial parameters (all relative max-norm errors)."""

    dtype: str
    dim: int
    loss_numpy: float
    loss_torch: float
    loss_err: float
    grad_err: dict                 #: name -> relative error of the gradient
    param_err_after_adam: dict     #: name -> relative error of the parameter after one Adam step
    tol_grad: float
    tol_param: float

    @property
    def ok(self) -> bool:
        return (self.loss_err <= self.tol_grad and max(self.grad_err.values()) <= self.tol_grad
                and max(self.param_err_after_adam.values()) <= self.tol_param)


def check_equivalence(dim: int, dtype="float64", **kwargs) -> Equivalence:
    """Loss, gradients and one Adam step of NumPy vs PyTorch from identical parameters.

    Parameters
    ----------
    dim : int
    dtype : "float32" or "float64"
    **kwargs
        Passed to :func:`make_setup` (batch_size, length, vocab, seed).

    Returns
    -------
    Equivalence
        ``ok`` is True when every error is within :data:`TOLERANCES`.

    Raises
    ------
    ImportError
        Without PyTorch.
    """
    if not torch_available():
        raise ImportError("check_equivalence needs PyTorch (the optional benchmark extra)")
    s = make_setup(dim, dtype, with_torch=True, **kwargs)
    loss_np, grads_np = s.model.loss_and_grads(s.batch)
    loss_t, grads_t = s.twin.loss_and_grads(s.twin_batch)
    grad_err = {k: _rel_err(grads_np[k], grads_t[k]) for k in grads_np}
    # One Adam step each, from the gradients just compared (torch keeps its .grad from the backward).
    s.optimizer.step(grads_np)
    s.twin_optimizer.step()
    after_t = s.twin.numpy_params()
    param_err = {k: _rel_err(s.model.params[k], after_t[k]) for k in after_t}
    tol_grad, tol_param = TOLERANCES[np.dtype(dtype).name]
    return Equivalence(np.dtype(dtype).name, int(dim), float(loss_np), float(loss_t),
                       abs(loss_np - loss_t) / abs(loss_t), grad_err, param_err, tol_grad, tol_param)


class StepTiming(NamedTuple):
    """Interleaved timings of one training step (seconds per step)."""

    dtype: str
    dim: int
    batch_size: int
    length: int
    numpy: Summary
    torch: Summary | None
    ratio: Summary | None          #: per-rep NumPy time / PyTorch time


def time_step(dim: int, dtype="float64", *, reps: int = 30, warmup: int = 3, with_torch: bool = True,
              **kwargs) -> StepTiming:
    """Median step time of each implementation and of their per-rep ratio, interleaved.

    Both models keep training on the same batch during timing (the work per step does not depend on
    the parameter values). ``**kwargs`` go to :func:`make_setup`.
    """
    s = make_setup(dim, dtype, with_torch=with_torch, **kwargs)

    def numpy_step():
        _, grads = s.model.loss_and_grads(s.batch)
        s.optimizer.step(grads)

    fns = {"numpy": numpy_step}
    if s.twin is not None:
        fns["torch"] = lambda: s.twin.step(s.twin_batch, s.twin_optimizer)
    times = time_interleaved(fns, reps=reps, warmup=warmup)
    t_np = summarize(times["numpy"])
    if "torch" not in times:
        return StepTiming(np.dtype(dtype).name, int(dim), s.batch.source.shape[0], s.batch.source.shape[1] - 1,
                          t_np, None, None)
    return StepTiming(np.dtype(dtype).name, int(dim), s.batch.source.shape[0], s.batch.source.shape[1] - 1,
                      t_np, summarize(times["torch"]), summarize(times["numpy"] / times["torch"]))


def run(dims=(64, 256), dtypes=("float64", "float32"), *, reps: int = 30, warmup: int = 3,
        batch_size: int = 128, length: int = 40, vocab: int = 60, with_torch: bool = True,
        verbose: bool = True) -> dict:
    """Equivalence checks, then interleaved timings, for every (dtype, d).

    Returns
    -------
    dict
        ``{"equivalence": [Equivalence, ...] (empty without PyTorch), "timings": [StepTiming, ...],
        "torch": bool}``.
    """
    use_torch = with_torch and torch_available()
    size = dict(batch_size=batch_size, length=length, vocab=vocab)
    equiv = []
    if use_torch:
        for dt in dtypes:
            for d in dims:
                e = check_equivalence(d, dt, **size)
                equiv.append(e)
                if verbose:
                    print(f"  equivalence {dt} d={d}: loss {e.loss_err:.1e}, grads ≤ {max(e.grad_err.values()):.1e}, "
                          f"params after Adam ≤ {max(e.param_err_after_adam.values()):.1e} "
                          f"(tolerances {e.tol_grad:g}/{e.tol_param:g}) -> {'OK' if e.ok else 'FAILED'}", flush=True)
                if not e.ok:
                    raise AssertionError(f"NumPy and PyTorch disagree ({dt}, d={d}): {e}")
    elif verbose:
        print("  PyTorch is not installed: no equivalence check; timing NumPy alone", flush=True)
    timings = []
    for dt in dtypes:
        for d in dims:
            t = time_step(d, dt, reps=reps, warmup=warmup, with_torch=use_torch, **size)
            timings.append(t)
            if verbose:
                print("  " + _row(t), flush=True)
    return {"equivalence": equiv, "timings": timings, "torch": use_torch}


def _row(t: StepTiming) -> str:
    base = f"{t.dtype} d={t.dim}: NumPy {1e3 * t.numpy.median:.1f} ms (IQR {1e3 * t.numpy.iqr:.1f})"
    if t.torch is None:
        return base + ", PyTorch not installed"
    return (base + f", PyTorch {1e3 * t.torch.median:.1f} ms (IQR {1e3 * t.torch.iqr:.1f}), "
            f"ratio {t.ratio.median:.2f} [{t.ratio.q25:.2f}, {t.ratio.q75:.2f}]")


def format_table(result: dict) -> str:
    """Markdown table of :func:`run`'s timings (ms per step; ratio = NumPy / PyTorch, median [IQR])."""
    lines = ["| dtype | d | B | L | NumPy ms (median, IQR) | PyTorch ms (median, IQR) | NumPy / PyTorch median [q25, q75] | reps |",
             "|---|---|---|---|---|---|---|---|"]
    for t in result["timings"]:
        np_ms = f"{1e3 * t.numpy.median:.1f} ({1e3 * t.numpy.iqr:.1f})"
        if t.torch is None:
            torch_ms, ratio = "not installed", "—"
        else:
            torch_ms = f"{1e3 * t.torch.median:.1f} ({1e3 * t.torch.iqr:.1f})"
            ratio = f"**{t.ratio.median:.2f}** [{t.ratio.q25:.2f}, {t.ratio.q75:.2f}]"
        lines.append(f"| {t.dtype} | {t.dim} | {t.batch_size} | {t.length} | {np_ms} | {torch_ms} | {ratio} | {t.numpy.n} |")
    if result["equivalence"]:
        lines += ["", "| dtype | d | loss rel. err | max grad rel. err | max param rel. err after Adam | tolerances |",
                  "|---|---|---|---|---|---|"]
        for e in result["equivalence"]:
            lines.append(f"| {e.dtype} | {e.dim} | {e.loss_err:.1e} | {max(e.grad_err.values()):.1e} | "
                         f"{max(e.param_err_after_adam.values()):.1e} | {e.tol_grad:g} / {e.tol_param:g} |")
    return "\n".join(lines)
