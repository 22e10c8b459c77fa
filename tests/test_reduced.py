"""Tests of the reduced dynamics of the free copy model (analysis.reduced) against the full model."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from analysis.reduced import (attention_diagonal, escape_time_vs_init_scale, integrate_reduced,
                              predicted_time_to_learn_vs_vocab, prob_correct, project, reduced_gradient, reduced_loss,
                              reduced_rhs, saddle_growth_rate, time_to_learn, _diag_off)
from analysis.simulation import (compare_with_simulation, crossing_time, enumerate_copy_batch, simulate_copy,
                                 symmetric_factorised_params, symmetric_params)
from miniattn.gradcheck import check_model
from miniattn.models.free_copy import FreeAttentionCopyModel

POINTS = [(0.0, 0.0, 0.0, 0.0), (1.3, -0.2, 0.7, -0.4), (-2.0, 0.5, -1.0, 1.0), (4.0, 1.0, 2.5, 0.0),
          (0.3, 0.3, 0.0, 0.0), (-0.5, 0.1, 3.0, -1.0)]


def _model_at(params, L, V, factorised=False):
    model = FreeAttentionCopyModel(L, V, factorised=factorised, rng=np.random.default_rng(0))
    for k, v in params.items():
        model.params[k][...] = v
    return model


def _fill(diag, off, n):
    X = np.full((n, n), off)
    np.fill_diagonal(X, diag)
    return X


# ------------------------------------------------------------------------------------------------
# The derivation, checked against the full model's exact expected gradient
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("V", [3, 5])
@pytest.mark.parametrize("point", POINTS)
def test_reduced_rhs_is_the_exact_expected_gradient(V, point):
    L = 3
    batch = enumerate_copy_batch(L, V)          # every input once: batch mean = exact expectation
    model = _model_at(symmetric_params(L, V, *point, bias=0.37), L, V)
    loss, grads = model.loss_and_grads(batch)
    order = project(model)
    assert order.alpha_d == pytest.approx(order.alpha_d_projected, abs=1e-15)
    assert loss == pytest.approx(float(reduced_loss(order.delta, order.alpha_d, L, V)), abs=1e-10)
    rate = reduced_rhs(0.0, order.state(), L, V)
    # Every entry of M and A moves as the order parameter it belongs to: −grad = rhs entry.
    np.testing.assert_allclose(-grads["M"], _fill(rate[0], rate[1], V), rtol=0, atol=1e-10)
    np.testing.assert_allclose(-grads["A"], _fill(rate[2], rate[3], L), rtol=0, atol=1e-10)
    np.testing.assert_allclose(grads["b"], 0.0, atol=1e-10)
    # The full gradient has no component outside the symmetric class at a symmetric point.
    assert np.ptp(np.diag(grads["M"])) < 1e-12 and np.ptp(grads["M"][~np.eye(V, dtype=bool)]) < 1e-12


@pytest.mark.parametrize("V", [3, 5])
@pytest.mark.parametrize("wo,e,a", [((1.1, 0.2), (0.8, -0.3), (0.5, -0.2)), ((0.3, 0.1), (-0.5, 0.2), (-0.3, 0.4)),
                                    ((2.0, -0.4), (1.5, 0.3), (1.0, 0.0))])
def test_factorised_rhs_is_the_exact_expected_gradient(V, wo, e, a):
    L = 3
    batch = enumerate_copy_batch(L, V)
    model = _model_at(symmetric_factorised_params(L, V, wo, e, *a), L, V, factorised=True)
    loss, grads = model.loss_and_grads(batch)
    order = project(model)
    assert loss == pytest.approx(float(reduced_loss(order.delta, order.alpha_d, L, V)), abs=1e-10)
    rate = reduced_rhs(0.0, order.state(factorised=True), L, V, factorised=True)
    Wo, E = model.params["Wo"], model.params["E"]
    dWo, dE = -grads["Wo"], -grads["E"]
    # Velocities of M = Wo Eᵀ, P = Wo Woᵀ, Q = E Eᵀ under gradient flow (chain rule), projected.
    dM, dP, dQ = dWo @ E.T + Wo @ dE.T, dWo @ Wo.T + Wo @ dWo.T, dE @ E.T + E @ dE.T
    measured = np.array([*_diag_off(dM), *_diag_off(-grads["A"]), *_diag_off(dP), *_diag_off(dQ)])
    np.testing.assert_allclose(measured, rate, rtol=0, atol=1e-10)
    # And the velocities really are in the symmetric class (so the projection loses nothing).
    for X in (dM, dP, dQ):
        assert np.ptp(np.diag(X)) < 1e-12 and np.ptp(X[~np.eye(V, dtype=bool)]) < 1e-12


@given(delta=st.floats(-8, 8), alpha=st.floats(0.001, 0.999), L=st.integers(2, 6), extra=st.integers(0, 5))
def test_reduced_gradient_matches_finite_differences(delta, alpha, L, extra):
    V = L + extra
    g_delta, g_alpha = reduced_gradient(delta, alpha, L, V)
    h = 1e-6
    num_delta = (reduced_loss(delta + h, alpha, L, V) - reduced_loss(delta - h, alpha, L, V)) / (2 * h)
    num_alpha = (reduced_loss(delta, alpha + h, L, V) - reduced_loss(delta, alpha - h, L, V)) / (2 * h)
    assert g_delta == pytest.approx(num_delta, rel=1e-6, abs=1e-8)
    assert g_alpha == pytest.approx(num_alpha, rel=1e-6, abs=1e-8)


@given(L=st.integers(2, 50), extra=st.integers(0, 50))
def test_ktiw_drive_at_the_symmetric_start(L, extra):
    V = L + extra
    g_delta, g_alpha = reduced_gradient(0.0, 1.0 / L, L, V)
    assert g_delta == pytest.approx(1.0 / V - 1.0 / L, abs=1e-15)
    assert g_alpha == 0.0
    if extra == 0:
        assert g_delta == pytest.approx(0.0, abs=1e-15)
    else:
        assert g_delta < 0                     # δ grows: KTIW forms from co-occurrence alone


@given(delta=st.floats(-20, 20).filter(lambda d: abs(d) > 1e-6), alpha=st.floats(0.0, 1.0),
       L=st.integers(2, 8), extra=st.integers(0, 8))
def test_attention_gradient_is_minus_delta_times_positive(delta, alpha, L, extra):
    V = L + extra
    _, g_alpha = reduced_gradient(delta, alpha, L, V)
    factor = g_alpha / -delta
    assert 0 < factor <= 2.0 + 1e-12           # 1 − p_c + p_o ∈ (0, 2)


@given(delta=st.floats(-1e4, 1e4), alpha=st.floats(0.0, 1.0), L=st.integers(2, 60), extra=st.integers(0, 60))
def test_reduced_loss_is_stable(delta, alpha, L, extra):
    V = L + extra
    loss = reduced_loss(delta, alpha, L, V)
    p = prob_correct(delta, alpha, L, V)
    assert np.isfinite(loss) and loss >= -1e-12 and 0 <= p <= 1
    assert loss == pytest.approx(-np.log(max(p, 1e-300)), rel=1e-9, abs=1e-9) or p < 1e-300


def test_attention_diagonal():
    assert attention_diagonal(0.0, 40) == pytest.approx(1 / 40)
    assert attention_diagonal(1e4, 5) == 1.0 and attention_diagonal(-1e4, 5) == 0.0
    assert attention_diagonal(np.log(3.0), 4) == pytest.approx(0.5)


def test_saddle_linearisation():
    # Jacobian of (dδ/dτ, du/dτ) at the V = L saddle by central differences: [[0, 1/L²], [1/L², 0]].
    L = V = 7
    h = 1e-6

    def flow(delta, u):
        r = reduced_rhs(0.0, np.array([delta, 0.0, u, 0.0]), L, V)
        return np.array([r[0] - r[1], r[2] - r[3]])

    J = np.column_stack([(flow(h, 0) - flow(-h, 0)) / (2 * h), (flow(0, h) - flow(0, -h)) / (2 * h)])
    rate = saddle_growth_rate(L)
    np.testing.assert_allclose(J, [[0, rate], [rate, 0]], atol=1e-9)


def test_factorised_saddle_rate_scales_with_the_gram_diagonal():
    # Factorised, V = L: dδ/dτ ≈ q̃ u / L², du/dτ ≈ δ / L² with q̃ = (p_d − p_o) + (q_d − q_o), so the
    # unstable rate is √q̃ / L² — proportional to the init scale s (q̃ ≈ 2 d s²), not a constant.
    L = V = 6
    h = 1e-6
    for q in (0.02, 0.5, 2.0):
        def flow(delta, u):
            r = reduced_rhs(0.0, np.array([delta, 0.0, u, 0.0, q / 2, 0.0, q / 2, 0.0]), L, V, factorised=True)
            return np.array([r[0] - r[1], r[2] - r[3]])

        J = np.column_stack([(flow(h, 0) - flow(-h, 0)) / (2 * h), (flow(0, h) - flow(0, -h)) / (2 * h)])
        np.testing.assert_allclose(J, [[0, q / L**2], [1 / L**2, 0]], atol=1e-9)
        assert np.max(np.linalg.eigvals(J).real) == pytest.approx(np.sqrt(q) / L**2, rel=1e-6)


# ------------------------------------------------------------------------------------------------
# Projection, gradient checks through analysis helpers, validation
# ------------------------------------------------------------------------------------------------

@given(seed=st.integers(0, 2**32 - 1), L=st.integers(2, 5), extra=st.integers(0, 3), factorised=st.booleans())
def test_project_recovers_symmetric_points(seed, L, extra, factorised):
    rng = np.random.default_rng(seed)
    V = L + extra
    m_d, m_o, a_d, a_o = rng.normal(size=4)
    if factorised:
        wo, e = tuple(rng.normal(size=2)), tuple(rng.normal(size=2))
        params = symmetric_factorised_params(L, V, wo, e, a_d, a_o)
        order = project(params)
        M = params["Wo"] @ params["E"].T
        assert order.delta == pytest.approx(M[0, 0] - M[0, 1] if V > 1 else M[0, 0], abs=1e-12)
        assert order.q_diag == pytest.approx((params["E"] @ params["E"].T)[0, 0], abs=1e-12)
    else:
        order = project(symmetric_params(L, V, m_d, m_o, a_d, a_o))
        assert (order.m_diag, order.m_off, order.a_diag, order.a_off) == pytest.approx((m_d, m_o, a_d, a_o))
        assert order.delta == pytest.approx(m_d - m_o)
    assert order.alpha_d == pytest.approx(float(attention_diagonal(a_d - a_o, L)), abs=1e-12)


@given(seed=st.integers(0, 2**32 - 1), L=st.integers(1, 3), extra=st.integers(0, 2), factorised=st.booleans(),
       uniform=st.booleans())
def test_gradcheck_on_all_copy_inputs(seed, L, extra, factorised, uniform):
    # The exact-expectation batch used by the derivation tests is itself gradient-checked.
    rng = np.random.default_rng(seed)
    V = L + extra
    model = FreeAttentionCopyModel(L, V, factorised=factorised, uniform=uniform, init_scale=1.0, rng=rng)
    report = check_model(model, enumerate_copy_batch(L, V))
    assert report.passed, str(report)
    for name, err in report.errors.items():
        assert err < 1e-7 or report.max_abs_diff[name] < 1e-10, str(report)


def test_enumerate_copy_batch():
    batch = enumerate_copy_batch(3, 5)
    assert batch.source.shape == (60, 3)
    assert len({tuple(r) for r in batch.source.tolist()}) == 60
    assert enumerate_copy_batch(3, 3).source.shape == (6, 3)
    with pytest.raises(ValueError, match="max_examples"):
        enumerate_copy_batch(8, 20)


def test_validation():
    with pytest.raises(ValueError, match="L must be >= 2"):
        reduced_loss(0.0, 1.0, 1, 3)
    with pytest.raises(ValueError, match="V must be >= L"):
        reduced_loss(0.0, 0.5, 4, 3)
    with pytest.raises(TypeError, match="L must be an integer"):
        reduced_loss(0.0, 0.5, 2.5, 3)
    with pytest.raises(ValueError, match="y must have shape"):
        reduced_rhs(0.0, np.zeros(3), 3, 3)
    with pytest.raises(ValueError, match="t_eval"):
        integrate_reduced(3, 4, np.zeros(4), [1.0, 0.5])
    with pytest.raises(ValueError, match="threshold"):
        time_to_learn(3, 4, threshold=1.5)
    with pytest.raises(ValueError, match="length is required"):
        project({"M": np.zeros((3, 3)), "b": np.zeros(3)})
    with pytest.raises(ValueError, match="factorised state"):
        project(symmetric_params(3, 3, 0, 0, 0, 0)).state(factorised=True)
    with pytest.raises(ValueError, match="scales"):
        escape_time_vs_init_scale(4, [0.1])


# ------------------------------------------------------------------------------------------------
# The ODE and its predictions
# ------------------------------------------------------------------------------------------------

def test_integrate_matches_time_to_learn_and_crossing_time():
    L, V = 5, 8
    tau = time_to_learn(L, V, threshold=0.5)
    assert 0 < tau < np.inf
    traj = integrate_reduced(L, V, np.zeros(4), np.linspace(0, 2 * tau, 2001))
    assert crossing_time(traj.t, traj.prob_correct, 0.5) == pytest.approx(tau, rel=1e-4)
    # The loss version of the definition gives a time in the same place (loss = −log 0.5 ↔ p = ½
    # only at a symmetric point, where loss = −log p exactly).
    assert time_to_learn(L, V, threshold=np.log(2.0), quantity="loss") == pytest.approx(tau, rel=1e-7)
    np.testing.assert_allclose(traj.loss, -np.log(traj.prob_correct), rtol=1e-12)


def test_symmetric_permutation_start_never_learns_and_uniform_twin_is_stuck():
    assert time_to_learn(6, 6, threshold=0.5, t_max=1e7) == np.inf
    # The uniform twin of a subset task learns KTIW (δ grows) but never p_c > 1/L.
    traj = integrate_reduced(5, 8, np.zeros(4), [0.0, 1e3, 1e5], uniform=True)
    assert traj.delta[-1] > traj.delta[1] > 0
    assert np.all(traj.alpha_d == 1 / 5) and traj.prob_correct[-1] < 1 / 5
    # … and on permutations nothing moves at all.
    stuck = integrate_reduced(5, 5, np.array([0.3, 0.1, 0.0, 0.0]), [0.0, 1e5], uniform=True)
    np.testing.assert_allclose(stuck.states[-1], stuck.states[0], atol=1e-12)


def test_time_to_learn_vs_vocab():
    times = predicted_time_to_learn_vs_vocab(10, [10, 11, 12, 15, 20])
    assert times[0] == np.inf
    assert np.all(np.isfinite(times[1:]))
    assert times[1] > times[2] > times[3]   # a larger KTIW drive 1/L − 1/V learns sooner at first


def test_escape_time_grows_like_log_inverse_scale():
    L = 6
    fit = escape_time_vs_init_scale(L, [1e-2, 1e-3, 1e-4, 1e-5])
    assert np.all(np.diff(fit.times) > 0)
    assert fit.predicted_slope == L ** 2
    assert fit.slope == pytest.approx(L ** 2, rel=0.02)
    steps = np.diff(fit.times) / np.log(10.0)
    np.testing.assert_allclose(steps, L ** 2, rtol=0.02)


def test_factorised_flow_conserves_gram_balance():
    # q̃² − 4δ² is conserved for the symmetric factorised flow, q̃ = (p_d − p_o) + (q_d − q_o).
    y0 = np.array([0.02, 0.0, 0.05, 0.0, 0.3, 0.01, 0.25, -0.01])
    traj = integrate_reduced(4, 6, y0, [0.0, 50.0, 200.0, 800.0], factorised=True)
    s = traj.states
    qt = (s[:, 4] - s[:, 5]) + (s[:, 6] - s[:, 7])
    invariant = qt ** 2 - 4 * traj.delta ** 2
    np.testing.assert_allclose(invariant, invariant[0], rtol=1e-7)
    assert traj.delta[-1] > 1.0


@pytest.mark.parametrize("factorised", [False, True])
def test_ode_matches_full_batch_gradient_descent(factorised):
    # Exact expected gradients (all inputs), nearly symmetric start: GD → ODE as lr → 0, with the
    # first-order (Euler) error: halving lr halves the discrepancy.
    L, V = 3, 5
    rng = np.random.default_rng(11)
    if factorised:
        base = symmetric_factorised_params(L, V, (0.4, 0.05), (0.3, -0.02), 0.0, 0.0)
    else:
        base = symmetric_params(L, V, 0.0, 0.0, 0.0, 0.0)
    params = {k: v + 1e-4 * rng.standard_normal(v.shape) for k, v in base.items()}
    errors = []
    for lr in (0.4, 0.2):
        sim, ode = compare_with_simulation(L, V, lr=lr, steps=int(round(160 / lr)), exact=True, params=params,
                                           model="factorised" if factorised else "free",
                                           eval_every=int(round(20 / lr)))
        np.testing.assert_allclose(sim.t, ode.t)
        assert sim.prob_correct[-1] > 0.8                  # the run does learn in this window
        err = max(np.abs(sim.delta - ode.delta).max(), np.abs(sim.alpha_d - ode.alpha_d).max(),
                  np.abs(sim.prob_correct - ode.prob_correct).max())
        errors.append(err)
    assert errors[1] < 0.03
    assert 1.6 < errors[0] / errors[1] < 2.4


def test_simulation_is_seeded():
    a = simulate_copy(3, 4, lr=1.0, steps=20, batch_size=8, seed=3, eval_every=5, eval_size=16)
    b = simulate_copy(3, 4, lr=1.0, steps=20, batch_size=8, seed=3, eval_every=5, eval_size=16)
    np.testing.assert_array_equal(a.delta, b.delta)
    np.testing.assert_array_equal(a.t, [0.0, 5.0, 10.0, 15.0, 20.0])


@pytest.mark.slow
def test_ode_tracks_minibatch_sgd_on_subsets():
    # L = 40, V = 60 from a random init (scale 0.1), batch 128, SGD lr 5: the ODE from the
    # projected start tracks the run (the scientific check behind the report's comparison).
    sim, ode = compare_with_simulation(40, 60, lr=5.0, steps=4000, batch_size=128, init_scale=0.1, seed=0,
                                       eval_every=200)
    late = sim.t >= 8000
    np.testing.assert_allclose(sim.prob_correct[late], ode.prob_correct[late], atol=0.02)
    np.testing.assert_allclose(sim.delta[late], ode.delta[late], rtol=0.02)
    assert crossing_time(sim.t, sim.prob_correct, 0.5) == pytest.approx(
        crossing_time(ode.t, ode.prob_correct, 0.5), rel=0.1)
