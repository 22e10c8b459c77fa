"""The JAX twin of :class:`miniattn.models.seq2seq.Seq2SeqAttention` (one head or H heads), for the
speed benchmark.

The same model as :mod:`benchmarks.torch_seq2seq`, written the way a JAX user would write it: a pure
loss function of a parameter dict, ``jax.jit(jax.value_and_grad(loss))`` for the gradients, and one
jitted training step that fuses the forward pass, the backward pass and a hand-written Adam update
(the update of :class:`miniattn.optim.Adam` and ``torch.optim.Adam``)::

    m ← β1 m + (1 − β1) g;   v ← β2 v + (1 − β2) g²;   θ ← θ − lr · (m / c1) / (√(v / c2) + ε)
    c1 = 1 − β1ᵗ, c2 = 1 − β2ᵗ   (computed on the host in float64, passed in the parameter dtype)

The parameters and both moments are donated to the jitted step (updated in place, no new buffers).
A timed step ends with ``block_until_ready`` on everything it returns, so asynchronous dispatch does
not hide any work.

JAX is optional: importing this module never imports JAX. :func:`jax_available` tries the import
once; :func:`configure_threads` must be called before that first import to limit XLA's CPU thread
pool (XLA reads its flags when its CPU backend starts and cannot change them afterwards). float64
needs ``jax_enable_x64``, which :func:`_jax` switches on at import (float32 arrays stay float32:
every array here has an explicit dtype).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from benchmarks.torch_seq2seq import check_twin_params

__all__ = ["configure_threads", "jax_threads", "jax_available", "jax_version", "JaxBatch", "JaxSeq2Seq"]

_STATE = {"module": None, "tried": False, "error": None, "threads": None}

#: XLA flags that keep the CPU backend on one thread (intra-op Eigen pool off).
_ONE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def configure_threads(n: int) -> bool:
    """Ask XLA's CPU backend for ``n`` threads; True if it takes effect (JAX not imported yet).

    ``n = 1`` sets ``XLA_FLAGS`` to turn the intra-op thread pool off; ``n > 1`` leaves XLA's default
    (one thread per core; this machine has 2). Once JAX has been imported the flags are fixed, and
    the call only returns False (the thread count in force stays what :func:`jax_threads` reports).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (threads) must be an integer >= 1, got {n!r}")
    if _STATE["module"] is not None or _STATE["tried"]:
        return False
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith(("--xla_cpu_multi_thread_eigen", "intra_op_parallelism_threads"))]
    if int(n) == 1:
        flags += _ONE_THREAD_FLAGS.split()
    os.environ["XLA_FLAGS"] = " ".join(flags)
    _STATE["threads"] = 1 if int(n) == 1 else os.cpu_count()
    return True


def jax_threads() -> int | None:
    """Threads of XLA's CPU backend as configured (None before JAX is imported or without JAX)."""
    if _STATE["module"] is None:
        return None
    if _STATE["threads"] is None:
        flags = os.environ.get("XLA_FLAGS", "")
        _STATE["threads"] = 1 if "intra_op_parallelism_threads=1" in flags else os.cpu_count()
    return _STATE["threads"]


def _jax():
    """The ``jax`` module (imported on first use, with float64 enabled), or None without JAX."""
    if not _STATE["tried"]:
        _STATE["tried"] = True
        try:
            import jax
            jax.config.update("jax_enable_x64", True)
            jax.config.update("jax_platforms", "cpu")
            _STATE["module"] = jax
        except Exception as exc:   # ImportError, or a broken jaxlib
            _STATE["error"] = f"{type(exc).__name__}: {exc}"
    return _STATE["module"]


def jax_available() -> bool:
    """True when JAX can be imported (imports it on the first call)."""
    return _jax() is not None


def jax_unavailable_reason() -> str | None:
    """Why JAX could not be used (None when it can, or before :func:`jax_available` was asked)."""
    return _STATE["error"]


def jax_version() -> str | None:
    """JAX's version string if JAX has been imported, else None (never triggers the import)."""
    mod = _STATE["module"]
    return None if mod is None else str(mod.__version__)


def _require_jax():
    jax = _jax()
    if jax is None:
        raise ImportError("JAX is not installed (or failed to import: "
                          f"{_STATE['error']}); pip install 'jax[cpu]' to build the JAX twin")
    return jax


class JaxBatch(NamedTuple):
    """A :class:`miniattn.batch.Seq2SeqBatch` as JAX arrays (on the CPU device)."""

    source: object          #: (B, S) int64
    source_mask: object     #: (B, S) bool, True = may be attended
    target_in: object       #: (B, T) int64
    targets: object         #: (B, T) int64, 0 where not counted
    target_mask: object     #: (B, T) bool, True = counted


def _model_loss(shared: bool, multihead: bool, value_projection: bool, uniform: bool, factored: bool = False):
    """The pure loss function ``loss(params, batch)`` of the configuration (jnp operations only).

    ``factored``: the queries' score projections computed through the vocabulary, as miniattn does,
    ``(E_tgt W)[y] + (P_tgt W)[t]`` with the whole table (a jitted function has static shapes, so
    the batch's distinct ids cannot be selected); autodiff turns the gather into a scatter-add.
    """
    jax = _require_jax()
    jnp = jax.numpy

    def projections(p, tgt_table, target_in, T, q):
        """(B, T, k) projected queries: q W (one head) or q [W_1 … W_H] (heads), k = H·d."""
        d = q.shape[-1]
        W = (jnp.transpose(p["score"], (1, 0, 2)).reshape(d, -1) if multihead else p["score"])
        if factored:
            return (tgt_table @ W)[target_in] + (p["tgt_pos"][:T] @ W)
        return q @ W

    def loss(p, b: JaxBatch):
        src_table = p["embed"] if shared else p["src_embed"]
        tgt_table = p["embed"] if shared else p["tgt_embed"]
        B, S = b.source.shape
        T = b.target_in.shape[1]
        h = src_table[b.source] + p["src_pos"][:S]                      # (B, S, d)
        q = tgt_table[b.target_in] + p["tgt_pos"][:T]                   # (B, T, d)
        d = q.shape[-1]
        neg_inf = jnp.array(-jnp.inf, dtype=q.dtype)
        if multihead:
            H = p["score"].shape[0]
            if uniform:
                scores = jnp.zeros((H, B, T, S), dtype=q.dtype)
            else:
                if factored:
                    projected = jnp.transpose(projections(p, tgt_table, b.target_in, T, q).reshape(B, T, H, d),
                                              (2, 0, 1, 3))
                else:
                    projected = jnp.matmul(q.reshape(B * T, d), p["score"]).reshape(H, B, T, d)
                scores = jnp.matmul(projected, jnp.swapaxes(h, 1, 2))  # (H, B, T, S)
            alpha = jax.nn.softmax(jnp.where(b.source_mask[None, :, None, :], scores, neg_inf), axis=-1)
            if value_projection:
                values = jnp.matmul(h.reshape(B * S, d), p["value"]).reshape(H, B, S, d)
            else:
                values = h
            context = jnp.matmul(alpha, values).mean(axis=0)
        else:
            if uniform:
                scores = jnp.zeros((B, T, S), dtype=q.dtype)
            else:
                scores = jnp.matmul(projections(p, tgt_table, b.target_in, T, q), jnp.swapaxes(h, 1, 2))
            alpha = jax.nn.softmax(jnp.where(b.source_mask[:, None, :], scores, neg_inf), axis=-1)
            values = h @ p["value"] if value_projection else h
            context = jnp.matmul(alpha, values)
        logits = jnp.concatenate([q, context], axis=-1) @ p["out_W"] + p["out_b"]
        logp = jax.nn.log_softmax(logits, axis=-1)
        gold = jnp.take_along_axis(logp, b.targets[..., None], axis=-1)[..., 0]
        count = jnp.sum(b.target_mask).astype(q.dtype)
        return -jnp.sum(jnp.where(b.target_mask, gold, jnp.zeros((), q.dtype))) / count

    return loss


class JaxSeq2Seq:
    """The seq2seq attention model in JAX, with its own Adam state; parameters as JAX arrays.

    Parameters
    ----------
    params : dict of name -> numpy float array
        Names and shapes of :class:`~miniattn.models.seq2seq.Seq2SeqAttention` ``params`` (``"score"``
        (d, d) for one head, (H, d, d) for heads). Copied; all float32 or all float64.
    uniform : bool
        Uniform-attention twin (scores forced to 0).
    factored : bool
        Compute ``q W_a`` through the vocabulary, the algorithm miniattn uses (the "same algorithm"
        peer); False is the model as a JAX user would first write it.
    lr, betas, eps : Adam settings (defaults of :class:`miniattn.optim.Adam`).
    """

    def __init__(self, params: dict[str, np.ndarray], *, uniform: bool = False, factored: bool = False,
                 lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        jax = _require_jax()
        jnp = jax.numpy
        score_shape, self.dtype = check_twin_params(params)
        self.multihead = len(score_shape) == 3
        self.heads = int(score_shape[0]) if self.multihead else 1
        self.names = list(params)
        self.uniform = bool(uniform)
        self.factored = bool(factored)
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)
        # jnp.array copies (and keeps the dtype, float64 included: x64 is on).
        self.params = {k: jnp.array(np.asarray(v)) for k, v in params.items()}
        self.m = {k: jnp.zeros_like(v) for k, v in self.params.items()}
        self.v = {k: jnp.zeros_like(v) for k, v in self.params.items()}
        self.t = 0
        loss = _model_loss("embed" in params, self.multihead, "value" in params, self.uniform, self.factored)
        self._value_and_grad = jax.jit(jax.value_and_grad(loss))
        b1, b2 = self.betas
        lr_, eps_ = self.lr, self.eps

        def train_step(p, m, v, c1, c2, batch):
            value, g = jax.value_and_grad(loss)(p, batch)
            m = jax.tree_util.tree_map(lambda m_, g_: b1 * m_ + (1.0 - b1) * g_, m, g)
            v = jax.tree_util.tree_map(lambda v_, g_: b2 * v_ + (1.0 - b2) * (g_ * g_), v, g)
            p = jax.tree_util.tree_map(lambda p_, m_, v_: p_ - lr_ * (m_ / c1) / (jnp.sqrt(v_ / c2) + eps_),
                                       p, m, v)
            return p, m, v, value

        self._train_step = jax.jit(train_step, donate_argnums=(0, 1, 2))

    @classmethod
    def from_numpy(cls, model, *, factored: bool = False, **adam) -> "JaxSeq2Seq":
        """Twin of a :class:`~miniattn.models.seq2seq.Seq2SeqAttention`, same parameters."""
        twin = cls(model.params, uniform=model.uniform, factored=factored, **adam)
        if twin.heads != getattr(model, "heads", 1):
            raise ValueError(f"model.heads = {model.heads} but params['score'] has shape "
                             f"{np.shape(model.params['score'])}")
        return twin

    @staticmethod
    def batch(batch) -> JaxBatch:
        """Convert a Seq2SeqBatch once, outside any timed region."""
        jnp = _require_jax().numpy
        mask = np.asarray(batch.target_mask, dtype=bool)
        targets = np.where(mask, batch.target_out, 0).astype(np.int64)
        return JaxBatch(jnp.asarray(np.asarray(batch.source, dtype=np.int64)),
                        jnp.asarray(np.asarray(batch.source_mask, dtype=bool)),
                        jnp.asarray(np.asarray(batch.target_in, dtype=np.int64)),
                        jnp.asarray(targets), jnp.asarray(mask))

    def loss_and_grads(self, jb: JaxBatch) -> tuple[float, dict[str, np.ndarray]]:
        """Loss and gradients (jitted ``value_and_grad``) as NumPy arrays, for the equivalence check."""
        value, g = self._value_and_grad(self.params, jb)
        return float(value), {k: np.asarray(g[k]).copy() for k in self.names}

    def step(self, jb: JaxBatch) -> float:
        """One jitted training step (forward, backward, Adam), waited for. Returns the loss."""
        jax = _require_jax()
        self.t += 1
        b1, b2 = self.betas
        c1 = np.asarray(1.0 - b1 ** self.t, dtype=self.dtype)
        c2 = np.asarray(1.0 - b2 ** self.t, dtype=self.dtype)
        out = self._train_step(self.params, self.m, self.v, c1, c2, jb)
        jax.block_until_ready(out)
        self.params, self.m, self.v, value = out
        return float(value)

    def numpy_params(self) -> dict[str, np.ndarray]:
        """Current parameters as NumPy arrays (copies)."""
        return {k: np.asarray(self.params[k]).copy() for k in self.names}
