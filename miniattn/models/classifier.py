"""Attention classifier: embedding, one attention query over the tokens, softmax output.

The model of README.md, "Models and tasks" (and docs/DESIGN.md, "Models").

The model of the paper's blog post: every token is embedded, an attention logit is computed for each
token from its embedding alone, the attention-weighted mean embedding is classified by an affine
softmax layer. It is composed from the blocks of :mod:`miniattn.layers`; the attention logits
``a_l = u · h_l`` are exactly single-head dot-product attention with one query ``u`` (T = 1) over
keys = values = ``h``.

Equations (one example, tokens x_1..x_S, mask m)::

    h_l   = E[x_l]                                   (d,)
    k_l   = h_l                  or  tanh(h_l W_s + c)   with score_hidden = k   (score keys)
    a_l   = u · k_l                                   attention logit
    α     = softmax over {l : m_l} of a               (uniform twin: a := 0)
    h̄     = Σ_l α_l h_l
    log p = log_softmax(h̄ W_o + b)
    loss  = −(1/B) Σ_b log p_b[y_b]

Parameters (``model.params``)::

    "embed"    (V, d)      E
    "score_u"  (d,) or (k,)  u
    "score_W"  (d, k)      W_s      (only with score_hidden = k)
    "score_b"  (k,)        c        (only with score_hidden = k)
    "out_W"    (d, C)      W_o
    "out_b"    (C,)        b

Initialisation: every weight is drawn i.i.d. from N(0, init_scale²) (default 0.1, so the attention
logits start near 0 and attention near uniform, as the two-stage account assumes); the biases
``score_b`` and ``out_b`` start at 0.
"""

from __future__ import annotations

import numpy as np

from miniattn.layers import (attention_backward, attention_forward, embedding_backward,
                             embedding_forward, log_softmax, softmax_output_backward,
                             softmax_output_forward)
from miniattn.models.base import (ForwardResult, check_classification_batch, check_flag, check_scale, check_size, check_source_scale)

__all__ = ["AttentionClassifier"]


def _model_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


class AttentionClassifier:
    """Sequence classifier with a single attention query (the paper's blog model).

    Parameters
    ----------
    vocab_size : int >= 1
        Number of token ids V; tokens must lie in ``[0, V)`` (padding included).
    n_classes : int >= 2
        Number of classes C.
    dim : int >= 1, default 64
        Embedding size d.
    score_hidden : int >= 1, optional
        If given, the attention logit is the one-hidden-layer score ``u · tanh(h W_s + c)`` with
        ``k = score_hidden`` hidden units; otherwise ``u · h``.
    uniform : bool, default False
        The uniform-attention twin: attention logits forced to 0, so α is uniform over the unmasked
        tokens and the attention parameters (``score_*``) get exactly zero gradient.
    init_scale : float > 0, default 0.1
        Standard deviation of the normal initialisation of every weight (biases start at 0).
    rng : numpy.random.Generator
        Source of the initial parameters (keyword-only, required).
    dtype : float32 or float64, default float64
        Parameter dtype; float32 is an opt-in speed path (never use it for gradient checks).

    Attributes
    ----------
    params : dict of name -> array
        See the module docstring for names and shapes.
    uniform : bool
    """

    def __init__(self, vocab_size: int, n_classes: int, *, dim: int = 64, score_hidden: int | None = None,
                 uniform: bool = False, init_scale: float = 0.1, rng: np.random.Generator,
                 dtype=np.float64):
        self.vocab_size = check_size("vocab_size", vocab_size)
        self.n_classes = check_size("n_classes", n_classes, 2)
        self.dim = check_size("dim", dim)
        self.score_hidden = None if score_hidden is None else check_size("score_hidden", score_hidden)
        self.uniform = check_flag("uniform", uniform)
        self.init_scale = init_scale = check_scale("init_scale", init_scale)
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        self.dtype = _model_dtype(dtype)

        d, V, C = self.dim, self.vocab_size, self.n_classes
        k = d if self.score_hidden is None else self.score_hidden

        def normal(*shape):
            # Draw in float64 and cast, so float32 and float64 models from one seed agree.
            return (init_scale * rng.standard_normal(shape)).astype(self.dtype)

        self.params: dict[str, np.ndarray] = {"embed": normal(V, d), "score_u": normal(k)}
        if self.score_hidden is not None:
            self.params["score_W"] = normal(d, k)
            self.params["score_b"] = np.zeros(k, dtype=self.dtype)
        self.params["out_W"] = normal(d, C)
        self.params["out_b"] = np.zeros(C, dtype=self.dtype)

    # ----------------------------------------------------------------------------------------------
    def config(self) -> dict:
        """Constructor keyword arguments (JSON-serialisable), to rebuild the model from a checkpoint."""
        return {"vocab_size": self.vocab_size, "n_classes": self.n_classes, "dim": self.dim,
                "score_hidden": self.score_hidden, "uniform": self.uniform,
                "init_scale": self.init_scale, "dtype": self.dtype.name}

    def _check_batch(self, batch, need_labels: bool):
        """Validate a ClassificationBatch (:func:`miniattn.models.base.check_classification_batch`)."""
        return check_classification_batch(batch, vocab_size=self.vocab_size, n_classes=self.n_classes,
                                          need_labels=need_labels)


    def _check_scale(self, source_scale, shape):
        return check_source_scale(source_scale, shape, self.dtype, "the tokens'")


    def _pool(self, tokens, mask, scale=None):
        """Embedding and attention pooling. Returns h̄ (B, d) and the caches for the backward pass.

        ``scale`` (B, S), when given, multiplies each token state ``h_l`` (keys and values alike):
        the handle the saliency probe differentiates.
        """
        p = self.params
        emb, emb_cache = embedding_forward(tokens, p["embed"])
        h = emb if scale is None else emb * scale[..., None]
        keys = h if self.score_hidden is None else np.tanh(h @ p["score_W"] + p["score_b"])
        B = h.shape[0]
        # The single query u, shared by every example: a read-only broadcast view, no copy.
        queries = np.broadcast_to(p["score_u"], (B, 1, p["score_u"].shape[0]))
        context, att_cache = attention_forward(queries, keys, h, mask=mask, uniform=self.uniform)
        return context[:, 0, :], (emb_cache, h, keys, att_cache)

    # ----------------------------------------------------------------------------------------------
    def forward(self, batch, *, source_scale=None) -> ForwardResult:
        """Class log-probabilities and attention weights.

        Parameters
        ----------
        batch : ClassificationBatch
            ``labels`` are not needed.
        source_scale : float array (B, S), optional
            Multiplies every token state ``h_l`` (default 1): ``forward`` at ``λ`` defines the saliency.

        Returns
        -------
        ForwardResult
            ``log_probs`` (B, 1, C) and ``attention`` (B, 1, S) (0 at masked tokens).
        """
        tokens, mask, _ = self._check_batch(batch, need_labels=False)
        scale = self._check_scale(source_scale, tokens.shape)
        pooled, (_, _, _, att_cache) = self._pool(tokens, mask, scale)
        log_probs = log_softmax(pooled @ self.params["out_W"] + self.params["out_b"])
        return ForwardResult(log_probs[:, None, :], att_cache.weights)

    def _loss_and_state_grads(self, tokens, mask, labels, dloss: float = 1.0):
        """Loss, parameter gradients except the embedding's, and the gradient dh (B, S, d) of the
        token states (keys and values summed), all for an upstream ``dloss`` on the mean loss."""
        p = self.params
        pooled, (emb_cache, h, keys, att_cache) = self._pool(tokens, mask)
        loss, out_cache = softmax_output_forward(pooled, p["out_W"], p["out_b"], labels)
        g_out = softmax_output_backward(dloss, out_cache)
        g_att = attention_backward(g_out.hidden[:, None, :], att_cache)
        grads = {"score_u": g_att.queries.sum(axis=(0, 1))}
        dh = g_att.values  # a fresh array from the backward pass: safe to accumulate into
        if self.score_hidden is None:
            dh += g_att.keys
        else:
            dpre = g_att.keys * (1.0 - keys * keys)          # tanh' = 1 − tanh²
            d, k = p["score_W"].shape
            grads["score_W"] = h.reshape(-1, d).T @ dpre.reshape(-1, k)
            grads["score_b"] = dpre.sum(axis=(0, 1))
            dh += dpre @ p["score_W"].T
        grads["out_W"] = g_out.weight
        grads["out_b"] = g_out.bias
        return loss, grads, dh, h, emb_cache

    def loss_and_grads(self, batch) -> tuple[float, dict[str, np.ndarray]]:
        """Mean cross-entropy over the batch and its gradient with respect to every parameter.

        Returns
        -------
        loss : float
        grads : dict name -> array, keyed and shaped like ``params`` (embedding rows scatter-added).
        """
        tokens, mask, labels = self._check_batch(batch, need_labels=True)
        loss, grads, dh, _, emb_cache = self._loss_and_state_grads(tokens, mask, labels)
        grads["embed"] = embedding_backward(dh, emb_cache)
        return loss, {k: grads[k] for k in self.params}

    # ----------------------------------------------------------------------------------------------
    def ktiw_probe(self, batch) -> np.ndarray:
        """KTIW probe β: log-probability of the gold class if the model attended only to token l.

        ``β[b, 0, l] = log_softmax(h_l W_o + b)[y_b]`` with ``h_l = E[x_l]``.

        Returns
        -------
        beta : array (B, 1, S)
            NaN at masked tokens.
        """
        tokens, mask, labels = self._check_batch(batch, need_labels=True)
        h = embedding_forward(tokens, self.params["embed"])[0]
        log_probs = log_softmax(h @ self.params["out_W"] + self.params["out_b"])     # (B, S, C)
        gold = np.take_along_axis(log_probs, labels[:, None, None], axis=-1)[..., 0]
        return np.where(mask, gold, np.nan)[:, None, :]

    def saliency(self, batch) -> np.ndarray:
        """Gradient × input saliency Δ of the gold log-probability with respect to each token's scale.

        With every token state scaled, ``h_l → λ_l h_l`` (keys, hence the attention logits, and
        values alike)::

            Δ[b, 0, l] = ∂ log p_b(y_b) / ∂λ_l  at λ = 1  =  (∂ log p_b(y_b) / ∂h_l) · h_l

        The per-token gradient comes from the model's own backward pass: examples are independent,
        so the gradient of ``Σ_b log p_b(y_b)`` (the loss gradient times ``−B``) with respect to
        ``h_{b,l}`` is exactly that of ``log p_b(y_b)``. In the uniform twin the logits do not depend
        on ``h``, so only the values contribute.

        Returns
        -------
        delta : array (B, 1, S)
            NaN at masked tokens.
        """
        tokens, mask, labels = self._check_batch(batch, need_labels=True)
        _, _, dh, h, _ = self._loss_and_state_grads(tokens, mask, labels, dloss=-float(tokens.shape[0]))
        delta = np.einsum("bsd,bsd->bs", dh, h)
        return np.where(mask, delta, np.nan)[:, None, :]
