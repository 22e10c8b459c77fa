"""Tests of analysis.reduced_seq2seq: the reduced flow of the parameterised copy models.

The right-hand side is checked against the model's own exact expected gradient (every copy input
once) projected on the order parameters, at symmetric points of the seq2seq parameterisation; the
projection code against finite differences; the rate factors against finite differences on a
randomly initialised model; and the free limits against analysis.reduced.
"""

import numpy as np
import pytest

from analysis import reduced
from analysis.reduced_seq2seq import (FACTORISED, FREE, SEQ2SEQ, copy_batch_with_specials,
                                      effective_gradients, effective_ktiw, effective_scores, integrate_reduced_seq2seq,
                                      kernel_factors, measure_free, measure_seq2seq, model_velocities, proj,
                                      reduced_gradients, reduced_seq2seq_rhs, time_to_learn_seq2seq)
from analysis.simulation import build_copy_model, enumerate_copy_batch
from miniattn.models.free_copy import FreeAttentionCopyModel
from miniattn.models.seq2seq import Seq2SeqAttention

L_S, V_S = 3, 5   # exact enumeration: 60 inputs


def _block_model(L, V, e1, e2, w1, w2, kt, ks, wa, bias_gap, *, w_eos=40.0):
    """Seq2seq params at a symmetric point: token and position parts in orthogonal blocks of dims.

    Token dims 0..C−1, position dims C..C+L. Content embeddings ``e1 e_v + e2 1``, content output
    columns ``w1 e_c + w2 1`` (special classes 0, ``E[<eos>] = E[<bos>] = 0``, W_q = 0), positions
    ``√k I``, score matrix ``diag(wa, …, wa, w_eos)`` on the position block: the <eos> row attends
    only to the <eos> key (score gap w_eos·√(kt ks)), the content rows' <eos> key sits at a_o = 0.
    """
    C = V + 3
    d = C + L + 1
    m = Seq2SeqAttention(C, C, L + 1, L + 1, dim=d, rng=np.random.default_rng(0))
    p = m.params
    for k in p:
        p[k][...] = 0.0
    p["embed"][:V, :V] = e1 * np.eye(V) + e2
    p["out_W"][d:d + V, :V] = w1 * np.eye(V) + w2       # W_c rows = token dims
    p["src_pos"][:, C:] = np.sqrt(ks) * np.eye(L + 1)
    p["tgt_pos"][:, C:] = np.sqrt(kt) * np.eye(L + 1)
    p["score"][C:, C:] = np.diag([wa] * L + [w_eos / np.sqrt(kt * ks)])
    p["out_b"][V:] = bias_gap
    return m


BLOCK_POINTS = [  # (e1, e2, w1, w2, kt, ks, wa, bias_gap)
    (0.3, 0.05, 0.2, -0.1, 1.0, 1.0, 0.05, 0.0),       # near the symmetric start
    (1.5, 0.2, 1.1, 0.3, 0.8, 1.3, 1.2, -1.0),
    (2.0, -0.3, 2.5, 0.1, 1.7, 0.6, -0.8, 0.5),
    (-1.0, 0.4, 1.8, -0.2, 2.0, 2.0, 2.5, -3.0),       # δ < 0
    (2.5, 0.0, 2.0, 0.0, 1.2, 0.9, 3.0, 1.5),
]


@pytest.fixture(scope="module")
def exact_batch():
    return copy_batch_with_specials(enumerate_copy_batch(L_S, V_S).source, V_S)


@pytest.mark.parametrize("point", BLOCK_POINTS)
def test_rhs_is_the_exact_expected_gradient_at_symmetric_points(point, exact_batch):
    L, V = L_S, V_S
    m = _block_model(L, V, *point)
    state = measure_seq2seq(m, L, V)
    _, grads = m.loss_and_grads(exact_batch)
    vel = model_velocities(m, grads, L, V)
    rhs = reduced_seq2seq_rhs(0.0, state.y, L, V, omega=state.omega, kappa_zeta=state.kappa_zeta)
    assert abs(rhs[0]) > 1e-6 and abs(rhs[1]) > 1e-8      # the check is not trivially 0 = 0
    np.testing.assert_allclose([vel.delta, vel.u, vel.p_alpha, vel.q_alpha, vel.x_t, vel.x_s],
                               [rhs[0], rhs[1], rhs[2], rhs[3], rhs[4], rhs[5]], rtol=1e-9, atol=1e-13)
    # proj(K̃_s) = x_W x_s in the closure: its velocity x_W dx_s + x_s dx_W
    x_s, x_w = state.y[5], state.y[6]
    np.testing.assert_allclose(vel.kt_s, x_w * rhs[5] + x_s * rhs[6], rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("point", BLOCK_POINTS)
def test_reduced_gradients_are_the_projected_effective_gradients(point, exact_batch):
    """g_α and γ_α (with T = L + 1, the specials and the <eos> key) = proj of ∂𝓛/∂M and ∂𝓛/∂A."""
    L, V = L_S, V_S
    m = _block_model(L, V, *point)
    state = measure_seq2seq(m, L, V)
    G, Gamma = effective_gradients(m, exact_batch)
    gr = reduced_gradients(state.y[0], state.y[1], state.y[7], L, V, omega=state.omega)
    np.testing.assert_allclose([proj(G, V), proj(Gamma, L)], [gr.g_alpha, gr.gamma_alpha], rtol=1e-9, atol=1e-14)
    # Dropping the normalisation over T = L + 1 targets or the special classes breaks the match.
    wrong = reduced_gradients(state.y[0], state.y[1], state.y[7], L, V, omega=state.omega,
                              config=SEQ2SEQ._replace(extra_targets=0, specials=0))
    assert abs(wrong.g_alpha - proj(G, V)) > 1e-3 * abs(proj(G, V))


def test_measure_recovers_a_symmetric_point():
    L, V = L_S, V_S
    e1, e2, w1, w2, kt, ks, wa, gap = BLOCK_POINTS[1]
    m = _block_model(L, V, e1, e2, w1, w2, kt, ks, wa, gap)
    st = measure_seq2seq(m, L, V)
    M = np.full((V, V), (w1 + w2 * V) * e2 + w2 * e1)
    M += w1 * e1 * np.eye(V)
    np.testing.assert_allclose(effective_ktiw(m)[:V, :V], M, atol=1e-12)
    np.testing.assert_allclose(st.y[:7], [w1 * e1, np.sqrt(kt * ks) * wa, w1 ** 2, e1 ** 2, kt, ks, wa ** 2],
                               rtol=1e-12)
    a_e = 1.0 / (np.exp(st.y[1]) + L)
    np.testing.assert_allclose(st.y[7], gap - M[0, 1] * (1 - a_e), rtol=1e-12)
    np.testing.assert_allclose(st.omega, M[0, 1], rtol=1e-12)
    A = effective_scores(m)
    assert A[L, L] == pytest.approx(40.0) and np.all(A[:L, L] == 0)


def test_model_velocities_match_finite_differences():
    """The chain-rule projections equal the derivative of the projections along −∇ (random init)."""
    L, V = 4, 7
    m, task = build_copy_model(L, V, model="seq2seq", dim=12, seed=3)
    batch = task.sample(np.random.default_rng(np.random.SeedSequence(11)), 64)
    _, grads = m.loss_and_grads(batch)
    vel = model_velocities(m, grads, L, V)
    base = {k: v.copy() for k, v in m.params.items()}

    def quantities(eps):
        for k in base:
            m.params[k][...] = base[k] - eps * grads[k]
        kf = kernel_factors(m, L, V)
        p = m.params
        PsW = p["src_pos"] @ p["score"].T
        return np.array([proj(effective_ktiw(m), V), proj(effective_scores(m), L), kf.p_alpha, kf.q_alpha,
                         kf.x_t, kf.x_s, proj(PsW @ PsW.T, L)])

    eps = 1e-5
    fd = (quantities(eps) - quantities(-eps)) / (2 * eps)
    np.testing.assert_allclose(np.array(vel), fd, rtol=1e-6, atol=1e-10)


def _rate_model(delta_boost):
    """A randomly initialised seq2seq copy model (L = 20, V = 30, d = 64) with KTIW added along E."""
    L, V = 20, 30
    m, task = build_copy_model(L, V, model="seq2seq", dim=64, seed=4)
    d = m.dim
    m.params["out_W"][d:, :V] += delta_boost * m.params["embed"][:V].T
    batch = task.sample(np.random.default_rng(np.random.SeedSequence(12)), 1024)
    return m, batch, L, V


def _fd_velocity(m, batch, L, V):
    """Central finite difference of (δ, u) along −∇ (the batch-mean gradient)."""
    _, grads = m.loss_and_grads(batch)
    base = {k: v.copy() for k, v in m.params.items()}

    def projections(eps):
        for k in base:
            m.params[k][...] = base[k] - eps * grads[k]
        return np.array([proj(effective_ktiw(m), V), proj(effective_scores(m), L)])

    fd = (projections(1e-5) - projections(-1e-5)) / 2e-5
    for k in base:
        m.params[k][...] = base[k]
    return fd


@pytest.mark.parametrize("boost", [0.0, 1.0])
def test_ktiw_rate_factor_against_finite_differences_on_the_real_model(boost):
    """dδ/dτ (finite differences) = −(p_α + q_α) proj(∂𝓛/∂M) − ν(1 − Σp²) δ on a random model.

    At the default init (δ ≈ 0) the Gram factor p_α + q_α ≈ 2 alone explains the rate (the free
    model's factor 1 is 2× off); at δ ≈ 1 the decay ν through the shared decoder-input embedding
    is needed too (without it the prediction is > 30% too fast).
    """
    m, batch, L, V = _rate_model(boost)
    fd = _fd_velocity(m, batch, L, V)
    G, _ = effective_gradients(m, batch)
    st = measure_seq2seq(m, L, V)
    gram = -(st.y[2] + st.y[3]) * proj(G, V)
    # The RHS's decoder-input term: its dδ with σ minus its dδ without.
    args = dict(omega=st.omega, kappa_zeta=st.kappa_zeta, dim=st.dim)
    tilt = (reduced_seq2seq_rhs(0.0, st.y, L, V, **args)[0]
            - reduced_seq2seq_rhs(0.0, np.r_[st.y[:8], 0.0], L, V, **args)[0])
    assert fd[0] == pytest.approx(gram + tilt, rel=0.06)
    if boost == 0.0:
        assert abs(fd[0] / -proj(G, V) - 1.0) > 0.5
    else:
        assert st.y[0] > 0.8 and abs(gram / fd[0] - 1.0) > 0.3


def test_decoder_input_tilt_of_the_grams_against_the_real_model():
    """At the default init the Grams fed into the decoder-input logits shrink as the RHS says.

    dq_α/dτ = −2ν(1 − Σp²)q_α, dx_t/dτ = −2(σ/T)(1 − Σp²)x_t, dσ/dτ = −2(1 − Σp²)(x_t + q_α)σ/(C d),
    measured with the model's own batch gradient (the value/score terms are ≈ 0 at δ ≈ 0, u ≈ 0).
    """
    m, batch, L, V = _rate_model(0.0)
    _, grads = m.loss_and_grads(batch)
    vel = model_velocities(m, grads, L, V)
    st = measure_seq2seq(m, L, V)
    rhs = reduced_seq2seq_rhs(0.0, st.y, L, V, omega=st.omega, kappa_zeta=st.kappa_zeta, dim=st.dim)
    d = m.dim
    Wq, gWq = m.params["out_W"][:d], grads["out_W"][:d]
    dsigma = -2.0 * float(np.sum(Wq * gWq)) / ((V + 3) * d)
    assert vel.q_alpha == pytest.approx(rhs[3], rel=0.05)
    assert vel.x_t == pytest.approx(rhs[4], rel=0.05)
    assert dsigma == pytest.approx(rhs[8], rel=0.10)
    untilted = reduced_seq2seq_rhs(0.0, np.r_[st.y[:8], 0.0], L, V, omega=st.omega, kappa_zeta=st.kappa_zeta)
    assert abs(untilted[4]) < 0.1 * abs(vel.x_t) and abs(untilted[3]) < 0.2 * abs(vel.q_alpha)


def test_attention_rate_factor_against_finite_differences_on_the_real_model():
    """du/dτ / (−proj ∂𝓛/∂A) = λ_u ≈ 3 at a point with KTIW (δ ≈ 2, so that γ_α is not just noise)."""
    m, batch, L, V = _rate_model(2.0)
    fd = _fd_velocity(m, batch, L, V)
    _, Gamma = effective_gradients(m, batch)
    kf = kernel_factors(m, L, V)
    rate = -fd[1] / proj(Gamma, L)
    assert proj(effective_ktiw(m), V) > 1.5
    assert rate == pytest.approx(kf.lam_u, rel=0.05)
    assert abs(rate - 1.0) > 1.0


# ------------------------------------------------------------------------------------------------
# The free limits
# ------------------------------------------------------------------------------------------------

FREE_POINTS = [(0.4, -0.1, 0.3, -0.2, 0.5, 0.1, 0.6, -0.1), (2.0, 0.5, 1.5, 0.0, 2.0, 0.3, 1.0, 0.2),
               (-1.0, 0.2, -0.5, 0.4, 1.0, 0.0, 1.0, 0.0)]


@pytest.mark.parametrize("V", [6, 9])
@pytest.mark.parametrize("y8", FREE_POINTS)
def test_free_limits_agree_with_analysis_reduced(V, y8):
    L = 6
    m_d, m_o, a_d, a_o, p_d, p_o, q_d, q_o = y8
    ref = reduced.reduced_rhs(0.0, np.array(y8), L, V, factorised=True)
    y = np.array([m_d - m_o, a_d - a_o, p_d - p_o, q_d - q_o, 1.0, 1.0, 0.0, 0.0, 0.0])
    out = reduced_seq2seq_rhs(0.0, y, L, V, config=FACTORISED)
    np.testing.assert_allclose(out[:4], [ref[0] - ref[1], ref[2] - ref[3], ref[4] - ref[5], ref[6] - ref[7]],
                               rtol=1e-10, atol=1e-15)
    ref4 = reduced.reduced_rhs(0.0, np.array(y8[:4]), L, V)
    out = reduced_seq2seq_rhs(0.0, y, L, V, config=FREE)
    np.testing.assert_allclose(out[:2], [ref4[0] - ref4[1], ref4[2] - ref4[3]], rtol=1e-10, atol=1e-15)


def test_free_factorised_time_to_learn_matches_analysis_reduced():
    L, V = 8, 12
    model = FreeAttentionCopyModel(L, V, factorised=True, init_scale=0.3, rng=np.random.default_rng(2))
    st = measure_free(model)
    ours = time_to_learn_seq2seq(L, V, st)
    theirs = reduced.time_to_learn(L, V, model, factorised=True)
    assert np.isfinite(ours) and ours == pytest.approx(theirs, rel=1e-6)


# ------------------------------------------------------------------------------------------------
# Integration, the corrected rate, validation
# ------------------------------------------------------------------------------------------------

def test_integration_and_time_to_learn_agree_and_the_rate_factors_speed_learning():
    L, V = 40, 60
    m, _ = build_copy_model(L, V, model="seq2seq", dim=64, seed=0)
    st = measure_seq2seq(m, L, V)
    t = time_to_learn_seq2seq(L, V, st)
    traj = integrate_reduced_seq2seq(L, V, st, np.array([0.0, 0.99 * t, 1.01 * t]))
    assert traj.prob_correct[1] < 0.5 < traj.prob_correct[2]
    # Without the decoder-input decay (ν = 0) the Gram balance (p_α + q_α)² − 4δ² is conserved.
    balanced = integrate_reduced_seq2seq(L, V, st._replace(y=np.r_[st.y[:8], 0.0]), np.linspace(0.0, 2 * t, 5))
    bal = balanced.ktiw_rate ** 2 - 4 * balanced.delta ** 2
    assert balanced.delta[-1] > 5.0
    np.testing.assert_allclose(bal, bal[0], rtol=1e-6)
    # The same start with the free model's rates (1 and 1) learns ~3× later.
    free_like = st._replace(config=SEQ2SEQ._replace(ktiw="free", attention="free"))
    assert time_to_learn_seq2seq(L, V, free_like) > 2.0 * t


def test_validation_errors_name_the_argument():
    L, V = 4, 6
    m = Seq2SeqAttention(V + 3, V + 3, L + 1, L + 1, dim=8, heads=2, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="one head"):
        measure_seq2seq(m, L, V)
    with pytest.raises(TypeError, match="Seq2SeqAttention"):
        measure_seq2seq(object(), L, V)
    m1 = Seq2SeqAttention(V + 3, V + 3, L + 1, L + 1, dim=8, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="CopyTask"):
        measure_seq2seq(m1, L + 1, V)
    with pytest.raises(ValueError, match="y must have shape"):
        reduced_seq2seq_rhs(0.0, np.zeros(8), L, V)
    with pytest.raises(TypeError, match="ReducedState"):
        time_to_learn_seq2seq(L, V, np.zeros(9))
    with pytest.raises(ValueError, match="V must be >= L"):
        reduced_gradients(0.0, 0.0, 0.0, 5, 4)


# --------------------------------------------------------------------------------------------------
# Permutations (V = L): a saddle at δ = u = 0, and the branch a seed takes
# --------------------------------------------------------------------------------------------------

def _saddle(L: int, d: int, seed: int):
    """The measured start of a permutation model, its (δ, u) Jacobian at δ = u = 0 and the flow."""
    net, _ = build_copy_model(L, L, model="seq2seq", dim=d, seed=seed)
    start = measure_seq2seq(net, L, L)

    def flow(y):
        return reduced_seq2seq_rhs(0.0, y, L, L, omega=start.omega, kappa_zeta=start.kappa_zeta, dim=start.dim,
                                   config=start.config)
    at = start.y.copy()
    at[:2] = 0.0
    J = np.zeros((2, 2))
    h = 1e-7
    for j in range(2):
        up, down = at.copy(), at.copy()
        up[j] += h
        down[j] -= h
        J[:, j] = (flow(up)[:2] - flow(down)[:2]) / (2 * h)
    return start, at, flow, J


@pytest.mark.parametrize("L, d, seed", [(8, 16, 0), (10, 32, 1)])
def test_permutations_put_the_start_next_to_a_saddle_whose_unstable_side_decides_the_branch(L, d, seed):
    """At V = L the bag of words carries nothing (1/L − 1/V = 0): δ = u = 0 is a fixed point of the
    (δ, u) flow, with one unstable and one stable direction (dδ ≈ a u, du ≈ b δ near it). The sign of
    the start along the unstable (left) eigenvector decides the branch: on the + side the model
    learns directly, on the − side it first runs the wrong way and learns much later."""
    start, at, flow, J = _saddle(L, d, seed)
    assert np.max(np.abs(flow(at)[:2])) < 1e-12
    eig, left = np.linalg.eig(J.T)
    assert np.sum(eig.real > 0) == 1 and np.sum(eig.real < 0) == 1 and np.all(np.abs(eig.imag) < 1e-15)
    assert J[0, 1] > 0 and J[1, 0] > 0          # δ feeds u and u feeds δ
    w = left[:, np.argmax(eig.real)].real
    w *= np.sign(w[0])
    assert np.all(w > 0)                          # the learning side is δ and u both up
    times = {}
    for side in (+1, -1):
        y = at.copy()
        y[:2] = side * 1e-3 * w
        times[side] = time_to_learn_seq2seq(L, L, start._replace(y=y))
    assert np.isfinite(times[1]) and times[1] < 0.8 * times[-1]
    # Closer to the separatrix is slower on the learning side (the escape grows from the projection).
    y = at.copy()
    y[:2] = 1e-4 * w
    assert time_to_learn_seq2seq(L, L, start._replace(y=y)) > times[1]
