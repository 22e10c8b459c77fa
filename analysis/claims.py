"""Claims with a criterion written before the runs, and an honest verdict.

A :class:`Claim` states what the paper says (or what our own derivation implies), our measured value
with its interval and sample size, and a named :class:`Criterion`: the region of values in which the
claim holds. The verdict compares the *interval*, not the point estimate, with that region::

    holds      the whole interval lies inside the region
    fails      the whole interval lies outside it
    undecided  the interval straddles a boundary: the sample cannot decide the claim

so two seeds that both succeed never refute "frequently fail", and a verdict changes only when
the evidence does. An undecided claim records the sample size that would decide it at the observed
effect (:func:`analysis.stats.n_to_decide_rate`, :func:`analysis.stats.n_to_decide_mean`).

Kinds: ``"reproduction"`` (a claim of the paper), ``"check"`` (our own derivation or implementation
against an exact reference, e.g. a closed form against gradient descent), ``"beyond"`` (a
prediction of the theory that the paper does not test).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from analysis import stats

__all__ = ["Criterion", "at_least", "at_most", "within", "Claim", "VERDICTS", "KINDS", "rate_claim",
           "mean_claim", "check_claim", "claim_from_dict"]

VERDICTS = ("holds", "fails", "undecided")
KINDS = ("reproduction", "check", "beyond")


@dataclass(frozen=True)
class Criterion:
    """The claim holds for values in ``[low, high]`` (either end may be infinite).

    Attributes
    ----------
    name : str
        Short identifier, e.g. ``"rate <= 0.75"``.
    low, high : float
        The region in which the claim holds.
    why : str
        How the paper's words were read as this region (e.g. "'frequently fail' = at least a
        quarter of the seeds fail").
    """

    name: str
    low: float
    high: float
    why: str = ""

    def __post_init__(self):
        if not (self.low <= self.high):
            raise ValueError(f"criterion {self.name!r}: low must be <= high, got [{self.low}, {self.high}]")

    def verdict(self, low: float, high: float) -> str:
        """``holds`` / ``fails`` / ``undecided`` for the interval ``[low, high]`` of the value."""
        if any(isinstance(v, float) and math.isnan(v) for v in (low, high)):
            return "undecided"
        if self.low <= low and high <= self.high:
            return "holds"
        if high < self.low or low > self.high:
            return "fails"
        return "undecided"

    def threshold_near(self, value: float) -> float:
        """The boundary of the region nearest to ``value`` (the one a sample must clear)."""
        finite = [b for b in (self.low, self.high) if math.isfinite(b)]
        return min(finite, key=lambda b: abs(b - value))


def at_least(threshold: float, why: str = "") -> Criterion:
    return Criterion(f">= {threshold:g}", float(threshold), math.inf, why)


def at_most(threshold: float, why: str = "") -> Criterion:
    return Criterion(f"<= {threshold:g}", -math.inf, float(threshold), why)


def within(target: float, tolerance: float, why: str = "", *, relative: bool = False) -> Criterion:
    """``|value − target| <= tolerance`` (times ``|target|`` when ``relative``)."""
    tol = tolerance * abs(target) if relative else tolerance
    name = f"within {tolerance:.0%} of {target:.4g}" if relative else f"within ±{tolerance:g} of {target:.4g}"
    return Criterion(name, float(target - tol), float(target + tol), why)


@dataclass
class Claim:
    """One row of an experiment's evidence.

    Attributes
    ----------
    statement : str
        What is claimed, in words (the paper's claim, or the property checked).
    paper : str or float or None
        The paper's own number or words.
    value : float or None
        Our estimate.
    interval : (float, float) or None
        Its 95% interval; None for an exact, deterministic check (the value is its own interval).
    n : int or None
        Sample size (seeds, trials, items) behind the interval.
    criterion : Criterion
    kind : {"reproduction", "check", "beyond"}
    fmt : str
        Format of value and interval in the report.
    note : str
    source : str
        The result file the numbers come from (relative to the results root).
    n_to_decide : int or None
        For an undecided claim, the sample size at which the observed effect would decide it.
    """

    statement: str
    paper: Any
    value: float | None
    interval: tuple[float, float] | None
    n: int | None
    criterion: Criterion
    kind: str = "reproduction"
    fmt: str = ".3g"
    note: str = ""
    source: str = ""
    n_to_decide: int | None = None
    verdict: str = field(init=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            self.verdict = "undecided"
        else:
            lo, hi = self.interval if self.interval is not None else (self.value, self.value)
            self.verdict = self.criterion.verdict(float(lo), float(hi))

    @property
    def decided(self) -> bool:
        return self.verdict != "undecided"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["criterion"] = asdict(self.criterion)
        d["interval"] = list(self.interval) if self.interval is not None else None
        return d


def claim_from_dict(data: Mapping[str, Any]) -> Claim:
    """The :class:`Claim` stored by :meth:`Claim.to_dict` (the verdict is recomputed, not trusted)."""
    data = dict(data)
    data.pop("verdict", None)
    crit = data.pop("criterion")
    low = -math.inf if crit["low"] is None else float(crit["low"])
    high = math.inf if crit["high"] is None else float(crit["high"])
    crit = Criterion(crit["name"], low, high, crit.get("why", ""))
    interval = data.pop("interval", None)
    if interval is not None:
        interval = tuple(math.nan if v is None else float(v) for v in interval)
    return Claim(criterion=crit, interval=interval, **data)


def rate_claim(statement: str, paper: Any, successes: Sequence[bool], criterion: Criterion, **kw) -> Claim:
    """A claim about a success rate: Wilson interval, and the n that would decide it if undecided."""
    s = stats.success_summary(successes)
    claim = Claim(statement, paper, s["rate"], tuple(s["ci"]), s["n"], criterion, fmt=kw.pop("fmt", ".2f"), **kw)
    if not claim.decided:
        claim.n_to_decide = stats.n_to_decide_rate(s["rate"], criterion.threshold_near(s["rate"]))
    return claim


def mean_claim(statement: str, paper: Any, values: Sequence[float], criterion: Criterion, *,
               bounds: tuple[float, float] | None = None, **kw) -> Claim:
    """A claim about a mean over runs: t-interval, and the n that would decide it if undecided."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return Claim(statement, paper, None, None, 0, criterion, **kw)
    s = stats.summarize(finite, bounds=bounds)
    interval = None if s["n"] < 2 else (s["ci_low"], s["ci_high"])
    if interval is None:
        interval = (math.nan, math.nan)   # one run: no interval, so no verdict
    claim = Claim(statement, paper, s["mean"], interval, s["n"], criterion, **kw)
    if not claim.decided and s["n"] >= 2:
        claim.n_to_decide = stats.n_to_decide_mean(s["mean"], s["std"], criterion.threshold_near(s["mean"]))
    return claim


def check_claim(statement: str, value: float, criterion: Criterion, **kw) -> Claim:
    """An exact, deterministic check of our own derivation (no interval: the value decides)."""
    kw.setdefault("kind", "check")
    return Claim(statement, kw.pop("paper", None), float(value), None, None, criterion, **kw)
