"""The recurrent step against PyTorch: the hand-written BiLSTM and the recurrent seq2seq model.

Two comparisons, each run with one thread in both libraries, in float32 and float64:

(a) **BiLSTM layer**, forward + backward: :func:`miniattn.recurrent.bilstm_forward` /
    :func:`~miniattn.recurrent.bilstm_backward` against ``torch.nn.LSTM(bidirectional=True)`` with the
    same weights (``weight_ih = W_xᵀ``, ``weight_hh = W_hᵀ``, ``bias_ih = b``, ``bias_hh = 0``), on
    inputs (B, S, d) = (128, 41, d) with hidden size H = d / 2 per direction (the model's encoder)::

        NumPy:    (out, _), cache = bilstm_forward(x, fwd, rev);  bilstm_backward(dout, None, cache)
        PyTorch:  out, _ = lstm(x);  out.backward(dout)             (x and the weights require grad)

(b) **One Adam training step** of :class:`miniattn.models.rnn_seq2seq.RecurrentSeq2SeqAttention`
    (BiLSTM encoder of hidden size H = d / 2, LSTM decoder of size 2H = d, bilinear attention, no
    input feeding) on one copy batch (``CopyTask(40, 60, "subset")``, B = 128, S = T = 41) against
    :class:`TorchRecurrentSeq2Seq`, the same model written with two ``nn.LSTM`` modules and the same
    attention/output math, started from a copy of the NumPy parameters::

        NumPy:    loss, grads = model.loss_and_grads(batch);  adam.step(grads)    (miniattn.optim.Adam)
        PyTorch:  opt.zero_grad(); twin.loss(batch).backward(); opt.step()        (torch.optim.Adam)

"Model dim" is d (= 2H, the width of the decoder, the attention and the contexts); the full table
uses d = 128 and 256.

Before anything is timed, :func:`check_layer_equivalence` and :func:`check_model_equivalence` show the
two sides compute the same thing from the same parameters: outputs (layer) or the loss (model) and
every gradient agree to a relative max-norm error of 1e-10 in float64 and 1e-4 in float32, and (model)
every parameter after one Adam step to 1e-10 / 1e-5 relative to its scale. For that last check both
optimisers step from the *same* gradients (NumPy's, copied into the twin's ``.grad``): Adam's first
step ``lr · g / (|g| + ε)`` is ill-conditioned where ``|g| ~ ε = 1e-8``, so in float32 the rounding of
such tiny gradient entries (gradients agreeing to 3e-6 in max-norm) moves zero-initialised biases,
whose scale after one step is only ``lr``, by up to ~1e-3 of that scale — a property of float32 Adam,
not a disagreement. The gradients themselves are compared separately, each side its own.
``nn.LSTM`` carries two bias vectors whose sum is our ``b``; the twin trains ``bias_ih`` and freezes
``bias_hh`` at zero, so both optimisers update exactly the same parameters.

Timing interleaves NumPy and PyTorch rep by rep on the same inputs (:func:`benchmarks.time_interleaved`,
data sampling untimed) and summarises the per-rep ratios NumPy time / PyTorch time by their median and
interquartile range: a ratio above 1 means NumPy is slower.

Threads. Both libraries use one thread. :func:`limit_threads` uses ``threadpoolctl`` when it is
installed (it limits every BLAS/OpenMP pool in the process); otherwise it sets NumPy's bundled
OpenBLAS through its C API (:func:`benchmarks.set_threads`) and calls ``torch.set_num_threads(1)``.
For the OpenMP pools that only read the environment at start-up, launch the process with
``OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1``; the thread counts actually in force
are read back and printed with the table.

Run::

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m benchmarks.recurrent_speed --markdown
    python -m benchmarks.recurrent_speed --quick          # tiny sizes, 2 reps: a smoke run

Without PyTorch (it is an optional dependency) the NumPy times are printed alone, with a note.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NamedTuple

import numpy as np

from benchmarks import Summary, set_threads, summarize, thread_method, time_interleaved
from benchmarks.torch_seq2seq import TorchBatch, TorchSeq2Seq
from miniattn.models.rnn_seq2seq import RecurrentSeq2SeqAttention
from miniattn.optim import Adam
from miniattn.recurrent import LSTMParams, bilstm_backward, bilstm_forward
from miniattn.tasks import CopyTask

try:  # optional benchmark dependency
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - exercised only where torch is absent
    torch = None
    F = None

__all__ = ["TOLERANCES", "torch_available", "limit_threads", "TorchRecurrentSeq2Seq", "Equivalence",
           "check_layer_equivalence", "check_model_equivalence", "Timing", "time_layer", "time_model",
           "run", "format_table", "main"]

#: Acceptance tolerances by dtype: (outputs/loss and gradients, parameters after one Adam step).
TOLERANCES = {"float64": (1e-10, 1e-10), "float32": (1e-4, 1e-5)}

#: Full-size settings (the issue's table) and the ``--quick`` smoke settings.
FULL = dict(dims=(128, 256), dtypes=("float32", "float64"), batch_size=128, length=40, vocab=60, reps=20,
            warmup=2)
QUICK = dict(dims=(8,), dtypes=("float32", "float64"), batch_size=4, length=5, vocab=7, reps=2, warmup=0)


def torch_available() -> bool:
    """True when PyTorch can be imported."""
    return torch is not None


def _require_torch() -> None:
    if torch is None:
        raise ImportError("PyTorch is not installed (pip install torch, or `make bench`)")


def _torch_dtype(dtype):
    return torch.float64 if np.dtype(dtype) == np.float64 else torch.float32


def _check_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def _check_dim(dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 2 or dim % 2:
        raise ValueError(f"dim must be an even integer >= 2 (hidden size dim / 2 per direction), got {dim!r}")
    return int(dim)


def _rel_err(a, b) -> float:
    """Relative max-norm error ``max|a − b| / max(max|b|, tiny)`` in float64."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(float(np.max(np.abs(b))), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(a - b))) / scale


# --------------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------------

def limit_threads(n: int = 1) -> dict:
    """Limit NumPy's BLAS and PyTorch to ``n`` threads (:func:`benchmarks.set_threads`); say how.

    Pools that read ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` only at start-up must be set in
    the environment.

    Returns
    -------
    dict
        ``{"method": str, "numpy_blas": int or None, "torch": int or None, "env": {...}}``.
    """
    report = set_threads(n)
    method = thread_method() + (" + torch.set_num_threads" if torch is not None else "")
    env = {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return {"method": method, "numpy_blas": report["numpy_blas"], "torch": report["torch"], "env": env}


# --------------------------------------------------------------------------------------------------
# (a) The BiLSTM layer
# --------------------------------------------------------------------------------------------------

class LayerSetup(NamedTuple):
    x: np.ndarray                  #: (B, S, d)
    dout: np.ndarray               #: (B, S, 2H) upstream gradient of the outputs
    forward: LSTMParams
    reverse: LSTMParams
    lstm: object                   #: torch.nn.LSTM(bidirectional=True) or None
    tx: object                     #: x as a leaf tensor (requires grad) or None
    tdout: object                  #: dout as a tensor or None


def _lstm_param_names(suffix: str) -> tuple[str, str, str, str]:
    return (f"weight_ih_l0{suffix}", f"weight_hh_l0{suffix}", f"bias_ih_l0{suffix}", f"bias_hh_l0{suffix}")


def _load_lstm(lstm, suffix: str, W_x, W_h, b) -> None:
    """Copy (W_x, W_h, b) into one direction of ``lstm``; ``bias_hh`` is zeroed and frozen."""
    w_ih, w_hh, b_ih, b_hh = (getattr(lstm, name) for name in _lstm_param_names(suffix))
    with torch.no_grad():
        w_ih.copy_(torch.from_numpy(np.ascontiguousarray(np.asarray(W_x).T)))
        w_hh.copy_(torch.from_numpy(np.ascontiguousarray(np.asarray(W_h).T)))
        b_ih.copy_(torch.from_numpy(np.asarray(b)))
        b_hh.zero_()
    b_hh.requires_grad_(False)


def make_layer_setup(dim: int, dtype="float64", *, batch_size: int = 128, length: int = 40, seed: int = 0,
                     with_torch: bool = True) -> LayerSetup:
    """Random inputs, upstream gradient and weights (scale 1/√H) for a BiLSTM of hidden size dim / 2."""
    dim, dt = _check_dim(dim), _check_dtype(dtype)
    H, S = dim // 2, length + 1
    rng = np.random.default_rng(np.random.SeedSequence([seed, dim, 7]))
    scale = 1.0 / np.sqrt(H)

    def draw(*shape, s=1.0):
        return (s * rng.standard_normal(shape)).astype(dt)

    x, dout = draw(batch_size, S, dim), draw(batch_size, S, 2 * H)
    fwd = LSTMParams(None, None, draw(dim, 4 * H, s=scale), draw(H, 4 * H, s=scale), draw(4 * H, s=scale))
    rev = LSTMParams(None, None, draw(dim, 4 * H, s=scale), draw(H, 4 * H, s=scale), draw(4 * H, s=scale))
    lstm = tx = tdout = None
    if with_torch and torch is not None:
        lstm = torch.nn.LSTM(dim, H, batch_first=True, bidirectional=True, dtype=_torch_dtype(dt))
        _load_lstm(lstm, "", *fwd[2:])
        _load_lstm(lstm, "_reverse", *rev[2:])
        tx = torch.tensor(x, requires_grad=True)
        tdout = torch.tensor(dout)
    return LayerSetup(x, dout, fwd, rev, lstm, tx, tdout)


def _numpy_layer(s: LayerSetup):
    (out, _), cache = bilstm_forward(s.x, s.forward, s.reverse)
    return out, bilstm_backward(s.dout, None, cache)


def _torch_layer(s: LayerSetup):
    for p in s.lstm.parameters():
        p.grad = None
    s.tx.grad = None
    out, _ = s.lstm(s.tx)
    out.backward(s.tdout)
    return out


# --------------------------------------------------------------------------------------------------
# (b) The recurrent seq2seq model and its PyTorch twin
# --------------------------------------------------------------------------------------------------

class TorchRecurrentSeq2Seq:
    """:class:`~miniattn.models.rnn_seq2seq.RecurrentSeq2SeqAttention` (LSTM cells) in PyTorch eager mode.

    ``enc = nn.LSTM(d, H, bidirectional=True)`` over the source embeddings, ``dec = nn.LSTM(d, 2H)``
    from the initial state ``([→h_fin ; ←h_fin], [→c_fin ; ←c_fin])`` over the target-input
    embeddings, then ``scores = (q W_a) hᵀ`` (masked), ``α = softmax``, ``c = α h``,
    ``logits = [q ; c] W_o + b`` and the mean cross-entropy over counted targets. Unpadded sources
    only (the copy task's): a padded source would need packed sequences.

    Parameters are copied from the NumPy model (``weight_ih = W_xᵀ``, ``weight_hh = W_hᵀ``,
    ``bias_ih = b``, ``bias_hh = 0`` frozen), so stepping the twin never moves the NumPy model.
    """

    def __init__(self, model: RecurrentSeq2SeqAttention):
        _require_torch()
        if model.encoder != "lstm":
            raise ValueError(f"the twin models LSTM cells only, got encoder={model.encoder!r}")
        p, H, d = model.params, model.hidden, model.dim
        tdt = _torch_dtype(model.dtype)
        self.shared_embeddings = model.shared_embeddings
        self.uniform = bool(model.uniform)
        self.hidden = H
        self.enc = torch.nn.LSTM(d, H, batch_first=True, bidirectional=True, dtype=tdt)
        self.dec = torch.nn.LSTM(d, 2 * H, batch_first=True, dtype=tdt)
        _load_lstm(self.enc, "", p["enc_fwd_W_x"], p["enc_fwd_W_h"], p["enc_fwd_b"])
        _load_lstm(self.enc, "_reverse", p["enc_rev_W_x"], p["enc_rev_W_h"], p["enc_rev_b"])
        _load_lstm(self.dec, "", p["dec_W_x"], p["dec_W_h"], p["dec_b"])
        self.tensors = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()
                        if k in ("embed", "src_embed", "tgt_embed", "score", "out_W", "out_b")}
        # name -> (tensor, transposed?) for every trainable parameter, keyed like model.params
        self._map = {}
        for name in p:
            if name in self.tensors:
                self._map[name] = (self.tensors[name], False)
        for prefix, module, suffix in (("enc_fwd_", self.enc, ""), ("enc_rev_", self.enc, "_reverse"),
                                       ("dec_", self.dec, "")):
            w_ih, w_hh, b_ih, _ = (getattr(module, n) for n in _lstm_param_names(suffix))
            self._map[prefix + "W_x"] = (w_ih, True)
            self._map[prefix + "W_h"] = (w_hh, True)
            self._map[prefix + "b"] = (b_ih, False)
        self._order = list(p)

    def parameters(self) -> list:
        """The trainable tensors, in the order of the NumPy model's params (``bias_hh`` excluded)."""
        return [self._map[k][0] for k in self._order]

    @staticmethod
    def batch(batch) -> TorchBatch:
        _require_torch()
        if not np.all(batch.source_mask):
            raise ValueError("the PyTorch twin takes unpadded sources only (every source_mask entry True)")
        return TorchSeq2Seq.batch(batch)

    def loss(self, tb: TorchBatch) -> "torch.Tensor":
        t = self.tensors
        src_table = t["embed"] if self.shared_embeddings else t["src_embed"]
        tgt_table = t["embed"] if self.shared_embeddings else t["tgt_embed"]
        enc, (h_n, c_n) = self.enc(F.embedding(tb.source, src_table))          # (B, S, 2H), (2, B, H)
        init = (torch.cat([h_n[0], h_n[1]], dim=-1)[None], torch.cat([c_n[0], c_n[1]], dim=-1)[None])
        q, _ = self.dec(F.embedding(tb.target_in, tgt_table), init)              # (B, T, 2H)
        if self.uniform:
            scores = torch.zeros(q.shape[0], q.shape[1], enc.shape[1], dtype=q.dtype)
        else:
            scores = torch.matmul(q @ t["score"], enc.transpose(1, 2))
        scores = scores.masked_fill(~tb.source_mask[:, None, :], float("-inf"))
        context = torch.bmm(F.softmax(scores, dim=-1), enc)
        logits = F.linear(torch.cat([q, context], dim=-1), t["out_W"].t(), t["out_b"])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tb.targets, ignore_index=-100)

    def _to_numpy(self, name: str, tensor) -> np.ndarray:
        a = tensor.detach().numpy()
        return (a.T if self._map[name][1] else a).copy()

    def loss_and_grads(self, tb: TorchBatch) -> tuple[float, dict[str, np.ndarray]]:
        for p in self.parameters():
            p.grad = None
        loss = self.loss(tb)
        loss.backward()
        grads = {}
        for k in self._order:
            tensor = self._map[k][0]
            g = torch.zeros_like(tensor) if tensor.grad is None else tensor.grad
            grads[k] = self._to_numpy(k, g)
        return float(loss.detach()), grads

    def set_grads(self, grads: dict[str, np.ndarray]) -> None:
        """Overwrite every parameter's ``.grad`` with NumPy gradients (keyed like the NumPy params)."""
        for k in self._order:
            tensor, transposed = self._map[k]
            g = np.asarray(grads[k])
            tensor.grad = torch.tensor(np.ascontiguousarray(g.T if transposed else g), dtype=tensor.dtype)

    def numpy_params(self) -> dict[str, np.ndarray]:
        return {k: self._to_numpy(k, self._map[k][0]) for k in self._order}

    def make_adam(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        return torch.optim.Adam(self.parameters(), lr=lr, betas=betas, eps=eps)

    def step(self, tb: TorchBatch, optimizer) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = self.loss(tb)
        loss.backward()
        optimizer.step()
        return loss.item()


class ModelSetup(NamedTuple):
    model: RecurrentSeq2SeqAttention
    optimizer: Adam
    batch: object
    twin: TorchRecurrentSeq2Seq | None
    twin_optimizer: object
    twin_batch: TorchBatch | None


def make_model_setup(dim: int, dtype="float64", *, batch_size: int = 128, length: int = 40, vocab: int = 60,
                     seed: int = 0, lr: float = 1e-3, with_torch: bool = True) -> ModelSetup:
    """A NumPy model (d = dim, H = dim / 2) with Adam, one copy batch and (if installed) the twin."""
    dim, dt = _check_dim(dim), _check_dtype(dtype)
    task = CopyTask(length, vocab, "subset")
    init_ss, data_ss = np.random.SeedSequence(seed).spawn(2)
    model = RecurrentSeq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length,
                                      task.target_length, dim=dim, hidden=dim // 2,
                                      rng=np.random.default_rng(init_ss), dtype=dt)
    batch = task.sample(np.random.default_rng(data_ss), batch_size)
    twin = twin_opt = twin_batch = None
    if with_torch and torch is not None:
        twin = TorchRecurrentSeq2Seq(model)
        twin_opt = twin.make_adam(lr=lr)
        twin_batch = TorchRecurrentSeq2Seq.batch(batch)
    return ModelSetup(model, Adam(model.params, lr=lr), batch, twin, twin_opt, twin_batch)


# --------------------------------------------------------------------------------------------------
# Equivalence
# --------------------------------------------------------------------------------------------------

class Equivalence(NamedTuple):
    """Agreement of NumPy and PyTorch from the same parameters (relative max-norm errors)."""

    bench: str                 #: "bilstm" or "model"
    dtype: str
    dim: int
    value_err: float           #: outputs (bilstm) or loss (model)
    grad_err: dict             #: name -> relative error of the gradient
    param_err: dict            #: name -> error after one Adam step (model; empty for bilstm)
    tol_grad: float
    tol_param: float

    @property
    def ok(self) -> bool:
        return (self.value_err <= self.tol_grad and max(self.grad_err.values()) <= self.tol_grad
                and (not self.param_err or max(self.param_err.values()) <= self.tol_param))


def check_layer_equivalence(dim: int, dtype="float64", **kwargs) -> Equivalence:
    """BiLSTM outputs and the gradients of x and of both directions' weights, NumPy vs ``nn.LSTM``."""
    _require_torch()
    s = make_layer_setup(dim, dtype, **kwargs)
    out, g = _numpy_layer(s)
    out_t = _torch_layer(s)
    grad_err = {"x": _rel_err(g.x, s.tx.grad)}
    for name, suffix, gd in (("fwd", "", g.forward), ("rev", "_reverse", g.reverse)):
        w_ih, w_hh, b_ih, b_hh = (getattr(s.lstm, n) for n in _lstm_param_names(suffix))
        grad_err[f"{name}_W_x"] = _rel_err(gd.W_x, w_ih.grad.T)
        grad_err[f"{name}_W_h"] = _rel_err(gd.W_h, w_hh.grad.T)
        grad_err[f"{name}_b"] = _rel_err(gd.b, b_ih.grad)
    tol_grad, tol_param = TOLERANCES[np.dtype(dtype).name]
    return Equivalence("bilstm", np.dtype(dtype).name, int(dim), _rel_err(out, out_t.detach()), grad_err, {},
                       tol_grad, tol_param)


def check_model_equivalence(dim: int, dtype="float64", **kwargs) -> Equivalence:
    """Loss, every gradient and every parameter after one Adam step (from NumPy's gradients on both
    sides, see the module docstring), NumPy model vs the twin."""
    _require_torch()
    s = make_model_setup(dim, dtype, **kwargs)
    loss_np, grads_np = s.model.loss_and_grads(s.batch)
    loss_t, grads_t = s.twin.loss_and_grads(s.twin_batch)
    grad_err = {k: _rel_err(grads_np[k], grads_t[k]) for k in grads_np}
    s.twin.set_grads(grads_np)            # both Adams step from the same gradients (module docstring)
    s.optimizer.step(grads_np)
    s.twin_optimizer.step()
    after = s.twin.numpy_params()
    param_err = {k: _rel_err(s.model.params[k], after[k]) for k in after}
    tol_grad, tol_param = TOLERANCES[np.dtype(dtype).name]
    return Equivalence("model", np.dtype(dtype).name, int(dim), abs(loss_np - loss_t) / abs(loss_t), grad_err,
                       param_err, tol_grad, tol_param)


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------

class Timing(NamedTuple):
    """Interleaved timings (seconds per call) and the per-rep ratio NumPy / PyTorch."""

    bench: str
    dtype: str
    dim: int
    batch_size: int
    length: int
    numpy: Summary
    torch: Summary | None
    ratio: Summary | None


def _timing(bench, dtype, dim, batch_size, length, numpy_fn, torch_fn, reps, warmup) -> Timing:
    fns = {"numpy": numpy_fn}
    if torch_fn is not None:
        fns["torch"] = torch_fn
    times = time_interleaved(fns, reps=reps, warmup=warmup)
    t_np = summarize(times["numpy"])
    if torch_fn is None:
        return Timing(bench, np.dtype(dtype).name, int(dim), batch_size, length, t_np, None, None)
    return Timing(bench, np.dtype(dtype).name, int(dim), batch_size, length, t_np, summarize(times["torch"]),
                  summarize(times["numpy"] / times["torch"]))


def time_layer(dim: int, dtype="float64", *, reps: int = 20, warmup: int = 2, batch_size: int = 128,
               length: int = 40, with_torch: bool = True, seed: int = 0) -> Timing:
    """BiLSTM forward + backward, NumPy and (if installed) PyTorch, interleaved."""
    s = make_layer_setup(dim, dtype, batch_size=batch_size, length=length, seed=seed, with_torch=with_torch)
    torch_fn = None if s.lstm is None else (lambda: _torch_layer(s))
    return _timing("bilstm", dtype, dim, batch_size, length, lambda: _numpy_layer(s), torch_fn, reps, warmup)


def time_model(dim: int, dtype="float64", *, reps: int = 20, warmup: int = 2, batch_size: int = 128,
               length: int = 40, vocab: int = 60, with_torch: bool = True, seed: int = 0) -> Timing:
    """One Adam training step of the recurrent model, NumPy and (if installed) the twin, interleaved."""
    s = make_model_setup(dim, dtype, batch_size=batch_size, length=length, vocab=vocab, seed=seed,
                         with_torch=with_torch)

    def numpy_step():
        _, grads = s.model.loss_and_grads(s.batch)
        s.optimizer.step(grads)

    torch_fn = None if s.twin is None else (lambda: s.twin.step(s.twin_batch, s.twin_optimizer))
    return _timing("model", dtype, dim, batch_size, length, numpy_step, torch_fn, reps, warmup)


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------

_NAMES = {"bilstm": "BiLSTM fwd+bwd", "model": "Adam step (model)"}


def _report(e: Equivalence) -> str:
    what = "outputs" if e.bench == "bilstm" else "loss"
    extra = "" if not e.param_err else f", params after Adam ≤ {max(e.param_err.values()):.1e}"
    return (f"  equivalence {_NAMES[e.bench]} {e.dtype} d={e.dim}: {what} {e.value_err:.1e}, grads ≤ "
            f"{max(e.grad_err.values()):.1e}{extra} (tolerances {e.tol_grad:g}/{e.tol_param:g}) -> "
            f"{'OK' if e.ok else 'FAILED'}")


def _row(t: Timing) -> str:
    base = f"{_NAMES[t.bench]} {t.dtype} d={t.dim}: NumPy {1e3 * t.numpy.median:.1f} ms (IQR {1e3 * t.numpy.iqr:.1f})"
    if t.torch is None:
        return base + ", PyTorch not installed"
    return (base + f", PyTorch {1e3 * t.torch.median:.1f} ms (IQR {1e3 * t.torch.iqr:.1f}), NumPy/PyTorch "
            f"{t.ratio.median:.2f} [{t.ratio.q25:.2f}, {t.ratio.q75:.2f}]")


def run(dims=FULL["dims"], dtypes=FULL["dtypes"], *, reps: int = FULL["reps"], warmup: int = FULL["warmup"],
        batch_size: int = FULL["batch_size"], length: int = FULL["length"], vocab: int = FULL["vocab"],
        with_torch: bool = True, threads: int | None = 1, verbose: bool = True) -> dict:
    """Thread limit, equivalence checks (both benches, every cell), then the interleaved timings.

    Returns
    -------
    dict
        ``{"threads": dict or None, "torch": bool, "equivalence": [Equivalence], "timings": [Timing],
        "sizes": {...}}``. Raises AssertionError if an equivalence check fails.
    """
    use_torch = with_torch and torch is not None
    thr = limit_threads(threads) if threads is not None else None
    if verbose and thr is not None:
        print(f"  threads: NumPy BLAS {thr['numpy_blas']}, PyTorch {thr['torch']} ({thr['method']})", flush=True)
    cells = [(dt, d) for dt in dtypes for d in dims]
    equiv = []
    if use_torch:
        for dt, d in cells:
            for e in (check_layer_equivalence(d, dt, batch_size=batch_size, length=length),
                      check_model_equivalence(d, dt, batch_size=batch_size, length=length, vocab=vocab)):
                equiv.append(e)
                if verbose:
                    print(_report(e), flush=True)
                if not e.ok:
                    raise AssertionError(f"NumPy and PyTorch disagree: {e}")
    elif verbose:
        print("  PyTorch is not installed (or --no-torch): NumPy times only, no equivalence check or ratio",
              flush=True)
    timings = []
    for dt, d in cells:
        for t in (time_layer(d, dt, reps=reps, warmup=warmup, batch_size=batch_size, length=length,
                             with_torch=use_torch),
                  time_model(d, dt, reps=reps, warmup=warmup, batch_size=batch_size, length=length, vocab=vocab,
                             with_torch=use_torch)):
            timings.append(t)
            if verbose:
                print("  " + _row(t), flush=True)
    return {"threads": thr, "torch": use_torch, "equivalence": equiv, "timings": timings,
            "sizes": {"batch_size": batch_size, "length": length, "vocab": vocab, "reps": reps}}


def _ms(x: Summary | None) -> str:
    return "not installed" if x is None else f"{1e3 * x.median:.1f} ({1e3 * x.iqr:.1f})"


def format_table(result: dict) -> str:
    """Markdown: timings and ratios (median [q25, q75]), then the equivalence checks."""
    sz = result["sizes"]
    lines = [f"B = {sz['batch_size']}, S = T = {sz['length'] + 1}, copy V = {sz['vocab']}, hidden H = d / 2 per "
             f"encoder direction, {sz['reps']} interleaved reps."]
    thr = result.get("threads")
    if thr is not None:
        lines.append(f"Threads: NumPy BLAS {thr['numpy_blas']}, PyTorch {thr['torch']} ({thr['method']}; env "
                     + ", ".join(f"{k}={v}" for k, v in thr["env"].items()) + ").")
    if not result["torch"]:
        lines.append("PyTorch is not installed: NumPy times only.")
    lines += ["", "| bench | dtype | d | NumPy ms (median, IQR) | PyTorch ms (median, IQR) | "
              "NumPy / PyTorch median [q25, q75] |", "|---|---|---|---|---|---|"]
    for t in result["timings"]:
        ratio = "—" if t.ratio is None else f"**{t.ratio.median:.2f}** [{t.ratio.q25:.2f}, {t.ratio.q75:.2f}]"
        lines.append(f"| {_NAMES[t.bench]} | {t.dtype} | {t.dim} | {_ms(t.numpy)} | {_ms(t.torch)} | {ratio} |")
    if result["equivalence"]:
        lines += ["", "| check | dtype | d | outputs / loss rel. err | max grad rel. err | "
                  "max param rel. err after Adam | tolerances |", "|---|---|---|---|---|---|---|"]
        for e in result["equivalence"]:
            pe = "—" if not e.param_err else f"{max(e.param_err.values()):.1e}"
            lines.append(f"| {_NAMES[e.bench]} | {e.dtype} | {e.dim} | {e.value_err:.1e} | "
                         f"{max(e.grad_err.values()):.1e} | {pe} | {e.tol_grad:g} / {e.tol_param:g} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.recurrent_speed", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and 2 reps (a smoke run)")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table at the end")
    ap.add_argument("--no-torch", action="store_true", help="time NumPy alone even if PyTorch is installed")
    ap.add_argument("--reps", type=int, default=None, help="timed reps per cell (default 20; --quick: 2)")
    ap.add_argument("--threads", type=int, default=1, help="threads for NumPy's BLAS and PyTorch (default 1)")
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.reps is not None:
        cfg["reps"] = args.reps
    print(f"recurrent step vs PyTorch{' (QUICK: tiny sizes, not a measurement)' if args.quick else ''}", flush=True)
    if torch is None and not args.no_torch:
        print("  PyTorch is not installed: printing the NumPy times alone", flush=True)
    result = run(cfg["dims"], cfg["dtypes"], reps=cfg["reps"], warmup=cfg["warmup"], batch_size=cfg["batch_size"],
                 length=cfg["length"], vocab=cfg["vocab"], with_torch=not args.no_torch, threads=args.threads)
    if args.markdown:
        print()
        print(format_table(result))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
