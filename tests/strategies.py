"""Shared hypothesis strategies for miniattn's property tests.

General building blocks, meant to be imported by any test module::

    from strategies import dims, float_arrays, id_arrays, masks, generators

* :func:`dims` — a small positive size (batch, time, width), including the edge value 1.
* :func:`float_arrays` — finite float arrays whose magnitude is bounded, so central differences stay
  accurate (gradient checks) or so that extreme values are requested on purpose (stability tests).
* :func:`id_arrays` — integer token ids in ``[0, vocab)`` with at least one repeated id whenever the
  array has two or more entries (repeats are where a scatter-add backward goes wrong).
* :func:`masks` — boolean masks with at least one True along the last axis of every row (an
  all-masked row is invalid input, tested separately).
* :func:`generators` — a ``numpy.random.Generator`` seeded from a drawn ``SeedSequence`` entropy, for
  random upstream gradients and directions (never global random state).
* :func:`attention_shapes` — consistent ``(B, T, S, dq, dk, dv)`` for attention blocks.

Values come from hypothesis (so shrinking works and the ``ci`` profile is reproducible); nothing here
draws from NumPy's global random state.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = ["dims", "float_arrays", "id_arrays", "masks", "generators", "seeds", "AttentionShape",
           "attention_shapes", "snapshot", "assert_unchanged"]


def dims(min_value: int = 1, max_value: int = 4) -> st.SearchStrategy[int]:
    """A size in ``[min_value, max_value]``; hypothesis tries the boundaries (e.g. 1) early."""
    return st.integers(min_value, max_value)


def float_arrays(shape, *, magnitude: float = 1.0, dtype=np.float64,
                 min_magnitude: float | None = None) -> st.SearchStrategy[np.ndarray]:
    """Finite float arrays of ``shape`` with entries in ``[-magnitude, magnitude]``.

    Parameters
    ----------
    shape : int, tuple of int, or strategy of either
    magnitude : float
        Bound on ``|x|``. Keep it O(1) for gradient checks: the central-difference error grows with
        the curvature of the function, which grows with the size of scores.
    dtype : numpy dtype
        float64 (default) or float32; elements are drawn representable in that width.
    min_magnitude : float, optional
        If given, every entry satisfies ``min_magnitude <= |x| <= magnitude`` (e.g. to force
        extreme logits of either sign).
    """
    dtype = np.dtype(dtype)
    width = 8 * dtype.itemsize
    if min_magnitude is None:
        elements = st.floats(-magnitude, magnitude, allow_nan=False, allow_infinity=False, width=width)
    else:
        mag = st.floats(min_magnitude, magnitude, allow_nan=False, allow_infinity=False, width=width)
        elements = st.tuples(mag, st.booleans()).map(lambda t: -t[0] if t[1] else t[0])
    return hnp.arrays(dtype, shape, elements=elements)


@st.composite
def id_arrays(draw, shape, vocab: int, *, force_repeat: bool = True, dtype=np.int64) -> np.ndarray:
    """Integer ids in ``[0, vocab)`` of ``shape``; with ``force_repeat`` some id occurs twice.

    The repeat is forced by copying one drawn entry onto another position (when there are at least
    two entries), so every example exercises the accumulation of repeated ids.
    """
    if isinstance(shape, st.SearchStrategy):
        shape = draw(shape)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    # A private C-contiguous copy, so that reshape(-1) below is a view we may write through.
    ids = np.array(draw(hnp.arrays(dtype, shape, elements=st.integers(0, vocab - 1))), order="C")
    if force_repeat and ids.size >= 2:
        flat = ids.reshape(-1)
        src = draw(st.integers(0, flat.size - 1))
        dst = (src + 1 + draw(st.integers(0, flat.size - 2))) % flat.size   # any position but src
        flat[dst] = flat[src]
    return ids


@st.composite
def masks(draw, shape) -> np.ndarray:
    """Boolean arrays of ``shape`` with at least one True along the last axis of every row.

    One position per row is drawn and set True after drawing the rest freely, so fully-unmasked
    rows, single-key rows and everything between are all reachable.
    """
    if isinstance(shape, st.SearchStrategy):
        shape = draw(shape)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    mask = np.array(draw(hnp.arrays(np.bool_, shape, elements=st.booleans())), order="C")
    rows = mask.reshape(-1, shape[-1])
    keep = draw(hnp.arrays(np.int64, rows.shape[0], elements=st.integers(0, shape[-1] - 1)))
    rows[np.arange(rows.shape[0]), keep] = True
    return mask


def seeds() -> st.SearchStrategy[int]:
    """Entropy for a ``numpy.random.SeedSequence``."""
    return st.integers(0, 2**63 - 1)


def generators() -> st.SearchStrategy[np.random.Generator]:
    """A fresh ``numpy.random.Generator`` per example, seeded through ``SeedSequence``."""
    return seeds().map(lambda s: np.random.default_rng(np.random.SeedSequence(s)))


class AttentionShape(NamedTuple):
    B: int
    T: int
    S: int
    dq: int
    dk: int
    dv: int


@st.composite
def attention_shapes(draw, *, max_batch: int = 3, max_len: int = 4, max_dim: int = 3,
                     same_qk: bool = False) -> AttentionShape:
    """Consistent attention sizes; ``same_qk`` forces ``dq == dk`` (dot-product attention)."""
    B = draw(dims(1, max_batch))
    T = draw(dims(1, max_len))
    S = draw(dims(1, max_len))
    dq = draw(dims(1, max_dim))
    dk = dq if same_qk else draw(dims(1, max_dim))
    dv = draw(dims(1, max_dim))
    return AttentionShape(B, T, S, dq, dk, dv)


# --------------------------------------------------------------------------------------------------
# Helpers for "inputs and caches are not mutated" properties
# --------------------------------------------------------------------------------------------------

def snapshot(obj):
    """A deep copy of arrays, tuples (including NamedTuples), dicts and lists of them."""
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(snapshot(x) for x in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(snapshot(x) for x in obj)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    return obj


def assert_unchanged(before, after, where: str = "value") -> None:
    """Assert that ``after`` equals the :func:`snapshot` ``before`` exactly (same dtype, same bits)."""
    if isinstance(before, np.ndarray):
        assert isinstance(after, np.ndarray), f"{where}: was an array, now {type(after)}"
        assert before.dtype == after.dtype and before.shape == after.shape, f"{where}: dtype/shape changed"
        assert np.array_equal(before, after), f"{where}: contents changed"
    elif isinstance(before, tuple) and hasattr(before, "_fields"):
        for name, b, a in zip(before._fields, before, after):
            assert_unchanged(b, a, f"{where}.{name}")
    elif isinstance(before, (tuple, list)):
        assert len(before) == len(after), f"{where}: length changed"
        for i, (b, a) in enumerate(zip(before, after)):
            assert_unchanged(b, a, f"{where}[{i}]")
    elif isinstance(before, dict):
        assert before.keys() == after.keys(), f"{where}: keys changed"
        for k in before:
            assert_unchanged(before[k], after[k], f"{where}[{k!r}]")
    else:
        assert before == after, f"{where}: {before!r} became {after!r}"
