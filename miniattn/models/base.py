"""What every model returns from ``forward``, and the checks of the models' constructor arguments."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from miniattn._validate import flag, integer, real


class ForwardResult(NamedTuple):
    """Output of ``model.forward(batch)``.

    Attributes
    ----------
    log_probs : array (B, T, C)
        Log-probabilities of every output class at every output position (T = 1 for classifiers).
    attention : array (B, T, S), or (H, B, T, S) for a multi-head model
        Attention weights over source positions (0 at masked positions).
    """

    log_probs: np.ndarray
    attention: np.ndarray


def copy_params(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A deep copy of a parameter dict (for snapshots and checkpoints)."""
    return {k: v.copy() for k, v in params.items()}


# --------------------------------------------------------------------------------------------------
# Constructor arguments. The decisions (what counts as an integer, a flag, a finite real) are
# :mod:`miniattn._validate`'s, so every model refuses the same values with the same exception types
# (wrong type -> TypeError, wrong value -> ValueError); these wrappers only keep the wording that the
# models' error messages have always had ("dim must be an integer >= 1", "uniform must be a bool",
# "init_scale must be a finite float > 0"), which users and tests match.
# --------------------------------------------------------------------------------------------------

def check_size(name: str, value, low: int = 1) -> int:
    """:func:`miniattn._validate.integer` ``>= low``: ``"NAME must be an integer >= LOW, got V"``."""
    value = integer(name, value)
    if value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value}")
    return value


def check_flag(name: str, value, *, optional: bool = False) -> bool | None:
    """:func:`miniattn._validate.flag` (None allowed when ``optional``): ``"NAME must be a bool"``.

    Only ``True``/``False``/``numpy.bool_`` pass: ``bool("False")`` is True, so a string from a
    config file must never switch an option on.
    """
    if optional and value is None:
        return None
    try:
        return flag(name, value)
    except TypeError:
        allowed = "a bool (True or False) or None" if optional else "a bool (True or False)"
        raise TypeError(f"{name} must be {allowed}, got {type(value).__name__} {value!r}") from None


def check_scale(name: str, value) -> float:
    """:func:`miniattn._validate.real` ``> 0``: ``"NAME must be a finite float > 0, got V"``."""
    try:
        return real(name, value, low=0.0, low_open=True)
    except ValueError:
        raise ValueError(f"{name} must be a finite float > 0, got {value!r}") from None
