"""E1 (toy: closed form vs gradient descent) and E2 (two stages) through the experiments framework."""

import json
import math

import numpy as np
import pytest

from analysis.claims import VERDICTS
from analysis.experiments import e1_toy, e2_two_stages
from analysis.experiments.framework import compute, plot
from analysis.sweep import SerialExecutor, spawn_seed_records


def _check_summary(summary):
    assert summary["claims"], "an experiment must state claims"
    for claim in summary["claims"]:
        assert claim["verdict"] in VERDICTS
        assert claim["criterion"]["name"] and claim["criterion"]["why"]
        assert claim["kind"] in ("reproduction", "check", "beyond")


# ------------------------------------------------------------------------------------------------
# E1
# ------------------------------------------------------------------------------------------------

def test_e1_quick_end_to_end(tmp_path):
    summary = compute("e1", "quick", root=tmp_path, executor=SerialExecutor())
    _check_summary(summary)
    # Deterministic checks of our own closed form: every one must hold at the quick step sizes too.
    assert [c["verdict"] for c in summary["claims"]] == ["holds"] * len(summary["claims"])
    kinds = {c["kind"] for c in summary["claims"]}
    assert kinds == {"check", "reproduction"}
    paths = plot("e1", root=tmp_path)
    assert {p.name for p in paths} == {"e1_toy.png", "e1_convergence.png"}
    assert all(p.stat().st_size > 0 for p in paths)
    stored = json.loads((tmp_path / "e1" / "summary.json").read_text())
    assert stored["profile"] == "quick" and stored["tables"][0]["rows"]


def test_e1_run_matches_closed_form_and_blog():
    out = e1_toy.run({"kind": "uniform", "beta0": 0.0, "beta1": 0.0, "p": 0.5, "lr": 1e-3, "tau_max": 1.2,
                      "taus": [0.5, 1.0]})
    assert abs(out["p_gd_at_0.5"] - 0.630) < 1e-3
    assert abs(out["p_closed_exact_1"] - 1.089) < 5e-4
    assert abs(out["hit_gd"] - 0.931) < 2e-3
    assert abs(out["slope_margin"] - 1.0) < e1_toy.ORDER_TOL
    assert abs(out["slope_gate"] - 2.0) < e1_toy.ORDER_TOL
    assert out["tau"].size <= e1_toy.RECORD_POINTS + 2
    wrong = e1_toy.run({"kind": "wrong", "beta0": 10.0, "beta1": -10.0, "p": 0.5, "lr": 1e-3, "tau_max": 0.1,
                        "taus": []})
    assert wrong["dp_dtau_0_gd"] == pytest.approx(-20.0, abs=1e-9)
    assert wrong["hit_gd"] is None and math.isinf(wrong["hit_closed"])
    assert e1_toy.run({"kind": "loss", "K": 2.0})["loss"] == pytest.approx(-4.0)


def test_e1_profiles_keep_the_step_sizes():
    lrs = {p: sorted(r.config["lr"] for r in e1_toy.runs(p) if r.config["kind"] == "uniform") for p in
           ("quick", "default", "full")}
    assert lrs["default"] == [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    assert lrs["full"] == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    assert len({r.name for r in e1_toy.runs("full")}) == len(e1_toy.runs("full"))


# ------------------------------------------------------------------------------------------------
# E2
# ------------------------------------------------------------------------------------------------

def test_e2_quick_end_to_end(tmp_path):
    summary = compute("e2", "quick", root=tmp_path, executor=SerialExecutor())
    _check_summary(summary)
    table = summary["tables"][0]
    assert len(table["rows"]) == len(e2_two_stages.runs("quick"))
    assert {row[5] for row in table["rows"]} <= {"KTIW", "attention", "tie", "undetermined"}
    copy_note = [c["note"] for c in summary["claims"] if c["statement"].startswith("copy: attention follows")][0]
    assert "n = 11 source positions" in copy_note and "k = ⌈0.05·11⌉ = 1" in copy_note
    paths = plot("e2", root=tmp_path)
    assert [p.name for p in paths] == ["e2_two_stages.png"] and paths[0].stat().st_size > 0


def test_e2_default_profile_sizes_and_seeds():
    specs = e2_two_stages.runs("default")
    by_task = {}
    for r in specs:
        by_task.setdefault(r.config["task_name"], []).append(r.config)
    assert sorted(by_task) == ["classification", "copy", "translation"]
    cls, cp = by_task["classification"][0]["task"], by_task["copy"][0]["task"]
    assert (cls["vocab"], cls["length"], cls["dim"], cls["lr"], cls["steps"], cls["batch"]) == (200, 20, 16, 1e-2, 300, 64)
    assert (cp["length"], cp["vocab"], cp["dim"], cp["lr"], cp["steps"], cp["batch"]) == (40, 60, 128, 20.0, 200, 128)
    tr = by_task["translation"][0]["task"]
    assert (tr["vocab"], tr["length"], tr["dim"], tr["optimizer"], tr["steps"]) == (60, 10, 32, "adam", 200)
    # At least 10 seeds per task (the first two are the seeds used before, unchanged).
    for task in by_task.values():
        assert [c["seed"] for c in task] == spawn_seed_records(e2_two_stages.ROOT_SEED, 10)
    assert all(c["eval_size"] == 128 and c["fit_size"] == 3000 for c in by_task["copy"])
    assert len(e2_two_stages.runs("full")) == 3 * 20


def test_e2_eval_steps_dense_early():
    steps = e2_two_stages._eval_steps(30, [[10, 1], [20, 2], [30, 5]])
    assert steps == list(range(11)) + [12, 14, 16, 18, 20, 25, 30]


def test_crossing_time_interpolates_linearly():
    steps = np.array([0.0, 10.0, 20.0, 30.0])
    frac = e2_two_stages.progress(np.array([1.0, 1.2, 2.0, 3.0]))       # 0, 0.1, 0.5, 1
    np.testing.assert_allclose(frac, [0.0, 0.1, 0.5, 1.0])
    assert e2_two_stages.crossing_time(steps, frac) == pytest.approx(20.0)
    frac = e2_two_stages.progress(np.array([0.0, 0.2, 0.6, 1.0]))
    assert e2_two_stages.crossing_time(steps, frac) == pytest.approx(10.0 + 10.0 * 0.3 / 0.4)
    # A decreasing quantity: progress still counts the fraction of its (negative) final change.
    frac = e2_two_stages.progress(np.array([1.0, 0.0, 0.0, 0.0]))
    assert e2_two_stages.crossing_time(steps, frac) == pytest.approx(5.0)
    assert e2_two_stages.progress(np.array([0.5, 0.7, 0.5])) is None
    assert e2_two_stages.crossing_time(steps, None) is None


def test_ktiw_first_is_strict_a_tie_does_not_pass():
    assert e2_two_stages._first(10.0, 10.0) == "tie"
    assert e2_two_stages._first(5.0, 10.0) == "KTIW" and e2_two_stages._first(10.0, 5.0) == "attention"
    assert e2_two_stages._first(None, 5.0) == "undetermined"
    crit = e2_two_stages.STRICTLY_POSITIVE
    assert crit.verdict(0.0, 0.0) == "fails"          # every seed tied
    assert crit.verdict(0.0, 3.0) == "undecided"
    assert crit.verdict(0.5, 3.0) == "holds"


def test_e2_run_tiny_config():
    config = {"task_name": "classification", "eval_size": 16, "fit_size": 200, "frac": 0.05,
              "seed": spawn_seed_records(1, 1)[0], "schedule": [[4, 1], [8, 2], [12, 4]],
              "task": {"vocab": 30, "length": 8, "min_length": 5, "keywords_per_class": 2, "keyword_strength": 0.9,
                       "noise": 0.1, "dim": 4, "optimizer": "adam", "lr": 3e-2, "steps": 12, "batch": 16}}
    out = e2_two_stages.run(config)
    np.testing.assert_array_equal(out["steps"], [0, 1, 2, 3, 4, 6, 8, 12])
    np.testing.assert_array_equal(out["twin_steps"], [0, 4, 8, 12])
    for key in ("normal_ktiw_salient", "normal_attention_salient", "uniform_ktiw_salient", "agreement_alpha_beta_px"):
        assert np.all((out[key] >= 0) & (out[key] <= 1)), key
    assert out["normal_ktiw_salient"].shape == out["steps"].shape
    assert out["first"] in ("KTIW", "attention", "tie", "undetermined")
    if out["lead"] is not None:
        assert out["lead"] == pytest.approx(out["t_attention"] - out["t_ktiw"])
    # Both twins start from the same initialisation: equal KTIW probe on the salient words at step 0.
    assert out["normal_ktiw_salient"][0] == pytest.approx(out["uniform_ktiw_salient"][0])
