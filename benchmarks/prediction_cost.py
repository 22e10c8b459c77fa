"""The cost of the analytic prediction of a learning curve against simulating that curve.

Two settings (:data:`SETTINGS`, selected by the ``model`` argument of :func:`measure`):

* ``free`` — the prediction is the reduced gradient-flow ODE of the free-parameter copy model
  (:func:`analysis.reduced.integrate_reduced`: four order parameters, ``solve_ivp`` DOP853 at
  rtol 1e-10), started from the projection of the simulation's own initial parameters
  (:func:`analysis.reduced.project`). The simulation is SGD on the full
  :class:`miniattn.models.free_copy.FreeAttentionCopyModel` (A (L, L), M (V, V), b).
* ``seq2seq`` — the prediction is the *rate-corrected reduced dynamics* of the single-head
  :class:`miniattn.models.seq2seq.Seq2SeqAttention` (:mod:`analysis.reduced_seq2seq`): the start
  measured on the simulation's own initial model (:func:`~analysis.reduced_seq2seq.measure_seq2seq`:
  effective KTIW and score matrices, Gram factors, special-class logit), the flow integrated with
  :func:`~analysis.reduced_seq2seq.integrate_reduced_seq2seq` (nine state variables, DOP853 at
  rtol 1e-9) and the time to learn located as an ODE event
  (:func:`~analysis.reduced_seq2seq.time_to_learn_seq2seq`), as experiment E7 does. The simulation
  is SGD on the full seq2seq model on copy batches with specials.

In both the prediction starts from the rebuilt initial model (same seed stream as the simulation),
so its cost includes reading the start off the full model, and it is evaluated at the simulation's
clock ``τ = k·lr``. The simulation runs on fresh copy batches for the same number of steps; two
simulation costs are timed:

* ``train`` — :func:`miniattn.train.train` with no evaluation but the first and the last (sample a
  batch, ``loss_and_grads``, SGD step), the least any simulation of the curve must spend: the
  conservative denominator;
* ``curve`` — :func:`analysis.simulation.simulate_copy`, which also evaluates the loss and the order
  parameters on a held-out batch every ``eval_every`` steps (what a learning curve needs).

Also reported: the time τ at which the mean gold probability first reaches 0.5 in the simulation
and in the prediction (:func:`analysis.simulation.crossing_time` on the simulation's grid; for the
seq2seq prediction the ODE event time when the ODE does not cross inside the simulated window, as
E7 reads it) and their ratio. Target: prediction / simulation < 1%. The ``free`` setting is the
scientific check of ``tests/test_reduced.py`` (L = 40, V = 60, batch 128, init scale 0.1, SGD lr 5,
4000 steps); the ``seq2seq`` setting is E7's V = 60, d = 128 cell (L = 40, batch 128, init 1/√d,
SGD lr 20, 250 steps, eval every 10 on 128 held-out examples).

Run alone: ``python -m benchmarks.prediction_cost [--setting free seq2seq] [--reps N] [--threads N]``.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import NamedTuple, Sequence

import numpy as np

from benchmarks import Summary, summarize, time_interleaved
from miniattn.optim import SGD
from miniattn.train import train as train_loop

__all__ = ["SETTINGS", "QUICK_SETTINGS", "THRESHOLD", "reduced_available", "PredictionCost", "measure", "run",
           "format_table", "main"]

#: Mean gold probability that defines "learned" (as in E7).
THRESHOLD = 0.5

#: The measured settings: name -> keyword arguments of :func:`measure` (``model`` picks the prediction).
SETTINGS: dict[str, dict] = {
    "free": dict(model="free", length=40, vocab=60, lr=5.0, steps=4000, batch_size=128, init_scale=0.1,
                 eval_every=200, eval_size=512),
    "seq2seq": dict(model="seq2seq", length=40, vocab=60, dim=128, lr=20.0, steps=250, batch_size=128,
                    init_scale=None, eval_every=10, eval_size=128),
}
#: Tiny settings of ``run(quick=True)``: every code path in seconds (the ratios mean nothing).
QUICK_SETTINGS: dict[str, dict] = {
    "free": dict(model="free", length=8, vocab=12, lr=5.0, steps=60, batch_size=16, eval_every=20, eval_size=32),
    "seq2seq": dict(model="seq2seq", length=6, vocab=9, dim=8, lr=2.0, steps=60, batch_size=16, eval_every=10,
                    eval_size=32),
}
_MODELS = tuple(SETTINGS)


def reduced_available() -> bool:
    """True when the reduced ODEs (:mod:`analysis.reduced`, :mod:`analysis.reduced_seq2seq`) and
    :mod:`analysis.simulation` can be imported."""
    try:
        import analysis.reduced  # noqa: F401
        import analysis.reduced_seq2seq  # noqa: F401
        import analysis.simulation  # noqa: F401
    except ImportError:
        return False
    return True


class PredictionCost(NamedTuple):
    """Timings (seconds) of predicting vs simulating one learning curve, and how well they agree."""

    config: dict
    prediction: Summary          #: start from the initial model + integrate the reduced ODE (+ seq2seq: time to learn)
    train: Summary               #: bare SGD loop, same number of steps
    curve: Summary               #: simulate_copy (training + evaluation every eval_every steps)
    ratio_train: float           #: median prediction / median train
    ratio_curve: float           #: median prediction / median curve
    crossing_sim: float          #: τ at which the simulated mean gold probability first reaches 0.5 (inf: not in the window)
    crossing_ode: float          #: the same for the prediction, on the simulation's grid
    max_abs_prob_diff: float     #: max over recorded times of |p_sim − p_ode| (mean gold probability)
    tau_event: float | None = None    #: seq2seq: the ODE's event time of p = 0.5 (time_to_learn_seq2seq); free: None
    tau_predicted: float = math.nan   #: predicted time to learn: crossing_ode, else tau_event when it is finite
    tau_ratio: float = math.nan       #: tau_predicted / crossing_sim (NaN unless both are finite)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def measure(length: int = 40, vocab: int = 60, *, model: str = "free", dim: int | None = None,
            lr: float | None = None, steps: int | None = None, batch_size: int = 128,
            init_scale: float | None = None, seed: int = 0, eval_every: int | None = None,
            eval_size: int | None = None, reps: int = 3, prediction_reps: int = 20) -> PredictionCost:
    """Time the prediction and the simulation of one learning curve.

    Parameters
    ----------
    length, vocab : int
        L and V of the copy-subset task (2 ≤ L ≤ V).
    model : {"free", "seq2seq"}
        Which model is simulated and which reduced ODE predicts it (module docstring).
    dim : int, optional
        Seq2seq only: the hidden size d (default that of ``SETTINGS["seq2seq"]``, 128).
    lr, steps, batch_size, init_scale, seed, eval_every, eval_size :
        As in :func:`analysis.simulation.simulate_copy`; ``None`` takes the value of
        ``SETTINGS[model]`` (free: lr 5, 4000 steps, init 0.1, eval every 200 on 512; seq2seq:
        lr 20, 250 steps, init 1/√d, eval every 10 on 128).
    reps : int
        Repetitions of each simulation (they are long, so a few suffice).
    prediction_reps : int
        Repetitions of the prediction (it is short, so many are cheap).

    Raises
    ------
    ImportError
        When the reduced ODEs are not available.
    """
    from analysis.simulation import build_copy_model, crossing_time, seed_streams, simulate_copy

    if model not in _MODELS:
        raise ValueError(f"model must be one of {_MODELS}, got {model!r}")
    defaults = SETTINGS[model]
    if model == "free" and dim is not None:
        raise ValueError("dim applies to the seq2seq model only")
    lr = defaults["lr"] if lr is None else lr
    steps = defaults["steps"] if steps is None else steps
    init_scale = defaults["init_scale"] if init_scale is None else init_scale
    eval_every = defaults["eval_every"] if eval_every is None else eval_every
    eval_size = defaults["eval_size"] if eval_size is None else eval_size
    for name, value in (("steps", steps), ("reps", reps), ("prediction_reps", prediction_reps),
                        ("eval_every", eval_every)):
        _positive_int(name, value)
    config = dict(model=model, length=length, vocab=vocab, lr=lr, steps=steps, batch_size=batch_size,
                  init_scale=init_scale, seed=seed, eval_every=eval_every, eval_size=eval_size)
    build_kwargs = dict(model=model, init_scale=init_scale, seed=seed)
    if model == "seq2seq":
        dim = _positive_int("dim", defaults["dim"] if dim is None else dim)
        config["dim"] = build_kwargs["dim"] = dim
    sim_kwargs = dict(build_kwargs, lr=lr, steps=steps, batch_size=batch_size, eval_every=eval_every,
                      eval_size=eval_size)

    # The reference curve (also gives the recorded clock the ODE is evaluated at).
    sim = simulate_copy(length, vocab, **sim_kwargs)
    t_eval = sim.t

    if model == "free":
        from analysis.reduced import integrate_reduced, project

        def predict():
            # From the simulation's own initial parameters: rebuild them (same seed stream as simulate_copy)
            # and project, so the prediction's cost includes reading the start off the full model.
            net, _ = build_copy_model(length, vocab, **build_kwargs)
            return integrate_reduced(length, vocab, project(net), t_eval), None
    else:
        from analysis.reduced_seq2seq import integrate_reduced_seq2seq, measure_seq2seq, time_to_learn_seq2seq

        def predict():
            # The simulation's initial Seq2SeqAttention (child 0 of the seed), its measured reduced state,
            # the flow on the simulation's clock and the time to learn as an ODE event (E7's prediction).
            net, _ = build_copy_model(length, vocab, **build_kwargs)
            state = measure_seq2seq(net, length, vocab)
            return (integrate_reduced_seq2seq(length, vocab, state, t_eval),
                    time_to_learn_seq2seq(length, vocab, state, threshold=THRESHOLD))

    def train():
        # The same model, task and batches as the curve, evaluated only at the first and last step.
        net, task = build_copy_model(length, vocab, **build_kwargs)
        train_loop(net, task, SGD(net.params, lr=lr), steps=steps, batch_size=batch_size,
                   seed=seed_streams(seed)[1], eval_every=steps, eval_size=eval_size, progress=False)

    ode, tau_event = predict()
    t_pred = time_interleaved({"prediction": predict}, reps=prediction_reps, warmup=1)["prediction"]
    t_sim = time_interleaved({"train": train, "curve": lambda: simulate_copy(length, vocab, **sim_kwargs)},
                             reps=reps, warmup=0)
    pred, tr, cu = summarize(t_pred), summarize(t_sim["train"]), summarize(t_sim["curve"])
    crossing_sim = crossing_time(sim.t, sim.prob_correct, THRESHOLD)
    crossing_ode = crossing_time(ode.t, ode.prob_correct, THRESHOLD)
    tau_predicted = crossing_ode
    if not math.isfinite(tau_predicted) and tau_event is not None:
        tau_predicted = tau_event        # the ODE learns beyond the simulated window (E7 reads it there)
    tau_ratio = (tau_predicted / crossing_sim if math.isfinite(tau_predicted) and math.isfinite(crossing_sim)
                 and crossing_sim > 0 else math.nan)
    return PredictionCost(config, pred, tr, cu, pred.median / tr.median, pred.median / cu.median,
                          crossing_sim, crossing_ode, float(np.max(np.abs(sim.prob_correct - ode.prob_correct))),
                          tau_event, tau_predicted, tau_ratio)


def _summary_line(r: PredictionCost) -> str:
    c = r.config
    event = "" if r.tau_event is None else f" (ODE event {r.tau_event:.0f})"
    return (f"  {c['model']}: prediction {1e3 * r.prediction.median:.1f} ms; simulation: training loop "
            f"{r.train.median:.2f} s, learning curve {r.curve.median:.2f} s; ratio "
            f"{100 * r.ratio_train:.3f}% of the training loop ({100 * r.ratio_curve:.3f}% of the curve); "
            f"tau(p=0.5): simulation {r.crossing_sim:.0f}, prediction {r.tau_predicted:.0f}{event}, "
            f"predicted / simulated {r.tau_ratio:.3f}")


def run(*, quick: bool = False, reps: int = 3, prediction_reps: int | None = None,
        settings: Sequence[str] = _MODELS, verbose: bool = True) -> dict:
    """Measure the default settings (or tiny ones with ``quick``); say so when the ODEs are missing.

    Parameters
    ----------
    quick : bool
        :data:`QUICK_SETTINGS` with one rep each and 3 prediction reps.
    reps, prediction_reps :
        As in :func:`measure` (ignored with ``quick``; ``prediction_reps`` default 20).
    settings : names in :data:`SETTINGS`, default both (``"free"`` first).

    Returns
    -------
    dict
        ``{"available": bool, "results": [PredictionCost, ...]}`` in the order of ``settings``.
    """
    settings = list(settings)
    for name in settings:
        if name not in SETTINGS:
            raise ValueError(f"settings must be names in {_MODELS}, got {name!r}")
    if not reduced_available():
        if verbose:
            print("  analysis.reduced / analysis.reduced_seq2seq is not available: the prediction cost cannot be "
                  "measured", flush=True)
        return {"available": False, "results": []}
    results = []
    for name in settings:
        if quick:
            res = measure(**QUICK_SETTINGS[name], reps=1, prediction_reps=3)
        else:
            res = measure(**SETTINGS[name], reps=reps,
                          prediction_reps=20 if prediction_reps is None else prediction_reps)
        if verbose:
            print(_summary_line(res), flush=True)
        results.append(res)
    return {"available": True, "results": results}


def _row(r: PredictionCost) -> str:
    c = r.config
    model = "free model" if c["model"] == "free" else f"seq2seq d={c['dim']}"
    return (f"| {model}, L={c['length']}, V={c['vocab']}, B={c['batch_size']}, SGD lr {c['lr']:g}, "
            f"{c['steps']} steps, eval every {c['eval_every']} | {1e3 * r.prediction.median:.1f} ms "
            f"(IQR {1e3 * r.prediction.iqr:.1f}) | {r.train.median:.2f} s (IQR {r.train.iqr:.2f}) | "
            f"{r.curve.median:.2f} s (IQR {r.curve.iqr:.2f}) | **{100 * r.ratio_train:.3f}%** | "
            f"{100 * r.ratio_curve:.3f}% | {r.crossing_sim:.0f} / {r.tau_predicted:.0f} | {r.tau_ratio:.3f} | "
            f"{r.max_abs_prob_diff:.3f} |")


def format_table(result: dict) -> str:
    """Markdown table of :func:`run`'s measurements, one row per setting.

    Also accepts ``{"available": True, "result": PredictionCost}`` (a single :func:`measure`).
    """
    if not result["available"]:
        return "analysis.reduced / analysis.reduced_seq2seq is not available: prediction cost not measured."
    rows = result["results"] if "results" in result else [result["result"]]
    return "\n".join([
        "| setting | prediction (reduced ODE) | simulation: training loop | simulation: learning curve | "
        "prediction / training loop | prediction / learning curve | τ at p = 0.5 (sim / ODE) | "
        "τ ratio (ODE / sim) | max abs p diff |",
        "|---|---|---|---|---|---|---|---|---|",
        *(_row(r) for r in rows),
    ])


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: measure the chosen settings and print the table (with date, load and threads)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.prediction_cost",
                                description="Cost of the reduced-ODE prediction of a learning curve against "
                                            "simulating it (see the module docstring).")
    p.add_argument("--setting", nargs="+", choices=_MODELS, default=list(_MODELS), help="settings to measure")
    p.add_argument("--reps", type=int, default=3, help="timed reps of each simulation (default 3)")
    p.add_argument("--prediction-reps", type=int, default=20, help="timed reps of the prediction (default 20)")
    p.add_argument("--threads", type=int, default=None, help="NumPy BLAS threads (default: the current count)")
    p.add_argument("--quick", action="store_true", help="tiny settings, one rep: checks the code paths")
    args = p.parse_args(argv)
    from benchmarks import machine_info, set_threads
    if args.threads is not None:
        set_threads(args.threads)
    m = machine_info()
    load = ", ".join(f"{x:.1f}" for x in m["loadavg"]) if m["loadavg"] else "unknown"
    print(f"# Cost of the analytic prediction — {m['date']}; {m['cpu']}, {m['cores']} cores, load average {load}; "
          f"NumPy BLAS threads {m['threads']['numpy_blas']}; git {m['git']}" + ("; QUICK" if args.quick else ""),
          flush=True)
    res = run(quick=args.quick, reps=args.reps, prediction_reps=args.prediction_reps, settings=args.setting)
    print(format_table(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
