"""What every model returns from ``forward``, and the checks of the models' constructor arguments."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from miniattn._validate import bool_array, flag, float_array, int_array, integer, real


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


def check_params(params, expected: dict[str, tuple]) -> None:
    """Check a model's ``params`` against the names and shapes its constructor made.

    A cheap pass over the dict (no pass over any array): every expected name present and no other,
    each entry a floating-point ``numpy.ndarray`` of the expected shape. Finiteness is left to the
    blocks, which check what they read.

    Parameters
    ----------
    params : dict of name -> array
        The model's ``params`` as they are now (the user may have replaced entries).
    expected : dict of name -> tuple
        The shape of every parameter, as the constructor made it.

    Raises
    ------
    TypeError
        If ``params`` is not a mapping, or an entry is not a NumPy array of a floating-point dtype.
    ValueError
        If a name is missing or unexpected, or an entry has the wrong shape.
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"model.params must be a dict of name -> array, got {type(params).__name__}")
    if params.keys() != expected.keys():
        missing = [k for k in expected if k not in params]
        extra = sorted(str(k) for k in params if k not in expected)
        raise ValueError(f"model.params must hold exactly {list(expected)}; missing {missing}, unexpected {extra}")
    for name, shape in expected.items():
        value = params[name]
        if not isinstance(value, np.ndarray):
            raise TypeError(f"model.params[{name!r}] must be a NumPy array of shape {shape}, "
                            f"got {type(value).__name__}")
        if value.dtype.kind != "f":
            raise TypeError(f"model.params[{name!r}] must be a floating-point array, got dtype {value.dtype}")
        if value.shape != shape:
            raise ValueError(f"model.params[{name!r}] must have shape {shape} (as the model was built), "
                             f"got {value.shape}")


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


# --------------------------------------------------------------------------------------------------
# Batches. Every model of a kind checks its batch with the same function, so the errors a user sees
# (naming the batch field and what was expected) do not depend on which model was chosen.
# --------------------------------------------------------------------------------------------------

def check_seq2seq_batch(batch, *, source_vocab: int, target_vocab: int, source_length: int | None,
                        target_length: int | None, need_targets: bool):
    """Validate a :class:`~miniattn.batch.Seq2SeqBatch` against a model's sizes.

    Parameters
    ----------
    batch : Seq2SeqBatch
    source_vocab, target_vocab : int
        Ids must lie in ``[0, vocab)`` (padding included).
    source_length, target_length : int or None
        Longest source S / output T the model's positional tables allow; None = any length.
    need_targets : bool
        Check ``target_out`` (where counted) and ``target_mask`` too.

    Returns
    -------
    source (B, S), source_mask (B, S), target_in (B, T), target_out (B, T) with 0 at uncounted
    positions (None unless ``need_targets``), target_mask (B, T) (None unless ``need_targets``).
    """
    for field in ("source", "source_mask", "target_in", "target_out", "target_mask"):
        if not hasattr(batch, field):
            raise TypeError(f"batch must be a Seq2SeqBatch, got {type(batch).__name__} without {field!r}")
    source = int_array("batch.source", batch.source, upper=source_vocab, ndim=2)
    B, S = source.shape
    if source_length is not None and S > source_length:
        raise ValueError(f"batch.source has length {S}; the model's source_length allows at most {source_length}")
    source_mask = bool_array("batch.source_mask", batch.source_mask, (B, S))
    if not np.all(source_mask.any(axis=1)):
        bad = np.flatnonzero(~source_mask.any(axis=1))
        raise ValueError(f"batch.source_mask has rows with no real source token (rows {bad[:5].tolist()})")
    target_in = int_array("batch.target_in", batch.target_in, upper=target_vocab, ndim=2)
    if target_in.shape[0] != B:
        raise ValueError(f"batch.target_in must have B={B} rows like batch.source, got shape {target_in.shape}")
    T = target_in.shape[1]
    if target_length is not None and T > target_length:
        raise ValueError(f"batch.target_in has length {T}; the model's target_length allows at most {target_length}")
    target_out = target_mask = None
    if need_targets:
        target_mask = bool_array("batch.target_mask", batch.target_mask, (B, T))
        if not target_mask.any():
            raise ValueError("batch.target_mask must count at least one output position")
        target_out = np.asarray(batch.target_out)
        if target_out.dtype.kind not in "iu":
            raise TypeError(f"batch.target_out must be an integer array, got dtype {target_out.dtype}")
        if target_out.shape != (B, T):
            raise ValueError(f"batch.target_out must have shape (B, T) = {(B, T)}, got {target_out.shape}")
        int_array("batch.target_out (where target_mask is True)", target_out[target_mask], upper=target_vocab)
        target_out = np.where(target_mask, target_out, 0)   # padding may hold any id
    return source, source_mask, target_in, target_out, target_mask


def check_classification_batch(batch, *, vocab_size: int, n_classes: int, need_labels: bool):
    """Validate a :class:`~miniattn.batch.ClassificationBatch`: tokens (B, S), mask (B, S), labels (B,).

    Every sequence needs at least one real token; labels (checked when ``need_labels``) lie in
    ``[0, n_classes)``. Returns ``(tokens, mask, labels or None)``.
    """
    for field in ("tokens", "mask", "labels"):
        if not hasattr(batch, field):
            raise TypeError(f"batch must be a ClassificationBatch (tokens, mask, labels), "
                            f"got {type(batch).__name__} without {field!r}")
    tokens = int_array("batch.tokens", batch.tokens, upper=vocab_size, ndim=2)
    mask = bool_array("batch.mask", batch.mask, tokens.shape)
    if not np.all(mask.any(axis=1)):
        bad = np.flatnonzero(~mask.any(axis=1))
        raise ValueError(f"batch.mask has rows with no real token (rows {bad[:5].tolist()}); "
                         "every sequence needs at least one")
    labels = None
    if need_labels:
        labels = int_array("batch.labels", batch.labels, upper=n_classes, ndim=1)
        if labels.shape != tokens.shape[:1]:
            raise ValueError(f"batch.labels must have shape (B,) = {tokens.shape[:1]}, got {labels.shape}")
    return tokens, mask, labels


def check_source_scale(source_scale, shape: tuple, dtype, what: str = "the source's") -> np.ndarray | None:
    """A per-position scale of the encoder states (B, S) for saliency, cast to the model's dtype."""
    if source_scale is None:
        return None
    scale = float_array("source_scale", source_scale, ndim=2)
    if scale.shape != tuple(shape):
        raise ValueError(f"source_scale must have {what} shape (B, S) = {tuple(shape)}, got {scale.shape}")
    return scale.astype(dtype, copy=False)
