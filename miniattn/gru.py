"""The GRU layer over a padded batch, with backpropagation through time (PyTorch's gate convention).

Conventions (shapes, padding, ``reverse``, dtypes, overflow checks) are those of
:mod:`miniattn.recurrent`: the forward pass checks the r, z and n pre-activations once per step, the
backward pass the gate-gradient array once after the loop and the returned gradients.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.special import expit

from miniattn._scan import (_batch_major, _input_grads, _input_projection, _sequence, _state,
                            _steps, _time_major, _upstream, _weights)
from miniattn._validate import result_dtype
from miniattn.layers import _require_finite

__all__ = ["GRUCache", "GRUGrads", "gru_forward", "gru_backward"]


# --------------------------------------------------------------------------------------------------
# GRU
# --------------------------------------------------------------------------------------------------

class GRUCache(NamedTuple):
    x: np.ndarray             #: (B, T, D)
    W_x: np.ndarray           #: (D, 3H)
    W_h: np.ndarray           #: (H, 3H)
    mask: np.ndarray | None   #: (B, T) bool, True = real token; None when every token is real
    reverse: bool
    h_prev: np.ndarray        #: (T, B, H) time-major: hidden state entering the step at position t
    gates: np.ndarray         #: (T, B, 3H) activations r, z, n at position t
    hn: np.ndarray            #: (T, B, H) h_{t-1} W_hn + b_hn (the term the reset gate scales)
    dtype: np.dtype


class GRUGrads(NamedTuple):
    x: np.ndarray      #: (B, T, D)
    h0: np.ndarray     #: (B, H)
    W_x: np.ndarray    #: (D, 3H)
    W_h: np.ndarray    #: (H, 3H)
    b_x: np.ndarray    #: (3H,)
    b_h: np.ndarray    #: (3H,)


def gru_forward(x, h0, W_x, W_h, b_x, b_h, mask=None, reverse: bool = False):
    """A single-layer GRU over a batch of (possibly padded) sequences, in PyTorch's convention.

    Equations, for each visited position t::

        r_t = σ(x_t W_xr + b_xr + h_{t-1} W_hr + b_hr)              reset gate
        z_t = σ(x_t W_xz + b_xz + h_{t-1} W_hz + b_hz)              update gate
        n_t = tanh(x_t W_xn + b_xn + r_t ⊙ (h_{t-1} W_hn + b_hn))   candidate
        h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1}

    with the gates stacked in the order r, z, n. The n gate needs the input and hidden biases
    separately (the reset gate scales only the hidden one), hence ``b_x`` and ``b_h``. Padded
    positions are skipped: ``h_t = h_{t-1}`` and the output there is 0.

    Parameters
    ----------
    x : float array, shape (B, T, D)
    h0 : float array, shape (B, H), or None
        Initial hidden state (None: zeros).
    W_x : float array, shape (D, 3H)
        ``torch.nn.GRU.weight_ih_l0.T``.
    W_h : float array, shape (H, 3H)
        ``weight_hh_l0.T``; H is read from its first axis.
    b_x : float array, shape (3H,)
        Input biases ``bias_ih_l0``.
    b_h : float array, shape (3H,)
        Hidden biases ``bias_hh_l0``.
    mask : bool array, shape (B, T), optional
        True at real tokens; every row needs at least one True (see :func:`lstm_forward`).
    reverse : bool
        Visit positions T-1, ..., 0 (see :func:`lstm_forward`).

    Returns
    -------
    (outputs, h_final) : tuple
        ``outputs`` (B, T, H), 0 at padded positions; ``h_final`` (B, H), the state after the last
        visited real token.
    cache : GRUCache

    Raises
    ------
    NonFiniteError
        If finite inputs overflow: a gate pre-activation (of r and z, or of the candidate n) is inf
        or NaN at some step (padded positions included). Huge finite ones are fine: the gates saturate.
    """
    x, mask = _sequence(x, mask)
    B, T, D = x.shape
    W_x, W_h, (b_x, b_h), H = _weights(D, 3, W_x, W_h, {"b_x": b_x, "b_h": b_h})
    h0 = _state("h0", h0, B, H, result_dtype(x, W_x, W_h, b_x, b_h))
    dtype = result_dtype(x, h0, W_x, W_h, b_x, b_h)
    xw = _input_projection(x, W_x, b_x)                      # (T, B, 3H)
    mask_t = None if mask is None else mask.T[:, :, None]
    h_prev = np.empty((T, B, H), dtype=dtype)
    gates = np.empty((T, B, 3 * H), dtype=dtype)
    hn = np.empty((T, B, H), dtype=dtype)
    out = np.zeros((T, B, H), dtype=dtype)
    h = h0.astype(dtype, copy=False)
    for t in _steps(T, reverse):
        h_prev[t] = h
        hw = h @ W_h + b_h
        act = gates[t]
        # The pre-activations are checked before the squashing, which would hide an overflow
        # (σ(±inf), tanh(±inf) are finite) but spread a NaN (+inf + -inf) to every later step.
        # An overflowed h W_hn + b_hn makes r ⊙ hn, hence a_n, inf or NaN, so two checks suffice.
        a_rz = xw[t, :, :2 * H] + hw[:, :2 * H]
        _require_finite("the GRU reset/update gate pre-activations x_t W_x + b_x + h_{t-1} W_h + b_h", a_rz)
        act[:, :2 * H] = expit(a_rz)
        r, z = act[:, :H], act[:, H:2 * H]
        hn[t] = hw[:, 2 * H:]
        a_n = xw[t, :, 2 * H:] + r * hn[t]
        _require_finite("the GRU candidate pre-activations x_t W_xn + b_xn + r_t (h_{t-1} W_hn + b_hn)", a_n)
        act[:, 2 * H:] = np.tanh(a_n)
        n = act[:, 2 * H:]
        h_new = n + z * (h - n)                              # = (1 − z) n + z h
        if mask_t is None:
            out[t] = h_new
        else:
            m = mask_t[t]
            out[t] = np.where(m, h_new, 0.0)
            h_new = np.where(m, h_new, h)
        h = h_new
    cache = GRUCache(x, W_x, W_h, mask, bool(reverse), h_prev, gates, hn, np.dtype(dtype))
    return (_batch_major(out), h), cache


def gru_backward(dh_all, dh_final, cache: GRUCache) -> GRUGrads:
    """Backward pass of :func:`gru_forward`: full backpropagation through time.

    Walking the visited positions in reverse order with ``δh`` the gradient reaching ``h_t`` from
    later steps (initially ``dh_final``)::

        dh   = δh + dh_all[t]
        da_n = dh ⊙ (1 − z) ⊙ (1 − n²)                 gradient of n's pre-activation
        da_r = da_n ⊙ (h_{t-1} W_hn + b_hn) ⊙ r(1 − r)
        da_z = dh ⊙ (h_{t-1} − n) ⊙ z(1 − z)
        d(x W_x + b_x) = [da_r | da_z | da_n],   d(h W_h + b_h) = [da_r | da_z | r ⊙ da_n] =: dq
        δh  ← dh ⊙ z + dq W_hᵀ

    A padded position passes ``δh`` through and contributes nothing. Summing over positions::

        dx = [da_r|da_z|da_n] W_xᵀ,  dW_x = Σ xᵀ [da_r|da_z|da_n],  db_x = Σ [da_r|da_z|da_n]
        dW_h = Σ h_{t-1}ᵀ dq,  db_h = Σ dq,  dh0 = δh

    Parameters
    ----------
    dh_all : float array, shape (B, T, H), or None
        Gradient with respect to ``outputs`` (None: zero).
    dh_final : float array, shape (B, H), or None
        Gradient with respect to the final state (None: zero).
    cache : GRUCache

    Returns
    -------
    GRUGrads
        ``x`` (B, T, D), ``h0`` (B, H), ``W_x`` (D, 3H), ``W_h`` (H, 3H), ``b_x`` (3H,), ``b_h`` (3H,).

    Raises
    ------
    NonFiniteError
        If finite inputs overflow: the gate-gradient array ``d(x W_x + b_x)`` (which an overflowed
        ``δh`` reaches) or a returned gradient is inf or NaN.
    """
    x, W_x, W_h, mask, reverse, h_prev, gates, hn, cache_dtype = cache
    T, B, H = h_prev.shape
    dh_all = _upstream("dh_all", dh_all, (B, T, H))
    dh_final = _upstream("dh_final", dh_final, (B, H))
    dtype = result_dtype(np.empty(0, cache_dtype), dh_all, dh_final)
    dout_t = np.zeros((T, B, H), dtype=dtype) if dh_all is None else _time_major(dh_all).astype(dtype, copy=False)
    dh = np.zeros((B, H), dtype=dtype) if dh_final is None else dh_final.astype(dtype)
    mask_t = None if mask is None else mask.T[:, :, None]
    dxw = np.empty((T, B, 3 * H), dtype=dtype)               # gradient of x W_x + b_x
    dhw = np.empty((T, B, 3 * H), dtype=dtype)               # gradient of h W_h + b_h
    W_hT = np.ascontiguousarray(W_h.T)
    for t in _steps(T, not reverse):
        act = gates[t]
        r, z, n = act[:, :H], act[:, H:2 * H], act[:, 2 * H:]
        dh_t = dh + dout_t[t]
        dx_t, dq_t = dxw[t], dhw[t]
        dx_t[:, 2 * H:] = dh_t * (1.0 - z) * (1.0 - n * n)
        dx_t[:, :H] = dx_t[:, 2 * H:] * hn[t] * r * (1.0 - r)
        dx_t[:, H:2 * H] = dh_t * (h_prev[t] - n) * z * (1.0 - z)
        dq_t[:, :2 * H] = dx_t[:, :2 * H]
        dq_t[:, 2 * H:] = r * dx_t[:, 2 * H:]
        if mask_t is None:
            dh = dh_t * z + dq_t @ W_hT
        else:
            m = mask_t[t]
            dx_t *= m
            dq_t *= m
            dh = np.where(m, dh_t * z + dq_t @ W_hT, dh)
    # One check after the loop, not one per step: an inf or NaN in δh reaches da_n at the next
    # visited step (also at a padded one, where inf · 0 = NaN survives the masking), and dq is
    # finite where dxw is (a copy, or r ⊙ da_n), so only the last δh and the GEMMs remain.
    _require_finite("the gradient of the GRU gate pre-activations", dxw)
    _require_finite("the gradient of the GRU initial hidden state", dh)
    dx, dW_x, db_x = _input_grads(x, W_x, dxw)
    flat = dhw.reshape(T * B, 3 * H)
    dW_h = h_prev.reshape(T * B, H).T @ flat
    db_h = flat.sum(axis=0)
    _require_finite("the gradient of the GRU input x", dx)
    _require_finite("the gradient of the GRU weight W_x", dW_x)
    _require_finite("the gradient of the GRU weight W_h", dW_h)
    _require_finite("the gradient of the GRU bias b_x", db_x)
    _require_finite("the gradient of the GRU bias b_h", db_h)
    return GRUGrads(dx, dh, dW_x, dW_h, db_x, db_h)
