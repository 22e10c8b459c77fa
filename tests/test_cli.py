"""Tests for the miniattn command line: in-process ``main([...])`` on tiny configurations, and one
subprocess run of the installed ``miniattn --help``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from miniattn import cli, io
from miniattn.train import CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, TrainingDiverged, load_checkpoint

DATA = Path(__file__).parent / "data"
TINY = ["--steps", "4", "--batch-size", "8", "--eval-size", "8", "--eval-every", "2", "--seed", "3"]


def run(argv, capsys):
    """main(argv) -> (exit status, stdout, stderr); usage errors give status 2 like the executable."""
    try:
        status = cli.main(argv)
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


# --------------------------------------------------------------------------------------------------
# Help
# --------------------------------------------------------------------------------------------------

def test_installed_executable_help():
    exe = Path(sys.executable).with_name("miniattn")
    if not exe.exists():
        pytest.skip(f"no installed miniattn executable next to {sys.executable}")
    done = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for command in ("train", "eval", "info"):
        assert command in done.stdout
    assert "Exit status" in done.stdout


@pytest.mark.parametrize("command", ["train", "eval", "info"])
def test_every_option_is_documented_with_its_default(command, capsys):
    status, out, _ = run([command, "--help"], capsys)
    assert status == 0
    sub = cli.build_parser()._subparsers._group_actions[0].choices[command]
    text = " ".join(out.split())  # undo the line wrapping
    for action in sub._actions:
        if action.dest in ("help",) or action.default is argparse_suppress():
            continue
        assert action.help, action.dest
        option = action.option_strings[-1]
        assert option in text
        # Each option's help, as shown, states its default (or says the option is required).
        shown = " ".join(sub.formatter_class("x")._get_help_string(action).split())
        assert "default" in shown.lower() or action.required, option


def argparse_suppress():
    import argparse
    return argparse.SUPPRESS


# --------------------------------------------------------------------------------------------------
# Training every model on every task it fits
# --------------------------------------------------------------------------------------------------

COMBINATIONS = [
    ["--model", "seq2seq", "--task", "copy", "--vocab", "6", "--length", "4", "--dim", "8"],
    ["--model", "seq2seq", "--task", "copy", "--mode", "permutation", "--vocab", "4", "--length", "4",
     "--dim", "8", "--heads", "2", "--uniform"],
    ["--model", "seq2seq", "--task", "translation", "--vocab", "8", "--target-vocab", "10", "--length", "3",
     "--dim", "8"],
    ["--model", "seq2seq", "--task", "parallel", "--source-file", str(DATA / "parallel.de"),
     "--target-file", str(DATA / "parallel.en"), "--dim", "8"],
    ["--model", "classifier", "--task", "keyword", "--vocab", "12", "--length", "5", "--dim", "8",
     "--n-classes", "3", "--score-hidden", "4"],
    ["--model", "classifier", "--task", "text-classification", "--data", str(DATA / "sentiment.tsv"),
     "--dim", "8"],
    ["--model", "free-copy", "--task", "copy", "--vocab", "6", "--length", "4", "--optimizer", "sgd",
     "--lr", "0.5", "--momentum", "0.5"],
    ["--model", "free-copy", "--vocab", "5", "--length", "5", "--mode", "permutation", "--factorised",
     "--dim", "3"],
    ["--model", "toy", "--optimizer", "sgd", "--lr", "0.01"],
    ["--model", "rnn-seq2seq", "--task", "copy", "--vocab", "6", "--length", "4", "--dim", "8"],
    ["--model", "rnn-seq2seq", "--task", "translation", "--vocab", "8", "--length", "3", "--dim", "8",
     "--encoder", "gru", "--hidden", "3"],
    ["--model", "rnn-classifier", "--task", "keyword", "--vocab", "12", "--length", "5", "--dim", "8",
     "--encoder", "lstm"],
]


@pytest.mark.parametrize("argv", COMBINATIONS, ids=lambda a: "-".join(a[1:4:2]))
def test_train_every_model_task_combination(argv, tmp_path, capsys):
    out_dir = tmp_path / "run"
    status, out, err = run(["train", *argv, *TINY, "--out", str(out_dir)], capsys)
    assert status == 0, err
    assert err == ""  # no progress display when stderr is not a terminal
    assert "step 4" in out and "token_accuracy" in out
    records = io.read_jsonl(out_dir / METRICS_NAME)
    assert [r["step"] for r in records] == [0, 2, 4]
    assert all(np.isfinite(r["loss"]) for r in records)
    meta = io.read_json(out_dir / CONFIG_NAME)
    assert meta["config"]["run"]["model"] == argv[1] and meta["config"]["run"]["seed"] == 3
    assert load_checkpoint(out_dir / CHECKPOINT_NAME).step == 4


def test_default_task_follows_the_model(tmp_path, capsys):
    status, _, err = run(["train", "--model", "classifier", "--vocab", "10", "--length", "4", "--dim", "4",
                          *TINY, "--out", str(tmp_path)], capsys)
    assert status == 0, err
    assert io.read_json(tmp_path / CONFIG_NAME)["config"]["run"]["task"] == "keyword"


def test_quiet_prints_nothing(capsys):
    status, out, err = run(["train", "--model", "toy", "--quiet", *TINY], capsys)
    assert (status, out, err) == (0, "", "")


# --------------------------------------------------------------------------------------------------
# Reproducibility and resumption through the command line
# --------------------------------------------------------------------------------------------------

SMALL_COPY = ["train", "--vocab", "6", "--length", "4", "--dim", "8", "--batch-size", "8", "--eval-size", "8",
              "--eval-every", "2", "--checkpoint-every", "2", "--lr", "0.01", "--quiet"]


def _params(path):
    return {k: v for k, v in io.load_npz(path / CHECKPOINT_NAME).items() if k.startswith("params/")}


def test_same_seed_same_run_and_resume_extends_exactly(tmp_path, capsys):
    assert run([*SMALL_COPY, "--steps", "6", "--out", str(tmp_path / "a")], capsys)[0] == 0
    assert run([*SMALL_COPY, "--steps", "6", "--out", str(tmp_path / "b")], capsys)[0] == 0
    # Stopped at 4 steps, then asked for 6: continues from the checkpoint at step 4.
    assert run([*SMALL_COPY, "--steps", "4", "--out", str(tmp_path / "c")], capsys)[0] == 0
    assert run([*SMALL_COPY, "--steps", "6", "--out", str(tmp_path / "c")], capsys)[0] == 0
    metrics = {n: (tmp_path / n / METRICS_NAME).read_bytes() for n in "abc"}
    assert metrics["a"] == metrics["b"] == metrics["c"]
    for name in "bc":
        other = _params(tmp_path / name)
        for k, v in _params(tmp_path / "a").items():
            assert v.tobytes() == other[k].tobytes(), (name, k)
    # A different seed is a different run: refused as a usage error naming the option; --fresh starts over.
    assert run([*SMALL_COPY, "--steps", "6", "--seed", "1", "--out", str(tmp_path / "a")], capsys)[0] == 2
    status, _, _ = run([*SMALL_COPY, "--steps", "6", "--seed", "1", "--fresh", "--out", str(tmp_path / "a")],
                       capsys)
    assert status == 0 and (tmp_path / "a" / METRICS_NAME).read_bytes() != metrics["b"]


def test_diverged_and_interrupted_runs_report_and_exit(monkeypatch, capsys):
    def diverge(*args, **kwargs):
        raise TrainingDiverged(7, "the training loss is nan")

    monkeypatch.setattr(cli, "train", diverge)
    status, out, err = run(["train", "--model", "toy"], capsys)
    assert status == 1 and "diverged at step 7" in err and out == ""

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train", interrupt)
    status, _, err = run(["train", "--model", "toy", "--out", "somewhere"], capsys)
    assert status == 130 and "resume" in err


# --------------------------------------------------------------------------------------------------
# Bad arguments: exit status 2 with a message naming the problem
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--model", "classifier", "--task", "copy"], "cannot be trained on --task copy"),
    (["--model", "free-copy", "--task", "translation"], "compatible tasks: copy"),
    (["--model", "toy", "--task", "keyword"], "cannot be trained"),
    (["--model", "classifier", "--mode", "subset"], "--mode applies only to --task copy"),
    (["--model", "classifier", "--heads", "2"], "--heads applies only to --model seq2seq"),
    (["--model", "seq2seq", "--factorised"], "--factorised applies only"),
    (["--model", "seq2seq", "--n-classes", "3"], "--n-classes applies only to --task keyword"),
    (["--model", "free-copy", "--dim", "4"], "only with --factorised"),
    (["--model", "toy", "--dim", "4"], "--dim applies only"),
    (["--optimizer", "adam", "--momentum", "0.9"], "--momentum applies only"),
    (["--optimizer", "sgd", "--momentum", "1.0"], "momentum must lie in"),
    (["--model", "classifier", "--task", "text-classification"], "needs --data"),
    (["--task", "parallel", "--source-file", "x"], "needs --source-file and --target-file"),
    (["--model", "classifier", "--task", "text-classification", "--data", "no/such/file.tsv"], "no such file"),
    (["--mode", "permutation", "--vocab", "60", "--length", "40"], "vocab == length"),  # the task checks
    (["--mode", "subset", "--vocab", "3", "--length", "5"], "length <= vocab"),
    (["--model", "classifier", "--init-scale", "0"], "--init-scale must be > 0"),
    (["--held-out", "0.2"], "--held-out applies only to --task text-classification/parallel"),
    (["--model", "classifier", "--task", "text-classification", "--data", str(DATA / "sentiment.tsv"),
      "--held-out", "1"], "--held-out"),
    (["--model", "classifier", "--task", "text-classification", "--data", str(DATA / "sentiment.tsv"),
      "--held-out", "0.01"], "empty part"),
    (["--steps", "-1"], "--steps"),
    (["--batch-size", "0"], "--batch-size"),
    (["--lr", "0"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--seed", "x"], "--seed"),
    (["--model", "transformer"], "invalid choice"),
])
def test_bad_arguments_exit_2(argv, message, capsys):
    status, out, err = run(["train", *argv] if "--steps" in argv else ["train", *argv, "--steps", "1"], capsys)
    assert status == 2
    assert message in err and "usage: miniattn train" in err
    assert out == ""


def test_missing_command_is_usage_error(capsys):
    status, _, err = run([], capsys)
    assert status == 2 and "required" in err


# --------------------------------------------------------------------------------------------------
# eval and info
# --------------------------------------------------------------------------------------------------

def test_eval_prints_last_metrics(tmp_path, capsys):
    assert run([*SMALL_COPY, "--steps", "4", "--out", str(tmp_path)], capsys)[0] == 0
    last = io.read_jsonl(tmp_path / METRICS_NAME)[-1]
    status, out, _ = run(["eval", "--run", str(tmp_path), "--json"], capsys)
    assert status == 0 and json.loads(out) == last
    status, out, _ = run(["eval", "--run", str(tmp_path)], capsys)
    assert status == 0 and out.startswith("step 4") and f"{last['token_accuracy']:.4f}" in out
    assert "incomplete" not in out
    # A run that has not reached its step count says so.
    meta = io.read_json(tmp_path / CONFIG_NAME)
    meta["config"]["train"]["steps"] = 10
    io.atomic_write_json(tmp_path / CONFIG_NAME, meta)
    assert "incomplete" in run(["eval", "--run", str(tmp_path)], capsys)[1]


def test_eval_errors(tmp_path, capsys):
    status, _, err = run(["eval", "--run", str(tmp_path / "missing")], capsys)
    assert status == 2 and "no such directory" in err
    status, _, err = run(["eval", "--run", str(tmp_path)], capsys)
    assert status == 1 and METRICS_NAME in err
    (tmp_path / METRICS_NAME).write_text("")
    status, _, err = run(["eval", "--run", str(tmp_path)], capsys)
    assert status == 1 and "no evaluation" in err
    (tmp_path / METRICS_NAME).write_text('{"step": 0}\n{broken\n{"step": 2}\n')
    status, _, err = run(["eval", "--run", str(tmp_path)], capsys)
    assert status == 1 and "line 2" in err


def test_info(capsys):
    status, out, _ = run(["info"], capsys)
    assert status == 0 and f"numpy       {np.__version__}" in out and "platform" in out
    status, out, _ = run(["info", "--json"], capsys)
    info = json.loads(out)
    assert status == 0 and info["versions"]["numpy"] == np.__version__


@pytest.mark.parametrize("held_out", ["0.25", "0"])
def test_text_tasks_evaluate_on_the_held_out_split(held_out, tmp_path, capsys, monkeypatch):
    from miniattn import train as train_module
    from miniattn.tasks import HeldOutSplit, ParallelDataset

    seen = []
    real_train = train_module.train

    def spy(model, task, *args, **kwargs):
        seen.append(task)
        return real_train(model, task, *args, **kwargs)

    monkeypatch.setattr(cli, "train", spy)
    argv = ["train", "--task", "parallel", "--source-file", str(DATA / "parallel.de"),
            "--target-file", str(DATA / "parallel.en"), "--dim", "8", "--held-out", held_out, *TINY,
            "--out", str(tmp_path / "run")]
    status, out, err = run(argv, capsys)
    assert status == 0, err
    (task,) = seen
    if held_out == "0":
        assert isinstance(task, ParallelDataset)
    else:
        assert isinstance(task, HeldOutSplit) and len(task.held_out_indices) == 5  # 25% of 20 lines


COPY = ["train", "--model", "seq2seq", "--task", "copy", "--vocab", "6", "--length", "4", "--dim", "8"]


@pytest.mark.parametrize("change,named", [
    (["--vocab", "7"], "--vocab 6 (this command: 7)"),
    (["--task", "translation"], "--task 'copy' (this command: 'translation')"),
    (["--optimizer", "sgd"], "--optimizer 'adam' (this command: 'sgd')"),
    (["--seed", "4"], "--seed 3 (this command: 4)"),
    (["--uniform"], "--uniform False (this command: True)"),
])
def test_resume_with_other_options_is_refused_naming_the_option(change, named, tmp_path, capsys):
    out = tmp_path / "run"
    assert run([*COPY, *TINY, "--out", str(out)], capsys)[0] == 0
    before = (out / CONFIG_NAME).read_text()
    argv = [*COPY, *TINY, "--out", str(out)]
    for i in range(0, len(change), 2):
        flag = change[i]
        if flag in argv:
            argv[argv.index(flag) + 1] = change[i + 1]
        else:
            argv += change[i:i + 2]
    status, _, err = run(argv, capsys)
    assert status == 2 and named in err and "--fresh" in err
    assert (out / CONFIG_NAME).read_text() == before           # nothing was touched
    status, _, err = run([*argv, "--fresh"], capsys)            # --fresh starts that run over
    assert status == 0, err
    stored = io.read_json(out / CONFIG_NAME)["config"]["run"]
    assert {k: stored[k] for k in ("vocab", "task", "optimizer", "seed", "uniform")} != \
        {k: json.loads(before)["config"]["run"][k] for k in ("vocab", "task", "optimizer", "seed", "uniform")}


def test_resume_may_extend_the_steps(tmp_path, capsys):
    out = tmp_path / "run"
    assert run([*COPY, *TINY, "--out", str(out)], capsys)[0] == 0
    argv = [*COPY, *TINY, "--out", str(out)]
    argv[argv.index("--steps") + 1] = "6"
    status, stdout, err = run(argv, capsys)
    assert status == 0, err
    assert "step 6" in stdout


def test_out_that_is_a_file_or_a_foreign_directory_is_refused(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    status, _, err = run([*COPY, *TINY, "--out", str(afile)], capsys)
    assert status == 2 and "is a file" in err and afile.read_text() == "x"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for extra in ([], ["--fresh"]):
        status, _, err = run([*COPY, *TINY, "--out", str(foreign), *extra], capsys)
        assert status == 2 and "not a miniattn run" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / CONFIG_NAME).write_text("{truncated")
    status, _, err = run([*COPY, *TINY, "--out", str(tmp_path / "bad")], capsys)
    assert status == 2 and "not a readable miniattn run config" in err
