"""The bag-of-words softmax regression behind β^px, and the batch inputs it shares with the counts.

Stage 1 of the paper's account (see :mod:`analysis.cooccurrence`): while attention is uniform the
context is the mean source state, so the model is a regression of each output on the source's bag
of words. This module fits that regression directly, the paper's way of reading the knowledge to
translate individual words (KTIW) off a model that has nothing but the bag of words::

    p(o | x) = softmax(x̄ W + b),    x̄ = mean one-hot of the source's real positions
    β^px[b, t, s] = log softmax(W[x_s] + b)[y_t]     (the bag is the single word x_s)

Two models are fitted:

* the **exact regression** above, a dense (n_in × n_out) softmax regression fitted to convergence by
  L-BFGS-B with the analytic gradient (:func:`fit_bag_of_words`, :func:`beta_px_regression`) —
  exact, but its cost grows as corpus × n_in × n_out per evaluation: for small problems only;
* the paper's **embedding bag of words** (:func:`fit_embedding_bag`, :func:`beta_px_embedding`): the
  mean of d-dimensional input word embeddings, then an affine map and a softmax over the target
  vocabulary, trained by minibatch Adam with the best epoch on a held-out validation split kept::

      h_b = (1/n_b) Σ_{s real} E[x_{b,s}]                     (B, d)
      p(o | x_b) = softmax(h_b W + c)                          (B, n_out)
      β^px[b, t, s] = log softmax(E[x_s] W + c)[y_t]          (the bag is the single word x_s)

  Its cost is linear in the corpus and its memory is bounded by minibatch × n_out.

A source word that never occurs in the fitted data carries no knowledge: its β^px is the model's
*unconditional* prediction ``log p̄(y_t)`` (:func:`mean_prediction`: the model's predicted
distribution averaged over the counted target tokens of the fitted data), not whatever its
untrained parameters would say. The closed form from co-occurrence counts, the entry point
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

import time
from typing import NamedTuple

import numpy as np
from scipy.optimize import minimize

from miniattn._validate import bool_array, float_array, int_array
from miniattn.batch import ClassificationBatch, Seq2SeqBatch
from miniattn.layers import log_softmax

__all__ = ["batch_arrays", "target_counts", "bag_of_words_features", "BagOfWordsGrads", "bag_of_words_loss",
           "BagOfWordsModel", "fit_bag_of_words", "beta_px_regression", "seen_words", "mean_prediction",
           "init_embedding_bag", "embedding_bag_forward", "embedding_bag_backward", "embedding_bag_loss",
           "EmbeddingBagModel", "fit_embedding_bag", "beta_px_embedding", "beta_px_table",
           "log_softmax_precise", "regression_log_probs"]

#: Bound on the elements of any (rows × n_out) float block built at once (minibatches excepted):
#: evaluation and β^px tables are computed in chunks of rows that respect it (~32 MB in float64).
CHUNK_ELEMENTS = 4_000_000


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


def _check_data(sources, source_mask, targets, target_mask, n_in: int | None, n_out: int | None):
    """Validate the four arrays; return them with masked ids replaced by 0 (safe for indexing)."""
    sources = int_array("sources", sources, ndim=2)
    targets = int_array("targets", targets, ndim=2)
    B, S = sources.shape
    if targets.shape[0] != B:
        raise ValueError(f"targets (B, T) must have the batch size B={B} of sources (B, S), got {targets.shape}")
    source_mask = bool_array("source_mask", source_mask, sources.shape)
    target_mask = bool_array("target_mask", target_mask, targets.shape)
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
    target_mask = bool_array("target_mask", target_mask, targets.shape)
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
    source_mask = bool_array("source_mask", source_mask, sources.shape)
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


def beta_px_regression(model: BagOfWordsModel, sources, source_mask, targets, target_mask, seen=None,
                       log_marginal=None) -> np.ndarray:
    """β^px from a fitted bag-of-words model: log p(y_t) when the bag is the single word x_s.

    Equation::

        β^px[b, t, s] = log softmax(W[x_s] + b)[y_t]            (x_s seen in the fitted data)
                      = log p̄(y_t)                              (x_s unseen; see :func:`mean_prediction`)

    Parameters
    ----------
    model : BagOfWordsModel (or any object with ``weight (n_in, n_out)`` and ``bias (n_out,)``)
    sources, source_mask, targets, target_mask : the batch to evaluate on
    seen : bool array (n_in,), optional
        Words that occur in the fitted data (:func:`seen_words`); None treats every word as seen.
    log_marginal : float array (n_out,), optional
        The unconditional prediction ``log p̄`` given to unseen words; required with ``seen``.

    Returns
    -------
    beta : float64 array (B, T, S), NaN where the (t, s) pair is masked.
    """
    weight = float_array("model.weight", model.weight, ndim=2)
    bias = float_array("model.bias", model.bias, ndim=1)
    n_in, n_out = weight.shape
    if bias.shape != (n_out,):
        raise ValueError(f"model.bias must have shape ({n_out},), got {bias.shape}")
    # One log-softmax per vocabulary word (the single-word bag is a one-hot), then a gather.
    return beta_px_table(lambda ids: log_softmax_precise(weight[ids] + bias), n_in, n_out, sources, source_mask,
                         targets, target_mask, seen=seen, log_marginal=log_marginal)


def regression_log_probs(model: BagOfWordsModel, sources, source_mask) -> np.ndarray:
    """``log softmax(x̄_b W + b)`` (B, n_out) of the exact regression for each example's bag."""
    n_in = model.weight.shape[0]
    return log_softmax(bag_of_words_features(sources, source_mask, n_in) @ model.weight + model.bias)


# --------------------------------------------------------------------------------------------------
# Unseen words and the model's unconditional prediction
# --------------------------------------------------------------------------------------------------

def seen_words(sources, source_mask, n_in: int, targets=None, target_mask=None) -> np.ndarray:
    """``seen[i]``: word i occurs at a real source position of an example that counts an output.

    Parameters
    ----------
    sources : int array (B, S); source_mask : bool array (B, S)
    n_in : int >= 1
    targets, target_mask : optional (B, T)
        When given, only examples with at least one counted output are looked at (the others do not
        enter any fit).

    Returns
    -------
    seen : bool array (n_in,)
    """
    n_in = _check_size("n_in", n_in)
    sources = int_array("sources", sources, ndim=2)
    source_mask = bool_array("source_mask", source_mask, sources.shape)
    int_array("sources (where source_mask is True)", sources[source_mask], upper=n_in, allow_empty=True)
    use = source_mask
    if target_mask is not None:
        target_mask = bool_array("target_mask", target_mask, np.shape(targets))
        use = source_mask & target_mask.any(axis=1)[:, None]
    return np.bincount(sources[use], minlength=n_in) > 0


def log_softmax_precise(logits) -> np.ndarray:
    """``log softmax`` along the last axis without rounding the top class's log-probability to 0.

    Equation (m = max_o z_o, attained at o*)::

        log p_o = z_o − m − log1p( Σ_{o ≠ o*} exp(z_o − m) )

    The usual ``z − m − log Σ exp(z − m)`` forms ``log(1 + ε)``, which is exactly 0 in float64 once
    ε < 1.1e-16 (a margin above ≈ 37): every confidently predicted word would then get the same
    β^px = 0 and tie. ``log1p`` keeps ``log p ≈ −ε`` distinct. float64 result.

    Parameters
    ----------
    logits : float array (..., n_out)
    """
    z = np.asarray(logits, dtype=np.float64)
    top = np.argmax(z, axis=-1)[..., None]
    shifted = z - np.take_along_axis(z, top, axis=-1)
    e = np.exp(shifted)
    np.put_along_axis(e, top, 0.0, axis=-1)
    return shifted - np.log1p(e.sum(axis=-1, keepdims=True))


def _chunk_rows(n_cols: int) -> int:
    """Rows per chunk so that a (rows × n_cols) block has at most :data:`CHUNK_ELEMENTS` elements."""
    return max(1, CHUNK_ELEMENTS // max(1, n_cols))


def mean_prediction(log_probs, sources, source_mask, targets, target_mask, n_out: int) -> np.ndarray:
    """The model's unconditional prediction: its predicted distribution averaged over target tokens.

    Equation (N = number of counted outputs, n_b those of example b)::

        p̄(o) = (1/N) Σ_b n_b · p(o | x_b),      returned as log p̄ (n_out,)

    computed in chunks of examples (at most :data:`CHUNK_ELEMENTS` probabilities at once).

    Parameters
    ----------
    log_probs : callable
        ``log_probs(sources_chunk (C, S), source_mask_chunk (C, S)) -> (C, n_out)`` log-probabilities.
    sources, source_mask, targets, target_mask : the fitted data, shapes (B, S) and (B, T)
    n_out : int >= 1

    Returns
    -------
    log_p_bar : float64 array (n_out,)
    """
    n_out = _check_size("n_out", n_out)
    weights = np.asarray(target_mask).sum(axis=1).astype(np.float64)
    keep = np.flatnonzero(weights > 0)
    if keep.size == 0:
        raise ValueError("target_mask counts no output; the unconditional prediction is undefined")
    total = np.zeros(n_out)
    step = _chunk_rows(n_out)
    for lo in range(0, keep.size, step):   # chunks of examples: bounded memory, each one vectorised
        idx = keep[lo:lo + step]
        total += weights[idx] @ np.exp(log_probs(sources[idx], source_mask[idx]).astype(np.float64))
    with np.errstate(divide="ignore"):
        return np.log(total / weights[keep].sum())


def beta_px_table(row_log_probs, n_in: int, n_out: int, sources, source_mask, targets, target_mask,
                  seen=None, log_marginal=None) -> np.ndarray:
    """β^px from any single-word-bag model, computed chunk by chunk over the batch's distinct words.

    Equation::

        β^px[b, t, s] = row_log_probs([x_s])[0, y_t]   if seen[x_s]   else   log_marginal[y_t]

    Only the batch's distinct source words are evaluated, in chunks of at most
    :data:`CHUNK_ELEMENTS` / n_out words, so memory is bounded by chunk × n_out plus the output.

    Parameters
    ----------
    row_log_probs : callable
        ``row_log_probs(ids int (U,)) -> (U, n_out)``: log p(o | bag = the single word ids[u]).
    n_in, n_out : int >= 1
    sources, source_mask, targets, target_mask : the batch to evaluate on, (B, S) and (B, T)
    seen : bool array (n_in,), optional
    log_marginal : float array (n_out,), optional (required with ``seen``)

    Returns
    -------
    beta : float64 array (B, T, S), NaN where the (t, s) pair is masked.
    """
    n_in, n_out = _check_size("n_in", n_in), _check_size("n_out", n_out)
    sources, source_mask, targets, target_mask = _check_data(sources, source_mask, targets, target_mask,
                                                             n_in, n_out)
    if seen is not None:
        seen = np.asarray(seen)
        if seen.dtype != np.bool_ or seen.shape != (n_in,):
            raise ValueError(f"seen must be a boolean array of shape ({n_in},), got {seen.dtype} {seen.shape}")
        if log_marginal is None:
            raise ValueError("log_marginal (n_out,) is required with seen: it is the unseen words' β^px")
        log_marginal = np.asarray(log_marginal, dtype=np.float64)
        if log_marginal.shape != (n_out,) or np.any(np.isnan(log_marginal)):
            raise ValueError(f"log_marginal must be a float array of shape ({n_out},) without NaN, "
                             f"got {log_marginal.shape}")
    B, T = targets.shape
    S = sources.shape[1]
    b_idx, t_idx, s_idx = np.nonzero(_pair_mask(source_mask, target_mask))
    words, outs = sources[b_idx, s_idx], targets[b_idx, t_idx]
    values = np.empty(words.size)
    if seen is not None:
        unseen = ~seen[words]
        values[unseen] = log_marginal[outs[unseen]]
        todo = np.flatnonzero(~unseen)
    else:
        todo = np.arange(words.size)
    uniq, inv = np.unique(words[todo], return_inverse=True)
    inv = inv.ravel()
    order = np.argsort(inv, kind="stable")
    step = _chunk_rows(n_out)
    bounds = np.searchsorted(inv[order], np.arange(0, uniq.size + step, step))
    # A loop over chunks of distinct words only bounds memory; each chunk is one vectorised block.
    for j, lo in enumerate(range(0, uniq.size, step)):
        rows = np.asarray(row_log_probs(uniq[lo:lo + step]), dtype=np.float64)
        sel = order[bounds[j]:bounds[j + 1]]
        values[todo[sel]] = rows[inv[sel] - lo, outs[todo[sel]]]
    beta = np.full((B, T, S), np.nan)
    beta[b_idx, t_idx, s_idx] = values
    return beta


# --------------------------------------------------------------------------------------------------
# The paper's embedding bag of words: forward, backward, loss
# --------------------------------------------------------------------------------------------------

EMBEDDING_PARAMS = ("embedding", "weight", "bias")


def init_embedding_bag(n_in: int, n_out: int, dim: int, rng: np.random.Generator,
                       dtype=np.float64) -> dict[str, np.ndarray]:
    """Initial parameters of the embedding bag of words (PyTorch's defaults for its layers).

    ``embedding`` (n_in, d) ~ N(0, 1); ``weight`` (d, n_out) and ``bias`` (n_out,) ~ U(±1/√d).

    Parameters
    ----------
    n_in, n_out, dim : int >= 1
    rng : numpy.random.Generator
    dtype : float dtype, default float64
    """
    n_in, n_out, dim = _check_size("n_in", n_in), _check_size("n_out", n_out), _check_size("dim", dim)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    bound = 1.0 / np.sqrt(dim)
    return {"embedding": rng.standard_normal((n_in, dim)).astype(dtype),
            "weight": rng.uniform(-bound, bound, (dim, n_out)).astype(dtype),
            "bias": rng.uniform(-bound, bound, n_out).astype(dtype)}


def _check_params(params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(params, dict) or set(params) != set(EMBEDDING_PARAMS):
        raise ValueError(f"params must be a dict with exactly the keys {EMBEDDING_PARAMS}, got "
                         f"{sorted(params) if isinstance(params, dict) else type(params).__name__}")
    E = float_array("params['embedding']", params["embedding"], ndim=2)
    W = float_array("params['weight']", params["weight"], ndim=2)
    c = float_array("params['bias']", params["bias"], ndim=1)
    if W.shape[0] != E.shape[1] or c.shape != (W.shape[1],):
        raise ValueError(f"params must be embedding (n_in, d), weight (d, n_out), bias (n_out,); got "
                         f"{E.shape}, {W.shape}, {c.shape}")
    return E, W, c


def embedding_bag_forward(params, sources, source_mask) -> tuple[np.ndarray, tuple]:
    """Logits of the embedding bag of words.

    Equation (n_b = number of real source positions of example b)::

        h_b = (1/n_b) Σ_s m_{b,s} E[x_{b,s}]        (B, d)
        z_b = h_b W + c                            (B, n_out)

    Parameters
    ----------
    params : dict
        ``embedding`` (n_in, d), ``weight`` (d, n_out), ``bias`` (n_out,).
    sources : int array (B, S), ids in [0, n_in) where ``source_mask``
    source_mask : bool array (B, S); every example needs a real position

    Returns
    -------
    logits : array (B, n_out)
    cache : tuple for :func:`embedding_bag_backward`
    """
    E, W, c = _check_params(params)
    sources = int_array("sources", sources, ndim=2)
    source_mask = bool_array("source_mask", source_mask, sources.shape)
    int_array("sources (where source_mask is True)", sources[source_mask], upper=E.shape[0], allow_empty=True)
    lengths = source_mask.sum(axis=1)
    if np.any(lengths == 0):
        raise ValueError(f"source_mask has examples with no source token (rows "
                         f"{np.flatnonzero(lengths == 0)[:5].tolist()}); their bag of words is undefined")
    ids = np.where(source_mask, sources, 0)
    weights = (source_mask / lengths[:, None]).astype(E.dtype)           # (B, S): 1/n_b at real positions
    h = np.matmul(weights[:, None, :], E[ids])[:, 0, :]                   # (B, d)
    return h @ W + c, (ids, source_mask, weights, h, E.shape, W)


def embedding_bag_backward(dlogits, cache) -> dict[str, np.ndarray]:
    """Vector-Jacobian product of :func:`embedding_bag_forward`.

    Equation (upstream ``dz`` = ∂L/∂z, (B, n_out))::

        dW = hᵀ dz,   dc = Σ_b dz_b,   dh = dz Wᵀ,
        dE[i] = Σ_{(b, s) real, x_{b,s} = i} dh_b / n_b        (scatter with np.add.at)

    Parameters
    ----------
    dlogits : array (B, n_out)
    cache : from :func:`embedding_bag_forward`

    Returns
    -------
    dict with ``embedding`` (n_in, d), ``weight`` (d, n_out), ``bias`` (n_out,)
    """
    ids, source_mask, weights, h, e_shape, W = cache
    dz = np.asarray(dlogits)
    if dz.shape != (h.shape[0], W.shape[1]):
        raise ValueError(f"dlogits must have shape (B, n_out) = {(h.shape[0], W.shape[1])}, got {dz.shape}")
    dz = dz.astype(W.dtype, copy=False)
    dh = dz @ W.T
    rows, cols = np.nonzero(source_mask)
    dE = np.zeros(e_shape, dtype=W.dtype)
    np.add.at(dE, ids[rows, cols], weights[rows, cols][:, None] * dh[rows])
    return {"embedding": dE, "weight": h.T @ dz, "bias": dz.sum(axis=0)}


def embedding_bag_loss(params, sources, source_mask, targets, target_mask) -> tuple[float, dict]:
    """Mean cross-entropy of the bag over every counted target of every example, and its gradient.

    The bag predicts each of the example's counted target words (N of them in the batch, n_b in
    example b)::

        loss = −(1/N) Σ_{(b, t) counted} log softmax(z_b)[y_{b,t}]
        dz_b = (n_b softmax(z_b) − Y_b) / N,     Y_b[o] = #{t counted : y_{b,t} = o}

    then :func:`embedding_bag_backward`. Memory: a few (B, n_out) blocks.

    Parameters
    ----------
    params : dict (see :func:`embedding_bag_forward`)
    sources : int array (B, S); source_mask : bool array (B, S)
    targets : int array (B, T); target_mask : bool array (B, T); at least one True

    Returns
    -------
    loss : float
    grads : dict keyed like ``params``
    """
    targets = int_array("targets", targets, ndim=2)
    target_mask = bool_array("target_mask", target_mask, targets.shape)
    logits, cache = embedding_bag_forward(params, sources, source_mask)
    B, n_out = logits.shape
    if targets.shape[0] != B:
        raise ValueError(f"targets (B, T) must have the batch size B={B} of sources, got {targets.shape}")
    int_array("targets (where target_mask is True)", targets[target_mask], upper=n_out, allow_empty=True)
    N = int(target_mask.sum())
    if N == 0:
        raise ValueError("target_mask counts no output; the loss is undefined")
    rows, cols = np.nonzero(target_mask)
    y = targets[rows, cols]
    log_p = log_softmax(logits)
    loss = -float(np.sum(log_p[rows, y], dtype=np.float64)) / N
    dz = np.exp(log_p)
    dz *= target_mask.sum(axis=1, keepdims=True).astype(dz.dtype)
    dz -= np.bincount(rows * n_out + y, minlength=B * n_out).reshape(B, n_out).astype(dz.dtype)
    dz /= N
    return loss, embedding_bag_backward(dz, cache)


# --------------------------------------------------------------------------------------------------
# The paper's embedding bag of words: minibatch Adam, best epoch on validation
# --------------------------------------------------------------------------------------------------

class EmbeddingBagModel(NamedTuple):
    """A fitted embedding bag of words ``p(o | x) = softmax(mean_s E[x_s] W + c)``."""

    params: dict             #: embedding (n_in, d), weight (d, n_out), bias (n_out,) of the best epoch
    best_epoch: int          #: the epoch with the lowest validation loss (0 = the initialisation)
    epochs: int              #: epochs run (stopped after ``patience`` epochs without improvement)
    train_loss: np.ndarray   #: (epochs,) mean training loss over each epoch's minibatches
    val_loss: np.ndarray     #: (epochs + 1,) validation loss after each epoch (index 0: at init)
    seconds_per_epoch: float #: mean wall-clock seconds of an epoch (training + validation)
    seen: np.ndarray         #: (n_in,) bool: the word occurs in the training part of the fit
    log_marginal: np.ndarray #: (n_out,) the model's unconditional prediction log p̄ (float64)
    n_train: int             #: training examples (with a counted output)
    n_val: int               #: validation examples


def _width(mask: np.ndarray) -> int:
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[-1]) + 1 if cols.size else 1


def _seed_sequence(seed) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(f"seed must be a numpy.random.SeedSequence or an integer >= 0, got {seed!r}")
    return np.random.SeedSequence(int(seed))


def _mean_loss(params, data, idx: np.ndarray) -> float:
    """Mean cross-entropy over the counted targets of examples ``idx``, in chunks (no gradient)."""
    sources, source_mask, targets, target_mask = data
    n_out = params["bias"].shape[0]
    total, count = 0.0, 0
    step = _chunk_rows(n_out)
    for lo in range(0, idx.size, step):    # chunks of examples: bounded memory
        i = idx[lo:lo + step]
        w, wt = _width(source_mask[i]), _width(target_mask[i])
        logits, _ = embedding_bag_forward(params, sources[i, :w], source_mask[i, :w])
        log_p = log_softmax(logits)
        rows, cols = np.nonzero(target_mask[i, :wt])
        total -= float(np.sum(log_p[rows, targets[i, :wt][rows, cols]], dtype=np.float64))
        count += rows.size
    return total / count


def fit_embedding_bag(sources, source_mask, targets, target_mask, n_in: int, n_out: int, *, dim: int = 256,
                      lr: float = 1e-3, batch_size: int = 128, max_epochs: int = 30, patience: int = 2,
                      validation: float = 0.1, seed=0, dtype=np.float32) -> EmbeddingBagModel:
    """Fit the paper's embedding bag of words by minibatch Adam; keep the best validation epoch.

    A seeded ``validation`` share of the examples (at least one) is held out; every epoch visits the
    other examples once in a new random order, in minibatches of ``batch_size`` (each trimmed to its
    longest source and target), with :class:`miniattn.optim.Adam` on the parameter dict. After each
    epoch the validation loss (mean cross-entropy per counted target) is measured; training stops
    after ``patience`` epochs without a new best, or at ``max_epochs``, and the best epoch's
    parameters are returned. Cost per epoch ∝ examples × (S d + d n_out); memory ∝ batch × n_out.

    Parameters
    ----------
    sources, source_mask, targets, target_mask : arrays (B, S), (B, S), (B, T), (B, T)
        The whole fitting corpus (see :func:`analysis.cooccurrence.cooccurrence_counts`).
    n_in, n_out : int >= 1
    dim : int >= 1, default 256 (the paper's)
    lr : float > 0
    batch_size, max_epochs : int >= 1
    patience : int >= 1
    validation : float in (0, 1)
    seed : numpy.random.SeedSequence or int >= 0
        Spawns the validation split, the initialisation and the epoch orders.
    dtype : float32 or float64

    Returns
    -------
    EmbeddingBagModel
    """
    from miniattn.optim import Adam

    n_in, n_out = _check_size("n_in", n_in), _check_size("n_out", n_out)
    dim, batch_size = _check_size("dim", dim), _check_size("batch_size", batch_size)
    max_epochs, patience = _check_size("max_epochs", max_epochs), _check_size("patience", patience)
    validation = float(validation)
    if not 0.0 < validation < 1.0:
        raise ValueError(f"validation must lie in (0, 1), got {validation}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    split_seq, init_seq, order_seq = _seed_sequence(seed).spawn(3)
    data = _check_data(sources, source_mask, targets, target_mask, n_in, n_out)
    keep = np.flatnonzero(data[3].any(axis=1))
    if keep.size < 2:
        raise ValueError(f"the fit needs at least 2 examples with a counted output, got {keep.size}")
    perm = np.random.default_rng(split_seq).permutation(keep)
    n_val = min(keep.size - 1, max(1, int(round(validation * keep.size))))
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    params = init_embedding_bag(n_in, n_out, dim, np.random.default_rng(init_seq), dtype=dtype)
    opt = Adam(params, lr=lr)
    order_rng = np.random.default_rng(order_seq)
    s_all, sm_all, t_all, tm_all = data
    best = {k: v.copy() for k, v in params.items()}
    val_losses = [_mean_loss(params, data, val_idx)]
    train_losses, best_epoch, start = [], 0, time.perf_counter()
    for epoch in range(1, max_epochs + 1):
        order = order_rng.permutation(train_idx)
        total, count = 0.0, 0
        for lo in range(0, order.size, batch_size):   # the minibatch loop (each step vectorised)
            i = order[lo:lo + batch_size]
            w, wt = _width(sm_all[i]), _width(tm_all[i])
            loss, grads = embedding_bag_loss(params, s_all[i, :w], sm_all[i, :w], t_all[i, :wt], tm_all[i, :wt])
            opt.step(grads)
            n = int(tm_all[i].sum())
            total, count = total + loss * n, count + n
        train_losses.append(total / count)
        val_losses.append(_mean_loss(params, data, val_idx))
        if not np.isfinite(val_losses[-1]):
            raise ValueError(f"the embedding bag of words diverged at epoch {epoch} (validation loss "
                             f"{val_losses[-1]}); lower lr")
        if val_losses[-1] < val_losses[best_epoch]:
            best_epoch = epoch
            best = {k: v.copy() for k, v in params.items()}
        elif epoch - best_epoch >= patience:
            break
    seconds = (time.perf_counter() - start) / len(train_losses)
    seen = seen_words(s_all[train_idx], sm_all[train_idx], n_in)
    log_marginal = mean_prediction(lambda s, m: log_softmax(embedding_bag_forward(best, s, m)[0]),
                                   s_all[train_idx], sm_all[train_idx], t_all[train_idx], tm_all[train_idx], n_out)
    return EmbeddingBagModel(best, best_epoch, len(train_losses), np.array(train_losses), np.array(val_losses),
                             float(seconds), seen, log_marginal, int(train_idx.size), int(n_val))


def beta_px_embedding(model: EmbeddingBagModel, sources, source_mask, targets, target_mask) -> np.ndarray:
    """β^px from a fitted embedding bag of words, chunk by chunk over the batch's distinct words.

    Equation::

        β^px[b, t, s] = log softmax(E[x_s] W + c)[y_t]     (x_s seen in the training part)
                      = log p̄(y_t)                         (x_s unseen: ``model.log_marginal``)

    in float64 with :func:`log_softmax_precise` (a single-word bag lies far from the mean bags the
    model was trained on, so its margins can be large; the plain log-softmax would round every
    confident word's log-probability to exactly 0, a tie).

    Parameters
    ----------
    model : EmbeddingBagModel
    sources, source_mask, targets, target_mask : the batch to evaluate on, (B, S) and (B, T)

    Returns
    -------
    beta : float64 array (B, T, S), NaN where the (t, s) pair is masked.
    """
    if not isinstance(model, EmbeddingBagModel):
        raise TypeError(f"model must be an EmbeddingBagModel (from fit_embedding_bag), got {type(model).__name__}")
    E, W, c = _check_params(model.params)
    return beta_px_table(lambda ids: log_softmax_precise(E[ids].astype(np.float64) @ W.astype(np.float64) + c),
                         E.shape[0], W.shape[1],
                         sources, source_mask, targets, target_mask, seen=model.seen,
                         log_marginal=model.log_marginal)
