"""Tests for analysis.agreement: top-k match, Kendall τ, Â, ξ and the bootstrap."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import kendalltau

from analysis.agreement import (agreement, bootstrap_ci, kendall_tau, kendall_tau_items, shuffle_within_items,
                                shuffled_baseline, top_k_match, top_k_size, valid_positions, xi, xi_star)


def naive_top_k_match(a, b, valid, frac):
    """Item-by-item reference written straight from the definition in analysis/agreement.py's docstring."""
    lead = a.shape[:-1]
    a2, b2, v2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, a.shape[-1]), valid.reshape(-1, a.shape[-1])
    out = []
    for ai, bi, vi in zip(a2, b2, v2):
        idx = np.flatnonzero(vi)
        if idx.size == 0:
            out.append(np.nan)
            continue
        best = idx[0]
        for j in idx:                      # first index wins ties: only a strictly larger value moves it
            if ai[j] > ai[best]:
                best = j
        k = math.ceil(round(frac * idx.size, 9))
        above = sum(1 for j in idx if bi[j] > bi[best])
        out.append(1.0 if above < k else 0.0)
    return np.array(out).reshape(lead)


@st.composite
def scored_items(draw, max_items=6, max_n=45):
    """Integer-valued scores (many ties), a random mask and some NaNs; shapes (N, n) or (B, T, S)."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    ndim = draw(st.sampled_from([2, 3]))
    lead = tuple(draw(st.integers(1, max_items)) for _ in range(ndim - 1))
    n = draw(st.integers(1, max_n))
    levels = draw(st.integers(1, 6))
    a = rng.integers(0, levels, size=lead + (n,)).astype(float)
    b = rng.integers(0, levels, size=lead + (n,)).astype(float)
    mask = rng.random(lead + (n,)) < draw(st.floats(0.0, 1.0))
    a[rng.random(a.shape) < 0.1] = np.nan
    b[rng.random(b.shape) < 0.1] = np.nan
    return a, b, mask


# ------------------------------------------------------------------------------------------------
# top-k match: hand-made cases
# ------------------------------------------------------------------------------------------------

def test_k_is_one_up_to_n_20_and_two_at_n_40():
    assert top_k_size(np.arange(1, 21)).tolist() == [1] * 20
    assert int(top_k_size(21)) == 2
    assert int(top_k_size(40)) == 2
    assert int(top_k_size(60)) == 3      # 0.05 * 60 is 3.0000000000000004 in binary floating point
    assert int(top_k_size(100)) == 5


def test_top1_for_short_items():
    # n = 5 -> k = 1: b's top must be exactly a's top.
    a = np.array([[0.1, 0.9, 0.3, 0.2, 0.0],
                  [0.1, 0.9, 0.3, 0.2, 0.0]])
    b = np.array([[5.0, 7.0, 1.0, 0.0, 2.0],     # b's max is at a's argmax (1) -> match
                  [8.0, 7.0, 1.0, 0.0, 2.0]])    # one b value above b[1] -> no match
    np.testing.assert_array_equal(top_k_match(a, b), [1.0, 0.0])


def test_n40_gives_k2():
    a = np.zeros((3, 40))
    a[:, 10] = 1.0                               # a ranks position 10 first
    b = np.arange(40, dtype=float)[None].repeat(3, axis=0)
    b[0, 10] = 100.0                             # rank 1 in b
    b[1, 10] = 38.5                              # only position 39 above it -> rank 2 -> still top-2
    b[2, 10] = 37.5                              # positions 38, 39 above it -> rank 3 -> outside top-2
    np.testing.assert_array_equal(top_k_match(a, b), [1.0, 1.0, 0.0])


def test_ties_in_a_take_the_first_index_and_ties_in_b_favour_the_match():
    a = np.array([[1.0, 3.0, 3.0, 0.0]])         # tie at 1 and 2: i* = 1
    b_first = np.array([[0.0, 5.0, 1.0, 0.0]])   # b's top at 1
    b_second = np.array([[0.0, 1.0, 5.0, 0.0]])  # b's top at 2
    assert top_k_match(a, b_first)[0] == 1.0
    assert top_k_match(a, b_second)[0] == 0.0
    b_tied = np.array([[0.0, 5.0, 5.0, 0.0]])    # b[i*] tied with another: strict count is 0 -> match
    assert top_k_match(a, b_tied)[0] == 1.0
    assert top_k_match(a, np.full((1, 4), 2.0))[0] == 1.0


def test_perfect_and_reversed_ranking():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(7, 5, 33))
    assert agreement(a, a) == 1.0
    assert agreement(a, 3.0 * a + 1.0) == 1.0     # any increasing transform of b
    assert agreement(a, -a) == 0.0                 # a's top is b's bottom


def test_all_nan_and_fully_masked_items_are_skipped():
    a = np.array([[0.0, 1.0, 2.0],
                  [np.nan, np.nan, np.nan],
                  [0.0, 1.0, 2.0],
                  [2.0, 1.0, 0.0]])
    b = np.array([[0.0, 1.0, 2.0],
                  [0.0, 1.0, 2.0],
                  [np.nan, np.nan, np.nan],
                  [0.0, 1.0, 2.0]])
    match = top_k_match(a, b)
    np.testing.assert_array_equal(match[[0, 3]], [1.0, 0.0])
    assert np.isnan(match[1]) and np.isnan(match[2])
    assert agreement(a, b) == 0.5                  # mean over the two items left
    mask = np.array([True, True, True, False])[:, None] & np.ones((1, 3), bool)
    assert agreement(a, b, mask) == 1.0
    assert np.isnan(agreement(a, b, np.zeros((4, 3), bool)))


def test_nan_and_mask_at_single_positions_are_invalid():
    a = np.array([[5.0, 1.0, 2.0, 0.0]])
    b = np.array([[0.0, 1.0, 2.0, 0.0]])
    assert top_k_match(a, b)[0] == 0.0
    # Masking position 0 (or making a NaN there) moves a's top to position 2, b's top.
    assert top_k_match(a, b, np.array([[False, True, True, True]]))[0] == 1.0
    a_nan = a.copy()
    a_nan[0, 0] = np.nan
    assert top_k_match(a_nan, b)[0] == 1.0
    # An invalid b value above b[i*] does not count.
    b_big = np.array([[0.0, 1.0, 2.0, 9.0]])
    a2 = np.array([[0.0, 1.0, 3.0, 0.0]])
    assert top_k_match(a2, b_big)[0] == 0.0
    assert top_k_match(a2, b_big, np.array([[True, True, True, False]]))[0] == 1.0


def test_mask_broadcasts_from_source_and_target_masks():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2, 3, 4, 6))
    source_mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], bool)
    target_mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]], bool)
    full = source_mask[:, None, :] & target_mask[:, :, None]
    np.testing.assert_array_equal(top_k_match(a, b, source_mask[:, None, :]),
                                  top_k_match(a, b, source_mask[:, None, :] & np.ones((3, 4, 1), bool)))
    match = top_k_match(a, b, full)
    assert np.isnan(match[~target_mask]).all() and not np.isnan(match[target_mask]).any()
    assert (match[2][target_mask[2]] == 1.0).all()   # one valid position: always a match


def test_minus_inf_is_an_ordered_value():
    a = np.array([[-np.inf, -np.inf, -np.inf]])
    b = np.array([[3.0, 1.0, 2.0]])
    assert top_k_match(a, b)[0] == 1.0            # all tied at -inf: i* = 0, b's top
    a = np.array([[-np.inf, -1.0, -np.inf]])
    assert top_k_match(a, b)[0] == 0.0


@given(scored_items(), st.sampled_from([0.05, 0.1, 0.25, 0.5, 1.0]))
def test_vectorised_top_k_matches_the_definition(items, frac):
    a, b, mask = items
    valid = valid_positions(a, b, mask)
    np.testing.assert_array_equal(top_k_match(a, b, mask, frac), naive_top_k_match(a, b, valid, frac))


@given(st.integers(0, 2**32 - 1), st.integers(1, 60))
def test_joint_permutation_of_positions_changes_nothing(seed, n):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(2, 4, n))               # continuous: no ties in a
    mask = rng.random((4, n)) < 0.7
    perm = rng.permutation(n)
    np.testing.assert_array_equal(top_k_match(a, b, mask), top_k_match(a[:, perm], b[:, perm], mask[:, perm]))
    np.testing.assert_allclose(kendall_tau_items(a, b, mask),
                               kendall_tau_items(a[:, perm], b[:, perm], mask[:, perm]), rtol=1e-12)


def test_inputs_are_not_mutated_and_bad_input_is_rejected():
    a = np.array([[1.0, np.nan, 2.0]])
    b = np.array([[0.0, 1.0, np.nan]])
    a0, b0 = a.copy(), b.copy()
    top_k_match(a, b)
    kendall_tau_items(a, b)
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)
    with pytest.raises(ValueError, match="same shape"):
        top_k_match(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="frac"):
        top_k_match(a, b, frac=0.0)
    with pytest.raises(ValueError, match="frac"):
        top_k_match(a, b, frac=1.5)
    with pytest.raises(TypeError, match="mask"):
        top_k_match(a, b, mask=np.ones((1, 3)))
    with pytest.raises(ValueError, match="mask"):
        top_k_match(a, b, mask=np.ones((2, 2), bool))
    with pytest.raises(TypeError, match="a must be"):
        top_k_match(np.array([["x", "y", "z"]]), b)
    with pytest.raises(ValueError, match="a must have"):
        top_k_match(np.float64(1.0), np.float64(1.0))


# ------------------------------------------------------------------------------------------------
# Kendall tau
# ------------------------------------------------------------------------------------------------

def test_kendall_tau_is_plus_minus_one_on_monotone_pairs():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(6, 25))
    np.testing.assert_allclose(kendall_tau_items(a, np.exp(a)), 1.0)
    np.testing.assert_allclose(kendall_tau_items(a, -a ** 3), -1.0)
    assert kendall_tau(a, 2 * a) == pytest.approx(1.0)


def test_kendall_tau_undefined_items_are_skipped():
    a = np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0], [1.0, 2.0, 3.0]])
    b = np.array([[1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    tau = kendall_tau_items(a, b, np.array([[1, 1, 1], [1, 1, 1], [1, 0, 0]], bool))
    assert tau[0] == pytest.approx(1.0 / 3.0)      # 2 concordant, 1 discordant of 3 pairs
    assert np.isnan(tau[1]) and np.isnan(tau[2])    # constant a; a single valid position
    assert kendall_tau(a, b) == pytest.approx(np.mean([1.0 / 3.0, 1.0]))


@given(scored_items(max_items=4, max_n=30))
def test_kendall_tau_matches_scipy_tau_b(items):
    a, b, mask = items
    valid = valid_positions(a, b, mask)
    tau = kendall_tau_items(a, b, mask).ravel()
    a2, b2, v2 = (x.reshape(-1, a.shape[-1]) for x in (a, b, valid))
    for t, ai, bi, vi in zip(tau, a2, b2, v2):
        x, y = ai[vi], bi[vi]
        if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
            assert np.isnan(t)
        else:
            assert t == pytest.approx(kendalltau(x, y).statistic, rel=1e-12, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# Shuffled baseline
# ------------------------------------------------------------------------------------------------

@given(scored_items(), st.integers(0, 2**32 - 1))
def test_shuffle_permutes_valid_values_within_items(items, seed):
    a, b, mask = items
    valid = valid_positions(a, b, mask)
    shuffled = shuffle_within_items(b, valid, np.random.default_rng(seed))
    assert np.isnan(shuffled[~valid]).all()
    assert not np.isnan(shuffled[valid]).any()
    b2, s2, v2 = (x.reshape(-1, b.shape[-1]) for x in (b, shuffled, valid))
    for bi, si, vi in zip(b2, s2, v2):
        np.testing.assert_array_equal(np.sort(bi[vi]), np.sort(si[vi]))


def test_shuffled_baseline_is_k_over_n_on_random_data():
    rng = np.random.default_rng(np.random.SeedSequence(4))
    a = rng.normal(size=(4000, 100))               # n = 100 -> k = 5 -> expected 0.05
    b = a + 0.1 * rng.normal(size=a.shape)          # strongly agreeing, so the shuffle is what matters
    assert agreement(a, b) > 0.9
    values = top_k_match(a, shuffle_within_items(b, valid_positions(a, b), rng))
    ci = bootstrap_ci(values, rng, n_boot=500, level=0.99)
    assert ci.low < 0.05 < ci.high
    assert abs(shuffled_baseline(a, b, None, rng) - 0.05) < 0.02


def test_shuffled_baseline_with_variable_lengths():
    rng = np.random.default_rng(np.random.SeedSequence(5))
    lengths = rng.integers(10, 60, size=3000)
    mask = np.arange(60)[None, :] < lengths[:, None]
    a, b = rng.normal(size=(2, 3000, 60))
    expected = np.mean(top_k_size(lengths) / lengths)
    estimate = shuffled_baseline(a, b, mask, rng, n_shuffles=3)
    assert abs(estimate - expected) < 4 * np.sqrt(expected / (3 * 3000))


def test_shuffled_baseline_needs_a_generator():
    with pytest.raises(TypeError, match="rng"):
        shuffled_baseline(np.zeros((1, 3)), np.zeros((1, 3)), None, rng=0)


# ------------------------------------------------------------------------------------------------
# xi
# ------------------------------------------------------------------------------------------------

def test_xi_on_a_made_up_checkpoint_sequence():
    rng = np.random.default_rng(6)
    reference = rng.normal(size=(40, 10))
    noise = rng.normal(size=(40, 10))
    # Checkpoints move from noise to the reference: agreement grows from ~0.1 to 1.
    checkpoints = [(1 - w) * noise + w * reference for w in (0.0, 0.3, 0.6, 1.0)]
    agreements = [agreement(c, reference) for c in checkpoints]
    performances = np.array([0.2, 0.5, 0.7, 0.9])
    assert agreements[-1] == 1.0 and agreements[0] < 0.5
    first = next(j for j, x in enumerate(agreements) if x > 0.5)
    assert xi(checkpoints, reference, performances, 0.5) == performances[first]
    assert xi(np.stack(checkpoints), reference, performances, 0.5) == performances[first]
    assert xi(checkpoints, reference, performances, agreements[0] - 1e-9) == 0.2
    assert np.isnan(xi(checkpoints, reference, performances, 1.0))   # strict: never more than 1
    assert xi_star(performances) == 0.9
    assert xi_star([3.0, np.nan, 1.0], higher_is_better=False) == 1.0
    with pytest.raises(ValueError, match="performances"):
        xi(checkpoints, reference, performances[:3], 0.5)
    with pytest.raises(ValueError, match="checkpoint_attentions"):
        xi([reference[:, :5]], reference, [0.1], 0.5)


# ------------------------------------------------------------------------------------------------
# Bootstrap
# ------------------------------------------------------------------------------------------------

@given(st.integers(0, 2**32 - 1), st.integers(2, 300))
def test_bootstrap_ci_covers_the_mean(seed, n):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=n)
    ci = bootstrap_ci(values, rng, n_boot=200)
    assert ci.low <= ci.mean <= ci.high
    assert ci.mean == pytest.approx(values.mean())
    groups = rng.integers(0, 4, size=n)
    ci_g = bootstrap_ci(values, rng, n_boot=200, groups=groups)
    assert ci_g.low <= ci_g.mean <= ci_g.high


def test_bootstrap_ci_shrinks_with_n_like_one_over_sqrt_n():
    rng = np.random.default_rng(np.random.SeedSequence(7))
    widths = []
    for n in (100, 1600):
        ci = bootstrap_ci(rng.normal(size=n), rng, n_boot=2000)
        widths.append(ci.high - ci.low)
    assert 2.5 < widths[0] / widths[1] < 6.0        # sqrt(16) = 4
    assert widths[0] == pytest.approx(2 * 1.96 / np.sqrt(100), rel=0.25)


def test_grouped_bootstrap_sees_between_group_spread():
    rng = np.random.default_rng(np.random.SeedSequence(8))
    # 10 seeds with very different means, 200 items each: items alone look precise, seeds do not.
    group_means = rng.normal(scale=1.0, size=10)
    groups = np.repeat(np.arange(10), 200)
    values = group_means[groups] + 0.1 * rng.normal(size=groups.size)
    flat = bootstrap_ci(values, rng, n_boot=1000)
    grouped = bootstrap_ci(values, rng, n_boot=1000, groups=groups)
    assert grouped.high - grouped.low > 5 * (flat.high - flat.low)
    assert grouped.low < group_means.mean() < grouped.high


def test_bootstrap_drops_nan_and_rejects_bad_input():
    rng = np.random.default_rng(9)
    ci = bootstrap_ci(np.array([1.0, np.nan, 0.0, 1.0]), rng, n_boot=50)
    assert ci.n == 3 and ci.mean == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0, 2.0], rng, level=1.0)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci([1.0, 2.0], rng, n_boot=0)
    with pytest.raises(ValueError, match="groups"):
        bootstrap_ci([1.0, 2.0], rng, groups=[0])
    with pytest.raises(ValueError, match="non-NaN"):
        bootstrap_ci([np.nan], rng)
    with pytest.raises(TypeError, match="rng"):
        bootstrap_ci([1.0], np.random.RandomState(0))
