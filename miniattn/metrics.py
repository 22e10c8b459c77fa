"""Evaluation metrics of a trained model on a held-out batch.

* :func:`token_accuracy` — argmax output = gold output, over counted positions;
* :func:`attention_accuracy` — argmax attention on the aligned source position (seq2seq);
* :func:`salient_attention_accuracy` — argmax attention on a planted label word (classification);
* :func:`evaluate` — the held-out record :func:`miniattn.train.train` logs at every evaluation.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping

import numpy as np

from miniattn import io
from miniattn._validate import NonFiniteError, bool_array, int_array

__all__ = ["BUILTIN_METRICS", "token_accuracy", "attention_accuracy", "salient_attention_accuracy",
           "evaluate", "plain_record"]

#: Keys of every evaluation record that :func:`evaluate` (and the training loop) fill in;
#: ``metrics_fn`` may not reuse them.
BUILTIN_METRICS = ("step", "train_loss", "loss", "token_accuracy", "attention_accuracy",
                   "attention_accuracy_per_head")


def _gold_and_mask(batch) -> tuple[np.ndarray, np.ndarray]:
    """Gold outputs (B, T) and the mask of counted positions (B, T) of a seq2seq or classification batch.

    Only dtypes and shapes are checked here (cheap); the range of the counted gold ids needs the
    number of classes, which :func:`_check_gold_range` checks once the log-probabilities are known.

    Raises
    ------
    TypeError
        If ``batch.target_out`` (``batch.labels``) is not an integer array or ``batch.target_mask``
        not a boolean one, or ``batch`` is neither kind of batch.
    ValueError
        If ``batch.target_out`` is not 2-d (``batch.labels`` not 1-d) or ``batch.target_mask`` does
        not have the shape of ``batch.target_out``.
    """
    if hasattr(batch, "target_out"):
        # Padding at uncounted positions may be any integer; counted ids are range-checked later.
        gold = int_array("batch.target_out", batch.target_out, ndim=2, allow_empty=True)
        return gold, bool_array("batch.target_mask", batch.target_mask, gold.shape)
    if hasattr(batch, "labels"):
        labels = int_array("batch.labels", batch.labels, ndim=1, allow_empty=True)
        return labels[:, None], np.ones((labels.shape[0], 1), dtype=bool)
    raise TypeError(f"batch must be a Seq2SeqBatch or a ClassificationBatch (with target_out or labels), "
                    f"got {type(batch).__name__}")


def _check_float_kind(name: str, x, arr: np.ndarray) -> None:
    """Refuse a non-floating array (str, object, bool, complex) with a TypeError naming ``name``.

    As in :func:`miniattn._validate.float_array`, a Python literal of integers (not an integer
    ndarray) is taken as numbers. NaN and inf are left to the callers, which allow them where a
    position is not counted.
    """
    if arr.dtype.kind == "f" or (arr.dtype.kind in "iu" and not isinstance(x, np.ndarray)):
        return
    raise TypeError(f"{name} must be a floating-point array, got dtype {arr.dtype}")


def _check_gold_range(name: str, gold: np.ndarray, mask: np.ndarray, C: int) -> None:
    """Counted gold ids must be classes in ``[0, C)`` (uncounted ones may be anything: padding)."""
    if not mask.any():
        return
    counted_gold = gold[mask]
    lo, hi = counted_gold.min(), counted_gold.max()
    if lo < 0 or hi >= C:
        raise ValueError(f"{name} must lie in [0, {C}) at counted positions, got values in [{lo}, {hi}]")


def token_accuracy(log_probs, gold, mask=None) -> float:
    """Fraction of counted output positions whose argmax class is the gold output.

    ``acc = Σ_{b,t} m_{bt} [argmax_c log_probs[b,t,c] = gold[b,t]] / Σ_{b,t} m_{bt}``

    Parameters
    ----------
    log_probs : float array (B, T, C)
        No NaN at counted positions.
    gold : int array (B, T)
        Class ids in ``[0, C)`` at counted positions (anything elsewhere, e.g. padding).
    mask : bool array (B, T), optional
        True where the position counts (default: all).

    Returns
    -------
    float (NaN when no position counts).

    Raises
    ------
    TypeError
        If ``log_probs`` is not a floating-point array, ``gold`` not an integer one or ``mask`` not
        a boolean one.
    ValueError
        For a wrong shape or a counted ``gold`` id outside ``[0, C)``; :class:`NonFiniteError` for
        NaN log-probabilities at a counted position.
    """
    log_probs_in, log_probs = log_probs, np.asarray(log_probs)
    _check_float_kind("log_probs", log_probs_in, log_probs)
    gold = np.asarray(gold)
    if log_probs.ndim != 3:
        raise ValueError(f"log_probs must have shape (B, T, C), got {log_probs.shape}")
    if gold.shape != log_probs.shape[:2]:
        raise ValueError(f"gold must have shape {log_probs.shape[:2]}, got {gold.shape}")
    if gold.dtype.kind not in "iu":
        raise TypeError(f"gold must be an integer array of class ids, got dtype {gold.dtype}")
    if mask is None:
        mask = np.ones(gold.shape, dtype=bool)
    else:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_:
            raise TypeError(f"mask must be a boolean array (True = counted), got dtype {mask.dtype}")
    if mask.shape != gold.shape:
        raise ValueError(f"mask must have shape {gold.shape}, got {mask.shape}")
    counted = int(mask.sum())
    if counted == 0:
        return math.nan
    # Gold ids at uncounted positions may be anything (padding); counted ones must be classes.
    counted_gold = gold[mask]
    C = log_probs.shape[-1]
    if counted_gold.min() < 0 or counted_gold.max() >= C:
        raise ValueError(f"gold must lie in [0, {C}) at counted positions, got values in "
                         f"[{counted_gold.min()}, {counted_gold.max()}]")
    # argmax of an all-NaN row is 0: a NaN would otherwise score as a hit on class 0.
    if np.any(np.isnan(log_probs).any(axis=-1) & mask):
        raise NonFiniteError("log_probs contains NaN at counted positions")
    hits = (np.argmax(log_probs, axis=-1) == gold) & mask
    return float(hits.sum() / counted)


def _hit_counts(attention: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, int]:
    """Rows (b, t) whose argmax attention lands on a target position, and the rows with any target.

    attention (..., B, T, S), targets bool (B, T, S) -> (hits array (...), number of rows with a target).
    """
    if attention.shape[-3:] != targets.shape:
        raise ValueError(f"attention must end with shape {targets.shape}, got {attention.shape}")
    valid = targets.any(axis=-1)                                        # (B, T)
    n_valid = int(valid.sum())
    if n_valid == 0:
        return np.zeros(attention.shape[:-3], dtype=np.int64), 0
    pred = np.argmax(attention, axis=-1)                                # (..., B, T)
    # targets[b, t, pred[..., b, t]] by broadcasting the (B, T, S) targets against the leading axes.
    hit = np.take_along_axis(np.broadcast_to(targets, attention.shape), pred[..., None], axis=-1)[..., 0]
    return (hit & valid).sum(axis=(-2, -1)), n_valid


def _check_no_nan(attention: np.ndarray, targets: np.ndarray) -> None:
    """Refuse NaN attention in a row that counts: argmax of an all-NaN row is 0, which could score a hit."""
    if np.any(np.isnan(attention).any(axis=-1) & targets.any(axis=-1)):
        raise NonFiniteError("attention contains NaN in a counted row")


def _hit_rate(attention: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Fraction of rows (b, t) with any target whose argmax attention lands on a target position.

    attention (..., B, T, S), targets bool (B, T, S) -> array (...) (NaN where no row has a target).
    """
    hits, n_valid = _hit_counts(attention, targets)
    if n_valid == 0:
        return np.full(attention.shape[:-3], np.nan)
    return hits / n_valid


def _alignment_targets(attention: np.ndarray, alignment, mask) -> np.ndarray:
    """Validated one-hot (B, T, S) of the aligned source position (empty where none or masked)."""
    alignment = np.asarray(alignment)
    if attention.ndim not in (3, 4):
        raise ValueError(f"attention must have shape (B, T, S) or (H, B, T, S), got {attention.shape}")
    B, T, S = attention.shape[-3:]
    if alignment.shape != (B, T):
        raise ValueError(f"alignment must have shape {(B, T)}, got {alignment.shape}")
    if alignment.dtype.kind not in "iu":
        raise TypeError(f"alignment must be an integer array, got dtype {alignment.dtype}")
    if alignment.size and (alignment.min() < -1 or alignment.max() >= S):
        raise ValueError(f"alignment must lie in [-1, {S}), got values in [{alignment.min()}, {alignment.max()}]")
    if mask is None:
        mask = np.ones((B, T), dtype=bool)
    else:
        # The shape first: a scalar (e.g. mask="x") is a ValueError for the shape, as it always was.
        if np.shape(mask) != (B, T):
            raise ValueError(f"mask must have shape {(B, T)}, got {np.shape(mask)}")
        mask = bool_array("mask", mask, (B, T))
    return (np.arange(S) == alignment[..., None]) & (mask & (alignment >= 0))[..., None]


def _salient_targets(attention: np.ndarray, salient) -> np.ndarray:
    """Validated salient-word targets (B, 1, S) of a classifier's attention."""
    salient = np.asarray(salient)
    if attention.ndim not in (3, 4) or attention.shape[-2] != 1:
        raise ValueError(f"attention must have shape (B, 1, S) or (H, B, 1, S), got {attention.shape}")
    if salient.dtype != np.bool_:
        raise TypeError(f"salient must be a boolean array, got dtype {salient.dtype}")
    if salient.shape != (attention.shape[-3], attention.shape[-1]):
        raise ValueError(f"salient must have shape {(attention.shape[-3], attention.shape[-1])}, "
                         f"got {salient.shape}")
    return salient[:, None, :]


def attention_accuracy(attention, alignment, mask=None):
    """Fraction of aligned output positions whose most-attended source position is the aligned one.

    ``acc = Σ [argmax_s α[b,t,s] = a[b,t]] / #{(b,t) : m_{bt} and a[b,t] >= 0}``

    Parameters
    ----------
    attention : float array (B, T, S), or (H, B, T, S) for H heads
    alignment : int array (B, T)
        Aligned source position of each output position; -1 where there is none (not counted).
    mask : bool array (B, T), optional
        Output positions that count (default: all).

    Returns
    -------
    float, or float array (H,) (one accuracy per head) for 4-d attention; NaN when no position counts.

    Raises
    ------
    TypeError
        If ``attention`` is not a floating-point array, ``alignment`` not an integer one or ``mask``
        not a boolean one.
    ValueError
        For a wrong shape or an ``alignment`` outside ``[-1, S)``; :class:`NonFiniteError` (a
        ValueError) if a counted row of ``attention`` holds NaN.
    """
    attention_in, attention = attention, np.asarray(attention)
    _check_float_kind("attention", attention_in, attention)
    targets = _alignment_targets(attention, alignment, mask)
    _check_no_nan(attention, targets)
    rate = _hit_rate(attention, targets)
    return float(rate) if attention.ndim == 3 else rate


def salient_attention_accuracy(attention, salient):
    """Classifier attention accuracy: fraction of sequences whose most-attended token is a salient one.

    ``acc = Σ_b [salient[b, argmax_s α[b,0,s]]] / #{b : any salient[b]}``

    Parameters
    ----------
    attention : float array (B, 1, S), or (H, B, 1, S)
    salient : bool array (B, S)
        Planted label words; sequences without any are not counted.

    Returns
    -------
    float, or float array (H,) for 4-d attention; NaN when no sequence has a salient token.

    Raises
    ------
    TypeError
        If ``attention`` is not a floating-point array or ``salient`` not a boolean one.
    ValueError
        For a wrong shape; :class:`NonFiniteError` (a ValueError) if the row of a counted sequence
        holds NaN.
    """
    attention_in, attention = attention, np.asarray(attention)
    _check_float_kind("attention", attention_in, attention)
    targets = _salient_targets(attention, salient)
    _check_no_nan(attention, targets)
    rate = _hit_rate(attention, targets)
    return float(rate) if attention.ndim == 3 else rate


def plain_record(record: Mapping) -> dict:
    """The record as plain JSON values, exactly as it will read back from metrics.jsonl."""
    return json.loads(io.dumps_json(record))


def _rows(batch, start: int, stop: int):
    """Rows ``start:stop`` of a batch (every array field with the batch's leading size is sliced)."""
    n = len(np.asarray(_gold_and_mask(batch)[0]))
    return type(batch)(*[f[start:stop] if isinstance(f, np.ndarray) and f.ndim and f.shape[0] == n else f
                         for f in batch])


def _chunk_sums(model, batch) -> dict:
    """Additive evaluation sums of one chunk: Σ log p(gold), counted outputs, hits, attention hits."""
    gold, mask = _gold_and_mask(batch)
    result = model.forward(batch)
    log_probs = np.asarray(result.log_probs)
    attention = np.asarray(result.attention)
    if log_probs.ndim != 3 or log_probs.shape[:2] != gold.shape:
        raise ValueError(f"model.forward returned log_probs of shape {log_probs.shape}; "
                         f"expected (B, T, C) with (B, T) = {gold.shape}")
    _check_gold_range("batch.target_out" if hasattr(batch, "target_out") else "batch.labels",
                      gold, mask, log_probs.shape[-1])
    # Gold ids at uncounted positions may be anything (padding); index with a safe 0 there.
    safe_gold = np.where(mask, gold, 0)
    gold_log_probs = np.take_along_axis(log_probs, safe_gold[..., None], axis=-1)[..., 0]
    with np.errstate(invalid="ignore"):  # -inf * 0 at masked positions is discarded by the where
        total = float(np.sum(np.where(mask, gold_log_probs, 0.0)))
    sums = {"log_prob": total, "counted": int(mask.sum()),
            "hits": int(((np.argmax(log_probs, axis=-1) == gold) & mask).sum()), "attention": None}
    targets = None
    if getattr(batch, "alignment", None) is not None and hasattr(batch, "target_out"):
        targets = _alignment_targets(attention, batch.alignment, mask)
    elif getattr(batch, "salient", None) is not None and hasattr(batch, "labels"):
        targets = _salient_targets(attention, batch.salient)
    if targets is not None:
        # The head-averaged attention is what the model's averaged context uses.
        mean_hits, n_valid = _hit_counts(attention.mean(axis=0) if attention.ndim == 4 else attention, targets)
        head_hits = _hit_counts(attention, targets)[0] if attention.ndim == 4 else None
        sums["attention"] = (mean_hits, head_hits, n_valid)
    return sums


def evaluate(model, batch, metrics_fn: Callable | None = None, *, chunk_size: int | None = None) -> dict:
    """Evaluate ``model`` on ``batch``: held-out loss, token accuracy, attention accuracy, extras.

    * ``loss`` = −Σ m_{bt} log p(gold_{bt}) / Σ m_{bt} (mean cross-entropy over counted outputs),
      computed from ``model.forward(batch).log_probs``.
    * ``token_accuracy`` — :func:`token_accuracy`.
    * ``attention_accuracy`` — for a seq2seq batch with ``alignment``: :func:`attention_accuracy` of
      the attention (for a multi-head model, of the head-averaged attention, which is what the
      model's averaged context uses); for a classification batch with ``salient``:
      :func:`salient_attention_accuracy`; None otherwise.
    * ``attention_accuracy_per_head`` — multi-head models only: the same accuracy per head (list).
    * the entries of ``metrics_fn(model, batch)`` (a mapping), if given.

    Every built-in metric is a ratio of sums over examples, so the batch is evaluated in chunks of
    ``chunk_size`` examples and the sums are added: a held-out split of N examples never becomes
    one dense (N, T, C) array of log-probabilities (10 GB for 2,900 sentence pairs and a vocabulary of
    10k in float64). The result equals the unchunked one up to the order of floating-point additions.

    Parameters
    ----------
    model : a model (see :mod:`miniattn.models`)
    batch : Seq2SeqBatch or ClassificationBatch
    metrics_fn : callable (model, batch) -> mapping, optional
        Called once on the whole batch.
    chunk_size : int >= 1, optional
        Examples per forward pass; default: the whole batch at once.

    Returns
    -------
    dict of plain JSON values (NaN -> None).

    Raises
    ------
    TypeError
        If ``metrics_fn`` is not callable (checked before any evaluation), ``batch.target_out``
        (``batch.labels``) is not an integer array, ``batch.target_mask`` not a boolean one, or
        ``metrics_fn`` returns no mapping.
    ValueError
        If ``chunk_size`` is not an integer >= 1, ``batch.target_mask`` does not have the shape of
        ``batch.target_out``, a counted gold id lies outside ``[0, C)``, or ``metrics_fn`` returns a
        built-in metric name.
    """
    if metrics_fn is not None and not callable(metrics_fn):
        raise TypeError(f"metrics_fn must be a callable (model, batch) -> mapping, "
                        f"got {type(metrics_fn).__name__} {metrics_fn!r:.60}")
    gold, _ = _gold_and_mask(batch)
    n = len(gold)
    if chunk_size is None:
        chunk_size = max(n, 1)
    elif isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    parts = [_chunk_sums(model, _rows(batch, i, i + chunk_size) if chunk_size < n else batch)
             for i in range(0, max(n, 1), chunk_size)]   # a loop over chunks, not over examples
    counted = sum(p["counted"] for p in parts)
    record: dict[str, Any] = {
        "loss": float(-sum(p["log_prob"] for p in parts) / counted) if counted else math.nan,
        "token_accuracy": float(sum(p["hits"] for p in parts) / counted) if counted else math.nan,
        "attention_accuracy": None,
    }
    if parts[0]["attention"] is not None:
        n_valid = sum(p["attention"][2] for p in parts)
        mean_hits = sum(p["attention"][0] for p in parts)
        record["attention_accuracy"] = float(mean_hits / n_valid) if n_valid else math.nan
        if parts[0]["attention"][1] is not None:
            head_hits = sum(p["attention"][1] for p in parts)
            record["attention_accuracy_per_head"] = (head_hits / n_valid if n_valid
                                                     else np.full(head_hits.shape, np.nan))
    if metrics_fn is not None:
        extra = metrics_fn(model, batch)
        if not isinstance(extra, Mapping):
            raise TypeError(f"metrics_fn must return a mapping, got {type(extra).__name__}")
        clash = sorted(set(extra) & set(BUILTIN_METRICS))
        if clash:
            raise ValueError(f"metrics_fn must not return the built-in metric names {clash}")
        record.update(extra)
    return plain_record(record)
