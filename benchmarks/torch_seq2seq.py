"""The PyTorch twin of :class:`miniattn.models.seq2seq.Seq2SeqAttention`, for the speed benchmark.

The same model, written the way a PyTorch user would write it — ``torch.nn.functional`` ops in eager
mode, gradients by autograd, ``torch.optim.Adam`` — so that the benchmark compares a hand-written
NumPy forward/backward pass with a framework on the same CPU, thread count and dtype. Equations
(single head; B batch, S source and T target positions, d width, C classes)::

    h      = E_src[x] + P_src[:S]                           (B, S, d)
    q      = E_tgt[y_in] + P_tgt[:T]                        (B, T, d)
    scores = (q W_a) hᵀ,  −inf where the source is masked   (B, T, S)   (uniform twin: 0)
    α      = softmax_S(scores)                              (B, T, S)
    c      = α v,  v = h  or  h W_v                         (B, T, d)
    logits = [q ; c] W_o + b                                (B, T, C)
    loss   = mean over counted (b, t) of −log softmax(logits)[y]

With H heads (``score`` (H, d, d), ``value`` (H, d, d) or absent = identity) every head h has its
own scores ``(q W_a^h) hᵀ`` and values ``h W_v^h``, and the contexts are averaged::

    c = (1/H) Σ_h softmax_S((q W_a^h) hᵀ) (h W_v^h)         (H, B, T, S) scores, no loop over heads

The twin starts from a copy of the NumPy model's parameters (:meth:`TorchSeq2Seq.from_numpy`), so
that loss, every gradient and one Adam step can be compared number by number before anything is
timed (``benchmarks.step_speed.check_equivalence``).

PyTorch is an optional dependency (``make bench`` installs it): importing this module never fails;
:func:`torch_available` says whether the twin can be built.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

try:  # optional benchmark dependency
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - exercised only where torch is absent
    torch = None
    F = None

__all__ = ["torch_available", "torch_version", "TorchBatch", "TorchSeq2Seq"]


def torch_available() -> bool:
    """True when PyTorch can be imported (the twin and its timings are then available)."""
    return torch is not None


def torch_version() -> str | None:
    """PyTorch's version string, or None without PyTorch."""
    return None if torch is None else str(torch.__version__)


def _require_torch() -> None:
    if torch is None:
        raise ImportError("PyTorch is not installed; install the optional benchmark extra "
                          "(`make bench`, or pip install torch) to build the PyTorch twin")


def check_twin_params(params) -> tuple[tuple, np.dtype]:
    """Check that ``params`` are :class:`miniattn.models.Seq2SeqAttention` parameters a twin can copy.

    Returns ``(score_shape, dtype)``: ``(d, d)`` for one head or ``(H, d, d)`` for H heads, and the one
    float dtype of every array. Shared by the PyTorch and the JAX twins.
    """
    if not isinstance(params, dict) or not params:
        raise TypeError("params must be a non-empty dict of name -> numpy array")
    needed = {"src_pos", "tgt_pos", "score", "out_W", "out_b"}
    missing = needed - set(params)
    if missing or not ({"embed"} <= set(params) or {"src_embed", "tgt_embed"} <= set(params)):
        raise ValueError(f"params lacks {sorted(missing) or 'an embedding table'}; expected the names "
                         "of Seq2SeqAttention.params")
    score_shape = np.shape(params["score"])
    if len(score_shape) not in (2, 3) or score_shape[-1] != score_shape[-2]:
        raise ValueError(f"params['score'] must be (d, d) (one head) or (H, d, d) (heads), got shape "
                         f"{score_shape}")
    if "value" in params and np.shape(params["value"]) != score_shape:
        raise ValueError(f"params['value'] must have the shape of params['score'] {score_shape}, "
                         f"got {np.shape(params['value'])}")
    dtypes = {np.asarray(p).dtype for p in params.values()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"params must all be float32 or all float64, got {sorted(map(str, dtypes))}")
    return score_shape, next(iter(dtypes))


class TorchBatch(NamedTuple):
    """A :class:`miniattn.batch.Seq2SeqBatch` as torch tensors (zero-copy views of the id arrays)."""

    source: "torch.Tensor"        #: (B, S) int64
    source_mask: "torch.Tensor"   #: (B, S) bool, True = may be attended
    target_in: "torch.Tensor"     #: (B, T) int64
    targets: "torch.Tensor"       #: (B·T,) int64, −100 (ignored) where the target is not counted


class TorchSeq2Seq:
    """Attention-only seq2seq model (one head or H averaged heads) in PyTorch eager mode, parameters
    as leaf tensors.

    Parameters
    ----------
    params : dict of name -> numpy float array
        Names and shapes as in :class:`~miniattn.models.seq2seq.Seq2SeqAttention` (``"embed"`` or
        ``"src_embed"``/``"tgt_embed"``, ``"src_pos"``, ``"tgt_pos"``, ``"score"`` (d, d) or
        (H, d, d), optional ``"value"`` of the same shape, ``"out_W"`` (2d, C), ``"out_b"`` (C,)).
        Copied; the dtype is kept (float32 or float64). A 3-d ``"score"`` makes the multi-head
        model (even with H = 1), as :class:`~miniattn.models.seq2seq.Seq2SeqAttention` does for
        ``heads > 1``.
    uniform : bool
        Uniform-attention twin (scores forced to 0; ``"score"`` gets a zero gradient).
    factored : bool
        Compute ``q W_a`` through the vocabulary as miniattn does, ``(E_tgt W)[y] + (P_tgt W)[t]``
        with the whole table (the "same algorithm" peer; autograd's embedding backward is the
        scatter). False is the model as a PyTorch user would first write it.

    Attributes
    ----------
    params : dict of name -> torch.Tensor
        Leaf tensors with ``requires_grad=True``, in the order of the NumPy model's dict.
    """

    def __init__(self, params: dict[str, np.ndarray], *, uniform: bool = False, factored: bool = False):
        _require_torch()
        score_shape, _ = check_twin_params(params)
        self.uniform = bool(uniform)
        self.factored = bool(factored)
        self.shared_embeddings = "embed" in params
        self.value_projection = "value" in params
        self.dim = int(score_shape[-1])
        self.multihead = len(score_shape) == 3
        self.heads = int(score_shape[0]) if self.multihead else 1
        # A copy (torch.tensor copies), so stepping the twin never moves the NumPy model.
        self.params = {k: torch.tensor(np.asarray(v), requires_grad=True) for k, v in params.items()}

    @classmethod
    def from_numpy(cls, model, *, factored: bool = False) -> "TorchSeq2Seq":
        """Twin of a :class:`~miniattn.models.seq2seq.Seq2SeqAttention` (any number of heads), same
        parameters."""
        twin = cls(model.params, uniform=model.uniform, factored=factored)
        if twin.heads != getattr(model, "heads", 1):
            raise ValueError(f"model.heads = {model.heads} but params['score'] has shape "
                             f"{np.shape(model.params['score'])}")
        return twin

    # ----------------------------------------------------------------------------------------------
    @staticmethod
    def batch(batch) -> TorchBatch:
        """Convert a Seq2SeqBatch once, outside any timed region (ids are shared, not copied)."""
        _require_torch()
        targets = np.where(batch.target_mask, batch.target_out, -100).astype(np.int64).reshape(-1)
        return TorchBatch(torch.from_numpy(np.ascontiguousarray(batch.source, dtype=np.int64)),
                          torch.from_numpy(np.ascontiguousarray(batch.source_mask, dtype=bool)),
                          torch.from_numpy(np.ascontiguousarray(batch.target_in, dtype=np.int64)),
                          torch.from_numpy(targets))

    def loss(self, tb: TorchBatch) -> "torch.Tensor":
        """Mean cross-entropy over the counted targets (a 0-d tensor attached to the autograd graph)."""
        p = self.params
        src_table = p["embed"] if self.shared_embeddings else p["src_embed"]
        tgt_table = p["embed"] if self.shared_embeddings else p["tgt_embed"]
        S, T = tb.source.shape[1], tb.target_in.shape[1]
        h = F.embedding(tb.source, src_table) + p["src_pos"][:S]
        q = F.embedding(tb.target_in, tgt_table) + p["tgt_pos"][:T]
        if self.multihead:
            context = self._multihead_context(q, h, tb, tgt_table)
        else:
            if self.uniform:
                scores = torch.zeros(q.shape[0], T, S, dtype=q.dtype)
            else:
                scores = torch.matmul(self._projections(q, tb, tgt_table), h.transpose(1, 2))
            scores = scores.masked_fill(~tb.source_mask[:, None, :], float("-inf"))
            alpha = F.softmax(scores, dim=-1)
            values = h @ p["value"] if self.value_projection else h
            context = torch.bmm(alpha, values)
        logits = F.linear(torch.cat([q, context], dim=-1), p["out_W"].t(), p["out_b"])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tb.targets, ignore_index=-100)

    def _projections(self, q, tb: TorchBatch, tgt_table):
        """(B, T, k) projected queries q W (one head) or q [W_1 … W_H] (heads, k = H·d)."""
        p, d = self.params, self.dim
        W = p["score"].permute(1, 0, 2).reshape(d, -1) if self.multihead else p["score"]
        if self.factored:
            T = tb.target_in.shape[1]
            return F.embedding(tb.target_in, tgt_table @ W) + p["tgt_pos"][:T] @ W
        return q @ W

    def _multihead_context(self, q, h, tb: TorchBatch, tgt_table):
        """``(1/H) Σ_h softmax((q W_a^h) hᵀ) (h W_v^h)``, all heads in one batched product each."""
        source_mask = tb.source_mask
        p = self.params
        B, T, d = q.shape
        S = h.shape[1]
        H = self.heads
        if self.uniform:
            scores = torch.zeros(H, B, T, S, dtype=q.dtype)
        else:
            if self.factored:
                projected = self._projections(q, tb, tgt_table).reshape(B, T, H, d).permute(2, 0, 1, 3)
            else:
                projected = torch.matmul(q.reshape(B * T, d), p["score"]).reshape(H, B, T, d)   # H GEMMs
            scores = torch.matmul(projected, h.transpose(1, 2))          # (H, B, T, S), h broadcast
        scores = scores.masked_fill(~source_mask[None, :, None, :], float("-inf"))
        alpha = F.softmax(scores, dim=-1)
        if self.value_projection:
            values = torch.matmul(h.reshape(B * S, d), p["value"]).reshape(H, B, S, d)
            return torch.matmul(alpha, values).mean(dim=0)
        return torch.matmul(alpha, h).mean(dim=0)

    def loss_and_grads(self, tb: TorchBatch) -> tuple[float, dict[str, np.ndarray]]:
        """Loss and gradients as NumPy arrays (for the equivalence check, not for timing)."""
        for t in self.params.values():
            t.grad = None
        loss = self.loss(tb)
        loss.backward()
        # A parameter the loss does not reach (the score matrix of the uniform twin) has no .grad;
        # its gradient is zero, as in the NumPy model.
        return float(loss.detach()), {k: (np.zeros(tuple(t.shape), dtype=str(t.dtype).replace("torch.", ""))
                                          if t.grad is None else t.grad.detach().numpy().copy())
                                      for k, t in self.params.items()}

    def make_adam(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        """``torch.optim.Adam`` over the twin's parameters (PyTorch's default implementation)."""
        return torch.optim.Adam(list(self.params.values()), lr=lr, betas=betas, eps=eps)

    def step(self, tb: TorchBatch, optimizer) -> float:
        """One training step: zero the gradients, forward, backward, optimiser update. Returns the loss."""
        optimizer.zero_grad(set_to_none=True)
        loss = self.loss(tb)
        loss.backward()
        optimizer.step()
        return loss.item()

    def numpy_params(self) -> dict[str, np.ndarray]:
        """Current parameters as NumPy arrays (copies)."""
        return {k: t.detach().numpy().copy() for k, t in self.params.items()}
