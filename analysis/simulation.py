"""Simulations of the copy task that the reduced ODE (:mod:`analysis.reduced`) is compared with.

:func:`simulate_copy` is the one simulation of the project's copy experiments: it builds a model —
the free-parameter copy model (``"free"``), its factorised form ``M = Wₒ Eᵀ`` (``"factorised"``)
or the full :class:`~miniattn.models.seq2seq.Seq2SeqAttention` (``"seq2seq"``) — and trains it with
SGD or Adam through :func:`miniattn.train.train`, recording the order parameters at every
evaluation through its ``metrics_fn`` hook:

* free models: δ = m_d − m_o and α_d (mean actual α_{t,t}) of :func:`analysis.reduced.project`;
* seq2seq: *measured* order parameters — α_d = mean attention on the aligned source position, and
  δ = the margin implied by the KTIW probe β at the aligned position, inverting
  ``β = δ − log(e^δ + V − 1)`` (the gold log-probability of the symmetric model attending to one
  word): ``δ = β + log(V − 1) − log(1 − e^β)``;

and, for every model, the held-out mean probability of the gold token (the smooth quantity that
"time to learn" is defined on, analysis/README.md §7). With ``exact=True`` the free model runs
full-batch gradient descent on every copy input (:func:`enumerate_copy_batch` through
:class:`miniattn.tasks.FixedBatchTask`), which is the exact expected gradient.

Also here, for checking the derivation against the full model: :func:`symmetric_params`,
:func:`symmetric_factorised_params` (points of the invariant class), :func:`enumerate_copy_batch`,
and :func:`crossing_time` (the time a sampled curve crosses a threshold).

Seeding: ``seed`` (an int, a ``numpy.random.SeedSequence`` or a sweep's seed record) is split into
child 0, which initialises the model, and child 1, the seed of :func:`miniattn.train.train` (whose
own children draw the training batches and the held-out batch). The same seed gives a
bit-identical trajectory.
"""

from __future__ import annotations

import itertools
from math import perm
from typing import Mapping, NamedTuple

import numpy as np

from analysis.reduced import (OrderParameters, ReducedTrajectory, _sizes, integrate_reduced, project)
from miniattn._validate import flag, integer, real
from miniattn.batch import Seq2SeqBatch
from miniattn.models.free_copy import DEFAULT_INIT_SCALE, FreeAttentionCopyModel
from miniattn.models.seq2seq import Seq2SeqAttention
from miniattn.optim import make_optimizer
from miniattn.tasks import CopyTask, FixedBatchTask
from miniattn.train import train

__all__ = ["MODELS", "SimulationTrajectory", "seed_streams", "build_copy_model", "simulate_copy",
           "compare_with_simulation", "crossing_time", "symmetric_params", "symmetric_factorised_params",
           "enumerate_copy_batch", "free_order_metrics", "seq2seq_order_metrics"]

#: The models :func:`simulate_copy` can train.
MODELS = ("free", "factorised", "seq2seq")


# --------------------------------------------------------------------------------------------------
# Symmetric points and exact enumeration (for verifying the derivation)
# --------------------------------------------------------------------------------------------------

def symmetric_params(L: int, V: int, m_diag: float, m_off: float, a_diag: float, a_off: float,
                     bias: float = 0.0) -> dict[str, np.ndarray]:
    """Params of a plain free copy model at an invariant point: ``M = m_d I + m_o (J − I)``, etc."""
    L, V = _sizes(L, V)
    M = np.full((V, V), float(m_off))
    np.fill_diagonal(M, float(m_diag))
    A = np.full((L, L), float(a_off))
    np.fill_diagonal(A, float(a_diag))
    return {"A": A, "M": M, "b": np.full(V, float(bias))}


def symmetric_factorised_params(L: int, V: int, wo: tuple[float, float], e: tuple[float, float],
                                a_diag: float, a_off: float) -> dict[str, np.ndarray]:
    """Params of a factorised model (d = V) at an invariant point: ``Wₒ = wo[0] I + wo[1](J − I)``, same for E."""
    L, V = _sizes(L, V)
    base = symmetric_params(L, V, wo[0], wo[1], a_diag, a_off)
    E = np.full((V, V), float(e[1]))
    np.fill_diagonal(E, float(e[0]))
    return {"A": base["A"], "Wo": base["M"], "E": E, "b": base["b"]}


def enumerate_copy_batch(L: int, V: int, max_examples: int = 200_000) -> Seq2SeqBatch:
    """Every copy input once: all V!/(V−L)! ordered L-subsets of the vocabulary.

    The batch-mean loss and gradients of a model on this batch are the *exact* expectations over
    the copy distribution (permutations when V = L, subsets when V > L).
    """
    L, V = integer("L", L, 1), integer("V", V, 1)
    if V < L:
        raise ValueError(f"need 1 <= L <= V, got L={L}, V={V}")
    n = perm(V, L)
    if n > max_examples:
        raise ValueError(f"V!/(V−L)! = {n} inputs exceed max_examples={max_examples}")
    tokens = np.array(list(itertools.permutations(range(V), L)), dtype=np.int64).reshape(n, L)
    mask = np.ones((n, L), dtype=bool)
    alignment = np.broadcast_to(np.arange(L, dtype=np.int64), (n, L)).copy()
    return Seq2SeqBatch(tokens, mask, tokens.copy(), tokens.copy(), mask.copy(), alignment)


def crossing_time(t, values, threshold: float, *, direction: str = "up") -> float:
    """First time a sampled curve crosses ``threshold``, linearly interpolated between samples.

    For simulation curves (e.g. the measured mean probability of the gold token).

    Parameters
    ----------
    t, values : arrays (n,)
    threshold : float
    direction : {"up", "down"}
        ``"up"``: first reach ``values >= threshold``; ``"down"``: ``values <= threshold``.

    Returns
    -------
    float
        ``inf`` if the curve never crosses.
    """
    t = np.asarray(t, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if t.shape != v.shape or t.ndim != 1 or t.size == 0:
        raise ValueError(f"t and values must be 1-d arrays of one shape, got {t.shape} and {v.shape}")
    if direction not in ("up", "down"):
        raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
    sign = 1.0 if direction == "up" else -1.0
    above = sign * (v - threshold) >= 0
    hit = np.flatnonzero(above)
    if hit.size == 0:
        return float("inf")
    i = int(hit[0])
    if i == 0:
        return float(t[0])
    frac = (threshold - v[i - 1]) / (v[i] - v[i - 1])
    return float(t[i - 1] + frac * (t[i] - t[i - 1]))


# --------------------------------------------------------------------------------------------------
# Order parameters measured at each evaluation (metrics_fn hooks of miniattn.train.train)
# --------------------------------------------------------------------------------------------------

def _gold_probability(log_probs: np.ndarray, batch: Seq2SeqBatch, counted: np.ndarray) -> float:
    gold = np.take_along_axis(log_probs, np.where(counted, batch.target_out, 0)[..., None], axis=-1)[..., 0]
    return float(np.exp(gold[counted]).mean())


def free_order_metrics(model: FreeAttentionCopyModel, batch: Seq2SeqBatch) -> dict[str, float]:
    """δ, α_d, projected α_d (:func:`analysis.reduced.project`) and the mean gold probability."""
    order = project(model)
    out = model.forward(batch)
    return {"delta": order.delta, "alpha_d": order.alpha_d, "alpha_d_projected": order.alpha_d_projected,
            "prob_correct": _gold_probability(out.log_probs, batch, np.asarray(batch.target_mask))}


def seq2seq_order_metrics(model: Seq2SeqAttention, batch: Seq2SeqBatch, length: int, vocab: int) -> dict[str, float]:
    """Measured δ, α_d and mean gold probability of a seq2seq model on copy content (module docstring).

    Only the L content outputs count (not <eos>), as in the reduced model.
    """
    out = model.forward(batch)
    beta = model.ktiw_probe(batch)
    content = (batch.alignment >= 0) & (batch.alignment < length) & batch.target_mask
    b_idx, t_idx = np.nonzero(content)
    s_idx = batch.alignment[b_idx, t_idx]
    alpha_d = float(out.attention[b_idx, t_idx, s_idx].mean())
    # Invert β = δ − log(e^δ + V − 1); β < 0 always, clip away from 0 to keep log(1 − e^β) finite.
    beta_aligned = np.minimum(beta[b_idx, t_idx, s_idx], -1e-12)
    delta = float(np.mean(beta_aligned + np.log(vocab - 1.0) - np.log(-np.expm1(beta_aligned))))
    return {"delta": delta, "alpha_d": alpha_d, "alpha_d_projected": None,
            "prob_correct": _gold_probability(out.log_probs, batch, content)}


# --------------------------------------------------------------------------------------------------
# The simulation
# --------------------------------------------------------------------------------------------------

class SimulationTrajectory(NamedTuple):
    """A simulated run on the copy task, recorded at each evaluation, on the clock ``t = step·lr``."""

    t: np.ndarray
    step: np.ndarray
    delta: np.ndarray              #: KTIW margin (projected, or measured for seq2seq)
    alpha_d: np.ndarray            #: mean attention on the aligned position
    alpha_d_projected: np.ndarray  #: α_d of the projected logits (NaN for seq2seq)
    loss: np.ndarray               #: held-out cross-entropy
    prob_correct: np.ndarray       #: held-out mean probability of the gold token
    token_accuracy: np.ndarray     #: argmax = gold, on the held-out batch
    attention_accuracy: np.ndarray  #: argmax_s α_{t,s} = aligned position
    initial: OrderParameters | None  #: projection of the initial parameters (None for seq2seq)
    initial_state: np.ndarray      #: the ODE's start, (4,) or (8,) (seq2seq: from the measured δ, α_d)


def seed_streams(seed) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
    """(model initialisation, training) seed sequences of a simulation: children 0 and 1 of ``seed``.

    ``seed`` is an int >= 0, a ``numpy.random.SeedSequence`` or a sweep's seed record
    (``{"entropy", "spawn_key"}``, :func:`analysis.sweep.seed_record`); the children are built from
    the spawn key, as :func:`analysis.sweep.seed_children` does.
    """
    if isinstance(seed, Mapping):
        root = np.random.SeedSequence(int(seed["entropy"]), spawn_key=tuple(int(k) for k in seed["spawn_key"]))
    elif isinstance(seed, np.random.SeedSequence):
        root = seed
    else:
        root = np.random.SeedSequence(integer("seed", seed, 0))
    return tuple(np.random.SeedSequence(root.entropy, spawn_key=tuple(root.spawn_key) + (i,)) for i in range(2))


def build_copy_model(L: int, V: int, *, model: str = "free", init_scale: float | None = None,
                     dim: int | None = None, uniform: bool = False, seed=0, dtype="float64"):
    """The model (at its initialisation) and the copy task of a :func:`simulate_copy` run.

    Parameters
    ----------
    L, V : int
        Content length and vocabulary (2 ≤ L ≤ V); the task draws permutations when V = L, subsets
        when V > L.
    model : {"free", "factorised", "seq2seq"}
    init_scale : float, optional
        Free models: the standard deviation of A, M (or Wₒ, E), default 0.1. Seq2seq: passed to the
        model (default 1/√dim).
    dim : int, optional
        Factorised: d (default V). Seq2seq: the hidden size (required).
    uniform : bool
        Free models only: the uniform-attention twin.
    seed :
        As in :func:`seed_streams`; child 0 initialises the model.
    dtype : {"float64", "float32"}
        Seq2seq only: the parameters' dtype (the float32 path E4 trains on); the free models are
        float64.

    Returns
    -------
    model, task
    """
    L, V = _sizes(L, V)
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    uniform = flag("uniform", uniform)
    mode = "permutation" if V == L else "subset"
    if dtype not in ("float64", "float32"):
        raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    if dtype != "float64" and model != "seq2seq":
        raise ValueError(f"dtype={dtype!r} is available for the seq2seq model only (the free models are float64)")
    rng = np.random.default_rng(seed_streams(seed)[0])
    if model == "seq2seq":
        if dim is None or uniform:
            raise ValueError("the seq2seq model needs dim (its hidden size) and has no uniform twin here")
        task = CopyTask(L, V, mode)
        net = Seq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length,
                               task.target_length, dim=integer("dim", dim, 1), init_scale=init_scale, rng=rng,
                               dtype=np.dtype(dtype))
        return net, task
    scale = DEFAULT_INIT_SCALE if init_scale is None else real("init_scale", init_scale, low=0.0)
    net = FreeAttentionCopyModel(L, V, factorised=model == "factorised", dim=dim, uniform=uniform,
                                 init_scale=scale, rng=rng)
    return net, CopyTask(L, V, mode, specials=False)


def simulate_copy(L: int, V: int, *, lr: float, steps: int, model: str = "free", optimizer: str = "sgd",
                  batch_size: int = 128, init_scale: float | None = None, seed=0, dim: int | None = None,
                  uniform: bool = False, eval_every: int = 10, eval_size: int = 512, eval_steps=None,
                  exact: bool = False, params: dict | None = None, dtype: str = "float64") -> SimulationTrajectory:
    """Train a copy model through :func:`miniattn.train.train` and record its order parameters.

    Parameters
    ----------
    L, V, model, init_scale, dim, uniform, seed, dtype :
        As in :func:`build_copy_model`.
    lr : float
    steps : int >= 0
    optimizer : {"sgd", "adam"}
        Plain SGD is the theory's gradient flow on the clock ``t = step·lr``.
    batch_size : int
        Fresh samples per step (ignored with ``exact``).
    eval_every, eval_steps :
        The evaluation schedule (:func:`miniattn.train.train`); step 0 and the last step always.
    eval_size : int
        Size of the held-out batch (ignored with ``exact``).
    exact : bool
        Free models: full-batch gradient descent on :func:`enumerate_copy_batch` (the exact expected
        gradient, small L and V only), evaluated on the same batch.
    params : dict, optional
        Free models: initial parameters replacing the random initialisation (copied; e.g. a point of
        :func:`symmetric_params` plus a small perturbation).

    Returns
    -------
    SimulationTrajectory

    Raises
    ------
    miniattn.train.TrainingDiverged
        When the loss, a gradient or a parameter becomes non-finite (lower ``lr``).
    """
    lr = real("lr", lr, low=0.0, low_open=True)
    exact = flag("exact", exact)
    net, task = build_copy_model(L, V, model=model, init_scale=init_scale, dim=dim, uniform=uniform, seed=seed,
                                 dtype=dtype)
    if model == "seq2seq" and (exact or params is not None):
        raise ValueError("exact and params are only available for the free models")
    if params is not None:
        if set(params) != set(net.params):
            raise ValueError(f"params must have the keys {sorted(net.params)}, got {sorted(params)}")
        for k, v in params.items():
            if np.shape(v) != net.params[k].shape:
                raise ValueError(f"params[{k!r}] must have shape {net.params[k].shape}, got {np.shape(v)}")
            net.params[k][...] = v
    eval_batch = None
    if exact:
        eval_batch = enumerate_copy_batch(L, V)
        task = FixedBatchTask(eval_batch, name="copy-all-inputs", vocab_sizes=(V, V))
    if model == "seq2seq":
        def metrics(m, batch):
            return seq2seq_order_metrics(m, batch, L, V)
        initial = None
    else:
        metrics = free_order_metrics
        initial = project(net)
    hist = train(net, task, make_optimizer(optimizer, net.params, lr=lr), steps=steps, batch_size=batch_size,
                 seed=seed_streams(seed)[1], eval_every=eval_every, eval_size=eval_size, eval_batch=eval_batch,
                 eval_steps=eval_steps, metrics_fn=metrics, progress=False)
    step = hist.eval_steps()
    cols = {k: hist.metric(k) for k in ("delta", "alpha_d", "alpha_d_projected", "loss", "prob_correct",
                                        "token_accuracy", "attention_accuracy")}
    if initial is not None:
        state = initial.state(model == "factorised")
    else:
        # The ODE starts from the measured order parameters: m_d = δ, m_o = 0, a_d − a_o = logit of α_d.
        a0 = float(cols["alpha_d"][0])
        state = np.array([float(cols["delta"][0]), 0.0, np.log(a0 * (L - 1) / (1 - a0)), 0.0])
    return SimulationTrajectory(step * lr, step, initial=initial, initial_state=state, **cols)


def compare_with_simulation(L: int, V: int, **kwargs) -> tuple[SimulationTrajectory, ReducedTrajectory]:
    """Simulate (:func:`simulate_copy`, same keyword arguments) and integrate the reduced ODE from the
    simulation's own start (:attr:`SimulationTrajectory.initial_state`) on the same clock ``t = step·lr``.

    Returns
    -------
    simulation, ode : SimulationTrajectory, ReducedTrajectory
    """
    sim = simulate_copy(L, V, **kwargs)
    ode = integrate_reduced(L, V, sim.initial_state, sim.t, factorised=kwargs.get("model") == "factorised",
                            uniform=bool(kwargs.get("uniform", False)))
    return sim, ode
