"""E3 through the experiments framework: the quick profile end to end, and one run's contents."""

import math

import numpy as np
import pytest

from analysis.claims import VERDICTS
from analysis.experiments import e3_agreement as E3
from analysis.experiments.framework import compute, load_results, plot
from analysis.sweep import SerialExecutor, spawn_seed_records


@pytest.fixture
def no_text(monkeypatch):
    # The user's text files are read from the environment by runs(); keep this test synthetic.
    for name in ("E3_TEXT", "E3_PARALLEL_SOURCE", "E3_PARALLEL_TARGET"):
        monkeypatch.delenv(name, raising=False)


def test_quick_profile_end_to_end(tmp_path, no_text):
    summary = compute("e3", "quick", root=tmp_path, executor=SerialExecutor())
    assert summary["profile"] == "quick"
    assert len(summary["claims"]) == 2 * len(E3.ROWS)
    for claim in summary["claims"]:
        assert claim["verdict"] in VERDICTS
        assert claim["criterion"]["name"] and claim["criterion"]["why"]
        assert claim["criterion"]["low"] == E3.MIN_GAP
        assert claim["kind"] == "reproduction" and "Â =" in claim["paper"]
    titles = [t["title"] for t in summary["tables"]]
    assert any(t.startswith("Agreement") for t in titles) and any(t.startswith("ξ") for t in titles)
    for table in summary["tables"]:
        assert all(len(row) == len(table["columns"]) for row in table["rows"])
    paths = plot("e3", root=tmp_path)
    assert [p.name for p in paths] == ["e3_agreement.png"] and paths[0].stat().st_size > 0
    # Nothing changed: a second compute reuses every run.
    again = compute("e3", "quick", root=tmp_path, executor=SerialExecutor())
    assert again["runs_reused"] == len(again["runs"])
    _, results = load_results("e3", root=tmp_path)
    assert results.distinct("task_name") == ["classification", "translation"]


def test_run_trains_both_twins_and_measures_the_table(no_text):
    config = dict(next(r.config for r in E3.runs("quick") if r.config["task_name"] == "translation"))
    config["task"] = dict(config["task"], steps=8)
    config.update(checkpoints=4, eval_size=20, fit_size=100, n_boot=10, seed=spawn_seed_records(7, 1)[0])
    out = E3.run(config)
    assert out["diverged"] is False
    np.testing.assert_array_equal(out["checkpoint_steps"], [0, 2, 4, 6, 8])
    for label in ("normal", "uniform"):
        assert out[f"{label}_accuracy_curve"].shape == (5,)
        assert out[f"{label}_final_accuracy"] == out[f"{label}_accuracy_curve"][-1]
    for row in E3.ROWS:
        assert 0.0 <= out[row]["A"] <= 1.0 and 0.0 <= out[row]["A_hat"] <= 1.0 and out[row]["n_items"] > 0
    assert set(out["xi"]) == {f"{v:g}" for v in E3.XI_LEVELS}
    # ξ(v) is an accuracy on the curve (or NaN when no checkpoint agrees enough).
    for v in out["xi"].values():
        assert math.isnan(v) or v in out["normal_accuracy_curve"]
    assert out["xi_star"] == out["normal_accuracy_curve"].max()
    # Same config, same result: the twins' batches and the shuffles come from the recorded seed.
    again = E3.run(config)
    np.testing.assert_array_equal(again["normal_accuracy_curve"], out["normal_accuracy_curve"])
    assert again["alpha_vs_beta_uf"] == out["alpha_vs_beta_uf"]


# The overflow is the point here: NumPy warns on the way to the inf that train() reports (the
# project's pytest settings turn that warning into an error).
@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_a_diverged_training_is_a_recorded_failure(no_text):
    config = dict(next(r.config for r in E3.runs("quick") if r.config["task_name"] == "classification"))
    # Adam moves every parameter by about lr per step: at lr = 1e200 the logits overflow at once.
    config["task"] = dict(config["task"], steps=30, lr=1e200)
    config.update(checkpoints=3, eval_size=20, fit_size=100, n_boot=10)
    out = E3.run(config)
    assert out["diverged"] is True and out["diverged_model"] in ("normal", "uniform")
    assert out["diverged_step"] >= 1 and "diverged" in out["diverged_reason"]
