"""The co-occurrence approximation β^px and the stage-2 prediction (SPEC §6-7).

Stage 1 of the paper's account: while attention is uniform, the context is the mean source state, so
the model is a regression of each output on the source's *bag of words*, and what it learns — the
knowledge to translate individual words (KTIW) — is fixed by co-occurrence statistics. β^px reads
that knowledge off a model that has nothing but the bag of words:

* **closed form** — from the counts ``C[i, o]`` of (example, output position) pairs whose source
  contains word ``i`` and whose output is ``o``::

      β^px[b, t, s] = log( (C[x_s, y_t] + λ) / (Σ_o C[x_s, o] + λ · n_out) )

  the (add-λ smoothed) probability of output ``y_t`` given that word ``x_s`` is in the source;
* **regression** (the paper's choice) — a softmax regression of each output on the mean one-hot of
  its source, ``p(o | x) = softmax(x̄ W + b)``, fitted to convergence; β^px is the log-probability of
  ``y_t`` when the bag is the single word ``x_s``: ``log softmax(W[x_s] + b)[y_t]``.

Stage 2: with α uniform (1/n over the n valid positions), the gradient of the loss with respect to
the attention score of source position s is approximately ``−(1/n)(β_s − mean β)`` (exact to first
order in the KTIW weights for the free-parameter copy model), so attention first moves up the
ranking of β^px (:func:`stage2_prediction`, :func:`predicted_score_gradient`).

Both batch types are supported: for a :class:`~miniattn.batch.ClassificationBatch` the label is the
single output (T = 1) of every example, so a classifier's β^px has shape (B, 1, S); a binary
classifier's logistic regression is the two-class softmax regression.

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

__all__ = ["batch_arrays", "cooccurrence_counts", "beta_px_closed_form", "bag_of_words_features",
           "target_counts", "BagOfWordsGrads", "bag_of_words_loss", "BagOfWordsModel", "fit_bag_of_words",
           "beta_px_regression", "beta_px_for_batch", "stage2_prediction", "predicted_score_gradient",
           "copy_ktiw_signal"]


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


# --------------------------------------------------------------------------------------------------
# Closed form from co-occurrence counts
# --------------------------------------------------------------------------------------------------

def _presence(sources: np.ndarray, source_mask: np.ndarray, n_in: int) -> np.ndarray:
    """(B, n_in) int: 1 where the example's source contains the word (repeats count once)."""
    B = sources.shape[0]
    rows = np.broadcast_to(np.arange(B)[:, None], sources.shape)
    present = np.zeros((B, n_in), dtype=np.int64)
    present[rows[source_mask], sources[source_mask]] = 1   # duplicate indices just set 1 again
    return present


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


def cooccurrence_counts(sources, source_mask, targets, target_mask, n_in: int, n_out: int) -> np.ndarray:
    """Co-occurrence counts of source words and output words.

    Equation::

        C[i, o] = Σ_b [word i occurs in source b] · #{t counted : y_{b,t} = o}  =  Pᵀ Y

    with ``P (B, n_in)`` the 0/1 presence matrix and ``Y (B, n_out)`` the output counts: the number of
    (example, output position) pairs whose source contains ``i`` and whose output is ``o``.

    Parameters
    ----------
    sources : int array (B, S), ids in [0, n_in) where ``source_mask``
    source_mask : bool array (B, S)
    targets : int array (B, T), ids in [0, n_out) where ``target_mask``
    target_mask : bool array (B, T)
    n_in, n_out : int >= 1

    Returns
    -------
    C : int64 array (n_in, n_out)
    """
    n_in, n_out = _check_size("n_in", n_in), _check_size("n_out", n_out)
    sources, source_mask, targets, target_mask = _check_data(sources, source_mask, targets, target_mask,
                                                             n_in, n_out)
    return _presence(sources, source_mask, n_in).T @ target_counts(targets, target_mask, n_out)


def _gather(table: np.ndarray, sources, source_mask, targets, target_mask) -> np.ndarray:
    """``out[b, t, s] = table[x_{b,s}, y_{b,t}]``; NaN where the (t, s) pair is masked."""
    out = table[sources[:, None, :], targets[:, :, None]]
    return np.where(_pair_mask(source_mask, target_mask), out, np.nan)


def beta_px_closed_form(C, sources, source_mask, targets, target_mask, smoothing: float = 1.0) -> np.ndarray:
    """β^px from co-occurrence counts: the log-probability of y_t given source word x_s alone.

    Equation (λ = ``smoothing``)::

        β^px[b, t, s] = log (C[x_s, y_t] + λ) − log (Σ_o C[x_s, o] + λ · n_out)

    Parameters
    ----------
    C : array (n_in, n_out)
        Non-negative counts from :func:`cooccurrence_counts` (usually of a large training sample).
    sources, source_mask, targets, target_mask : see :func:`cooccurrence_counts`
        The batch to evaluate β^px on (may differ from the one ``C`` was counted on).
    smoothing : float >= 0
        Add-λ smoothing. With λ = 0, an unseen pair gives ``-inf`` and an unseen source word NaN.

    Returns
    -------
    beta : float64 array (B, T, S)
        NaN where the output position or the source position is masked.
    """
    C = np.asarray(C)
    if C.dtype.kind not in "iuf":
        raise TypeError(f"C must be a real array of counts, got dtype {C.dtype}")
    C = float_array("C", C.astype(np.float64), ndim=2)
    if np.any(C < 0):
        raise ValueError("C must be non-negative (counts)")
    smoothing = float(smoothing)
    if not (np.isfinite(smoothing) and smoothing >= 0):
        raise ValueError(f"smoothing must be a finite number >= 0, got {smoothing}")
    n_in, n_out = C.shape
    sources, source_mask, targets, target_mask = _check_data(sources, source_mask, targets, target_mask,
                                                             n_in, n_out)
    numerator = C + smoothing
    denominator = np.broadcast_to(C.sum(axis=1, keepdims=True) + smoothing * n_out, C.shape)
    # log 0 is -inf (an unseen pair) and 0/0 is NaN (an unseen word): set them without the warnings.
    log_num = np.full(C.shape, -np.inf)
    np.log(numerator, out=log_num, where=numerator > 0)
    table = np.full(C.shape, np.nan)
    np.subtract(log_num, np.log(denominator, where=denominator > 0, out=np.zeros(C.shape)), out=table,
                where=denominator > 0)
    return _gather(table, sources, source_mask, targets, target_mask)


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
    sources, source_mask, targets, target_mask : see :func:`cooccurrence_counts`
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


def beta_px_for_batch(fit_batch, eval_batch, n_in: int, n_out: int, method: str = "regression",
                      l2: float = 1e-3, smoothing: float = 1.0) -> np.ndarray:
    """β^px on ``eval_batch`` from statistics of ``fit_batch`` (either batch type).

    ``method="regression"`` fits :func:`fit_bag_of_words` (the paper's choice);
    ``method="closed_form"`` uses :func:`cooccurrence_counts` and :func:`beta_px_closed_form`.

    Returns
    -------
    beta : float64 array (B, T, S) (T = 1 for classification), NaN where masked.
    """
    if method == "regression":
        model = fit_bag_of_words(*batch_arrays(fit_batch), n_in, n_out, l2=l2)
        if not model.converged:
            raise ValueError(f"the bag-of-words regression did not converge (max |grad| {model.grad_norm:.2e}); "
                             "increase l2 or max_iter")
        return beta_px_regression(model, *batch_arrays(eval_batch))
    if method == "closed_form":
        C = cooccurrence_counts(*batch_arrays(fit_batch), n_in, n_out)
        return beta_px_closed_form(C, *batch_arrays(eval_batch), smoothing=smoothing)
    raise ValueError(f"method must be 'regression' or 'closed_form', got {method!r}")


# --------------------------------------------------------------------------------------------------
# Stage 2
# --------------------------------------------------------------------------------------------------

def _beta_and_valid(beta, mask):
    beta = np.asarray(beta)
    if beta.dtype.kind != "f":
        raise TypeError(f"beta must be a floating-point array, got dtype {beta.dtype}")
    if beta.ndim < 1 or beta.shape[-1] == 0:
        raise ValueError(f"beta must have shape (..., S) with S >= 1, got {beta.shape}")
    valid = ~np.isnan(beta)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_:
            raise TypeError(f"mask must be a boolean array (True = valid), got dtype {mask.dtype}")
        try:
            valid &= np.broadcast_to(mask, beta.shape)
        except ValueError:
            raise ValueError(f"mask of shape {mask.shape} does not broadcast to beta's shape {beta.shape}") from None
    return beta.astype(np.float64, copy=False), valid


def stage2_prediction(beta, mask=None) -> np.ndarray:
    """The predicted attention ranking at the start of stage 2: the ranking of β (e.g. β^px).

    Parameters
    ----------
    beta : float array (..., S)
        NaN marks an invalid position.
    mask : bool array broadcastable to (..., S), optional

    Returns
    -------
    ranks : int64 array (..., S)
        0 for the position predicted to gain the most attention, 1 for the next, ...; -1 at invalid
        positions. Ties are broken by the first index (a stable sort).
    """
    beta, valid = _beta_and_valid(beta, mask)
    # Primary key: invalid last; secondary: β descending (−β; -inf ranks last among the valid).
    order = np.lexsort((np.where(valid, -beta, 0.0), ~valid), axis=-1)
    ranks = np.empty(beta.shape, dtype=np.int64)
    positions = np.broadcast_to(np.arange(beta.shape[-1], dtype=np.int64), beta.shape)
    np.put_along_axis(ranks, order, positions, axis=-1)
    return np.where(valid, ranks, -1)


def predicted_score_gradient(beta, mask=None) -> np.ndarray:
    """The stage-2 prediction of ``−∂loss/∂score_{t,s}`` at uniform attention.

    With α uniform over the n valid positions the softmax Jacobian gives
    ``−∂loss/∂score_s = α_s (g_s − Σ_s' α_s' g_s')`` where ``g_s = ∂ log p(y_t)/∂α_s``; the paper
    replaces ``g_s`` by ``β_s`` (exact to first order in the KTIW weights)::

        −∂loss/∂score_{t,s} ≈ (1/n) (β_{t,s} − mean_{s' valid} β_{t,s'})

    Parameters
    ----------
    beta : float array (..., S), finite at valid positions; NaN marks an invalid position.
    mask : bool array broadcastable to (..., S), optional

    Returns
    -------
    float64 array (..., S)
        0 at invalid positions (a masked score gets no gradient). Sums to 0 over each item.
    """
    beta, valid = _beta_and_valid(beta, mask)
    if np.any(np.isinf(beta[valid])):
        raise ValueError("beta must be finite at valid positions (got ±inf); use smoothing > 0 for β^px")
    n = valid.sum(axis=-1, keepdims=True)
    safe_n = np.maximum(n, 1)
    filled = np.where(valid, beta, 0.0)
    mean = filled.sum(axis=-1, keepdims=True) / safe_n
    return np.where(valid, (filled - mean) / safe_n, 0.0)


def copy_ktiw_signal(L: int, V: int) -> float:
    """The stage-1 KTIW drive of the copy task: ``−∂ℓ/∂δ = 1/L − 1/V`` at δ = 0 and uniform attention.

    From the reduced loss of SPEC §7, ``ℓ(δ, α_d) = −δ α_d + log(e^{δ α_d} + (L − 1) e^{δ α_o} + V − L)``
    with ``α_d + (L − 1) α_o = 1``. Zero for permutations (V = L): no KTIW can form in stage 1;
    positive for subsets (V > L).

    Parameters
    ----------
    L : int >= 1, the copy length
    V : int >= L, the vocabulary size (L distinct tokens are drawn)
    """
    L, V = _check_size("L", L), _check_size("V", V)
    if L > V:
        raise ValueError(f"V must be >= L (L distinct tokens are drawn from V); got L={L}, V={V}")
    return 1.0 / L - 1.0 / V
