"""Tests for the miniattn command line: in-process ``main([...])`` on tiny configurations, and one
subprocess run of the installed ``miniattn --help``."""

from __future__ import annotations

import json
import shlex
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


def test_diverged_and_interrupted_runs_report_and_exit(monkeypatch, capsys, tmp_path):
    def diverge(*args, **kwargs):
        raise TrainingDiverged(7, "the training loss is nan")

    monkeypatch.setattr(cli, "train", diverge)
    status, out, err = run(["train", "--model", "toy"], capsys)
    assert status == 1 and "diverged at step 7" in err and out == ""

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train", interrupt)
    status, _, err = run(["train", "--model", "toy", "--out", str(tmp_path / "somewhere")], capsys)
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
    (["--mode", "permutation", "--vocab", "60", "--length", "40"], "vocab == length"),  # the task checks
    (["--mode", "subset", "--vocab", "3", "--length", "5"], "length <= vocab"),
    (["--model", "classifier", "--init-scale", "0"], "--init-scale must be > 0"),
    (["--held-out", "0.2"], "--held-out applies only to --task text-classification/parallel"),
    (["--model", "classifier", "--task", "text-classification", "--data", str(DATA / "sentiment.tsv"),
      "--held-out", "1"], "--held-out"),
    (["--steps", "-1"], "--steps"),
    (["--batch-size", "0"], "--batch-size"),
    (["--lr", "0"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--seed", "x"], "--seed"),
    (["--model", "transformer"], "invalid choice"),
    (["--lowercase"], "--lowercase applies only to --task text-classification/parallel"),
    (["--task", "parallel", "--source-file", "a", "--target-file", "b", "--header"],
     "--header applies only to --task text-classification"),
    (["--min-count", "0"], "--min-count"),
    (["--encoding", "klingon"], "unknown text encoding"),
    (["--max-memory", "lots"], "--max-memory"),
    # sizes the task cannot take, refused from the arguments before the memory estimate and any build
    (["--model", "classifier", "--vocab", "6", "--n-classes", "3"], "--vocab must exceed 2 x --n-classes = 6"),
    (["--model", "classifier", "--n-classes", "1000000000"], "--vocab must exceed 2 x --n-classes"),
    (["--task", "translation", "--vocab", "6", "--target-vocab", "2"], "target vocabulary of at least 3"),
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


# --------------------------------------------------------------------------------------------------
# Real text: data errors in one line, text options, the data summary, the memory check
# --------------------------------------------------------------------------------------------------

CLASSIFY = ["train", "--model", "classifier", "--task", "text-classification", "--dim", "4", *TINY]


def _one_line_error(status, out, err):
    assert status == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("miniattn: error: "), err
    assert "usage:" not in err and "Traceback" not in err
    return lines[0]


def _data_files(tmp_path):
    latin = tmp_path / "latin.tsv"
    latin.write_bytes(b"pos\tgood\nneg\tbad\npos\tcaf\xe9\n")
    files = {
        "missing": (tmp_path / "missing.tsv", f"{tmp_path / 'missing.tsv'}: no such file"),
        "directory": (tmp_path, f"{tmp_path} is a directory, expected a text file"),
        "latin-1": (latin, f"{latin}, line 3: not valid UTF-8 (byte 0xe9 at column 8); pass --encoding"),
    }
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    files["empty"] = (empty, f"{empty}: empty file")
    one = tmp_path / "one.tsv"
    one.write_text("pos\tgood\npos\tfine\n")
    files["one class"] = (one, f"{one}: every example (2) has the label 'pos'")
    header = tmp_path / "header.tsv"
    header.write_text("label\ttext\n")
    files["header only"] = (header, f"{header}: only a header line (line 1)")
    tab = tmp_path / "tab.tsv"
    tab.write_text("pos\tgood\nneg bad\n")
    files["no tab"] = (tab, f"{tab}, line 2: missing the tab")
    return files


@pytest.mark.parametrize("case", ["missing", "directory", "latin-1", "empty", "one class", "header only",
                                  "no tab"])
def test_classification_data_errors_are_one_line_naming_file_and_line(case, tmp_path, capsys):
    path, expected = _data_files(tmp_path)[case]
    line = _one_line_error(*run([*CLASSIFY, "--data", str(path)], capsys))
    assert line.startswith(f"miniattn: error: {expected}"), line


def test_parallel_data_errors_are_one_line(tmp_path, capsys):
    src = tmp_path / "s.txt"
    src.write_text("a b\nc\nd\n")
    tgt = tmp_path / "t.txt"
    tgt.write_text("A B\nC\n")
    base = ["train", "--task", "parallel", "--dim", "4", *TINY]
    line = _one_line_error(*run([*base, "--source-file", str(src), "--target-file", str(tgt)], capsys))
    assert f"{src} has 3" in line and "line 3" in line
    line = _one_line_error(*run([*base, "--source-file", str(src), "--target-file", str(tmp_path)], capsys))
    assert line == f"miniattn: error: {tmp_path} is a directory, expected a text file"
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"x\n\xff\nz\n")
    line = _one_line_error(*run([*base, "--source-file", str(src), "--target-file", str(bad)], capsys))
    assert line.startswith(f"miniattn: error: {bad}, line 2: not valid UTF-8 (byte 0xff at column 1)")
    line = _one_line_error(*run([*base, "--source-file", str(src), "--target-file", str(src),
                                 "--held-out", "0.05"], capsys))
    assert line.startswith("miniattn: error: --held-out 0.05: ") and "empty part" in line


def test_encoding_option_reads_the_latin1_file(tmp_path, capsys, monkeypatch):
    path, _ = _data_files(tmp_path)["latin-1"]
    seen = _spy_tasks(monkeypatch)
    status, out, err = run([*CLASSIFY, "--data", str(path), "--encoding", "latin-1", "--held-out", "0"], capsys)
    assert status == 0, err
    assert "café" in seen[0].vocab


def _spy_tasks(monkeypatch):
    from miniattn import train as train_module

    seen = []

    def spy(model, task, *args, **kwargs):
        seen.append(task)
        return train_module.train(model, task, *args, **kwargs)

    monkeypatch.setattr(cli, "train", spy)
    return seen


def test_text_options_change_the_vocabulary_and_are_recorded(tmp_path, capsys, monkeypatch):
    from miniattn.tasks.text_options import TextOptions, parse_text_options

    seen = _spy_tasks(monkeypatch)
    data = DATA / "sentiment.tsv"
    for i, extra in enumerate([[], ["--lowercase"], ["--lowercase", "--min-count", "2"],
                               ["--lowercase", "--max-vocab", "5"], ["--max-length", "3"]]):
        out_dir = tmp_path / f"run{i}"
        status, _, err = run([*CLASSIFY, "--data", str(data), *extra, "--out", str(out_dir)], capsys)
        assert status == 0, err
        expected = parse_text_options(" ".join(extra)).load_classification(data)
        assert seen[-1].vocab == expected.vocab and seen[-1].source_length == expected.source_length
        # The options as given (None = not given) are part of the run's config.
        stored = io.read_json(out_dir / CONFIG_NAME)["config"]["run"]
        given = cli.build_parser().parse_args([*CLASSIFY, "--data", str(data), *extra])
        assert {k: stored[k] for k in TextOptions._fields} == {k: getattr(given, k) for k in TextOptions._fields}
        assert TextOptions(**{k: v for k, v in stored.items() if k in TextOptions._fields and v is not None}) \
            == parse_text_options(" ".join(extra))
    sizes = [len(t.vocab) for t in seen]
    assert sizes[1] < sizes[0] and sizes[2] < sizes[1] and sizes[3] == 4 + 5
    # A different text option is a different run: resuming is refused naming it.
    status, out, err = run([*CLASSIFY, "--data", str(data), "--out", str(tmp_path / "run1")], capsys)
    assert "--lowercase True (this command: None)" in _one_line_error(status, out, err)


def test_text_summary_reports_data_header_and_memory(tmp_path, capsys):
    status, out, err = run([*CLASSIFY, "--data", str(DATA / "reviews.csv"), "--held-out", "0.25"], capsys)
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("data: examples 8, longest ") and "vocabulary" in lines[0]
    assert lines[1] == "data: classes 2: negative (4), positive (4)"
    assert lines[2] == "data: held out 2 (0.25), training on 6"
    assert lines[3].startswith("data: header: line 1 skipped (auto-detected: its label 'label'")
    assert lines[4].startswith("memory: about ") and "per training step" in lines[4]
    status, out, err = run([*CLASSIFY, "--data", str(DATA / "reviews.csv"), "--no-header"], capsys)
    assert "line 1: looks like a header line" in _one_line_error(status, out, err)
    status, out, _ = run(["train", "--task", "parallel", "--source-file", str(DATA / "parallel.de"),
                          "--target-file", str(DATA / "parallel.en"), "--dim", "4", "--max-length", "4",
                          *TINY], capsys)
    assert status == 0
    assert "data: max_length: " in out and "pairs dropped" in out and "(dropped " in out.splitlines()[0]
    # --quiet prints nothing, summary included.
    assert run([*CLASSIFY, "--data", str(DATA / "sentiment.tsv"), "--quiet"], capsys)[1:] == ("", "")


def test_memory_estimate_refuses_and_names_what_to_lower(tmp_path, capsys, monkeypatch):
    argv = [*CLASSIFY, "--data", str(DATA / "sentiment.tsv"), "--out", str(tmp_path / "run")]
    line = _one_line_error(*run([*argv, "--max-memory", "10K"], capsys))
    assert "estimated peak memory" in line and "exceeds --max-memory 10.0 kB" in line
    for option in ("--batch-size", "--eval-size", "--max-vocab"):
        assert option in line
    assert not (tmp_path / "run").exists()                      # refused before anything is written
    monkeypatch.setattr(cli, "_memory_available", lambda: 4096)
    line = _one_line_error(*run(argv, capsys))
    assert "exceeds 4.0 kB available (MemAvailable)" in line
    monkeypatch.setattr(cli, "_memory_available", lambda: None)  # unreadable: no check
    assert run(argv, capsys)[0] == 0


PLANNED = [*COMBINATIONS,
           ["--model", "seq2seq", "--task", "translation", "--vocab", "8", "--length", "3", "--dim", "8",
            "--heads", "3"],
           ["--model", "classifier", "--task", "keyword", "--vocab", "12", "--length", "5", "--dim", "8"],
           ["--model", "free-copy", "--vocab", "6", "--length", "4", "--uniform"],
           ["--model", "rnn-seq2seq", "--task", "parallel", "--source-file", str(DATA / "parallel.de"),
            "--target-file", str(DATA / "parallel.en"), "--dim", "6", "--encoder", "gru"],
           ["--model", "rnn-classifier", "--task", "text-classification", "--data", str(DATA / "sentiment.tsv"),
            "--dim", "8", "--hidden", "5", "--encoder", "gru"]]


@pytest.mark.parametrize("argv", PLANNED, ids=lambda a: "-".join(a[1:4:2]))
def test_memory_estimate_from_the_arguments_matches_the_built_model(argv):
    args = cli.build_parser().parse_args(["train", *argv, *TINY])
    cli._check_combination(args, None)
    text = args.task in ("text-classification", "parallel")
    task = cli._build_task(args, np.random.default_rng(0))
    model = cli._build_model(args, task, np.random.default_rng(1))
    exact = cli.estimate_memory(args, task, model)
    planned = cli.planned_memory(args, task if text else None)
    if args.model == "toy":
        assert planned is None
        return
    P = sum(v.size for v in model.params.values())
    if args.task == "translation":   # its target length depends on the drawn lexicon: a lower bound
        assert planned["target"] == task.source_length <= exact["target"]
        assert planned["params"] <= exact["params"] == P
        sizes = {**cli._planned_sizes(args), "target": task.target_length}
        assert cli._parameter_count(args, sizes) == P           # exact once T is known
        assert planned["train"] <= exact["train"] and planned["eval"] <= exact["eval"]
        assert {k: v for k, v in planned.items() if k not in ("train", "eval", "target", "params", "param_bytes")} \
            == {k: v for k, v in exact.items() if k not in ("train", "eval", "target", "params", "param_bytes")}
    else:
        assert planned["params"] == exact["params"] == P
        assert planned == exact


@pytest.mark.parametrize("argv, named", [
    (["--model", "seq2seq", "--vocab", "1000000000000", "--length", "4", "--dim", "4"], "--vocab"),
    (["--model", "seq2seq", "--vocab", "6", "--length", "4", "--dim", "4", "--heads", "100000000"], "--heads"),
    (["--model", "seq2seq", "--vocab", "6", "--length", "4", "--dim", "10000000000"], "--dim"),
    (["--model", "rnn-seq2seq", "--vocab", "6", "--length", "4", "--hidden", "1000000000"], "--hidden"),
    (["--model", "classifier", "--vocab", "10000000000", "--length", "4", "--dim", "4"], "--vocab"),
    (["--model", "seq2seq", "--task", "translation", "--vocab", "6", "--target-vocab", "10000000000",
      "--length", "3", "--dim", "4"], "--target-vocab"),
    (["--model", "free-copy", "--vocab", "10000000", "--length", "10000000"], "--length"),
])
def test_a_size_that_cannot_fit_is_refused_before_anything_is_built(argv, named, tmp_path, capsys, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("built before the memory estimate")
    monkeypatch.setattr(cli, "_build_task", forbidden)
    monkeypatch.setattr(cli, "_build_model", forbidden)
    monkeypatch.setattr(cli, "_memory_available", lambda: 2 ** 30)
    out_dir = tmp_path / "run"
    line = _one_line_error(*run(["train", *argv, *TINY, "--out", str(out_dir)], capsys))
    assert "estimated peak memory" in line and "exceeds 1.0 GB available (MemAvailable)" in line, line
    assert named in line and "--batch-size" in line
    assert not out_dir.exists()
    # A text task loads its data first (the vocabulary is the file's), but never builds the model.
    monkeypatch.undo()
    monkeypatch.setattr(cli, "_build_model", forbidden)
    line = _one_line_error(*run([*CLASSIFY, "--data", str(DATA / "sentiment.tsv"), "--max-memory", "10K"], capsys))
    assert "exceeds --max-memory 10.0 kB" in line and "--max-vocab" in line


def test_memory_error_while_building_ends_in_one_line(capsys, monkeypatch):
    monkeypatch.setattr(cli, "_memory_available", lambda: None)   # no limit known: no estimate refuses
    def exhausted(*args, **kwargs):
        raise MemoryError
    monkeypatch.setattr(cli, "_build_model", exhausted)
    line = _one_line_error(*run([*SMALL_COPY, "--steps", "1"], capsys))
    assert "out of memory while building --model seq2seq for --task copy" in line
    assert "--vocab" in line and "--dim" in line


def test_memory_estimate_follows_the_formula(capsys):
    args = cli.build_parser().parse_args(["train", "--model", "seq2seq", "--vocab", "60", "--length", "40",
                                          "--batch-size", "128", "--eval-size", "256"])
    cli._check_combination(args, None)
    task = cli._build_task(args, np.random.default_rng(0))
    model = cli._build_model(args, task, np.random.default_rng(1))
    est = cli.estimate_memory(args, task, model)
    S, T, C, d = task.source_length, task.target_length, task.output_vocab_size, 256
    P = sum(v.size for v in model.params.values())
    assert est["params"] == P and (est["source"], est["target"], est["classes"]) == (S, T, C)
    assert est["train"] == 8 * (128 * (4 * T * C + 4 * T * S + 12 * (S + T) * d) + 4 * P)
    assert est["eval"] == 8 * (256 * (3 * T * C + 2 * T * S + 6 * (S + T) * d) + 4 * P)
    # Doubling the batch doubles the activation part only.
    args.batch_size = 256
    assert cli.estimate_memory(args, task, model)["train"] - est["train"] == est["train"] - 8 * 4 * P


# --------------------------------------------------------------------------------------------------
# Defaults, run state, threads
# --------------------------------------------------------------------------------------------------

def test_seq2seq_default_width_is_the_papers_256(tmp_path, capsys):
    status, _, err = run(["train", "--vocab", "6", "--length", "4", "--steps", "0", "--out", str(tmp_path)], capsys)
    assert status == 0, err
    meta = io.read_json(tmp_path / CONFIG_NAME)["config"]
    assert meta["model"]["dim"] == 256 and meta["run"]["dim"] == 256
    status, _, err = run(["train", "--model", "classifier", "--vocab", "6", "--length", "4", "--steps", "0",
                          "--out", str(tmp_path / "c")], capsys)
    assert io.read_json(tmp_path / "c" / CONFIG_NAME)["config"]["model"]["dim"] == 64


@pytest.mark.slow
def test_headline_copy_command_reaches_095_with_defaults(capsys):
    status, out, err = run(["train", "--model", "seq2seq", "--task", "copy", "--mode", "subset", "--vocab", "60",
                            "--length", "40", "--seed", "0"], capsys)
    assert status == 0, err
    accuracy = float(out.split("token_accuracy ")[1].split()[0])
    assert out.startswith("step 200") and accuracy > 0.95


def test_extended_run_is_complete_and_never_advises_a_failing_resume(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert run([*SMALL_COPY, "--steps", "4", "--out", str(out_dir)], capsys)[0] == 0
    assert run([*SMALL_COPY, "--steps", "6", "--out", str(out_dir)], capsys)[0] == 0
    meta = io.read_json(out_dir / CONFIG_NAME)["config"]
    assert meta["train"]["steps"] == 6 and meta["run"]["steps_history"] == [4, 6]
    status, out, _ = run(["eval", "--run", str(out_dir)], capsys)
    assert status == 0 and out.startswith("step 6") and len(out.splitlines()) == 1
    # Asking for fewer steps than the run has is refused in one line naming --steps.
    line = _one_line_error(*run([*SMALL_COPY, "--steps", "4", "--out", str(out_dir)], capsys))
    assert "trained to step 6, more than --steps 4" in line and "--steps 6" in line and "--fresh" in line
    # A run extended by an older version (config.json still at the first --steps) is reported as
    # complete, without resume advice.
    whole = io.read_json(out_dir / CONFIG_NAME)
    whole["config"]["train"]["steps"] = 4
    io.atomic_write_json(out_dir / CONFIG_NAME, whole)
    status, out, _ = run(["eval", "--run", str(out_dir)], capsys)
    assert "beyond its recorded --steps 4" in out and "resume" not in out


def test_incomplete_run_advises_a_command_that_resumes(tmp_path, capsys):
    out_dir = tmp_path / "run"
    argv = [*SMALL_COPY, "--steps", "8", "--out", str(out_dir)]
    assert run(argv, capsys)[0] == 0
    # Simulate an interruption after step 4: keep the checkpoint at step 4 of another run with
    # the same options stopped there.
    stopped = tmp_path / "stopped"
    assert run([*SMALL_COPY, "--steps", "4", "--out", str(stopped)], capsys)[0] == 0
    whole = io.read_json(stopped / CONFIG_NAME)
    whole["config"]["train"]["steps"] = 8
    whole["config"]["run"]["steps"] = 8
    whole["config"]["run"]["out"] = str(stopped)
    io.atomic_write_json(stopped / CONFIG_NAME, whole)
    status, out, _ = run(["eval", "--run", str(stopped)], capsys)
    assert status == 0 and "incomplete: evaluated up to step 4 of --steps 8" in out
    command = out.split("run: ", 1)[1].rstrip(")\n")
    words = shlex.split(command)
    assert words[:2] == ["miniattn", "train"] and "--steps" in words and words[words.index("--steps") + 1] == "8"
    status, _, err = run(words[1:], capsys)
    assert status == 0, err
    assert (stopped / METRICS_NAME).read_bytes() == (out_dir / METRICS_NAME).read_bytes()


def test_refused_resume_leaves_config_json_and_the_eval_advice_alone(tmp_path, capsys):
    out_dir, other = tmp_path / "run", tmp_path / "other"
    assert run([*SMALL_COPY, "--steps", "4", "--out", str(out_dir)], capsys)[0] == 0
    assert run([*SMALL_COPY, "--steps", "4", "--seed", "5", "--out", str(other)], capsys)[0] == 0
    (out_dir / CHECKPOINT_NAME).write_bytes((other / CHECKPOINT_NAME).read_bytes())   # another run's
    before = (out_dir / CONFIG_NAME).read_bytes()
    status, _, err = run([*SMALL_COPY, "--steps", "6", "--out", str(out_dir)], capsys)
    assert status == 1 and "different run" in err
    assert (out_dir / CONFIG_NAME).read_bytes() == before       # --steps 6 was not recorded
    status, out, _ = run(["eval", "--run", str(out_dir)], capsys)
    assert status == 0 and out.startswith("step 4") and len(out.splitlines()) == 1   # no resume advice


def test_resume_with_nothing_left_to_train_records_the_steps(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert run([*SMALL_COPY, "--steps", "4", "--out", str(out_dir)], capsys)[0] == 0
    whole = io.read_json(out_dir / CONFIG_NAME)         # a run asked for 8 steps, stopped at step 4
    whole["config"]["train"]["steps"] = whole["config"]["run"]["steps"] = 8
    io.atomic_write_json(out_dir / CONFIG_NAME, whole)
    assert run([*SMALL_COPY, "--steps", "4", "--out", str(out_dir)], capsys)[0] == 0
    meta = io.read_json(out_dir / CONFIG_NAME)["config"]
    assert meta["train"]["steps"] == meta["run"]["steps"] == 4 and meta["run"]["steps_history"] == [8, 4]
    status, out, _ = run(["eval", "--run", str(out_dir)], capsys)
    assert status == 0 and len(out.splitlines()) == 1


@pytest.mark.parametrize("edit", [
    pytest.param(lambda m: m["config"].pop("train"), id="no-train"),
    pytest.param(lambda m: m["config"].__setitem__("train", "x"), id="train-a-string"),
    pytest.param(lambda m: m["config"].__setitem__("run", [1]), id="run-a-list"),
    pytest.param(lambda m: m.__setitem__("config", None), id="config-null"),
])
def test_malformed_config_json_is_refused_in_one_line_before_training(edit, tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert run([*SMALL_COPY, "--steps", "4", "--out", str(out_dir)], capsys)[0] == 0
    whole = io.read_json(out_dir / CONFIG_NAME)
    edit(whole)
    io.atomic_write_json(out_dir / CONFIG_NAME, whole)
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    line = _one_line_error(*run([*SMALL_COPY, "--steps", "6", "--out", str(out_dir)], capsys))
    assert str(out_dir / CONFIG_NAME) in line and "not a readable miniattn run config" in line
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before


def test_out_that_cannot_be_created_is_one_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out_dir in (afile / "run", afile / "deeper" / "run"):
        line = _one_line_error(*run([*SMALL_COPY, "--steps", "1", "--out", str(out_dir)], capsys))
        assert f"--out: cannot create the run directory {out_dir} ({afile} is a file" in line
    assert afile.read_text() == "x"
    if Path("/proc/self").is_dir():
        line = _one_line_error(*run([*SMALL_COPY, "--steps", "1", "--out", "/proc/self/run"], capsys))
        assert "--out: cannot create the run directory /proc/self/run (" in line


def test_eval_refuses_a_record_that_is_not_an_object(tmp_path, capsys):
    for content, number, kind in (('{"step": 0}\n\n[1, 2]\n', 3, "list"), ('"text"\n{"step": 0}\n', 1, "str"),
                                  ('{"step": 0}\n5', 2, "int")):
        (tmp_path / METRICS_NAME).write_text(content)
        status, out, err = run(["eval", "--run", str(tmp_path)], capsys)
        assert status == 1 and out == "" and len(err.splitlines()) == 1, err
        assert f"{tmp_path / METRICS_NAME}: line {number} is not a JSON object (got {kind})" in err


@pytest.mark.parametrize("stored, reason", [
    ("x", "an object was expected, got str"),
    ([1], "an object was expected, got list"),
    ({"OPENBLAS_NUM_THREADS": 1}, "OPENBLAS_NUM_THREADS should be a string or null, got int"),
    ({"OPENBLAS_NUM_THREADS": "1", "threadpoolctl": "x"}, "threadpoolctl should be a list of objects"),
    ({"OPENBLAS_NUM_THREADS": "1", "threadpoolctl": [1, 2]}, "threadpoolctl should be a list of objects"),
])
def test_a_malformed_thread_record_warns_once_that_the_setting_is_unknown(stored, reason, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    out_dir = tmp_path / "run"
    assert run([*SMALL_COPY, "--steps", "2", "--out", str(out_dir)], capsys)[0] == 0
    whole = io.read_json(out_dir / CONFIG_NAME)
    whole["config"]["run"]["threads"] = stored
    io.atomic_write_json(out_dir / CONFIG_NAME, whole)
    status, _, err = run([*SMALL_COPY, "--steps", "4", "--out", str(out_dir)], capsys)
    assert status == 0
    (line,) = err.splitlines()
    assert line.startswith(f"miniattn: warning: resuming {out_dir}, whose BLAS thread setting is unknown")
    assert reason in line and "this session: OPENBLAS_NUM_THREADS 1, OMP_NUM_THREADS unset" in line
    # A run from before the setting was recorded is not compared.
    whole = io.read_json(out_dir / CONFIG_NAME)
    whole["config"]["run"]["threads"] = None
    io.atomic_write_json(out_dir / CONFIG_NAME, whole)
    assert run([*SMALL_COPY, "--steps", "6", "--out", str(out_dir)], capsys)[::2] == (0, "")


def test_thread_setting_is_recorded_and_a_resume_with_another_warns(tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "run"
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert run([*SMALL_COPY, "--steps", "4", "--out", str(out_dir)], capsys)[0] == 0
    threads = io.read_json(out_dir / CONFIG_NAME)["config"]["run"]["threads"]
    assert threads["OPENBLAS_NUM_THREADS"] == "1" and threads["OMP_NUM_THREADS"] is None
    assert "threadpoolctl" in threads
    # Same setting: no warning.
    status, _, err = run([*SMALL_COPY, "--steps", "6", "--out", str(out_dir)], capsys)
    assert (status, err) == (0, "")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    status, _, err = run([*SMALL_COPY, "--steps", "8", "--out", str(out_dir)], capsys)
    assert status == 0                                           # a warning, not a refusal
    (line,) = err.splitlines()
    assert line.startswith("miniattn: warning: resuming") and "OPENBLAS_NUM_THREADS 1 -> 2" in line
    assert "OMP_NUM_THREADS unset -> 2" in line and "1e-15" in line
    # --fresh starts over: nothing to compare with.
    status, _, err = run([*SMALL_COPY, "--steps", "4", "--fresh", "--out", str(out_dir)], capsys)
    assert (status, err) == (0, "")


def test_run_from_before_the_width_was_stored_resumes_with_its_width(tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert run([*SMALL_COPY, "--steps", "2", "--dim", "64", "--out", str(out_dir)], capsys)[0] == 0
    whole = io.read_json(out_dir / CONFIG_NAME)
    whole["config"]["run"]["dim"] = None          # what an older version stored for the default width
    io.atomic_write_json(out_dir / CONFIG_NAME, whole)
    i = SMALL_COPY.index("--dim")
    legacy = SMALL_COPY[:i] + SMALL_COPY[i + 2:]
    line = _one_line_error(*run([*legacy, "--steps", "4", "--out", str(out_dir)], capsys))
    assert "--dim 64 (this command: 256)" in line
    status, _, err = run([*legacy, "--dim", "64", "--steps", "4", "--out", str(out_dir)], capsys)
    assert status == 0, err


# --------------------------------------------------------------------------------------------------
# Attention snapshots and `miniattn plot` (when miniattn.runplot is present)
# --------------------------------------------------------------------------------------------------

def test_train_records_attention_snapshots_and_plot_draws_them(tmp_path, capsys):
    runplot = pytest.importorskip("miniattn.runplot")
    out_dir = tmp_path / "run"
    assert run([*SMALL_COPY, "--steps", "4", "--out", str(out_dir)], capsys)[0] == 0
    snaps = runplot.load_snapshots(out_dir)
    assert snaps.steps.tolist() == [0, 2, 4] and snaps.attention.shape[:2] == (3, cli._PROBE_SIZE)
    # Resumed in two pieces: the same snapshots as in one go.
    split = tmp_path / "split"
    assert run([*SMALL_COPY, "--steps", "2", "--out", str(split)], capsys)[0] == 0
    assert run([*SMALL_COPY, "--steps", "4", "--out", str(split)], capsys)[0] == 0
    again = runplot.load_snapshots(split)
    assert again.steps.tolist() == snaps.steps.tolist()
    np.testing.assert_array_equal(again.attention, snaps.attention)
    # --fresh with another task (another probe) starts the snapshots over instead of failing.
    status, _, err = run([*SMALL_COPY, "--steps", "2", "--vocab", "7", "--fresh", "--out", str(out_dir)], capsys)
    assert status == 0, err
    assert runplot.load_snapshots(out_dir).steps.tolist() == [0, 2]
    status, out, err = run(["plot", "--run", str(out_dir), "--no-gif"], capsys)
    assert status == 0, err
    assert [Path(p).name for p in out.split()] == ["curves.png", "attention_example0.png"]
    assert all(Path(p).stat().st_size > 0 for p in out.split())


def test_plot_subcommand_options_are_documented(capsys):
    pytest.importorskip("miniattn.runplot")
    test_every_option_is_documented_with_its_default("plot", capsys)
