"""Recurrent attention classifier: BiLSTM (or BiGRU) over the tokens, one attention query, softmax.

The recurrent counterpart of :class:`~miniattn.models.classifier.AttentionClassifier`, built from the
bidirectional encoder of :mod:`miniattn.models.rnn_seq2seq` and the blocks of :mod:`miniattn.layers`;
the backward pass is composed by hand from the blocks' backward functions.

Equations (one example, tokens x_1..x_S, mask m, H = ``hidden``)::

    e_l   = E[x_l]                                    (d,)
    h_l   = [→h_l ; ←h_l]  = BiLSTM(e)_l               (2H,)  over the real tokens only
    a_l   = u · h_l                                   attention logit (dot product, one query u)
    α     = softmax over {l : m_l} of a                (uniform twin: a := 0)
    h̄     = Σ_l α_l h_l
    log p = log_softmax(h̄ W_o + b)
    loss  = −(1/B) Σ_b log p_b[y_b]

Parameters (``model.params``)::

    "embed"                 (V, d)        E
    "enc_fwd_*", "enc_rev_*"              the two encoder directions, named and shaped as in
                                          :mod:`miniattn.models.rnn_seq2seq` (LSTM: W_x (d, 4H),
                                          W_h (H, 4H), b (4H,); GRU: W_x (d, 3H), W_h (H, 3H), b_x, b_h (3H,))
    "score_u"               (2H,)         u
    "out_W"                 (2H, C)       W_o
    "out_b"                 (C,)          b

Initialisation: every weight N(0, init_scale²) (default 0.1, as the attention classifier: logits
start near 0 and attention near uniform); biases 0.
"""

from __future__ import annotations

import numpy as np

from miniattn.layers import (attention_backward, attention_forward, embedding_backward, embedding_forward,
                             log_softmax, softmax_output_backward, softmax_output_forward)
from miniattn.models.base import (ForwardResult, check_classification_batch, check_flag, check_scale, check_size,
                                  check_source_scale)
from miniattn.models.rnn_seq2seq import (bi_encode, bi_encode_backward, check_dtype, check_kind,
                                         init_params, rnn_param_shapes)

__all__ = ["RecurrentAttentionClassifier"]


class RecurrentAttentionClassifier:
    """Sequence classifier: bidirectional recurrent encoder and a single attention query.

    Parameters
    ----------
    vocab_size : int >= 1
        Token ids lie in ``[0, V)`` (padding included).
    n_classes : int >= 2
    dim : int >= 1, default 64
        Embedding size d.
    hidden : int >= 1, optional
        Hidden size H per direction (token states have width 2H); default ``max(1, dim // 2)``.
    encoder : {"lstm", "gru"}, default "lstm"
    uniform : bool, default False
        Uniform-attention twin: logits forced to 0; ``"score_u"`` gets zero gradient.
    init_scale : float > 0, default 0.1
    rng : numpy.random.Generator
        Keyword-only, required.
    dtype : float32 or float64, default float64

    Attributes
    ----------
    params : dict of name -> array
        See the module docstring.
    uniform : bool
    """

    def __init__(self, vocab_size: int, n_classes: int, *, dim: int = 64, hidden: int | None = None,
                 encoder: str = "lstm", uniform: bool = False, init_scale: float = 0.1,
                 rng: np.random.Generator, dtype=np.float64):
        self.vocab_size = check_size("vocab_size", vocab_size)
        self.n_classes = check_size("n_classes", n_classes, 2)
        self.dim = check_size("dim", dim)
        self.hidden = max(1, self.dim // 2) if hidden is None else check_size("hidden", hidden)
        self._hidden_arg = None if hidden is None else self.hidden
        self.encoder = check_kind("encoder", encoder)
        self.uniform = check_flag("uniform", uniform)
        self.init_scale = check_scale("init_scale", init_scale)
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        self.dtype = dt = check_dtype(dtype)
        d, H = self.dim, self.hidden

        def normal(*shape):
            return (self.init_scale * rng.standard_normal(shape)).astype(dt)

        shapes = {"embed": (self.vocab_size, d)}
        shapes.update(rnn_param_shapes(self.encoder, "enc_fwd_", d, H))
        shapes.update(rnn_param_shapes(self.encoder, "enc_rev_", d, H))
        shapes["out_W"] = (2 * H, self.n_classes)
        shapes["out_b"] = (self.n_classes,)
        self.params = init_params(shapes, normal, dt)
        self.params["score_u"] = normal(2 * H)     # a 1-D weight: init_params would zero it

    # ----------------------------------------------------------------------------------------------
    def config(self) -> dict:
        """Constructor keyword arguments (JSON-serialisable), to rebuild the model from a checkpoint."""
        return {"vocab_size": self.vocab_size, "n_classes": self.n_classes, "dim": self.dim,
                "hidden": self._hidden_arg, "encoder": self.encoder, "uniform": self.uniform,
                "init_scale": self.init_scale, "dtype": self.dtype.name}

    def _check_batch(self, batch, need_labels: bool):
        """Validate a ClassificationBatch (:func:`miniattn.models.base.check_classification_batch`)."""
        return check_classification_batch(batch, vocab_size=self.vocab_size, n_classes=self.n_classes,
                                          need_labels=need_labels)


    def _pool(self, tokens, mask, scale=None):
        """Embedding, encoder, attention pooling: h̄ (B, 2H) and the caches."""
        p = self.params
        emb, emb_cache = embedding_forward(tokens, p["embed"])
        x = emb if scale is None else emb * scale[..., None]
        states, _, enc_cache = bi_encode(self.encoder, p, x, mask)
        queries = np.broadcast_to(p["score_u"], (tokens.shape[0], 1, p["score_u"].shape[0]))
        context, att = attention_forward(queries, states, states, mask=mask, uniform=self.uniform)
        return context[:, 0, :], (emb, emb_cache, enc_cache, att)

    def _grads(self, tokens, mask, labels, dloss: float = 1.0):
        """Loss, every gradient but the embedding table's, the encoder-input gradient and the caches."""
        p = self.params
        pooled, (emb, emb_cache, enc_cache, att) = self._pool(tokens, mask)
        loss, out_cache = softmax_output_forward(pooled, p["out_W"], p["out_b"], labels)
        g_out = softmax_output_backward(dloss, out_cache)
        g_att = attention_backward(g_out.hidden[:, None, :], att)
        dstates = np.add(g_att.keys, g_att.values, out=g_att.values)
        dx, grads = bi_encode_backward(self.encoder, dstates, None, enc_cache, self.hidden)
        grads["score_u"] = g_att.queries.sum(axis=(0, 1))
        grads["out_W"], grads["out_b"] = g_out.weight, g_out.bias
        return loss, grads, dx, emb, emb_cache

    # ----------------------------------------------------------------------------------------------
    def forward(self, batch, *, source_scale=None) -> ForwardResult:
        """Class log-probabilities (B, 1, C) and attention (B, 1, S).

        ``source_scale`` (B, S), optional, multiplies each token embedding before the encoder.
        """
        tokens, mask, _ = self._check_batch(batch, need_labels=False)
        scale = check_source_scale(source_scale, tokens.shape, self.dtype, "the tokens'")
        pooled, (_, _, _, att) = self._pool(tokens, mask, scale)
        log_probs = log_softmax(pooled @ self.params["out_W"] + self.params["out_b"])
        return ForwardResult(log_probs[:, None, :], att.weights)

    def loss_and_grads(self, batch) -> tuple[float, dict[str, np.ndarray]]:
        """Mean cross-entropy over the batch and its gradient for every parameter."""
        tokens, mask, labels = self._check_batch(batch, need_labels=True)
        loss, grads, dx, _, emb_cache = self._grads(tokens, mask, labels)
        grads["embed"] = embedding_backward(dx, emb_cache)
        return loss, {k: grads[k] for k in self.params}

    def ktiw_probe(self, batch) -> np.ndarray:
        """β[b, 0, l] = log_softmax(h_l W_o + b)[y_b]: the gold log-probability if α were one-hot at l.

        Returns (B, 1, S), NaN at masked tokens.
        """
        tokens, mask, labels = self._check_batch(batch, need_labels=True)
        _, (_, _, _, att) = self._pool(tokens, mask)
        log_probs = log_softmax(att.values @ self.params["out_W"] + self.params["out_b"])   # (B, S, C)
        gold = np.take_along_axis(log_probs, labels[:, None, None], axis=-1)[..., 0]
        return np.where(mask, gold, np.nan)[:, None, :]

    def saliency(self, batch) -> np.ndarray:
        """Δ[b, 0, l] = ∂ log p_b(y_b)/∂λ_l at λ = 1 with ``e_l → λ_l e_l``, i.e. (∂ log p/∂e_l) · e_l.

        One backward pass: examples are independent, so the gradient of ``Σ_b log p_b(y_b)`` (the
        loss gradient times −B) with respect to example b's embeddings is that of ``log p_b(y_b)``.
        Returns (B, 1, S), NaN at masked tokens.
        """
        tokens, mask, labels = self._check_batch(batch, need_labels=True)
        _, _, dx, emb, _ = self._grads(tokens, mask, labels, dloss=-float(tokens.shape[0]))
        delta = np.sum(dx * emb, axis=-1)
        return np.where(mask, delta, np.nan)[:, None, :]
