"""Tests of the statistics over runs (analysis.stats) and of claims and their verdicts (analysis.claims)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as sps

from analysis import stats as S
from analysis.claims import (KINDS, VERDICTS, Claim, Criterion, at_least, at_most, check_claim, claim_from_dict,
                             mean_claim, rate_claim, within)
from miniattn.io import dumps_json

Z95 = 1.959963984540054

# --------------------------------------------------------------------------------------------------
# summarize
# --------------------------------------------------------------------------------------------------


@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=30))
def test_summarize_t_interval(values):
    s = S.summarize(values)
    x = np.asarray(values)
    assert s["n"] == len(values)
    assert math.isclose(s["mean"], x.mean(), rel_tol=1e-12, abs_tol=1e-9)
    assert math.isclose(s["std"], x.std(ddof=1), rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(s["sem"], s["std"] / math.sqrt(len(values)), rel_tol=1e-12, abs_tol=1e-12)
    assert s["ci_low"] <= s["mean"] <= s["ci_high"]
    half = sps.t.ppf(0.975, len(values) - 1) * s["sem"]
    assert math.isclose(s["ci_high"] - s["mean"], half, rel_tol=1e-9, abs_tol=1e-9)
    assert s["min"] <= s["median"] <= s["max"]


def test_summarize_single_value_and_bootstrap():
    s = S.summarize([2.0])
    assert s["mean"] == 2.0 and math.isnan(s["std"]) and math.isnan(s["ci_low"])
    vals = np.random.default_rng(1).standard_normal(40)
    b1 = S.summarize(vals, method="bootstrap", rng=np.random.default_rng(5))
    b2 = S.summarize(vals, method="bootstrap", rng=np.random.default_rng(5))
    assert b1 == b2
    assert b1["ci_low"] < b1["mean"] < b1["ci_high"]
    t = S.summarize(vals)
    # Bootstrap and t intervals of a normal sample agree to within a fraction of their width.
    assert abs(b1["ci_low"] - t["ci_low"]) < 0.3 * (t["ci_high"] - t["ci_low"])
    b3 = S.summarize(vals, method="bootstrap", rng=np.random.default_rng(6))
    assert b3["mean"] == b1["mean"] and (b3["ci_low"], b3["ci_high"]) != (b1["ci_low"], b1["ci_high"])
    # A constant sample: a degenerate interval, not an error.
    c = S.summarize([3.0, 3.0, 3.0], method="bootstrap", rng=np.random.default_rng(0))
    assert c["ci_low"] == c["ci_high"] == 3.0


@pytest.mark.parametrize("kwargs,exc", [
    (dict(values=[]), ValueError), (dict(values=[1.0, np.nan]), ValueError),
    (dict(values=[1.0, 2.0], confidence=1.5), ValueError), (dict(values=[1.0, 2.0], method="x"), ValueError),
    (dict(values=[1.0, 2.0], method="bootstrap"), TypeError),
    (dict(values=[1.0, 2.0], method="bootstrap", rng=np.random.default_rng(0), n_boot=10), ValueError),
    (dict(values=[[1.0, 2.0]]), ValueError),
])
def test_summarize_rejects_bad_input(kwargs, exc):
    with pytest.raises(exc):
        S.summarize(**kwargs)


def test_summarize_bounds_clip_the_interval():
    s = S.summarize([0.0, 1.0], bounds=(0.0, 1.0))
    assert s["ci_low"] == 0.0 and s["ci_high"] == 1.0 and s["mean"] == 0.5


# --------------------------------------------------------------------------------------------------
# Wilson interval, success rates
# --------------------------------------------------------------------------------------------------

@given(st.integers(1, 500), st.data())
def test_wilson_interval_properties(n, data):
    k = data.draw(st.integers(0, n))
    lo, hi = S.wilson_interval(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert (lo == 0.0) == (k == 0)
    assert (hi == 1.0) == (k == n)
    lo99, hi99 = S.wilson_interval(k, n, confidence=0.99)
    assert lo99 <= lo + 1e-12 and hi99 >= hi - 1e-12


def _textbook_wilson(k, n, z):
    p = k / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


@given(st.integers(1, 2000), st.data(), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_wilson_interval_is_the_textbook_formula(n, data, confidence):
    k = data.draw(st.integers(0, n))
    z = sps.norm.ppf(0.5 + confidence / 2)
    lo, hi = S.wilson_interval(k, n, confidence=confidence)
    tlo, thi = _textbook_wilson(k, n, z)
    assert abs(lo - tlo) <= 1e-12 and abs(hi - thi) <= 1e-12


def test_wilson_interval_known_value():
    # 20/20: lower bound n / (n + z^2) with z = 1.959964 -> 0.83887.
    lo, hi = S.wilson_interval(20, 20)
    assert math.isclose(lo, 20 / (20 + Z95**2), rel_tol=1e-9) and hi == 1.0
    lo, hi = S.wilson_interval(5, 10)
    assert math.isclose(lo + hi, 1.0, rel_tol=1e-12)


@pytest.mark.parametrize("k,n,exc", [(1, 0, ValueError), (3, 2, ValueError), (-1, 2, ValueError),
                                     (1.0, 2, TypeError), (True, 2, TypeError)])
def test_wilson_interval_rejects_bad_input(k, n, exc):
    with pytest.raises(exc):
        S.wilson_interval(k, n)


def test_success_summary():
    s = S.success_summary([True, False, True, True])
    assert s["k"] == 3 and s["n"] == 4 and s["rate"] == 0.75
    assert tuple(s["ci"]) == S.wilson_interval(3, 4)
    with pytest.raises(ValueError):
        S.success_summary([])


# --------------------------------------------------------------------------------------------------
# sample sizes that would decide
# --------------------------------------------------------------------------------------------------

def _t_excludes(mean, std, threshold, n):
    return sps.t.ppf(0.975, n - 1) * std / math.sqrt(n) < abs(mean - threshold)


@pytest.mark.parametrize("mean,std,threshold", [(1.0, 1.0, 0.0), (0.3, 1.0, 0.0), (5.0, 2.0, 4.5),
                                                (-0.2, 0.5, 0.0), (0.0, 1.0, 0.25)])
def test_n_to_decide_mean_is_the_smallest_n(mean, std, threshold):
    n = S.n_to_decide_mean(mean, std, threshold)
    assert n is not None and 2 <= n < 200
    assert _t_excludes(mean, std, threshold, n)
    if n > 2:
        assert not _t_excludes(mean, std, threshold, n - 1)


def test_n_to_decide_mean_special_cases():
    assert S.n_to_decide_mean(1.0, 0.0, 0.0) == 2
    assert S.n_to_decide_mean(1.0, 1.0, 1.0) is None
    assert S.n_to_decide_mean(1.0, math.nan, 0.0) is None
    assert S.n_to_decide_mean(0.0, 1.0, 1e-4) is None  # would need ~4e8 runs > MAX_N
    # Larger gaps and smaller spreads need fewer runs.
    assert S.n_to_decide_mean(0.5, 1.0, 0.0) <= S.n_to_decide_mean(0.3, 1.0, 0.0)
    assert S.n_to_decide_mean(0.3, 0.5, 0.0) <= S.n_to_decide_mean(0.3, 1.0, 0.0)


@pytest.mark.parametrize("gap", [0.1, 0.05])
def test_n_to_decide_mean_decides_beyond_200_runs(gap):
    n = S.n_to_decide_mean(gap, 1.0, 0.0)
    assert n is not None and n >= 200
    assert _t_excludes(gap, 1.0, 0.0, n)
    assert not _t_excludes(gap, 1.0, 0.0, n - 1)


@pytest.mark.parametrize("rate,threshold", [(1.0, 0.75), (0.55, 0.75), (0.9, 0.8), (0.1, 0.25), (0.0, 0.5)])
def test_n_to_decide_rate_is_the_smallest_n(rate, threshold):
    n = S.n_to_decide_rate(rate, threshold)
    assert n is not None

    def excludes(m):
        lo, hi = _textbook_wilson(rate * m, m, Z95)
        return lo > threshold or hi < threshold

    assert excludes(n)
    assert n == 1 or not excludes(n - 1)
    assert S.n_to_decide_rate(0.5, 0.5) is None


# --------------------------------------------------------------------------------------------------
# criteria and verdicts
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("interval,verdict", [
    ((0.2, 0.4), "holds"), ((0.0, 1.0), "holds"),        # inside (the boundary counts as inside)
    ((-0.5, -0.1), "fails"), ((1.2, 3.0), "fails"),       # disjoint
    ((-0.1, 0.5), "undecided"), ((0.5, 1.5), "undecided"), ((-1.0, 2.0), "undecided"),  # straddling
    ((math.nan, math.nan), "undecided"), ((0.5, math.nan), "undecided"), ((np.float64("nan"), 0.5), "undecided"),
])
def test_criterion_verdicts(interval, verdict):
    crit = Criterion("in [0, 1]", 0.0, 1.0)
    assert crit.verdict(*interval) == verdict
    assert verdict in VERDICTS


def test_criterion_helpers_and_validation():
    assert at_least(0.8).verdict(0.85, 0.99) == "holds" and at_least(0.8).high == math.inf
    assert at_most(0.75).verdict(0.1, 0.7) == "holds" and at_most(0.75).low == -math.inf
    w = within(2.0, 0.1, relative=True)
    assert math.isclose(w.low, 1.8) and math.isclose(w.high, 2.2)
    w = within(-1.0, 0.5)
    assert (w.low, w.high) == (-1.5, -0.5)
    assert at_most(0.75).threshold_near(0.1) == 0.75
    assert within(0.0, 1.0).threshold_near(0.9) == 1.0 and within(0.0, 1.0).threshold_near(-0.9) == -1.0
    with pytest.raises(ValueError, match="low must be <= high"):
        Criterion("bad", 1.0, 0.0)


def test_claim_verdicts_use_the_interval_not_the_point():
    crit = at_least(0.5)
    assert Claim("s", None, 0.9, (0.6, 0.95), 10, crit).verdict == "holds"
    assert Claim("s", None, 0.9, (0.3, 0.95), 10, crit).verdict == "undecided"
    assert Claim("s", None, 0.2, (0.1, 0.3), 10, crit).verdict == "fails"
    assert Claim("s", None, None, None, 0, crit).verdict == "undecided"
    assert Claim("s", None, math.nan, None, 0, crit).verdict == "undecided"
    # No interval: the value is its own interval (an exact check).
    assert Claim("s", None, 0.7, None, None, crit).verdict == "holds"
    with pytest.raises(ValueError, match="kind"):
        Claim("s", None, 0.7, None, None, crit, kind="opinion")
    assert set(KINDS) == {"reproduction", "check", "beyond"}


def test_rate_claim_11_of_20_at_most_075_holds():
    c = rate_claim("often fail", "frequently", [True] * 11 + [False] * 9, at_most(0.75))
    assert c.value == 0.55 and c.n == 20 and c.verdict == "holds" and c.decided
    assert c.interval == S.wilson_interval(11, 20) and c.interval[1] < 0.75
    assert c.n_to_decide is None and c.kind == "reproduction" and c.fmt == ".2f"


def test_rate_claim_2_of_2_is_undecided_with_the_n_that_would_decide():
    c = rate_claim("often fail", "frequently", [True, True], at_most(0.75))
    assert c.value == 1.0 and c.verdict == "undecided" and not c.decided
    n = c.n_to_decide
    assert isinstance(n, int) and n > 2
    # At the same rate (n/n), n runs exclude 0.75 and n - 1 runs do not.
    assert S.wilson_interval(n, n)[0] > 0.75
    assert S.wilson_interval(n - 1, n - 1)[0] <= 0.75
    assert n == math.floor(3 * Z95**2) + 1  # n / (n + z^2) > 3/4  <=>  n > 3 z^2


def test_mean_claim_with_one_value_is_undecided():
    c = mean_claim("m", 1.0, [1.0], within(1.0, 0.5))
    assert c.verdict == "undecided" and c.n == 1 and c.value == 1.0 and c.n_to_decide is None
    empty = mean_claim("m", 1.0, [math.nan, None], within(1.0, 0.5))
    assert empty.verdict == "undecided" and empty.value is None and empty.n == 0


def test_mean_claim_verdicts_and_n_to_decide():
    crit = within(1.0, 0.05)
    held = mean_claim("m", 1.0, [0.99, 1.0, 1.01, 1.0], crit)
    assert held.verdict == "holds" and held.interval[0] >= 0.95
    failed = mean_claim("m", 1.0, [2.0, 2.1, 1.9], crit)
    assert failed.verdict == "fails"
    undecided = mean_claim("m", 1.0, [0.9, 1.1, 0.95], crit)
    assert undecided.verdict == "undecided"
    s = S.summarize([0.9, 1.1, 0.95])
    assert undecided.n_to_decide == S.n_to_decide_mean(s["mean"], s["std"], crit.threshold_near(s["mean"]))
    # Non-finite values are dropped, not averaged.
    assert mean_claim("m", 1.0, [0.99, 1.01, math.inf, None], crit).n == 2


def test_check_claim_is_an_exact_check():
    c = check_claim("closed form = GD", 1e-9, at_most(1e-6, "float64 round-off"), paper="exact")
    assert c.kind == "check" and c.interval is None and c.n is None and c.verdict == "holds"
    assert c.paper == "exact" and isinstance(c.value, float)
    assert check_claim("x", 1.0, at_most(0.5)).verdict == "fails"
    assert check_claim("x", 1.0, at_most(0.5), kind="beyond").kind == "beyond"


def _round_trip(claim: Claim) -> Claim:
    return claim_from_dict(json.loads(dumps_json(claim.to_dict())))


def test_claim_round_trip_through_json_keeps_verdicts_and_infinite_bounds():
    claims = [
        rate_claim("holds", "p", [True] * 11 + [False] * 9, at_most(0.75, "'frequently'")),
        rate_claim("undecided", "p", [True, True], at_most(0.75)),
        rate_claim("fails", "p", [True] * 20, at_most(0.75), note="a note", source="e4/summary.json"),
        mean_claim("mean", 1.0, [0.99, 1.0, 1.01, 1.0], within(1.0, 0.05)),
        check_claim("exact", 0.5, at_least(0.1), fmt=".4g"),
    ]
    for c in claims:
        back = _round_trip(c)
        assert back.verdict == c.verdict, c.statement
        assert back.criterion == c.criterion
        assert back.to_dict() == c.to_dict()
    assert _round_trip(claims[0]).criterion.low == -math.inf
    assert _round_trip(claims[4]).criterion.high == math.inf
    assert _round_trip(claims[1]).n_to_decide == claims[1].n_to_decide
    assert [_round_trip(c).verdict for c in claims] == ["holds", "undecided", "fails", "holds", "holds"]
    # The stored verdict is not trusted: it is recomputed from interval and criterion.
    d = claims[2].to_dict()
    d["verdict"] = "holds"
    assert claim_from_dict(d).verdict == "fails"


def test_one_value_mean_claim_round_trips():
    c = mean_claim("m", 1.0, [1.0], within(1.0, 0.5))
    assert _round_trip(c).verdict == "undecided"
