"""The cost of the analytic prediction of a learning curve against simulating that curve.

The prediction is the reduced gradient-flow ODE of the free-parameter copy model
(:func:`analysis.reduced.integrate_reduced`: four order parameters, ``solve_ivp`` DOP853 at
rtol 1e-10), started from the projection of the simulation's own initial parameters and evaluated at
the simulation's clock ``τ = k·lr``. The simulation is SGD on the full
:class:`miniattn.models.free_copy.FreeAttentionCopyModel` (A (L, L), M (V, V), b) on fresh copy
batches for the same number of steps. Two simulation costs are timed:

* ``train`` — :func:`miniattn.train.train` with no evaluation but the first and the last (sample a
  batch, ``loss_and_grads``, SGD step), the least any simulation of the curve must spend: the
  conservative denominator;
* ``curve`` — :func:`analysis.simulation.simulate_copy`, which also evaluates the loss and the order
  parameters on a held-out batch every ``eval_every`` steps (what a learning curve needs).

Target: prediction / simulation < 1%. The default setting is the scientific check of
``tests/test_reduced.py`` (L = 40, V = 60, batch 128, init scale 0.1, SGD lr 5, 4000 steps).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from benchmarks import Summary, summarize, time_interleaved
from miniattn.optim import SGD
from miniattn.train import train as train_loop

__all__ = ["reduced_available", "PredictionCost", "measure", "run", "format_table"]


def reduced_available() -> bool:
    """True when :mod:`analysis.reduced` (the reduced ODE) and :mod:`analysis.simulation` can be imported."""
    try:
        import analysis.reduced  # noqa: F401
        import analysis.simulation  # noqa: F401
    except ImportError:
        return False
    return True


class PredictionCost(NamedTuple):
    """Timings (seconds) of predicting vs simulating one learning curve, and how well they agree."""

    config: dict
    prediction: Summary          #: project + integrate_reduced at the recorded times
    train: Summary               #: bare SGD loop, same number of steps
    curve: Summary               #: simulate_copy (training + evaluation every eval_every steps)
    ratio_train: float           #: median prediction / median train
    ratio_curve: float           #: median prediction / median curve
    crossing_sim: float          #: τ at which the simulated mean gold probability first reaches 0.5
    crossing_ode: float          #: the same for the prediction
    max_abs_prob_diff: float     #: max over recorded times of |p_sim − p_ode| (mean gold probability)


def measure(length: int = 40, vocab: int = 60, *, lr: float = 5.0, steps: int = 4000, batch_size: int = 128,
            init_scale: float = 0.1, seed: int = 0, eval_every: int = 200, eval_size: int = 512,
            reps: int = 3, prediction_reps: int = 20) -> PredictionCost:
    """Time the prediction and the simulation of one learning curve.

    Parameters
    ----------
    length, vocab : int
        L and V of the copy-subset task (2 ≤ L ≤ V).
    lr, steps, batch_size, init_scale, seed, eval_every, eval_size :
        As in :func:`analysis.simulation.simulate_copy`.
    reps : int
        Repetitions of each simulation (they are long, so a few suffice).
    prediction_reps : int
        Repetitions of the prediction (it is short, so many are cheap).

    Raises
    ------
    ImportError
        When :mod:`analysis.reduced` is not available.
    """
    from analysis.reduced import integrate_reduced, project
    from analysis.simulation import build_copy_model, crossing_time, seed_streams, simulate_copy

    for name, value in (("steps", steps), ("reps", reps), ("prediction_reps", prediction_reps),
                        ("eval_every", eval_every)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    config = dict(length=length, vocab=vocab, lr=lr, steps=steps, batch_size=batch_size, init_scale=init_scale,
                  seed=seed, eval_every=eval_every, eval_size=eval_size)
    sim_kwargs = dict(lr=lr, steps=steps, batch_size=batch_size, init_scale=init_scale, seed=seed,
                      eval_every=eval_every, eval_size=eval_size)

    # The reference curve (also gives the recorded clock and the start the ODE is integrated from).
    sim = simulate_copy(length, vocab, **sim_kwargs)
    t_eval = sim.t

    def predict():
        # From the simulation's own initial parameters: rebuild them (same seed stream as simulate_copy)
        # and project, so the prediction's cost includes reading the start off the full model.
        model, _ = build_copy_model(length, vocab, init_scale=init_scale, seed=seed)
        return integrate_reduced(length, vocab, project(model), t_eval)

    def train():
        # The same model, task and batches as the curve, evaluated only at the first and last step.
        model, task = build_copy_model(length, vocab, init_scale=init_scale, seed=seed)
        train_loop(model, task, SGD(model.params, lr=lr), steps=steps, batch_size=batch_size,
                   seed=seed_streams(seed)[1], eval_every=steps, eval_size=eval_size, progress=False)

    ode = predict()
    t_pred = time_interleaved({"prediction": predict}, reps=prediction_reps, warmup=1)["prediction"]
    t_sim = time_interleaved({"train": train, "curve": lambda: simulate_copy(length, vocab, **sim_kwargs)},
                             reps=reps, warmup=0)
    pred, tr, cu = summarize(t_pred), summarize(t_sim["train"]), summarize(t_sim["curve"])
    return PredictionCost(config, pred, tr, cu, pred.median / tr.median, pred.median / cu.median,
                          crossing_time(sim.t, sim.prob_correct, 0.5), crossing_time(ode.t, ode.prob_correct, 0.5),
                          float(np.max(np.abs(sim.prob_correct - ode.prob_correct))))


def run(*, quick: bool = False, reps: int = 3, verbose: bool = True) -> dict:
    """Measure the default setting (or a tiny one with ``quick``); say so when the ODE is missing.

    Returns
    -------
    dict
        ``{"available": bool, "result": PredictionCost or None}``.
    """
    if not reduced_available():
        if verbose:
            print("  analysis.reduced is not available: the prediction cost cannot be measured", flush=True)
        return {"available": False, "result": None}
    if quick:
        res = measure(8, 12, lr=5.0, steps=60, batch_size=16, eval_every=20, eval_size=32, reps=1,
                      prediction_reps=3)
    else:
        res = measure(reps=reps)
    if verbose:
        print(f"  prediction {1e3 * res.prediction.median:.1f} ms; simulation: training loop "
              f"{res.train.median:.2f} s, learning curve {res.curve.median:.2f} s; ratio "
              f"{100 * res.ratio_train:.3f}% of the training loop ({100 * res.ratio_curve:.3f}% of the curve); "
              f"tau(p=0.5): simulation {res.crossing_sim:.0f}, prediction {res.crossing_ode:.0f}", flush=True)
    return {"available": True, "result": res}


def format_table(result: dict) -> str:
    """Markdown table of :func:`run`'s measurement."""
    if not result["available"]:
        return "analysis.reduced is not available: prediction cost not measured."
    r = result["result"]
    c = r.config
    return "\n".join([
        "| setting | prediction (ODE) | simulation: training loop | simulation: learning curve | "
        "prediction / training loop | prediction / learning curve | τ at p = 0.5 (sim / ODE) | max abs p diff |",
        "|---|---|---|---|---|---|---|---|",
        f"| L={c['length']}, V={c['vocab']}, B={c['batch_size']}, SGD lr {c['lr']:g}, {c['steps']} steps, "
        f"eval every {c['eval_every']} | {1e3 * r.prediction.median:.1f} ms (IQR {1e3 * r.prediction.iqr:.1f}) | "
        f"{r.train.median:.2f} s (IQR {r.train.iqr:.2f}) | {r.curve.median:.2f} s (IQR {r.curve.iqr:.2f}) | "
        f"**{100 * r.ratio_train:.3f}%** | {100 * r.ratio_curve:.3f}% | {r.crossing_sim:.0f} / {r.crossing_ode:.0f} | "
        f"{r.max_abs_prob_diff:.3f} |",
    ])
