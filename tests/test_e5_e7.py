"""E5 (phase diagram) and E7 (reduced ODE vs simulation): the merged simulation and both experiments end to end."""

import ast
import math
from pathlib import Path

import numpy as np
import pytest

from analysis.claims import KINDS, VERDICTS
from analysis.experiments import e7_reduced_vs_sim
from analysis.experiments.framework import compute, load_results, plot
from analysis.fingerprint import module_closure
from analysis.reduced import project
from analysis.simulation import (build_copy_model, enumerate_copy_batch, seed_streams, simulate_copy,
                                 symmetric_params)
from analysis.sweep import SerialExecutor, spawn_seed_records

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# The merged simulation
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["free", "factorised"])
def test_exact_simulation_is_full_batch_gradient_descent(model):
    # simulate_copy(exact=True) must be plain gradient descent on every copy input, step for step:
    # replay it here by hand from the same initial parameters.
    L, V, lr, steps = 3, 4, 0.5, 12
    rng = np.random.default_rng(1)
    params = None
    if model == "free":
        params = {k: v + 1e-2 * rng.standard_normal(v.shape)
                  for k, v in symmetric_params(L, V, 0.1, 0.0, 0.05, 0.0).items()}
    sim = simulate_copy(L, V, model=model, lr=lr, steps=steps, exact=True, params=params, seed=5, eval_every=3)
    net, _ = build_copy_model(L, V, model=model, seed=5)
    if params is not None:
        for k, v in params.items():
            net.params[k][...] = v
    batch = enumerate_copy_batch(L, V)
    deltas, probs = [], []
    for k in range(steps + 1):
        if k % 3 == 0:
            deltas.append(project(net).delta)
            gold = np.take_along_axis(net.forward(batch).log_probs, batch.target_out[..., None], -1)[..., 0]
            probs.append(np.exp(gold).mean())
        if k < steps:
            _, grads = net.loss_and_grads(batch)
            for name, g in grads.items():
                net.params[name] -= lr * g
    np.testing.assert_array_equal(sim.step, [0, 3, 6, 9, 12])
    np.testing.assert_allclose(sim.t, sim.step * lr)
    np.testing.assert_allclose(sim.delta, deltas, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(sim.prob_correct, probs, rtol=1e-12)


@pytest.mark.parametrize("kwargs", [dict(model="free"), dict(model="factorised", optimizer="adam"),
                                    dict(model="free", uniform=True),
                                    dict(model="seq2seq", dim=8, init_scale=None)])
def test_simulation_is_bit_identical_for_the_same_seed(kwargs):
    seed = spawn_seed_records(7, 2)
    run = dict(lr=0.5 if kwargs.get("optimizer") != "adam" else 1e-2, steps=12, batch_size=8, eval_every=4,
               eval_size=16, **kwargs)
    a = simulate_copy(4, 6, seed=seed[0], **run)
    b = simulate_copy(4, 6, seed=seed[0], **run)
    c = simulate_copy(4, 6, seed=seed[1], **run)
    for field in ("t", "delta", "alpha_d", "loss", "prob_correct", "token_accuracy", "initial_state"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.loss, c.loss)
    assert np.all(np.isfinite(a.delta)) and np.all((a.prob_correct > 0) & (a.prob_correct < 1))
    if kwargs["model"] == "seq2seq":
        assert a.initial is None and np.all(np.isnan(a.alpha_d_projected))
    else:
        np.testing.assert_array_equal(a.initial_state, a.initial.state(kwargs["model"] == "factorised"))


def test_seed_streams_accept_ints_sequences_and_records():
    record = spawn_seed_records(3, 1)[0]
    seq = np.random.SeedSequence(record["entropy"], spawn_key=tuple(record["spawn_key"]))
    for x, y in zip(seed_streams(record), seed_streams(seq)):
        assert x.spawn_key == y.spawn_key and x.entropy == y.entropy
    assert seed_streams(4)[0].spawn_key == (0,)
    with pytest.raises(TypeError, match="seed"):
        seed_streams(1.5)


def test_simulation_validation():
    with pytest.raises(ValueError, match="model"):
        simulate_copy(3, 4, model="lstm", lr=1.0, steps=1)
    with pytest.raises(ValueError, match="dim"):
        simulate_copy(3, 4, model="seq2seq", lr=1.0, steps=1)
    with pytest.raises(ValueError, match="exact"):
        simulate_copy(3, 4, model="seq2seq", dim=4, lr=1.0, steps=1, exact=True)
    with pytest.raises(TypeError, match="uniform"):
        simulate_copy(3, 4, lr=1.0, steps=1, uniform="False")
    with pytest.raises(ValueError, match="params"):
        simulate_copy(3, 4, lr=1.0, steps=1, params={"M": np.zeros((4, 4))})
    with pytest.raises(ValueError, match="lr"):
        simulate_copy(3, 4, lr=0.0, steps=1)


def test_no_hand_written_training_loop_in_the_ported_modules():
    # Every model is trained through miniattn.train.train: no call of loss_and_grads or of an
    # optimiser's step in these modules.
    for rel in ("analysis/simulation.py", "analysis/reduced.py", "analysis/experiments/e5_phase.py",
                "analysis/experiments/e7_reduced_vs_sim.py"):
        tree = ast.parse((ROOT / rel).read_text(encoding="utf-8"))
        calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
        assert not calls & {"loss_and_grads", "step"}, rel


def test_e7_does_not_import_e5():
    assert "analysis.experiments.e5_phase" not in module_closure("analysis.experiments.e7_reduced_vs_sim")
    assert "analysis.experiments.common" not in module_closure("analysis.experiments.e7_reduced_vs_sim")
    assert "analysis.experiments.common" not in module_closure("analysis.experiments.e5_phase")


def test_e7_ratio_bounds():
    bounds = e7_reduced_vs_sim._ratio_bounds
    assert bounds(100.0, 110.0, 500.0, 1e7) == (1.1, 1.1, 1.1)
    # The simulation did not learn by τ = 500: τ_sim > 500, so the ratio is below 2000 / 500.
    assert bounds(math.inf, 2000.0, 500.0, 1e7) == (4.0, 0.0, 4.0)
    assert bounds(200.0, math.inf, 500.0, 1e7) == (5e4, 5e4, 5e4)
    value, low, high = bounds(math.inf, math.inf, 500.0, 1e7)
    assert value is None and math.isnan(low) and math.isnan(high)


def test_e7_a_censored_run_never_narrows_the_interval_or_decides_the_claim():
    """A bound is not a measurement: adding a censored seed must widen the interval, not replace the
    spread over seeds by the means of the bounds (which once turned an undecided claim into 'holds')."""
    from analysis.claims import within
    from analysis.experiments.e7_reduced_vs_sim import _ratio_claim

    def rec(r, low=None, high=None, sim=1.0, ode=1.0):
        return {"ratio": r, "ratio_low": r if low is None else low, "ratio_high": r if high is None else high,
                "tau_learn_sim": sim, "tau_learn_ode": ode}

    measured = [rec(r) for r in (1.05, 1.33, 1.10, 1.25, 1.02, 1.30)]
    crit = within(1.0, 0.2, "test", relative=True)
    base = _ratio_claim("s", "p", measured, crit, "beyond")
    assert base.verdict == "undecided"
    censored = _ratio_claim("s", "p", measured + [rec(0.75, 0.0, 0.75, sim=None)], crit, "beyond")
    assert censored.verdict == "undecided" and censored.n == 7
    assert censored.interval[0] < base.interval[0]          # the censored seed's 0 lower bound widens it
    assert censored.interval[1] >= min(r["ratio"] for r in measured)
    ode_censored = _ratio_claim("s", "p", measured + [rec(3.0, 3.0, 3.0, ode=None)], crit, "beyond")
    assert ode_censored.interval[1] == float("inf")


# ------------------------------------------------------------------------------------------------
# The experiments, quick profile, end to end
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("experiment", ["e5", "e7"])
def test_quick_profile_end_to_end(experiment, tmp_path):
    summary = compute(experiment, "quick", root=tmp_path, executor=SerialExecutor())
    assert summary["claims"]
    for c in summary["claims"]:
        assert c["verdict"] in VERDICTS and c["kind"] in KINDS
        assert c["criterion"]["name"] and c["criterion"]["why"]
        assert c["value"] is not None or c["verdict"] == "undecided"
    assert all(len(row) == len(t["columns"]) for t in summary["tables"] for row in t["rows"])
    # Nothing in a table is a bare dash: every ratio or time is a value or says why it is missing.
    assert not any(cell in ("–", "-") for t in summary["tables"] for row in t["rows"] for cell in row)
    paths = plot(experiment, root=tmp_path)
    assert paths and all(p.is_file() and p.stat().st_size > 0 for p in paths)
    # A second compute reuses every run (no run file is rewritten).
    files = sorted((tmp_path / experiment / "runs").glob("*.json"))
    stamps = [f.stat().st_mtime_ns for f in files]
    again = compute(experiment, "quick", root=tmp_path, executor=SerialExecutor())
    assert [f.stat().st_mtime_ns for f in files] == stamps and len(files) == len(again["runs"])
    assert [c["verdict"] for c in again["claims"]] == [c["verdict"] for c in summary["claims"]]


@pytest.fixture(scope="module")
def e7_quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("e7")
    return root, compute("e7", "quick", root=root, executor=SerialExecutor())


def test_e7_free_comparisons_are_checks_and_others_beyond(e7_quick):
    _, summary = e7_quick
    kinds = {c["statement"].split(":")[0]: c["kind"] for c in summary["claims"]}
    assert {k: v for k, v in kinds.items() if k.startswith(("free", "factorised"))} == {
        "free-subset": "check", "free-permutation": "check", "factorised-subset": "beyond"}
    assert all(v == "beyond" for k, v in kinds.items() if not k.startswith(("free", "factorised")))
    for c in summary["claims"]:
        if "tells whether" in c["statement"]:
            assert c["criterion"]["low"] == pytest.approx(0.75) and c["criterion"]["high"] in (None, math.inf)
        else:
            assert c["criterion"]["low"] == pytest.approx(0.8) and c["criterion"]["high"] == pytest.approx(1.2)


def test_e7_seq2seq_grid_has_a_rate_corrected_prediction_per_cell(e7_quick):
    """Each grid cell carries the rate-corrected reduced dynamics, started from the run's own initial
    model (the same seed child as the simulation); the uncorrected ODE is pooled over the grid."""
    root, summary = e7_quick
    cells = [c["statement"] for c in summary["claims"] if c["statement"].startswith("seq2seq-V")]
    assert len(cells) == 4 and all("rate-corrected" in s for s in cells)
    pooled = [c["statement"] for c in summary["claims"] if c["statement"].startswith("seq2seq grid")]
    assert len(pooled) == 2 and "uncorrected" in pooled[0] and "rate-corrected" in pooled[1]
    _, results = load_results("e7", root=root)
    rec = [r for r in results.where(model="seq2seq").records if r.config.get("grid")][0]
    d = rec.data
    assert d["rc_prob_correct"].shape == d["tau"].shape and np.all(np.isfinite(d["rc_delta"]))
    from analysis.reduced_seq2seq import STATE_NAMES, measure_seq2seq
    c = rec.config
    net, _ = build_copy_model(c["length"], c["vocab"], model="seq2seq", dim=c["dim"], init_scale=c["init_scale"],
                              seed=c["seed"])
    start = measure_seq2seq(net, c["length"], c["vocab"])
    # Its trajectory starts at the model's own effective parameters.
    assert d["rc_delta"][0] == pytest.approx(start.y[STATE_NAMES.index("delta")], rel=1e-9, abs=1e-12)
    assert d["initial_state"]["delta"] == pytest.approx(start.y[STATE_NAMES.index("delta")], rel=1e-12)


def test_e7_permutation_seeds_are_e4s_runs(e7_quick, tmp_path):
    """Seed i of E7's permutation comparison is seed i of E4: over E4's budget the SGD run (continued
    past it) and the Adam run have E4's learning curve exactly, so the prediction is about E4's runs."""
    from analysis.experiments import e4_copy

    root, _ = e7_quick
    e4 = compute("e4", "quick", root=tmp_path, executor=SerialExecutor())
    assert e4["claims"]
    _, e4_results = load_results("e4", root=tmp_path)
    _, e7_results = load_results("e7", root=root)
    perm = [r for r in e7_results if r.config["name"].startswith("seq2seq-permutation-")]
    assert len(perm) == 2 * e4_copy.settings("quick")[0][0]["seeds"]
    for r in perm:
        c = r.config
        (twin,) = [x for x in e4_results.where(setting=c["optimizer"], arm="permutation").records
                   if x.config["seed"] == c["seed"]]
        n = c["budget"] // c["eval_every"] + 1
        np.testing.assert_array_equal(r.data["sim_step"][:n], twin.data["steps"])
        np.testing.assert_array_equal(r.data["sim_token_accuracy"][:n], twin.data["token_accuracy"])
        assert r.data["success_at_budget"] == twin.data["success"]
        assert c["steps"] > c["budget"] if c["optimizer"] == "sgd" else c["steps"] == c["budget"]


def test_e7_prediction_depends_only_on_the_initial_model(e7_quick):
    """The predicted step of a permutation seed is the reduced dynamics' time from measure_seq2seq of
    the seed's initial model, divided by the SGD learning rate — the same for its SGD and Adam runs."""
    root, _ = e7_quick
    _, results = load_results("e7", root=root)
    by_seed = {}
    for r in results:
        if r.config["name"].startswith("seq2seq-permutation-"):
            by_seed.setdefault(tuple(r.config["seed"]["spawn_key"]), []).append(r.data["predicted_step_sgd"])
    assert by_seed and all(len(v) == 2 and v[0] == pytest.approx(v[1], rel=1e-12) for v in by_seed.values())


@pytest.mark.parametrize("diverge_at", [100, 30])
def test_e7_a_permutation_seed_that_diverges_keeps_its_prediction_and_e4s_outcome(monkeypatch, diverge_at):
    """A permutation run whose SGD diverges after E4's budget is simulated again for the budget (the
    same seeds give the same first steps) and keeps its outcome there and its prediction; one that
    diverges within the budget failed, as E4 counts it."""
    import analysis.simulation as S
    from miniattn.train import TrainingDiverged

    config = [s.config for s in e7_reduced_vs_sim.runs("quick") if s.name.startswith("seq2seq-permutation-sgd")][0]
    real, calls = S.simulate_copy, []

    def flaky(*args, **kwargs):
        calls.append(kwargs["steps"])
        if kwargs["steps"] > config["budget"]:
            raise TrainingDiverged(diverge_at, "the training loss is inf")
        return real(*args, **kwargs)

    monkeypatch.setattr(S, "simulate_copy", flaky)
    d = e7_reduced_vs_sim.run(config)
    assert d["diverged_step"] == diverge_at and d["tau_learn_sim"] is None
    assert d["predicted_step_sgd"] == e7_reduced_vs_sim._prediction(config)["predicted_step_sgd"]
    if diverge_at > config["budget"]:
        assert calls == [config["steps"], config["budget"]]
        reference = real(config["length"], config["vocab"], model="seq2seq", lr=config["lr"], steps=config["budget"],
                         batch_size=config["batch"], init_scale=None, seed=config["seed"], dim=config["dim"],
                         eval_every=config["eval_every"], eval_size=config["eval_size"], dtype=config["dtype"])
        assert d["success_at_budget"] == bool(reference.token_accuracy[-1] > config["success_threshold"])
    else:
        assert calls == [config["steps"]] and d["success_at_budget"] is False
