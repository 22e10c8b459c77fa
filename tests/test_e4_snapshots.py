"""E4's attention snapshots: the probe example's α at every evaluation of the Adam arm's first seed.

The probe is recorded through ``train``'s ``on_eval`` hook for exactly one run per copy distribution,
it does not perturb training (the learning curves are bit-identical with and without it), it is a
fixed example drawn from its own seed stream, and the quick profile draws the two-stage figure.
"""

import numpy as np
import pytest

from analysis import plotting as P
from analysis.experiments import e4_copy as E4
from analysis.experiments.framework import compute, load_results, plot
from analysis.sweep import SerialExecutor, seed_children, spawn_seed_records
from miniattn.tasks import CopyTask


def _short(config, **kw):
    return dict(config, steps=20, eval_size=16, **kw)


def test_only_the_adam_first_seed_of_each_arm_records_snapshots():
    specs = E4.runs("quick")
    chosen = [(s.config["setting"], s.config["arm"]) for s in specs if s.config["probe_snapshots"]]
    assert chosen == [("adam", "permutation"), ("adam", "subset")]
    seeds = spawn_seed_records(E4.ROOT_SEED, 2)
    for s in specs:
        assert s.config["seed"] in seeds                      # the seeds are unchanged
        assert s.config["probe_snapshots"] == (s.config["setting"] == "adam" and s.config["seed"] == seeds[0])
    default = [s for s in E4.runs("default") if s.config["probe_snapshots"]]
    assert len(default) == 2 and all(s.config["seed"] == seeds[0] for s in default)


def test_run_records_probe_attention_at_every_evaluation():
    config = _short(E4.runs("quick")[0].config)
    assert config["probe_snapshots"] and config["arm"] == "permutation"
    out = E4.run(config)
    np.testing.assert_array_equal(out["probe_steps"], out["steps"])
    np.testing.assert_array_equal(out["steps"], [0, 10, 20])
    att = out["probe_attention"]
    S = T = config["length"] + 1
    assert att.shape == (3, T, S) and att.dtype == np.float32
    assert np.all(np.isfinite(att)) and np.all(att >= 0)
    np.testing.assert_allclose(att.sum(axis=-1), 1.0, atol=1e-5)
    assert not np.allclose(att[0], att[-1])                   # training moved the attention
    # The probe is example 0 of a sample from child 2 of the run's seed.
    task = CopyTask(config["length"], config["vocab"], "permutation")
    probe = task.sample(np.random.default_rng(seed_children(config["seed"], 3)[2]), 1)
    np.testing.assert_array_equal(out["probe_source"], probe.source[0])
    np.testing.assert_array_equal(out["probe_target"], probe.target_out[0])
    np.testing.assert_array_equal(out["probe_alignment"], np.arange(T))


def test_the_probe_does_not_change_training():
    config = _short(E4.runs("quick")[2].config)               # adam-subset-s00
    assert config["probe_snapshots"] and config["arm"] == "subset"
    with_probe = E4.run(config)
    without = E4.run(dict(config, probe_snapshots=False))
    assert not any(k.startswith("probe_") for k in without)
    for key in ("token_accuracy", "attention_accuracy", "loss", "train_loss"):
        np.testing.assert_array_equal(with_probe[key], without[key])
    again = E4.run(config)
    np.testing.assert_array_equal(again["probe_attention"], with_probe["probe_attention"])


def test_last_snapshot_is_the_trained_models_attention():
    # The hook sees the model after the step it is called for: α at the final step equals the
    # forward pass of the model trained for that many steps (here 0 steps: the initial model).
    config = dict(_short(E4.runs("quick")[2].config), steps=0)
    out = E4.run(config)
    from miniattn.models.seq2seq import Seq2SeqAttention
    init_seq, _, probe_seq = seed_children(config["seed"], 3)
    task = CopyTask(config["length"], config["vocab"], "subset")
    model = Seq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length,
                             task.target_length, dim=config["dim"], rng=np.random.default_rng(init_seq),
                             dtype=np.dtype(config["dtype"]))
    probe = task.sample(np.random.default_rng(probe_seq), 1)
    np.testing.assert_array_equal(out["probe_attention"][0], model.forward(probe).attention[0].astype(np.float32))


def test_quick_profile_stores_snapshots_and_draws_the_stage_figure(tmp_path):
    summary = compute("e4", "quick", root=tmp_path, executor=SerialExecutor())
    stage_notes = [n for n in summary["notes"] if n.startswith("Figure e4_attention_stages")]
    assert len(stage_notes) == 1 and "adam-subset-s00" in stage_notes[0] and "adam-permutation-s00" in stage_notes[0]
    _, results = load_results("e4", root=tmp_path)
    with_probe = [r for r in results if "probe_attention" in r.data]
    assert sorted(r.config["arm"] for r in with_probe) == ["permutation", "subset"]
    assert all(r.config["setting"] == "adam" for r in with_probe)
    for r in with_probe:
        np.testing.assert_array_equal(r.data["probe_steps"], r.data["steps"])
    paths = plot("e4", root=tmp_path)
    assert [p.name for p in paths] == ["e4_curves.png", "e4_success.png", "e4_attention_stages.png"]
    stage = paths[-1]
    assert stage.parent == tmp_path / "figures" and stage.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stage_figure_without_snapshots_is_skipped(tmp_path):
    # Results stored before snapshots existed (no probe arrays) still plot the other figures.
    compute("e4", "quick", root=tmp_path, executor=SerialExecutor())
    _, results = load_results("e4", root=tmp_path)
    for r in results:
        for key in [k for k in r.data if k.startswith("probe_")]:
            del r.data[key]
    assert [p.name for p in E4.figures(results)] == ["e4_curves.png", "e4_success.png"]


# ------------------------------------------------------------------------------------ plotting


@pytest.mark.parametrize("n, k, expected", [(21, 6, [0, 4, 8, 12, 16, 20]), (5, 6, [0, 1, 2, 3, 4]),
                                            (1, 6, [0]), (11, 3, [0, 5, 10]), (7, 1, [6])])
def test_checkpoint_indices(n, k, expected):
    np.testing.assert_array_equal(P.checkpoint_indices(n, k), expected)


@pytest.mark.parametrize("n, k", [(0, 6), (5, 0), (2.0, 3), (True, 2)])
def test_checkpoint_indices_rejects_bad_sizes(n, k):
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        P.checkpoint_indices(n, k)


def _row(K=4, T=3, S=3, **kw):
    att = np.full((K, T, S), 1.0 / S)
    row = {"label": "x", "steps": np.arange(K) * 10, "attention": att, "curve_steps": np.arange(K) * 10,
           "token_accuracy": np.linspace(0, 1, K), "attention_accuracy": np.linspace(0, 1, K)}
    row.update(kw)
    return row


def test_stage_figure_layout():
    import matplotlib.pyplot as plt
    fig = P.attention_stages_figure([_row(K=21), _row(K=3)], checkpoints=6)
    try:
        axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        maps = [ax for ax in axes if ax.images and ax.get_visible()]
        assert len(maps) == 6 + 3                             # 6 checkpoints of 21, all 3 of 3
        assert [ax.get_title() for ax in maps[:6]] == [f"step {s}" for s in (0, 40, 80, 120, 160, 200)]
    finally:
        plt.close(fig)


@pytest.mark.parametrize("row, match", [
    (_row(attention=np.zeros((3, 3))), r"rows\[0\]\['attention'\] must be \(K, T, S\)"),
    (_row(steps=np.arange(3)), r"rows\[0\]\['steps'\] must have shape"),
    (_row(steps=np.array([0, 10, 10, 20])), "strictly increasing"),
    ({k: v for k, v in _row().items() if k != "token_accuracy"}, "needs 'token_accuracy'"),
])
def test_stage_figure_rejects_bad_rows(row, match):
    with pytest.raises(ValueError, match=match):
        P.attention_stages_figure([row])
    with pytest.raises(ValueError, match="at least one run"):
        P.attention_stages_figure([])


def test_attention_map_rejects_bad_weights():
    import matplotlib.pyplot as plt
    fig, axes = P.new_figure()
    try:
        with pytest.raises(ValueError, match=r"weights must be a non-empty \(T, S\) array"):
            P.attention_map(axes[0, 0], np.zeros(3))
        with pytest.raises(ValueError, match="weights must be finite"):
            P.attention_map(axes[0, 0], np.full((2, 2), np.nan))
        with pytest.raises(ValueError, match=r"alignment must have shape \(T,\)"):
            P.attention_map(axes[0, 0], np.eye(2), alignment=np.arange(3))
    finally:
        plt.close(fig)
