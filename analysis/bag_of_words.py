"""The bag-of-words softmax regression behind β^px, and the batch inputs it shares with the counts.

Stage 1 of the paper's account (see :mod:`analysis.cooccurrence`): while attention is uniform the
context is the mean source state, so the model is a regression of each output on the source's bag
of words. This module fits that regression directly, the paper's way of reading the knowledge to
translate individual words (KTIW) off a model that has nothing but the bag of words::

    p(o | x) = softmax(x̄ W + b),    x̄ = mean one-hot of the source's real positions
    β^px[b, t, s] = log softmax(W[x_s] + b)[y_t]     (the bag is the single word x_s)

fitted to convergence by L-BFGS-B with the analytic gradient (:func:`fit_bag_of_words`,
:func:`beta_px_regression`). The closed form from co-occurrence counts, the entry point
:func:`analysis.cooccurrence.beta_px_for_batch` and the stage-2 prediction are in
:mod:`analysis.cooccurrence`.

Both batch types are supported (:func:`batch_arrays`): for a
:class:`~miniattn.batch.ClassificationBatch` the label is the single output (T = 1) of every
example, so a classifier's β^px has shape (B, 1, S); a binary classifier's logistic regression is
the two-class softmax regression.

Arrays: ``sources`` int (B, S), ``source_mask`` bool (B, S), ``targets`` int (B, T),
``target_mask`` bool (B, T); ids are checked only where the mask is True (padding may hold any id).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.optimize import minimize

from miniattn._validate import float_array, int_array
from miniattn.batch import ClassificationBatch, Seq2SeqBatch
from miniattn.layers import log_softmax

__all__ = ["batch_arrays", "target_counts", "bag_of_words_features", "BagOfWordsGrads", "bag_of_words_loss",
           "BagOfWordsModel", "fit_bag_of_words", "beta_px_regression"]


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------

def batch_arrays(batch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(sources, source_mask, targets, target_mask)`` of a batch of either type.

    A :class:`~miniattn.batch.Seq2SeqBatch` gives ``(source, source_mask, target_out, target_mask)``;
    a :class:`~miniattn.batch.ClassificationBatch` gives ``(tokens, mask, labels[:, None],
    ones (B, 1))``: one output per example (T = 1).
    """
    if isinstance(batch, Seq2SeqBatch):
        return batch.source, batch.source_mask, batch.target_out, batch.target_mask
    if isinstance(batch, ClassificationBatch):
        labels = np.asarray(batch.labels)
        if labels.ndim != 1:
            raise ValueError(f"batch.labels must have shape (B,), got {labels.shape}")
        return batch.tokens, batch.mask, labels[:, None], np.ones((labels.shape[0], 1), dtype=bool)
    raise TypeError(f"batch must be a Seq2SeqBatch or a ClassificationBatch, got {type(batch).__name__}")


def _check_size(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _check_mask(name: str, mask, shape) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"{name} must be a boolean array (True = real token), got dtype {mask.dtype}")
    if mask.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {mask.shape}")
    return mask


def _check_data(sources, source_mask, targets, target_mask, n_in: int | None, n_out: int | None):
    """Validate the four arrays; return them with masked ids replaced by 0 (safe for indexing)."""
    sources = int_array("sources", sources, ndim=2)
    targets = int_array("targets", targets, ndim=2)
    B, S = sources.shape
    if targets.shape[0] != B:
        raise ValueError(f"targets (B, T) must have the batch size B={B} of sources (B, S), got {targets.shape}")
    source_mask = _check_mask("source_mask", source_mask, sources.shape)
    target_mask = _check_mask("target_mask", target_mask, targets.shape)
    int_array("sources (where source_mask is True)", sources[source_mask], upper=n_in, allow_empty=True)
    int_array("targets (where target_mask is True)", targets[target_mask], upper=n_out, allow_empty=True)
    counted = target_mask.any(axis=1)
    empty = counted & ~source_mask.any(axis=1)
    if np.any(empty):
        raise ValueError(f"source_mask has examples with no source token but counted outputs "
                         f"(rows {np.flatnonzero(empty)[:5].tolist()}); their bag of words is undefined")
    return (np.where(source_mask, sources, 0), source_mask, np.where(target_mask, targets, 0), target_mask)


def _pair_mask(source_mask: np.ndarray, target_mask: np.ndarray) -> np.ndarray:
    """(B, T, S): True where both the output position t and the source position s are real."""
    return target_mask[:, :, None] & source_mask[:, None, :]

def target_counts(targets, target_mask, n_out: int) -> np.ndarray:
    """``Y[b, o]`` = number of counted output positions of example b whose gold output is o.

    Parameters
    ----------
    targets : int array (B, T)
    target_mask : bool array (B, T)
    n_out : int

    Returns
    -------
    Y : int64 array (B, n_out)
    """
    n_out = _check_size("n_out", n_out)
    targets = int_array("targets", targets, ndim=2)
    target_mask = _check_mask("target_mask", target_mask, targets.shape)
    int_array("targets (where target_mask is True)", targets[target_mask], upper=n_out, allow_empty=True)
    B = targets.shape[0]
    rows = np.broadcast_to(np.arange(B)[:, None], targets.shape)
    flat = rows[target_mask] * n_out + targets[target_mask]
    return np.bincount(flat, minlength=B * n_out).reshape(B, n_out).astype(np.int64)

def _gather(table: np.ndarray, sources, source_mask, targets, target_mask) -> np.ndarray:
    """``out[b, t, s] = table[x_{b,s}, y_{b,t}]``; NaN where the (t, s) pair is masked."""
    out = table[sources[:, None, :], targets[:, :, None]]
    return np.where(_pair_mask(source_mask, target_mask), out, np.nan)


# --------------------------------------------------------------------------------------------------
# Bag-of-words softmax regression
# --------------------------------------------------------------------------------------------------

def bag_of_words_features(sources, source_mask, n_in: int) -> np.ndarray:
    """The mean one-hot of each source over its real positions: ``x̄_b = (1/n_b) Σ_s onehot(x_{b,s})``.

    Returns
    -------
    bags : float64 array (B, n_in)
        Rows sum to 1 (0 for an example with no real source position).
    """
    n_in = _check_size("n_in", n_in)
    sources = int_array("sources", sources, ndim=2)
    source_mask = _check_mask("source_mask", source_mask, sources.shape)
    int_array("sources (where source_mask is True)", sources[source_mask], upper=n_in, allow_empty=True)
    B = sources.shape[0]
    lengths = source_mask.sum(axis=1)
    rows = np.broadcast_to(np.arange(B)[:, None], sources.shape)[source_mask]
    weights = 1.0 / lengths[rows]
    return np.bincount(rows * n_in + sources[source_mask], weights=weights, minlength=B * n_in).reshape(B, n_in)


class BagOfWordsGrads(NamedTuple):
    weight: np.ndarray   #: (n_in, n_out)
    bias: np.ndarray     #: (n_out,)


def bag_of_words_loss(weight, bias, bags, counts, l2: float = 0.0) -> tuple[float, BagOfWordsGrads]:
    """Loss and gradient of the bag-of-words softmax regression.

    Every output position of example b sees the same bag ``x̄_b``, so the mean cross-entropy over the
    N counted output positions is a weighted sum over examples::

        z_b   = x̄_b W + b                                   (B, n_out)
        loss  = −(1/N) Σ_b Σ_o Y[b, o] log softmax(z_b)[o]  +  (l2/2) ‖W‖²
        dz_b  = (n_b softmax(z_b) − Y[b]) / N,   n_b = Σ_o Y[b, o]
        dW    = x̄ᵀ dz + l2 W,    db = Σ_b dz_b

    Parameters
    ----------
    weight : float array (n_in, n_out)
    bias : float array (n_out,)
    bags : float array (B, n_in)
        From :func:`bag_of_words_features`.
    counts : array (B, n_out)
        Output counts ``Y`` from :func:`target_counts` (non-negative, not all zero).
    l2 : float >= 0
        Ridge penalty on ``W`` (not on the bias).

    Returns
    -------
    loss : float
    grads : BagOfWordsGrads
    """
    weight = float_array("weight", weight, ndim=2)
    bias = float_array("bias", bias, ndim=1)
    bags = float_array("bags", bags, ndim=2)
    counts = np.asarray(counts, dtype=np.float64)
    n_in, n_out = weight.shape
    if bias.shape != (n_out,):
        raise ValueError(f"bias must have shape (n_out,) = ({n_out},), got {bias.shape}")
    if bags.shape[1] != n_in:
        raise ValueError(f"bags must have shape (B, n_in) = (B, {n_in}), got {bags.shape}")
    if counts.shape != (bags.shape[0], n_out):
        raise ValueError(f"counts must have shape (B, n_out) = {(bags.shape[0], n_out)}, got {counts.shape}")
    total = counts.sum()
    if total <= 0 or np.any(counts < 0):
        raise ValueError("counts must be non-negative with at least one counted output")
    log_p = log_softmax(bags @ weight + bias)
    loss = -float(np.sum(counts * log_p)) / total + 0.5 * l2 * float(np.sum(weight * weight))
    dz = (counts.sum(axis=1, keepdims=True) * np.exp(log_p) - counts) / total
    return loss, BagOfWordsGrads(bags.T @ dz + l2 * weight, dz.sum(axis=0))


class BagOfWordsModel(NamedTuple):
    """A fitted bag-of-words softmax regression ``p(o | x) = softmax(x̄ W + b)``."""

    weight: np.ndarray    #: (n_in, n_out)
    bias: np.ndarray      #: (n_out,)
    l2: float             #: the ridge penalty it was fitted with
    loss: float           #: final training objective (mean cross-entropy + penalty)
    grad_norm: float      #: max |gradient| at the solution
    converged: bool       #: L-BFGS-B reported success, or max |gradient| <= gtol
    n_iter: int           #: L-BFGS-B iterations
    message: str          #: the optimiser's termination message


def fit_bag_of_words(sources, source_mask, targets, target_mask, n_in: int, n_out: int, l2: float = 1e-3,
                     max_iter: int = 5000, gtol: float = 1e-8) -> BagOfWordsModel:
    """Fit the bag-of-words softmax regression to convergence (L-BFGS-B with the analytic gradient).

    The objective is :func:`bag_of_words_loss` — strictly convex in ``W`` for ``l2 > 0`` — started
    from zero, so the fit is deterministic and needs no random generator.

    Parameters
    ----------
    sources, source_mask, targets, target_mask : see :func:`analysis.cooccurrence.cooccurrence_counts`
    n_in, n_out : int >= 1
    l2 : float > 0
        Ridge penalty on ``W``; needed because a bag of words can separate the outputs (then the
        unpenalised optimum is at infinity).
    max_iter : int >= 1
    gtol : float > 0
        Stop when the largest gradient component is below ``gtol``.

    Returns
    -------
    BagOfWordsModel
    """
    n_in, n_out = _check_size("n_in", n_in), _check_size("n_out", n_out)
    l2 = float(l2)
    if not (np.isfinite(l2) and l2 > 0):
        raise ValueError(f"l2 must be a finite number > 0, got {l2}")
    sources, source_mask, targets, target_mask = _check_data(sources, source_mask, targets, target_mask,
                                                             n_in, n_out)
    counts = target_counts(targets, target_mask, n_out).astype(np.float64)
    if counts.sum() == 0:
        raise ValueError("target_mask counts no output; there is nothing to fit")
    # Examples without counted outputs contribute nothing; dropping them keeps the matrices small.
    keep = counts.sum(axis=1) > 0
    bags = bag_of_words_features(sources[keep], source_mask[keep], n_in)
    counts = counts[keep]

    def objective(theta):
        loss, grads = bag_of_words_loss(theta[:-n_out].reshape(n_in, n_out), theta[-n_out:], bags, counts, l2)
        return loss, np.concatenate([grads.weight.ravel(), grads.bias])

    result = minimize(objective, np.zeros(n_in * n_out + n_out), jac=True, method="L-BFGS-B",
                      options={"maxiter": int(max_iter), "gtol": float(gtol), "ftol": 0.0, "maxcor": 20})
    weight = result.x[:-n_out].reshape(n_in, n_out).copy()
    bias = result.x[-n_out:].copy()
    loss, grads = bag_of_words_loss(weight, bias, bags, counts, l2)
    grad_norm = float(max(np.max(np.abs(grads.weight)), np.max(np.abs(grads.bias))))
    converged = bool(result.success) or grad_norm <= gtol
    return BagOfWordsModel(weight, bias, l2, loss, grad_norm, converged, int(result.nit), str(result.message))


def beta_px_regression(model: BagOfWordsModel, sources, source_mask, targets, target_mask) -> np.ndarray:
    """β^px from a fitted bag-of-words model: log p(y_t) when the bag is the single word x_s.

    Equation::

        β^px[b, t, s] = log softmax(W[x_s] + b)[y_t]

    Parameters
    ----------
    model : BagOfWordsModel (or any object with ``weight (n_in, n_out)`` and ``bias (n_out,)``)
    sources, source_mask, targets, target_mask : the batch to evaluate on

    Returns
    -------
    beta : float64 array (B, T, S), NaN where the (t, s) pair is masked.
    """
    weight = float_array("model.weight", model.weight, ndim=2)
    bias = float_array("model.bias", model.bias, ndim=1)
    n_in, n_out = weight.shape
    if bias.shape != (n_out,):
        raise ValueError(f"model.bias must have shape ({n_out},), got {bias.shape}")
    sources, source_mask, targets, target_mask = _check_data(sources, source_mask, targets, target_mask,
                                                             n_in, n_out)
    # One log-softmax per vocabulary word (the single-word bag is a one-hot), then a gather.
    return _gather(log_softmax(weight + bias), sources, source_mask, targets, target_mask)
