"""Hand-written recurrent blocks: LSTM, GRU and a bidirectional LSTM, with backpropagation through time.

The same CS231n-style pairs as :mod:`miniattn.layers`::

    (outputs, final), cache = x_forward(...)
    grads = x_backward(doutputs, dfinal, cache)

Conventions
-----------
* Shapes: ``x`` is (B, T, D) batch-major; states are (B, H); weights act on the right
  (``x W_x``, ``h W_h``) with the gates stacked along the last axis in PyTorch's order, so a
  ``torch.nn.LSTM`` / ``torch.nn.GRU`` layer maps as ``W_x = weight_ih.T``, ``W_h = weight_hh.T``
  (LSTM: ``b = bias_ih + bias_hh``; GRU: ``b_x = bias_ih``, ``b_h = bias_hh``).
* Padding: ``mask`` (B, T) is True at real tokens. Where it is False the step is skipped — the state
  is carried over unchanged (``h_t = h_{t-1}``, ``c_t = c_{t-1}``) — and the output at that position
  is exactly 0. Hence the final state of a right-padded row is its state after its last real token,
  and a row's results do not depend on how much padding follows (or sits between) its tokens.
* ``reverse=True`` runs the recurrence from position T-1 down to 0. Because padded steps carry the
  state, the reverse direction of a right-padded row effectively *starts at its last real token*
  (the padded tail leaves the initial state untouched) and visits exactly the real tokens right to
  left; this needs no per-row index flipping and holds for any mask, not only right-padded ones.
* The only Python loop is the loop over time steps (the recurrence itself). The input projection
  ``x W_x + b`` of all steps is one GEMM before the loop, and the weight gradients are one GEMM
  each after it. Internally the per-step arrays are time-major (T, B, ...) so that each step reads
  and writes contiguous (B, ...) blocks; outputs and gradients are returned batch-major.
* Arrays are float64 by default; if every float input is float32 everything stays float32.
  Inputs are validated (:mod:`miniattn._validate`) and never modified.
* Finite inputs give finite results or a one-line :class:`~miniattn._validate.NonFiniteError` naming
  the quantity that overflowed, as in :mod:`miniattn.layers`. The forward pass checks the gate
  pre-activations once per step: a huge *finite* pre-activation is harmless (σ and tanh saturate),
  but one that overflowed is ±inf or — when ``x W_x`` and ``h W_h`` overflow with opposite signs —
  NaN, which the gates would spread silently. The states themselves cannot overflow (``|c_t| ≤
  |c_{t-1}| + 1``, ``|h_t| ≤ 1``). The backward pass checks the whole gate-gradient array once after
  the loop (an overflowed ``δh`` or ``δc`` always makes some entry of it inf or NaN), and the
  returned gradients.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.special import expit

from miniattn._scan import (_batch_major, _input_grads, _input_projection, _pair, _sequence,
                            _state, _steps, _time_major, _upstream, _weights)
from miniattn._validate import result_dtype
from miniattn.gru import GRUCache, GRUGrads, gru_backward, gru_forward
from miniattn.layers import _require_finite

__all__ = [
    "LSTMState", "LSTMCache", "LSTMGrads", "lstm_forward", "lstm_backward",
    "GRUCache", "GRUGrads", "gru_forward", "gru_backward",
    "LSTMParams", "BiLSTMCache", "BiLSTMGrads", "bilstm_forward", "bilstm_backward",
]


# --------------------------------------------------------------------------------------------------
# LSTM
# --------------------------------------------------------------------------------------------------

class LSTMState(NamedTuple):
    h: np.ndarray   #: (B, H) hidden state
    c: np.ndarray   #: (B, H) cell state


class LSTMCache(NamedTuple):
    x: np.ndarray             #: (B, T, D)
    W_x: np.ndarray           #: (D, 4H)
    W_h: np.ndarray           #: (H, 4H)
    mask: np.ndarray | None   #: (B, T) bool, True = real token; None when every token is real
    reverse: bool
    h_prev: np.ndarray        #: (T, B, H) time-major: hidden state entering the step at position t
    c_prev: np.ndarray        #: (T, B, H) cell state entering the step at position t
    gates: np.ndarray         #: (T, B, 4H) activations i, f, g, o at position t
    tanh_c: np.ndarray        #: (T, B, H) tanh of the new cell state at position t
    dtype: np.dtype


class LSTMGrads(NamedTuple):
    x: np.ndarray      #: (B, T, D)
    h0: np.ndarray     #: (B, H)
    c0: np.ndarray     #: (B, H)
    W_x: np.ndarray    #: (D, 4H)
    W_h: np.ndarray    #: (H, 4H)
    b: np.ndarray      #: (4H,)


def _lstm_inputs(x, h0, c0, W_x, W_h, b, prefix=""):
    """Validate the LSTM parameters against an already validated x; returns them and the dtype."""
    B, _, D = x.shape
    W_x, W_h, (b,), H = _weights(D, 4, W_x, W_h, {"b": b}, prefix)
    dtype = result_dtype(x, W_x, W_h, b)
    h0 = _state(prefix + "h0", h0, B, H, dtype)
    c0 = _state(prefix + "c0", c0, B, H, dtype)
    return h0, c0, W_x, W_h, b, result_dtype(x, h0, c0, W_x, W_h, b)


def _lstm_scan(x, h0, c0, W_x, W_h, b, mask, reverse, dtype):
    """The LSTM recurrence on validated inputs: returns outputs (B, T, H), LSTMState, LSTMCache."""
    B, T, _ = x.shape
    H = W_h.shape[0]
    xw = _input_projection(x, W_x, b)                        # (T, B, 4H)
    mask_t = None if mask is None else mask.T[:, :, None]    # (T, B, 1)
    h_prev = np.empty((T, B, H), dtype=dtype)
    c_prev = np.empty((T, B, H), dtype=dtype)
    gates = np.empty((T, B, 4 * H), dtype=dtype)
    tanh_c = np.empty((T, B, H), dtype=dtype)
    out = np.zeros((T, B, H), dtype=dtype)
    h, c = h0.astype(dtype, copy=False), c0.astype(dtype, copy=False)
    for t in _steps(T, reverse):
        h_prev[t], c_prev[t] = h, c
        a = xw[t] + h @ W_h
        # Checked before the squashing: σ(±inf) and tanh(±inf) are finite, so an overflow would
        # otherwise pass unnoticed, and a NaN (+inf + -inf) would reach every later step.
        _require_finite("the LSTM gate pre-activations x_t W_x + b + h_{t-1} W_h", a)
        act = gates[t]
        act[...] = expit(a)                                  # i, f and o; g is overwritten next
        act[:, 2 * H:3 * H] = np.tanh(a[:, 2 * H:3 * H])
        i, f, g, o = act[:, :H], act[:, H:2 * H], act[:, 2 * H:3 * H], act[:, 3 * H:]
        c_new = f * c + i * g
        tanh_c[t] = np.tanh(c_new)
        h_new = o * tanh_c[t]
        if mask_t is None:
            out[t] = h_new
        else:
            m = mask_t[t]
            out[t] = np.where(m, h_new, 0.0)
            h_new, c_new = np.where(m, h_new, h), np.where(m, c_new, c)
        h, c = h_new, c_new
    cache = LSTMCache(x, W_x, W_h, mask, bool(reverse), h_prev, c_prev, gates, tanh_c, np.dtype(dtype))
    return _batch_major(out), LSTMState(h, c), cache


def lstm_forward(x, h0, c0, W_x, W_h, b, mask=None, reverse: bool = False):
    """A single-layer LSTM over a batch of (possibly padded) sequences.

    Equations, for each visited position t (``σ`` the logistic sigmoid, ``⊙`` elementwise)::

        i_t = σ(x_t W_xi + h_{t-1} W_hi + b_i)          input gate
        f_t = σ(x_t W_xf + h_{t-1} W_hf + b_f)          forget gate
        g_t = tanh(x_t W_xg + h_{t-1} W_hg + b_g)       candidate cell
        o_t = σ(x_t W_xo + h_{t-1} W_ho + b_o)          output gate
        c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
        h_t = o_t ⊙ tanh(c_t)

    where ``W_x = [W_xi | W_xf | W_xg | W_xo]`` (PyTorch's gate order i, f, g, o), likewise ``W_h``
    and ``b``. At a padded position (``mask[b, t]`` False) the step is skipped:
    ``h_t = h_{t-1}``, ``c_t = c_{t-1}`` and the output there is 0.

    Parameters
    ----------
    x : float array, shape (B, T, D)
        Input sequences.
    h0, c0 : float array, shape (B, H), or None
        Initial hidden and cell states (None: zeros).
    W_x : float array, shape (D, 4H)
        Input-to-gate weights (``torch.nn.LSTM.weight_ih_l0.T``).
    W_h : float array, shape (H, 4H)
        Hidden-to-gate weights (``weight_hh_l0.T``); H is read from its first axis.
    b : float array, shape (4H,)
        Gate biases (``bias_ih_l0 + bias_hh_l0``).
    mask : bool array, shape (B, T), optional
        True at real tokens, False at padding. Every row needs at least one True. Any pattern is
        allowed (padding need not be on the right): False positions are simply skipped.
    reverse : bool
        Visit positions T-1, ..., 0 instead of 0, ..., T-1. For a right-padded row the padded tail
        leaves the initial state unchanged, so the recurrence starts at the row's last real token.

    Returns
    -------
    (outputs, final) : tuple
        ``outputs`` (B, T, H): ``h_t`` at real positions, 0 at padded ones. ``final`` is an
        :class:`LSTMState` ``(h, c)``, each (B, H): the state after the last visited real token
        (for ``reverse=True`` that is the first real token of the row).
    cache : LSTMCache

    Raises
    ------
    NonFiniteError
        If finite inputs overflow: a gate pre-activation ``x_t W_x + b + h_{t-1} W_h`` is inf or
        NaN at some step (padded positions included). Huge finite ones are fine: the gates saturate.
    """
    x, mask = _sequence(x, mask)
    h0, c0, W_x, W_h, b, dtype = _lstm_inputs(x, h0, c0, W_x, W_h, b)
    outputs, final, cache = _lstm_scan(x, h0, c0, W_x, W_h, b, mask, reverse, dtype)
    return (outputs, final), cache


def _lstm_bptt(dout_t, dh, dc, cache: LSTMCache) -> LSTMGrads:
    """Backpropagation through time on validated, time-major upstream gradients (T, B, H)."""
    x, W_x, W_h, mask, reverse, h_prev, c_prev, gates, tanh_c, _ = cache
    T, B, H = h_prev.shape
    dtype = dout_t.dtype
    mask_t = None if mask is None else mask.T[:, :, None]
    da = np.empty((T, B, 4 * H), dtype=dtype)                # gradient of the gate pre-activations
    W_hT = np.ascontiguousarray(W_h.T)
    for t in _steps(T, not reverse):                         # the forward visiting order, reversed
        act = gates[t]
        i, f, g, o = act[:, :H], act[:, H:2 * H], act[:, 2 * H:3 * H], act[:, 3 * H:]
        tc = tanh_c[t]
        dh_t = dh + dout_t[t]
        dc_t = dc + dh_t * o * (1.0 - tc * tc)
        da_t = da[t]
        da_t[:, :H] = dc_t * g * i * (1.0 - i)
        da_t[:, H:2 * H] = dc_t * c_prev[t] * f * (1.0 - f)
        da_t[:, 2 * H:3 * H] = dc_t * i * (1.0 - g * g)
        da_t[:, 3 * H:] = dh_t * tc * o * (1.0 - o)
        if mask_t is None:
            dh, dc = da_t @ W_hT, dc_t * f
        else:
            m = mask_t[t]
            da_t *= m                                        # a skipped step has no gate gradient
            dh, dc = np.where(m, da_t @ W_hT, dh), np.where(m, dc_t * f, dc)
    # One check after the loop, not one per step: an inf or NaN in δh or δc reaches da at the next
    # visited step (also at a padded one, where inf · 0 = NaN survives the masking), so finite da
    # leaves only the last δh, δc and the GEMMs below to check.
    _require_finite("the gradient of the LSTM gate pre-activations", da)
    _require_finite("the gradient of the LSTM initial hidden state", dh)
    _require_finite("the gradient of the LSTM initial cell state", dc)
    dx, dW_x, db = _input_grads(x, W_x, da)
    dW_h = h_prev.reshape(T * B, H).T @ da.reshape(T * B, 4 * H)
    _require_finite("the gradient of the LSTM input x", dx)
    _require_finite("the gradient of the LSTM weight W_x", dW_x)
    _require_finite("the gradient of the LSTM weight W_h", dW_h)
    _require_finite("the gradient of the LSTM bias b", db)
    return LSTMGrads(dx, dh, dc, dW_x, dW_h, db)


def _lstm_upstream(dh_all, dfinal, cache: LSTMCache, prefix: str = ""):
    """Validate (dh_all, dfinal) against the cache; returns time-major dout and (dh, dc) as arrays."""
    T, B, H = cache.h_prev.shape
    dh_all = _upstream(prefix + "dh_all", dh_all, (B, T, H))
    dh_T, dc_T = _pair(prefix + "dfinal", dfinal, "(dh_T, dc_T)")
    dh_T = _upstream(prefix + "dh_T", dh_T, (B, H))
    dc_T = _upstream(prefix + "dc_T", dc_T, (B, H))
    dtype = result_dtype(np.empty(0, cache.dtype), dh_all, dh_T, dc_T)
    dout_t = np.zeros((T, B, H), dtype=dtype) if dh_all is None else _time_major(dh_all).astype(dtype, copy=False)
    dh = np.zeros((B, H), dtype=dtype) if dh_T is None else dh_T.astype(dtype)
    dc = np.zeros((B, H), dtype=dtype) if dc_T is None else dc_T.astype(dtype)
    return dout_t, dh, dc


def lstm_backward(dh_all, dfinal, cache: LSTMCache) -> LSTMGrads:
    """Backward pass of :func:`lstm_forward`: full backpropagation through time.

    Walking the visited positions in reverse order with ``δh`` and ``δc`` the gradients reaching
    ``h_t`` and ``c_t`` from later steps (initially ``dh_T`` and ``dc_T``)::

        dh   = δh + dh_all[t]
        dc   = δc + dh ⊙ o ⊙ (1 − tanh²(c_t))
        da_i = dc ⊙ g ⊙ i(1 − i)        da_f = dc ⊙ c_{t-1} ⊙ f(1 − f)
        da_g = dc ⊙ i ⊙ (1 − g²)        da_o = dh ⊙ tanh(c_t) ⊙ o(1 − o)
        δh  ← da W_hᵀ,    δc ← dc ⊙ f

    At a padded position ``da = 0`` and ``δh``, ``δc`` pass through unchanged (``dh_all`` there is
    ignored: the output is the constant 0). Then, summing over positions::

        dx = da W_xᵀ,   dW_x = Σ xᵀ da,   dW_h = Σ h_{t-1}ᵀ da,   db = Σ da,   dh0 = δh,   dc0 = δc

    Parameters
    ----------
    dh_all : float array, shape (B, T, H), or None
        Gradient with respect to ``outputs`` (None: zero).
    dfinal : pair (dh_T, dc_T) of float arrays of shape (B, H) or None, or None
        Gradient with respect to the final state (None entries: zero).
    cache : LSTMCache

    Returns
    -------
    LSTMGrads
        ``x`` (B, T, D), ``h0`` (B, H), ``c0`` (B, H), ``W_x`` (D, 4H), ``W_h`` (H, 4H), ``b`` (4H,).

    Raises
    ------
    NonFiniteError
        If finite inputs overflow: the gate-gradient array ``da`` (which an overflowed ``δh`` or
        ``δc`` reaches) or a returned gradient is inf or NaN.
    """
    return _lstm_bptt(*_lstm_upstream(dh_all, dfinal, cache), cache)


# --------------------------------------------------------------------------------------------------
# Bidirectional LSTM
# --------------------------------------------------------------------------------------------------

class LSTMParams(NamedTuple):
    """The parameters of one LSTM direction — or, in :class:`BiLSTMGrads`, their gradients."""

    h0: np.ndarray | None   #: (B, H) initial hidden state (None: zeros)
    c0: np.ndarray | None   #: (B, H) initial cell state (None: zeros)
    W_x: np.ndarray         #: (D, 4H)
    W_h: np.ndarray         #: (H, 4H)
    b: np.ndarray           #: (4H,)


class BiLSTMCache(NamedTuple):
    forward: LSTMCache   #: the left-to-right direction
    reverse: LSTMCache   #: the right-to-left direction


class BiLSTMGrads(NamedTuple):
    x: np.ndarray            #: (B, T, D), both directions' contributions summed
    forward: LSTMParams      #: gradients of the forward direction's h0, c0, W_x, W_h, b
    reverse: LSTMParams      #: gradients of the reverse direction's h0, c0, W_x, W_h, b


def _params(name: str, params) -> LSTMParams:
    try:
        return LSTMParams(*params)
    except TypeError:
        raise TypeError(f"{name} must be a 5-sequence (h0, c0, W_x, W_h, b), e.g. an LSTMParams") from None


def bilstm_forward(x, forward_params, reverse_params, mask=None):
    """A bidirectional LSTM: a left-to-right and a right-to-left :func:`lstm_forward`, concatenated.

    Equations::

        (→h_t)  = LSTM over positions 0, ..., T-1 with forward_params
        (←h_t)  = LSTM over positions T-1, ..., 0 with reverse_params
        out_t   = [→h_t | ←h_t]

    Both directions share ``mask``; padded positions are skipped by both (output 0 there), so the
    right-to-left direction of a right-padded row starts at its last real token.

    Parameters
    ----------
    x : float array, shape (B, T, D)
    forward_params, reverse_params : LSTMParams or any 5-sequence (h0, c0, W_x, W_h, b)
        Each direction's initial states (B, H) or None, and weights (D, 4H), (H, 4H), (4H,) as in
        :func:`lstm_forward`. The two hidden sizes H_f and H_r may differ (usually both are H).
    mask : bool array, shape (B, T), optional
        True at real tokens; every row needs at least one True.

    Returns
    -------
    (outputs, (final_forward, final_reverse)) : tuple
        ``outputs`` (B, T, H_f + H_r) = (B, T, 2H); the final states are :class:`LSTMState` pairs:
        the forward one after each row's last real token, the reverse one after its first.
    cache : BiLSTMCache

    Raises
    ------
    NonFiniteError
        If a direction's gate pre-activations overflow (see :func:`lstm_forward`).
    """
    x, mask = _sequence(x, mask)
    fwd = _lstm_inputs(x, *_params("forward_params", forward_params), prefix="forward_params.")
    rev = _lstm_inputs(x, *_params("reverse_params", reverse_params), prefix="reverse_params.")
    out_f, final_f, cache_f = _lstm_scan(x, *fwd[:5], mask, False, fwd[5])
    out_r, final_r, cache_r = _lstm_scan(x, *rev[:5], mask, True, rev[5])
    outputs = np.concatenate([out_f, out_r], axis=-1)
    return (outputs, (final_f, final_r)), BiLSTMCache(cache_f, cache_r)


def bilstm_backward(dh_all, dfinal, cache: BiLSTMCache) -> BiLSTMGrads:
    """Backward pass of :func:`bilstm_forward`.

    ``dh_all`` is split along the feature axis into the two directions' output gradients, each
    direction runs :func:`lstm_backward`, and the two input gradients add: ``dx = →dx + ←dx``.

    Parameters
    ----------
    dh_all : float array, shape (B, T, H_f + H_r), or None
    dfinal : pair (dfinal_forward, dfinal_reverse), or None
        Each entry None or a pair ``(dh, dc)`` of (B, H) arrays (or None), as in :func:`lstm_backward`.
    cache : BiLSTMCache

    Returns
    -------
    BiLSTMGrads
        ``x`` (B, T, D); ``forward`` and ``reverse`` are :class:`LSTMParams` of gradients.

    Raises
    ------
    NonFiniteError
        If a direction's backward pass overflows (see :func:`lstm_backward`), or the sum of the
        two directions' input gradients does.
    """
    cache_f, cache_r = cache
    T, B, H_f = cache_f.h_prev.shape
    H_r = cache_r.h_prev.shape[2]
    dh_all = _upstream("dh_all", dh_all, (B, T, H_f + H_r))
    dfinal_f, dfinal_r = _pair("dfinal", dfinal, "(dfinal_forward, dfinal_reverse)")
    split = (None, None) if dh_all is None else (dh_all[..., :H_f], dh_all[..., H_f:])
    g_f = _lstm_bptt(*_lstm_upstream(split[0], dfinal_f, cache_f, "forward "), cache_f)
    g_r = _lstm_bptt(*_lstm_upstream(split[1], dfinal_r, cache_r, "reverse "), cache_r)
    dx = g_f.x + g_r.x
    _require_finite("the BiLSTM input gradient (both directions' dx summed)", dx)   # two finite halves may overflow
    return BiLSTMGrads(dx, LSTMParams(*g_f[1:]), LSTMParams(*g_r[1:]))
