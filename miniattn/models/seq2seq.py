"""Sequence-to-sequence attention model without recurrence: embedding, attention, softmax.

The model of README.md, "Models and tasks" (and docs/DESIGN.md, "Models").

The encoder state of a source position is its token embedding plus a learned positional embedding;
the decoder state of an output position is the embedding of the previous gold token (teacher forcing)
plus a positional embedding. Each decoder state attends over the encoder states with a bilinear
("general") score, and the output is an affine softmax of the decoder state concatenated with the
context. Composed from :mod:`miniattn.layers` (``embedding_*``, ``projected_lookup_*``,
``attention_*`` or ``multihead_attention_*``, ``softmax_output_*``).

Equations (one example; source x_1..x_S with mask m, decoder inputs y_0..y_{T−1})::

    h_s       = E_src[x_s] + P_src[s]                         encoder states (B, S, d)
    q_t       = E_tgt[y_{t−1}] + P_tgt[t]                     decoder states (B, T, d)
    score_ts  = q_t W_a h_s                                   (uniform twin: score := 0)
                q_t W_a computed as (E_tgt W_a)[y_{t−1}] + (P_tgt W_a)[t] over the batch's distinct
                ids (:func:`miniattn.layers.projected_lookup_forward`)
    α_t       = softmax over {s : m_s} of score_t·
    v_s       = h_s            or  h_s W_v   (value_projection)
    c_t       = Σ_s α_ts v_s
    log p_t   = log_softmax([q_t ; c_t] W_o + b)
    loss      = −(1/N) Σ_{(b,t) counted} log p_bt[y_bt]       N = number of counted targets

With ``heads = H > 1`` each head h has its own ``W_a^h`` and ``W_v^h`` and the contexts are averaged,
``c_t = (1/H) Σ_h Σ_s α^h_ts h_s W_v^h`` (:func:`miniattn.layers.multihead_attention_forward`).

Parameters (``model.params``)::

    "embed"                (V, d)      one table for source and target (shared_embeddings)
    "src_embed"/"tgt_embed" (V_src, d), (V_tgt, d)   separate tables otherwise
    "src_pos"              (source_length, d)       P_src
    "tgt_pos"              (target_length, d)       P_tgt
    "score"                (d, d)  or (H, d, d)     W_a (per head)
    "value"                (d, d)  or (H, d, d)     W_v (per head), only with value_projection
    "out_W"                (2d, C)                  W_o; rows [:d] read q_t, rows [d:] read c_t
    "out_b"                (C,)                     b

Initialisation: every weight is drawn i.i.d. from N(0, init_scale²), default ``init_scale = 1/√d``,
and ``out_b`` starts at 0. With that default an embedding row has norm ≈ 1 and each d×d matrix
roughly preserves norms, so the initial scores are O(1/√d) — attention starts near uniform, as the
two-stage account assumes — while the signal through W_o is large enough that learning starts at once.
Measured with these defaults (Adam lr 1e-3, batches of 128 fresh copy-subset samples, L = 40 of V = 60
with <bos>/<eos>): teacher-forced token accuracy > 0.95 after 225–250 steps at d = 64 (seeds 0–2) and
100 steps at d = 256 (seed 0), checked every 25 steps.
"""

from __future__ import annotations

import numpy as np

from miniattn._validate import NonFiniteError
from miniattn.layers import (attention_backward, attention_forward, embedding_backward,
                             embedding_forward, log_softmax, multihead_attention_backward,
                             multihead_attention_forward, projected_lookup_backward,
                             projected_lookup_forward, softmax_output_backward, softmax_output_forward)
from miniattn.models.base import (ForwardResult, check_flag, check_params, check_scale, check_seq2seq_batch,
                                  check_size, check_source_scale)

__all__ = ["Seq2SeqAttention"]


def _pairwise_logsumexp(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``out[n, t, s] = log Σ_c exp(a[n, t, c] + b[n, s, c])`` without forming the (N, T, S, C) sum.

    ``Σ_c exp(a_c + b_c) = e^{max a} e^{max b} Σ_c exp(a_c − max a) exp(b_c − max b)``, and the last
    sum is a batched matrix product of two factors in (0, 1]. It can underflow only when the two
    maxima sit at different classes and the logits are extreme; those few entries (sum below
    √tiny, where precision could be lost) are recomputed exactly with the ordinary max shift.
    """
    ma = np.max(a, axis=-1, keepdims=True)
    mb = np.max(b, axis=-1, keepdims=True)
    total = np.exp(a - ma) @ np.exp(b - mb).transpose(0, 2, 1)
    small = total < np.sqrt(np.finfo(total.dtype).tiny)
    out = ma + mb.transpose(0, 2, 1) + np.log(np.where(small, 1.0, total))
    if np.any(small):
        n, t, s = np.nonzero(small)
        z = a[n, t] + b[n, s]                                           # (K, C), K small
        mz = np.max(z, axis=-1)
        out[n, t, s] = mz + np.log(np.sum(np.exp(z - mz[:, None]), axis=-1))
    return out


class Seq2SeqAttention:
    """Attention-only sequence-to-sequence model (copying, translation).

    Parameters
    ----------
    source_vocab, target_vocab : int >= 1 (target_vocab >= 2)
        Source ids lie in ``[0, source_vocab)``; decoder inputs and gold outputs in
        ``[0, target_vocab)`` (C = target_vocab output classes). Padding ids must be in range too.
    source_length, target_length : int >= 1
        Maximum source length S and output length T (sizes of the positional tables).
    dim : int >= 1, default 64
        Model width d.
    heads : int >= 1, default 1
        Number of attention heads H; contexts of the heads are averaged.
    shared_embeddings : bool, optional
        One embedding table for source and target (``"embed"``). Default: True when the vocabularies
        have the same size, else separate tables (``"src_embed"``, ``"tgt_embed"``). Sharing requires
        equal sizes.
    value_projection : bool, optional
        Pass encoder states through a learned value matrix (one per head) before averaging.
        Default: False for one head, True for ``heads > 1``. With ``heads > 1`` and
        ``value_projection=False`` every head's values are the states themselves (a fixed identity).
    uniform : bool, default False
        Uniform-attention twin: scores forced to 0 before masking; ``"score"`` gets zero gradient.
    init_scale : float > 0, optional
        Standard deviation of the normal initialisation of every weight; default ``1/√dim``.
    rng : numpy.random.Generator
        Source of the initial parameters (keyword-only, required).
    dtype : float32 or float64, default float64
        Parameter dtype. float32 is an opt-in speed path: every intermediate stays float32.

    Attributes
    ----------
    params : dict of name -> array
        See the module docstring for names and shapes. Entries may be replaced, but every method
        refuses a missing or extra name, a wrong shape or a non-float dtype (naming the entry).
    uniform : bool

    Raises
    ------
    TypeError
        If an argument has the wrong type (a size not an integer, a flag not a bool, ``rng`` not a
        ``numpy.random.Generator``, ``dtype`` None or not a dtype).
    ValueError
        If a size is out of range, ``shared_embeddings=True`` with unequal vocabularies, ``init_scale``
        not a finite float > 0 or so large that the initial weights overflow ``dtype``, or ``dtype``
        not float32/float64.
    """

    def __init__(self, source_vocab: int, target_vocab: int, source_length: int, target_length: int, *,
                 dim: int = 64, heads: int = 1, shared_embeddings: bool | None = None,
                 value_projection: bool | None = None, uniform: bool = False,
                 init_scale: float | None = None, rng: np.random.Generator, dtype=np.float64):
        self.source_vocab = check_size("source_vocab", source_vocab)
        self.target_vocab = check_size("target_vocab", target_vocab, 2)
        self.source_length = check_size("source_length", source_length)
        self.target_length = check_size("target_length", target_length)
        self.dim = check_size("dim", dim)
        self.heads = check_size("heads", heads)
        shared = check_flag("shared_embeddings", shared_embeddings, optional=True)
        if shared is None:
            shared = self.source_vocab == self.target_vocab
        elif shared and self.source_vocab != self.target_vocab:
            raise ValueError(f"shared_embeddings=True needs source_vocab == target_vocab, got "
                             f"{self.source_vocab} and {self.target_vocab}")
        self.shared_embeddings = shared
        vp = check_flag("value_projection", value_projection, optional=True)
        self.value_projection = (self.heads > 1) if vp is None else vp
        self.uniform = check_flag("uniform", uniform)
        self.init_scale = float(1.0 / np.sqrt(self.dim)) if init_scale is None else check_scale("init_scale", init_scale)
        self._init_scale_arg = None if init_scale is None else self.init_scale
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        if dtype is None:
            raise TypeError("dtype must be float32 or float64 (a NumPy dtype, type or name), got None")
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be float32 or float64 (a NumPy dtype, type or name), "
                            f"got {dtype!r}") from None
        if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise ValueError(f"dtype must be float32 or float64, got {dt}")
        self.dtype = dt

        d, H = self.dim, self.heads

        def normal(*shape):
            # Drawn in float64 and cast, so float32 and float64 models from one seed agree. A huge
            # init_scale overflows (in the product or the cast): refused below, without a warning.
            with np.errstate(over="ignore", invalid="ignore"):
                w = (self.init_scale * rng.standard_normal(shape)).astype(dt)
            if not np.isfinite(w).all():
                raise ValueError(f"init_scale={self.init_scale!r} is too large for {dt}: initial weights "
                                 f"drawn from N(0, init_scale^2) overflow to inf (the largest {dt} is "
                                 f"{float(np.finfo(dt).max):.4g})")
            return w

        p: dict[str, np.ndarray] = {}
        if shared:
            p["embed"] = normal(self.source_vocab, d)
        else:
            p["src_embed"] = normal(self.source_vocab, d)
            p["tgt_embed"] = normal(self.target_vocab, d)
        p["src_pos"] = normal(self.source_length, d)
        p["tgt_pos"] = normal(self.target_length, d)
        head_shape = (d, d) if H == 1 else (H, d, d)
        p["score"] = normal(*head_shape)
        if self.value_projection:
            p["value"] = normal(*head_shape)
        p["out_W"] = normal(2 * d, self.target_vocab)
        p["out_b"] = np.zeros(self.target_vocab, dtype=dt)
        self.params = p
        self._param_shapes = {k: v.shape for k, v in p.items()}

    # ----------------------------------------------------------------------------------------------
    def config(self) -> dict:
        """Constructor keyword arguments (JSON-serialisable), to rebuild the model from a checkpoint."""
        return {"source_vocab": self.source_vocab, "target_vocab": self.target_vocab,
                "source_length": self.source_length, "target_length": self.target_length,
                "dim": self.dim, "heads": self.heads, "shared_embeddings": self.shared_embeddings,
                "value_projection": self.value_projection, "uniform": self.uniform,
                "init_scale": self._init_scale_arg, "dtype": self.dtype.name}

    def _tables(self):
        p = self.params
        if self.shared_embeddings:
            return p["embed"], p["embed"]
        return p["src_embed"], p["tgt_embed"]

    def _value_matrices(self):
        """(H, d, d) value matrices for the multi-head block (a fixed identity without projection)."""
        if self.value_projection:
            return self.params["value"]
        return np.broadcast_to(np.eye(self.dim, dtype=self.dtype), (self.heads, self.dim, self.dim))

    def _check_params(self):
        """Names, shapes and float dtypes of ``params`` as built (:func:`miniattn.models.base.check_params`)."""
        check_params(self.params, self._param_shapes)

    def _check_batch(self, batch, need_targets: bool):
        """Validate a Seq2SeqBatch (:func:`miniattn.models.base.check_seq2seq_batch`)."""
        return check_seq2seq_batch(batch, source_vocab=self.source_vocab, target_vocab=self.target_vocab,
                                   source_length=self.source_length, target_length=self.target_length,
                                   need_targets=need_targets)


    def _hidden(self, source, source_mask, target_in, scale=None):
        """Encoder, decoder states and attention. Returns [q ; c] (B, T, 2d) and the caches."""
        p = self.params
        src_table, tgt_table = self._tables()
        S, T = source.shape[1], target_in.shape[1]
        emb_src, cache_src = embedding_forward(source, src_table)
        with np.errstate(over="ignore", invalid="ignore"):   # overflow is reported just below
            h = emb_src + p["src_pos"][:S]                   # new array (B, S, d)
            if scale is not None:
                h *= scale[..., None]
        if not np.isfinite(h).all():
            by = " times source_scale" if scale is not None else ""
            raise NonFiniteError(f"encoder states h = E_src[x] + P_src{by} overflowed to inf or NaN (beyond "
                                 f"{h.dtype} range) from finite inputs")
        emb_tgt, cache_tgt = embedding_forward(target_in, tgt_table)
        # q is written straight into the first half of [q ; c] (a view), so assembling the output
        # layer's input copies only the context — one (B, T, d) pass fewer than np.concatenate.
        d, H = self.dim, self.heads
        hidden = np.empty(emb_tgt.shape[:-1] + (2 * d,), dtype=np.result_type(emb_tgt, p["tgt_pos"]))
        with np.errstate(over="ignore", invalid="ignore"):   # overflow is reported just below
            q = np.add(emb_tgt, p["tgt_pos"][:T], out=hidden[..., :d])   # (B, T, d)
        if not np.isfinite(q).all():
            raise NonFiniteError(f"decoder states q = E_tgt[y] + P_tgt overflowed to inf or NaN (beyond "
                                 f"{q.dtype} range) from finite parameters")
        # The score matrix meets q only through q W_a, and q is a lookup plus a position: factoring
        # (E[y] + P[t]) W_a through the distinct ids of the batch does its d×d work on a few hundred
        # rows instead of B·T (docs/EQUATIONS.md §1.8). One head: W_a (d, d); H heads: [W_1 … W_H].
        w = p["score"] if H == 1 else np.ascontiguousarray(p["score"].transpose(1, 0, 2)).reshape(d, H * d)
        projected, cache_proj = projected_lookup_forward(target_in, tgt_table, p["tgt_pos"][:T], w)
        if H == 1:
            if self.value_projection:
                with np.errstate(over="ignore", invalid="ignore"):   # overflow is reported just below
                    values = h @ p["value"]
                if not np.isfinite(values).all():
                    raise NonFiniteError(f"attention values h W_v overflowed to inf or NaN (beyond {values.dtype} "
                                         "range) from finite parameters")
            else:
                values = h
            context, att = attention_forward(projected, h, values, None, mask=source_mask, uniform=self.uniform)
        else:
            context, att = multihead_attention_forward(projected.reshape(projected.shape[:2] + (H, d)), h, h,
                                                       None, self._value_matrices(),
                                                       mask=source_mask, uniform=self.uniform)
        hidden[..., d:] = context
        return hidden, (cache_src, cache_tgt, cache_proj, h, q, att)

    # ----------------------------------------------------------------------------------------------
    def forward(self, batch, *, source_scale=None) -> ForwardResult:
        """Log-probabilities of every output class at every position, and the attention weights.

        Parameters
        ----------
        batch : Seq2SeqBatch
            ``target_out``/``target_mask`` are not needed (teacher forcing uses ``target_in``).
        source_scale : float array (B, S), optional
            Multiplies each encoder state ``h_s`` (scores and values alike); default 1. The saliency
            is the derivative of ``forward`` in this scale.

        Returns
        -------
        ForwardResult
            ``log_probs`` (B, T, C); ``attention`` (B, T, S), or (H, B, T, S) with ``heads > 1``.

        Raises
        ------
        TypeError, ValueError
            If the batch or ``source_scale`` is malformed, or an entry of ``params`` is missing or has
            the wrong shape or a non-float dtype (naming ``params['name']``).
        NonFiniteError
            If ``params`` or ``source_scale`` hold NaN/inf, or finite values overflow (attention
            scores, output logits, log-probabilities).
        """
        self._check_params()
        source, source_mask, target_in, _, _ = self._check_batch(batch, need_targets=False)
        scale = check_source_scale(source_scale, source.shape, self.dtype)
        hidden, (_, _, _, _, _, att) = self._hidden(source, source_mask, target_in, scale)
        with np.errstate(over="ignore", invalid="ignore"):   # overflow is reported just below
            logits = hidden @ self.params["out_W"] + self.params["out_b"]
        if not np.isfinite(logits).all():
            raise NonFiniteError(f"output logits [q ; c] W_o + b overflowed to inf or NaN (beyond {logits.dtype} "
                                 "range) from finite parameters")
        log_probs = log_softmax(logits)
        return ForwardResult(log_probs, att.weights)

    def loss_and_grads(self, batch) -> tuple[float, dict[str, np.ndarray]]:
        """Mean cross-entropy over the counted targets and its gradient for every parameter.

        Backward chain: softmax output → split ``[dq ; dc]`` → attention backward (projected queries,
        keys, values, value matrices) → projected lookup backward (score matrices, and the queries'
        share of the target table and positions) → positional tables (sum over the batch) and
        embedding tables (scatter-add; a shared table receives both the source and the target
        gradient).

        Returns
        -------
        loss : float
        grads : dict name -> array, keyed and shaped like ``params``.

        Raises
        ------
        TypeError, ValueError
            If the batch is malformed, or an entry of ``params`` is missing or has the wrong shape or
            a non-float dtype (naming ``params['name']``).
        NonFiniteError
            If ``params`` hold NaN/inf, or finite values overflow (scores, logits, loss, a gradient).
        """
        self._check_params()
        source, source_mask, target_in, target_out, target_mask = self._check_batch(batch, need_targets=True)
        p, d = self.params, self.dim
        hidden, (cache_src, cache_tgt, cache_proj, h, _, att) = self._hidden(source, source_mask, target_in)
        loss, out_cache = softmax_output_forward(hidden, p["out_W"], p["out_b"], target_out, target_mask)
        g_out = softmax_output_backward(1.0, out_cache)
        dq, dcontext = g_out.hidden[..., :d], g_out.hidden[..., d:]
        grads = {"out_W": g_out.weight, "out_b": g_out.bias}
        H = self.heads
        if H == 1:
            g = attention_backward(dcontext, att)
            if self.value_projection:
                grads["value"] = h.reshape(-1, d).T @ g.values.reshape(-1, d)
                dh = g.keys + g.values @ p["value"].T
            else:
                dh = np.add(g.keys, g.values, out=g.keys)     # g.keys is ours: add in place
            dprojected = g.queries
        else:
            g = multihead_attention_backward(dcontext, att)
            if self.value_projection:
                grads["value"] = g.value_matrices
            dh = np.add(g.keys, g.values, out=g.keys)
            dprojected = g.queries.reshape(g.queries.shape[:2] + (H * d,))
        # Through the projected lookup: the score matrix, and the query's share of the target table
        # and positions (d×d products over the batch's distinct ids only).
        gp = projected_lookup_backward(dprojected, cache_proj)
        grads["score"] = gp.weight if H == 1 else np.ascontiguousarray(gp.weight.reshape(d, H, d).transpose(1, 0, 2))
        S, T = source.shape[1], target_in.shape[1]
        grads["src_pos"] = np.zeros_like(p["src_pos"], dtype=dh.dtype)
        grads["src_pos"][:S] = dh.sum(axis=0)
        grads["tgt_pos"] = np.zeros_like(p["tgt_pos"], dtype=dq.dtype)
        grads["tgt_pos"][:T] = dq.sum(axis=0) + gp.positions
        d_src_table = embedding_backward(dh, cache_src)
        d_tgt_table = embedding_backward(dq, cache_tgt)
        d_tgt_table += gp.table
        if self.shared_embeddings:
            grads["embed"] = d_src_table + d_tgt_table
        else:
            grads["src_embed"], grads["tgt_embed"] = d_src_table, d_tgt_table
        return loss, {k: grads[k] for k in p}

    # ----------------------------------------------------------------------------------------------
    def ktiw_probe(self, batch) -> np.ndarray:
        """KTIW probe β: log-probability of the gold output if the context were source position s alone.

        ``β[b,t,s] = log_softmax([q_t ; v̄_s] W_o + b)[y_t]`` where ``v̄_s`` is what attending only to
        s would put in the context: ``h_s``, ``h_s W_v``, or with heads the head average
        ``(1/H) Σ_h h_s W_v^h = h_s · mean_h W_v^h`` (the values are linear in h_s). The logits split
        as ``(q_t W_o[:d] + b) + v̄_s W_o[d:]``, so the (B, T, S, C) logits are never materialised
        (see :func:`_pairwise_logsumexp`).

        Returns
        -------
        beta : array (B, T, S)
            NaN at masked source positions and at uncounted output positions.

        Raises
        ------
        TypeError, ValueError
            If the batch is malformed, or an entry of ``params`` is missing or has the wrong shape or
            a non-float dtype (naming ``params['name']``).
        NonFiniteError
            If ``params`` hold NaN/inf, or finite values overflow so that β is inf or NaN at a counted
            position.
        """
        self._check_params()
        source, source_mask, target_in, target_out, target_mask = self._check_batch(batch, need_targets=True)
        p, d = self.params, self.dim
        _, (_, _, _, h, q, _) = self._hidden(source, source_mask, target_in)
        counted = source_mask[:, None, :] & target_mask[:, :, None]
        with np.errstate(over="ignore", invalid="ignore"):   # overflow is reported below, where counted
            if self.value_projection:
                P = p["value"] if self.heads == 1 else p["value"].mean(axis=0)
                v = h @ P
            else:
                v = h
            from_q = q @ p["out_W"][:d] + p["out_b"]                 # (B, T, C)
            from_v = v @ p["out_W"][d:]                              # (B, S, C)
            B, T = target_out.shape
            gold_q = np.take_along_axis(from_q, target_out[..., None], axis=-1)            # (B, T, 1)
            gold_v = from_v.transpose(0, 2, 1)[np.arange(B)[:, None], target_out]          # (B, T, S)
            beta = gold_q + gold_v - _pairwise_logsumexp(from_q, from_v)
        if not np.isfinite(beta[counted]).all():
            raise NonFiniteError(f"KTIW probe beta overflowed to inf or NaN at counted positions (output logits "
                                 f"beyond {beta.dtype} range) from finite parameters")
        return np.where(counted, beta, np.nan)

    def saliency(self, batch) -> np.ndarray:
        """Gradient × input saliency Δ of each gold log-probability with respect to each source scale.

        Scale encoder state s by λ_s (``h_s → λ_s h_s``: scores and values alike). Output position t
        sees the source only through its own attention row, so with ``score_ts`` linear in λ_s,
        ``g_t = ∂ log p(y_t)/∂c_t = (onehot(y_t) − p_t) W_o[d:]ᵀ`` and ``e_ts = g_t · v_s``::

            ∂c_t/∂λ_s = α_ts v_s + α_ts score_ts (v_s − c_t)
            Δ_ts      = α_ts [ e_ts + score_ts (e_ts − Σ_r α_tr e_tr) ]

        (``score := 0`` in the uniform twin, whose attention does not move). With heads, Δ is the
        average over heads of the same expression with each head's α, scores and values. Computed
        for all (t, s) at once, with no sum over t.

        Returns
        -------
        delta : array (B, T, S)
            NaN at masked source positions and at uncounted output positions.

        Raises
        ------
        TypeError, ValueError
            If the batch is malformed, or an entry of ``params`` is missing or has the wrong shape or
            a non-float dtype (naming ``params['name']``).
        NonFiniteError
            If ``params`` hold NaN/inf, or finite values overflow so that Δ is inf or NaN at a counted
            position.
        """
        self._check_params()
        source, source_mask, target_in, target_out, target_mask = self._check_batch(batch, need_targets=True)
        hidden, (_, _, _, _, _, att) = self._hidden(source, source_mask, target_in)
        counted = source_mask[:, None, :] & target_mask[:, :, None]
        with np.errstate(over="ignore", invalid="ignore"):   # overflow is reported below, where counted
            delta = self._saliency_terms(hidden, att, source.shape[1], target_out)
        if not np.isfinite(delta[counted]).all():
            raise NonFiniteError(f"saliency delta overflowed to inf or NaN at counted positions (beyond "
                                 f"{delta.dtype} range) from finite parameters")
        return np.where(counted, delta, np.nan)

    def _saliency_terms(self, hidden, att, S: int, target_out) -> np.ndarray:
        """Δ (B, T, S) at every position (:meth:`saliency`, before masking and the finiteness check)."""
        p, d = self.params, self.dim
        # onehot(y) − p, the gradient of log p(y) with respect to the logits
        dlogits = -np.exp(log_softmax(hidden @ p["out_W"] + p["out_b"]))
        np.put_along_axis(dlogits, target_out[..., None],
                          np.take_along_axis(dlogits, target_out[..., None], axis=-1) + 1.0, axis=-1)
        g = dlogits @ p["out_W"][d:].T                                                  # (B, T, d)
        H = self.heads
        if H == 1:
            cache = att
        else:
            # Heads are folded into the query axis (row t·H + h is head h at position t) and share the
            # values h_s, so g_t · (h_s W_v^h) = (g_t W_v^hᵀ) · h_s: project g once per head.
            cache = att.head_cache
            P = att.value_matrices                                                      # (H, d, d)
            g = (g.reshape(-1, d) @ P.reshape(H * d, d).T).reshape(g.shape[0], -1, d)   # (B, T·H, d)
        alpha = cache.weights                                                           # (B, T·H, S)
        e = g @ cache.values.transpose(0, 2, 1)                                         # (B, T·H, S)
        delta = alpha * e
        if not self.uniform:
            scores = cache.projected_queries @ cache.keys.transpose(0, 2, 1)
            e_bar = np.sum(alpha * e, axis=-1, keepdims=True)
            delta += alpha * scores * (e - e_bar)
        if H > 1:
            delta = delta.reshape(target_out.shape + (H, S)).mean(axis=2)
        return delta
