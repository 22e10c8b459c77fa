"""The blog's warm-up toy: closed-form gradient flow against simulated gradient descent (experiment E1).

The model is :class:`miniattn.models.toy.GatedToyClassifier` on its two training sequences
``{0, 0} → negative``, ``{0, 1} → positive`` with the summed linear loss ``L = p (β_0 − β_1)``.
Gradient flow ``dθ/dτ = −∇L`` reads::

    dβ_1/dτ = p,    dβ_0/dτ = −p,    dp/dτ = β_1 − β_0.

Closed form. ``S = β_0 + β_1`` is conserved (dS/dτ = 0). The margin ``D = β_1 − β_0`` and ``p``
obey ``dD/dτ = 2p``, ``dp/dτ = D``, so ``p'' = 2p``: with ``c = √2``, ``D_0 = D(0)``, ``p_0 = p(0)``::

    p(τ) = p_0 cosh(cτ) + (D_0 / c) sinh(cτ)
    D(τ) = D_0 cosh(cτ) + c p_0 sinh(cτ)
    β_1 = (S + D)/2,   β_0 = (S − D)/2,   L = p (β_0 − β_1) = −p D.

From the blog's start (β = 0, p = ½): ``p = ½ cosh(√2 τ)``, ``D = (√2/2) sinh(√2 τ)``; for small τ
``D = τ + O(τ³)`` (first order: KTIW moves at once) while ``p − ½ = τ²/2 + O(τ⁴)`` (second order:
attention moves only once KTIW exists). ``p`` reaches 1 at ``τ = arccosh(2)/√2 ≈ 0.9312``.

This is the one statement of the toy's closed form in the code; the experiment (E1,
:mod:`analysis.experiments.e1_toy`) and the figures link here.

Simulation. Plain gradient descent with step ``lr`` on the same model, trained by
:func:`miniattn.train.train` (full-batch, :class:`~miniattn.tasks.FixedBatchTask`); step k sits at
``τ = k·lr`` (forward Euler on the flow, global error O(lr)).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from miniattn.models.toy import GatedToyClassifier, toy_batch
from miniattn.optim import SGD
from miniattn.tasks import FixedBatchTask
from miniattn.train import train

__all__ = ["ToyTrajectory", "closed_form", "hitting_time", "simulate_gd", "early_time_orders",
           "attention_velocity", "toy_loss", "e1_summary", "SQRT2"]

SQRT2 = float(np.sqrt(2.0))


class ToyTrajectory(NamedTuple):
    """Toy state along a trajectory; every field is an array of the shape of ``tau``."""

    tau: np.ndarray
    beta0: np.ndarray
    beta1: np.ndarray
    p: np.ndarray
    loss: np.ndarray


def _finite(name, value) -> float:
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def closed_form(tau, beta0: float = 0.0, beta1: float = 0.0, p: float = 0.5) -> ToyTrajectory:
    """Exact gradient-flow solution of the toy from ``(β_0, β_1, p)`` at time 0.

    Parameters
    ----------
    tau : float or array (n,)
        Times τ (any real values; the flow is defined backwards too).
    beta0, beta1, p : float
        Initial state.

    Returns
    -------
    ToyTrajectory
        Fields with the shape of ``tau``; ``loss = p (β_0 − β_1)``.
    """
    tau = np.asarray(tau, dtype=np.float64)
    if not np.all(np.isfinite(tau)):
        raise ValueError("tau contains NaN or inf")
    b0, b1, p0 = _finite("beta0", beta0), _finite("beta1", beta1), _finite("p", p)
    total, d0 = b0 + b1, b1 - b0
    ch, sh = np.cosh(SQRT2 * tau), np.sinh(SQRT2 * tau)
    gate = p0 * ch + (d0 / SQRT2) * sh
    margin = d0 * ch + SQRT2 * p0 * sh
    return ToyTrajectory(tau, (total - margin) / 2, (total + margin) / 2, gate, -gate * margin)


def hitting_time(target: float = 1.0, beta0: float = 0.0, beta1: float = 0.0, p: float = 0.5) -> float:
    """First τ ≥ 0 at which the closed-form ``p(τ)`` reaches ``target``; ``inf`` if it never does.

    With ``w = e^{√2 τ}`` and ``k = D_0/√2``, ``p = ((p_0 + k) w + (p_0 − k)/w) / 2``, so
    ``p(τ) = target`` is the quadratic ``(p_0 + k) w² − 2 target w + (p_0 − k) = 0``; the answer is
    its smallest root ``w ≥ 1``. From the blog's start and target 1: ``w = 2 + √3``,
    ``τ = ln(2 + √3)/√2 = arccosh(2)/√2 ≈ 0.93123``.

    Returns
    -------
    float
        0 if ``p(0) == target``.
    """
    target = _finite("target", target)
    b0, b1, p0 = _finite("beta0", beta0), _finite("beta1", beta1), _finite("p", p)
    if p0 == target:
        return 0.0
    k = (b1 - b0) / SQRT2
    a, half_b, c = p0 + k, -target, p0 - k
    if a == 0.0:
        roots = [c / (2 * target)] if target != 0 else []
    else:
        disc = half_b * half_b - a * c
        if disc < 0:
            return float("inf")
        sq = np.sqrt(disc)
        roots = [(-half_b - sq) / a, (-half_b + sq) / a]
    valid = [w for w in roots if np.isfinite(w) and w >= 1.0]
    return float(np.log(min(valid)) / SQRT2) if valid else float("inf")


def _toy_state(model, batch) -> dict:
    """The toy's state and its own loss ``p (β_0 − β_1)`` (``metrics_fn`` of :func:`simulate_gd`).

    The loss is read from ``loss_and_grads`` without any step (the records' built-in ``loss`` is
    the held-out cross-entropy of the logistic reading, not the blog's linear loss).
    """
    beta = model.params["beta"]
    return {"beta0": float(beta[0]), "beta1": float(beta[1]), "p": float(model.params["p"]),
            "linear_loss": float(model.loss_and_grads(batch)[0])}


def simulate_gd(tau_max: float, lr: float = 1e-3, beta0: float = 0.0, beta1: float = 0.0, p: float = 0.5,
                *, record_every: int = 1) -> ToyTrajectory:
    """Plain gradient descent on :class:`GatedToyClassifier` over :func:`toy_batch`.

    Trained by :func:`miniattn.train.train` on :class:`~miniattn.tasks.FixedBatchTask` (full-batch
    gradient descent) with :class:`~miniattn.optim.SGD`; step k is placed at ``τ = k·lr`` (so this
    is forward Euler on the flow of :func:`closed_form`).

    Parameters
    ----------
    tau_max : float
        Run ``ceil(tau_max / lr)`` steps.
    lr : float
        Step size (> 0).
    beta0, beta1, p : float
        Initial state.
    record_every : int
        Record every ``record_every``-th step (step 0 and the last step are always recorded).

    Returns
    -------
    ToyTrajectory
        Recorded states; ``loss`` is the loss at the recorded parameters.
    """
    tau_max, lr = _finite("tau_max", tau_max), _finite("lr", lr)
    if tau_max < 0:
        raise ValueError(f"tau_max must be >= 0, got {tau_max}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if int(record_every) < 1:
        raise ValueError(f"record_every must be an integer >= 1, got {record_every}")
    # The 1e-9 keeps tau_max / lr = 1000.0000000001 (binary rounding of e.g. 1.0 / 1e-3) at 1000 steps.
    steps = int(np.ceil(tau_max / lr - 1e-9))
    model = GatedToyClassifier(beta=(beta0, beta1), p=p)
    batch = toy_batch()
    # The batch is fixed and the model deterministic, so the seed draws nothing that matters.
    history = train(model, FixedBatchTask(batch, name="blog toy"), SGD(model.params, lr=lr), steps=steps,
                    batch_size=len(batch.labels), seed=0, eval_every=int(record_every), eval_batch=batch,
                    metrics_fn=_toy_state, progress=False)
    return ToyTrajectory(history.eval_steps().astype(np.float64) * lr, history.metric("beta0"),
                         history.metric("beta1"), history.metric("p"), history.metric("linear_loss"))


def early_time_orders(tau) -> tuple[np.ndarray, np.ndarray]:
    """The leading small-τ terms from the blog's start: margin ``β_1 − β_0 ≈ τ``, ``p − ½ ≈ τ²/2``.

    Returns
    -------
    margin, gate_shift : arrays of the shape of ``tau``
        The leading-order predictions (to compare with :func:`closed_form`; the errors are O(τ³)
        and O(τ⁴)).
    """
    tau = np.asarray(tau, dtype=np.float64)
    return tau.copy(), tau ** 2 / 2


def attention_velocity(beta0: float, beta1: float, p: float = 0.5) -> float:
    """``dp/dτ`` at a state, read off the model's own gradient: ``−∂L/∂p`` (= β_1 − β_0).

    For the wrong start β_0 = 10, β_1 = −10 this is −20: attention first moves to the wrong token.
    """
    model = GatedToyClassifier(beta=(beta0, beta1), p=p)
    return -float(model.loss_and_grads(toy_batch())[1]["p"])


def toy_loss(beta0: float, beta1: float, p: float = 0.5) -> float:
    """The model's loss ``p (β_0 − β_1)`` at a state (e.g. β_0 = −K, β_1 = 3K, p = ½ gives −2K)."""
    return GatedToyClassifier(beta=(beta0, beta1), p=p).loss_and_grads(toy_batch())[0]


def e1_summary(lr: float = 1e-4, taus=(0.5, 1.0, 2.0), K: float = 1.0) -> dict:
    """The numbers of experiment E1: closed form vs simulated GD, the hitting time, the two inits.

    Returns
    -------
    dict
        ``"tau"``, ``"p_closed"``, ``"p_gd"``, ``"margin_closed"``, ``"margin_gd"`` (lists over
        ``taus``), ``"hitting_time"`` (closed form), ``"hitting_time_gd"`` (first recorded step with
        p ≥ 1), ``"wrong_init_dp_dtau"``, ``"wrong_init_hitting_time"``, ``"uniform_attention_loss"``
        (at β_0 = −K, β_1 = 3K, p = ½) and ``"lr"``.
    """
    taus = np.asarray(taus, dtype=np.float64)
    sim = simulate_gd(float(taus.max()), lr=lr)
    idx = np.rint(taus / lr).astype(int)
    exact = closed_form(taus)
    crossed = np.flatnonzero(sim.p >= 1.0)
    return {
        "lr": lr,
        "tau": taus.tolist(),
        "p_closed": exact.p.tolist(),
        "p_gd": sim.p[idx].tolist(),
        "margin_closed": (exact.beta1 - exact.beta0).tolist(),
        "margin_gd": (sim.beta1[idx] - sim.beta0[idx]).tolist(),
        "hitting_time": hitting_time(1.0),
        "hitting_time_gd": float(sim.tau[crossed[0]]) if crossed.size else float("inf"),
        "wrong_init_dp_dtau": attention_velocity(10.0, -10.0, 0.5),
        "wrong_init_hitting_time": hitting_time(1.0, 10.0, -10.0, 0.5),
        "uniform_attention_loss": toy_loss(-K, 3 * K, 0.5),
        "K": K,
    }
