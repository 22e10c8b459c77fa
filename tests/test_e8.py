"""E8 (copying permutations vs subsets with the paper's recurrent model) through the experiments framework.

E8 is registered here only for the duration of each test (``monkeypatch`` on the registry tuple).
The quick profile end to end (compute, claims, tables, notes, figures, reuse); the sizes of the
default and full profiles (never run here); E4's criteria shared, not copied; a diverged run recorded
as a failure.
"""

import math

import numpy as np
import pytest

import analysis.experiments.registry as registry
from analysis.claims import VERDICTS
from analysis.experiments import e4_copy as E4
from analysis.experiments import e8_recurrent_copy as E8
from analysis.experiments.framework import compute, load_results, plot
from analysis.sweep import SerialExecutor

E8_INFO = registry.ExperimentInfo("e8", "analysis.experiments.e8_recurrent_copy",
                                  "E8 - Copying permutations vs subsets with the paper's recurrent model")


@pytest.fixture
def registered(monkeypatch):
    if not any(info.id == "e8" for info in registry.EXPERIMENTS):
        monkeypatch.setattr(registry, "EXPERIMENTS", registry.EXPERIMENTS + (E8_INFO,))


def test_e8_quick_profile_end_to_end(tmp_path, registered):
    summary = compute("e8", "quick", root=tmp_path, executor=SerialExecutor())
    assert summary["profile"] == "quick" and len(summary["runs"]) == 4
    claims = summary["claims"]
    assert len(claims) == 3 and [c["kind"] for c in claims] == ["reproduction"] * 3
    for c, crit in zip(claims, (E4.EVERY_TIME, E4.FREQUENTLY_FAIL, E4.CONTRAST)):
        assert c["verdict"] in VERDICTS and c["n"] == 2
        assert (c["criterion"]["name"], c["criterion"]["why"]) == (crit.name, crit.why)
        lo, hi = c["interval"]
        assert lo <= c["value"] <= hi
        assert "released code, rerun" in c["paper"]
    assert "10/10" in claims[0]["paper"] and "6/10" in claims[1]["paper"]
    assert "0.40" in claims[2]["paper"]
    assert any("the authors' released code, rerun: 10/10 and 6/10" in n for n in summary["notes"])
    assert any("Quick profile" in n for n in summary["notes"])
    side, detail = summary["tables"]
    for table in (side, detail):
        assert all(len(row) == len(table["columns"]) for row in table["rows"])
    rows = side["rows"]
    assert [row[3] for row in rows[:2]] == ["6/10", "10/10"]       # arms in order: permutation, subset
    assert rows[2][0].startswith("contrast") and rows[2][3] == "+0.40"
    assert "released code" in side["title"] and len(detail["rows"]) == 2

    paths = plot("e8", root=tmp_path)
    assert [p.name for p in paths] == ["e8_curves.png", "e8_success.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    again = compute("e8", "quick", root=tmp_path, executor=SerialExecutor())
    assert again["runs_reused"] == len(again["runs"])
    _, results = load_results("e8", root=tmp_path)
    assert results.distinct("arm") == ["permutation", "subset"]
    for r in results:
        c = r.config
        assert (c["length"], c["dim"], c["hidden"], c["steps"], c["encoder"]) == (8, 16, 8, 40, "lstm")
        assert r.data["success"] == (r.data["final_token_accuracy"] > E4.SUCCESS)
        assert len(r.data["token_accuracy"]) == len(r.data["attention_accuracy"]) == 40 // 10 + 1


def test_e8_default_and_full_sizes():
    for profile, dim, hidden, dtype, eval_size in (("default", 128, 64, "float32", 128),
                                                   ("full", 512, 256, "float64", 256)):
        specs = E8.runs(profile)
        assert len({s.name for s in specs}) == len(specs)
        for arm, vocab in (("permutation", 40), ("subset", 60)):
            confs = [s.config for s in specs if s.config["arm"] == arm]
            assert len(confs) == 20
            for c in confs:
                assert (c["length"], c["vocab"], c["encoder"], c["optimizer"], c["lr"], c["steps"], c["batch"],
                        c["dim"], c["hidden"], c["dtype"], c["eval_size"], c["success_threshold"]) == \
                    (40, vocab, "lstm", "adam", 1e-3, 200, 128, dim, hidden, dtype, eval_size, 0.95)
        # The two arms use the same seeds (E4's root).
        seeds = lambda arm: [s.config["seed"] for s in specs if s.config["arm"] == arm]
        assert seeds("permutation") == seeds("subset")


def test_e8_shares_e4_criteria():
    assert E8.EVERY_TIME is E4.EVERY_TIME and E8.FREQUENTLY_FAIL is E4.FREQUENTLY_FAIL
    assert E8.CONTRAST is E4.CONTRAST
    assert E8.newcombe_interval is E4.newcombe_interval and E8.difference_claim is E4.difference_claim
    d, (lo, hi) = E8._released_contrast()
    assert d == pytest.approx(0.4) and (lo, hi) == E4.newcombe_interval(1.0, 10, 0.6, 10)
    assert lo < 0.4 < hi <= 1.0


def test_e8_diverged_run_is_a_recorded_failure(monkeypatch):
    import miniattn.train as T

    def diverge(*args, **kwargs):
        raise T.TrainingDiverged(3, "loss is nan")

    monkeypatch.setattr(T, "train", diverge)
    config = E8.runs("quick")[0].config
    out = E8.run(config)
    assert out["success"] is False and out["final_token_accuracy"] == 0.0
    assert "diverged at step 3" in out["diverged"]
    assert len(out["token_accuracy"]) == config["steps"] // config["eval_every"] + 1
    assert np.all(np.isnan(out["token_accuracy"]))


def test_e8_run_records_curves():
    config = dict(E8.runs("quick")[-1].config, steps=10, eval_size=16)
    out = E8.run(config)
    np.testing.assert_array_equal(out["steps"], [0, 10])
    assert out["final_token_accuracy"] == out["token_accuracy"][-1]
    assert out["diverged"] is None
    assert all(math.isfinite(x) for x in out["attention_accuracy"])
