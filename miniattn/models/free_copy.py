"""The free-parameter copy model: the analytic approximation's own model (analysis/README.md, §2).

Attention weights are not computed from hidden states: they are the softmax of a free matrix of
logits ``A`` (T = L output positions × S = L source positions), shared by every example. Values are
one-hot source words, and a *KTIW matrix* ``M`` (V_out × V_in, here V × V) maps each word to output
logits. For source ``x = (x_1 … x_L)`` and gold outputs ``y`` (``y_t = x_t`` on the copy task)::

    α_{t,s} = exp(A_{t,s}) / Σ_{s' unmasked} exp(A_{t,s'})              (B, T, S), 0 where masked
    z_t     = Σ_s α_{t,s} M[:, x_s] + b                                  (B, T, V)
    loss    = −(1/N) Σ_{(b,t) counted} log softmax(z_t)[y_t]             (mean cross-entropy)

``factorised=True`` writes ``M = Wₒ Eᵀ`` with ``Wₒ`` (V, d) and ``E`` (V, d): then the value of
source position s is the embedding ``E[x_s]``, the context is ``c_t = Σ_s α_{t,s} E[x_s]`` and
``z_t = Wₒ c_t + b`` — the same logits, but the dynamics differ (see analysis/README.md).

Backward (``dz = (softmax(z) − onehot(y)) ⊙ counted / N``)::

    db        = Σ_{b,t} dz
    G[b,s]    = M[:, x_bs]  (B, S, V)          dG = αᵀ dz,  scattered into columns: dM[:, v] = Σ_{x_bs = v} dG[b,s]
    dα        = dz Gᵀ                           dA = Σ_b α ⊙ (dα − Σ_s α ⊙ dα)
    factorised: c = α E[x],  dWₒ = Σ dzᵀ c,  dc = dz Wₒ,  d(E[x]) = αᵀ dc,  dα = dc E[x]ᵀ

The gather of columns reuses :func:`miniattn.layers.embedding_forward` (with the table ``Mᵀ`` or
``E``; it validates the ids) and its scatter-add backward :func:`miniattn.layers.embedding_backward`,
the attention weights reuse :func:`miniattn.layers.masked_softmax`; everything else is batched
matmuls, no Python loop. Without a source mask all examples share one (T, S) softmax, computed once.

Batches: ``miniattn.tasks.CopyTask(L, V, mode, specials=False)`` (mode ``"permutation"`` when
V = L, ``"subset"`` when V > L) gives exactly the inputs this model reads.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from miniattn._validate import bool_array, flag, int_array, integer
from miniattn.batch import Seq2SeqBatch
from miniattn.layers import EmbeddingCache, embedding_backward, embedding_forward, log_softmax, masked_softmax
from miniattn.models.base import ForwardResult

__all__ = ["FreeAttentionCopyModel", "DEFAULT_INIT_SCALE"]

#: Default standard deviation of the i.i.d. normal initialisation of A, M (or Wₒ, E).
DEFAULT_INIT_SCALE = 0.1


class _Cache(NamedTuple):
    source: np.ndarray        #: (B, S) int, masked positions replaced by 0
    targets: np.ndarray       #: (B, T) int, uncounted positions replaced by 0
    target_mask: np.ndarray   #: (B, T) bool
    count: int                #: N counted targets
    alpha: np.ndarray         #: (B, T, S) attention
    values: np.ndarray        #: (B, S, V) = M[:, x_s]  or (B, S, d) = E[x_s]
    lookup: EmbeddingCache    #: the gather of the values (for its scatter-add backward)
    context: np.ndarray       #: (B, T, d) factorised context (None when plain)
    log_probs: np.ndarray     #: (B, T, V)


class FreeAttentionCopyModel:
    """Free attention logits ``A``, one-hot values, KTIW matrix ``M`` (or ``Wₒ Eᵀ``), softmax output.

    Equations in the module docstring.

    Parameters
    ----------
    length : int
        L = T = S, the number of source and output positions (≥ 1).
    vocab : int
        V = V_in = V_out (≥ 1).
    factorised : bool
        Use ``M = Wₒ Eᵀ`` with ``Wₒ``, ``E`` of shape (V, d).
    dim : int, optional
        d for the factorised model (default V, so that any M is expressible). Only with ``factorised``.
    uniform : bool
        Uniform-attention twin: α = 1/(number of unmasked sources) and ``A`` is not a parameter.
    init_scale : float, default :data:`DEFAULT_INIT_SCALE` = 0.1
        A, M, Wₒ and E are i.i.d. normal with this standard deviation (so a factorised ``M`` has
        entries of standard deviation ``√d · init_scale²``); the bias ``b`` starts at 0. 0 gives the
        exactly symmetric start (A = M = 0), a fixed point for permutations.
    rng : numpy.random.Generator
        The only source of randomness (keyword-only, required).

    Attributes
    ----------
    params : dict
        ``"A"`` (L, L) unless uniform; ``"M"`` (V, V) or ``"Wo"`` (V, d) and ``"E"`` (V, d);
        ``"b"`` (V,).
    """

    def __init__(self, length: int, vocab: int, *, factorised: bool = False, dim: int | None = None,
                 uniform: bool = False, init_scale: float = DEFAULT_INIT_SCALE, rng: np.random.Generator):
        self.length = integer("length", length, 1)
        self.vocab = integer("vocab", vocab, 1)
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        init_scale = float(init_scale)
        if not np.isfinite(init_scale) or init_scale < 0:
            raise ValueError(f"init_scale must be a finite number >= 0, got {init_scale}")
        self.factorised = flag("factorised", factorised)
        if dim is not None and not self.factorised:
            raise ValueError("dim is only meaningful with factorised=True")
        self.dim = (integer("dim", dim, 1) if dim is not None else self.vocab) if self.factorised else None
        self.uniform = flag("uniform", uniform)
        self.init_scale = init_scale
        L, V = self.length, self.vocab
        params: dict[str, np.ndarray] = {}
        if not self.uniform:
            params["A"] = init_scale * rng.standard_normal((L, L))
        if self.factorised:
            params["Wo"] = init_scale * rng.standard_normal((V, self.dim))
            params["E"] = init_scale * rng.standard_normal((V, self.dim))
        else:
            params["M"] = init_scale * rng.standard_normal((V, V))
        params["b"] = np.zeros(V)
        self.params = params

    # ------------------------------------------------------------------------------------------
    def config(self) -> dict:
        """Constructor arguments that define the model (JSON-serialisable; ``rng`` excluded)."""
        return {"model": "FreeAttentionCopyModel", "length": self.length, "vocab": self.vocab,
                "factorised": self.factorised, "dim": self.dim, "uniform": self.uniform,
                "init_scale": self.init_scale}

    def ktiw_matrix(self) -> np.ndarray:
        """The effective KTIW matrix M (V_out, V_in): ``params["M"]`` or ``Wₒ Eᵀ`` (a new array)."""
        if self.factorised:
            return self.params["Wo"] @ self.params["E"].T
        return self.params["M"].copy()

    def attention_logits(self) -> np.ndarray:
        """The logits A (L, L) (zeros for the uniform twin; a new array)."""
        return np.zeros((self.length, self.length)) if self.uniform else self.params["A"].copy()

    # ------------------------------------------------------------------------------------------
    def _check_batch(self, batch):
        if not isinstance(batch, Seq2SeqBatch):
            raise TypeError(f"batch must be a miniattn.batch.Seq2SeqBatch, got {type(batch).__name__}")
        L, V = self.length, self.vocab
        source = int_array("batch.source", batch.source, ndim=2)
        B = source.shape[0]
        if source.shape[1] != L:
            raise ValueError(f"batch.source must have shape (B, {L}) for length={L}, got {source.shape}")
        source_mask = bool_array("batch.source_mask", batch.source_mask, (B, L))
        if not np.all(source_mask.any(axis=1)):
            raise ValueError("batch.source_mask has an example with every source position masked")
        targets = int_array("batch.target_out", batch.target_out, ndim=2)
        if targets.shape != (B, L):
            raise ValueError(f"batch.target_out must have shape ({B}, {L}), got {targets.shape}")
        target_mask = bool_array("batch.target_mask", batch.target_mask, (B, L))
        count = int(target_mask.sum())
        if count == 0:
            raise ValueError("batch.target_mask must count at least one target")
        int_array("batch.source (where source_mask is True)", source[source_mask], upper=V)
        int_array("batch.target_out (where target_mask is True)", targets[target_mask], upper=V)
        # Padding may hold any id; it is never read with nonzero weight, so read word 0 there.
        return (np.where(source_mask, source, 0), source_mask, np.where(target_mask, targets, 0),
                target_mask, count)

    def _forward(self, batch) -> _Cache:
        source, source_mask, targets, target_mask, count = self._check_batch(batch)
        B, L = source.shape
        logits_a = np.zeros((L, L)) if self.uniform else self.params["A"]
        if source_mask.all():
            # Every example attends with the same weights: one (T, S) softmax, broadcast (no copy).
            alpha = np.broadcast_to(masked_softmax(logits_a, None), (B, L, L))
        else:
            alpha = masked_softmax(logits_a[None], source_mask[:, None, :])            # (B, T, S)
        if self.factorised:
            values, lookup = embedding_forward(source, self.params["E"])               # (B, S, d)
            context = alpha @ values                                                   # (B, T, d)
            logits = context @ self.params["Wo"].T + self.params["b"]
        else:
            # Column M[:, x_s] of every source word = row x_s of Mᵀ: an embedding lookup.
            values, lookup = embedding_forward(source, self.params["M"].T)             # (B, S, V)
            context = None
            logits = alpha @ values + self.params["b"]                                 # (B, T, V)
        return _Cache(source, targets, target_mask, count, alpha, values, lookup, context,
                      log_softmax(logits))

    def _gold(self, cache: _Cache) -> np.ndarray:
        """log p(y_t) at every (b, t), shape (B, T)."""
        return np.take_along_axis(cache.log_probs, cache.targets[..., None], axis=-1)[..., 0]

    def loss_and_grads(self, batch: Seq2SeqBatch) -> tuple[float, dict[str, np.ndarray]]:
        """Mean cross-entropy over the counted target positions and its gradients.

        Parameters
        ----------
        batch : Seq2SeqBatch
            ``source`` (B, L) ids in [0, V) where ``source_mask``; ``target_out`` (B, L) in [0, V)
            where ``target_mask``; ``target_in`` and ``alignment`` are not used.

        Returns
        -------
        loss : float
        grads : dict
            Keyed like ``params``, each with its parameter's shape.
        """
        cache = self._forward(batch)
        gold = self._gold(cache)
        loss = -float(np.sum(gold, where=cache.target_mask)) / cache.count
        dz = np.exp(cache.log_probs)
        np.put_along_axis(dz, cache.targets[..., None],
                          np.take_along_axis(dz, cache.targets[..., None], axis=-1) - 1.0, axis=-1)
        dz *= cache.target_mask[..., None] / cache.count                               # (B, T, V)
        grads = {"b": dz.sum(axis=(0, 1))}
        alpha, values = cache.alpha, cache.values
        if self.factorised:
            V = self.vocab
            grads["Wo"] = dz.reshape(-1, V).T @ cache.context.reshape(-1, self.dim)
            dcontext = dz @ self.params["Wo"]                                          # (B, T, d)
            dvalues = alpha.transpose(0, 2, 1) @ dcontext                              # (B, S, d)
            dalpha = dcontext @ values.transpose(0, 2, 1)                              # (B, T, S)
            grads["E"] = embedding_backward(dvalues, cache.lookup)
        else:
            dvalues = alpha.transpose(0, 2, 1) @ dz                                    # (B, S, V)
            dalpha = dz @ values.transpose(0, 2, 1)                                    # (B, T, S)
            grads["M"] = embedding_backward(dvalues, cache.lookup).T
        if not self.uniform:
            # Softmax backward; masked sources have α = 0 and so get no gradient.
            if alpha.strides[0] == 0:
                # Shared weights (no source mask): the backward is linear in dα, so sum over the
                # batch first — one (T, S) softmax backward instead of B of them.
                weights, dweights = alpha[0], dalpha.sum(axis=0)
                grads["A"] = weights * (dweights - np.sum(weights * dweights, axis=-1, keepdims=True))
            else:
                dscores = alpha * (dalpha - np.sum(alpha * dalpha, axis=-1, keepdims=True))
                grads["A"] = dscores.sum(axis=0)
        return loss, {k: grads[k] for k in self.params}

    def forward(self, batch: Seq2SeqBatch) -> ForwardResult:
        """``log_probs`` (B, T, V) of every output word and ``attention`` α (B, T, S)."""
        cache = self._forward(batch)
        return ForwardResult(cache.log_probs, cache.alpha)

    # ------------------------------------------------------------------------------------------
    def _word_logits(self, cache: _Cache) -> np.ndarray:
        """``G[b, s] = M[:, x_bs]`` (B, S, V): the logits (without b) if only s were attended."""
        if self.factorised:
            return cache.values @ self.params["Wo"].T
        return cache.values

    def ktiw_probe(self, batch: Seq2SeqBatch) -> np.ndarray:
        """KTIW probe ``β_{t,s} = log softmax(M[:, x_s] + b)[y_t]``.

        The log-probability of the gold word y_t if the model attended only to source position s.

        Returns
        -------
        beta : array (B, T, S)
            ``−inf`` at masked source positions, NaN at uncounted target positions.
        """
        cache = self._forward(batch)
        single = log_softmax(self._word_logits(cache) + self.params["b"])              # (B, S, V)
        # beta[b, t, s] = single[b, s, y_bt]: gather along V with the targets broadcast over s.
        beta = np.take_along_axis(single.transpose(0, 2, 1), cache.targets[..., None], axis=1)
        source_mask = np.asarray(batch.source_mask)
        beta = np.where(source_mask[:, None, :], beta, -np.inf)
        return np.where(cache.target_mask[..., None], beta, np.nan)

    def saliency(self, batch: Seq2SeqBatch) -> np.ndarray:
        """Gradient × input of ``log p(y_t)`` w.r.t. a scale λ_s on the value of source s (at λ = 1).

        With ``z_t = Σ_s α_{t,s} λ_s M[:, x_s] + b`` and ``p_t = softmax(z_t)``::

            Δ_{t,s} = λ_s ∂ log p_t(y_t)/∂λ_s = α_{t,s} (M[y_t, x_s] − Σ_v p_t(v) M[v, x_s])

        Returns
        -------
        delta : array (B, T, S)
            0 at masked source positions, NaN at uncounted target positions.
        """
        cache = self._forward(batch)
        word = self._word_logits(cache).transpose(0, 2, 1)                             # (B, V, S)
        gold = np.take_along_axis(word, cache.targets[..., None], axis=1)               # (B, T, S)
        expected = np.exp(cache.log_probs) @ word                                       # (B, T, S)
        delta = cache.alpha * (gold - expected)
        return np.where(cache.target_mask[..., None], delta, np.nan)
