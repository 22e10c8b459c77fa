"""Agreement between two scores over source positions: top-k match, Kendall τ, the shuffled baseline
Â, ξ(v), and percentile-bootstrap confidence intervals (the metrics of experiment E3).

Every metric compares two score arrays ``a`` and ``b`` of the same shape ``(..., n)``: the last axis
holds the source positions of one *item* (an (example, output position) pair), the leading axes
index the items — ``(N, n)`` or ``(B, T, S)``. A position is *valid* for an item when the optional
``mask`` is True there and neither ``a`` nor ``b`` is NaN there, so a variable number of positions
per item is expressed by a mask (or by NaN padding). ``±inf`` are ordinary, ordered values (a
log-probability may underflow to ``-inf``). Items with no valid position are *skipped*: their
per-item value is NaN and they do not enter any average.

Top-k match (the paper's "top 5% match")::

    i*      = argmax over valid s of a[s]            (ties: the first index)
    k       = ceil(frac · n),   n = number of valid positions      (n <= 20 and frac = .05: k = 1)
    match   = 1  if  #{valid s : b[s] > b[i*]} < k   else 0      (strict count: ties in b help)

Averaging ``match`` over the items gives ``A(a, b)``; shuffling ``b`` within each item's valid
positions first gives the random baseline ``Â`` (expected ≈ k/n).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

__all__ = ["top_k_match", "agreement", "top_k_size", "kendall_tau_items", "kendall_tau",
           "shuffle_within_items", "shuffled_baseline", "xi", "xi_star", "BootstrapCI", "bootstrap_ci",
           "valid_positions"]

# Bound on the number of elements of the (items, n, n) pair tensors built at once by kendall_tau and
# of the (replicates, items) count matrices in bootstrap_ci: keeps memory ~ tens of MB on any input.
_CHUNK_ELEMENTS = 2_000_000


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------

def _scores(name: str, x) -> np.ndarray:
    """A score array as float64 (NaN allowed: it marks an invalid position), at least 1-D."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real (float or integer) array, got dtype {arr.dtype}")
    if arr.ndim < 1:
        raise ValueError(f"{name} must have at least 1 dimension (..., n positions), got a scalar")
    if arr.shape[-1] == 0:
        raise ValueError(f"{name} must have at least one position on its last axis, got shape {arr.shape}")
    return arr.astype(np.float64, copy=False)


def _frac(frac) -> float:
    frac = float(frac)
    if not (0.0 < frac <= 1.0):
        raise ValueError(f"frac must lie in (0, 1], got {frac}")
    return frac


def valid_positions(a, b, mask=None) -> np.ndarray:
    """The boolean array of valid positions: ``mask`` (broadcast to ``a``'s shape) and not NaN in ``a`` or ``b``.

    Parameters
    ----------
    a, b : real arrays, same shape (..., n)
    mask : bool array broadcastable to (..., n), optional
        True where a position may be compared (e.g. ``source_mask[:, None, :] & target_mask[:, :, None]``).

    Returns
    -------
    valid : bool array (..., n)
    """
    a = _scores("a", a)
    b = _scores("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape (..., n), got {a.shape} and {b.shape}")
    valid = ~(np.isnan(a) | np.isnan(b))
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_:
            raise TypeError(f"mask must be a boolean array (True = valid position), got dtype {mask.dtype}")
        try:
            mask = np.broadcast_to(mask, a.shape)
        except ValueError:
            raise ValueError(f"mask of shape {mask.shape} does not broadcast to the scores' shape {a.shape}") from None
        valid &= mask
    return valid


def top_k_size(n, frac: float = 0.05) -> np.ndarray:
    """``k = ceil(frac · n)`` for integer counts ``n`` (array or scalar), computed exactly.

    ``frac · n`` is rounded to 9 decimals before the ceiling so that products that are whole numbers
    in exact arithmetic (0.05 · 60 = 3) are not pushed up by binary rounding (3.0000000000000004).
    ``n = 0`` gives ``k = 0``.
    """
    frac = _frac(frac)
    n = np.asarray(n)
    return np.ceil(np.round(frac * n, 9)).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# Top-k match
# --------------------------------------------------------------------------------------------------

def top_k_match(a, b, mask=None, frac: float = 0.05) -> np.ndarray:
    """Per-item top-k match: does the position that ``a`` ranks first lie in the top ``k`` of ``b``?

    Parameters
    ----------
    a : real array (..., n)
        The score whose top position is taken (e.g. attention α).
    b : real array (..., n)
        The score whose top-k set is taken (e.g. the uniform twin's KTIW probe β^uf).
    mask : bool array broadcastable to (..., n), optional
        True at valid positions. NaN in ``a`` or ``b`` also marks a position invalid.
    frac : float in (0, 1]
        ``k = ceil(frac · n)`` with ``n`` the item's number of valid positions.

    Returns
    -------
    match : float64 array (...)
        1.0 or 0.0 per item; NaN for items with no valid position (skipped).

    Notes
    -----
    ``i* = argmax_s a[s]`` over valid ``s``, ties broken by the first index; the match is
    ``#{valid s : b[s] > b[i*]} < k`` — a strict count, so ties in ``b`` count in favour of the match
    (a constant ``b`` always matches). Fully vectorised over items.
    """
    frac = _frac(frac)
    valid = valid_positions(a, b, mask)
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    n = valid.sum(axis=-1)
    # The top of a among valid positions; comparing with the maximum (rather than argmax of a filled
    # array) keeps "first valid index" correct even when every valid a is -inf.
    a_max = np.max(a, axis=-1, where=valid, initial=-np.inf, keepdims=True)
    is_top = valid & (a == a_max)
    i_star = np.argmax(is_top, axis=-1)[..., None]
    b_star = np.take_along_axis(b, i_star, axis=-1)
    above = np.sum(valid & (np.where(valid, b, -np.inf) > b_star), axis=-1)
    match = (above < top_k_size(n, frac)).astype(np.float64)
    return np.where(n > 0, match, np.nan)


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN entries; NaN (without a warning) when there are none."""
    values = np.asarray(values, dtype=np.float64).ravel()
    keep = ~np.isnan(values)
    count = int(keep.sum())
    return float(values[keep].sum() / count) if count else float("nan")


def agreement(a, b, mask=None, frac: float = 0.05) -> float:
    """``A(a, b)``: the top-k match of :func:`top_k_match` averaged over the non-skipped items.

    Returns NaN when every item is skipped.
    """
    return _nanmean(top_k_match(a, b, mask, frac))


# --------------------------------------------------------------------------------------------------
# Kendall tau
# --------------------------------------------------------------------------------------------------

def _sign_pairs(x: np.ndarray) -> np.ndarray:
    """``sign(x[i] − x[j])`` for all pairs (..., n, n), by comparisons (no inf − inf)."""
    left, right = x[..., :, None], x[..., None, :]
    return (left > right).astype(np.int8) - (left < right).astype(np.int8)


def kendall_tau_items(a, b, mask=None) -> np.ndarray:
    """Per-item Kendall τ-b between ``a`` and ``b`` over each item's valid positions.

    Equation (pairs ``i < j`` of valid positions)::

        τ_b = Σ sign(a_i − a_j) sign(b_i − b_j) / sqrt( #{a_i ≠ a_j} · #{b_i ≠ b_j} )

    the same quantity as ``scipy.stats.kendalltau`` (variant 'b'), computed for all items at once from
    pair-sign tensors (in chunks of items, to bound memory).

    Parameters
    ----------
    a, b : real arrays, same shape (..., n)
    mask : bool array broadcastable to (..., n), optional

    Returns
    -------
    tau : float64 array (...)
        NaN (skipped) for items with fewer than 2 valid positions or with ``a`` or ``b`` constant
        over them (τ undefined).
    """
    valid = valid_positions(a, b, mask)
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    lead, n = a.shape[:-1], a.shape[-1]
    a2, b2, v2 = a.reshape(-1, n), b.reshape(-1, n), valid.reshape(-1, n)
    tau = np.full(a2.shape[0], np.nan)
    step = max(1, _CHUNK_ELEMENTS // (n * n))
    # A loop over chunks of items only bounds memory; each chunk is one vectorised computation.
    for lo in range(0, a2.shape[0], step):
        sl = slice(lo, lo + step)
        pair_valid = v2[sl, :, None] & v2[sl, None, :]
        sa = _sign_pairs(a2[sl]) * pair_valid
        sb = _sign_pairs(b2[sl]) * pair_valid
        # Over ordered pairs every unordered pair counts twice in all three sums: the ratio is unchanged.
        concordance = np.sum(sa.astype(np.int64) * sb, axis=(1, 2))
        untied_a = np.count_nonzero(sa, axis=(1, 2))
        untied_b = np.count_nonzero(sb, axis=(1, 2))
        denom = np.sqrt(untied_a.astype(np.float64) * untied_b)
        ok = denom > 0
        tau[sl] = np.where(ok, concordance / np.where(ok, denom, 1.0), np.nan)
    return tau.reshape(lead)


def kendall_tau(a, b, mask=None) -> float:
    """Kendall τ-b of :func:`kendall_tau_items` averaged over the non-skipped items (NaN if none)."""
    return _nanmean(kendall_tau_items(a, b, mask))


# --------------------------------------------------------------------------------------------------
# Shuffled baseline
# --------------------------------------------------------------------------------------------------

def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (seeded from a SeedSequence), got {type(rng).__name__}")
    return rng


def shuffle_within_items(b, valid, rng: np.random.Generator) -> np.ndarray:
    """Permute ``b`` uniformly at random among each item's valid positions (all items at once).

    Parameters
    ----------
    b : real array (..., n)
    valid : bool array (..., n)
        The positions to permute among (typically from :func:`valid_positions`).
    rng : numpy.random.Generator

    Returns
    -------
    shuffled : float64 array (..., n)
        The values of ``b`` at valid positions, permuted within each item; NaN at invalid positions
        (so that a metric applied afterwards sees exactly the same valid set).
    """
    rng = _check_rng(rng)
    b = _scores("b", b)
    valid = np.asarray(valid)
    if valid.dtype != np.bool_ or valid.shape != b.shape:
        raise ValueError(f"valid must be a boolean array of b's shape {b.shape}, got {valid.dtype} {valid.shape}")
    n = b.shape[-1]
    b2, v2 = b.reshape(-1, n), valid.reshape(-1, n)
    # Sorting random keys with invalid positions pushed to the end gives a uniformly random order of
    # each item's valid positions; a stable sort of ~valid lists the same positions in their own order.
    keys = np.where(v2, rng.random(v2.shape), np.inf)
    random_order = np.argsort(keys, axis=-1, kind="stable")
    own_order = np.argsort(~v2, axis=-1, kind="stable")
    moved = np.take_along_axis(b2, random_order, axis=-1)
    out = np.full_like(b2, np.nan)
    np.put_along_axis(out, own_order, moved, axis=-1)
    out[~v2] = np.nan
    return out.reshape(b.shape)


def shuffled_baseline(a, b, mask=None, rng: np.random.Generator | None = None, frac: float = 0.05,
                      n_shuffles: int = 1) -> float:
    """``Â``: the top-k agreement after shuffling ``b`` within each item's valid positions.

    Its expectation is the mean over items of ``k/n`` (the chance that a random position lands in
    the top k), e.g. 0.05 for n = 100. ``n_shuffles`` independent shuffles are averaged.
    """
    rng = _check_rng(rng)
    if int(n_shuffles) < 1:
        raise ValueError(f"n_shuffles must be >= 1, got {n_shuffles}")
    valid = valid_positions(a, b, mask)
    values = [agreement(a, shuffle_within_items(b, valid, rng), valid, frac) for _ in range(int(n_shuffles))]
    return float(np.mean(values))


# --------------------------------------------------------------------------------------------------
# xi
# --------------------------------------------------------------------------------------------------

def xi(checkpoint_attentions, reference_final_attention, performances, v: float, mask=None,
       frac: float = 0.05) -> float:
    """``ξ(v)``: the performance at the first checkpoint whose attention agrees with the reference more than ``v``.

    Parameters
    ----------
    checkpoint_attentions : sequence of K arrays (..., n), or one array (K, ..., n)
        Attention of the normally trained model at checkpoints 0..K-1, in training order, on a fixed
        evaluation batch.
    reference_final_attention : array (..., n)
        The reference model's final attention on the same batch.
    performances : array (K,)
        The performance (e.g. accuracy) at each checkpoint.
    v : float
        Agreement threshold; the comparison is strict, ``A(α_checkpoint, α_reference) > v``.
    mask : bool array broadcastable to (..., n), optional
    frac : float

    Returns
    -------
    float
        ``performances[j]`` for the first such checkpoint ``j``; NaN if none exceeds ``v``.
    """
    reference = _scores("reference_final_attention", reference_final_attention)
    attentions = [_scores(f"checkpoint_attentions[{j}]", x) for j, x in enumerate(checkpoint_attentions)]
    performances = np.asarray(performances, dtype=np.float64)
    if performances.shape != (len(attentions),):
        raise ValueError(f"performances must have shape (K,) = ({len(attentions)},) (one per checkpoint), "
                         f"got {performances.shape}")
    for j, att in enumerate(attentions):
        if att.shape != reference.shape:
            raise ValueError(f"checkpoint_attentions[{j}] has shape {att.shape}, the reference has {reference.shape}")
    v = float(v)
    for j, att in enumerate(attentions):
        score = agreement(att, reference, mask, frac)
        if score > v:
            return float(performances[j])
    return float("nan")


def xi_star(performances, higher_is_better: bool = True) -> float:
    """``ξ*``: the reference model's best performance over its checkpoints (NaNs ignored)."""
    performances = np.asarray(performances, dtype=np.float64).ravel()
    performances = performances[~np.isnan(performances)]
    if performances.size == 0:
        raise ValueError("performances must contain at least one non-NaN value")
    return float(performances.max() if higher_is_better else performances.min())


# --------------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------------

class BootstrapCI(NamedTuple):
    """A point estimate with its percentile-bootstrap interval."""

    mean: float     #: the mean of the values (pooled over groups)
    low: float      #: lower percentile (1 − level)/2
    high: float     #: upper percentile 1 − (1 − level)/2
    level: float    #: coverage, e.g. 0.95
    n: int          #: number of (non-NaN) values


def bootstrap_ci(values, rng: np.random.Generator, n_boot: int = 1000, level: float = 0.95,
                 groups=None) -> BootstrapCI:
    """Percentile-bootstrap confidence interval of the mean of ``values``.

    Without ``groups``, items are resampled with replacement. With ``groups`` (one label per value,
    e.g. the training seed), the resampling is two-stage: groups are drawn with replacement, then
    the items of every drawn group are resampled with replacement; the statistic is the pooled mean
    of all resampled items. NaN values (skipped items) are dropped first.

    Implementation: a group drawn ``m`` times contributes ``m`` independent item resamples of size
    ``n_g``, i.e. one multinomial resample of size ``m · n_g``; counts are drawn with
    ``rng.multinomial`` for all replicates at once.

    Parameters
    ----------
    values : real array (N,) (any shape is flattened)
    rng : numpy.random.Generator
    n_boot : int >= 1
    level : float in (0, 1)
    groups : array (N,) of hashable labels, optional

    Returns
    -------
    BootstrapCI(mean, low, high, level, n)
    """
    rng = _check_rng(rng)
    values = _scores("values", np.ravel(np.asarray(values)))
    n_boot = int(n_boot)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    level = float(level)
    if not (0.0 < level < 1.0):
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if not np.all(~np.isinf(values)):
        raise ValueError("values contains inf")
    keep = ~np.isnan(values)
    if groups is not None:
        groups = np.ravel(np.asarray(groups))
        if groups.shape != values.shape:
            raise ValueError(f"groups must have one label per value, shape {values.shape}, got {groups.shape}")
        groups = groups[keep]
    values = values[keep]
    n = values.size
    if n == 0:
        raise ValueError("values must contain at least one non-NaN value")
    mean = float(values.mean())
    if groups is None:
        boot = np.empty(n_boot)
        step = max(1, _CHUNK_ELEMENTS // n)
        uniform = np.full(n, 1.0 / n)
        for lo in range(0, n_boot, step):  # chunks of replicates bound the (replicates, n) count matrix
            counts = rng.multinomial(n, uniform, size=min(step, n_boot - lo))
            boot[lo:lo + counts.shape[0]] = counts @ values / n
    else:
        labels, inverse = np.unique(groups, return_inverse=True)
        G = labels.size
        times = rng.multinomial(G, np.full(G, 1.0 / G), size=n_boot)   # (n_boot, G): draws per group
        total = np.zeros(n_boot)
        size = np.zeros(n_boot)
        # A loop over groups (seeds: a handful), each vectorised over all replicates.
        for g in range(G):
            vals_g = values[inverse == g]
            n_g = vals_g.size
            counts = rng.multinomial(times[:, g] * n_g, np.full(n_g, 1.0 / n_g))   # (n_boot, n_g)
            total += counts @ vals_g
            size += times[:, g] * n_g
        boot = total / size
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return BootstrapCI(mean, float(low), float(high), level, int(n))
