"""The co-occurrence approximation β^px and the stage-2 prediction.

Stage 1 of the paper's account (the copy model's version is derived in ``analysis/README.md``,
section 2): while attention is uniform, the context is the mean source state, so the
model is a regression of each output on the source's *bag of words*, and what it learns — the
knowledge to translate individual words (KTIW) — is fixed by co-occurrence statistics. β^px reads
that knowledge off a model that has nothing but the bag of words:

* **closed form** (here) — from the counts ``C[i, o]`` of (example, output position) pairs whose
  source contains word ``i`` and whose output is ``o``::

      β^px[b, t, s] = log( (C[x_s, y_t] + λ) / (Σ_o C[x_s, o] + λ · n_out) )

  the (add-λ smoothed) probability of output ``y_t`` given that word ``x_s`` is in the source;
* **regression** (the paper's choice; :mod:`analysis.bag_of_words`) — a softmax regression of each
  output on the mean one-hot of its source, ``p(o | x) = softmax(x̄ W + b)``, fitted to
  convergence; β^px is the log-probability of ``y_t`` when the bag is the single word ``x_s``:
  ``log softmax(W[x_s] + b)[y_t]``; for real corpora the paper's scalable *embedding* bag of words
  (mean of d-dimensional word embeddings, then a softmax; minibatch Adam, best validation epoch).

:func:`fit_beta_px` fits any of the three (``method`` = "regression", "embedding", "counts") on one
batch — the whole of it — and :func:`beta_px_from_fit` / :func:`beta_px_for_batch` evaluate it on
another, chunk by chunk. A source word absent from the fitted data gets the model's unconditional
prediction.

Stage 2: with α uniform (1/n over the n valid positions), the gradient of the loss with respect to
the attention score of source position s is approximately ``−(1/n)(β_s − mean β)`` (exact to first
order in the KTIW weights for the free-parameter copy model), so attention first moves up the
ranking of β^px (:func:`stage2_prediction`, :func:`predicted_score_gradient`).

Both batch types are supported (:func:`analysis.bag_of_words.batch_arrays`, re-exported here).
Arrays: ``sources`` int (B, S), ``source_mask`` bool (B, S), ``targets`` int (B, T),
``target_mask`` bool (B, T); ids are checked only where the mask is True (padding may hold any id).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from analysis.bag_of_words import (_check_data, _check_size, _gather, _pair_mask, batch_arrays,
                                   beta_px_embedding, beta_px_regression, fit_bag_of_words, fit_embedding_bag,
                                   mean_prediction, regression_log_probs, seen_words, target_counts)
from miniattn._validate import float_array

__all__ = ["batch_arrays", "cooccurrence_counts", "beta_px_closed_form", "METHODS", "BetaPxFit", "fit_beta_px",
           "beta_px_from_fit", "beta_px_for_batch",
           "stage2_prediction", "predicted_score_gradient", "copy_ktiw_signal"]


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


#: The methods of :func:`fit_beta_px` ("closed_form" is accepted as another name of "counts").
METHODS = ("regression", "embedding", "counts")


class BetaPxFit(NamedTuple):
    """A β^px model fitted on one batch, to evaluate on others with :func:`beta_px_from_fit`."""

    method: str               #: "regression", "embedding" or "counts"
    model: object             #: BagOfWordsModel, EmbeddingBagModel, or the counts C (n_in, n_out)
    seen: np.ndarray          #: (n_in,) bool: the word occurs in the data the model was fitted on
    log_marginal: np.ndarray  #: (n_out,) the unconditional prediction given to unseen words
    smoothing: float          #: add-λ of the counts method
    info: dict                #: a JSON-able description of the fit (sizes, epochs, seconds)


def _method(method: str) -> str:
    if method == "closed_form":
        return "counts"
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} (or 'closed_form'), got {method!r}")
    return method


def fit_beta_px(fit_batch, n_in: int, n_out: int, method: str = "regression", *, l2: float = 1e-3,
                smoothing: float = 1.0, embedding: dict | None = None) -> BetaPxFit:
    """Fit the model behind β^px on ``fit_batch`` (either batch type), the whole batch.

    * ``"regression"`` — the exact softmax regression (:func:`analysis.bag_of_words.fit_bag_of_words`,
      dense n_in × n_out, L-BFGS-B to convergence): small problems only;
    * ``"embedding"`` — the paper's embedding bag of words
      (:func:`analysis.bag_of_words.fit_embedding_bag`, minibatch Adam, best validation epoch):
      linear in the corpus, memory bounded by minibatch × n_out;
    * ``"counts"`` (or ``"closed_form"``) — co-occurrence counts (:func:`cooccurrence_counts`).

    A source word absent from the fitted data gets the unconditional prediction: for the two models
    their mean prediction (:func:`analysis.bag_of_words.mean_prediction`), for the counts the add-λ
    marginal ``log (N_o + λ) − log (N + λ n_out)`` (N_o counted outputs equal to o, N all of them).

    Parameters
    ----------
    fit_batch : Seq2SeqBatch or ClassificationBatch
    n_in, n_out : int >= 1
    method : str
    l2 : float > 0 (regression)
    smoothing : float >= 0 (counts)
    embedding : dict, optional
        Keyword arguments of :func:`~analysis.bag_of_words.fit_embedding_bag` (dim, lr, batch_size,
        max_epochs, patience, validation, seed, dtype).

    Returns
    -------
    BetaPxFit
    """
    method = _method(method)
    n_in, n_out = _check_size("n_in", n_in), _check_size("n_out", n_out)
    arrays = _check_data(*batch_arrays(fit_batch), n_in, n_out)
    sources, source_mask, targets, target_mask = arrays
    if method == "embedding":
        model = fit_embedding_bag(*arrays, n_in, n_out, **(embedding or {}))
        info = {"n_train": model.n_train, "n_val": model.n_val, "best_epoch": model.best_epoch,
                "epochs": model.epochs, "seconds_per_epoch": model.seconds_per_epoch,
                "best_val_loss": float(model.val_loss[model.best_epoch]),
                "dim": int(model.params["weight"].shape[0])}
        return BetaPxFit(method, model, model.seen, model.log_marginal, float(smoothing), info)
    seen = seen_words(sources, source_mask, n_in, targets, target_mask)
    if method == "regression":
        model = fit_bag_of_words(*arrays, n_in, n_out, l2=l2)
        if not model.converged:
            raise ValueError(f"the bag-of-words regression did not converge (max |grad| {model.grad_norm:.2e}); "
                             "increase l2 or max_iter, or use method='embedding'")
        log_marginal = mean_prediction(lambda s, m: regression_log_probs(model, s, m), *arrays, n_out)
        info = {"n_train": int(target_mask.any(axis=1).sum()), "n_iter": model.n_iter, "l2": float(l2)}
        return BetaPxFit(method, model, seen, log_marginal, float(smoothing), info)
    C = cooccurrence_counts(*arrays, n_in, n_out)
    smoothing = float(smoothing)
    y = target_counts(targets, target_mask, n_out).sum(axis=0).astype(np.float64)
    with np.errstate(divide="ignore"):
        log_marginal = np.log(y + smoothing) - np.log(y.sum() + smoothing * n_out)
    return BetaPxFit(method, C, seen, log_marginal, smoothing, {"n_train": int(target_mask.any(axis=1).sum())})


def beta_px_from_fit(fit: BetaPxFit, eval_batch) -> np.ndarray:
    """β^px on ``eval_batch`` from a :class:`BetaPxFit` (computed chunk by chunk over distinct words).

    Returns
    -------
    beta : float64 array (B, T, S) (T = 1 for classification), NaN where masked; unseen source
        words get ``fit.log_marginal[y_t]``.
    """
    if not isinstance(fit, BetaPxFit):
        raise TypeError(f"fit must be a BetaPxFit (from fit_beta_px), got {type(fit).__name__}")
    arrays = batch_arrays(eval_batch)
    if fit.method == "embedding":
        return beta_px_embedding(fit.model, *arrays)
    if fit.method == "regression":
        return beta_px_regression(fit.model, *arrays, seen=fit.seen, log_marginal=fit.log_marginal)
    beta = beta_px_closed_form(fit.model, *arrays, smoothing=fit.smoothing)
    sources, source_mask, targets, target_mask = _check_data(*arrays, *fit.model.shape)
    unseen = _pair_mask(source_mask, target_mask) & ~fit.seen[sources][:, None, :]
    fill = np.broadcast_to(fit.log_marginal[targets][:, :, None], beta.shape)
    return np.where(unseen, fill, beta)


def beta_px_for_batch(fit_batch, eval_batch, n_in: int, n_out: int, method: str = "regression",
                      l2: float = 1e-3, smoothing: float = 1.0, embedding: dict | None = None) -> np.ndarray:
    """β^px on ``eval_batch`` from a model fitted on the whole of ``fit_batch`` (either batch type).

    ``method``: ``"regression"`` (exact, small problems; the default), ``"embedding"`` (the paper's
    scalable embedding bag of words) or ``"counts"`` / ``"closed_form"`` (co-occurrence counts); see
    :func:`fit_beta_px`. Source words unseen in ``fit_batch`` get the unconditional prediction.

    Returns
    -------
    beta : float64 array (B, T, S) (T = 1 for classification), NaN where masked.
    """
    fit = fit_beta_px(fit_batch, n_in, n_out, method, l2=l2, smoothing=smoothing, embedding=embedding)
    return beta_px_from_fit(fit, eval_batch)


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

    From the reduced loss (2) of ``analysis/README.md``, section 2 ('The free-parameter copy model
    and its symmetry'), ``ℓ(δ, α_d) = −δ α_d + log(e^{δ α_d} + (L − 1) e^{δ α_o} + V − L)``
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
