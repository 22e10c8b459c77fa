"""Reduced gradient-flow dynamics of the *parameterised* copy models (derivation: docs/REDUCED_DYNAMICS.md).

:mod:`analysis.reduced` integrates the flow of the free-parameter copy model, whose KTIW matrix M
and attention logits A are their own parameters. In the factorised free model (``M = Wₒ Eᵀ``) and
in single-head :class:`~miniattn.models.seq2seq.Seq2SeqAttention` the same order parameters move
at rates set by the Gram matrices (tangent kernels) of the factors. For the seq2seq model on the
copy task with specials (C = V + 3 ids, T = S = L + 1 positions, ``<eos>`` last)::

    effective KTIW       M = W_cᵀ Eᵀ                  (C, C)   W_c = out_W[d:], E = embed
    effective scores     A = P_tgt W_a P_srcᵀ         (T, S)
    δ = proj(M[:V, :V]),  u = proj(A[:L, :L]),   proj(X) = mean diag − mean off-diagonal

and gradient flow moves them as (``G = ∂𝓛/∂M``, ``Γ = ∂𝓛/∂A``, exact for the value and score
paths)::

    dM/dτ = −(G Q + P G),                      Q = E Eᵀ,  P = W_cᵀ W_c
    dA/dτ = −(Γ K̃_s + K_t Γ K_s + K̃_t Γ),     K_t = P_tgt P_tgtᵀ, K_s = P_src P_srcᵀ,
                                               K̃_s = P_src W_aᵀ W_a P_srcᵀ, K̃_t = P_tgt W_a W_aᵀ P_tgtᵀ

At a symmetric point ``G`` and ``Γ`` have diagonal-minus-off-diagonal parts ``g_α`` and ``γ_α``
(functions of δ, u and the special-class logit ζ, :func:`reduced_gradients`), and the reduced flow
is (state ``y`` of :func:`reduced_seq2seq_rhs`; s = 1 − Σ_k p_k², ν = (L/(T V)) σ)::

    dδ/dτ   = −(p_α + q_α) g_α − ν s δ
    du/dτ   = −λ_u γ_α,   λ_u = x_W x_s + x_t x_s + x_W x_t
    dp_α/dτ = −2 g_α δ,   dq_α/dτ = −2 g_α δ − 2 ν s q_α
    dx_t/dτ = −2 γ_α u − 2 (σ/T) s x_t,   dx_s/dτ = dx_W/dτ = −2 γ_α u
    dζ/dτ   = −κ_ζ (L/T) p_s (1 + n_s/V),  dσ/dτ = −2 s (x_t + q_α) σ/(C d)

with T = L + 1 output positions in the loss's mean, n_s = 3 special output classes and
σ = |W_q|²_F/(C d) the strength of the decoder-input logits ``q_t W_q``, whose gradient (through
the shared embedding and P_tgt) pulls δ, q_α and x_t down. The free models are the special cases
``ktiw="free"`` (rate 1) and ``attention="free"`` (λ_u = 1), T = L, no ``<eos>`` key, n_s = 0,
σ = 0; the factorised free model is ``ktiw="product"``, ``attention="free"``.

The initial state is measured from the model's effective parameters (:func:`measure_seq2seq`,
:func:`measure_free`), not inverted from a probe.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.integrate import solve_ivp

from miniattn._validate import float_array, integer
from miniattn.batch import Seq2SeqBatch
from miniattn.models.free_copy import FreeAttentionCopyModel
from miniattn.models.seq2seq import Seq2SeqAttention

__all__ = ["ReducedConfig", "SEQ2SEQ", "FREE", "FACTORISED", "N_SPECIAL", "STATE_NAMES", "ReducedState",
           "KernelFactors", "ReducedGradients", "Velocities", "ReducedSeq2SeqTrajectory",
           "proj", "effective_ktiw", "effective_scores", "kernel_factors", "measure_seq2seq", "measure_free",
           "reduced_gradients", "reduced_seq2seq_rhs", "integrate_reduced_seq2seq", "time_to_learn_seq2seq",
           "copy_batch_with_specials", "effective_gradients", "model_velocities", "kernel_velocities"]

#: Special output classes of the copy task with specials (<pad>, <bos>, <eos>).
N_SPECIAL = 3
DEFAULT_RTOL = 1e-9
DEFAULT_ATOL = 1e-11
STATE_NAMES = ("delta", "u", "p_alpha", "q_alpha", "x_t", "x_s", "x_w", "zeta", "sigma")


class ReducedConfig(NamedTuple):
    """Which parameterisation the reduced flow describes.

    ``ktiw``: ``"free"`` (M a parameter: rate 1) or ``"product"`` (M = W Eᵀ: rate p_α + q_α).
    ``attention``: ``"free"`` (A a parameter: λ_u = 1) or ``"product"`` (A = P_t W_a P_sᵀ).
    ``eos_key``: the source ends with an ``<eos>`` key (S = L + 1) that sits at the off-diagonal logit.
    ``specials``: number n_s of special output classes at the content positions (logit ζ).
    ``extra_targets``: output positions beyond the L content ones in the loss's mean (T = L + extra).
    """

    ktiw: str = "product"
    attention: str = "product"
    eos_key: bool = True
    specials: int = N_SPECIAL
    extra_targets: int = 1


#: Single-head Seq2SeqAttention on CopyTask(specials=True).
SEQ2SEQ = ReducedConfig()
#: The plain free copy model (analysis.reduced).
FREE = ReducedConfig("free", "free", False, 0, 0)
#: FreeAttentionCopyModel(factorised=True).
FACTORISED = ReducedConfig("product", "free", False, 0, 0)


def _config(config) -> ReducedConfig:
    if not isinstance(config, ReducedConfig):
        raise TypeError(f"config must be a ReducedConfig, got {type(config).__name__}")
    if config.ktiw not in ("free", "product") or config.attention not in ("free", "product"):
        raise ValueError(f"config.ktiw and config.attention must be 'free' or 'product', got {config}")
    integer("config.specials", config.specials, 0)
    integer("config.extra_targets", config.extra_targets, 0)
    return config


def _sizes(L, V) -> tuple[int, int]:
    L, V = integer("L", L, 2), integer("V", V, 2)
    if V < L:
        raise ValueError(f"V must be >= L = {L} (L distinct tokens), got {V}")
    return L, V


# --------------------------------------------------------------------------------------------------
# Effective parameters and their projections
# --------------------------------------------------------------------------------------------------

def proj(X: np.ndarray, n: int) -> float:
    """``mean diag − mean off-diagonal`` of the leading (n, n) block of X (the α-part of x_α I + x_β J).

    Parameters
    ----------
    X : array (≥ n, ≥ n)
    n : int ≥ 2
    """
    n = integer("n", n, 2)
    X = float_array("X", X, ndim=2)
    if X.shape[0] < n or X.shape[1] < n:
        raise ValueError(f"X must be at least ({n}, {n}), got {X.shape}")
    B = X[:n, :n]
    d = float(np.trace(B)) / n
    return d - (float(B.sum()) - d * n) / (n * (n - 1))


def _check_seq2seq(model, L: int, V: int) -> None:
    if not isinstance(model, Seq2SeqAttention):
        raise TypeError(f"model must be a Seq2SeqAttention, got {type(model).__name__}")
    if model.heads != 1 or model.value_projection or not model.shared_embeddings:
        raise ValueError("model must have one head, no value projection and shared embeddings "
                         f"(got heads={model.heads}, value_projection={model.value_projection}, "
                         f"shared_embeddings={model.shared_embeddings})")
    if model.target_vocab != V + N_SPECIAL or model.source_length != L + 1 or model.target_length != L + 1:
        raise ValueError(f"model must be built for CopyTask({L}, {V}) with specials (vocab {V + N_SPECIAL}, "
                         f"lengths {L + 1}); got vocab {model.target_vocab}, lengths "
                         f"{model.source_length}, {model.target_length}")


def effective_ktiw(model: Seq2SeqAttention) -> np.ndarray:
    """``M = W_cᵀ Eᵀ`` (C, C): ``M[c, v]`` = logit of class c added by a context equal to ``E[v]``.

    Parameters
    ----------
    model : Seq2SeqAttention
        Single head, shared embeddings: ``W_c = out_W[d:]`` (d, C) reads the context, ``E`` (C, d).

    Returns
    -------
    M : array (C, C)
    """
    d = model.dim
    return model.params["out_W"][d:].T @ model.params["embed"].T


def effective_scores(model: Seq2SeqAttention) -> np.ndarray:
    """``A = P_tgt W_a P_srcᵀ``: the positional part of the bilinear score ``q_t W_a h_sᵀ``.

    Parameters
    ----------
    model : Seq2SeqAttention
        Single head: ``tgt_pos`` (T, d), ``score`` (d, d), ``src_pos`` (S, d).

    Returns
    -------
    A : array (T, S)
    """
    p = model.params
    return p["tgt_pos"] @ p["score"] @ p["src_pos"].T


class KernelFactors(NamedTuple):
    """Gram (tangent-kernel) factors of the seq2seq parameterisation, projected (see :func:`kernel_factors`)."""

    p_alpha: float    #: proj(W_cᵀ W_c) over the content classes
    q_alpha: float    #: proj(E Eᵀ) over the content tokens
    x_t: float        #: proj(P_tgt P_tgtᵀ) over the content positions
    x_s: float        #: proj(P_src P_srcᵀ)
    x_w: float        #: score-matrix factor, chosen so that λ_u below is exact
    lam_u: float      #: proj(K̃_s) + proj(K_t[:, :L] K_s[:L, :]) + proj(K̃_t): the attention rate


def kernel_factors(model: Seq2SeqAttention, L: int, V: int) -> KernelFactors:
    """The rate factors of δ and u measured from a model's parameters.

    ``dδ/dτ = −(p_α + q_α) g_α`` and ``du/dτ = −λ_u γ_α`` at a symmetric point, with
    ``λ_u = proj(K̃_s) + proj(K_t K_s) + proj(K̃_t)``; the scalar closure writes
    ``λ_u = x_W x_s + x_t x_s + x_W x_t`` and ``x_W`` is solved from the measured λ_u.

    Parameters
    ----------
    model : Seq2SeqAttention
        Built for ``CopyTask(L, V)`` with specials (C = V + 3, T = S = L + 1), one head.
    L, V : int
        Content length and vocabulary, 2 ≤ L ≤ V.

    Returns
    -------
    KernelFactors
    """
    L, V = _sizes(L, V)
    _check_seq2seq(model, L, V)
    p, d = model.params, model.dim
    Wc, E, Pt, Ps, Wa = p["out_W"][d:], p["embed"], p["tgt_pos"], p["src_pos"], p["score"]
    Kt, Ks = Pt @ Pt.T, Ps @ Ps.T
    PsW, PtW = Ps @ Wa.T, Pt @ Wa
    lam = proj(PsW @ PsW.T, L) + proj(Kt[:, :L] @ Ks[:L, :], L) + proj(PtW @ PtW.T, L)
    x_t, x_s = proj(Kt, L), proj(Ks, L)
    x_w = (lam - x_t * x_s) / (x_t + x_s)
    return KernelFactors(proj(Wc.T @ Wc, V), proj(E @ E.T, V), x_t, x_s, x_w, lam)


class ReducedState(NamedTuple):
    """Initial state of the reduced flow measured from a model, and the constants of its right-hand side."""

    y: np.ndarray          #: (9,) state, order :data:`STATE_NAMES`
    omega: float           #: lift of content over special classes by a content key, minus the <eos> key's
    kappa_zeta: float      #: rate factor of the special-class logit ζ (bias + output weights)
    config: ReducedConfig
    dim: int = 0           #: d, for the decay of σ = |W_q|²/(C d) (0: σ held constant)


def _attention(u: float, L: int, eos_key: bool) -> tuple[float, float, float]:
    """(α_d, α_o, α_e) for the logit gap u: L − 1 other content keys (and the <eos> key) at a_o."""
    n_off = (L - 1) + (1 if eos_key else 0)
    log_norm = np.logaddexp(u, np.log(float(n_off)))
    a_d, a_o = float(np.exp(u - log_norm)), float(np.exp(-log_norm))
    return a_d, a_o, (a_o if eos_key else 0.0)


def measure_seq2seq(model: Seq2SeqAttention, L: int, V: int) -> ReducedState:
    """Order parameters of a single-head seq2seq copy model, from its effective parameters.

    δ = proj(M[:V, :V]) and u = proj(A[:L, :L]) (:func:`effective_ktiw`, :func:`effective_scores`),
    the rate factors of :func:`kernel_factors`, and the special-class logit ζ = mean special − mean
    absent-content logit at a content position, with the decoder input, the attention and the
    context replaced by their means (attention α_d, α_o from u, the <eos> key at α_o)::

        β_k = b_k + (1 − α_e) mean_{v ≠ k} M[k, v] + α_e M[k, eos] + q̄ W_q[:, k] + h̄_pos W_c[:, k]

    q̄ = mean content-position decoder state, h̄_pos = mean positional value. ``κ_ζ = 1 + |f̄|²``
    with f̄ = [q̄ ; c̄] the mean feature of the output layer (bias plus output-weight kernel), and
    ``σ = |W_q|²_F/(C d)``.

    Parameters
    ----------
    model : Seq2SeqAttention
        Single head, shared embeddings, no value projection, built for ``CopyTask(L, V)`` with specials.
    L, V : int
        2 ≤ L ≤ V.

    Returns
    -------
    ReducedState
        ``y = (δ, u, p_α, q_α, x_t, x_s, x_W, ζ, σ)``, ω, κ_ζ, :data:`SEQ2SEQ`, d.
    """
    L, V = _sizes(L, V)
    _check_seq2seq(model, L, V)
    p, d = model.params, model.dim
    M, A = effective_ktiw(model), effective_scores(model)
    delta, u = proj(M, V), proj(A, L)
    kf = kernel_factors(model, L, V)
    alpha_d, alpha_o, alpha_e = _attention(u, L, True)
    E, Wq, Wc, b = p["embed"], p["out_W"][:d], p["out_W"][d:], p["out_b"]
    eos, bos = V + 2, V + 1
    content_mean = E[:V].mean(axis=0)
    q_bar = p["tgt_pos"][:L].mean(axis=0) + (E[bos] + (L - 1) * content_mean) / L
    pos_value = (1.0 - alpha_e) * p["src_pos"][:L].mean(axis=0) + alpha_e * p["src_pos"][L]
    c_bar = (1.0 - alpha_e) * content_mean + alpha_e * E[eos] + pos_value
    C = V + N_SPECIAL
    # mean over the content keys of M[k, v], excluding k's own column for content classes
    col_mean = M[:, :V].sum(axis=1)
    col_mean[:V] -= np.diag(M)[:V]
    col_mean /= np.where(np.arange(C) < V, V - 1, V)
    base = b + (1.0 - alpha_e) * col_mean + alpha_e * M[:, eos] + q_bar @ Wq + pos_value @ Wc
    zeta = float(base[V:].mean() - base[:V].mean())
    m_off = (float(M[:V, :V].sum()) - float(np.trace(M[:V, :V]))) / (V * (V - 1))
    omega = float(np.mean((m_off - M[V:, :V].mean(axis=1)) - (M[:V, eos].mean() - M[V:, eos])))
    f_bar = np.concatenate([q_bar, c_bar])
    # σ = |W_q|²_F/(C d): the variance, per unit squared feature norm, of the decoder-input logits q W_q.
    sigma = float(np.sum(Wq * Wq)) / (C * d)
    y = np.array([delta, u, kf.p_alpha, kf.q_alpha, kf.x_t, kf.x_s, kf.x_w, zeta, sigma])
    return ReducedState(y, omega, 1.0 + float(f_bar @ f_bar), SEQ2SEQ, d)


def measure_free(model: FreeAttentionCopyModel) -> ReducedState:
    """Order parameters of a free copy model (plain or factorised): δ, u and, factorised, p_α, q_α.

    Parameters
    ----------
    model : FreeAttentionCopyModel
        Not the uniform twin. δ = proj(M or Wₒ Eᵀ), u = proj(A), p_α = proj(Wₒ Wₒᵀ), q_α = proj(E Eᵀ).

    Returns
    -------
    ReducedState
        With :data:`FREE` or :data:`FACTORISED`; the attention factors are 1 and σ = 0.
    """
    if not isinstance(model, FreeAttentionCopyModel):
        raise TypeError(f"model must be a FreeAttentionCopyModel, got {type(model).__name__}")
    if model.uniform:
        raise ValueError("the uniform twin has no attention order parameter; use analysis.reduced")
    V, L = model.vocab, model.length
    _sizes(L, V)
    M, A = model.ktiw_matrix(), model.attention_logits()
    if model.factorised:
        Wo, E = model.params["Wo"], model.params["E"]
        p_a, q_a, config = proj(Wo @ Wo.T, V), proj(E @ E.T, V), FACTORISED
    else:
        p_a, q_a, config = 0.5, 0.5, FREE
    y = np.array([proj(M, V), proj(A, L), p_a, q_a, 1.0, 1.0, 0.0, 0.0, 0.0])
    return ReducedState(y, 0.0, 0.0, config)


# --------------------------------------------------------------------------------------------------
# The reduced gradients and the right-hand side
# --------------------------------------------------------------------------------------------------

class ReducedGradients(NamedTuple):
    """Diagonal-minus-off-diagonal parts of ∂𝓛/∂M and ∂𝓛/∂A and the probabilities behind them."""

    g_alpha: float
    gamma_alpha: float
    p_correct: float
    p_other: float
    p_absent: float
    p_special: float   #: probability of each special class at a content position
    loss: float        #: content-position cross-entropy
    alpha_d: float


def _probs(delta, alpha_d, alpha_o, zeta, L, V, n_s):
    """Probabilities of gold, each other source word, each absent word, each special class."""
    logits = [delta * alpha_d, delta * alpha_o, 0.0, zeta]
    counts = [1, L - 1, V - L, n_s]
    shift = max(z for z, n in zip(logits, counts) if n > 0)
    e = [np.exp(z - shift) if n > 0 else 0.0 for z, n in zip(logits, counts)]
    Z = sum(n * x for n, x in zip(counts, e))
    pc, po, pn, ps = (x / Z for x in e)
    return pc, po, pn, ps, float(-(logits[0] - shift) + np.log(Z))


def reduced_gradients(delta: float, u: float, zeta: float, L: int, V: int, *, omega: float = 0.0,
                      config: ReducedConfig = SEQ2SEQ) -> ReducedGradients:
    """``g_α`` (KTIW) and ``γ_α`` (attention) of the expected loss at a symmetric point.

    With content-position probabilities p_c (gold), p_o (other source word), p_n (absent), p_s
    (each of n_s special classes, logit ζ), T = L + extra output positions and α_e the <eos> key::

        ℓ_δ = −α_d (1 − p_c) + (L − 1) α_o p_o,        ℓ_α = δ (p_c − 1 − p_o)
        g_α = (L/T) [ℓ_δ/(V − 1) + n_s p_s (1 − α_e)/(V(V − 1))]
        γ_α = (1/T) [α_d ℓ_α (1 − α_d + α_o) + α_e ρ (α_d − α_o)],   ρ = δ p_o − n_s p_s ω

    Parameters
    ----------
    delta, u, zeta : float
        KTIW margin, diagonal score gap, special-class logit (relative to an absent content word).
    L, V : int
    omega : float
        Content-over-special lift of a content key minus that of the <eos> key.
    config : ReducedConfig
    """
    L, V = _sizes(L, V)
    config = _config(config)
    n_s, T = config.specials, L + config.extra_targets
    a_d, a_o, a_e = _attention(float(u), L, config.eos_key)
    pc, po, pn, ps, loss = _probs(float(delta), a_d, a_o, float(zeta), L, V, n_s)
    # ℓ_δ without cancellation: 1 − p_c = (L−1)p_o + (V−L)p_n + n_s p_s.
    l_delta = -a_d * ((L - 1) * po + (V - L) * pn + n_s * ps) + (L - 1) * a_o * po
    l_alpha = float(delta) * (pc - 1.0 - po)
    g = (L / T) * (l_delta / (V - 1) + n_s * ps * (1.0 - a_e) / (V * (V - 1)))
    rho = float(delta) * po - n_s * ps * float(omega)
    gamma = (a_d * l_alpha * (1.0 - a_d + a_o) + a_e * rho * (a_d - a_o)) / T
    return ReducedGradients(g, gamma, pc, po, pn, ps, loss, a_d)


def reduced_seq2seq_rhs(t, y, L: int, V: int, *, omega: float = 0.0, kappa_zeta: float = 1.0,
                        dim: int = 0, config: ReducedConfig = SEQ2SEQ) -> np.ndarray:
    """Right-hand side of the reduced flow (module docstring).

    Parameters
    ----------
    t : float
        Unused (autonomous flow; present for ``solve_ivp``).
    y : array (9,)
        ``(δ, u, p_α, q_α, x_t, x_s, x_W, ζ, σ)``.
    L, V : int
    omega, kappa_zeta : float
        Constants of :class:`ReducedState`.
    dim : int
        d (σ decays only when given; 0 holds σ constant).
    config : ReducedConfig

    Returns
    -------
    dy/dτ : array (9,)
        With s = 1 − Σ_k p_k² (over the content-position classes) and ν = (L/(T V)) σ::

            dδ   = −q̃ g_α − ν s δ          q̃ = p_α + q_α (1 for ktiw="free")
            du   = −λ_u γ_α                 λ_u = x_W x_s + x_t x_s + x_W x_t (1 for attention="free")
            dp_α = −2 g_α δ,     dq_α = −2 g_α δ − 2 ν s q_α
            dx_t = −2 γ_α u − 2 (σ/T) s x_t,     dx_s = dx_W = −2 γ_α u
            dζ   = −κ_ζ (L/T) p_s (1 + n_s/V),   dσ = −2 s (x_t + q_α) σ / (C d)
    """
    y = float_array("y", y, ndim=1)
    if y.shape != (9,):
        raise ValueError(f"y must have shape (9,), got {y.shape}")
    config = _config(config)
    dim = integer("dim", dim, 0)
    delta, u, p_a, q_a, x_t, x_s, x_w, zeta, sigma = (float(v) for v in y)
    gr = reduced_gradients(delta, u, zeta, L, V, omega=omega, config=config)
    out = np.zeros(9)
    if config.ktiw == "product":
        out[0] = -(p_a + q_a) * gr.g_alpha
        out[2] = out[3] = -2.0 * gr.g_alpha * delta
    else:
        out[0] = -gr.g_alpha
    if config.attention == "product":
        out[1] = -(x_w * x_s + x_t * x_s + x_w * x_t) * gr.gamma_alpha
        out[4] = out[5] = out[6] = -2.0 * gr.gamma_alpha * u
    else:
        out[1] = -gr.gamma_alpha
    if sigma:
        # The decoder-input logits q_t W_q tilt p; their gradient pulls every factor feeding them
        # (E as decoder input: δ and q_α; P_tgt: x_t) and W_q itself toward smaller products.
        n_s, T = config.specials, L + config.extra_targets
        spread = 1.0 - (gr.p_correct ** 2 + (L - 1) * gr.p_other ** 2 + (V - L) * gr.p_absent ** 2
                        + n_s * gr.p_special ** 2)
        nu = (L / (T * V)) * sigma
        out[0] -= nu * spread * delta
        out[3] -= 2.0 * nu * spread * q_a
        out[4] -= 2.0 * (sigma / T) * spread * x_t
        if dim:
            out[8] = -2.0 * spread * (x_t + q_a) * sigma / ((V + n_s) * dim)
    n_s = config.specials
    if n_s:
        out[7] = -kappa_zeta * (L / (L + config.extra_targets)) * gr.p_special * (1.0 + n_s / V)
    return out


# --------------------------------------------------------------------------------------------------
# Integration and time to learn
# --------------------------------------------------------------------------------------------------

class ReducedSeq2SeqTrajectory(NamedTuple):
    """Reduced flow at the requested times (arrays over t)."""

    t: np.ndarray
    states: np.ndarray        #: (n, 9)
    delta: np.ndarray
    alpha_d: np.ndarray
    prob_correct: np.ndarray  #: content-position probability of the gold word
    ktiw_rate: np.ndarray     #: p_α + q_α (1 for a free M)
    attention_rate: np.ndarray  #: λ_u (1 for free A)


def _check_state(state) -> ReducedState:
    if not isinstance(state, ReducedState):
        raise TypeError(f"state must be a ReducedState (measure_seq2seq / measure_free), got {type(state).__name__}")
    y = float_array("state.y", state.y, ndim=1)
    if y.shape != (9,):
        raise ValueError(f"state.y must have shape (9,), got {y.shape}")
    _config(state.config)
    return state


def _rhs(state, L, V):
    return lambda t, y: reduced_seq2seq_rhs(t, y, L, V, omega=state.omega, kappa_zeta=state.kappa_zeta,
                                            dim=state.dim, config=state.config)


def _summary(t, states, L, V, state) -> ReducedSeq2SeqTrajectory:
    cfg = state.config
    grads = [reduced_gradients(s[0], s[1], s[7], L, V, omega=state.omega, config=cfg) for s in states]
    kt = states[:, 2] + states[:, 3] if cfg.ktiw == "product" else np.ones(len(states))
    x_t, x_s, x_w = states[:, 4], states[:, 5], states[:, 6]
    lam = x_w * x_s + x_t * x_s + x_w * x_t if cfg.attention == "product" else np.ones(len(states))
    return ReducedSeq2SeqTrajectory(np.asarray(t, dtype=np.float64), states, states[:, 0],
                                    np.array([g.alpha_d for g in grads]), np.array([g.p_correct for g in grads]),
                                    kt, lam)


def integrate_reduced_seq2seq(L: int, V: int, state: ReducedState, t_eval, *, rtol: float = DEFAULT_RTOL,
                              atol: float = DEFAULT_ATOL) -> ReducedSeq2SeqTrajectory:
    """Integrate the reduced flow with :func:`scipy.integrate.solve_ivp` (DOP853) from a measured state.

    Parameters
    ----------
    L, V : int
    state : ReducedState
    t_eval : array (n,)
        Non-decreasing times ≥ 0 on the clock τ = step·lr.
    """
    L, V = _sizes(L, V)
    state = _check_state(state)
    t_eval = float_array("t_eval", t_eval, ndim=1)
    if t_eval[0] < 0 or np.any(np.diff(t_eval) < 0):
        raise ValueError("t_eval must be non-negative and non-decreasing")
    if t_eval[-1] == 0.0:
        states = np.repeat(state.y[None], t_eval.size, axis=0)
    else:
        sol = solve_ivp(_rhs(state, L, V), (0.0, float(t_eval[-1])), state.y, method="DOP853", t_eval=t_eval,
                        rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"solve_ivp failed: {sol.message}")
        states = sol.y.T
    return _summary(t_eval, states, L, V, state)


def time_to_learn_seq2seq(L: int, V: int, state: ReducedState, *, threshold: float = 0.5,
                          t_max: float = 1e7) -> float:
    """First τ at which the content-position gold probability reaches ``threshold`` (ODE event).

    Parameters
    ----------
    L, V : int
    state : ReducedState
        The start (:func:`measure_seq2seq` or :func:`measure_free`).
    threshold : float in (0, 1)
        Default ½, as in E7.
    t_max : float
        Give up after this time.

    Returns
    -------
    float
        0 if the start is past the threshold, ``inf`` if it is not reached by ``t_max``.
    """
    L, V = _sizes(L, V)
    state = _check_state(state)
    threshold = float(threshold)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    if not (np.isfinite(t_max) and t_max > 0):
        raise ValueError(f"t_max must be a finite number > 0, got {t_max}")

    def margin(t, y):
        return reduced_gradients(y[0], y[1], y[7], L, V, omega=state.omega, config=state.config).p_correct - threshold

    if margin(0.0, state.y) >= 0:
        return 0.0
    margin.terminal, margin.direction = True, 1.0
    sol = solve_ivp(_rhs(state, L, V), (0.0, float(t_max)), state.y, method="DOP853", events=margin,
                    rtol=DEFAULT_RTOL, atol=DEFAULT_ATOL)
    if not sol.success:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    return float(sol.t_events[0][0]) if sol.t_events[0].size else float("inf")


# --------------------------------------------------------------------------------------------------
# Verification helpers: the model's own gradient projected on the order parameters
# --------------------------------------------------------------------------------------------------

def copy_batch_with_specials(content: np.ndarray, V: int) -> Seq2SeqBatch:
    """The CopyTask(specials=True) batch of given content rows (B, L): source ``x <eos>``, target_in ``<bos> x``.

    With the rows of :func:`analysis.simulation.enumerate_copy_batch` this is every copy input once,
    so batch means are exact expectations.
    """
    V = integer("V", V, 1)
    x = np.asarray(content)
    if x.dtype.kind not in "iu" or x.ndim != 2 or x.size == 0 or x.min() < 0 or x.max() >= V:
        raise ValueError(f"content must be a non-empty (B, L) integer array with ids in [0, {V})")
    B, L = x.shape
    eos, bos = np.full((B, 1), V + 2), np.full((B, 1), V + 1)
    src = np.concatenate([x, eos], axis=1).astype(np.int64)
    mask = np.ones((B, L + 1), dtype=bool)
    return Seq2SeqBatch(src, mask, np.concatenate([bos, x], axis=1).astype(np.int64), src.copy(), mask.copy(),
                        np.broadcast_to(np.arange(L + 1, dtype=np.int64), (B, L + 1)).copy())


class Velocities(NamedTuple):
    """d/dτ of the projected quantities (δ, u, p_α, q_α, x_t, x_s, proj K̃_s)."""

    delta: float
    u: float
    p_alpha: float
    q_alpha: float
    x_t: float
    x_s: float
    kt_s: float


def model_velocities(model: Seq2SeqAttention, grads: dict, L: int, V: int) -> Velocities:
    """Velocities of the projections under ``dθ/dτ = −grads`` (chain rule through every factor).

    ``dM = −(∇W_cᵀ Eᵀ + W_cᵀ ∇Eᵀ)``, ``dA = −(∇P_t W_a P_sᵀ + P_t ∇W_a P_sᵀ + P_t W_a ∇P_sᵀ)``, and
    the Gram matrices likewise; with ``grads`` from :meth:`Seq2SeqAttention.loss_and_grads` on every
    copy input this is the model's exact expected gradient flow.
    """
    L, V = _sizes(L, V)
    _check_seq2seq(model, L, V)
    p, d = model.params, model.dim
    if not isinstance(grads, dict) or any(k not in grads or np.shape(grads[k]) != p[k].shape for k in p):
        raise ValueError(f"grads must be a dict keyed and shaped like model.params ({sorted(p)})")
    Wc, E, Pt, Ps, Wa = p["out_W"][d:], p["embed"], p["tgt_pos"], p["src_pos"], p["score"]
    gWc, gE, gPt, gPs, gWa = grads["out_W"][d:], grads["embed"], grads["tgt_pos"], grads["src_pos"], grads["score"]
    dM = -(gWc.T @ E.T + Wc.T @ gE.T)
    dA = -(gPt @ Wa @ Ps.T + Pt @ gWa @ Ps.T + Pt @ Wa @ gPs.T)
    sym = lambda X, dX: -(dX @ X.T + X @ dX.T)   # d(X Xᵀ) along −dX
    PsW = Ps @ Wa.T
    dPsW = gPs @ Wa.T + Ps @ gWa.T
    return Velocities(proj(dM, V), proj(dA, L), proj(-(gWc.T @ Wc + Wc.T @ gWc), V), proj(sym(E, gE), V),
                      proj(sym(Pt, gPt), L), proj(sym(Ps, gPs), L), proj(sym(PsW, dPsW), L))


def effective_gradients(model: Seq2SeqAttention, batch: Seq2SeqBatch) -> tuple[np.ndarray, np.ndarray]:
    """``G = ∂𝓛/∂M`` (C, C) and ``Γ = ∂𝓛/∂A`` (T, S) of the batch-mean loss, from one forward pass.

    With ``dz = (p − onehot(y))/N`` (B, T, C) and α (B, T, S)::

        G[c, v] = Σ_{b,t,s: x_bs = v} α_bts dz_btc,     Γ[t, s] = Σ_b α_bts (r_bts − Σ_s' α_bts' r_bts'),
        r_bts = dz_bt · (h_bs W_c)
    """
    if not isinstance(model, Seq2SeqAttention) or model.heads != 1 or not model.shared_embeddings:
        raise ValueError("model must be a single-head Seq2SeqAttention with shared embeddings")
    if not isinstance(batch, Seq2SeqBatch):
        raise TypeError(f"batch must be a Seq2SeqBatch, got {type(batch).__name__}")
    out = model.forward(batch)
    p, d = model.params, model.dim
    C = model.target_vocab
    probs = np.exp(out.log_probs)
    y = np.asarray(batch.target_out)
    mask = np.asarray(batch.target_mask)
    dz = probs.copy()
    np.put_along_axis(dz, y[..., None], np.take_along_axis(dz, y[..., None], axis=-1) - 1.0, axis=-1)
    dz *= mask[..., None] / mask.sum()
    alpha = out.attention                                                    # (B, T, S)
    src = np.asarray(batch.source)
    dvalues = alpha.transpose(0, 2, 1) @ dz                                   # (B, S, C)
    G_t = np.zeros((model.source_vocab, C))
    np.add.at(G_t, src.reshape(-1), dvalues.reshape(-1, C))
    S = src.shape[1]
    h = p["embed"][src] + p["src_pos"][:S]                                    # (B, S, d)
    r = dz @ (h @ p["out_W"][d:]).transpose(0, 2, 1)                          # (B, T, S)
    Gamma = (alpha * (r - np.sum(alpha * r, axis=-1, keepdims=True))).sum(axis=0)
    return G_t.T, Gamma


def kernel_velocities(model: Seq2SeqAttention, G: np.ndarray, Gamma: np.ndarray, L: int, V: int) -> tuple[float, float]:
    """(dδ/dτ, du/dτ) of the value and score paths alone: ``−proj(G Q + P G)``, ``−proj(Γ K̃_s + K_t Γ K_s + K̃_t Γ)``.

    Parameters
    ----------
    model : Seq2SeqAttention
    G : array (C, C)
        ∂𝓛/∂M (:func:`effective_gradients`).
    Gamma : array (T, S)
        ∂𝓛/∂A.
    L, V : int

    Returns
    -------
    (float, float)
    """
    L, V = _sizes(L, V)
    _check_seq2seq(model, L, V)
    p, d = model.params, model.dim
    C = model.target_vocab
    G = float_array("G", G, ndim=2)
    Gamma = float_array("Gamma", Gamma, ndim=2)
    if G.shape != (C, C):
        raise ValueError(f"G must have shape ({C}, {C}), got {G.shape}")
    if Gamma.shape[0] > model.target_length or Gamma.shape[1] > model.source_length:
        raise ValueError(f"Gamma must be at most ({model.target_length}, {model.source_length}), got {Gamma.shape}")
    Wc, E, Pt, Ps, Wa = p["out_W"][d:], p["embed"], p["tgt_pos"], p["src_pos"], p["score"]
    T, S = Gamma.shape
    Pt, Ps = Pt[:T], Ps[:S]
    PsW, PtW = Ps @ Wa.T, Pt @ Wa
    dM = -(G @ (E @ E.T) + (Wc.T @ Wc) @ G)
    dA = -(Gamma @ (PsW @ PsW.T) + (Pt @ Pt.T) @ Gamma @ (Ps @ Ps.T) + (PtW @ PtW.T) @ Gamma)
    return proj(dM, V), proj(dA, L)
