"""Hand-written building blocks: embedding, single-head attention, multi-head attention, softmax output.

Each block is a pair of pure functions in the CS231n style::

    out, cache = x_forward(...)
    grads = x_backward(dout, cache)

The cache is a ``NamedTuple`` holding exactly what the backward pass needs. Nothing is modified in
place, no Python loop runs over batch, time or vocabulary, and every input is validated (see
:mod:`miniattn._validate`). Arrays are float64 by default; float32 inputs stay float32.

Finite inputs give finite outputs or a one-line :class:`~miniattn._validate.NonFiniteError` naming
the quantity that overflowed (attention scores, context, a gradient, logits, log-probabilities,
the loss). Softmax inputs are checked on their small reduced row maxima; other results where they
are produced (for the attention blocks the (B, T, 1) ``sum alpha ⊙ dalpha`` and the returned arrays).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import sparse

from miniattn._validate import (NonFiniteError, bool_array, flag, float_array, int_array, integer, refuse_masked,
                                result_dtype)

__all__ = [
    "EmbeddingCache", "embedding_forward", "embedding_backward",
    "ProjectedLookupCache", "ProjectedLookupGrads", "projected_lookup_forward", "projected_lookup_backward",
    "AttentionCache", "AttentionGrads", "attention_forward", "attention_backward",
    "MultiHeadCache", "MultiHeadGrads", "multihead_attention_forward", "multihead_attention_backward",
    "SoftmaxOutputCache", "SoftmaxOutputGrads", "softmax_output_forward", "softmax_output_backward",
    "masked_softmax", "log_softmax",
]


# --------------------------------------------------------------------------------------------------
# Shared numerics
# --------------------------------------------------------------------------------------------------

def _require_finite(what: str, arr: np.ndarray) -> None:
    """Raise :class:`NonFiniteError` naming ``what`` if ``arr`` (computed from finite inputs) is not finite."""
    if not np.isfinite(arr).all():
        raise NonFiniteError(f"{what} overflowed to inf or NaN (beyond {arr.dtype} range) from finite inputs")


def _check_cache(cache, cls, forward: str):
    """Return ``cache`` as a ``cls`` (a plain tuple of its fields is accepted), else raise ``TypeError``.

    Any other object (None, or the cache of another block) would fail later with a raw unpacking or
    attribute error.
    """
    if isinstance(cache, cls):
        return cache
    if type(cache) is tuple and len(cache) == len(cls._fields):
        return cls(*cache)
    raise TypeError(f"cache must be the {cls.__name__} returned by {forward}, got {type(cache).__name__}")


def _sparse_table(name: str, table: np.ndarray) -> np.ndarray:
    """Refuse a float16 ``table``: the backward pass's sparse scatter (SciPy) has no float16 kernel."""
    if table.dtype == np.float16:
        raise TypeError(f"{name} must be float32 or float64 (the backward pass's scatter-add has no float16), "
                        f"got dtype {table.dtype}")
    return table


def _check_row_max(name: str, row_max: np.ndarray, masked: bool) -> None:
    """Check the (small) reduced max of a softmax: finite, else a one-line error naming ``name``.

    A NaN or +inf maximum means an unmasked entry is NaN or +inf (for finite inputs of a block: a
    product that overflowed); a -inf maximum means a row with no unmasked finite entry.
    """
    if np.isfinite(row_max).all():
        return
    if np.isnan(row_max).any() or np.isposinf(row_max).any():
        raise NonFiniteError(f"{name} overflowed to inf or NaN at unmasked entries (largest |{name}| beyond "
                             f"{row_max.dtype} range) from finite inputs")
    if masked:
        raise NonFiniteError(f"{name} have a row with every entry masked or -inf; a softmax over no entries "
                             "is undefined")
    raise NonFiniteError(f"{name} have a row with every entry -inf; a softmax over no entries is undefined")


def _softmax_input(name: str, x, axis) -> tuple[np.ndarray, int]:
    """``(x, axis)`` of a softmax, checked without a pass over ``x``: a floating-point array (a
    literal of ints becomes float64, as in :func:`~miniattn._validate.float_array`; an ndarray is
    returned as it is), an integer ``axis``, and a non-empty ``axis`` (a softmax over no entries is
    undefined). A masked array is a ``TypeError``. Each error names ``name`` or ``axis``; an axis out
    of range is left to NumPy."""
    axis = integer("axis", axis)
    refuse_masked(name, x)
    arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    if not isinstance(x, np.ndarray) and arr.dtype.kind in "iu":
        arr = arr.astype(np.float64)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {arr.dtype}")
    if -arr.ndim <= axis < arr.ndim and arr.shape[axis] == 0:
        raise ValueError(f"{name} must not be empty along axis {axis} (a softmax over no entries is "
                         f"undefined), got shape {arr.shape}")
    return arr, axis


def log_softmax(logits: np.ndarray, axis: int = -1, *, name: str = "logits") -> np.ndarray:
    """Stable ``log softmax``: ``z - max z - log sum exp(z - max z)`` along ``axis``.

    Parameters
    ----------
    logits : float array, any shape
    axis : int
        The class axis.
    name : str
        What the logits are, for error messages.

    Returns
    -------
    array, shape of ``logits``; every entry finite and ``<= 0``.

    Raises
    ------
    TypeError
        If ``logits`` is not a floating-point array (or is a masked array) or ``axis`` not an integer.
    ValueError
        If ``logits`` is empty along ``axis``.
    NonFiniteError
        If a row's maximum is NaN or ±inf (an unmasked NaN/inf, or every entry -inf), or if the
        spread of a row exceeds the dtype's range so that a finite logit's log-probability would be
        -inf. Both are checked on the reduced (..., 1) maximum; the spread only when that maximum
        is large enough for the difference to overflow.
    """
    logits, axis = _softmax_input(name, logits, axis)
    row_max = np.max(logits, axis=axis, keepdims=True)
    _check_row_max(name, row_max, masked=False)
    with np.errstate(over="ignore"):   # an overflow to -inf is reported just below, in one line
        shifted = logits - row_max
    finfo = np.finfo(shifted.dtype)
    # z - max z (z >= -finfo.max) can overflow to -inf only if max z exceeds half an ulp of the largest
    # float, about max·eps/4; below max·eps/8 (every ordinary case) the extra reduction is skipped.
    if np.max(row_max) >= finfo.max * (finfo.eps / 8):
        if np.any(np.isneginf(shifted) & np.isfinite(logits)):
            raise NonFiniteError(f"log-probabilities from {name} overflowed to -inf (spread of a row beyond "
                                 f"{shifted.dtype} range) from finite inputs")
    shifted -= np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))   # in place: one temporary fewer
    return shifted


def masked_softmax(scores: np.ndarray, mask: np.ndarray | None, axis: int = -1, *,
                   name: str = "scores") -> np.ndarray:
    """Softmax along ``axis`` over the entries where ``mask`` is True; masked entries get exactly 0.

    ``mask`` broadcasts against ``scores``. The maximum is taken over unmasked entries only, so a
    masked score of any size (also inf or NaN) cannot overflow the exponent or reach the result.
    The normaliser ``sum exp(z - max z)`` lies in ``[1, n]`` once the maximum is finite, so only the
    small reduced maximum is checked.

    Parameters
    ----------
    scores : float array, any shape
    mask : bool array broadcastable to ``scores``, or None
        True where an entry takes part.
    axis : int
    name : str
        What the scores are, for error messages.

    Returns
    -------
    array, shape of ``scores``

    Raises
    ------
    TypeError
        If ``scores`` is not a floating-point array, ``mask`` not a boolean one (either a masked
        array) or ``axis`` not an integer.
    ValueError
        If ``scores`` is empty along ``axis``, or ``mask`` does not broadcast to the shape of ``scores``.
    NonFiniteError
        If an unmasked score is NaN or +inf (for a block's finite inputs: the score product
        overflowed), or a row has every entry masked (or -inf).
    """
    scores, axis = _softmax_input(name, scores, axis)
    if mask is not None:
        refuse_masked("mask", mask)
        mask = np.asarray(mask)
        if mask.dtype != np.bool_:
            raise TypeError(f"mask must be a boolean array (True = keep), got dtype {mask.dtype}")
        try:
            out_shape = np.broadcast_shapes(mask.shape, scores.shape)
        except ValueError:
            raise ValueError(f"mask must broadcast with {name} of shape {scores.shape}, got shape "
                             f"{mask.shape}") from None
        # The result has the broadcast shape (a mask may also expand the scores, e.g. one shared
        # score matrix and a mask per example): only a mask that leaves the shape alone may be dropped.
        if out_shape == scores.shape and np.all(mask):
            mask = None   # nothing masked: skip three np.where passes (the result is bit-identical)
    if mask is None:
        row_max = np.max(scores, axis=axis, keepdims=True)
        _check_row_max(name, row_max, masked=False)
        # z - max z of finite z may round to -inf (a spread beyond the dtype's range): exp gives the
        # correct 0, so NumPy's overflow warning is silenced (here and below).
        with np.errstate(over="ignore"):
            e = np.exp(scores - row_max)
    else:
        filled = np.where(mask, scores, -np.inf)
        row_max = np.max(filled, axis=axis, keepdims=True)
        _check_row_max(name, row_max, masked=True)
        with np.errstate(over="ignore"):
            shifted = filled - row_max
        e = np.where(mask, np.exp(np.where(mask, shifted, 0.0)), 0.0)
    return e / np.sum(e, axis=axis, keepdims=True)


# --------------------------------------------------------------------------------------------------
# Embedding
# --------------------------------------------------------------------------------------------------

class EmbeddingCache(NamedTuple):
    ids: np.ndarray          #: (...) int, the looked-up ids
    table_shape: tuple       #: (V, d)
    dtype: np.dtype          #: dtype of the table


def embedding_forward(ids, table) -> tuple[np.ndarray, EmbeddingCache]:
    """Look up rows of an embedding table.

    Parameters
    ----------
    ids : int array, shape (...)
        Token ids, each in ``[0, V)``. Negative ids are an error (never wrapped).
    table : float array, shape (V, d)
        The embedding table ``E``.

    Returns
    -------
    out : array, shape (..., d)
        ``out[i] = E[ids[i]]``.
    cache : EmbeddingCache

    Raises
    ------
    TypeError
        If ``table`` is float16 (the backward pass's sparse scatter-add supports float32 and wider).
    """
    table = _sparse_table("table", float_array("table", table, ndim=2))
    ids = int_array("ids", ids, upper=table.shape[0])
    return table[ids], EmbeddingCache(ids, table.shape, table.dtype)


def embedding_backward(dout, cache: EmbeddingCache) -> np.ndarray:
    """Gradient of an embedding lookup with respect to the table.

    ``dE[v] = sum over positions i with ids[i] == v of dout[i]`` — repeated ids accumulate.

    Parameters
    ----------
    dout : float array, shape (..., d)
    cache : EmbeddingCache

    Returns
    -------
    dtable : array, shape (V, d)

    Raises
    ------
    TypeError
        If ``cache`` is not the :class:`EmbeddingCache` returned by :func:`embedding_forward`.
    NonFiniteError
        If the sum over repeated ids overflows (checked on the small (V, d) result).
    """
    cache = _check_cache(cache, EmbeddingCache, "embedding_forward")
    V, d = cache.table_shape
    dout = float_array("dout", dout, allow_empty=True)
    if dout.shape != cache.ids.shape + (d,):
        raise ValueError(f"dout must have shape {cache.ids.shape + (d,)}, got {dout.shape}")
    # A dense one-hot (V, N) @ (N, d) product would cost V*N*d; a scatter-add costs N*d. The scatter is
    # a sparse (V, N) selection matrix (one 1 per column) times dout: SciPy's CSR kernel adds, for each
    # table row, the rows of dout in their original order — exactly what np.add.at does, so results are
    # bit-identical to it in float64 and float32 — and ran 3-10x faster than np.add.at and 2-4x faster
    # than np.bincount on flat indices (N = 128*41, d = 256: add.at 24.7, bincount 4.6, CSR 2.3 ms).
    out_dtype = np.result_type(cache.dtype, dout.dtype)
    ids = cache.ids.reshape(-1)
    if ids.size == 0:
        return np.zeros((V, d), dtype=out_dtype)
    select = sparse.csr_array((np.ones(ids.size, dtype=out_dtype), (ids, np.arange(ids.size))),
                              shape=(V, ids.size))
    dtable = np.asarray(select @ dout.reshape(-1, d), dtype=out_dtype)
    _require_finite("embedding gradient (sum of dout over repeated ids)", dtable)   # (V, d): small
    return dtable


# --------------------------------------------------------------------------------------------------
# Projected lookup: (E[ids] + P) W through the vocabulary
# --------------------------------------------------------------------------------------------------

class ProjectedLookupCache(NamedTuple):
    used: np.ndarray          #: (U,) int, the distinct ids of the lookup, ascending
    inverse: np.ndarray       #: (N,) int, position of each looked-up id in ``used`` (N = ids.size)
    ids_shape: tuple          #: shape of ``ids``, (B, T)
    used_rows: np.ndarray     #: (U, d) ``E[used]``
    positions: np.ndarray     #: (T, d)
    weight: np.ndarray        #: (d, k)
    table_shape: tuple        #: (V, d)


class ProjectedLookupGrads(NamedTuple):
    table: np.ndarray         #: (V, d)
    positions: np.ndarray     #: (T, d)
    weight: np.ndarray        #: (d, k)


def projected_lookup_forward(ids, table, positions, weight) -> tuple[np.ndarray, ProjectedLookupCache]:
    """Project looked-up rows plus positional rows, factored through the rows actually used.

    Equations (``u_1 < … < u_U`` the distinct ids in the batch, ``U ≤ min(V, B·T)``)::

        out[b,t] = (E[ids[b,t]] + P[t]) W  =  (E[u] W)[ids[b,t]] + (P W)[t]

    The right-hand side costs ``(U + T) d k`` multiply-adds instead of the ``B T d k`` of projecting
    every position: the decoder's queries repeat a few hundred rows thousands of times, so in the
    seq2seq model this removes most of the score matrix's products from the step. The two sides
    are equal in exact arithmetic; in floating point they agree to rounding (a sum of two rounded
    products instead of one product of a rounded sum).

    Parameters
    ----------
    ids : int array, shape (B, T)
        Row ids into ``table``, each in ``[0, V)``.
    table : float array, shape (V, d)
        The embedding table ``E``.
    positions : float array, shape (T, d)
        The positional rows ``P`` (row t is added at every batch row's position t).
    weight : float array, shape (d, k)
        The projection ``W``.

    Returns
    -------
    out : array, shape (B, T, k)
    cache : ProjectedLookupCache

    Raises
    ------
    TypeError
        If ``table`` is float16 (the backward pass's sparse scatter-add supports float32 and wider).
    NonFiniteError
        If the projected rows overflow from finite inputs.
    """
    table = _sparse_table("table", float_array("table", table, ndim=2))
    ids = int_array("ids", ids, upper=table.shape[0], ndim=2)
    positions = float_array("positions", positions, ndim=2)
    weight = float_array("weight", weight, ndim=2)
    B, T = ids.shape
    d = table.shape[1]
    if positions.shape != (T, d):
        raise ValueError(f"positions must have shape (T, d) = {(T, d)}, got {positions.shape}")
    if weight.shape[0] != d:
        raise ValueError(f"weight must have shape (d={d}, k), got {weight.shape}")
    used, inverse = np.unique(ids.reshape(-1), return_inverse=True)
    used_rows = table[used]
    with np.errstate(over="ignore", invalid="ignore"):   # overflow is reported below, in one line
        rows = used_rows @ weight                                               # (U, k)
        pos = positions @ weight                                                # (T, k)
        out = rows[inverse.reshape(ids.shape)]                                  # (B, T, k)
        out += pos
    _require_finite("projected lookup (E[ids] + P) W", out)
    return out, ProjectedLookupCache(used, inverse.reshape(-1), ids.shape, used_rows, positions,
                                     weight, table.shape)


def projected_lookup_backward(dout, cache: ProjectedLookupCache) -> ProjectedLookupGrads:
    """Backward pass of :func:`projected_lookup_forward`.

    Equations (``D[j] = Σ_{(b,t): ids[b,t] = u_j} dout[b,t]``, ``G = Σ_b dout[b]``)::

        dE[u_j] = D[j] Wᵀ        dP = G Wᵀ        dW = E[u]ᵀ D + Pᵀ G

    The scatter ``D`` is the embedding block's (a sparse selection matrix times ``dout``); every
    d×k product then has U or T rows, not B·T. Rows of ``dE`` for ids not in the batch are zero.

    Parameters
    ----------
    dout : float array, shape (B, T, k)
    cache : ProjectedLookupCache

    Returns
    -------
    ProjectedLookupGrads
        ``table`` (V, d), ``positions`` (T, d), ``weight`` (d, k).

    Raises
    ------
    TypeError
        If ``cache`` is not the :class:`ProjectedLookupCache` returned by :func:`projected_lookup_forward`.
    NonFiniteError
        If a gradient overflows from finite inputs.
    """
    cache = _check_cache(cache, ProjectedLookupCache, "projected_lookup_forward")
    used, inverse, ids_shape, used_rows, positions, weight, (V, d) = cache
    k = weight.shape[1]
    dout = float_array("dout", dout, ndim=3)
    if dout.shape != ids_shape + (k,):
        raise ValueError(f"dout must have shape {ids_shape + (k,)}, got {dout.shape}")
    out_dtype = np.result_type(used_rows, dout)
    select = sparse.csr_array((np.ones(inverse.size, dtype=out_dtype), (inverse, np.arange(inverse.size))),
                              shape=(used.size, inverse.size))
    with np.errstate(over="ignore", invalid="ignore"):   # overflow is reported below, in one line
        drows = np.asarray(select @ dout.reshape(-1, k), dtype=out_dtype)      # (U, k)
        dpos = dout.sum(axis=0)                                                 # (T, k)
        dweight = used_rows.T @ drows
        dweight += positions.T @ dpos
        dtable = np.zeros((V, d), dtype=out_dtype)
        dtable[used] = drows @ weight.T
        dpositions = dpos @ weight.T
    _require_finite("gradient of the projected lookup's table", dtable)
    _require_finite("gradient of the projected lookup's positions", dpositions)
    _require_finite("gradient of the projected lookup's weight", dweight)
    return ProjectedLookupGrads(dtable, dpositions, dweight)


# --------------------------------------------------------------------------------------------------
# Single-head attention
# --------------------------------------------------------------------------------------------------

class AttentionCache(NamedTuple):
    queries: np.ndarray               #: (B, T, dq)
    keys: np.ndarray                  #: (B, S, dk)
    values: np.ndarray                #: (B, S, dv)
    score_matrix: np.ndarray | None   #: (dq, dk) or None (dot product)
    projected_queries: np.ndarray     #: (B, T, dk) = queries @ score_matrix (or queries)
    mask: np.ndarray | None           #: (B, S) bool, True = key may be attended
    weights: np.ndarray               #: (B, T, S) attention alpha
    uniform: bool


class AttentionGrads(NamedTuple):
    queries: np.ndarray
    keys: np.ndarray
    values: np.ndarray
    score_matrix: np.ndarray | None


def _key_mask(mask, B: int, S: int) -> np.ndarray:
    """Validate a (B, S) key mask: boolean, and at least one attendable key in every batch row."""
    mask = bool_array("mask", mask, (B, S))
    if not np.all(mask.any(axis=1)):
        bad = np.flatnonzero(~mask.any(axis=1))
        raise ValueError(f"mask has rows with every key masked (batch rows {bad[:5].tolist()}); "
                         "attention over no keys is undefined")
    return mask


def _attention_core(projected, keys, values, mask, uniform: bool, queries, score_matrix):
    """Scores, masked softmax and context of validated inputs (shared by the single- and multi-head blocks).

    ``projected`` (B, T, dk) are the queries after the score matrix; ``mask`` is a validated (B, S)
    mask or None. Returns ``context`` (B, T, dv) and the :class:`AttentionCache`.
    """
    B, T = projected.shape[:2]
    S = keys.shape[1]
    if uniform:
        scores = np.zeros((B, T, S), dtype=result_dtype(projected, keys))
    else:
        # An overflowing score is reported by masked_softmax (a one-line NonFiniteError) if it is
        # unmasked and harmless if masked, so NumPy's overflow warning is silenced for this product.
        with np.errstate(over="ignore", invalid="ignore"):
            scores = projected @ keys.transpose(0, 2, 1)
    weights = masked_softmax(scores, None if mask is None else mask[:, None, :], name="attention scores")
    with np.errstate(over="ignore", invalid="ignore"):   # the caller checks the context it returns
        context = weights @ values
    cache = AttentionCache(queries, keys, values, score_matrix, projected, mask, weights, bool(uniform))
    return context, cache


def attention_forward(queries, keys, values, score_matrix=None, mask=None, uniform: bool = False):
    """Single-head (bilinear or dot-product) attention.

    Equations::

        scores[b,t,s]  = q[b,t] · W · k[b,s]        (W = I when ``score_matrix`` is None)
        alpha[b,t,:]   = softmax over unmasked s of scores[b,t,:]   (scores := 0 if ``uniform``)
        context[b,t]   = sum_s alpha[b,t,s] v[b,s]

    Parameters
    ----------
    queries : float array, shape (B, T, dq)
    keys : float array, shape (B, S, dk)
    values : float array, shape (B, S, dv)
    score_matrix : float array, shape (dq, dk), optional
        The bilinear ("general") score matrix ``W``. Absent: dot product, requiring ``dq == dk``.
    mask : bool array, shape (B, S), optional
        True where key ``s`` may be attended. Every row needs at least one True.
    uniform : bool
        The paper's uniform-attention twin: scores forced to 0 before masking, so ``alpha`` is
        exactly ``1 / (number of unmasked keys)`` and no gradient reaches queries, keys or ``W``.
        True or False only (a ``TypeError`` otherwise: the string ``"False"`` is truthy).

    Returns
    -------
    context : array, shape (B, T, dv)
    cache : AttentionCache
        ``cache.weights`` is ``alpha``, shape (B, T, S).

    Raises
    ------
    NonFiniteError
        If finite inputs overflow: an unmasked score (checked on the reduced row maximum) or the
        context.
    """
    uniform = flag("uniform", uniform)
    queries = float_array("queries", queries, ndim=3)
    keys = float_array("keys", keys, ndim=3)
    values = float_array("values", values, ndim=3)
    B, T, dq = queries.shape
    if keys.shape[0] != B or values.shape[:2] != keys.shape[:2]:
        raise ValueError(f"keys (B, S, dk) and values (B, S, dv) must share B={B} and S with queries "
                         f"(B, T, dq); got queries {queries.shape}, keys {keys.shape}, values {values.shape}")
    S, dk = keys.shape[1], keys.shape[2]
    if score_matrix is None:
        if dq != dk:
            raise ValueError(f"dot-product attention needs dq == dk; got dq={dq}, dk={dk} "
                             "(pass score_matrix of shape (dq, dk) for bilinear attention)")
        projected = queries
    else:
        score_matrix = float_array("score_matrix", score_matrix, ndim=2)
        if score_matrix.shape != (dq, dk):
            raise ValueError(f"score_matrix must have shape (dq, dk) = {(dq, dk)}, got {score_matrix.shape}")
        # One (B·T, dq) @ (dq, dk) GEMM rather than B stacked (T, dq) ones: BLAS blocks and threads it.
        # An overflow reaches the scores (every row has an unmasked key), reported by masked_softmax.
        with np.errstate(over="ignore", invalid="ignore"):
            projected = (queries.reshape(-1, dq) @ score_matrix).reshape(B, T, dk)
    if mask is not None:
        mask = _key_mask(mask, B, S)
    context, cache = _attention_core(projected, keys, values, mask, uniform, queries, score_matrix)
    _require_finite("attention context", context)
    return context, cache


def _attention_backward_core(dcontext, cache: AttentionCache):
    """``(dvalues, dscores)`` of a validated ``dcontext``; ``dscores`` is None in the uniform twin."""
    alpha, v = cache.weights, cache.values
    # Overflows are reported in one line: dvalues by the callers, an inf in dalpha through the reduced
    # ``weighted`` (inf or NaN wherever dalpha is), one in dscores through the gradients made from it.
    with np.errstate(over="ignore", invalid="ignore"):
        dvalues = alpha.transpose(0, 2, 1) @ dcontext
        if cache.uniform:
            return dvalues, None
        dalpha = dcontext @ v.transpose(0, 2, 1)
        weighted = np.sum(alpha * dalpha, axis=-1, keepdims=True)       # (B, T, 1): checked cheaply
    _require_finite("attention weight gradient (dcontext · values)", weighted)
    with np.errstate(over="ignore", invalid="ignore"):
        dscores = alpha * (dalpha - weighted)
    return dvalues, dscores


def attention_backward(dcontext, cache: AttentionCache) -> AttentionGrads:
    """Backward pass of :func:`attention_forward`.

    Equations (per batch row, ``dC = dcontext``)::

        dV      = alphaᵀ dC
        dalpha  = dC Vᵀ
        dscores = alpha ⊙ (dalpha − sum_s alpha ⊙ dalpha)
        dK      = dscoresᵀ (Q W)          dQ = dscores K Wᵀ          dW = sum_b,t Qᵀ dscores K

    Parameters
    ----------
    dcontext : float array, shape (B, T, dv)
    cache : AttentionCache

    Returns
    -------
    AttentionGrads
        ``queries`` (B, T, dq), ``keys`` (B, S, dk), ``values`` (B, S, dv), ``score_matrix``
        (dq, dk) or None. With ``uniform=True`` the first, second and last are zeros.

    Raises
    ------
    TypeError
        If ``cache`` is not the :class:`AttentionCache` returned by :func:`attention_forward`.
    NonFiniteError
        If a gradient overflows from finite inputs (``sum_s alpha ⊙ dalpha`` is checked on its
        reduced (B, T, 1) array, then each returned gradient).
    """
    cache = _check_cache(cache, AttentionCache, "attention_forward")
    q, k, v, W, qW, _, alpha, uniform = cache
    dcontext = float_array("dcontext", dcontext, ndim=3)
    expected = alpha.shape[:2] + (v.shape[2],)
    if dcontext.shape != expected:
        raise ValueError(f"dcontext must have shape {expected}, got {dcontext.shape}")
    dvalues, dscores = _attention_backward_core(dcontext, cache)
    _require_finite("gradient of the attention values", dvalues)
    if uniform:
        # Scores are constants in the uniform twin: nothing upstream of them gets a gradient.
        dq = np.zeros_like(q, dtype=np.result_type(q, dcontext))
        dk = np.zeros_like(k, dtype=np.result_type(k, dcontext))
        dW = None if W is None else np.zeros_like(W, dtype=np.result_type(W, dcontext))
        return AttentionGrads(dq, dk, dvalues, dW)
    with np.errstate(over="ignore", invalid="ignore"):   # each gradient is checked below, in one line
        dkeys = dscores.transpose(0, 2, 1) @ qW
    _require_finite("gradient of the attention keys", dkeys)
    with np.errstate(over="ignore", invalid="ignore"):
        dprojected = dscores @ k
    if W is None:
        _require_finite("gradient of the attention queries", dprojected)
        return AttentionGrads(dprojected, dkeys, dvalues, None)
    # One flat GEMM (B·T rows), as in the forward pass; a stacked matmul with the transposed view W.T
    # was the slowest form (float32 d=256: 12.4 ms stacked, 7.9 ms flat).
    with np.errstate(over="ignore", invalid="ignore"):
        dq = (dprojected.reshape(-1, dprojected.shape[2]) @ W.T).reshape(q.shape)
        dW = q.reshape(-1, q.shape[2]).T @ dprojected.reshape(-1, dprojected.shape[2])
    _require_finite("gradient of the attention queries", dq)
    _require_finite("gradient of the score matrix", dW)
    return AttentionGrads(dq, dkeys, dvalues, dW)


# --------------------------------------------------------------------------------------------------
# Multi-head attention, built from the single-head block
# --------------------------------------------------------------------------------------------------

class MultiHeadCache(NamedTuple):
    head_cache: AttentionCache   #: dot-product single-head cache, heads folded into the query axis (B, T·H, ·)
    queries: np.ndarray          #: (B, T, dq), or (B, T, H, dk) already projected
    values: np.ndarray           #: (B, S, dv)
    score_matrices: np.ndarray | None   #: (H, dq, dk), or None (queries already projected)
    value_matrices: np.ndarray   #: (H, dv, do)
    weights: np.ndarray          #: (H, B, T, S) attention of each head (a view of head_cache.weights)
    head_contexts: np.ndarray    #: (B·T, H·dv) alpha_h V of every head, side by side


class MultiHeadGrads(NamedTuple):
    queries: np.ndarray          #: (B, T, dq), or (B, T, H, dk) without score matrices
    keys: np.ndarray             #: (B, S, dk)
    values: np.ndarray           #: (B, S, dv)
    score_matrices: np.ndarray | None   #: (H, dq, dk), or None
    value_matrices: np.ndarray   #: (H, dv, do)


def multihead_attention_forward(queries, keys, values, score_matrices, value_matrices, mask=None,
                                uniform: bool = False):
    """H single heads, each with its own score and value matrix, contexts averaged over heads.

    Equations::

        alpha_h  = attention weights of head h with score matrix W_h (as in attention_forward)
        context  = (1/H) sum_h alpha_h (V P_h)  =  [alpha_1 V, …, alpha_H V] @ [P_1; …; P_H] / H

    All heads attend over the same keys, values and mask, so they are one pass of the single-head
    block (dot-product scores) with the heads folded into the query axis: the queries of position t
    are the H rows ``Q[t] W_h`` (one (B·T, dq) @ (dq, H·dk) GEMM with ``[W_1 … W_H]``, whose output
    already has that (B, T·H, dk) layout), and the value projection moves after the attention
    average, as one (B·T, H·dv) @ (H·dv, do) GEMM. Nothing is copied per head and there is no
    Python loop over heads.

    Parameters
    ----------
    queries : float array, shape (B, T, dq), or (B, T, H, dk) without ``score_matrices``
    keys : float array, shape (B, S, dk)
    values : float array, shape (B, S, dv)
    score_matrices : float array, shape (H, dq, dk), or None
        None: dot-product heads, ``queries[:, :, h]`` being head h's already projected queries
        (``Q W_h`` computed by the caller, e.g. :func:`projected_lookup_forward`); the backward pass
        then returns their gradient (B, T, H, dk) and no score-matrix gradient.
    value_matrices : float array, shape (H, dv, do)
    mask : bool array, shape (B, S), optional
    uniform : bool
        As in :func:`attention_forward` (True or False only).

    Returns
    -------
    context : array, shape (B, T, do)
    cache : MultiHeadCache
        ``cache.weights`` has shape (H, B, T, S).

    Raises
    ------
    NonFiniteError
        If finite inputs overflow (attention scores, or the context).
    """
    uniform = flag("uniform", uniform)
    queries = float_array("queries", queries, ndim=4 if score_matrices is None else 3)
    keys = float_array("keys", keys, ndim=3)
    values = float_array("values", values, ndim=3)
    Ws = None if score_matrices is None else float_array("score_matrices", score_matrices, ndim=3)
    Ps = float_array("value_matrices", value_matrices, ndim=3)
    H, dk = Ps.shape[0], keys.shape[2]
    B, T = queries.shape[:2]
    if Ws is None:
        # Queries already projected per head (dot-product heads): (B, T, H, dk).
        if queries.shape[2:] != (H, dk):
            raise ValueError(f"without score_matrices, queries must have shape (B, T, H, dk) = "
                             f"(B, T, {H}, {dk}) (H from value_matrices), got {queries.shape}")
    else:
        if Ws.shape[0] != H:
            raise ValueError(f"score_matrices and value_matrices must have the same number of heads; "
                             f"got {Ws.shape[0]} and {Ps.shape[0]}")
        dq = queries.shape[2]
        if Ws.shape[1:] != (dq, dk):
            raise ValueError(f"score_matrices must have shape (H, dq, dk) = {(H, dq, dk)}, got {Ws.shape}")
    dv, do = values.shape[2], Ps.shape[2]
    if Ps.shape[1] != dv:
        raise ValueError(f"value_matrices must have shape (H, dv={dv}, do), got {Ps.shape}")
    if keys.shape[0] != B or values.shape[:2] != keys.shape[:2]:
        raise ValueError(f"keys and values must share B and S; got queries {queries.shape}, "
                         f"keys {keys.shape}, values {values.shape}")
    S = keys.shape[1]
    mask = None if mask is None else _key_mask(mask, B, S)
    if Ws is None:
        projected = queries.reshape(B, T * H, dk)            # row t·H + h is head h at position t
    else:
        w_cat = np.ascontiguousarray(Ws.transpose(1, 0, 2)).reshape(dq, H * dk)      # [W_1 … W_H]
        # Row t·H + h of the folded queries is Q[t] W_h: the GEMM's (B·T, H·dk) output reshaped for free.
        # An overflow reaches the scores (every row has an unmasked key), reported by masked_softmax.
        with np.errstate(over="ignore", invalid="ignore"):
            projected = (queries.reshape(B * T, dq) @ w_cat).reshape(B, T * H, dk)
    head_context, head_cache = _attention_core(projected, keys, values, mask, uniform, projected, None)
    head_contexts = head_context.reshape(B * T, H * dv)                           # [alpha_1 V, …]
    p_cat = Ps.reshape(H * dv, do) / H                                            # [P_1; …; P_H] / H
    with np.errstate(over="ignore", invalid="ignore"):   # an overflow is reported just below, in one line
        context = (head_contexts @ p_cat).reshape(B, T, do)
    _require_finite("attention context", context)
    weights = head_cache.weights.reshape(B, T, H, S).transpose(2, 0, 1, 3)
    return context, MultiHeadCache(head_cache, queries, values, Ws, Ps, weights, head_contexts)


def multihead_attention_backward(dcontext, cache: MultiHeadCache) -> MultiHeadGrads:
    """Backward pass of :func:`multihead_attention_forward`.

    Equations (``U = [alpha_1 V, …, alpha_H V]``, ``P = [P_1; …; P_H]``, ``W = [W_1 … W_H]``)::

        dU = dC Pᵀ / H                 dP_h = (alpha_h V)ᵀ dC / H          (one GEMM each)
        single-head backward of the folded heads with upstream dU:  dV, dK (summed over heads and t),
            dQW = d(Q W_h) of every head, laid out (B·T, H·dk)
        dQ = dQW Wᵀ = sum_h d(Q W_h) W_hᵀ   (one (B·T, H·dk) @ (H·dk, dq) GEMM)
        dW_h = Qᵀ d(Q W_h)                   (one (dq, B·T) @ (B·T, H·dk) GEMM)

    Parameters
    ----------
    dcontext : float array, shape (B, T, do)
    cache : MultiHeadCache

    Returns
    -------
    MultiHeadGrads

    Raises
    ------
    TypeError
        If ``cache`` is not the :class:`MultiHeadCache` returned by :func:`multihead_attention_forward`.
    ValueError
        If ``cache`` is inconsistent (queries not 3-D with score matrices, or not 4-D without, or
        shapes that disagree with the cached weights).
    NonFiniteError
        If a gradient overflows from finite inputs.
    """
    cache = _check_cache(cache, MultiHeadCache, "multihead_attention_forward")
    head_cache, q, v, Ws, Ps, weights, head_contexts = cache
    if q.ndim != (4 if Ws is None else 3):
        raise ValueError(f"cache is inconsistent: queries of shape {q.shape} with score_matrices "
                         f"{'None' if Ws is None else Ws.shape} (expected 3-D queries with score matrices, "
                         "4-D without)")
    H, B, T, S = weights.shape
    dk, dv, do = head_cache.keys.shape[2], v.shape[2], Ps.shape[2]
    if q.shape[:2] != (B, T) or (Ws is not None and Ws.shape != (H, q.shape[2], dk)) or \
            (Ws is None and q.shape[2:] != (H, dk)):
        raise ValueError(f"cache is inconsistent: queries {q.shape}, score_matrices "
                         f"{'None' if Ws is None else Ws.shape}, weights {weights.shape}, keys {head_cache.keys.shape}")
    dcontext = float_array("dcontext", dcontext, ndim=3)
    if dcontext.shape != (B, T, do):
        raise ValueError(f"dcontext must have shape {(B, T, do)}, got {dcontext.shape}")
    dflat = dcontext.reshape(B * T, do)
    p_cat = Ps.reshape(H * dv, do) / H
    # Overflows are reported in one line: dPs below, one in dhead through dvalues (and ``weighted``).
    with np.errstate(over="ignore", invalid="ignore"):
        dPs = ((head_contexts.T @ dflat) / H).reshape(H, dv, do)
        dhead = (dflat @ p_cat.T).reshape(B, T * H, dv)
    dvalues, dscores = _attention_backward_core(dhead, head_cache)
    _require_finite("gradient of the attention values", dvalues)
    _require_finite("gradient of the value matrices", dPs)
    if dscores is None:   # uniform twin: scores are constants
        dtype = np.result_type(q, dcontext)
        dkeys = np.zeros(head_cache.keys.shape, dtype=np.result_type(head_cache.keys, dcontext))
        dWs = None if Ws is None else np.zeros(Ws.shape, dtype=np.result_type(Ws, dcontext))
        return MultiHeadGrads(np.zeros(q.shape, dtype=dtype), dkeys, dvalues, dWs, dPs)
    with np.errstate(over="ignore", invalid="ignore"):   # each gradient is checked below, in one line
        dkeys = dscores.transpose(0, 2, 1) @ head_cache.projected_queries
    _require_finite("gradient of the attention keys", dkeys)
    with np.errstate(over="ignore", invalid="ignore"):
        dprojected = (dscores @ head_cache.keys).reshape(B * T, H * dk)
    if Ws is None:
        dq = dprojected.reshape(B, T, H, dk)
        _require_finite("gradient of the attention queries", dq)
        return MultiHeadGrads(dq, dkeys, dvalues, None, dPs)
    dq_dim = q.shape[2]
    w_cat = np.ascontiguousarray(Ws.transpose(1, 0, 2)).reshape(dq_dim, H * dk)    # [W_1 … W_H]
    with np.errstate(over="ignore", invalid="ignore"):
        dq = (dprojected @ w_cat.T).reshape(B, T, dq_dim)
        dWs = np.ascontiguousarray((q.reshape(B * T, dq_dim).T @ dprojected).reshape(dq_dim, H, dk)
                                   .transpose(1, 0, 2))
    _require_finite("gradient of the attention queries", dq)
    _require_finite("gradient of the score matrices", dWs)
    return MultiHeadGrads(dq, dkeys, dvalues, dWs, dPs)


# --------------------------------------------------------------------------------------------------
# Softmax output with cross-entropy
# --------------------------------------------------------------------------------------------------

class SoftmaxOutputCache(NamedTuple):
    hidden: np.ndarray       #: (..., h)
    weight: np.ndarray       #: (h, C)
    log_probs: np.ndarray    #: (..., C)
    targets: np.ndarray      #: (...) int
    mask: np.ndarray         #: (...) bool, True = counted
    count: int               #: number of counted targets N


class SoftmaxOutputGrads(NamedTuple):
    hidden: np.ndarray
    weight: np.ndarray
    bias: np.ndarray


def softmax_output_forward(hidden, weight, bias, targets, mask=None):
    """Affine output layer, log-softmax and mean cross-entropy over the counted targets.

    Equations::

        logits   = H Wo + b
        log p    = logits − max(logits) − log sum exp(logits − max(logits))
        loss     = −(1/N) sum_{i counted} log p[i, y_i],      N = number of counted targets

    Stable for logits of any finite size (the max shift keeps exp ≤ 1).

    Raises ``NonFiniteError`` (naming the quantity) if finite inputs overflow: the logits ``H Wo + b``,
    a log-probability (a row's spread beyond the dtype's range) or the loss.

    Parameters
    ----------
    hidden : float array, shape (..., h)
    weight : float array, shape (h, C)
    bias : float array, shape (C,)
    targets : int array, shape (...)
        Gold classes in ``[0, C)`` (checked only where counted, so padding may hold any id ≥ 0).
    mask : bool array, shape (...), optional
        True where the target counts. At least one must be True.

    Returns
    -------
    loss : float
    cache : SoftmaxOutputCache
        ``cache.log_probs`` has shape (..., C).
    """
    hidden = float_array("hidden", hidden, min_ndim=1)
    weight = float_array("weight", weight, ndim=2)
    bias = float_array("bias", bias, ndim=1)
    h, C = weight.shape
    if hidden.shape[-1] != h:
        raise ValueError(f"hidden (..., h) and weight (h, C) disagree: hidden {hidden.shape}, weight {weight.shape}")
    if bias.shape != (C,):
        raise ValueError(f"bias must have shape (C,) = {(C,)}, got {bias.shape}")
    lead = hidden.shape[:-1]
    refuse_masked("targets", targets)
    targets = np.asarray(targets)
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets must be an integer array, got dtype {targets.dtype}")
    if targets.shape != lead:
        raise ValueError(f"targets must have shape {lead} (hidden without its last axis), got {targets.shape}")
    mask = np.ones(lead, dtype=bool) if mask is None else bool_array("mask", mask, lead)
    count = int(mask.sum())
    if count == 0:
        raise ValueError("mask must count at least one target; the mean cross-entropy of none is undefined")
    int_array("targets (where mask is True)", targets[mask], upper=C)
    safe_targets = np.where(mask, targets, 0)
    # An overflow of the logits is reported by log_softmax (checked on the reduced row maximum).
    with np.errstate(over="ignore", invalid="ignore"):
        logits = hidden @ weight
        if logits.dtype == np.result_type(logits, bias):
            logits += bias   # in place: no second (..., C) array
        else:
            logits = logits + bias   # a float64 bias on float32 weights promotes, as before
    log_probs = log_softmax(logits, name="output logits")
    gold = np.take_along_axis(log_probs, safe_targets[..., None], axis=-1)[..., 0]
    loss = -float(np.sum(gold, where=mask)) / count
    if not np.isfinite(loss):
        raise NonFiniteError(f"cross-entropy loss overflowed to inf (sum of gold log-probabilities beyond "
                             f"{gold.dtype} range) from finite inputs")
    cache = SoftmaxOutputCache(hidden, weight, log_probs, safe_targets, mask, count)
    return loss, cache


def softmax_output_backward(dloss, cache: SoftmaxOutputCache) -> SoftmaxOutputGrads:
    """Backward pass of :func:`softmax_output_forward`.

    Equations::

        dlogits = dloss · (p − onehot(y)) ⊙ mask / N
        dH = dlogits Woᵀ,   dWo = Hᵀ dlogits,   db = sum dlogits

    Parameters
    ----------
    dloss : float
        Upstream gradient of the scalar loss.
    cache : SoftmaxOutputCache

    Returns
    -------
    SoftmaxOutputGrads
        ``hidden`` (..., h), ``weight`` (h, C), ``bias`` (C,).

    Raises
    ------
    TypeError
        If ``cache`` is not the :class:`SoftmaxOutputCache` returned by :func:`softmax_output_forward`.
    NonFiniteError
        If a gradient overflows from finite inputs (e.g. a huge ``dloss`` times a huge weight).
    """
    cache = _check_cache(cache, SoftmaxOutputCache, "softmax_output_forward")
    dloss = float_array("dloss", dloss, ndim=0)
    hidden, weight, log_probs, targets, mask, count = cache
    dlogits = np.exp(log_probs)
    np.put_along_axis(dlogits, targets[..., None], np.take_along_axis(dlogits, targets[..., None], -1) - 1.0, -1)
    with np.errstate(over="ignore", invalid="ignore"):   # each gradient is checked below, in one line
        dlogits *= (dloss / count) * mask[..., None]
        dhidden = dlogits @ np.ascontiguousarray(weight.T)   # a transposed view is slow here (see attention)
        flat = dlogits.reshape(-1, dlogits.shape[-1])
        dweight = hidden.reshape(-1, hidden.shape[-1]).T @ flat
        dbias = flat.sum(axis=0)
    _require_finite("gradient of the output layer's input (hidden)", dhidden)
    _require_finite("gradient of the output weight", dweight)
    _require_finite("gradient of the output bias", dbias)
    return SoftmaxOutputGrads(dhidden, dweight, dbias)
