"""Input validation shared by every block: clear errors that name the argument.

Every public function of miniattn checks its inputs with these helpers so that a wrong shape, a wrong
dtype, an id out of range or a NaN is reported where it enters, never propagated silently.
"""

from __future__ import annotations

import numpy as np


class NonFiniteError(ValueError):
    """An array that must be finite holds NaN or inf (a ``ValueError``, so callers may catch either)."""


def refuse_masked(name: str, x) -> None:
    """Raise ``TypeError`` naming ``name`` if ``x`` is a NumPy masked array.

    ``np.asarray`` would drop the mask silently and use the hidden data under it.
    """
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{name} is a masked array; masked arrays are not supported (the mask would be dropped): "
                        f"pass {name}.filled(...) or a plain ndarray")


def float_array(name: str, x, ndim: int | None = None, *, min_ndim: int | None = None,
                allow_empty: bool = False) -> np.ndarray:
    """Return ``x`` as a finite floating-point array, or raise naming ``name``.

    Floating inputs keep their precision (float32 stays float32); Python scalars and lists become
    float64. Integer, boolean, complex and object arrays are a ``TypeError``: silently casting
    token ids into a float slot hides bugs. A masked array (``np.ma``) is a ``TypeError`` too: its
    mask would be dropped silently.
    """
    refuse_masked(name, x)
    arr = np.asarray(x)
    if not isinstance(x, np.ndarray) and arr.dtype.kind in "iu":
        arr = arr.astype(np.float64)  # a literal like [[1, 2]] is meant as numbers, not ids
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if min_ndim is not None and arr.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise NonFiniteError(f"{name} contains NaN or inf")
    return arr


def int_array(name: str, x, upper: int | None = None, ndim: int | None = None,
              allow_empty: bool = False) -> np.ndarray:
    """Return ``x`` as an integer array with every value in ``[0, upper)``, or raise naming ``name``.

    Negative ids are rejected explicitly: NumPy would otherwise wrap them to the end of a table.
    With ``upper=None`` only the dtype and shape are checked: callers use that for padded arrays
    whose pad value may be anything, and then check the unmasked entries with a bound. A masked
    array (``np.ma``) is a ``TypeError``.
    """
    refuse_masked(name, x)
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {arr.shape}")
    if arr.size and upper is not None:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= upper:
            raise ValueError(f"{name} must lie in [0, {upper}), got values in [{lo}, {hi}]")
    return arr


def bool_array(name: str, x, shape: tuple[int, ...]) -> np.ndarray:
    """Return ``x`` as a boolean array of exactly ``shape``, or raise naming ``name`` (a masked array
    is a ``TypeError``)."""
    refuse_masked(name, x)
    arr = np.asarray(x)
    if arr.dtype != np.bool_:
        raise TypeError(f"{name} must be a boolean array (True = keep), got dtype {arr.dtype}")
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    return arr


def result_dtype(*arrays: np.ndarray) -> np.dtype:
    """The common floating dtype of the given arrays (float32 only if all are float32)."""
    return np.result_type(*[a.dtype for a in arrays if a is not None])


def integer(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as a Python int in ``[low, high]`` (either bound may be None), or raise.

    A non-integer (including ``bool``, ``float`` and ``None``) is a ``TypeError``; an integer out of
    range a ``ValueError``. Booleans are refused: ``True`` is an int in Python, never a meaningful size.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            allowed = f">= {low}"
        elif low is None:
            allowed = f"<= {high}"
        else:
            allowed = f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def flag(name: str, value) -> bool:
    """Return ``value`` if it is a ``bool`` (or ``numpy.bool_``), else raise ``TypeError``.

    ``bool(x)`` would accept anything: the string ``"False"`` is truthy.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def real(name: str, value, *, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False) -> float:
    """Return ``value`` as a finite Python float within the given bounds, or raise naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value
