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


# ------------------------------------------------------------------------------------------------
# Ties of β^px between different words are not agreement
# ------------------------------------------------------------------------------------------------

from analysis.agreement import shuffle_within_items, top_k_match  # noqa: E402


def test_break_word_ties_breaks_ties_between_different_words_only():
    beta = np.array([[[1.0, 1.0, 1.0, 3.0, 0.5, np.nan]]])
    sources = np.array([[7, 8, 7, 9, 4, 0]])
    mask = np.array([[True] * 5 + [False]])
    for seed in range(20):
        r = E3.break_word_ties(beta, sources, mask, np.random.default_rng(seed))[0, 0]
        assert np.isnan(r[5])
        assert r[3] > max(r[:3]) and r[4] < min(r[:3])        # distinct values keep their order
        assert r[0] == r[2] and r[1] != r[0]                   # same word tied, different words not
    with pytest.raises(ValueError, match="beta"):
        E3.break_word_ties(beta[0], sources, mask, np.random.default_rng(0))


def test_a_tie_at_the_top_between_different_words_is_no_longer_an_accidental_match():
    """β^px ties m different (e.g. unseen) words at its top; β^uf's top is one of them. The strict
    count of top_k_match calls every such item a match (A = 1); with the tie broken at random it is
    a match with chance 1/m, and the shuffled baseline comes back to k/n."""
    rng = np.random.default_rng(np.random.SeedSequence(41))
    N, S, m = 4000, 10, 4
    beta_px = rng.normal(size=(N, 1, S)) - 5.0
    beta_px[:, 0, :m] = 0.0                                   # m different words share the top value
    sources = np.broadcast_to(np.arange(S), (N, S)).copy()   # all different words
    mask = np.ones((N, S), bool)
    beta_uf = rng.normal(size=(N, 1, S))
    beta_uf[np.arange(N), 0, rng.integers(0, m, N)] = 10.0   # β^uf's top: one of the tied words
    raw = top_k_match(beta_uf, beta_px)
    assert np.all(raw == 1.0)
    broken = E3.break_word_ties(beta_px, sources, mask, np.random.default_rng(3))
    fixed = np.mean(top_k_match(beta_uf, broken))
    assert abs(fixed - 1 / m) < 4 * np.sqrt((1 / m) * (1 - 1 / m) / N)
    valid = np.ones(broken.shape, bool)
    shuffled = np.mean(top_k_match(beta_uf, shuffle_within_items(broken, valid, np.random.default_rng(4))))
    assert abs(shuffled - 1 / S) < 4 * np.sqrt(0.1 * 0.9 / N)
    raw_shuffled = np.mean(top_k_match(beta_uf, shuffle_within_items(beta_px, valid, np.random.default_rng(4))))
    assert raw_shuffled > 2 / S                                 # the tie inflated the baseline too


def test_run_records_the_beta_px_diagnostics(no_text):
    config = dict(next(r.config for r in E3.runs("quick") if r.config["task_name"] == "classification"))
    config["task"] = dict(config["task"], steps=6)
    config.update(checkpoints=3, eval_size=30, fit_size=200, n_boot=10, seed=spawn_seed_records(8, 1)[0])
    out = E3.run(config)
    assert out["beta_px_fit"]["method"] == "regression" and out["beta_px_fit"]["n_train"] == 200
    assert 0.0 <= out["beta_px_unseen_tokens"] <= 1.0 and 0.0 <= out["beta_px_tied_top"] <= 1.0
    assert 0.0 <= out["beta_uf_vs_beta_px"]["raw_A"] <= 1.0


def test_probes_and_attention_in_chunks_equal_the_whole_batch():
    from analysis.probes import probe_all
    from miniattn.models.seq2seq import Seq2SeqAttention
    from miniattn.tasks import TranslationTask

    rng = np.random.default_rng(np.random.SeedSequence(42))
    task = TranslationTask(12, 12, 6, rng=rng)
    batch = task.sample(rng, 23)
    model = Seq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length, task.target_length,
                             dim=8, rng=rng)
    whole, parts = probe_all(model, batch), E3._probes_in_chunks(model, batch, rows=5)
    for field in ("alpha", "beta", "delta", "mask"):
        np.testing.assert_allclose(getattr(parts, field), getattr(whole, field), rtol=1e-12, atol=1e-15)
    att = E3._in_chunks(lambda b: np.asarray(model.forward(b).attention), batch, 4)
    np.testing.assert_allclose(att, model.forward(batch).attention, rtol=1e-12)
    assert E3._eval_rows(batch, task.output_vocab_size) >= 1
