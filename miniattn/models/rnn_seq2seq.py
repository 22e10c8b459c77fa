"""Recurrent sequence-to-sequence attention model: BiLSTM (or BiGRU) encoder, LSTM (or GRU) decoder.

The recurrent model of the paper's released seq2seq code, built from the hand-written recurrent
blocks of :mod:`miniattn.recurrent` / :mod:`miniattn.gru` and the blocks of :mod:`miniattn.layers`
(``embedding_*``, ``attention_*``, ``softmax_output_*``). The backward pass is composed by hand from
the blocks' backward functions (no autograd).

Equations (one example; source x_1..x_S with mask m, decoder inputs y_0..y_{T−1}, H = ``hidden``)::

    e_s        = E_src[x_s]                                   source embeddings (B, S, d)
    →h_s, ←h_s = LSTM→(e), LSTM←(e)   over the real tokens     each (B, S, H)
    h_s        = [→h_s ; ←h_s]                                encoder states (B, S, 2H)
    (q_0, k_0) = ([→h_fin ; ←h_fin], [→c_fin ; ←c_fin])         decoder initial state (2H each)
    q_t        = LSTM_dec(E_tgt[y_{t−1}])                     decoder states (B, T, 2H), teacher forcing
    score_ts   = q_t W_a h_s                                  bilinear ("general"); uniform twin: 0
    α_t        = softmax over {s : m_s} of score_t·
    c_t        = Σ_s α_ts h_s                                 context (B, T, 2H)
    log p_t    = log_softmax([q_t ; c_t] W_o + b)              no input feeding
    loss       = −(1/N) Σ_{(b,t) counted} log p_bt[y_bt]       N = number of counted targets

``→h_fin`` is the forward direction's state after the row's last real token, ``←h_fin`` the
reverse direction's after its first (padded steps carry the state: see :mod:`miniattn.recurrent`),
so padding never changes a row's results. The decoder has hidden size 2H, so the encoder's two final
states concatenated *are* its initial state (no bridge projection). The decoder runs over every
target position (no mask): it is causal, so positions after a row's last counted target cannot
change the counted ones. With ``encoder="gru"`` both recurrences are GRUs (the initial decoder state
is ``[→h_fin ; ←h_fin]``; a GRU has no cell).

Parameters (``model.params``); LSTM gates stacked i, f, g, o, GRU gates r, z, n (PyTorch's order)::

    "embed"                  (V, d)             one table for source and target (shared_embeddings)
    "src_embed"/"tgt_embed"  (V_src, d), (V_tgt, d)   separate tables otherwise
    "enc_fwd_W_x"            (d, 4H)            forward-direction encoder  (GRU: 3H)
    "enc_fwd_W_h"            (H, 4H)                                       (GRU: (H, 3H))
    "enc_fwd_b"              (4H,)              LSTM only: b_ih + b_hh
    "enc_fwd_b_x"/"enc_fwd_b_h"  (3H,), (3H,)   GRU only: input and hidden biases
    "enc_rev_*"              as "enc_fwd_*"     reverse-direction encoder
    "dec_W_x"                (d, 8H)            decoder  (GRU: (d, 6H))
    "dec_W_h"                (2H, 8H)                    (GRU: (2H, 6H))
    "dec_b"                  (8H,)              LSTM only
    "dec_b_x"/"dec_b_h"      (6H,), (6H,)       GRU only
    "score"                  (2H, 2H)           W_a
    "out_W"                  (4H, C)            W_o; rows [:2H] read q_t, rows [2H:] read c_t
    "out_b"                  (C,)               b

A PyTorch ``nn.LSTM`` direction maps as ``W_x = weight_ih.T``, ``W_h = weight_hh.T``,
``b = bias_ih + bias_hh`` (GRU: ``b_x = bias_ih``, ``b_h = bias_hh``).

Initialisation: every weight (embeddings included) is drawn i.i.d. from N(0, init_scale²), default
``init_scale = 1/√H``; every bias starts at 0. The initial scores are then small, so attention starts
near uniform, as the two-stage account assumes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from miniattn.gru import gru_backward, gru_forward
from miniattn.layers import (AttentionCache, EmbeddingCache, attention_backward, attention_forward,
                             embedding_backward, embedding_forward, log_softmax, softmax_output_backward,
                             softmax_output_forward)
from miniattn.models.base import (ForwardResult, check_flag, check_scale, check_seq2seq_batch, check_size, check_source_scale)
from miniattn.models.seq2seq import _pairwise_logsumexp
from miniattn.recurrent import LSTMParams, bilstm_backward, bilstm_forward, lstm_backward, lstm_forward

__all__ = ["RecurrentSeq2SeqAttention", "RNN_KINDS"]

#: The recurrent cells a model may use (``encoder=``).
RNN_KINDS = ("lstm", "gru")


# --------------------------------------------------------------------------------------------------
# Shared pieces (also used by :mod:`miniattn.models.rnn_classifier`)
# --------------------------------------------------------------------------------------------------

def check_kind(name: str, value) -> str:
    """``value`` if it is one of :data:`RNN_KINDS`, else raise naming ``name``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {RNN_KINDS}, got {type(value).__name__} {value!r}")
    if value not in RNN_KINDS:
        raise ValueError(f"{name} must be one of {RNN_KINDS}, got {value!r}")
    return value


def check_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def rnn_param_shapes(kind: str, prefix: str, D: int, H: int) -> dict[str, tuple]:
    """Names and shapes of one recurrent layer's parameters (input size D, hidden size H)."""
    n = 4 if kind == "lstm" else 3
    shapes = {prefix + "W_x": (D, n * H), prefix + "W_h": (H, n * H)}
    if kind == "lstm":
        shapes[prefix + "b"] = (n * H,)
    else:
        shapes[prefix + "b_x"] = (n * H,)
        shapes[prefix + "b_h"] = (n * H,)
    return shapes


def init_params(shapes: dict[str, tuple], normal, dtype) -> dict[str, np.ndarray]:
    """Weights (2-D) from ``normal(*shape)``, biases (1-D) zero."""
    return {k: normal(*s) if len(s) == 2 else np.zeros(s, dtype=dtype) for k, s in shapes.items()}


def _weights(kind: str, p: dict, prefix: str) -> tuple:
    """(W_x, W_h, b) for an LSTM, (W_x, W_h, b_x, b_h) for a GRU."""
    if kind == "lstm":
        return p[prefix + "W_x"], p[prefix + "W_h"], p[prefix + "b"]
    return p[prefix + "W_x"], p[prefix + "W_h"], p[prefix + "b_x"], p[prefix + "b_h"]


def _grad_dict(kind: str, prefix: str, g) -> dict[str, np.ndarray]:
    if kind == "lstm":
        return {prefix + "W_x": g.W_x, prefix + "W_h": g.W_h, prefix + "b": g.b}
    return {prefix + "W_x": g.W_x, prefix + "W_h": g.W_h, prefix + "b_x": g.b_x, prefix + "b_h": g.b_h}


def bi_encode(kind: str, p: dict, x: np.ndarray, mask: np.ndarray):
    """Bidirectional encoder over (B, S, d) inputs.

    Returns ``states`` (B, S, 2H) = [→h ; ←h] (0 at padding), ``final`` — ``(h, c)`` each (B, 2H)
    for an LSTM, ``(h,)`` for a GRU, the two directions concatenated — and the cache.
    """
    if kind == "lstm":
        fwd = LSTMParams(None, None, *_weights(kind, p, "enc_fwd_"))
        rev = LSTMParams(None, None, *_weights(kind, p, "enc_rev_"))
        (states, (final_f, final_r)), cache = bilstm_forward(x, fwd, rev, mask)
        final = (np.concatenate([final_f.h, final_r.h], axis=-1), np.concatenate([final_f.c, final_r.c], axis=-1))
        return states, final, cache
    (out_f, h_f), cache_f = gru_forward(x, None, *_weights(kind, p, "enc_fwd_"), mask=mask)
    (out_r, h_r), cache_r = gru_forward(x, None, *_weights(kind, p, "enc_rev_"), mask=mask, reverse=True)
    return np.concatenate([out_f, out_r], axis=-1), (np.concatenate([h_f, h_r], axis=-1),), (cache_f, cache_r)


def bi_encode_backward(kind: str, dstates, dfinal, cache, H: int):
    """Backward of :func:`bi_encode`: ``dstates`` (B, S, 2H) or None, ``dfinal`` like ``final`` or None.

    Returns the input gradient (B, S, d) and the ``enc_*`` parameter gradients.
    """
    def split(a):
        return (None, None) if a is None else (a[:, :H], a[:, H:])

    if kind == "lstm":
        dh, dc = (None, None) if dfinal is None else dfinal
        (dh_f, dh_r), (dc_f, dc_r) = split(dh), split(dc)
        g = bilstm_backward(dstates, ((dh_f, dc_f), (dh_r, dc_r)), cache)
        return g.x, {**_grad_dict(kind, "enc_fwd_", g.forward), **_grad_dict(kind, "enc_rev_", g.reverse)}
    cache_f, cache_r = cache
    dh_f, dh_r = split(None if dfinal is None else dfinal[0])
    g_f = gru_backward(None if dstates is None else dstates[..., :H], dh_f, cache_f)
    g_r = gru_backward(None if dstates is None else dstates[..., H:], dh_r, cache_r)
    return g_f.x + g_r.x, {**_grad_dict(kind, "enc_fwd_", g_f), **_grad_dict(kind, "enc_rev_", g_r)}


def _decode(kind: str, p: dict, y: np.ndarray, init: tuple):
    """Unidirectional decoder over (B, T, d) inputs from the initial state ``init``: (B, T, 2H), cache."""
    if kind == "lstm":
        (out, _), cache = lstm_forward(y, init[0], init[1], *_weights(kind, p, "dec_"))
    else:
        (out, _), cache = gru_forward(y, init[0], *_weights(kind, p, "dec_"))
    return out, cache


def _decode_backward(kind: str, dout: np.ndarray, cache):
    """Backward of :func:`_decode`: input gradient (B, T, d), initial-state gradient, ``dec_*`` grads."""
    if kind == "lstm":
        g = lstm_backward(dout, None, cache)
        return g.x, (g.h0, g.c0), _grad_dict(kind, "dec_", g)
    g = gru_backward(dout, None, cache)
    return g.x, (g.h0,), _grad_dict(kind, "dec_", g)


def gold_gradient(log_probs: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """``onehot(gold) − softmax``: the gradient of ``log p(gold)`` with respect to the logits."""
    d = -np.exp(log_probs)
    np.put_along_axis(d, gold[..., None], np.take_along_axis(d, gold[..., None], axis=-1) + 1.0, axis=-1)
    return d


class _State(NamedTuple):
    """Everything the backward pass and the probes need from one forward pass."""

    emb_src: np.ndarray            #: (B, S, d) unscaled source embeddings
    scale: np.ndarray | None       #: (B, S) source scale, or None (1)
    cache_src: EmbeddingCache
    cache_tgt: EmbeddingCache
    enc: np.ndarray                #: (B, S, 2H) encoder states h_s
    enc_cache: object
    dec_cache: object
    att: AttentionCache


# ---- The model ------------------------------------------------------------------------------------

class RecurrentSeq2SeqAttention:
    """Recurrent attention seq2seq model: BiLSTM/BiGRU encoder, LSTM/GRU decoder, bilinear attention.

    The interface is :class:`~miniattn.models.seq2seq.Seq2SeqAttention`'s (``params``,
    ``loss_and_grads``, ``forward``, ``ktiw_probe``, ``saliency``, ``config``), so the training loop,
    the metrics and :func:`analysis.probes.probe_all` take either.

    Parameters
    ----------
    source_vocab, target_vocab : int >= 1 (target_vocab >= 2)
        Source ids lie in ``[0, source_vocab)``; decoder inputs and gold outputs in
        ``[0, target_vocab)`` (C = target_vocab output classes). Padding ids must be in range too.
    source_length, target_length : int >= 1, optional
        Longest source / output sequence accepted (the model itself has no positional tables, so any
        length works when they are None). Taken positionally, as by ``Seq2SeqAttention``.
    dim : int >= 1, default 64
        Embedding size d.
    hidden : int >= 1, optional
        Encoder hidden size H per direction; the decoder, the attention and the contexts have width
        2H. Default ``max(1, dim // 2)``, so that 2H = dim as in ``Seq2SeqAttention`` (for even dim).
    encoder : {"lstm", "gru"}, default "lstm"
        Cell of both the bidirectional encoder and the decoder.
    shared_embeddings : bool, optional
        One table for source and target (``"embed"``). Default: True when the vocabularies have the
        same size. Sharing requires equal sizes.
    uniform : bool, default False
        Uniform-attention twin: scores forced to 0 before masking; ``"score"`` gets zero gradient.
    init_scale : float > 0, optional
        Standard deviation of the normal initialisation of every weight; default ``1/√hidden``.
    rng : numpy.random.Generator
        Source of the initial parameters (keyword-only, required).
    dtype : float32 or float64, default float64
        Parameter dtype; with float32 every intermediate stays float32.

    Attributes
    ----------
    params : dict of name -> array
        See the module docstring for names and shapes.
    uniform : bool
    """

    #: Rows (examples × output positions) of one batched saliency backward pass; see :meth:`saliency`.
    saliency_rows = 4096

    def __init__(self, source_vocab: int, target_vocab: int, source_length: int | None = None,
                 target_length: int | None = None, *, dim: int = 64, hidden: int | None = None,
                 encoder: str = "lstm", shared_embeddings: bool | None = None, uniform: bool = False,
                 init_scale: float | None = None, rng: np.random.Generator, dtype=np.float64):
        self.source_vocab = check_size("source_vocab", source_vocab)
        self.target_vocab = check_size("target_vocab", target_vocab, 2)
        self.source_length = None if source_length is None else check_size("source_length", source_length)
        self.target_length = None if target_length is None else check_size("target_length", target_length)
        self.dim = check_size("dim", dim)
        self.hidden = max(1, self.dim // 2) if hidden is None else check_size("hidden", hidden)
        self._hidden_arg = None if hidden is None else self.hidden
        self.encoder = check_kind("encoder", encoder)
        shared = check_flag("shared_embeddings", shared_embeddings, optional=True)
        if shared is None:
            shared = self.source_vocab == self.target_vocab
        elif shared and self.source_vocab != self.target_vocab:
            raise ValueError(f"shared_embeddings=True needs source_vocab == target_vocab, got "
                             f"{self.source_vocab} and {self.target_vocab}")
        self.shared_embeddings = shared
        self.uniform = check_flag("uniform", uniform)
        self.init_scale = (float(1.0 / np.sqrt(self.hidden)) if init_scale is None
                           else check_scale("init_scale", init_scale))
        self._init_scale_arg = None if init_scale is None else self.init_scale
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        self.dtype = dt = check_dtype(dtype)

        d, H, C, kind = self.dim, self.hidden, self.target_vocab, self.encoder

        def normal(*shape):
            # Drawn in float64 and cast, so float32 and float64 models from one seed agree.
            return (self.init_scale * rng.standard_normal(shape)).astype(dt)

        shapes: dict[str, tuple] = {}
        if shared:
            shapes["embed"] = (self.source_vocab, d)
        else:
            shapes["src_embed"] = (self.source_vocab, d)
            shapes["tgt_embed"] = (self.target_vocab, d)
        shapes.update(rnn_param_shapes(kind, "enc_fwd_", d, H))
        shapes.update(rnn_param_shapes(kind, "enc_rev_", d, H))
        shapes.update(rnn_param_shapes(kind, "dec_", d, 2 * H))
        shapes["score"] = (2 * H, 2 * H)
        shapes["out_W"] = (4 * H, C)
        shapes["out_b"] = (C,)
        self.params = init_params(shapes, normal, dt)

    # ----------------------------------------------------------------------------------------------
    def config(self) -> dict:
        """Constructor keyword arguments (JSON-serialisable), to rebuild the model from a checkpoint."""
        return {"source_vocab": self.source_vocab, "target_vocab": self.target_vocab,
                "source_length": self.source_length, "target_length": self.target_length,
                "dim": self.dim, "hidden": self._hidden_arg, "encoder": self.encoder,
                "shared_embeddings": self.shared_embeddings, "uniform": self.uniform,
                "init_scale": self._init_scale_arg, "dtype": self.dtype.name}

    def _tables(self):
        p = self.params
        if self.shared_embeddings:
            return p["embed"], p["embed"]
        return p["src_embed"], p["tgt_embed"]

    def _check_batch(self, batch, need_targets: bool):
        """Validate a Seq2SeqBatch (:func:`miniattn.models.base.check_seq2seq_batch`)."""
        return check_seq2seq_batch(batch, source_vocab=self.source_vocab, target_vocab=self.target_vocab,
                                   source_length=self.source_length, target_length=self.target_length,
                                   need_targets=need_targets)


    def _check_scale(self, source_scale, shape):
        return check_source_scale(source_scale, shape, self.dtype)


    def _hidden(self, source, source_mask, target_in, scale=None):
        """Encoder, decoder and attention. Returns [q ; c] (B, T, 4H) and a :class:`_State`."""
        p, kind = self.params, self.encoder
        src_table, tgt_table = self._tables()
        emb_src, cache_src = embedding_forward(source, src_table)
        x = emb_src if scale is None else emb_src * scale[..., None]
        enc, final, enc_cache = bi_encode(kind, p, x, source_mask)
        emb_tgt, cache_tgt = embedding_forward(target_in, tgt_table)
        q, dec_cache = _decode(kind, p, emb_tgt, final)
        context, att = attention_forward(q, enc, enc, p["score"], mask=source_mask, uniform=self.uniform)
        hidden = np.concatenate([q, context], axis=-1)
        return hidden, _State(emb_src, scale, cache_src, cache_tgt, enc, enc_cache, dec_cache, att)

    def _backward(self, dhidden, state: _State):
        """Backward from ``d[q ; c]`` (B, T, 4H) to every parameter but the output layer and the tables.

        Chain: split ``[dq ; dc]`` → attention backward (queries; keys and values are both the
        encoder states, so their gradients add) → decoder BPTT, whose initial-state gradient is split
        between the encoder's two final states → bidirectional encoder BPTT.

        Returns (grads, dx, demb_tgt): ``dx`` (B, S, d) is the gradient of the (scaled) encoder input,
        ``demb_tgt`` (B, T, d) that of the decoder input embeddings.
        """
        H2 = 2 * self.hidden
        g = attention_backward(dhidden[..., H2:], state.att)
        dq = np.add(g.queries, dhidden[..., :H2])
        denc = np.add(g.keys, g.values, out=g.keys)              # g.keys is ours: add in place
        demb_tgt, dinit, grads = _decode_backward(self.encoder, dq, state.dec_cache)
        dx, enc_grads = bi_encode_backward(self.encoder, denc, dinit, state.enc_cache, self.hidden)
        grads.update(enc_grads)
        grads["score"] = g.score_matrix
        return grads, dx, demb_tgt

    # ----------------------------------------------------------------------------------------------
    def forward(self, batch, *, source_scale=None) -> ForwardResult:
        """Log-probabilities of every output class at every position, and the attention weights.

        Parameters
        ----------
        batch : Seq2SeqBatch
            ``target_out``/``target_mask`` are not needed (teacher forcing uses ``target_in``).
        source_scale : float array (B, S), optional
            Multiplies each source embedding ``e_s`` before the encoder; default 1. The saliency is
            the derivative of ``forward`` in this scale.

        Returns
        -------
        ForwardResult
            ``log_probs`` (B, T, C); ``attention`` (B, T, S), 0 at masked source positions.
        """
        source, source_mask, target_in, _, _ = self._check_batch(batch, need_targets=False)
        scale = self._check_scale(source_scale, source.shape)
        hidden, state = self._hidden(source, source_mask, target_in, scale)
        log_probs = log_softmax(hidden @ self.params["out_W"] + self.params["out_b"])
        return ForwardResult(log_probs, state.att.weights)

    def loss_and_grads(self, batch) -> tuple[float, dict[str, np.ndarray]]:
        """Mean cross-entropy over the counted targets and its gradient for every parameter.

        Backward chain: softmax output → :meth:`_backward` (attention, decoder, encoder) → embedding
        tables (scatter-add; a shared table receives both the source and the target gradient).

        Returns
        -------
        loss : float
        grads : dict name -> array, keyed and shaped like ``params``.
        """
        source, source_mask, target_in, target_out, target_mask = self._check_batch(batch, need_targets=True)
        p = self.params
        hidden, state = self._hidden(source, source_mask, target_in)
        loss, out_cache = softmax_output_forward(hidden, p["out_W"], p["out_b"], target_out, target_mask)
        g_out = softmax_output_backward(1.0, out_cache)
        grads, dx, demb_tgt = self._backward(g_out.hidden, state)
        grads["out_W"], grads["out_b"] = g_out.weight, g_out.bias
        d_src_table = embedding_backward(dx, state.cache_src)
        d_tgt_table = embedding_backward(demb_tgt, state.cache_tgt)
        if self.shared_embeddings:
            grads["embed"] = d_src_table + d_tgt_table
        else:
            grads["src_embed"], grads["tgt_embed"] = d_src_table, d_tgt_table
        return loss, {k: grads[k] for k in p}

    # ----------------------------------------------------------------------------------------------
    def ktiw_probe(self, batch) -> np.ndarray:
        """KTIW probe β: log-probability of the gold output if the context were encoder state h_s alone.

        ``β[b,t,s] = log_softmax([q_t ; h_s] W_o + b)[y_t]`` — the decoder state q_t does not depend
        on the context (no input feeding), so only the context is replaced. The logits split as
        ``(q_t W_o[:2H] + b) + h_s W_o[2H:]``; the (B, T, S, C) logits are never materialised.

        Returns
        -------
        beta : array (B, T, S)
            NaN at masked source positions and at uncounted output positions.
        """
        source, source_mask, target_in, target_out, target_mask = self._check_batch(batch, need_targets=True)
        p, H2 = self.params, 2 * self.hidden
        hidden, state = self._hidden(source, source_mask, target_in)
        from_q = hidden[..., :H2] @ p["out_W"][:H2] + p["out_b"]          # (B, T, C)
        from_v = state.enc @ p["out_W"][H2:]                               # (B, S, C)
        B = target_out.shape[0]
        gold_q = np.take_along_axis(from_q, target_out[..., None], axis=-1)              # (B, T, 1)
        gold_v = from_v.transpose(0, 2, 1)[np.arange(B)[:, None], target_out]            # (B, T, S)
        beta = gold_q + gold_v - _pairwise_logsumexp(from_q, from_v)
        return np.where(source_mask[:, None, :] & target_mask[:, :, None], beta, np.nan)

    def saliency(self, batch) -> np.ndarray:
        """Gradient × input saliency Δ of each gold log-probability with respect to each source scale.

        Scale source embedding s by λ_s (``e_s → λ_s e_s`` before the encoder)::

            Δ[b, t, s] = ∂ log p(y_t) / ∂λ_s |_{λ=1}  =  (∂ log p(y_t) / ∂e_s) · e_s

        Unlike the attention-only model, every output depends on every source position through the
        recurrences, so Δ needs one backward pass per output position. These are batched: the batch
        is replicated once per output position (row ``(t, b)`` of the replicated batch back-propagates
        ``log p(y_t)`` of example b only — examples are independent), and one forward and one
        backward pass run over all replicas at once. When ``B · T`` exceeds
        :attr:`saliency_rows` the output positions are processed in chunks of
        ``saliency_rows // B`` (a Python loop over chunks, bounding memory); positions no example
        counts are skipped.

        Returns
        -------
        delta : array (B, T, S)
            NaN at masked source positions and at uncounted output positions.
        """
        source, source_mask, target_in, target_out, target_mask = self._check_batch(batch, need_targets=True)
        p = self.params
        B, S = source.shape
        T = target_in.shape[1]
        positions = np.flatnonzero(target_mask.any(axis=0))
        per_pass = max(1, int(self.saliency_rows) // B)
        delta = np.full((B, T, S), np.nan, dtype=self.dtype)
        for start in range(0, positions.size, per_pass):
            ts = positions[start:start + per_pass]
            k = ts.size
            tile = lambda a: np.tile(a, (k, 1))                    # row i·B + b = example b, replica i
            hidden, state = self._hidden(tile(source), tile(source_mask), tile(target_in))
            log_probs = log_softmax(hidden @ p["out_W"] + p["out_b"])                   # (kB, T, C)
            dlogits = gold_gradient(log_probs, tile(target_out))
            only_t = np.repeat(np.arange(T)[None, :] == ts[:, None], B, axis=0)         # (kB, T)
            dlogits *= only_t[..., None]
            _, dx, _ = self._backward(dlogits @ p["out_W"].T, state)
            d = np.sum(dx * state.emb_src, axis=-1)                                     # (kB, S)
            delta[:, ts, :] = d.reshape(k, B, S).transpose(1, 0, 2)
        return np.where(source_mask[:, None, :] & target_mask[:, :, None], delta, np.nan)
