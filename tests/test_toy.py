"""Tests of the toy gated classifiers (miniattn.models.toy) and their closed-form flow (analysis.toy)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from analysis.toy import (SQRT2, attention_velocity, closed_form, e1_summary, early_time_orders,
                          hitting_time, simulate_gd, toy_loss)
from miniattn.batch import ClassificationBatch
from miniattn.gradcheck import check_model
from miniattn.models.toy import GatedToyClassifier, SoftmaxGatedToyClassifier, toy_batch

finite = st.floats(-5.0, 5.0, allow_nan=False)


def assert_gradients_ok(report):
    """Passed at rtol=1e-5/atol=1e-8, and relative error < 1e-7 wherever the gradient is not ~0
    (a relative error of an exactly-zero gradient is round-off over round-off, hence meaningless)."""
    assert report.passed, str(report)
    for name, err in report.errors.items():
        assert err < 1e-7 or report.max_abs_diff[name] < 1e-10, str(report)


# ------------------------------------------------------------------------------------------------
# The gated toy model
# ------------------------------------------------------------------------------------------------

@given(b0=finite, b1=finite, p=finite)
def test_gated_loss_is_the_blogs(b0, b1, p):
    loss, grads = GatedToyClassifier(beta=(b0, b1), p=p).loss_and_grads(toy_batch())
    assert loss == pytest.approx(p * (b0 - b1), rel=1e-12, abs=1e-12)
    # Gradient flow −∇L is the blog's system: dβ1 = p, dβ0 = −p, dp = β1 − β0.
    np.testing.assert_allclose(-grads["beta"], [-p, p], rtol=1e-12, atol=1e-12)
    assert -float(grads["p"]) == pytest.approx(b1 - b0, rel=1e-12, abs=1e-12)


@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 6), vocab=st.integers(2, 4),
       reduction=st.sampled_from(["sum", "mean"]), uniform=st.booleans())
def test_gated_gradcheck(seed, batch, vocab, reduction, uniform):
    rng = np.random.default_rng(seed)
    model = GatedToyClassifier(beta=0.0, vocab=vocab, reduction=reduction, uniform=uniform,
                               init_scale=1.0, rng=rng)
    data = ClassificationBatch(rng.integers(0, vocab, size=(batch, 2)), np.ones((batch, 2), bool),
                               rng.integers(0, 2, size=batch))
    report = check_model(model, data)
    assert_gradients_ok(report)


def test_gated_uniform_twin_has_no_gate():
    model = GatedToyClassifier(uniform=True)
    assert set(model.params) == {"beta"}
    np.testing.assert_array_equal(model.forward(toy_batch()).attention[:, 0], [[0.5, 0.5]] * 2)


def test_gated_validation():
    with pytest.raises(ValueError, match="reduction"):
        GatedToyClassifier(reduction="max")
    with pytest.raises(TypeError, match="rng"):
        GatedToyClassifier(init_scale=0.1)
    with pytest.raises(ValueError, match="init_scale"):
        GatedToyClassifier(init_scale=-1.0)
    model = GatedToyClassifier()
    with pytest.raises(ValueError, match="batch.tokens"):
        model.loss_and_grads(ClassificationBatch(np.array([[0, 2]]), np.ones((1, 2), bool), np.array([1])))
    with pytest.raises(ValueError, match="batch.tokens"):
        model.loss_and_grads(ClassificationBatch(np.array([[0, 1, 1]]), np.ones((1, 3), bool), np.array([1])))
    with pytest.raises(ValueError, match="batch.labels"):
        model.loss_and_grads(ClassificationBatch(np.array([[0, 1]]), np.ones((1, 2), bool), np.array([2])))
    with pytest.raises(TypeError, match="batch"):
        model.loss_and_grads((np.array([[0, 1]]),))


def test_gated_probes_shapes_and_signs():
    model = GatedToyClassifier(beta=(-1.0, 2.0), p=0.25)
    batch = toy_batch()
    beta = model.ktiw_probe(batch)
    assert beta.shape == (2, 1, 2)
    # Positive sequence: the word 1 (β = 2) supports the gold label more than the word 0 (β = −1).
    assert beta[1, 0, 1] > beta[1, 0, 0]
    delta = model.saliency(batch)
    assert delta.shape == (2, 1, 2) and delta[1, 0, 1] > 0 > delta[1, 0, 0]


# ------------------------------------------------------------------------------------------------
# The softmax-gated toy model
# ------------------------------------------------------------------------------------------------

@st.composite
def classification_batches(draw):
    vocab = draw(st.integers(1, 5))
    batch = draw(st.integers(1, 5))
    length = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    mask = rng.random((batch, length)) < 0.7
    mask[:, 0] = True                         # every sequence keeps at least one token
    tokens = np.where(mask, rng.integers(0, vocab, size=(batch, length)), 99)   # 99 = padding
    return vocab, ClassificationBatch(tokens, mask, rng.integers(0, 2, size=batch)), rng


@given(data=classification_batches(), uniform=st.booleans(), scale=st.sampled_from([0.1, 1.0, 3.0]))
def test_softmax_toy_gradcheck(data, uniform, scale):
    vocab, batch, rng = data
    model = SoftmaxGatedToyClassifier(vocab, uniform=uniform, init_scale=scale, rng=rng)
    report = check_model(model, batch)
    assert_gradients_ok(report)


@given(data=classification_batches())
def test_softmax_toy_attention_rows_sum_to_one_and_ignore_padding(data):
    vocab, batch, rng = data
    model = SoftmaxGatedToyClassifier(vocab, init_scale=1.0, rng=rng)
    alpha = model.forward(batch).attention[:, 0]
    np.testing.assert_allclose(alpha.sum(axis=1), 1.0, rtol=1e-12)
    assert np.all(alpha[~batch.mask] == 0)
    assert np.all(np.isneginf(model.ktiw_probe(batch)[:, 0][~batch.mask]))


def test_softmax_toy_stage_two_in_miniature():
    # With KTIW present (β_1 > 0 > β_0) and uniform attention, the logit of word 1 gets a
    # descending gradient (it grows) and word 0's shrinks: attention follows KTIW.
    model = SoftmaxGatedToyClassifier(2)
    model.params["beta"][:] = [-1.0, 1.0]
    _, grads = model.loss_and_grads(toy_batch())
    assert grads["logits"][1] < 0 < grads["logits"][0]
    # Without KTIW (β = 0) attention gets no gradient at all.
    model.params["beta"][:] = 0.0
    _, grads = model.loss_and_grads(toy_batch())
    np.testing.assert_array_equal(grads["logits"], 0.0)


def test_softmax_toy_stable_at_extreme_values():
    model = SoftmaxGatedToyClassifier(2)
    model.params["beta"][:] = [-1e4, 1e4]
    model.params["logits"][:] = [1e4, -1e4]
    loss, grads = model.loss_and_grads(toy_batch())
    assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values())


# ------------------------------------------------------------------------------------------------
# Closed form vs simulated gradient descent (analysis.toy)
# ------------------------------------------------------------------------------------------------

def test_closed_form_reference_values():
    p = closed_form([0.5, 1.0, 2.0]).p
    np.testing.assert_allclose(p, [0.630, 1.089, 4.244], atol=5e-4)
    assert hitting_time(1.0) == pytest.approx(np.arccosh(2.0) / SQRT2, rel=1e-12)
    assert hitting_time(1.0) == pytest.approx(0.931, abs=1e-3)


@given(b0=finite, b1=finite, p=finite, tau=st.floats(0.0, 2.0))
def test_closed_form_solves_the_flow(b0, b1, p, tau):
    # Check the ODE by central differences in τ and the conserved sum β0 + β1.
    h = 1e-6
    plus, mid, minus = (closed_form(t, b0, b1, p) for t in (tau + h, tau, tau - h))
    scale = 1.0 + abs(mid.p) + abs(mid.beta1 - mid.beta0)
    assert (plus.p - minus.p) / (2 * h) == pytest.approx(mid.beta1 - mid.beta0, abs=1e-6 * scale)
    assert (plus.beta1 - minus.beta1) / (2 * h) == pytest.approx(mid.p, abs=1e-6 * scale)
    assert (plus.beta0 - minus.beta0) / (2 * h) == pytest.approx(-mid.p, abs=1e-6 * scale)
    assert mid.beta0 + mid.beta1 == pytest.approx(b0 + b1, abs=1e-9 * scale)


@given(b0=finite, b1=finite, p=st.floats(-2.0, 2.0), target=st.floats(-3.0, 3.0))
def test_hitting_time_is_the_first_crossing(b0, b1, p, target):
    tau = hitting_time(target, b0, b1, p)
    grid = np.linspace(0.0, min(tau, 10.0) if np.isfinite(tau) else 10.0, 2001)
    path = closed_form(grid, b0, b1, p).p
    # Before τ the path stays strictly on the starting side of the target.
    side = np.sign(p - target)
    if side != 0:
        assert np.all(side * (path[:-1] - target) > -1e-9)
    if np.isfinite(tau):
        assert closed_form(tau, b0, b1, p).p == pytest.approx(target, abs=1e-8 * (1 + abs(target)))


def test_simulated_gd_matches_closed_form():
    lr = 1e-4
    sim = simulate_gd(1.0, lr=lr)
    for tau in (0.5, 1.0):
        k = int(round(tau / lr))
        assert sim.tau[k] == pytest.approx(tau)
        exact = closed_form(tau)
        assert abs(sim.p[k] - exact.p) < 1e-3
        assert abs(sim.beta1[k] - exact.beta1) < 1e-3 and abs(sim.beta0[k] - exact.beta0) < 1e-3
        assert abs(sim.loss[k] - exact.loss) < 1e-3
    crossed = sim.tau[np.flatnonzero(sim.p >= 1.0)[0]]
    assert abs(crossed - 0.931) < 1e-3


def test_simulated_gd_is_forward_euler_on_the_flow():
    # simulate_gd trains through miniattn.train.train; its states must be exactly the forward-Euler
    # recurrence of the blog's flow (dβ1 = p, dβ0 = −p, dp = β1 − β0), step k at τ = k·lr.
    lr, steps = 0.05, 40
    sim = simulate_gd(steps * lr, lr=lr, beta0=0.3, beta1=-0.2, p=0.4)
    b0, b1, p = 0.3, -0.2, 0.4
    expected = [(b0, b1, p)]
    for _ in range(steps):
        b0, b1, p = b0 - lr * p, b1 + lr * p, p + lr * (b1 - b0)
        expected.append((b0, b1, p))
    expected = np.array(expected)
    np.testing.assert_allclose(sim.tau, lr * np.arange(steps + 1), rtol=1e-12)
    np.testing.assert_allclose(np.c_[sim.beta0, sim.beta1, sim.p], expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sim.loss, expected[:, 2] * (expected[:, 0] - expected[:, 1]), rtol=1e-12, atol=1e-12)


def test_simulated_gd_records_every_kth_step_and_the_last():
    sim = simulate_gd(1.0, lr=0.1, record_every=3)
    np.testing.assert_allclose(sim.tau, [0.0, 0.3, 0.6, 0.9, 1.0])
    with pytest.raises(ValueError, match="record_every"):
        simulate_gd(1.0, lr=0.1, record_every=0)
    with pytest.raises(ValueError, match="lr"):
        simulate_gd(1.0, lr=0.0)


def test_gd_error_is_first_order_in_lr():
    # Forward Euler: halving the step halves the error at a fixed τ (ratio ≈ 2, not ≈ 1 or 4).
    errors = [abs(simulate_gd(1.0, lr=lr).p[-1] - closed_form(1.0).p) for lr in (2e-3, 1e-3)]
    assert 1.8 < errors[0] / errors[1] < 2.2


def test_early_time_orders():
    taus = np.array([0.01, 0.02, 0.04])
    exact = closed_form(taus)
    margin, shift = early_time_orders(taus)
    # Errors shrink like τ³ and τ⁴: doubling τ multiplies them by ≈ 8 and ≈ 16.
    err_margin = np.abs(exact.beta1 - exact.beta0 - margin)
    err_shift = np.abs(exact.p - 0.5 - shift)
    np.testing.assert_allclose(err_margin[1:] / err_margin[:-1], 8.0, rtol=1e-2)
    np.testing.assert_allclose(err_shift[1:] / err_shift[:-1], 16.0, rtol=1e-2)
    # KTIW moves at first order, attention at second: the margin dominates the gate shift early on.
    assert np.all(shift < 0.1 * margin)


def test_wrong_init_moves_attention_to_the_wrong_token():
    assert attention_velocity(10.0, -10.0, 0.5) == pytest.approx(-20.0, abs=1e-12)
    path = closed_form(np.linspace(0.0, 0.1, 11), 10.0, -10.0, 0.5)
    assert np.all(np.diff(path.p) < 0)
    assert hitting_time(1.0, 10.0, -10.0, 0.5) == np.inf


@given(K=st.floats(0.0, 1e3))
def test_uniform_attention_reaches_low_loss(K):
    assert toy_loss(-K, 3 * K, 0.5) == pytest.approx(-2 * K, rel=1e-12, abs=1e-12)


def test_e1_summary_keys():
    summary = e1_summary(lr=1e-3, taus=(0.5,))
    assert summary["wrong_init_dp_dtau"] == -20.0
    assert abs(summary["p_gd"][0] - summary["p_closed"][0]) < 1e-3
    assert summary["uniform_attention_loss"] == -2.0
