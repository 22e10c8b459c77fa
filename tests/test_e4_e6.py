"""E4 (copying permutations vs subsets) and E6 (multi-head rescue) through the experiments framework.

The quick profiles end to end (compute, claims, tables, figures, reuse), Newcombe's interval of a
difference of two rates against published and closed-form values, and E6's draws of heads without
replacement.
"""

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from analysis.claims import VERDICTS, at_least
from analysis.experiments import e4_copy as E4
from analysis.experiments import e6_multihead as E6
from analysis.experiments.framework import compute, load_results, plot
from analysis.stats import wilson_interval
from analysis.sweep import SerialExecutor


def _check_summary(summary):
    for claim in summary["claims"]:
        assert claim["verdict"] in VERDICTS
        assert claim["criterion"]["name"] and claim["criterion"]["why"]
        assert claim["n"] is not None
    for table in summary["tables"]:
        assert all(len(row) == len(table["columns"]) for row in table["rows"])


# ------------------------------------------------------------------------------------------- E4


def test_e4_quick_profile_end_to_end(tmp_path):
    summary = compute("e4", "quick", root=tmp_path, executor=SerialExecutor())
    assert summary["profile"] == "quick"
    _check_summary(summary)
    claims = summary["claims"]
    assert len(claims) == 6                                  # 2 settings x (subset, permutation, contrast)
    crit = [c["criterion"] for c in claims]
    # One reading of the paper's words, shared by the settings.
    assert crit[0] == crit[3] and crit[0]["low"] == 0.8 and math.isinf(crit[0]["high"])
    assert crit[1] == crit[4] and crit[1]["high"] == 0.75
    assert crit[2] == crit[5] and crit[2]["low"] == 0.0
    for c in claims:
        lo, hi = c["interval"]
        assert lo <= c["value"] <= hi
        assert c["n"] == 2
        if c["verdict"] == "undecided" and c["value"] != c["criterion"]["low"]:
            assert c["n_to_decide"] is None or c["n_to_decide"] > 2
    assert [c["kind"] for c in claims] == ["reproduction"] * 3 + ["beyond"] * 3
    paths = plot("e4", root=tmp_path)
    assert [p.name for p in paths] == ["e4_curves.png", "e4_success.png", "e4_attention_stages.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    again = compute("e4", "quick", root=tmp_path, executor=SerialExecutor())
    assert again["runs_reused"] == len(again["runs"])
    _, results = load_results("e4", root=tmp_path)
    assert results.distinct("setting") == ["adam", "sgd"] and results.distinct("arm") == ["permutation", "subset"]


def test_e4_run_records_curves_and_success():
    config = dict(E4.runs("quick")[0].config, steps=10, eval_size=16)
    out = E4.run(config)
    np.testing.assert_array_equal(out["steps"], [0, 10])
    assert out["final_token_accuracy"] == out["token_accuracy"][-1]
    assert out["success"] == (out["final_token_accuracy"] > E4.SUCCESS)
    assert out["diverged"] is None


def test_newcombe_interval_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873, Table II: 56/70 − 48/80, method 10
    # (hybrid score) gives 0.0524 to 0.3339.
    lo, hi = E4.newcombe_interval(56 / 70, 70, 48 / 80, 80)
    assert lo == pytest.approx(0.0524, abs=5e-5) and hi == pytest.approx(0.3339, abs=5e-5)


def test_newcombe_interval_by_hand():
    # n/n against 0/n: Wilson gives [l, 1] and [0, 1 − l] with l = n/(n + z²), so the interval is
    # [1 − √2 (1 − l), 1]. For n = 20: l = 20/23.8415 = 0.83887, lower = 0.77213.
    z = sps.norm.ppf(0.975)
    for n in (1, 2, 20):
        l = n / (n + z * z)
        lo, hi = E4.newcombe_interval(1.0, n, 0.0, n)
        assert lo == pytest.approx(1 - math.sqrt(2) * (1 - l), abs=1e-12) and hi == pytest.approx(1.0, abs=1e-12)
    assert E4.newcombe_interval(1.0, 20, 0.0, 20)[0] == pytest.approx(0.77213, abs=1e-5)
    # Equal rates: symmetric about 0; its own Wilson intervals agree with analysis.stats.
    lo, hi = E4.newcombe_interval(0.5, 10, 0.5, 10)
    assert lo == pytest.approx(-hi, abs=1e-12) and lo < 0 < hi
    for k, n in ((0, 5), (3, 7), (7, 7), (56, 70)):
        assert E4._wilson(k / n, n, z) == pytest.approx(wilson_interval(k, n), abs=1e-12)


def test_n_to_decide_difference_is_the_smallest_deciding_n():
    n = E4.n_to_decide_difference(1.0, 0.5, 0.0)
    assert n is not None and n > 1
    assert E4.newcombe_interval(1.0, n, 0.5, n)[0] > 0 >= E4.newcombe_interval(1.0, n - 1, 0.5, n - 1)[0]
    assert E4.n_to_decide_difference(1.0, 1.0, 0.0) is None       # a tie: no n decides it


def test_difference_claim_verdicts_follow_the_interval():
    holds = E4.difference_claim("d", ">0", [True] * 20, [False] * 20, E4.CONTRAST)
    assert holds.verdict == "holds" and holds.n == 20 and holds.interval[0] == pytest.approx(0.77213, abs=1e-5)
    tie = E4.difference_claim("d", ">0", [True, True], [True, True], E4.CONTRAST)
    assert tie.verdict == "undecided" and tie.value == 0 and tie.n_to_decide is None
    small = E4.difference_claim("d", ">0", [True, True], [True, False], E4.CONTRAST)
    assert small.verdict == "undecided" and small.n_to_decide == E4.n_to_decide_difference(1.0, 0.5, 0.0)
    worse = E4.difference_claim("d", ">0", [False] * 20, [True] * 20, at_least(0.0))
    assert worse.verdict == "fails"


def test_e4_default_and_full_sizes():
    for profile, sgd_seeds, dtype, eval_size in (("default", 20, "float32", 128), ("full", 20, "float64", 256)):
        specs = E4.runs(profile)
        adam = [s.config for s in specs if s.config["setting"] == "adam"]
        sgd = [s.config for s in specs if s.config["setting"] == "sgd"]
        assert len(adam) == 2 * 20 and len(sgd) == 2 * sgd_seeds
        for c in adam + sgd:
            assert (c["length"], c["dim"], c["steps"], c["batch"], c["dtype"], c["eval_size"]) == \
                (40, 256, 200, 128, dtype, eval_size)
            assert c["vocab"] == {"permutation": 40, "subset": 60}[c["arm"]]
        assert {c["lr"] for c in adam} == {1e-3} and {c["lr"] for c in sgd} == {20.0}


# ------------------------------------------------------------------------------------------- E6


def test_e6_quick_profile_end_to_end(tmp_path):
    summary = compute("e6", "quick", root=tmp_path, executor=SerialExecutor())
    _check_summary(summary)
    assert [c["statement"].split(":")[0] for c in summary["claims"]] == list(E6.ARMS)
    for c in summary["claims"]:
        assert "rests on" in c["note"] or "not formed" in c["note"]
    paths = plot("e6", root=tmp_path)
    assert [p.name for p in paths] == ["e6_multihead.png"] and paths[0].stat().st_size > 0
    _, results = load_results("e6", root=tmp_path)
    for r in results.where(phase="trial").records:
        if r.data["formed"]:
            assert len(set(r.data["head_ids"])) == len(r.data["head_ids"]) == r.config["heads"]
    again = compute("e6", "quick", root=tmp_path, executor=SerialExecutor())
    assert again["runs_reused"] == len(again["runs"])


def _trial(arm, trial, candidates=12, heads=8):
    return {**{k: E6._profile("quick")[k] for k in E6._SHARED}, "candidates": candidates, "data_seeds": 1,
            "heads": heads, "good": 0.95, "bad": 0.6, "phase": "trial", "arm": arm, "trial": trial}


def test_e6_heads_are_drawn_without_replacement():
    labels = ["bad"] * 9 + ["good"] * 3
    for arm in E6.ARMS:
        sets = set()
        for t in range(30):
            heads, why = E6.draw_heads(_trial(arm, t), labels)
            assert why == "" and len(heads) == 8 and len(set(heads)) == 8
            if arm != "8 random":
                cls = [labels[h] for h in heads]
                assert cls.count("good") == (1 if arm == "7 bad + 1 good" else 0)
            sets.add(tuple(sorted(heads)))
        assert len(sets) > 1      # the draws differ between trials (the pool is larger than 8)
    # Exactly as many bad heads as needed: every draw is the same set, no head twice.
    heads, _ = E6.draw_heads(_trial("8 bad", 0), ["bad"] * 8 + ["good"] * 4)
    assert heads == list(range(8))


def test_e6_arm_that_cannot_be_formed():
    heads, why = E6.draw_heads(_trial("8 bad", 0), ["bad"] * 7 + ["good"] * 5)
    assert heads is None and "7 bad" in why
    heads, why = E6.draw_heads(_trial("7 bad + 1 good", 0), ["bad"] * 10 + ["mixed"] * 2)
    assert heads is None and "0 good" in why
    heads, why = E6.draw_heads(_trial("8 random", 0, candidates=8), None)
    assert heads is None and "no random choice" in why


def test_e6_no_random_arm_from_a_pool_of_eight(monkeypatch):
    small = dict(E6._profile("quick"), candidates=8)
    monkeypatch.setattr(E6, "_profile", lambda profile: small)
    arms = {s.config.get("arm") for s in E6.runs("quick", _phase1_results("quick", ["bad"] * 7 + ["good"]))}
    assert arms == {None, "8 bad", "7 bad + 1 good"}


def test_e6_distinct_heads_start_distinct():
    cfg = dict(_trial("8 random", 0), seed=E6._data_seed(E6.ROOT_SEED, 0))
    _, model = E6._model(cfg, [0, 3, 5, 7])
    score = model.params["score"]
    assert score.shape[0] == 4
    for i in range(4):
        for j in range(i):
            assert not np.allclose(score[i], score[j])
    # Head i is the same matrix whichever model it is put in.
    _, alone = E6._model(cfg, [5])
    np.testing.assert_array_equal(alone.params["score"], score[2])


def _phase1_results(profile, classes):
    """Fake stored phase-1 runs of ``profile`` whose candidates have the given classes."""
    from analysis.experiments.framework import Results
    from analysis.store import StoredRun
    acc = {"good": (1.0, 1.0), "bad": (0.1, 0.1), "mixed": (0.8, 0.8)}
    recs = [StoredRun({"name": s.name, "config": s.config,
                       "data": dict(zip(("max_accuracy", "final_accuracy"), acc[classes[s.config["head"]]]))})
            for s in E6.runs(profile)]
    return Results("e6", profile, recs, Path("."))


def test_e6_trial_heads_come_from_the_stored_phase1_runs():
    n = E6._profile("default")["candidates"]
    classes = ["good" if i in (2, 5) else "bad" for i in range(n)]
    specs = E6.runs("default", _phase1_results("default", classes))
    trials = [s.config for s in specs if s.config["phase"] == "trial"]
    assert trials, "phase 2 is listed once phase 1 is stored"
    for c in trials:
        heads = c["head_ids"]
        assert len(heads) == len(set(heads)) == c["heads"]       # without replacement
        if c["arm"] == "8 bad":
            assert all(classes[h] == "bad" for h in heads) and c["labels_used"] == ["bad"] * len(heads)
        elif c["arm"] == "7 bad + 1 good":
            assert sorted(classes[h] for h in heads) == ["bad"] * (len(heads) - 1) + ["good"]
    assert E6.runs("default") == [s for s in specs if s.config["phase"] == "head"]


def test_e6_default_sizes():
    n = E6._profile("default")["candidates"]
    specs = E6.runs("default", _phase1_results("default", ["bad"] * (n - 2) + ["good"] * 2))
    heads = [s.config for s in specs if s.config["phase"] == "head"]
    trials = [s.config for s in specs if s.config["phase"] == "trial"]
    # The evidence profile: the paper's L = V = 40, a pool of 32, >= 20 trials per arm (issue: E6 at L = 40).
    assert len(heads) == 32 * 3 and len(trials) == 3 * 20
    for c in heads + trials:
        assert (c["length"], c["dim"], c["lr"], c["steps"], c["batch"], c["eval_size"], c["dtype"]) == \
            (40, 64, 1.5e-3, 200, 128, 128, "float32")
    nf = E6._profile("full")["candidates"]
    full = [s.config for s in E6.runs("full", _phase1_results("full", ["bad"] * (nf - 2) + ["good"] * 2))]
    assert sum(c["phase"] == "head" for c in full) == 32 * 3 and sum(c["phase"] == "trial" for c in full) == 3 * 50
    assert {(c["length"], c["dim"], c["dtype"]) for c in full} == {(40, 256, "float64")}


def test_e6_model_has_the_configured_dtype():
    cfg = dict(_trial("8 random", 0), seed=E6._data_seed(E6.ROOT_SEED, 0), dtype="float32")
    _, model = E6._model(cfg, [0, 3])
    assert {v.dtype for v in model.params.values()} == {np.dtype(np.float32)}
    _, alone = E6._model(cfg, [3])
    # The same head drawn in float64 and cast: identical to the corresponding slice of the 2-head model.
    np.testing.assert_array_equal(alone.params["score"], model.params["score"][1])
