"""A third adversarial round against miniattn's CLI, checkpoints, run directories and results store.

Self-contained: numpy, pytest, subprocess and miniattn imports only; every file lives under pytest's
``tmp_path``; the CLI runs as ``[sys.executable, "-m", "miniattn.cli", ...]`` (the experiments layer
as ``-m analysis.experiments``) with PYTHONPATH set to the repository that holds the imported
``miniattn`` package. One parametrized test per class; each case asserts the GOOD outcome. The 17
defects (28 cases) this round found are fixed (train, cli, runplot, checkpoint, analysis/store,
analysis/experiments/__main__); their cases keep the defect as ``marks=fixed(reason)``, a no-op.

Classes: 1 arguments; 2 resume into a directory whose files were replaced (foreign checkpoint, edited
data, edited config.json); 3 checkpoint entries; 4 eval/plot on damaged logs and snapshots; 5 newline
in a --run path; 6 interruption then resume; 7 the results store and the experiments CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import miniattn

ROOT = Path(miniattn.__file__).resolve().parent.parent
def fixed(reason):
    """No mark: the case recorded a defect (``reason``) when this round was run; it is fixed since."""
    return ()

SEQ = ["--model", "seq2seq", "--vocab", "6", "--length", "4", "--dim", "4", "--batch-size", "4",
       "--eval-size", "4", "--eval-every", "1", "--quiet"]


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["OPENBLAS_NUM_THREADS"] = "1"
    env.pop("MINIATTN_RESULTS", None)
    env.update(extra)
    return env


def run(args, cwd, module="miniattn.cli", timeout=60, env=None, script=None):
    argv = [sys.executable, str(script)] if script else [sys.executable, "-m", module]
    p = subprocess.run([*argv, *map(str, args)], cwd=cwd, env=env or _env(), capture_output=True,
                       text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def assert_one_line(status, err, allowed=(1, 2), named=None):
    """No traceback, an allowed exit status, exactly one message line on stderr (argparse's usage
    block aside), naming ``named``."""
    assert "Traceback" not in err, err
    assert status in allowed, (status, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    body = [ln for ln in lines if not (ln.startswith("usage:") or ln.startswith(" "))]
    assert len(body) == 1, err
    if named is not None:
        assert named in body[0], err


def assert_ends_in_one_error_line(status, err, allowed=(1, 2)):
    """The experiments CLI prints progress lines first: no traceback, an allowed status, and a last
    stderr line that is the error message."""
    assert "Traceback" not in err, err
    assert status in allowed, (status, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and "error" in lines[-1], err


def train(out, *extra, steps=4, cwd=None):
    status, _, err = run(["train", *SEQ, "--steps", steps, *extra, "--out", out], cwd=cwd or Path(out).parent)
    assert status == 0, err


def edit_npz(path, code):
    a = dict(np.load(path))
    exec(code, {"np": np, "json": json, "a": a})
    np.savez(path, **a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Finished 4-step seq2seq runs: the reference and a few that differ in one option."""
    base = tmp_path_factory.mktemp("runs")
    made = {}
    for name, extra in (("ref", []), ("replacement", ["--mode", "replacement"]), ("uniform", ["--uniform"]),
                        ("init", ["--init-scale", "0.3"]), ("heads2", ["--heads", "2"])):
        train(base / name, *extra)
        made[name] = base / name
    return made


def copy_ref(runs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs["ref"], run_dir)
    return run_dir


# ==================================================================================================
# 1. Arguments: exit 2 with argparse's usage and one error line, or a documented success
# ==================================================================================================

ARGS = [
    pytest.param(["--heads", "0"], 2, "--heads", id="heads-zero"),
    pytest.param(["--length", "0"], 2, "--length", id="length-zero"),
    pytest.param(["--steps", "-1"], 2, "--steps", id="steps-negative"),
    pytest.param(["--lr", "inf"], 2, "--lr", id="lr-inf"),
    pytest.param(["--optimizer", "sgd", "--momentum", "1"], 2, "--momentum", id="momentum-one"),
    pytest.param(["--init-scale", "0"], 2, "--init-scale", id="init-scale-zero-seq2seq"),
    pytest.param(["--max-memory", "100P"], 2, "--max-memory", id="max-memory-unknown-unit"),
    pytest.param(["--max-memory", "-0"], 2, "--max-memory", id="max-memory-minus-zero"),
    pytest.param(["--encoding", ""], 2, "--encoding", id="encoding-empty"),
    pytest.param(["--checkpoint-every", "-1"], 2, "--checkpoint-every", id="checkpoint-every-negative"),
    pytest.param(["--vocab", "2"], 2, "--mode subset", id="subset-longer-than-vocab"),
    pytest.param(["--target-vocab", "3"], 2, "--target-vocab", id="target-vocab-on-copy"),
    pytest.param(["--seed", str(2 ** 100)], 0, None, id="seed-2-to-100-trains"),
]


@pytest.mark.parametrize("extra, status, named", ARGS)
def test_1_arguments(extra, status, named, tmp_path):
    code, _, err = run(["train", *SEQ, "--steps", "1", *extra], cwd=tmp_path)
    if status == 0:
        assert code == 0 and "Traceback" not in err, err
    else:
        assert_one_line(code, err, (status,), named)
    assert not any(tmp_path.iterdir())  # no --out: nothing written


# ==================================================================================================
# 2. Resume into a directory whose files were replaced between sessions
# ==================================================================================================

def _swap_from(name):
    def mutate(run_dir, runs):
        shutil.copy(runs[name] / "checkpoint.npz", run_dir / "checkpoint.npz")
    return mutate


def _config_edit(code):
    def mutate(run_dir, runs):
        p = run_dir / "config.json"
        c = json.loads(p.read_text())
        exec(code, {"c": c})
        p.write_text(json.dumps(c))
    return mutate


def _config_text(text):
    def mutate(run_dir, runs):
        (run_dir / "config.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    return mutate


def _config_symlink_to_other_run(run_dir, runs):
    (run_dir / "config.json").unlink()
    (run_dir / "config.json").symlink_to(runs["ref"] / "config.json")


FOREIGN = "run key lacks the task and model description (train.py/cli.py): a foreign checkpoint.npz is adopted"
RESUME = [
    pytest.param(_swap_from("replacement"), "refused", "checkpoint.npz", marks=fixed(FOREIGN + " (--mode)"),
                 id="checkpoint-from-a-mode-replacement-run"),
    pytest.param(_swap_from("uniform"), "refused", "checkpoint.npz", marks=fixed(FOREIGN + " (--uniform)"),
                 id="checkpoint-from-a-uniform-run"),
    pytest.param(_swap_from("init"), "refused", "checkpoint.npz", marks=fixed(FOREIGN + " (--init-scale)"),
                 id="checkpoint-from-an-init-scale-run"),
    pytest.param(_swap_from("heads2"), "refused", "checkpoint.npz", id="checkpoint-from-a-2-head-run"),
    pytest.param(_config_edit("c['config']['model']['dim'] = 99"), "refused", "config.json",
                 marks=fixed("cli.py compares only config.run: an edited config.model is accepted and kept"),
                 id="config-model-section-edited"),
    pytest.param(_config_text("[1, 2]"), "refused", "config.json", id="config-a-json-list"),
    pytest.param(_config_text('{"config": {"run": []}}'), "refused", "config.json", id="config-run-a-list"),
    pytest.param(_config_text(b"\xef\xbb\xbf{}"), "refused", "config.json", id="config-bom"),
    pytest.param(_config_symlink_to_other_run, "resumes-other-untouched", None, id="config-symlink-to-other-run"),
]


@pytest.mark.parametrize("mutate, expected, named", RESUME)
def test_2_resume_verifies_the_directory(mutate, expected, named, runs, tmp_path):
    run_dir = copy_ref(runs, tmp_path)
    mutate(run_dir, runs)
    before = (runs["ref"] / "config.json").read_bytes()
    code, _, err = run(["train", *SEQ, "--steps", "6", "--out", run_dir], cwd=tmp_path)
    if expected == "refused":
        assert_one_line(code, err, (1, 2), named)
    else:
        assert code == 0, err
        assert (runs["ref"] / "config.json").read_bytes() == before


TSV = "".join(f"{'pos' if i % 2 else 'neg'}\tword{i % 3} film{i}\n" for i in range(24))


# Fixed defect: cli.py recorded --data by path only, so a data file edited between sessions (same
# vocabulary) was resumed silently.
def test_2_resume_after_the_data_file_changed_is_refused(tmp_path):
    data = tmp_path / "d.tsv"
    data.write_text(TSV)
    argv = ["train", "--model", "classifier", "--task", "text-classification", "--data", data, "--dim", "4",
            "--batch-size", "4", "--eval-size", "4", "--eval-every", "1", "--seed", "0", "--quiet",
            "--out", tmp_path / "run"]
    code, _, err = run([*argv, "--steps", "2"], cwd=tmp_path)
    assert code == 0, err
    rows = TSV.splitlines()
    label, text = rows[5].split("\t")
    rows[5] = ("neg" if label == "pos" else "pos") + "\t" + text
    data.write_text("\n".join(rows) + "\n")
    code, _, err = run([*argv, "--steps", "4"], cwd=tmp_path)
    assert_one_line(code, err, (1, 2), "d.tsv")


# ==================================================================================================
# 3. Checkpoint entries: every entry validated before use, one line naming the file
# ==================================================================================================

def _rng(code):
    return ("r = json.loads(str(a['rng_state'])); " + code + "; a['rng_state'] = np.array(json.dumps(r))")


def _evals(code):
    return ("e = json.loads(str(a['history/evals'])); " + code + "; a['history/evals'] = np.array(json.dumps(e))")


RNG_TB = "checkpoint.restore catches ValueError/TypeError/KeyError only: an out-of-range generator state is an OverflowError traceback"
EVALS = "checkpoint.py validates only each evaluation's step: other fields and the schedule are trusted"
CHECKPOINT = [
    pytest.param(_rng("r['state']['state'] = -1"), marks=fixed(RNG_TB), id="rng-state-negative"),
    pytest.param(_rng("r['state']['state'] = 2 ** 200"), marks=fixed(RNG_TB), id="rng-state-huge"),
    pytest.param(_rng("r['state']['state'] = 1.5"), marks=fixed("a float generator state is accepted (truncated)"),
                 id="rng-state-float"),
    pytest.param(_evals("e[1]['loss'] = float('nan')"), marks=fixed(EVALS), id="eval-loss-nan"),
    pytest.param(_evals("e[1]['loss'] = 'x'"), marks=fixed(EVALS), id="eval-loss-string"),
    pytest.param(_evals("e.pop(2)"), marks=fixed(EVALS), id="eval-record-missing"),
    pytest.param("a['junk'] = np.arange(3)", marks=fixed("checkpoint.py ignores unknown archive members"),
                 id="unknown-member"),
    pytest.param("a['step'] = np.array(True)", id="step-bool"),
    pytest.param("a['optimizer/t'] = np.array(True)", id="adam-t-bool"),
    pytest.param("a['history/train_loss'] = np.array([True] * 4)", id="losses-bool"),
    pytest.param(_evals("e[1]['step'] = 1.0"), id="eval-step-float"),
    pytest.param("a['optimizer/v/embed'] = -a['optimizer/v/embed']", id="second-moment-negative"),
]


@pytest.mark.parametrize("code", CHECKPOINT)
def test_3_checkpoint_entries_are_validated(code, runs, tmp_path):
    run_dir = copy_ref(runs, tmp_path)
    edit_npz(run_dir / "checkpoint.npz", code)
    status, _, err = run(["train", *SEQ, "--steps", "6", "--out", run_dir], cwd=tmp_path)
    assert_one_line(status, err, (1, 2), "checkpoint.npz")


# ==================================================================================================
# 4. eval / plot on damaged metrics and snapshots
# ==================================================================================================

def _append(line):
    def mutate(run_dir):
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(line + "\n")
    return mutate


def _snap(code):
    return lambda run_dir: edit_npz(run_dir / "attention.npz", code)


PLOT_FLOAT = "runplot._metric calls float() on any value: a non-numeric metric is a traceback"
RECORDS = [
    pytest.param("plot", _append('{"step": 5, "loss": "x"}'), (1,), "metrics.jsonl", marks=fixed(PLOT_FLOAT),
                 id="plot-loss-a-string"),
    pytest.param("plot", _append('{"step": 5, "loss": [1, 2]}'), (1,), "metrics.jsonl", marks=fixed(PLOT_FLOAT),
                 id="plot-loss-a-list"),
    pytest.param("plot", lambda d: (d / "metrics.jsonl").write_text('{"step": 0, "loss": 1e308}\n'), (0, 1), None,
                 marks=fixed("runplot.draw_curves: a finite loss of 1e308 is a matplotlib traceback"),
                 id="plot-loss-1e308"),
    pytest.param("plot", _snap("a['stride'] = np.array(0)"), (1,), "attention.npz", id="plot-snapshot-stride-0"),
    pytest.param("plot", _snap("a['attention'][:] = np.nan"), (1,), "attention.npz", id="plot-snapshot-nan"),
    pytest.param("eval", _append('{"step": 1, "loss": 5.0}'), (1,), "metrics.jsonl",
                 marks=fixed("cli._run_eval: steps going backwards are accepted; an older record is shown as the latest"),
                 id="eval-step-goes-backwards"),
    pytest.param("eval", _append("5"), (1,), "metrics.jsonl", id="eval-a-number-record"),
    pytest.param("eval", lambda d: (d / "metrics.jsonl").write_bytes(b"\xef\xbb\xbf" + (d / "metrics.jsonl").read_bytes()),
                 (1,), "metrics.jsonl", id="eval-bom"),
]


@pytest.mark.parametrize("command, mutate, allowed, named", RECORDS)
def test_4_eval_and_plot_of_damaged_runs(command, mutate, allowed, named, runs, tmp_path):
    run_dir = copy_ref(runs, tmp_path)
    mutate(run_dir)
    extra = ["--out", tmp_path / "plots", "--no-gif"] if command == "plot" else []
    status, _, err = run([command, "--run", run_dir, *extra], cwd=tmp_path)
    if allowed == (0, 1) and status == 0:
        assert "Traceback" not in err
    else:
        assert_one_line(status, err, allowed, named)


PLOT_ARGS = [
    pytest.param(["--steps", "1,,2"], 2, "--steps", id="steps-empty-item"),
    pytest.param(["--example", "-1"], 2, "--example", id="example-negative"),
    pytest.param(["--steps", "\u0661"], 2, "--steps",
                 marks=fixed("runplot: --steps takes Unicode digits (int('\u0661') == 1), which train refuses"),
                 id="steps-unicode-digit"),
    pytest.param(["--out", ""], 2, "--out",
                 marks=fixed("runplot: plot --out '' writes the PNGs into the current directory"),
                 id="out-empty-string"),
]


@pytest.mark.parametrize("extra, status, named", PLOT_ARGS)
def test_4_plot_options(extra, status, named, runs, tmp_path):
    run_dir = copy_ref(runs, tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    code, _, err = run(["plot", "--run", run_dir, "--no-gif", *extra], cwd=cwd)
    assert_one_line(code, err, (status,), named)
    assert not any(cwd.iterdir())


# ==================================================================================================
# 5. A newline in a --run path must not split the message nor forge a second "miniattn:" line
# ==================================================================================================

NEWLINE = "the --run path is printed raw (cli._run_eval / runplot.plot_command skip _one_line)"
NEWLINE_CASES = [
    pytest.param("eval", "[1]\n", id="eval-list-record"),
    pytest.param("eval", "", id="eval-empty-log"),
    pytest.param("eval", None, id="eval-no-log"),
    pytest.param("plot", None, id="plot-not-a-run"),
]


@pytest.mark.parametrize("command, metrics", NEWLINE_CASES)
def test_5_newline_in_run_path_gives_one_line(command, metrics, tmp_path):
    run_dir = tmp_path / "nl\nminiattn: forged"
    run_dir.mkdir()
    if metrics is not None:
        (run_dir / "metrics.jsonl").write_text(metrics)
    status, _, err = run([command, "--run", run_dir], cwd=tmp_path)
    assert_one_line(status, err, (1, 2))


# ==================================================================================================
# 6. Interrupted (SIGKILL at a step) then resumed: bit-identical to an uninterrupted run
# ==================================================================================================

KILLER = r'''
import os, signal, sys
import miniattn.train as mtrain
from miniattn import cli
at = int(sys.argv[1])
real = mtrain._loss_and_grads
def step(model, batch, k):
    if k == at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(model, batch, k)
mtrain._loss_and_grads = step
sys.exit(cli.main(sys.argv[2:]))
'''

TSV_ARGS = ["--model", "classifier", "--task", "text-classification", "--dim", "4", "--batch-size", "4",
            "--eval-size", "4", "--eval-every", "2", "--seed", "1", "--quiet"]
INTERRUPTS = [
    # (argv, steps, first-session extra, kill at, resume extra, resume env)
    pytest.param([*SEQ, "--seed", "3"], 8, ["--checkpoint-every", "2"], 5, ["--checkpoint-every", "3"], {},
                 id="resume-with-another-checkpoint-every"),
    pytest.param([*SEQ, "--seed", "3"], 8, ["--checkpoint-every", "2", "--steps", "4"], 6,
                 ["--checkpoint-every", "2"], {}, id="killed-while-extending-a-finished-run"),
    pytest.param(TSV_ARGS, 7, ["--checkpoint-every", "2"], 6, ["--checkpoint-every", "2"],
                 {"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}, id="text-task-resumed-with-2-threads"),
]


def _same_checkpoint(a, b):
    with np.load(a) as x, np.load(b) as y:
        return set(x.files) == set(y.files) and all(np.array_equal(x[k], y[k]) for k in x.files)


@pytest.mark.parametrize("argv, steps, first, at, resume, env", INTERRUPTS)
def test_6_interrupted_then_resumed_is_bit_identical(argv, steps, first, at, resume, env, tmp_path):
    (tmp_path / "d.tsv").write_text(TSV)
    argv = [*argv, "--data", "d.tsv"] if "text-classification" in argv else argv
    code, _, err = run(["train", *argv, "--steps", steps, "--checkpoint-every", "2", "--out", "whole"], cwd=tmp_path)
    assert code == 0, err
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    if "--steps" in first:  # a finished shorter run first, then an extension that is killed
        code, _, err = run(["train", *argv, *first, "--out", "part"], cwd=tmp_path)
        assert code == 0, err
        first = [a for a in first if a not in ("--steps", "4")]
    code, _, _ = run([at, "train", *argv, "--steps", steps, *first, "--out", "part"], cwd=tmp_path, script=script)
    assert code == -signal.SIGKILL
    code, _, err = run(["train", *argv, "--steps", steps, *resume, "--out", "part"], cwd=tmp_path, env=_env(**env))
    assert code == 0, err
    assert _same_checkpoint(tmp_path / "whole" / "checkpoint.npz", tmp_path / "part" / "checkpoint.npz")
    assert (tmp_path / "whole" / "metrics.jsonl").read_bytes() == (tmp_path / "part" / "metrics.jsonl").read_bytes()


# ==================================================================================================
# 7. The results store through `python -m analysis.experiments --profile quick ... e1`
# ==================================================================================================

def experiments(args, cwd, results):
    return run(["--profile", "quick", "--results", results, *args], cwd=cwd, module="analysis.experiments",
               timeout=120)


@pytest.fixture(scope="module")
def e1_results(tmp_path_factory):
    base = tmp_path_factory.mktemp("e1") / "results"
    code, _, err = experiments(["compute", "e1"], base.parent, base)
    assert code == 0, err
    return base


def _one_run(results):
    return sorted((results / "e1" / "runs").glob("wrong-*.json"))[0]


def _record_edit(code):
    def mutate(results):
        p = _one_run(results)
        m = json.loads(p.read_text())
        exec(code, {"m": m})
        p.write_text(json.dumps(m))
    return mutate


def _npz_drop_member(results):
    p = _one_run(results)
    npz = p.with_suffix(".npz")
    a = dict(np.load(npz))
    a.pop(sorted(a)[-1])
    np.savez(npz, **a)
    m = json.loads(p.read_text())
    m["arrays_sha256"] = hashlib.sha256(npz.read_bytes()).hexdigest()
    p.write_text(json.dumps(m))


def _summary_edit(code):
    def mutate(results):
        p = results / "e1" / "summary.json"
        s = json.loads(p.read_text())
        exec(code, {"s": s})
        p.write_text(json.dumps(s))
    return mutate


def _replace_root_by_file(results):
    shutil.rmtree(results)
    results.write_text("x")


def _replace_root_by_dangling_link(results):
    shutil.rmtree(results)
    results.symlink_to(results.parent / "nowhere" / "deeper")


STALE = "analysis/store.py: is_current never rehashes the stored config nor checks the record's data"
KEYERR = "store treats a record whose data/arrays were emptied as current; the KeyError escapes analysis.experiments"
ROOT_TB = "analysis/experiments/__main__.py catches only ValueError: an OSError from the results root is a traceback"
STORE = [
    pytest.param(_record_edit("m['config']['lr'] = 123.0"), "compute", "recomputed", marks=fixed(STALE),
                 id="recorded-config-edited-hash-kept"),
    pytest.param(_record_edit("m['data'] = {}"), "compute", "recomputed", marks=fixed(KEYERR), id="data-emptied"),
    pytest.param(_record_edit("m['arrays'] = []"), "plot", "ok-or-one-line", marks=fixed(KEYERR),
                 id="arrays-list-emptied"),
    pytest.param(_npz_drop_member, "plot", "ok-or-one-line",
                 marks=fixed("store.load_run never checks the .npz members against the record's arrays list"),
                 id="npz-missing-a-member-checksum-updated"),
    pytest.param(_replace_root_by_file, "compute", "one-line", marks=fixed(ROOT_TB), id="results-root-a-file"),
    pytest.param(_replace_root_by_dangling_link, "compute", "one-line", marks=fixed(ROOT_TB),
                 id="results-root-a-dangling-symlink"),
    pytest.param(_summary_edit("s['runs'] = 'x'"), "plot", "one-line", id="summary-runs-a-string"),
]


@pytest.mark.parametrize("mutate, step, expected", STORE)
def test_7_results_store(mutate, step, expected, e1_results, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(e1_results, results)
    mutate(results)
    code, _, err = experiments([step, "e1"], tmp_path, results)
    if expected == "recomputed":
        assert code == 0 and "Traceback" not in err, err
        summary = json.loads((results / "e1" / "summary.json").read_text())
        assert summary["runs_reused"] < len(summary["runs"])
    elif expected == "ok-or-one-line":
        if code != 0:
            assert_ends_in_one_error_line(code, err)
    else:
        assert_ends_in_one_error_line(code, err)


def test_7_two_concurrent_computes_on_one_results_dir(tmp_path):
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "analysis.experiments", "--profile", "quick", "--results", str(results), "compute", "e1"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    summary = json.loads((results / "e1" / "summary.json").read_text())
    assert isinstance(summary, dict) and len(summary["runs"]) == 5
    assert not [p for p in results.rglob(".*") if p.name.endswith(".tmp")]
