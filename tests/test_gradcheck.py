"""Tests of the gradient checker itself (:mod:`miniattn.gradcheck`): it must have teeth.

A checker that accepts wrong gradients is worse than none, so besides accepting correct backward
passes these tests feed it deliberately broken ones — a softmax backward without the
``− Σ α ⊙ dα`` term, a softmax backward centred on the unweighted mean, an all-zero backward, a
transposed weight gradient — and require rejection. They also show *why* the upstream gradient is
random: with an all-ones upstream the true vector-Jacobian product of a softmax is zero, and the
broken backward passes that happen to return zero for a constant upstream are accepted.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from miniattn.gradcheck import (
    DEFAULT_ATOL, DEFAULT_RTOL, GradcheckReport, check_directional, check_model, check_vjp, numerical_vjp,
    relative_error,
)
from strategies import dims, float_arrays, generators, seeds

MAX_REL_ERROR = 1e-7


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_vjp_correct(upstream, z):
    a = softmax(z)
    return {"z": a * (upstream - np.sum(a * upstream, axis=-1, keepdims=True))}


def softmax_vjp_missing_term(upstream, z):
    """Forgets the ``− Σ α ⊙ dα`` term (the diagonal of the Jacobian only)."""
    return {"z": softmax(z) * upstream}


def softmax_vjp_unweighted_centering(upstream, z):
    """Centres ``dα`` on its plain mean instead of the α-weighted mean: zero for constant ``dα``."""
    return {"z": softmax(z) * (upstream - upstream.mean(axis=-1, keepdims=True))}


def softmax_vjp_zero(upstream, z):
    """Returns no gradient at all."""
    return {"z": np.zeros_like(z)}


BROKEN_SOFTMAX = {"missing_term": softmax_vjp_missing_term,
                  "unweighted_centering": softmax_vjp_unweighted_centering,
                  "zero": softmax_vjp_zero}


@st.composite
def logits(draw, min_len=2):
    """(rows, S) logits with S >= 2 from a seeded generator (random, so not all equal)."""
    rows, S = draw(dims(1, 4)), draw(dims(min_len, 6))
    rng = np.random.default_rng(np.random.SeedSequence(draw(seeds())))
    return rng.standard_normal((rows, S)), rng


# --------------------------------------------------------------------------------------------------
# Accepting correct gradients
# --------------------------------------------------------------------------------------------------

def test_check_vjp_accepts_elementwise_function_and_reports():
    rng = np.random.default_rng(np.random.SeedSequence(0))
    report = check_vjp(lambda x: np.tanh(x), lambda upstream, x: {"x": upstream * (1 - np.tanh(x) ** 2)},
                       {"x": rng.standard_normal((3, 4))}, rng=rng)
    assert isinstance(report, GradcheckReport)
    assert report.passed and report.max_error < MAX_REL_ERROR
    assert (report.rtol, report.atol) == (DEFAULT_RTOL, DEFAULT_ATOL) == (1e-5, 1e-8)
    assert list(report.errors) == ["x"] and "passed" in str(report)


@given(logits())
def test_check_vjp_accepts_correct_softmax(case):
    z, rng = case
    report = check_vjp(softmax, softmax_vjp_correct, {"z": z}, rng=rng)
    assert report.passed and report.max_error < MAX_REL_ERROR, str(report)


@given(x=float_arrays(st.tuples(dims(1, 3), dims(1, 4)), magnitude=3.0), upstream_seed=seeds())
def test_numerical_vjp_of_cubic_matches_truncation_bound(x, upstream_seed):
    """d/dx ⟨c, x³⟩ = 3x²c; the central difference errs by exactly c·h² (f''' = 6) plus round-off."""
    c = np.random.default_rng(np.random.SeedSequence(upstream_seed)).standard_normal(x.shape)
    numeric = numerical_vjp(lambda x: x ** 3, {"x": x}, c, h=1e-5)["x"]
    np.testing.assert_allclose(numeric, 3 * x ** 2 * c, rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------------------------------
# Rejecting wrong gradients (the checker has teeth)
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(BROKEN_SOFTMAX))
@given(case=logits())
def test_check_vjp_rejects_broken_softmax_backward(name, case):
    z, rng = case
    report = check_vjp(softmax, BROKEN_SOFTMAX[name], {"z": z}, rng=rng)
    assert not report.passed, str(report)
    assert report.max_error > 1e-3


@pytest.mark.parametrize("name", ["unweighted_centering", "zero"])
@given(case=logits())
def test_all_ones_upstream_would_accept_a_broken_softmax(name, case):
    """The reason the checker draws a random upstream: Σ_s softmax = 1 makes Jᵀ·1 = 0."""
    z, _ = case
    ones = np.ones_like(z)
    assert check_vjp(softmax, softmax_vjp_correct, {"z": z}, upstream=ones).passed
    assert check_vjp(softmax, BROKEN_SOFTMAX[name], {"z": z}, upstream=ones).passed   # fooled


@given(case=logits())
def test_all_ones_upstream_still_rejects_missing_term(case):
    """Dropping the ``− Σ α dα`` term is caught even by a ones upstream (α·1 ≠ 0); recorded so that
    the comparison above is not overstated."""
    z, _ = case
    assert not check_vjp(softmax, softmax_vjp_missing_term, {"z": z}, upstream=np.ones_like(z)).passed


@st.composite
def linear_cases(draw):
    n, d = draw(dims(1, 4)), draw(dims(2, 4))        # square W (d, d) so a transposed dW has the right shape
    rng = np.random.default_rng(np.random.SeedSequence(draw(seeds())))
    return {"x": rng.standard_normal((n, d)), "W": rng.standard_normal((d, d))}, rng


def linear(x, W):
    return np.tanh(x @ W)


def linear_vjp(upstream, x, W, transpose_dW=False):
    dy = upstream * (1 - np.tanh(x @ W) ** 2)
    dW = x.T @ dy
    return {"x": dy @ W.T, "W": dW.T if transpose_dW else dW}


@given(linear_cases())
def test_check_vjp_rejects_transposed_weight_gradient(case):
    inputs, rng = case
    good = check_vjp(linear, linear_vjp, inputs, rng=rng)
    assert good.passed and good.max_error < MAX_REL_ERROR, str(good)
    bad = check_vjp(linear, lambda u, x, W: linear_vjp(u, x, W, transpose_dW=True), inputs, rng=rng)
    assert bad.passed_each["x"] and not bad.passed_each["W"] and not bad.passed, str(bad)


def test_missing_gradient_counts_as_zero():
    rng = np.random.default_rng(np.random.SeedSequence(1))
    inputs = {"x": rng.standard_normal((2, 3)), "W": rng.standard_normal((3, 3))}
    report = check_vjp(linear, lambda u, x, W: {"x": linear_vjp(u, x, W)["x"]}, inputs, rng=rng)
    assert report.passed_each["x"] and not report.passed_each["W"]
    assert "NO" in str(report) and "FAILED" in str(report)


# --------------------------------------------------------------------------------------------------
# Random-direction check
# --------------------------------------------------------------------------------------------------

def test_check_directional_accepts_correct_and_rejects_broken_on_large_input():
    rng = np.random.default_rng(np.random.SeedSequence(2))
    z = rng.standard_normal((64, 50))
    good = check_directional(softmax, softmax_vjp_correct, {"z": z}, rng=rng, n_directions=5)
    assert good.passed and good.max_error < MAX_REL_ERROR, str(good)
    assert len(good.errors) == 5
    for name, broken in BROKEN_SOFTMAX.items():
        assert not check_directional(softmax, broken, {"z": z}, rng=rng).passed, name


def test_check_directional_step_does_not_grow_with_size():
    """The direction has unit norm over all inputs, so h is the true step: the truncation error of
    tanh(x W) stays at round-off level for 20 000 elements."""
    rng = np.random.default_rng(np.random.SeedSequence(3))
    inputs = {"x": rng.standard_normal((300, 50)), "W": rng.standard_normal((50, 50)) / 7}
    report = check_directional(linear, linear_vjp, inputs, rng=rng, n_directions=4)
    assert report.passed and report.max_error < MAX_REL_ERROR, str(report)


# --------------------------------------------------------------------------------------------------
# check_model on a tiny hand-written model
# --------------------------------------------------------------------------------------------------

class TinySoftmaxRegression:
    """logits = X W + b, mean cross-entropy; gradients written out by hand."""

    def __init__(self, rng, d=3, C=4, broken=False):
        self.params = {"W": 0.5 * rng.standard_normal((d, C)), "b": 0.1 * rng.standard_normal(C)}
        self.broken = broken

    def loss_and_grads(self, batch):
        X, y = batch
        z = X @ self.params["W"] + self.params["b"]
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        N = X.shape[0]
        loss = -log_p[np.arange(N), y].mean()
        dz = np.exp(log_p)
        dz[np.arange(N), y] -= 1.0
        dz /= N
        db = dz.sum(axis=0) * (N if self.broken else 1)   # broken: forgets the 1/N for the bias
        return loss, {"W": X.T @ dz, "b": db}


@st.composite
def model_cases(draw, min_classes=1):
    rng = np.random.default_rng(np.random.SeedSequence(draw(seeds())))
    d, C, N = draw(dims(1, 4)), draw(dims(min_classes, 4)), draw(dims(2, 6))
    model = TinySoftmaxRegression(rng, d, C)
    batch = (rng.standard_normal((N, d)), rng.integers(0, C, size=N))
    return model, batch, rng


@given(model_cases())
def test_check_model_accepts_hand_written_model_and_restores_params(case):
    model, batch, rng = case
    before = {k: v.copy() for k, v in model.params.items()}
    ids_before = {k: id(v) for k, v in model.params.items()}
    report = check_model(model, batch)
    assert report.passed and report.max_error < MAX_REL_ERROR, str(report)
    assert set(report.errors) == {"W", "b"}
    for k in before:   # restored bit-identically, in the same array objects
        assert id(model.params[k]) == ids_before[k]
        np.testing.assert_array_equal(model.params[k], before[k])
    directional = check_model(model, batch, rng=rng, directional=True, n_directions=3)
    assert directional.passed and directional.max_error < MAX_REL_ERROR, str(directional)


@given(model_cases(min_classes=2))   # with one class every gradient is exactly zero
def test_check_model_rejects_wrong_model_gradient(case):
    model, batch, rng = case
    model.broken = True
    report = check_model(model, batch)
    assert report.passed_each["W"] and not report.passed_each["b"], str(report)
    only_w = check_model(model, batch, names=["W"])
    assert only_w.passed and list(only_w.errors) == ["W"]


def test_check_model_restores_params_even_when_the_model_raises():
    rng = np.random.default_rng(np.random.SeedSequence(4))
    model = TinySoftmaxRegression(rng)
    before = {k: v.copy() for k, v in model.params.items()}
    calls = {"n": 0}
    original = model.loss_and_grads

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("boom")
        return original(batch)

    model.loss_and_grads = flaky
    with pytest.raises(RuntimeError, match="boom"):
        check_model(model, (rng.standard_normal((3, 3)), np.array([0, 1, 2])))
    for k in before:
        np.testing.assert_array_equal(model.params[k], before[k])


def test_check_model_directional_needs_rng():
    rng = np.random.default_rng(np.random.SeedSequence(5))
    model = TinySoftmaxRegression(rng)
    with pytest.raises(ValueError, match=r"directional=True needs rng"):
        check_model(model, (np.ones((2, 3)), np.array([0, 1])), directional=True)


# --------------------------------------------------------------------------------------------------
# Inputs handled with care; bad usage rejected
# --------------------------------------------------------------------------------------------------

@given(x=float_arrays((2, 3), magnitude=2.0), rng=generators())
def test_check_vjp_does_not_mutate_caller_inputs_and_computes_in_float64(x, rng):
    seen = set()

    def func(x, ids):
        seen.add(x.dtype)
        return np.sin(x) * ids

    x32 = x.astype(np.float32)
    ids = np.array([1, 2, 3])
    before = x32.copy()
    report = check_vjp(func, lambda u, x, ids: {"x": u * np.cos(x) * ids}, {"x": x32, "ids": ids}, rng=rng)
    assert report.passed, str(report)
    assert list(report.errors) == ["x"]           # integer inputs are passed through, not differentiated
    assert seen == {np.dtype(np.float64)}
    np.testing.assert_array_equal(x32, before)
    assert x32.dtype == np.float32


def test_relative_error_properties():
    rng = np.random.default_rng(np.random.SeedSequence(6))
    a, b = rng.standard_normal(5), rng.standard_normal(5)
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(np.zeros(3), np.ones(3)) == 1.0
    assert relative_error(a, b) == relative_error(b, a)
    assert np.isclose(relative_error(1e6 * a, 1e6 * b), relative_error(a, b), rtol=1e-12)
    assert relative_error(a, a) == 0.0


def test_check_vjp_rejects_bad_usage():
    x = {"x": np.ones((2, 2))}
    sin = lambda x: np.sin(x)     # noqa: E731
    vjp = lambda u, x: {"x": u}   # noqa: E731
    with pytest.raises(ValueError, match=r"give rng"):
        check_vjp(sin, vjp, x)
    with pytest.raises(ValueError, match=r"upstream must have the output's shape \(2, 2\)"):
        check_vjp(sin, vjp, x, upstream=np.ones(3))
    with pytest.raises(ValueError, match=r"wrt names inputs that do not exist: \['y'\]"):
        check_vjp(sin, vjp, x, rng=np.random.default_rng(0), wrt=["y"])
    with pytest.raises(ValueError, match=r"inputs must not contain the name 'upstream'"):
        check_vjp(lambda upstream: upstream, lambda u, upstream: {}, {"upstream": np.ones(2)},
                  rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"vjp returned shape \(3,\) for 'x'"):
        check_vjp(sin, lambda u, x: {"x": np.ones(3)}, x, rng=np.random.default_rng(0))
