"""Shared pieces of the recurrent blocks (:mod:`miniattn.recurrent`, :mod:`miniattn.gru`): input
validation, time-major layout, the one-GEMM input projection and its gradients."""

from __future__ import annotations

import numpy as np

from miniattn._validate import bool_array, float_array

# --------------------------------------------------------------------------------------------------
# Shared validation
# --------------------------------------------------------------------------------------------------

def _sequence(x, mask) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate x (B, T, D) and the (B, T) token mask; an all-True mask becomes None (fast path)."""
    x = float_array("x", x, ndim=3)
    B, T, _ = x.shape
    if mask is None:
        return x, None
    mask = bool_array("mask", mask, (B, T))
    empty = ~mask.any(axis=1)
    if np.any(empty):
        raise ValueError(f"mask has rows with no real token (batch rows {np.flatnonzero(empty)[:5].tolist()}); "
                         "every sequence needs at least one True")
    return x, (None if np.all(mask) else mask)


def _weights(D: int, n_gates: int, W_x, W_h, biases: dict, prefix: str = ""):
    """Validate W_x (D, nH), W_h (H, nH) and biases (nH,); H is read from W_h."""
    W_h = float_array(prefix + "W_h", W_h, ndim=2)
    H = W_h.shape[0]
    if W_h.shape != (H, n_gates * H):
        raise ValueError(f"{prefix}W_h must have shape (H, {n_gates}H) (gates stacked along axis 1), "
                         f"got {W_h.shape}")
    W_x = float_array(prefix + "W_x", W_x, ndim=2)
    if W_x.shape != (D, n_gates * H):
        raise ValueError(f"{prefix}W_x must have shape (D, {n_gates}H) = {(D, n_gates * H)} "
                         f"(D from x, H from W_h), got {W_x.shape}")
    checked = []
    for name, bias in biases.items():
        bias = float_array(prefix + name, bias, ndim=1)
        if bias.shape != (n_gates * H,):
            raise ValueError(f"{prefix}{name} must have shape ({n_gates}H,) = {(n_gates * H,)}, got {bias.shape}")
        checked.append(bias)
    return W_x, W_h, checked, H


def _state(name: str, state, B: int, H: int, dtype) -> np.ndarray:
    """Validate an initial state (B, H); None means zeros."""
    if state is None:
        return np.zeros((B, H), dtype=dtype)
    state = float_array(name, state, ndim=2)
    if state.shape != (B, H):
        raise ValueError(f"{name} must have shape (B, H) = {(B, H)}, got {state.shape}")
    return state


def _upstream(name: str, d, shape: tuple) -> np.ndarray | None:
    """Validate an upstream gradient of a given shape (None stays None: a zero gradient)."""
    if d is None:
        return None
    d = float_array(name, d, ndim=len(shape))
    if d.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {d.shape}")
    return d


def _pair(name: str, value, parts: str) -> tuple:
    """``None`` → (None, None); otherwise unpack exactly two entries or raise naming ``name``."""
    if value is None:
        return None, None
    if isinstance(value, np.ndarray):   # a (2, B, H) array would unpack, but a lone (B, H) one is a mistake
        raise TypeError(f"{name} must be None or a pair {parts} (a tuple), got an array of shape {value.shape}")
    try:
        first, second = value
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be None or a pair {parts}") from None
    return first, second


def _time_major(a: np.ndarray) -> np.ndarray:
    """(B, T, ...) → contiguous (T, B, ...)."""
    return np.ascontiguousarray(np.swapaxes(a, 0, 1))


def _batch_major(a: np.ndarray) -> np.ndarray:
    """(T, B, ...) → contiguous (B, T, ...)."""
    return np.ascontiguousarray(np.swapaxes(a, 0, 1))


def _input_projection(x: np.ndarray, W_x: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``x W_x + b`` for every step at once, time-major (T, B, nH): one (T·B, D) @ (D, nH) GEMM."""
    B, T, D = x.shape
    return (_time_major(x).reshape(T * B, D) @ W_x + b).reshape(T, B, -1)


def _steps(T: int, reverse: bool) -> range:
    """Positions in the order the recurrence visits them."""
    return range(T - 1, -1, -1) if reverse else range(T)


def _input_grads(x: np.ndarray, W_x: np.ndarray, dxw: np.ndarray):
    """From ``d(x W_x + b)`` (T, B, nH) time-major: dx (B, T, D), dW_x (D, nH), db (nH,)."""
    B, T, D = x.shape
    flat = _batch_major(dxw).reshape(B * T, -1)
    dx = (flat @ np.ascontiguousarray(W_x.T)).reshape(B, T, D)
    dW_x = x.reshape(B * T, D).T @ flat
    return dx, dW_x, flat.sum(axis=0)
