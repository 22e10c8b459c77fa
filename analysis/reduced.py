"""Reduced gradient-flow dynamics of the free-parameter copy model (derivation: analysis/README.md, §2-§5).

On the copy task (source = L distinct tokens of V in random order, y_t = x_t), the expected loss is
invariant under relabelling the tokens (``M → P M Pᵀ``, ``b → P b``) and the positions
(``A → Q A Qᵀ``). At a point invariant under both — ``M = m_d I + m_o (J − I)``,
``A = a_d I + a_o (J − I)``, ``b`` constant — the expected per-token loss depends only on the KTIW
margin ``δ = m_d − m_o`` and the diagonal attention ``α_d = softmax`` weight of the aligned position::

    α_d = e^{a_d} / (e^{a_d} + (L − 1) e^{a_o}),       α_o = (1 − α_d)/(L − 1)
    ℓ(δ, α_d) = −δ α_d + log(e^{δ α_d} + (L − 1) e^{δ α_o} + (V − L))

and gradient flow of the *full* model keeps such points invariant. Each order parameter stands for
many entries (m_d for V, m_o for V(V − 1), a_d for L, a_o for L(L − 1)), and by symmetry each entry
receives ``1/count`` of the order parameter's partial derivative, so gradient flow in the model's
own parameters is (time τ = k·lr for SGD step k)::

    dm_d/dτ = −ℓ_δ / V                     dm_o/dτ = +ℓ_δ / (V (V − 1))
    da_d/dτ = −ℓ_α α_d(1 − α_d) / L        da_o/dτ = +ℓ_α α_d(1 − α_d) / (L (L − 1))

with ``ℓ_δ = ∂ℓ/∂δ`` and ``ℓ_α = ∂ℓ/∂α_d``; hence ``dδ/dτ = −ℓ_δ/(V − 1)`` and
``d(a_d − a_o)/dτ = −ℓ_α α_d(1 − α_d)/(L − 1)``.

Factorised ``M = Wₒ Eᵀ``: with ``G = ∂L/∂M = g_d I + g_o (J − I)``, ``P = Wₒ Wₒᵀ`` and
``Q = E Eᵀ``, gradient flow gives exactly ``dM/dτ = −(G Q + P G)``, ``dQ/dτ = −(Gᵀ M + Mᵀ G)``,
``dP/dτ = −(G Mᵀ + M Gᵀ)``; all three stay in the invariant class, which closes the system in
(m_d, m_o, p_d, p_o, q_d, q_o, a_d, a_o).

The simulations this ODE is compared with (and the symmetric points and exact-enumeration batch
that check the derivation) are in :mod:`analysis.simulation`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.integrate import solve_ivp

from miniattn._validate import integer
from miniattn.models.free_copy import FreeAttentionCopyModel

__all__ = [
    "OrderParameters", "ReducedTrajectory", "EscapeFit",
    "project", "attention_diagonal", "reduced_loss", "reduced_gradient", "prob_correct", "reduced_rhs",
    "integrate_reduced", "time_to_learn", "predicted_time_to_learn_vs_vocab",
    "escape_time_vs_init_scale", "saddle_growth_rate",
]

DEFAULT_RTOL = 1e-10
DEFAULT_ATOL = 1e-12


def _sizes(L, V) -> tuple[int, int]:
    """Check 2 ≤ L ≤ V (α_o needs L ≥ 2 — an off-diagonal position; L distinct tokens need V ≥ L)."""
    L, V = integer("L", L, 2), integer("V", V)
    if V < L:
        raise ValueError(f"V must be >= L = {L} (L distinct tokens), got {V}")
    return L, V


# --------------------------------------------------------------------------------------------------
# Order parameters
# --------------------------------------------------------------------------------------------------

def _diag_off(X: np.ndarray) -> tuple[float, float]:
    """Mean of the diagonal and mean of the off-diagonal entries of a square matrix."""
    n = X.shape[0]
    d = float(np.trace(X)) / n
    off = (float(X.sum()) - d * n) / (n * (n - 1)) if n > 1 else 0.0
    return d, off


class OrderParameters(NamedTuple):
    """Projection of the model's parameters on the invariant (symmetric) class.

    ``p_diag .. q_off`` (the Gram matrices Wₒ Wₒᵀ and E Eᵀ) are NaN for the plain model.
    """

    m_diag: float             #: mean diagonal of M (or Wₒ Eᵀ)
    m_off: float              #: mean off-diagonal of M
    a_diag: float             #: mean diagonal of A (0 for the uniform twin)
    a_off: float              #: mean off-diagonal of A
    delta: float              #: m_diag − m_off, the KTIW margin
    alpha_d: float            #: mean over t of the actual α_{t,t} = softmax(A)_{t,t}
    alpha_d_projected: float  #: α_d of the projected logits, e^{a_d}/(e^{a_d} + (L−1)e^{a_o})
    p_diag: float = float("nan")   #: mean diagonal of Wₒ Wₒᵀ
    p_off: float = float("nan")
    q_diag: float = float("nan")   #: mean diagonal of E Eᵀ
    q_off: float = float("nan")

    def state(self, factorised: bool = False) -> np.ndarray:
        """The ODE state: (m_d, m_o, a_d, a_o) or, factorised, (m_d, m_o, a_d, a_o, p_d, p_o, q_d, q_o)."""
        base = [self.m_diag, self.m_off, self.a_diag, self.a_off]
        if factorised:
            if np.isnan(self.p_diag):
                raise ValueError("these order parameters come from a plain model; a factorised state needs Wo and E")
            base += [self.p_diag, self.p_off, self.q_diag, self.q_off]
        return np.array(base, dtype=np.float64)


def attention_diagonal(u, L: int) -> np.ndarray:
    """``α_d = e^{u} / (e^{u} + L − 1)`` for the logit gap ``u = a_d − a_o`` (stable for any u)."""
    u = np.asarray(u, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, np.log(L - 1.0) - u))


def project(source, length: int | None = None) -> OrderParameters:
    """Project a free copy model (or its params dict) on the order parameters.

    Parameters
    ----------
    source : FreeAttentionCopyModel or dict
        A model, or a params dict with ``"M"`` or ``"Wo"``/``"E"``, and ``"A"`` unless uniform.
    length : int, optional
        L, needed only for a params dict without ``"A"`` (the uniform twin).

    Returns
    -------
    OrderParameters
    """
    params = source.params if isinstance(source, FreeAttentionCopyModel) else source
    if not isinstance(params, dict):
        raise TypeError(f"source must be a FreeAttentionCopyModel or a params dict, got {type(source).__name__}")
    if "M" in params:
        M = np.asarray(params["M"], dtype=np.float64)
        gram = None
    elif "Wo" in params and "E" in params:
        Wo, E = np.asarray(params["Wo"], dtype=np.float64), np.asarray(params["E"], dtype=np.float64)
        M = Wo @ E.T
        gram = (*_diag_off(Wo @ Wo.T), *_diag_off(E @ E.T))
    else:
        raise ValueError("params must contain 'M', or 'Wo' and 'E'")
    m_d, m_o = _diag_off(M)
    if "A" in params:
        A = np.asarray(params["A"], dtype=np.float64)
        L = A.shape[0]
        a_d, a_o = _diag_off(A)
        shifted = A - A.max(axis=1, keepdims=True)
        alpha = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        alpha_d = float(np.mean(np.diag(alpha)))
    else:
        if length is None:
            if isinstance(source, FreeAttentionCopyModel):
                length = source.length
            else:
                raise ValueError("length is required for a params dict without 'A' (uniform twin)")
        L = int(length)
        a_d = a_o = 0.0
        alpha_d = 1.0 / L
    alpha_proj = float(attention_diagonal(a_d - a_o, L)) if L > 1 else 1.0
    extra = gram if gram is not None else ()
    return OrderParameters(m_d, m_o, a_d, a_o, m_d - m_o, alpha_d, alpha_proj, *extra)


# --------------------------------------------------------------------------------------------------
# The reduced loss and its derivatives
# --------------------------------------------------------------------------------------------------

class _Parts(NamedTuple):
    loss: np.ndarray
    p_correct: np.ndarray   #: probability of the gold token
    p_other: np.ndarray     #: probability of each of the L − 1 other source tokens
    p_absent: np.ndarray    #: probability of each of the V − L tokens not in the source
    alpha_o: np.ndarray


def _parts(delta, alpha_d, L: int, V: int, alpha_o=None) -> _Parts:
    delta = np.asarray(delta, dtype=np.float64)
    alpha_d = np.asarray(alpha_d, dtype=np.float64)
    alpha_o = (1.0 - alpha_d) / (L - 1) if alpha_o is None else np.asarray(alpha_o, dtype=np.float64)
    zc, zo = delta * alpha_d, delta * alpha_o
    shift = np.maximum(zc, zo)
    if V > L:
        shift = np.maximum(shift, 0.0)   # the absent tokens have logit 0; shifting keeps exp ≤ 1
    ec, eo = np.exp(zc - shift), np.exp(zo - shift)
    # V = L: there are no absent tokens; never evaluate exp(−shift), which could overflow.
    en = np.exp(-shift) if V > L else np.zeros_like(shift)
    Z = ec + (L - 1) * eo + (V - L) * en
    return _Parts(-zc + shift + np.log(Z), ec / Z, eo / Z, en / Z, alpha_o)


def reduced_loss(delta, alpha_d, L: int, V: int) -> np.ndarray:
    """Expected per-token loss ``ℓ(δ, α_d) = −δα_d + log(e^{δα_d} + (L−1)e^{δα_o} + (V−L))``.

    Parameters
    ----------
    delta, alpha_d : float or array (broadcastable)
    L, V : int
        2 ≤ L ≤ V.
    """
    L, V = _sizes(L, V)
    return _parts(delta, alpha_d, L, V).loss


def prob_correct(delta, alpha_d, L: int, V: int) -> np.ndarray:
    """Probability of the gold token at a symmetric point: ``e^{δα_d} / (e^{δα_d} + (L−1)e^{δα_o} + V−L)``."""
    L, V = _sizes(L, V)
    return _parts(delta, alpha_d, L, V).p_correct


def reduced_gradient(delta, alpha_d, L: int, V: int) -> tuple[np.ndarray, np.ndarray]:
    """Partial derivatives of ℓ (α_o = (1 − α_d)/(L − 1) eliminated).

    ``ℓ_δ = −α_d + p_c α_d + (L − 1) p_o α_o`` and ``ℓ_α = −δ (1 − p_c + p_o)``, where ``p_c``,
    ``p_o`` are the probabilities of the gold token and of each other source token. At δ = 0,
    α_d = 1/L: ``ℓ_δ = 1/V − 1/L``; and ``ℓ_α`` is ``−δ`` times a positive factor.

    Returns
    -------
    dl_ddelta, dl_dalpha : arrays
    """
    L, V = _sizes(L, V)
    alpha_d = np.asarray(alpha_d, dtype=np.float64)
    return _gradient(_parts(delta, alpha_d, L, V), delta, alpha_d, 1.0 - L * alpha_d, L, V)


def _gradient(parts: _Parts, delta, alpha_d, one_minus_l_alpha, L: int, V: int):
    """``ℓ_δ`` and ``ℓ_α`` from the probabilities.

    ``ℓ_δ = −α_d(1 − p_c) + (L − 1) p_o α_o`` is rewritten with ``1 − p_c = (L−1) p_o + (V−L) p_n``
    and ``(L − 1) α_o = 1 − α_d`` as ``ℓ_δ = p_o (1 − L α_d) − (V − L) p_n α_d``: no cancellation,
    and exactly 0 at the V = L saddle when ``1 − L α_d`` is computed exactly (see
    :func:`reduced_rhs`), so round-off cannot push the flow off the saddle.
    """
    dl_ddelta = parts.p_other * one_minus_l_alpha - (V - L) * parts.p_absent * alpha_d
    dl_dalpha = -np.asarray(delta, dtype=np.float64) * (1.0 - parts.p_correct + parts.p_other)
    return dl_ddelta, dl_dalpha


def reduced_rhs(t, y, L: int, V: int, *, factorised: bool = False, uniform: bool = False) -> np.ndarray:
    """Right-hand side of the gradient-flow ODE in the model's own (projected) parameters.

    Parameters
    ----------
    t : float
        Time (unused: the flow is autonomous; present for ``solve_ivp``).
    y : array (4,) or (8,)
        Plain: ``(m_d, m_o, a_d, a_o)``. Factorised: ``(m_d, m_o, a_d, a_o, p_d, p_o, q_d, q_o)``
        with ``P = Wₒ Wₒᵀ``, ``Q = E Eᵀ``.
    L, V : int
    factorised : bool
    uniform : bool
        Uniform twin: α_d = 1/L and the attention entries do not move.

    Returns
    -------
    dy/dτ : array like ``y``

    Notes
    -----
    Per-entry gradients of the expected loss at an invariant point (equations in the module
    docstring and README): ``∂/∂M_ii = ℓ_δ/V``, ``∂/∂M_ij = −ℓ_δ/(V(V−1))``,
    ``∂/∂A_tt = ℓ_α α_d(1−α_d)/L``, ``∂/∂A_ts = −ℓ_α α_d(1−α_d)/(L(L−1))``. For the factorised
    model, writing an invariant matrix as ``X = x_α I + x_β J`` (``x_α = x_d − x_o``,
    ``x_β = x_o``), products stay invariant: ``(a I + b J)(c I + e J) = ac I + (ae + bc + V be) J``.
    """
    L, V = _sizes(L, V)
    y = np.asarray(y, dtype=np.float64)
    if y.shape != ((8,) if factorised else (4,)):
        raise ValueError(f"y must have shape {(8,) if factorised else (4,)}, got {y.shape}")
    m_d, m_o, a_d, a_o = y[:4]
    u = 0.0 if uniform else a_d - a_o
    # α_d, α_o and 1 − L α_d straight from the logit gap u, so that u = 0 gives α_d = α_o and
    # 1 − L α_d = 0 exactly: 1 − L α_d = −(L − 1) expm1(u) / (e^u + L − 1).
    log_norm = np.logaddexp(u, np.log(L - 1.0))
    alpha_d, alpha_o = float(np.exp(u - log_norm)), float(np.exp(-log_norm))
    one_minus_l_alpha = -(L - 1) * float(np.expm1(u)) * alpha_o
    parts = _parts(m_d - m_o, alpha_d, L, V, alpha_o=alpha_o)
    l_delta, l_alpha = (float(g) for g in _gradient(parts, m_d - m_o, alpha_d, one_minus_l_alpha, L, V))
    out = np.zeros_like(y)
    if not uniform:
        dalpha_du = alpha_d * (1.0 - alpha_d)
        out[2] = -l_alpha * dalpha_du / L
        out[3] = l_alpha * dalpha_du / (L * (L - 1))
    g_d, g_o = l_delta / V, -l_delta / (V * (V - 1))        # per-entry ∂(expected loss)/∂M
    if not factorised:
        out[0], out[1] = -g_d, -g_o
        return out
    p_d, p_o, q_d, q_o = y[4:]

    def prod(a1, b1, a2, b2):
        # (a1 I + b1 J)(a2 I + b2 J), using J² = V J.
        return a1 * a2, a1 * b2 + b1 * a2 + V * b1 * b2

    G = (g_d - g_o, g_o)
    Mx, P, Q = (m_d - m_o, m_o), (p_d - p_o, p_o), (q_d - q_o, q_o)
    gq, pg, gm = prod(*G, *Q), prod(*P, *G), prod(*G, *Mx)
    dM = (-(gq[0] + pg[0]), -(gq[1] + pg[1]))               # dM = −(G Q + P G)
    dQ = (-2 * gm[0], -2 * gm[1])                           # dQ = −(Gᵀ M + Mᵀ G) = −2 G M in the class
    out[0], out[1] = dM[0] + dM[1], dM[1]                   # back to (diagonal, off-diagonal)
    out[4], out[5] = dQ[0] + dQ[1], dQ[1]                   # dP = −(G Mᵀ + M Gᵀ): the same as dQ
    out[6], out[7] = dQ[0] + dQ[1], dQ[1]
    return out


# --------------------------------------------------------------------------------------------------
# Integration
# --------------------------------------------------------------------------------------------------

class ReducedTrajectory(NamedTuple):
    """Solution of the reduced ODE at the requested times (every field an array over ``t``)."""

    t: np.ndarray
    m_diag: np.ndarray
    m_off: np.ndarray
    a_diag: np.ndarray
    a_off: np.ndarray
    delta: np.ndarray
    alpha_d: np.ndarray
    loss: np.ndarray
    prob_correct: np.ndarray
    states: np.ndarray     #: (n, 4) or (n, 8): the raw ODE state


def _initial_state(initial, factorised: bool) -> np.ndarray:
    if isinstance(initial, (FreeAttentionCopyModel, dict)):
        initial = project(initial)
    if isinstance(initial, OrderParameters):
        return initial.state(factorised)
    y0 = np.asarray(initial, dtype=np.float64)
    if y0.shape != ((8,) if factorised else (4,)) or not np.all(np.isfinite(y0)):
        raise ValueError(f"initial must be OrderParameters, a model, a params dict or a finite state of shape "
                         f"{(8,) if factorised else (4,)}; got {initial!r}")
    return y0


def _summarise(t, states, L, V, uniform) -> ReducedTrajectory:
    m_d, m_o, a_d, a_o = states[:, 0], states[:, 1], states[:, 2], states[:, 3]
    delta = m_d - m_o
    alpha_d = np.full_like(delta, 1.0 / L) if uniform else attention_diagonal(a_d - a_o, L)
    parts = _parts(delta, alpha_d, L, V)
    return ReducedTrajectory(np.asarray(t, dtype=np.float64), m_d, m_o, a_d, a_o, delta, alpha_d,
                             parts.loss, parts.p_correct, states)


def integrate_reduced(L: int, V: int, initial, t_eval, *, factorised: bool = False, uniform: bool = False,
                      rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
                      method: str = "DOP853") -> ReducedTrajectory:
    """Integrate the reduced gradient flow with :func:`scipy.integrate.solve_ivp`.

    Parameters
    ----------
    L, V : int
    initial : OrderParameters, FreeAttentionCopyModel, params dict, or array (4,)/(8,)
        The start, projected from a simulation's own initial parameters when a model or dict is
        given (use ``project(model)`` *before* training).
    t_eval : array (n,)
        Non-decreasing times ≥ 0 (τ = k·lr for SGD step k).
    factorised, uniform : bool
    rtol, atol : float
        ``solve_ivp`` tolerances (defaults 1e-10 / 1e-12).
    method : str
        ``solve_ivp`` method (default DOP853, 8th-order Runge–Kutta; the flow is not stiff).

    Returns
    -------
    ReducedTrajectory
    """
    L, V = _sizes(L, V)
    t_eval = np.asarray(t_eval, dtype=np.float64)
    if t_eval.ndim != 1 or t_eval.size == 0 or not np.all(np.isfinite(t_eval)):
        raise ValueError("t_eval must be a non-empty 1-d array of finite times")
    if t_eval[0] < 0 or np.any(np.diff(t_eval) < 0):
        raise ValueError("t_eval must be non-negative and non-decreasing")
    y0 = _initial_state(initial, factorised)
    t_end = float(t_eval[-1])
    if t_end == 0.0:
        states = np.repeat(y0[None], t_eval.size, axis=0)
    else:
        sol = solve_ivp(lambda t, y: reduced_rhs(t, y, L, V, factorised=factorised, uniform=uniform),
                        (0.0, t_end), y0, method=method, t_eval=t_eval, rtol=rtol, atol=atol)
        if not sol.success:
            raise RuntimeError(f"solve_ivp failed: {sol.message}")
        states = sol.y.T
    return _summarise(t_eval, states, L, V, uniform)


def time_to_learn(L: int, V: int, initial=None, *, threshold: float = 0.5, quantity: str = "prob_correct",
                  t_max: float = 1e9, factorised: bool = False, uniform: bool = False,
                  rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL) -> float:
    """First time the reduced flow crosses ``threshold`` on a smooth quantity (found by an ODE event).

    Parameters
    ----------
    L, V : int
    initial : as in :func:`integrate_reduced`; default the exactly symmetric zero start
        (M = A = 0: δ = 0, α_d = 1/L).
    threshold : float
        For ``quantity="prob_correct"`` (default): the mean probability of the gold token must reach
        it (in (0, 1)); for ``quantity="loss"``: the loss must fall to it.
    t_max : float
        Give up (return ``inf``) after this time.

    Returns
    -------
    float
        The crossing time, 0 if the start is already past the threshold, ``inf`` if never by t_max.
    """
    L, V = _sizes(L, V)
    if quantity not in ("prob_correct", "loss"):
        raise ValueError(f"quantity must be 'prob_correct' or 'loss', got {quantity!r}")
    threshold = float(threshold)
    if quantity == "prob_correct" and not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold for prob_correct must lie in (0, 1), got {threshold}")
    if quantity == "loss" and not threshold > 0.0:
        raise ValueError(f"threshold for the loss must be > 0, got {threshold}")
    if not (np.isfinite(t_max) and t_max > 0):
        raise ValueError(f"t_max must be a finite number > 0, got {t_max}")
    dim = 8 if factorised else 4
    y0 = np.zeros(dim) if initial is None else _initial_state(initial, factorised)

    def margin(t, y):
        traj = _summarise([t], y[None], L, V, uniform)
        if quantity == "prob_correct":
            return float(traj.prob_correct[0]) - threshold
        return threshold - float(traj.loss[0])

    if margin(0.0, y0) >= 0:
        return 0.0
    margin.terminal = True
    margin.direction = 1.0
    sol = solve_ivp(lambda t, y: reduced_rhs(t, y, L, V, factorised=factorised, uniform=uniform),
                    (0.0, float(t_max)), y0, method="DOP853", events=margin, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    hits = sol.t_events[0]
    return float(hits[0]) if hits.size else float("inf")


def predicted_time_to_learn_vs_vocab(L: int, Vs, *, initial=None, threshold: float = 0.5,
                                     factorised: bool = False, t_max: float = 1e9) -> np.ndarray:
    """Reduced-ODE time to learn (mean gold probability reaching ``threshold``) for each V in ``Vs``.

    From the symmetric zero start (default) the only drive is ``dδ/dτ(0) = (1/L − 1/V)/(V − 1)``,
    so V = L never learns (``inf``) and the time falls as V grows past L at first.

    Returns
    -------
    array (len(Vs),)
    """
    return np.array([time_to_learn(L, int(V), initial, threshold=threshold, factorised=factorised, t_max=t_max)
                     for V in Vs])


def saddle_growth_rate(L: int) -> float:
    """Growth rate of the unstable direction at the V = L saddle (δ = 0, α_d = 1/L): ``1/L²``.

    Linearising (README): ``dδ/dτ ≈ u/L²``, ``du/dτ ≈ δ/L²`` with ``u = a_d − a_o``, so
    ``δ + u`` grows like ``e^{τ/L²}`` and the escape time is ``≈ L² log(1/scale) + const``.
    """
    L, _ = _sizes(L, L)
    return 1.0 / L ** 2


class EscapeFit(NamedTuple):
    """Escape time vs init scale (V = L) and its fit ``τ = intercept + slope · log(1/scale)``."""

    scales: np.ndarray
    times: np.ndarray
    slope: float
    intercept: float
    predicted_slope: float   #: 1/growth rate = L² (plain model; NaN for the factorised one)


def escape_time_vs_init_scale(L: int, scales, *, V: int | None = None, threshold: float = 0.5,
                              factorised: bool = False, t_max: float = 1e9) -> EscapeFit:
    """Reduced-ODE time to learn at V = L from a start of typical size for each init ``scale``.

    A random init with i.i.d. N(0, s²) entries projects to ``δ_0`` with standard deviation
    ``s/√(V − 1)`` and ``u_0 = a_d − a_o`` with ``s/√(L − 1)``; the start used here puts both at
    that size on the learning side (``m_d = δ_0``, ``m_o = 0``, ``a_d = u_0``, ``a_o = 0``). The
    symmetric flow cannot leave the saddle without this offset, and its escape time grows like
    ``L² log(1/s)``. (For the factorised model the start is ``m_d = δ_0``, Gram diagonals
    ``d s²`` with d = V, off-diagonals 0; there the saddle rate is ``√(2 V s²)/L²``, so the escape
    time grows like 1/s rather than log(1/s) and ``predicted_slope`` is NaN.)

    Returns
    -------
    EscapeFit
    """
    L, V = _sizes(L, L if V is None else V)
    scales = np.asarray(scales, dtype=np.float64)
    if scales.ndim != 1 or scales.size < 2 or np.any(scales <= 0) or not np.all(np.isfinite(scales)):
        raise ValueError("scales must be a 1-d array of at least two finite positive numbers")
    times = []
    for s in scales:
        delta0, u0 = s / np.sqrt(V - 1), s / np.sqrt(L - 1)
        y0 = [delta0, 0.0, u0, 0.0] + ([V * s * s, 0.0, V * s * s, 0.0] if factorised else [])
        times.append(time_to_learn(L, V, np.array(y0), threshold=threshold, factorised=factorised, t_max=t_max))
    times = np.array(times)
    finite = np.isfinite(times)
    if finite.sum() >= 2:
        slope, intercept = np.polyfit(np.log(1.0 / scales[finite]), times[finite], 1)
    else:
        slope = intercept = float("nan")
    # Factorised: dδ/dτ ≈ q̃ u/L² with q̃ ≈ 2 V s², so the saddle rate is √q̃/L² ∝ s and the escape
    # time grows like 1/s, not log(1/s): no log-slope to predict.
    return EscapeFit(scales, times, float(slope), float(intercept), float("nan") if factorised else float(L ** 2))
