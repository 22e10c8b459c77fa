"""Statistics over independent runs (seeds): means with intervals, success rates, sample sizes.

* :func:`summarize` — mean, spread and a 95% interval of the mean (Student t, or a bootstrap by
  :func:`scipy.stats.bootstrap`).
* :func:`wilson_interval` / :func:`success_summary` — a success rate with its Wilson score interval
  (:meth:`scipy.stats.binomtest` ``.proportion_ci(method="wilson")``), which stays inside [0, 1]
  and is not degenerate at 0/n or n/n.
* :func:`n_to_decide_rate` / :func:`n_to_decide_mean` — how many runs an interval would need, at
  the observed rate or mean and spread, to lie wholly on one side of a threshold.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import stats

__all__ = ["summarize", "wilson_interval", "success_summary", "n_to_decide_rate", "n_to_decide_mean"]

#: Sample sizes are searched up to this bound; beyond it a claim is "not decidable at this effect".
MAX_N = 100_000


def _confidence(confidence) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (float, int)) or not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    return float(confidence)


def summarize(values: Iterable[float], *, confidence: float = 0.95, method: str = "t",
              rng: np.random.Generator | None = None, n_boot: int = 10_000,
              bounds: tuple[float, float] | None = None) -> dict[str, float | int]:
    """Mean, spread and a confidence interval of the mean over independent runs.

    Parameters
    ----------
    values : 1-D array-like of float, length n >= 1, finite
    confidence : float in (0, 1)
    method : {"t", "bootstrap"}
        ``"t"``: mean ± t_{n−1,(1+c)/2} · s/√n. ``"bootstrap"``: percentile interval of ``n_boot``
        resampled means (:func:`scipy.stats.bootstrap`; needs ``rng``).
    bounds : (low, high), optional
        The range the quantity cannot leave (e.g. (0, 1) for a rate): the interval is clipped to it.

    Returns
    -------
    dict with ``n``, ``mean``, ``std`` (ddof = 1), ``sem``, ``ci_low``, ``ci_high``, ``median``,
    ``min``, ``max``. With n = 1 the spread and interval are NaN (undefined).
    """
    x = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"values must be a non-empty 1-D sequence, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("values must be finite (no NaN or inf)")
    confidence = _confidence(confidence)
    if method not in ("t", "bootstrap"):
        raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}")
    n = x.size
    mean = float(x.mean())
    out = {"n": int(n), "mean": mean, "median": float(np.median(x)), "min": float(x.min()),
           "max": float(x.max()), "std": math.nan, "sem": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    if n < 2:
        return out
    std = float(x.std(ddof=1))
    sem = std / math.sqrt(n)
    out.update(std=std, sem=sem)
    if method == "t":
        half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * sem
        out.update(ci_low=mean - half, ci_high=mean + half)
    else:
        if not isinstance(rng, np.random.Generator):
            raise TypeError("method='bootstrap' needs rng, a numpy.random.Generator")
        if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 100:
            raise ValueError(f"n_boot must be an integer >= 100, got {n_boot!r}")
        if std == 0:
            out.update(ci_low=mean, ci_high=mean)
        else:
            res = stats.bootstrap((x,), np.mean, n_resamples=int(n_boot), confidence_level=confidence,
                                  method="percentile", random_state=rng, vectorized=True)
            out.update(ci_low=float(res.confidence_interval.low), ci_high=float(res.confidence_interval.high))
    if bounds is not None:
        out.update(ci_low=max(out["ci_low"], bounds[0]), ci_high=min(out["ci_high"], bounds[1]))
    return out


def wilson_interval(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a success rate ``successes / n``.

    ``(p̂ + z²/2n ± z √(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)``, ``z`` the normal quantile.

    Raises
    ------
    TypeError, ValueError
        ``successes`` or ``n`` not integers, ``n`` < 1, ``successes`` outside ``[0, n]``, or
        ``confidence`` outside (0, 1).
    """
    for name, v in (("successes", successes), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n] = [0, {n}], got {successes}")
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=_confidence(confidence),
                                                               method="wilson")
    # Exactly 0 at 0/n and exactly 1 at n/n (SciPy's value carries rounding error there).
    return (0.0 if successes == 0 else float(ci.low), 1.0 if successes == n else float(ci.high))


def success_summary(successes: Sequence[bool], *, confidence: float = 0.95) -> dict[str, Any]:
    """``{"n", "k", "rate", "ci": [low, high]}`` of a list of booleans (Wilson interval)."""
    flags = [bool(x) for x in successes]
    if not flags:
        raise ValueError("successes must not be empty")
    k, n = sum(flags), len(flags)
    lo, hi = wilson_interval(k, n, confidence=confidence)
    return {"n": n, "k": k, "rate": k / n, "ci": [lo, hi]}


def _wilson_at_rate(p: float, n: int, z: float) -> tuple[float, float]:
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def n_to_decide_rate(rate: float, threshold: float, *, confidence: float = 0.95) -> int | None:
    """The smallest n whose Wilson interval at the observed ``rate`` excludes ``threshold``.

    None when ``rate == threshold`` (no sample size decides it) or when n would exceed ``MAX_N``.
    """
    if rate == threshold:
        return None
    z = float(stats.norm.ppf(0.5 + _confidence(confidence) / 2))
    lo, hi = 1, MAX_N
    if not _excludes(_wilson_at_rate(rate, hi, z), threshold):
        return None
    while lo < hi:  # the interval shrinks monotonically with n at a fixed rate
        mid = (lo + hi) // 2
        if _excludes(_wilson_at_rate(rate, mid, z), threshold):
            hi = mid
        else:
            lo = mid + 1
    return lo


def n_to_decide_mean(mean: float, std: float, threshold: float, *, confidence: float = 0.95) -> int | None:
    """The smallest n whose t-interval ``mean ± t_{n−1} s/√n`` excludes ``threshold``.

    None when ``mean == threshold`` or n would exceed ``MAX_N``; 2 when ``std`` is 0.
    """
    gap = abs(mean - threshold)
    if gap == 0 or not math.isfinite(std):
        return None
    if std == 0:
        return 2
    c = _confidence(confidence)
    for n in range(2, 200):
        if float(stats.t.ppf(0.5 + c / 2, df=n - 1)) * std / math.sqrt(n) < gap:
            return n
    n = max(200, math.ceil((float(stats.norm.ppf(0.5 + c / 2)) * std / gap) ** 2))
    while n <= MAX_N and float(stats.t.ppf(0.5 + c / 2, df=n - 1)) * std / math.sqrt(n) >= gap:
        n += 1
    return n if n <= MAX_N else None


def _excludes(interval: tuple[float, float], threshold: float) -> bool:
    return interval[0] > threshold or interval[1] < threshold
