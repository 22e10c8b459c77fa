"""miniattn.runplot: attention snapshots recorded through train's on_eval hook, and `miniattn plot`.

A tiny training run with the recorder, then plot_command writes the curves, the maps and the GIF;
an interrupted and resumed run ends with exactly the snapshots of an uninterrupted one (also when
thinning to max_snapshots); corrupt or inconsistent files and bad arguments give one-line errors.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from miniattn import io
from miniattn.models import AttentionClassifier, Seq2SeqAttention
from miniattn.optim import make_optimizer
from miniattn.runplot import (SNAPSHOT_NAME, SnapshotError, SnapshotRecorder, add_plot_arguments,
                              evenly_spaced, load_snapshots, parse_steps, plot_command, probe_batch)
from miniattn.tasks import CopyTask, KeywordClassificationTask
from miniattn.train import train

STEPS, EVERY = 20, 5


class Interrupt(Exception):
    pass


def _setup(heads: int = 1):
    task = CopyTask(4, 6, "subset")
    model = Seq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length,
                             task.target_length, dim=8, heads=heads, rng=np.random.default_rng(1))
    return task, model, make_optimizer("adam", model.params, lr=3e-2)


def _probe(task):
    return probe_batch(task, np.random.SeedSequence(7), size=3)


def _train(out, *, heads=1, stop_at=None, max_snapshots=200, eval_every=EVERY, checkpoint_every=10):
    task, model, opt = _setup(heads)
    recorder = SnapshotRecorder(out, _probe(task), max_snapshots=max_snapshots)

    def on_step(step, model, loss, grads):
        if stop_at is not None and step == stop_at:
            raise Interrupt
        return None

    train(model, task, opt, steps=STEPS, batch_size=8, seed=3, eval_every=eval_every, eval_size=16,
          out_dir=out, checkpoint_every=checkpoint_every, progress=False, on_eval=recorder, on_step=on_step)
    return recorder


def _args(run, *extra):
    parser = argparse.ArgumentParser()
    add_plot_arguments(parser)
    return parser.parse_args(["--run", str(run), *extra])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    _train(out)
    return out


# ------------------------------------------------------------------------------------ recording


def test_recorder_stores_attention_at_every_evaluation(run_dir):
    snaps = load_snapshots(run_dir)
    np.testing.assert_array_equal(snaps.steps, np.arange(0, STEPS + 1, EVERY))
    assert snaps.attention.shape == (5, 3, 5, 5) and snaps.attention.dtype == np.float32
    assert snaps.heads is None
    np.testing.assert_allclose(snaps.attention.sum(axis=-1), 1.0, atol=1e-5)
    assert not np.allclose(snaps.attention[0], snaps.attention[-1])     # training moved α
    task = CopyTask(4, 6, "subset")
    probe = _probe(task)
    np.testing.assert_array_equal(snaps.source, probe.source)
    np.testing.assert_array_equal(snaps.target, probe.target_out)
    assert [r["step"] for r in io.read_jsonl(run_dir / "metrics.jsonl")] == snaps.steps.tolist()


def test_last_snapshot_is_the_final_models_attention(tmp_path):
    task, model, opt = _setup()
    probe = _probe(task)
    train(model, task, opt, steps=STEPS, batch_size=8, seed=3, eval_every=EVERY, eval_size=16,
          out_dir=tmp_path, progress=False, on_eval=SnapshotRecorder(tmp_path, probe))
    np.testing.assert_array_equal(load_snapshots(tmp_path).attention[-1],
                                  model.forward(probe).attention.astype(np.float32))


def test_multi_head_and_classifier_snapshots(tmp_path):
    _train(tmp_path / "mh", heads=2)
    snaps = load_snapshots(tmp_path / "mh")
    assert snaps.attention.shape == (5, 2, 3, 5, 5) and snaps.heads == 2
    task = KeywordClassificationTask(12, 6)
    model = AttentionClassifier(task.input_vocab_size, task.output_vocab_size, dim=8, rng=np.random.default_rng(0))
    probe = probe_batch(task, 5, size=2)
    train(model, task, make_optimizer("adam", model.params, lr=1e-2), steps=10, batch_size=8, seed=0,
          eval_every=5, eval_size=8, out_dir=tmp_path / "cls", progress=False,
          on_eval=SnapshotRecorder(tmp_path / "cls", probe))
    cls = load_snapshots(tmp_path / "cls")
    assert cls.attention.shape == (3, 2, 1, 6)
    np.testing.assert_array_equal(cls.target[:, 0], probe.labels)
    assert plot_command(_args(tmp_path / "mh", "--no-gif")) == 0


# (5, 1, 20): interrupted after evaluating step 19 (stride 8 by then); without the stored stride the
# resumed run would thin from stride 1 again and end with other steps than the uninterrupted one.
@pytest.mark.parametrize("max_snapshots, eval_every, stop_at", [(200, EVERY, 17), (3, 1, 17), (4, 1, 17),
                                                                (5, 1, 20)])
def test_resumed_run_ends_with_the_uninterrupted_snapshots(tmp_path, max_snapshots, eval_every, stop_at):
    _train(tmp_path / "a", max_snapshots=max_snapshots, eval_every=eval_every)
    with pytest.raises(Interrupt):
        _train(tmp_path / "b", stop_at=stop_at, max_snapshots=max_snapshots, eval_every=eval_every)
    before = load_snapshots(tmp_path / "b")
    assert before.steps[-1] > 10                       # evaluations logged after the checkpoint at 10
    # A new recorder keeps the snapshots up to the checkpoint's step and drops the later ones.
    task, _, _ = _setup()
    kept = SnapshotRecorder(tmp_path / "b", _probe(task), max_snapshots=max_snapshots)
    assert kept.steps == [s for s in before.steps.tolist() if s <= 10]
    assert load_snapshots(tmp_path / "b").steps.tolist() == kept.steps
    _train(tmp_path / "b", max_snapshots=max_snapshots, eval_every=eval_every)
    a, b = load_snapshots(tmp_path / "a"), load_snapshots(tmp_path / "b")
    np.testing.assert_array_equal(a.steps, b.steps)
    np.testing.assert_array_equal(a.attention, b.attention)
    assert a.stride == b.stride
    assert len(a.steps) <= max_snapshots
    assert a.steps[0] == 0 and a.steps[-1] == STEPS


def test_thinning_keeps_multiples_of_the_stride_and_the_last_step(tmp_path):
    rec = _train(tmp_path, max_snapshots=4, eval_every=1)
    snaps = load_snapshots(tmp_path)
    assert snaps.stride == 8 and snaps.steps.tolist() == [0, 8, 16, 20] and rec.steps == [0, 8, 16, 20]


def test_fresh_start_drops_the_old_runs_snapshots(tmp_path):
    _train(tmp_path)
    (tmp_path / "checkpoint.npz").unlink()             # no checkpoint: the run starts over
    task, _, _ = _setup()
    assert len(SnapshotRecorder(tmp_path, _probe(task))) == 0
    assert not (tmp_path / SNAPSHOT_NAME).exists()
    # With the checkpoint present but resume=False, step 0 arrives again and replaces everything.
    _train(tmp_path / "c")
    task, model, opt = _setup()
    rec = SnapshotRecorder(tmp_path / "c", _probe(task))
    assert rec.steps == list(range(0, STEPS + 1, EVERY))
    train(model, task, opt, steps=10, batch_size=8, seed=3, eval_every=EVERY, eval_size=16,
          out_dir=tmp_path / "c", resume=False, progress=False, on_eval=rec)
    assert load_snapshots(tmp_path / "c").steps.tolist() == [0, 5, 10]


def test_recorder_refuses_another_probe_and_bad_arguments(run_dir, tmp_path):
    task = CopyTask(4, 6, "subset")
    other = probe_batch(task, np.random.SeedSequence(8), size=3)
    with pytest.raises(SnapshotError, match=r"attention\.npz: holds snapshots of another probe batch"):
        SnapshotRecorder(run_dir, other)
    with pytest.raises(ValueError, match="max_snapshots must be an integer >= 2"):
        SnapshotRecorder(tmp_path, _probe(task), max_snapshots=1)
    with pytest.raises(TypeError, match="probe_batch must be a Seq2SeqBatch or ClassificationBatch"):
        SnapshotRecorder(tmp_path, np.zeros((2, 3)))
    with pytest.raises(TypeError, match="out_dir must be a path"):
        SnapshotRecorder(3, _probe(task))


# ------------------------------------------------------------------------------------ validation


def _rewrite(src: Path, dst: Path, **changes) -> Path:
    data = io.load_npz(src / SNAPSHOT_NAME)
    data.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del data[key]
    dst.mkdir(parents=True, exist_ok=True)
    io.atomic_save_npz(dst / SNAPSHOT_NAME, **data)
    return dst


def _bad_cases(src: Path):
    att = io.load_npz(src / SNAPSHOT_NAME)["attention"]
    nan = att.copy()
    nan[1, 0, 0, 0] = np.nan
    return [
        ({"steps": np.array([0, 5, 5, 15, 20])}, "strictly increasing"),
        ({"steps": np.arange(4) * 5}, "attention must have shape"),
        ({"attention": nan}, "NaN or inf"),
        ({"attention": att * 3}, r"must lie in \[0, 1\]"),
        ({"attention": att.astype(np.int64)}, "attention must be a float array"),
        ({"attention": att[:, :2]}, "attention must have shape"),
        ({"steps": np.arange(5.0)}, "steps must be a non-empty 1-D integer array"),
        ({"stride": np.int64(3)}, "stride must be one integer power of 2"),
        ({"format": np.int64(9)}, "snapshot format 9"),
        ({"target": None}, "missing target"),
    ]


def test_load_validates_the_file(run_dir, tmp_path):
    for i, (changes, match) in enumerate(_bad_cases(run_dir)):
        bad = _rewrite(run_dir, tmp_path / f"bad{i}", **changes)
        with pytest.raises(SnapshotError, match=match) as err:
            load_snapshots(bad)
        assert str(bad / SNAPSHOT_NAME) in str(err.value) and "\n" not in str(err.value)


def test_corrupt_file_is_a_one_line_error(run_dir, tmp_path, capsys):
    import shutil
    run = tmp_path / "corrupt"
    shutil.copytree(run_dir, run)
    data = (run / SNAPSHOT_NAME).read_bytes()
    (run / SNAPSHOT_NAME).write_bytes(data[: len(data) // 2])       # truncated
    with pytest.raises(SnapshotError, match="not a readable snapshot file"):
        load_snapshots(run)
    task = CopyTask(4, 6, "subset")
    with pytest.raises(SnapshotError, match=str(run / SNAPSHOT_NAME)):
        SnapshotRecorder(run, _probe(task))
    capsys.readouterr()
    assert plot_command(_args(run)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("miniattn plot: ") and SNAPSHOT_NAME in err


# ------------------------------------------------------------------------------------ plotting


def test_plot_command_writes_pngs_and_gif(run_dir, tmp_path, capsys):
    PIL = pytest.importorskip("PIL.Image")
    out = tmp_path / "pics"
    assert plot_command(_args(run_dir, "--out", str(out), "--example", "2")) == 0
    printed = capsys.readouterr().out.split()
    expected = [out / "curves.png", out / "attention_example2.png", out / "attention_example2.gif"]
    assert printed == [str(p) for p in expected]
    for p in expected[:2]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with PIL.open(expected[2]) as gif:
        assert gif.format == "GIF" and gif.n_frames == 5            # one frame per snapshot
    assert not list(out.glob(".*.tmp*"))


def test_plot_default_out_and_chosen_steps(run_dir, capsys):
    assert plot_command(_args(run_dir, "--steps", "0,20", "--no-gif")) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(run_dir / "plots" / "curves.png"), str(run_dir / "plots" / "attention_example0.png")]


def test_plot_without_pillow_still_writes_pngs(run_dir, tmp_path, capsys, monkeypatch):
    import miniattn.runplot as R
    monkeypatch.setattr(R, "pillow_available", lambda: False)
    assert plot_command(_args(run_dir, "--out", str(tmp_path))) == 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Pillow is not installed" in captured.err
    assert len(captured.out.split()) == 2 and not list(tmp_path.glob("*.gif"))


def test_plot_errors_exit_2_with_one_line(run_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "nosnap").mkdir()
    for name in ("metrics.jsonl", "config.json"):
        (tmp_path / "nosnap" / name).write_bytes((run_dir / name).read_bytes())
    cases = [
        (_args(tmp_path / "missing"), "no such directory"),
        (_args(tmp_path / "empty"), "is not a miniattn run directory"),
        (_args(tmp_path / "nosnap"), "has no attention snapshots"),
        (_args(run_dir, "--steps", "0,7"), r"no snapshot at step 7 \(snapshots at steps 0, 5, 10, 15, 20\)"),
        (_args(run_dir, "--steps", "a,b"), "--steps must be comma-separated integers"),
        (_args(run_dir, "--steps", ""), "--steps must be comma-separated integers"),
        (_args(run_dir, "--example", "3"), r"--example must be an integer in \[0, 2\]"),
        (_args(run_dir, "--example", "-1"), r"--example must be an integer in \[0, 2\]"),
    ]
    capsys.readouterr()
    for args, match in cases:
        assert plot_command(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("miniattn plot: ")
        import re
        assert re.search(match, err), (match, err)


def test_evenly_spaced_and_parse_steps():
    np.testing.assert_array_equal(evenly_spaced(21, 6), [0, 4, 8, 12, 16, 20])
    np.testing.assert_array_equal(evenly_spaced(3, 6), [0, 1, 2])
    np.testing.assert_array_equal(evenly_spaced(9, 1), [8])
    steps = np.array([0, 5, 10, 15])
    np.testing.assert_array_equal(parse_steps("15, 0,15", steps), [0, 3])
    np.testing.assert_array_equal(parse_steps(None, steps, k=2), [0, 3])
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        evenly_spaced(0)


def test_not_imported_by_the_package_and_matplotlib_lazy():
    code = ("import sys, miniattn, miniattn.models, miniattn.train\n"
            "assert 'miniattn.runplot' not in sys.modules, 'runplot imported by the package'\n"
            "import miniattn.runplot\n"
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported at module level'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
