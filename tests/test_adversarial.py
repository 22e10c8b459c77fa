"""An adversarial round against the reliability fixes: try to break each class of the issue again.

One factory per class builds the cases (``pytest.param``); one test per class runs them and asserts
the specific good outcome — an error of the named type that names the argument or file, a finite
result, or a refusal with its exit status and one line on stderr. A case that fails today is marked
``xfail(strict=True)`` with the defect as its reason, so the suite stays green while recording it
(and turns red the day the defect is fixed, so the mark is removed). Every defect this round found
(15 defects, 42 cases) has been fixed; no case is marked now.

Classes: 1 command injection through the E3 variables of ``make reproduce`` (run on a stub Python,
never the real pipeline); 2 resume trusting what it finds; 3 divergence inside the pass; 4 silent NaN
from finite inputs; 5 loose types; 6 the results store; 7 CLI and loaders; 8 thread configuration.
"""

from __future__ import annotations

import contextlib
import io as _stdio
import json
import os
import resource
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from analysis.experiments import __main__ as experiments_main
from analysis.experiments import e3_agreement
from analysis.store import ResultStore
from miniattn import cli, io
from miniattn._validate import NonFiniteError
from miniattn.checkpoint import CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, CheckpointError, load_checkpoint
from miniattn.gru import gru_backward, gru_forward
from miniattn.layers import (attention_backward, attention_forward, embedding_backward, embedding_forward,
                             log_softmax, masked_softmax, multihead_attention_backward,
                             multihead_attention_forward, softmax_output_backward, softmax_output_forward)
from miniattn.models import (AttentionClassifier, FreeAttentionCopyModel, GatedToyClassifier, Seq2SeqAttention,
                             SoftmaxGatedToyClassifier)
from miniattn.models.rnn_classifier import RecurrentAttentionClassifier
from miniattn.models.rnn_seq2seq import RecurrentSeq2SeqAttention
from miniattn.models.toy import toy_batch
from miniattn.optim import SGD, Adam, make_optimizer
from miniattn.recurrent import lstm_backward, lstm_forward
from miniattn.tasks import CopyTask, KeywordClassificationTask
from miniattn.tasks.text_options import TextOptions, parse_text_options
from miniattn.train import TrainingDiverged, train

ROOT = Path(__file__).resolve().parents[1]
xfail = lambda reason: pytest.mark.xfail(strict=True, reason=reason)  # noqa: E731


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------

def cli_run(argv):
    """``miniattn.cli.main(argv)`` in-process -> (status, stdout, stderr); an escaping exception is
    returned as status ``"traceback"`` with its type and message in stderr."""
    out, err = _stdio.StringIO(), _stdio.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(argv)
        except SystemExit as exc:
            status = exc.code
        except Exception as exc:  # noqa: BLE001 - what a user would see as a traceback
            status = "traceback"
            print(f"Traceback: {type(exc).__name__}: {exc}", file=sys.stderr)
    return status, out.getvalue(), err.getvalue()


def assert_one_line(status, err, allowed=(1, 2)):
    """The command ended with an allowed exit status and exactly one line on stderr, no traceback."""
    lines = [line for line in err.splitlines() if line.strip() and "warning:" not in line]
    assert status in allowed, f"status {status!r}: {err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    return lines[0]


def _vm_size() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


@contextlib.contextmanager
def address_space_limit(extra=2 ** 30):
    """Cap this process's address space at its current size + ``extra`` while the block runs, so
    that a configuration too large for memory fails with MemoryError instead of swapping or being
    killed (the machine is shared)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_size() + extra
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# ==================================================================================================
# 1. Command injection through E3_TEXT / E3_PARALLEL_* / E3_OPTIONS
# ==================================================================================================

_STUB_PY = r"""#!/bin/sh
# A stand-in for the venv's python: records its arguments and the E3_* environment, never runs code.
{ printf 'ARGV'; for a in "$@"; do printf ' %s' "$a"; done; printf '\n'; } >> "$STUB_LOG"
env | grep '^E3_' | sed 's/^/ENV /' >> "$STUB_LOG"
for last; do :; done
case "$*" in
  *make-deps*) printf 'REPRO_IDS := e3\nREPRO_DEPS_e3 :=\nREPRO_PLOT_DEPS :=\n' ;;
  *e3-data*|*options-stamp*) echo stub > "$last" ;;
  *" compute "*) mkdir -p "$last/e3" ;;
esac
exit 0
"""

E3_VARIABLES = ("E3_TEXT", "E3_PARALLEL_SOURCE", "E3_PARALLEL_TARGET", "E3_OPTIONS")


def _injection_cases():
    cases = []
    hostile = [
        ("quote-break", "x'; touch {flag}; echo '", None),
        ("backticks", "`touch {flag}`", None),
        ("dollar-paren-shell", "$(touch {flag})x", None),  # make syntax on make's command line: env only
        ("spaces-and-semicolons", "a b;c|d&e.tsv", None),
        ("double-quotes", 'say "hi" > {flag}', None),
        ("make-shell-function", "$(shell touch {flag})", None),
        ("make-variable", "data$HOME.tsv", None),
    ]
    for var in E3_VARIABLES:
        for name, value, defect in hostile:
            if name == "dollar-paren-shell":
                continue  # on the command line it is a make reference; the environment case covers it
            marks = [xfail(defect)] if defect else []
            cases.append(pytest.param("make-cmdline", var, value, marks=marks, id=f"make-cmdline-{var}-{name}"))
        for name in ("make-shell-function", "dollar-paren-shell", "make-variable"):
            value = dict((n, v) for n, v, _ in hostile)[name]
            cases.append(pytest.param("make-environment", var, value, id=f"make-env-{var}-{name}"))
    for var in ("E3_TEXT", "E3_PARALLEL_SOURCE", "E3_PARALLEL_TARGET"):
        for name, value, _ in hostile:
            cases.append(pytest.param("e3-data", var, value, id=f"e3-data-{var}-{name}"))
    for name, value, _ in hostile:
        cases.append(pytest.param("options-stamp", "E3_OPTIONS", value, id=f"options-stamp-{name}"))
        cases.append(pytest.param("text-tasks-missing", "E3_TEXT", value, id=f"text-tasks-missing-{name}"))
    cases.append(pytest.param("text-tasks-hostile-name", "E3_TEXT", "x'; touch {flag}; echo '.tsv",
                              id="text-tasks-loads-a-file-with-a-hostile-name"))
    return cases


@pytest.mark.parametrize("how, variable, template", _injection_cases())
def test_1_e3_values_are_data_never_shell_or_make_text(how, variable, template, tmp_path, monkeypatch):
    flag = tmp_path / "INJECTED"
    value = template.format(flag=flag)
    if how.startswith("make"):
        stub = tmp_path / "python"
        stub.write_text(_STUB_PY)
        stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
        venv = tmp_path / "venv"
        venv.mkdir()
        (venv / ".installed").touch()
        results = tmp_path / "res"
        log = tmp_path / "stub.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("E3_") and k not in ("MAKEFLAGS", "MFLAGS")}
        env["STUB_LOG"] = str(log)
        argv = ["make", "--no-print-directory", f"VENV={venv}", f"PY={stub}", f"RESULTS={results}",
                f"{results}/e3/summary.json"]
        if how == "make-cmdline":
            argv.append(f"{variable}={value}")
        else:
            env[variable] = value
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert not flag.exists() and not (ROOT / "INJECTED").exists()
        text = log.read_text()
        recipes = [block for block in text.split("ARGV")[1:] if "make-deps" not in block.splitlines()[0]]
        assert len(recipes) == 3, text            # e3-data, options-stamp, compute
        for block in recipes:
            assert f"ENV {variable}={value}\n" in block, (value, block)
        return
    if how == "e3-data":
        for var in E3_VARIABLES:
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv(variable, value)
        monkeypatch.chdir(tmp_path)
        out = tmp_path / ".e3-data"
        experiments_main._e3_data(str(out))
        record = json.loads(out.read_text())
        assert record[variable]["path"] == value.strip()
        assert record[variable]["sha256"].startswith("unreadable")
        assert not flag.exists()
        return
    if how == "options-stamp":
        record = json.loads(e3_agreement.options_stamp({"E3_OPTIONS": value}))
        assert record["E3_OPTIONS"] == value
        assert record["options"].startswith("invalid: E3_OPTIONS")
        assert not flag.exists()
        return
    if how == "text-tasks-missing":
        with pytest.raises(ValueError, match="E3_TEXT") as info:
            e3_agreement.text_tasks({"E3_TEXT": value}, "quick", check=True)
        assert repr(value.strip()) in str(info.value) and not flag.exists()
        return
    # A real file with a hostile name is read as a file, and its name is recorded verbatim.
    path = tmp_path / value.replace("/", "_")
    path.write_text("".join(f"{'pos' if i % 2 else 'neg'}\tword{i % 3} other{i}\n" for i in range(20)))
    tasks = e3_agreement.text_tasks({"E3_TEXT": str(path)}, "quick", check=True)
    assert tasks["text-classification"]["file"]["path"] == str(path.resolve())
    assert not flag.exists()


# ==================================================================================================
# 2. Resume trusting what it finds
# ==================================================================================================

COPY = ["train", "--model", "seq2seq", "--task", "copy", "--vocab", "6", "--length", "4", "--dim", "8",
        "--batch-size", "8", "--eval-size", "8", "--eval-every", "2", "--seed", "3", "--quiet"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """A finished 4-step run in --out (config.json, metrics.jsonl, checkpoint.npz at step 4)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    status, _, err = cli_run([*COPY, "--steps", "4", "--out", str(out)])
    assert status == 0, err
    return out


def _npz_edit(edit):
    """A mutation that loads the checkpoint's arrays, applies ``edit(arrays)``, and rewrites it."""
    def mutate(run: Path):
        arrays = io.load_npz(run / CHECKPOINT_NAME)
        edit(arrays)
        with open(run / CHECKPOINT_NAME, "wb") as f:
            np.savez(f, **arrays)
    return mutate


def _set(key, value):
    return _npz_edit(lambda a: a.__setitem__(key, value))


def _drop(key):
    return _npz_edit(lambda a: a.pop(key))


def _poke(key, value):
    def edit(a):
        arr = a[key].copy()
        arr.flat[0] = value
        a[key] = arr
    return _npz_edit(edit)


def _zip_entry(name, payload: bytes):
    """Replace one member of the checkpoint archive by raw bytes (a crafted ``.npy``)."""
    def mutate(run: Path):
        with zipfile.ZipFile(run / CHECKPOINT_NAME) as z:
            members = {info.filename: z.read(info.filename) for info in z.infolist()}
        members[name] = payload
        with zipfile.ZipFile(run / CHECKPOINT_NAME, "w") as z:
            for key, data in members.items():
                z.writestr(key, data)
    return mutate


def _npy_header(descr: str, shape: tuple) -> bytes:
    header = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (descr, shape)
    header += " " * (117 - len(header)) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin-1")


def _config_edit(edit):
    def mutate(run: Path):
        meta = json.loads((run / CONFIG_NAME).read_text())
        edit(meta)
        (run / CONFIG_NAME).write_text(json.dumps(meta))
    return mutate


def _write(name, data):
    def mutate(run: Path):
        path = run / name
        if path.is_dir():
            path.rmdir()
        elif path.exists():
            path.unlink()
        if data == "DIR":
            path.mkdir()
        else:
            path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return mutate




def _resume_cases():
    P, M, V = "params/embed", "optimizer/m/embed", "optimizer/v/embed"
    refusals = {
        # missing entries
        "missing-step": _drop("step"), "missing-format": _drop("format"), "missing-param": _drop(P),
        "missing-adam-m": _drop(M), "missing-rng": _drop("rng_state"), "missing-run-key": _drop("run_key"),
        "missing-evals": _drop("history/evals"), "missing-train-loss": _drop("history/train_loss"),
        "missing-opt-t": _drop("optimizer/t"),
        # wrong shape / dtype
        "param-wrong-shape": _set(P, np.zeros((3, 3))),
        "param-float32": _npz_edit(lambda a: a.__setitem__(P, a[P].astype(np.float32))),
        "param-int": _npz_edit(lambda a: a.__setitem__(P, a[P].astype(np.int64))),
        "param-string": _set(P, np.array(["x"] * 72).reshape(9, 8)),
        "extra-param": _set("params/zz", np.zeros(2)),
        "adam-m-wrong-shape": _set(M, np.zeros(3)),
        "adam-m-float32": _npz_edit(lambda a: a.__setitem__(M, a[M].astype(np.float32))),
        "adam-m-string": _set(M, np.array("abc")),
        "optimizer-extra-entry": _set("optimizer/zz", np.zeros(2)),
        # non-finite entries
        "param-nan": _poke(P, np.nan), "param-inf": _poke(P, np.inf), "param-neg-inf": _poke(P, -np.inf),
        "adam-m-nan": _poke(M, np.nan), "adam-v-inf": _poke(V, np.inf), "adam-v-negative": _poke(V, -1.0),
        "train-loss-nan": pytest.param(_set("history/train_loss", np.full(4, np.nan))),
        "train-loss-inf": pytest.param(_poke("history/train_loss", np.inf)),
        # step: negative, wrong type, against the budget and the history
        "step-negative": _set("step", np.array(-1)), "step-float": _set("step", np.array(2.0)),
        "step-vector": _set("step", np.array([4])), "step-string": _set("step", np.array("4")),
        "step-beyond-budget": _set("step", np.array(10 ** 12)), "step-3-with-4-losses": _set("step", np.array(3)),
        "losses-short": _set("history/train_loss", np.zeros(2)), "losses-2d": _set("history/train_loss", np.zeros((2, 2))),
        "losses-strings": pytest.param(_set("history/train_loss", np.array(["a"] * 4))),
        "eval-after-step": _set("history/evals", np.array('[{"step": 9}]')),
        "eval-step-string": pytest.param(_set("history/evals", np.array('[{"step": "x"}]'))),
        "per-step-wrong-length": _set("history/per_step", np.array('{"x": [1]}')),
        "opt-t-negative": _set("optimizer/t", np.array(-3)), "opt-t-float": _set("optimizer/t", np.array(3.5)),
        "opt-t-bool": _set("optimizer/t", np.array(True)),
        # format and JSON entries
        "format-2": _set("format", np.array(2)), "format-string": _set("format", np.array("x")),
        "format-vector": _set("format", np.array([1, 1])),
        "rng-not-json": _set("rng_state", np.array("{not json")),
        "rng-other-generator": _set("rng_state", np.array('{"bit_generator": "MT19937", "state": {}}')),
        "run-key-not-json": _set("run_key", np.array("{")),
        "run-key-other-run": _set("run_key", np.array('{"seed": 1}')),
        "evals-not-json": _set("history/evals", np.array("{")),
        "per-step-not-json": _set("history/per_step", np.array("{")),
        "rng-list": pytest.param(_set("rng_state", np.array("[1, 2]"))),
        "rng-number": pytest.param(_set("rng_state", np.array("5"))),
        "run-key-list": pytest.param(_set("run_key", np.array("[]"))),
        "evals-object": pytest.param(_set("history/evals", np.array("{}"))),
        "evals-numbers": pytest.param(_set("history/evals", np.array("[1, 2]"))),
        "per-step-list": pytest.param(_set("history/per_step", np.array("[1]"))),
        "per-step-number": pytest.param(_set("history/per_step", np.array('{"x": 5}'))),
        # the file itself
        "truncated": lambda run: (run / CHECKPOINT_NAME).write_bytes((run / CHECKPOINT_NAME).read_bytes()[:700]),
        "empty-file": _write(CHECKPOINT_NAME, b""),
        "not-a-zip": _write(CHECKPOINT_NAME, b"PK\x03\x04" + b"garbage" * 20),
        "a-directory": _write(CHECKPOINT_NAME, "DIR"),
        "pickled-entry": _npz_edit(lambda a: a.__setitem__("params/zz", np.array([{"a": 1}], dtype=object))),
        "crafted-object-header": _zip_entry("params/embed.npy", _npy_header("|O", (2,)) + b"\0" * 16),
        "crafted-header-no-data": _zip_entry("step.npy", _npy_header("<i8", ())),
        "crafted-header-huge-shape": pytest.param(
            _zip_entry("params/embed.npy", _npy_header("<f8", (10 ** 12,)) + b"\0" * 64)),
        "crafted-header-broken": pytest.param(
            _zip_entry("params/embed.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': garbage")),
        # config.json
        "config-truncated": _write(CONFIG_NAME, '{"config": {"run"'),
        "config-list": _write(CONFIG_NAME, "[]"), "config-null": _write(CONFIG_NAME, "null"),
        "config-no-run": _write(CONFIG_NAME, '{"config": {}}'),
        "config-run-list": _write(CONFIG_NAME, '{"config": {"run": []}}'),
        "config-not-utf8": _write(CONFIG_NAME, b"\xff\xfe{"), "config-directory": _write(CONFIG_NAME, "DIR"),
        "config-dim-string": _config_edit(lambda m: m["config"]["run"].__setitem__("dim", "8")),
        "config-other-model": _config_edit(lambda m: m["config"]["run"].__setitem__("model", "toy")),
        "config-without-train": _config_edit(lambda m: m["config"].pop("train")),
        "config-train-string": _config_edit(lambda m: m["config"].__setitem__("train", "x")),
    }
    cases = []
    for name, mutation in refusals.items():
        if isinstance(mutation, type(pytest.param(None))):
            cases.append(pytest.param(mutation.values[0], "refused", marks=mutation.marks, id=name))
        else:
            cases.append(pytest.param(mutation, "refused", id=name))
    # Damage that must not stop a resume: leftovers of an interrupted write, a corrupt log.
    cases += [
        pytest.param(_write(".checkpoint.npz.x1.tmp", b"junk"), "resumes", id="leftover-temp-file"),
        pytest.param(_write(".metrics.jsonl.x2.tmp", b"{"), "resumes", id="leftover-temp-metrics"),
        pytest.param(_write(".checkpoint.npz.x3.tmp", "DIR"), "resumes",
                     id="leftover-temp-directory"),
        pytest.param(_write(METRICS_NAME, '{bad\n{"step": 0}\n'), "resumes", id="corrupt-metrics-rewritten"),
    ]
    return cases


@pytest.mark.parametrize("mutate, expected", _resume_cases())
def test_2_resume_refuses_what_it_cannot_trust(mutate, expected, reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    mutate(run)
    before = (run / CHECKPOINT_NAME).read_bytes() if (run / CHECKPOINT_NAME).is_file() else None
    status, _, err = cli_run([*COPY, "--steps", "6", "--out", str(run)])
    if expected == "resumes":
        assert status == 0, err
        assert not list(run.glob(".*.tmp"))
        records = io.read_jsonl(run / METRICS_NAME)
        assert [r["step"] for r in records] == [0, 2, 4, 6]
        assert load_checkpoint(run / CHECKPOINT_NAME).step == 6
        return
    line = assert_one_line(status, err)
    assert str(run) in line, line                      # names the run directory or its file
    if before is not None:
        assert (run / CHECKPOINT_NAME).read_bytes() == before, "a refused checkpoint was overwritten"




@pytest.mark.parametrize("mutate", [
    pytest.param(_poke("params/embed", np.nan), id="param-nan"),
    pytest.param(_set("step", np.array(-1)), id="step-negative"),
    pytest.param(_set("run_key", np.array('{"seed": 1}')), id="other-run"),
    pytest.param(_set("optimizer/t", np.array(-3)), id="opt-t-negative"),
])
def test_2_a_refused_resume_leaves_config_json_alone(mutate, reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    mutate(run)
    before = (run / CONFIG_NAME).read_bytes()
    status, _, err = cli_run([*COPY, "--steps", "6", "--out", str(run)])
    assert status == 1 and str(run) in assert_one_line(status, err)
    assert (run / CONFIG_NAME).read_bytes() == before


@pytest.mark.parametrize("mutate, expected", [
    pytest.param(_poke("params/embed", np.nan), "nan", id="param-nan"),
    pytest.param(_set("step", np.array(-1)), "step", id="step-negative"),
    pytest.param(_set("run_key", np.array('{"seed": 1}')), "other run", id="other-run"),
    pytest.param(lambda run: (run / CHECKPOINT_NAME).write_bytes(b"PK"), "unreadable", id="truncated"),
    pytest.param(_set("history/train_loss", np.zeros(2)), "losses", id="losses-short"),
    pytest.param(_set("rng_state", np.array("[1, 2]")), "rng", id="rng-list"),
    pytest.param(_set("history/per_step", np.array("[1]")), "per-step",
                 id="per-step-list"),
])
def test_2_api_resume_raises_checkpoint_error_naming_the_file(mutate, expected, reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    mutate(run)
    model, task, seed = _reference_model()
    fresh = {k: v.copy() for k, v in model.params.items()}
    with pytest.raises(CheckpointError, match=str(run / CHECKPOINT_NAME)) as info:
        train(model, task, Adam(model.params), steps=6, batch_size=8, seed=seed, eval_every=2, eval_size=8,
              out_dir=run, progress=False)
    assert ("different run" in str(info.value)) == (expected == "other run"), info.value
    assert all(np.array_equal(fresh[k], model.params[k]) for k in fresh), "a refused checkpoint was loaded"


def test_2_api_resume_control_the_unchanged_reference_resumes(reference_run, tmp_path):
    """The API cases above build the reference run's own model, task and seed: unchanged, it resumes."""
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    model, task, seed = _reference_model()
    history = train(model, task, Adam(model.params), steps=6, batch_size=8, seed=seed, eval_every=2, eval_size=8,
                    out_dir=run, progress=False)
    assert [r["step"] for r in history.evals] == [0, 2, 4, 6] and len(history.train_loss) == 6


def _reference_model():
    """The model, task and training seed of the ``COPY`` command (--seed 3: child 2 of its SeedSequence)."""
    task = CopyTask(4, 6, "subset")
    model = Seq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length, task.target_length,
                             dim=8, rng=np.random.default_rng(0))
    return model, task, np.random.SeedSequence(3).spawn(4)[2]


_OPTIONS = [("--vocab", "7", "--vocab"), ("--length", "3", "--length"), ("--dim", "16", "--dim"),
            ("--mode", "replacement", "--mode"), ("--seed", "4", "--seed"), ("--batch-size", "4", "--batch-size"),
            ("--eval-every", "1", "--eval-every"), ("--eval-size", "4", "--eval-size"), ("--lr", "0.01", "--lr"),
            ("--heads", "2", "--heads"), ("--uniform", None, "--uniform"), ("--init-scale", "0.2", "--init-scale"),
            ("--optimizer", "sgd", "--optimizer")]


def _option_cases():
    cases = [pytest.param(opt, value, named, id=f"other{opt}") for opt, value, named in _OPTIONS]
    cases += [pytest.param("--model", "rnn-seq2seq", "--model", id="other-model")]
    return cases


@pytest.mark.parametrize("option, value, named", _option_cases())
def test_2_resume_with_other_options_is_refused_naming_them(option, value, named, reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    argv = [*COPY, "--steps", "6", "--out", str(run)]
    if option in argv:
        argv[argv.index(option) + 1] = value
    else:
        argv += [option] + ([value] if value is not None else [])
    line = assert_one_line(*cli_run(argv)[::2])
    assert named in line and str(run) in line, line
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before, "a refused resume changed the run"


def test_2_foreign_directories_and_checkpoints(reference_run, tmp_path):
    # A directory with only a checkpoint (no config.json) is not a run to resume.
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(reference_run / CHECKPOINT_NAME, lone / CHECKPOINT_NAME)
    line = assert_one_line(*cli_run([*COPY, "--steps", "6", "--out", str(lone)])[::2], allowed=(2,))
    assert str(lone) in line and "not a miniattn run" in line
    # The checkpoint of another seed under this run's config: refused as another run's.
    other = tmp_path / "other"
    assert cli_run([*COPY, "--steps", "4", "--seed", "5", "--out", str(other)])[0] == 0
    mixed = tmp_path / "mixed"
    shutil.copytree(reference_run, mixed)
    shutil.copy(other / CHECKPOINT_NAME, mixed / CHECKPOINT_NAME)
    line = assert_one_line(*cli_run([*COPY, "--steps", "6", "--out", str(mixed)])[::2])
    assert "different run" in line and str(mixed) in line


# ==================================================================================================
# 3. Divergence inside the pass raises TrainingDiverged with the step
# ==================================================================================================

_TASK = CopyTask(4, 6, "subset")


def _seq2seq(dtype=np.float64):
    return Seq2SeqAttention(_TASK.input_vocab_size, _TASK.output_vocab_size, _TASK.source_length,
                            _TASK.target_length, dim=4, rng=np.random.default_rng(0), dtype=dtype)


class _Diverging:
    """A seq2seq model that goes wrong from its ``at``-th loss_and_grads call on, in a chosen way."""

    def __init__(self, how: str, at: int = 3):
        self.inner, self.how, self.at, self.calls = _seq2seq(), how, at, 0
        self.params = self.inner.params

    def forward(self, batch):
        result = self.inner.forward(batch)
        if self.calls >= self.at:
            if self.how == "eval-nan":
                return result._replace(log_probs=np.full_like(result.log_probs, np.nan))
            if self.how == "eval-nonfinite-error":
                raise NonFiniteError("attention scores overflowed to inf")
            if self.how == "eval-floating-point-error":
                raise FloatingPointError("overflow encountered in matmul")
            if self.how == "eval-runtime-warning":
                raise RuntimeWarning("overflow encountered in matmul")
        return result

    def loss_and_grads(self, batch):
        self.calls += 1
        loss, grads = self.inner.loss_and_grads(batch)
        if self.calls < self.at:
            return loss, grads
        grads = {k: v.copy() for k, v in grads.items()}
        how = self.how
        if how in ("loss-nan", "loss-inf", "loss-neg-inf"):
            loss = {"loss-nan": np.nan, "loss-inf": np.inf, "loss-neg-inf": -np.inf}[how]
        elif how == "loss-float32-nan":
            loss = np.float32("nan")
        elif how in ("grad-nan", "grad-inf"):
            grads["score"].flat[0] = np.nan if how == "grad-nan" else np.inf
        elif how == "nonfinite-error":
            raise NonFiniteError("attention scores overflowed to inf")
        elif how == "floating-point-error":
            raise FloatingPointError("overflow encountered in matmul")
        elif how == "runtime-warning":
            raise RuntimeWarning("overflow encountered in exp")
        elif how == "huge-grad":
            grads["embed"][...] = 1e308   # finite; SGD's update lr * g overflows the parameter
        return loss, grads



def _divergence_cases():
    hows = ["loss-nan", "loss-inf", "loss-neg-inf", "loss-float32-nan", "grad-nan", "grad-inf",
            "nonfinite-error", "floating-point-error", "runtime-warning", "eval-nan", "eval-nonfinite-error",
            "eval-floating-point-error", "eval-runtime-warning"]
    cases = []
    for how in hows:
        for optimizer in ("adam", "sgd"):
            value = how.values[0] if not isinstance(how, str) else how
            marks = how.marks if not isinstance(how, str) else ()
            cases.append(pytest.param(value, optimizer, marks=marks, id=f"{value}-{optimizer}"))
    cases.append(pytest.param("huge-grad", "sgd", id="update-overflows-sgd"))
    return cases


@pytest.mark.parametrize("how, optimizer", _divergence_cases())
def test_3_divergence_raises_with_the_step_and_keeps_the_last_finite_checkpoint(how, optimizer, tmp_path):
    model = _Diverging(how)
    opt = make_optimizer(optimizer, model.params, lr=10.0 if how == "huge-grad" else 1e-2)
    with pytest.raises(TrainingDiverged) as info:
        train(model, _TASK, opt, steps=6, batch_size=4, seed=0, eval_every=1, eval_size=4, out_dir=tmp_path,
              checkpoint_every=1, progress=False)
    assert info.value.step == 3 and "step 3" in str(info.value)
    checkpoint = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert checkpoint.step == 2
    assert all(np.all(np.isfinite(v)) for v in checkpoint.params.values())
    assert [r["step"] for r in io.read_jsonl(tmp_path / METRICS_NAME)] == [0, 1, 2]


@pytest.mark.parametrize("argv, step", [
    pytest.param(["--model", "seq2seq", "--vocab", "6", "--length", "4", "--dim", "4", "--optimizer", "sgd",
                  "--lr", "1e300"], 2, id="seq2seq-sgd-1e300"),
    pytest.param(["--model", "toy", "--optimizer", "sgd", "--lr", "1e308"], 2, id="toy-sgd-1e308"),
    pytest.param(["--model", "classifier", "--dim", "4", "--optimizer", "sgd", "--lr", "1e300"], 2,
                 id="classifier-sgd-1e300"),
    pytest.param(["--model", "seq2seq", "--vocab", "6", "--length", "4", "--dim", "4", "--init-scale", "1e300"], 0,
                 id="seq2seq-init-1e300-at-step-0-warnings-as-errors"),
])
def test_3_cli_divergence_exits_1_in_one_line(argv, step, tmp_path):
    status, out, err = cli_run(["train", *argv, "--steps", "4", "--batch-size", "4", "--eval-size", "4",
                                "--quiet", "--out", str(tmp_path / "run")])
    line = assert_one_line(status, err, allowed=(1,))
    assert f"diverged at step {step}" in line and out == ""


def test_3_cli_divergence_exit_status_of_a_real_process(tmp_path):
    code = ("import sys; from miniattn.cli import main; sys.exit(main(['train', '--model', 'toy', '--optimizer', "
            "'sgd', '--lr', '1e308', '--steps', '5', '--quiet']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "diverged at step 2" in proc.stderr


# ==================================================================================================
# 4. No silent NaN from finite inputs
# ==================================================================================================

def _signs(rng, shape, dtype, scale):
    """Finite inputs of magnitude ``scale`` with random signs (never inf: scale <= max of dtype)."""
    return (np.where(rng.random(shape) < 0.5, -1.0, 1.0) * float(scale)).astype(dtype)


def _layer_call(name, dtype, scale):
    rng = np.random.default_rng(7)
    B, T, S, d = 2, 3, 4, 5
    big = lambda *shape: _signs(rng, shape, dtype, scale)  # noqa: E731
    small = lambda *shape: rng.normal(size=shape).astype(dtype)  # noqa: E731
    if name == "attention_forward":
        return lambda: attention_forward(big(B, T, d), big(B, S, d), big(B, S, d))
    if name == "attention_forward-score-matrix":
        return lambda: attention_forward(small(B, T, d), small(B, S, d), small(B, S, d), score_matrix=big(d, d))
    if name == "attention_backward":
        def f():
            context, cache = attention_forward(small(B, T, d), small(B, S, d), big(B, S, d))
            return attention_backward(big(B, T, d), cache)
        return f
    if name == "multihead_forward":
        return lambda: multihead_attention_forward(big(B, T, d), big(B, S, d), big(B, S, d), big(2, d, d),
                                                   big(2, d, d))
    if name == "multihead_backward":
        def f():
            context, cache = multihead_attention_forward(small(B, T, d), small(B, S, d), big(B, S, d),
                                                         small(2, d, d), big(2, d, d))
            return multihead_attention_backward(big(B, T, d), cache)
        return f
    if name == "masked_softmax":
        return lambda: masked_softmax(big(B, T, S), None)
    if name == "masked_softmax-masked":
        mask = np.ones((B, T, S), bool)
        mask[..., 0] = False
        return lambda: masked_softmax(big(B, T, S), mask)
    if name == "log_softmax":
        return lambda: log_softmax(big(B, 7))
    if name == "log_softmax-spread":
        return lambda: log_softmax(np.array([[-scale, scale, 0.0]], dtype=dtype))
    if name == "embedding_backward":
        def f():
            out, cache = embedding_forward(np.array([[0, 0, 0, 1]]), big(6, d))
            return embedding_backward(big(1, 4, d), cache)
        return f
    if name == "softmax_output_forward":
        return lambda: softmax_output_forward(big(B, T, d), big(d, 7), big(7), np.zeros((B, T), np.int64))
    if name == "softmax_output_backward":
        def f():
            loss, cache = softmax_output_forward(small(B, T, d), big(d, 7), small(7), np.zeros((B, T), np.int64))
            return softmax_output_backward(dtype(scale), cache)
        return f
    raise KeyError(name)


_LAYERS = ("attention_forward", "attention_forward-score-matrix", "attention_backward", "multihead_forward",
           "multihead_backward", "masked_softmax", "masked_softmax-masked", "log_softmax", "log_softmax-spread",
           "embedding_backward", "softmax_output_forward", "softmax_output_backward")


def _recurrent_call(name, dtype):
    M = np.finfo(dtype).max
    x, h0 = np.array([[[M]]], dtype), np.array([[-M]], dtype)
    four = lambda n: np.full((1, n), 4, dtype)  # noqa: E731
    if name == "lstm_forward":
        return lambda: lstm_forward(x, h0, np.zeros((1, 1), dtype), four(4), four(4), np.zeros(4, dtype))
    if name == "gru_forward":
        return lambda: gru_forward(x, h0, four(3), four(3), np.zeros(3, dtype), np.zeros(3, dtype))
    if name == "lstm_backward":
        def f():
            (out, _), cache = lstm_forward(x, h0, np.zeros((1, 1), dtype), four(4), four(4), np.zeros(4, dtype))
            return lstm_backward(np.ones_like(out), None, cache)
        return f
    def f():
        (out, _), cache = gru_forward(x, h0, four(3), four(3), np.zeros(3, dtype), np.zeros(3, dtype))
        return gru_backward(np.ones_like(out), None, cache)
    return f


def _moderate_recurrent_call(name, dtype):
    rng = np.random.default_rng(3)
    B, T, D, H = 2, 3, 4, 3
    x = _signs(rng, (B, T, D), dtype, 1e10)
    if name.startswith("lstm"):
        args = (x, None, None, _signs(rng, (D, 4 * H), dtype, 1e10), _signs(rng, (H, 4 * H), dtype, 1e10),
                np.zeros(4 * H, dtype))
        forward, backward = lstm_forward, lstm_backward
    else:
        args = (x, None, _signs(rng, (D, 3 * H), dtype, 1e10), _signs(rng, (H, 3 * H), dtype, 1e10),
                np.zeros(3 * H, dtype), np.zeros(3 * H, dtype))
        forward, backward = gru_forward, gru_backward
    if name.endswith("forward"):
        return lambda: forward(*args)
    def f():
        (out, _), cache = forward(*args)
        return backward(np.ones_like(out), None, cache)
    return f


def _float_arrays(value):
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        yield value
    elif isinstance(value, (float, np.floating)):
        yield np.asarray(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _float_arrays(v)
    elif isinstance(value, tuple):
        for v in value:
            yield from _float_arrays(v)


def _nonfinite_cases():
    cases = []
    for dtype in (np.float32, np.float64):
        info = np.finfo(dtype)
        for label, scale in (("sqrt-max", float(np.sqrt(info.max))), ("max/4", float(info.max) / 4),
                             ("max", float(info.max))):
            for layer in _LAYERS:
                cases.append(pytest.param("layer", layer, dtype, scale, id=f"{layer}-{dtype.__name__}-{label}"))
        for name in ("lstm_forward", "gru_forward", "lstm_backward", "gru_backward"):
            cases.append(pytest.param("recurrent", name, dtype, None,
                                      id=f"{name}-{dtype.__name__}-opposite-overflow"))
            cases.append(pytest.param("recurrent-moderate", name, dtype, None,
                                      id=f"{name}-{dtype.__name__}-1e10"))
    return cases


@pytest.mark.parametrize("kind, name, dtype, scale", _nonfinite_cases())
def test_4_finite_inputs_give_finite_outputs_or_a_named_error(kind, name, dtype, scale):
    call = (_layer_call(name, dtype, scale) if kind == "layer" else
            _recurrent_call(name, dtype) if kind == "recurrent" else _moderate_recurrent_call(name, dtype))
    with np.errstate(all="ignore"):
        try:
            result = call()
        except NonFiniteError as exc:
            assert "\n" not in str(exc) and ("overflow" in str(exc) or "inf" in str(exc)), exc
            return
    arrays = list(_float_arrays(tuple(result)))
    assert arrays and all(np.all(np.isfinite(a)) for a in arrays), f"{name} returned NaN/inf silently"




def _models():
    copy, keyword = _TASK, KeywordClassificationTask(8, 5)
    plain_copy = CopyTask(4, 6, "subset", specials=False)
    copy_args = (copy.input_vocab_size, copy.output_vocab_size, copy.source_length, copy.target_length)
    kw_args = (keyword.input_vocab_size, keyword.output_vocab_size)
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    return {
        "seq2seq": (lambda: Seq2SeqAttention(*copy_args, dim=4, rng=rng()), copy),
        "seq2seq-2-heads": (lambda: Seq2SeqAttention(*copy_args, dim=4, heads=2, rng=rng()), copy),
        "seq2seq-float32": (lambda: Seq2SeqAttention(*copy_args, dim=4, rng=rng(), dtype=np.float32), copy),
        "rnn-seq2seq-lstm": (lambda: RecurrentSeq2SeqAttention(*copy_args, dim=4, rng=rng()), copy),
        "rnn-seq2seq-gru": (lambda: RecurrentSeq2SeqAttention(*copy_args, dim=4, encoder="gru", rng=rng()), copy),
        "free-copy": (lambda: FreeAttentionCopyModel(4, 6, rng=rng()), plain_copy),
        "free-copy-factorised": (lambda: FreeAttentionCopyModel(4, 6, factorised=True, dim=3, rng=rng()), plain_copy),
        "classifier": (lambda: AttentionClassifier(*kw_args, dim=4, rng=rng()), keyword),
        "classifier-score-mlp": (lambda: AttentionClassifier(*kw_args, dim=4, score_hidden=3, rng=rng()), keyword),
        "rnn-classifier-lstm": (lambda: RecurrentAttentionClassifier(*kw_args, dim=4, rng=rng()), keyword),
        "rnn-classifier-gru": (lambda: RecurrentAttentionClassifier(*kw_args, dim=4, encoder="gru", rng=rng()),
                               keyword),
        "toy": (lambda: GatedToyClassifier(), None),
        "softmax-toy": (lambda: SoftmaxGatedToyClassifier(), None),
    }


def _model_cases():
    cases = []
    for name in _models():
        for label in ("1e30", "1e150", "max/2"):
            cases.append(pytest.param(name, label, id=f"{name}-{label}"))
    return cases


@pytest.mark.parametrize("name, label", _model_cases())
def test_4_whole_models_with_huge_finite_params(name, label):
    build, task = _models()[name]
    model = build()
    batch = toy_batch() if task is None else task.sample(np.random.default_rng(1), 3)
    rng = np.random.default_rng(2)
    for key, value in model.params.items():
        limit = float(np.finfo(value.dtype).max) / 2
        scale = min({"1e30": 1e30, "1e150": 1e150, "max/2": limit}[label], limit)
        value[...] = _signs(rng, value.shape, value.dtype, scale)
    with np.errstate(all="ignore"):
        try:
            loss, grads = model.loss_and_grads(batch)
        except NonFiniteError as exc:
            assert "\n" not in str(exc)
            return
    assert np.isfinite(loss), f"{name}: loss {loss} from finite parameters"
    assert all(np.all(np.isfinite(g)) for g in grads.values())


# ==================================================================================================
# 5. Loose types
# ==================================================================================================

def _params():
    return {"w": np.zeros(3)}


def _readonly():
    a = np.zeros(3)
    a.flags.writeable = False
    return {"w": a}


def _adam_state(**changes):
    state = {"t": np.array(1), "m/w": np.zeros(3), "v/w": np.zeros(3)}
    state.update(changes)
    return state




def _loose_cases():
    c = []
    add = lambda call, error, named, id, marks=(): c.append(pytest.param(call, error, named, marks=marks, id=id))  # noqa: E731
    # optimiser hyperparameters
    for opt in (Adam, SGD):
        for value, error in (("1e-3", TypeError), (True, TypeError), (None, TypeError), ([1e-3], TypeError),
                             (np.array([1e-3]), TypeError), (1j, TypeError), (-1, ValueError), (0, ValueError),
                             (float("nan"), ValueError), (float("inf"), ValueError)):
            add(lambda opt=opt, value=value: opt(_params(), lr=value), error, "lr", f"{opt.__name__}-lr-{value!r}")
    for value, error in (((0.9,), ValueError), ((1.0, 0.9), ValueError), ("ab", TypeError), ((True, 0.9), TypeError),
                         ({0.9, 0.99}, TypeError), (np.array([[0.9, 0.99]]), ValueError), ((0.9, float("nan")), ValueError),
                         ((-0.1, 0.9), ValueError), (None, TypeError), ((0.9, 0.999, 0.1), ValueError),
                         (("0.9", "0.99"), TypeError)):
        add(lambda value=value: Adam(_params(), betas=value), error, "betas", f"Adam-betas-{value!r}")
    for value, error in ((0, ValueError), (-1, ValueError), ("1e-8", TypeError), (None, TypeError),
                         (True, TypeError), (float("inf"), ValueError)):
        add(lambda value=value: Adam(_params(), eps=value), error, "eps", f"Adam-eps-{value!r}")
    for value, error in ((1, ValueError), (-0.1, ValueError), ("0.9", TypeError), (None, TypeError),
                         (True, TypeError), (float("nan"), ValueError)):
        add(lambda value=value: SGD(_params(), momentum=value), error, "momentum", f"SGD-momentum-{value!r}")
    add(lambda: make_optimizer("rmsprop", _params()), ValueError, "optimizer", "make_optimizer-unknown")
    add(lambda: make_optimizer(None, _params()), TypeError, "optimizer", "make_optimizer-None")
    # parameters
    for opt in (Adam, SGD):
        for label, build, error, named in (("read-only", _readonly, ValueError, "read-only"),
                                           ("int", lambda: {"w": np.zeros(3, int)}, TypeError, "params['w']"),
                                           ("bool", lambda: {"w": np.zeros(3, bool)}, TypeError, "params['w']"),
                                           ("complex", lambda: {"w": np.zeros(3, complex)}, TypeError, "params['w']"),
                                           ("list", lambda: {"w": [0.0]}, TypeError, "params['w']"),
                                           ("not-a-dict", lambda: [np.zeros(3)], TypeError, "params"),
                                           ("int-key", lambda: {1: np.zeros(3)}, TypeError, "keys")):
            add(lambda opt=opt, build=build: opt(build()), error, named, f"{opt.__name__}-params-{label}")
        for label, value in (("nan", np.nan), ("inf", np.inf)):
            add(lambda opt=opt, value=value: opt({"w": np.array([0.0, value])}), ValueError, "params['w']",
                f"{opt.__name__}-params-{label}")
    # load_state_dict junk
    for label, state, error, named in (
            ("None", None, TypeError, "state"), ("list", [], TypeError, "state"), ("str", "x", TypeError, "state"),
            ("empty", {}, ValueError, "'t'"), ("t-str", _adam_state(t="x"), TypeError, "state['t']"),
            ("t-float", _adam_state(t=np.array(1.5)), TypeError, "state['t']"),
            ("t-bool", _adam_state(t=True), TypeError, "state['t']"),
            ("t-negative", _adam_state(t=-1), ValueError, "state['t']"),
            ("t-huge", _adam_state(t=2 ** 70), TypeError, "state['t']"),
            ("t-vector", _adam_state(t=np.array([1])), TypeError, "state['t']"),
            ("v-negative", _adam_state(**{"v/w": np.full(3, -1.0)}), ValueError, "state['v/w']"),
            ("extra", _adam_state(x=np.zeros(1)), ValueError, "'x'"),
            ("m-float32", _adam_state(**{"m/w": np.zeros(3, np.float32)}), TypeError, "state['m/w']"),
            ("m-nan", _adam_state(**{"m/w": np.full(3, np.nan)}), ValueError, "state['m/w']"),
            ("m-shape", _adam_state(**{"m/w": np.zeros(4)}), ValueError, "state['m/w']"),
            ("m-string", _adam_state(**{"m/w": "abc"}), TypeError, "state['m/w']"),
            ("m-missing", {"t": np.array(1), "v/w": np.zeros(3)}, ValueError, "'m/w'")):
        def load(state=state):
            opt = Adam(_params())
            before = opt.state_dict()
            try:
                opt.load_state_dict(state)
            finally:
                after = opt.state_dict()
                assert all(np.array_equal(before[k], after[k]) for k in before), "a refused state was loaded"
        add(load, error, named, f"Adam.load_state_dict-{label}")
    add(lambda: SGD(_params(), momentum=0.5).load_state_dict({"t": 1, "velocity/w": np.zeros(2)}), ValueError,
        "velocity/w", "SGD.load_state_dict-velocity-shape")
    # grads of the wrong kind
    def step(grads, opt=Adam):
        o = opt(_params())
        o.step(grads)
    for label, grads, error, named, marks in (
            ("wrong-shape", {"w": np.zeros((3, 1))}, ValueError, "grads['w']", ()),
            ("missing", {}, ValueError, "grads", ()),
            ("extra", {"w": np.zeros(3), "z": np.zeros(1)}, ValueError, "grads", ()),
            ("nan", {"w": np.array([0.0, np.nan, 0.0])}, ValueError, "grads['w']", ()),
            ("strings", {"w": np.array(["a", "b", "c"])}, TypeError, "grads['w']", []),
            ("objects", {"w": np.zeros(3, object)}, TypeError, "grads['w']", []),
            ("None", None, TypeError, "grads", [])):
        add(lambda grads=grads: step(grads), error, named, f"Adam.step-grads-{label}", marks=marks)
    def complex_step():
        o = Adam(_params())
        try:
            o.step({"w": np.zeros(3, complex) + 1j})
        finally:
            assert o.t == 0 and np.all(o.m["w"] == 0), "a refused step changed the optimiser state"
    add(complex_step, TypeError, "grads['w']", "Adam.step-grads-complex-leaves-state")
    # text options
    for field, value in (("header", "False"), ("header", 1), ("header", 0), ("lowercase", "False"),
                         ("lowercase", 1), ("lowercase", None), ("min_count", True), ("min_count", "2"),
                         ("min_count", 2.0), ("min_count", 0), ("max_vocab", 0), ("max_vocab", True),
                         ("max_length", -1), ("max_length", 1.5), ("encoding", "klingon"), ("encoding", None),
                         ("encoding", 5)):
        add(lambda field=field, value=value: TextOptions(**{field: value}), ValueError, field,
            f"TextOptions-{field}-{value!r}")
    for text, error, named in (("--lowercase False", ValueError, "False"), ("--min-count", ValueError, "--min-count"),
                               ("--bogus", ValueError, "--bogus"), ("'unterminated", ValueError, "unterminated"),
                               ("--min-count 1e3", ValueError, "--min-count"), (None, TypeError, "text"),
                               ("--lowercase=1", ValueError, "--lowercase")):
        add(lambda text=text: parse_text_options(text), error, named, f"parse_text_options-{text!r}")
    # model flags and sizes
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    for kw, error, named in (({"uniform": "False"}, TypeError, "uniform"), ({"uniform": 1}, TypeError, "uniform"),
                             ({"uniform": None}, TypeError, "uniform"),
                             ({"shared_embeddings": "no"}, TypeError, "shared_embeddings"),
                             ({"value_projection": 0}, TypeError, "value_projection"),
                             ({"dim": True}, TypeError, "dim"), ({"dim": 4.0}, TypeError, "dim"),
                             ({"heads": 0}, ValueError, "heads"), ({"heads": "2"}, TypeError, "heads"),
                             ({"init_scale": "0.1"}, TypeError, "init_scale"),
                             ({"init_scale": float("nan")}, ValueError, "init_scale"),
                             ({"dtype": np.int64}, ValueError, "dtype"), ({"rng": None}, TypeError, "rng")):
        add(lambda kw=kw: Seq2SeqAttention(5, 5, 3, 3, **{"dim": 4, "rng": rng(), **kw}), error, named,
            f"Seq2SeqAttention-{kw}")
    for build, named in ((lambda: AttentionClassifier(5, 2, dim=4, uniform="False", rng=rng()), "uniform"),
                         (lambda: FreeAttentionCopyModel(4, 6, factorised="False", rng=rng()), "factorised"),
                         (lambda: FreeAttentionCopyModel(4, 6, factorised=1, rng=rng()), "factorised"),
                         (lambda: RecurrentSeq2SeqAttention(5, 5, 3, 3, dim=4, uniform="False", rng=rng()), "uniform"),
                         (lambda: RecurrentAttentionClassifier(5, 2, dim=4, hidden=True, rng=rng()), "hidden"),
                         (lambda: GatedToyClassifier(uniform="False"), "uniform"),
                         (lambda: SoftmaxGatedToyClassifier(uniform=0), "uniform")):
        add(build, TypeError, named, f"model-flag-{named}-{len(c)}")
    return c


@pytest.mark.parametrize("call, error, named", _loose_cases())
def test_5_loose_types_are_refused_naming_the_argument(call, error, named):
    with np.errstate(all="ignore"), pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert named in message and "\n" not in message, message


# ==================================================================================================
# 6. The results store
# ==================================================================================================

_CONFIG, _CODE = {"seed": 1}, "code-1"


def _store(root):
    store = ResultStore("e9", root)
    store.save_run("r", _CONFIG, _CODE, {"x": 1.0, "curve": np.arange(4.0)}, metadata={"m": 1})
    return store


def _json_edit(edit):
    def mutate(store):
        path = store.run_path("r")
        record = json.loads(path.read_text())
        edit(record)
        path.write_text(json.dumps(record))
    return mutate


def _store_cases():
    J = lambda s: s.run_path("r")  # noqa: E731
    N = lambda s: s.run_path("r").with_suffix(".npz")  # noqa: E731

    def replace(path_of, data):
        def mutate(store):
            path = path_of(store)
            path.unlink()
            if data == "DIR":
                path.mkdir()
            else:
                path.write_bytes(data)
        return mutate
    corrupt = {
        "json-truncated": lambda s: J(s).write_text(J(s).read_text()[:40]), "json-empty": replace(J, b""),
        "json-list": replace(J, b"[]"), "json-not-utf8": replace(J, b"\xff\xfe{}"), "json-directory": replace(J, "DIR"),
        "npz-missing": lambda s: N(s).unlink(), "npz-truncated": lambda s: N(s).write_bytes(N(s).read_bytes()[:50]),
        "npz-byte-flipped": lambda s: N(s).write_bytes(N(s).read_bytes()[:-30] + b"X" + N(s).read_bytes()[-29:]),
        "npz-directory": replace(N, "DIR"),
        "npz-object-array": lambda s: np.savez(N(s), curve=np.array([{}], dtype=object)),
        "npz-other-arrays": pytest.param(lambda s: np.savez(N(s), curve=np.arange(5.0))),
        "json-no-data": pytest.param(_json_edit(lambda r: r.pop("data"))),
        "json-data-list": pytest.param(_json_edit(lambda r: r.__setitem__("data", [1]))),
    }
    cases = []
    for name, mutation in corrupt.items():
        if isinstance(mutation, type(pytest.param(None))):
            cases.append(pytest.param(mutation.values[0], "corrupt", marks=mutation.marks, id=name))
        else:
            cases.append(pytest.param(mutation, "corrupt", id=name))
    stale = {"code-changed": _json_edit(lambda r: r.__setitem__("code", "code-0")),
             "config-hash-changed": _json_edit(lambda r: r.__setitem__("config_hash", "0" * 64))}
    cases += [pytest.param(m, "stale", id=name) for name, m in stale.items()]
    cases += [pytest.param(lambda s: (s.runs_dir / ".r.json.ab.tmp").write_text("x"), "temp", id="temp-file"),
              pytest.param(lambda s: (s.runs_dir / ".r.json.ab.tmp").mkdir(), "temp",
                           id="temp-directory")]
    return cases


@pytest.mark.parametrize("mutate, expected", _store_cases())
def test_6_store_never_reuses_a_damaged_run(mutate, expected, tmp_path):
    store = _store(tmp_path)
    mutate(store)
    if expected == "temp":
        store.clean_temps()
        assert sorted(p.name for p in store.runs_dir.iterdir()) == ["r.json", "r.npz"]
        assert store.is_current("r", _CONFIG, _CODE)
        return
    assert not store.is_current("r", _CONFIG, _CODE)
    if expected == "corrupt":
        with pytest.raises(ValueError) as info:
            store.load_run("r")
        assert "runs/r." in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("content", [None, b'{"a": [1,', b"[1]", b"", b"\xff", b"null", b'"text"', "DIR"],
                         ids=["missing", "truncated", "list", "empty", "not-utf8", "null", "string", "directory"])
def test_6_corrupt_summary_is_a_value_error_naming_it(content, tmp_path):
    store = ResultStore("e9", tmp_path)
    store.dir.mkdir(parents=True)
    if content == "DIR":
        store.summary_path.mkdir()
    elif content is not None:
        store.summary_path.write_bytes(content)
    with pytest.raises(ValueError, match="summary.json"):
        store.load_summary()


@pytest.mark.parametrize("name", ["", "a/b", ".hidden", "..", None, 5])
def test_6_run_names_that_escape_the_directory_are_refused(name, tmp_path):
    with pytest.raises(ValueError, match="run name"):
        ResultStore("e9", tmp_path).run_path(name)


# ==================================================================================================
# 7. CLI and loaders: one line, exit 1/2, never a traceback
# ==================================================================================================

TINY = ["--steps", "2", "--batch-size", "4", "--eval-size", "4", "--eval-every", "1", "--seed", "0", "--quiet"]
CLASSIFY = ["train", "--model", "classifier", "--task", "text-classification", "--dim", "4", *TINY]
PARALLEL = ["train", "--model", "seq2seq", "--task", "parallel", "--dim", "4", *TINY]
_GOOD_TSV = "".join(f"{'pos' if i % 2 else 'neg'}\tword{i % 3} film{i}\n" for i in range(24))


def _cli_cases():
    c = []

    def case(id, argv, files=None, status=(1, 2), named=None, marks=(), memory=False):
        c.append(pytest.param(argv, files or {}, status, named, memory, marks=marks, id=id))
    tsv = {"d.tsv": _GOOD_TSV}
    case("nul-bytes", [*CLASSIFY, "--data", "{d.tsv}"], {"d.tsv": "pos\tgo\0od\nneg\tbad\n" * 3 + _GOOD_TSV},
         status=(0, 2), named="")
    case("utf16-without-encoding", [*CLASSIFY, "--data", "{d.tsv}"], {"d.tsv": _GOOD_TSV.encode("utf-16")},
         named="{d.tsv}")
    case("utf8-read-as-utf16", [*CLASSIFY, "--encoding", "utf-16", "--data", "{d.tsv}"], tsv, named="{d.tsv}")
    case("latin1-bytes", [*CLASSIFY, "--data", "{d.tsv}"], {"d.tsv": b"pos\tcaf\xe9\nneg\tbad\n"}, named="{d.tsv}")
    case("only-whitespace", [*CLASSIFY, "--data", "{d.tsv}"], {"d.tsv": "  \n\t\n \n"}, named="{d.tsv}")
    case("only-a-bom", [*CLASSIFY, "--data", "{d.tsv}"], {"d.tsv": b"\xef\xbb\xbf"}, named="{d.tsv}")
    case("empty-texts", [*CLASSIFY, "--data", "{d.tsv}"], {"d.tsv": "pos\t\nneg\t\n"}, named="{d.tsv}")
    case("empty-labels", [*CLASSIFY, "--data", "{d.tsv}"], {"d.tsv": "\tgood\n\tbad\n"}, named="{d.tsv}")
    case("one-class-csv", [*CLASSIFY, "--data", "{d.csv}"], {"d.csv": "pos,good\npos,bad\n"}, named="{d.csv}")
    case("header-only-csv", [*CLASSIFY, "--data", "{d.csv}"], {"d.csv": "label,text\n"}, named="{d.csv}")
    case("unclosed-quote-csv", [*CLASSIFY, "--data", "{d.csv}"], {"d.csv": 'pos,"good\nneg,bad\n'}, named="{d.csv}")
    case("header-refused-by-no-header", [*CLASSIFY, "--no-header", "--data", "{d.tsv}"],
         {"d.tsv": "label\ttext\n" + _GOOD_TSV}, named="{d.tsv}")
    case("dev-null", [*CLASSIFY, "--data", "/dev/null"], named="/dev/null")
    case("data-is-a-directory", [*CLASSIFY, "--data", "{tmp}"], named="{tmp}")
    case("data-missing", [*CLASSIFY, "--data", "{tmp}/none.tsv"], named="none.tsv")
    case("held-out-leaves-nothing", [*CLASSIFY, "--held-out", "0.99", "--data", "{d.tsv}"], tsv, named="--held-out")
    case("batch-cannot-fit", [*CLASSIFY, "--batch-size", "10000000000", "--data", "{d.tsv}"], tsv, status=(2,),
         named="estimated peak memory")
    case("eval-size-cannot-fit", ["train", "--model", "seq2seq", "--vocab", "6", "--length", "4", "--dim", "4",
                                  "--steps", "1", "--eval-size", "100000000000", "--quiet"], status=(2,),
         named="estimated peak memory")
    case("max-memory-1-byte", ["train", "--model", "toy", "--steps", "1", "--quiet", "--max-memory", "1"],
         status=(2,), named="--max-memory")
    for id, extra in (("vocab", ["--vocab", "1000000000", "--length", "4", "--dim", "4"]),
                      ("vocab-and-length", ["--vocab", "100000000", "--length", "100000000", "--dim", "4"]),
                      ("dim", ["--vocab", "6", "--length", "4", "--dim", "10000000000"]),
                      ("heads", ["--vocab", "6", "--length", "4", "--dim", "4", "--heads", "100000000"])):
        case(f"seq2seq-{id}-cannot-fit", ["train", "--model", "seq2seq", *extra, *TINY], status=(2,),
             named="memory", memory=True)
    case("rnn-hidden-cannot-fit", ["train", "--model", "rnn-seq2seq", "--vocab", "6", "--length", "4",
                                   "--hidden", "10000000000", *TINY], status=(2,), named="memory",
         memory=True)
    case("keyword-vocab-cannot-fit", ["train", "--model", "classifier", "--vocab", "10000000000", "--length", "4",
                                      "--dim", "4", *TINY], status=(2,), named="memory", memory=True)
    case("translation-target-vocab-cannot-fit", ["train", "--model", "seq2seq", "--task", "translation", "--vocab",
                                                 "6", "--target-vocab", "10000000000", "--length", "3", "--dim", "4",
                                                 *TINY], status=(2,), named="memory", memory=True)
    case("free-copy-cannot-fit", ["train", "--model", "free-copy", "--vocab", "10000000", "--length", "10000000",
                                  *TINY], status=(2,), named="memory", memory=True)
    case("keyword-classes-do-not-fit-vocab", ["train", "--model", "classifier", "--n-classes", "1000000000",
                                              "--dim", "4", *TINY], status=(2,), named="usage")
    # parallel files
    par = {"s.txt": "a b\nc d\ne f\ng\n" * 6, "t.txt": "A B\nC D\nE F\nG\n" * 6}
    case("parallel-source-not-utf8", [*PARALLEL, "--source-file", "{s.txt}", "--target-file", "{t.txt}"],
         {**par, "s.txt": b"a\xff\nb\n"}, named="{s.txt}")
    case("parallel-target-empty", [*PARALLEL, "--source-file", "{s.txt}", "--target-file", "{t.txt}"],
         {**par, "t.txt": ""}, named="{t.txt}")
    case("parallel-source-directory", [*PARALLEL, "--source-file", "{tmp}", "--target-file", "{t.txt}"], par,
         named="{tmp}")
    case("parallel-blank-lines", [*PARALLEL, "--source-file", "{s.txt}", "--target-file", "{t.txt}"],
         {"s.txt": "\n\n\n", "t.txt": "\n\n\n"}, named="{s.txt}")
    case("parallel-line-counts-differ", [*PARALLEL, "--source-file", "{s.txt}", "--target-file", "{t.txt}"],
         {**par, "t.txt": "A\n"}, named="{s.txt}")
    # --out
    case("out-is-a-file", ["train", "--model", "toy", "--steps", "1", "--quiet", "--out", "{afile}"],
         {"afile": "x"}, status=(2,), named="{afile}")
    case("out-is-dev-null", ["train", "--model", "toy", "--steps", "1", "--quiet", "--out", "/dev/null"],
         status=(2,), named="/dev/null")
    case("out-under-a-file", ["train", "--model", "toy", "--steps", "1", "--quiet", "--out", "{afile}/run"],
         {"afile": "x"}, named="{afile}")
    case("out-cannot-be-created", ["train", "--model", "toy", "--steps", "1", "--quiet", "--out", "/proc/self/run"],
         named="/proc/self/run")
    # argument errors: argparse's usage + one error line, exit 2
    for id, argv in (("unknown-option", ["train", "--bogus"]), ("unknown-command", ["frobnicate"]),
                     ("seed-negative", ["train", "--seed", "-1"]), ("lr-overflows", ["train", "--lr", "1e400"]),
                     ("init-scale-overflows", ["train", "--init-scale", "1e400"]),
                     ("max-memory-negative", ["train", "--max-memory", "-5"]),
                     ("max-memory-inf", ["train", "--max-memory", "inf"]),
                     ("max-memory-empty", ["train", "--max-memory", ""]),
                     ("eval-size-zero", ["train", "--eval-size", "0"]), ("steps-float", ["train", "--steps", "1.5"]),
                     ("held-out-one", ["train", "--task", "parallel", "--held-out", "1"]),
                     ("encoding-unknown", ["train", "--task", "parallel", "--encoding", "klingon"])):
        case(f"usage-{id}", argv, status=(2,), named="usage")
    # eval of damaged runs
    case("eval-run-is-a-file", ["eval", "--run", "{afile}"], {"afile": "x"}, status=(2,), named="usage")
    case("eval-metrics-not-utf8", ["eval", "--run", "{tmp}"], {"metrics.jsonl": b"\xff\xfe\n{}\n"}, status=(1,),
         named="metrics.jsonl")
    case("eval-metrics-directory", ["eval", "--run", "{tmp}"], {"metrics.jsonl": "DIR"}, status=(1,),
         named="metrics.jsonl")
    case("eval-metrics-empty", ["eval", "--run", "{tmp}"], {"metrics.jsonl": ""}, status=(1,), named="metrics.jsonl")
    case("eval-metrics-list-record", ["eval", "--run", "{tmp}"], {"metrics.jsonl": "[1, 2]\n"}, status=(1,),
         named="metrics.jsonl")
    case("plot-run-missing", ["plot", "--run", "{tmp}/none"], status=(2,), named="none")
    return c


def _fill(text, names):
    """``text`` with each ``{name}`` replaced by ``names[name]``, longest names first (so that
    ``{tmp}`` never eats the start of ``{tmpdir}``)."""
    for key in sorted(names, key=len, reverse=True):
        text = text.replace("{" + key + "}", names[key])
    return text


@pytest.mark.parametrize("argv, files, status, named, memory", _cli_cases())
def test_7_user_caused_failures_end_in_one_line(argv, files, status, named, memory, tmp_path):
    names = {"tmp": str(tmp_path)}
    for name, content in files.items():
        path = tmp_path / name
        names[name] = str(path)
        if content == "DIR":
            path.mkdir()
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
    fill = lambda text: _fill(text, names)  # noqa: E731
    argv = [fill(a) for a in argv]
    guard = address_space_limit() if memory else contextlib.nullcontext()
    with guard:
        code, out, err = cli_run(argv)
    if 0 in status and code == 0:
        return  # a file the loader may accept (e.g. NUL bytes inside a token) is also a good outcome
    if named == "usage":
        assert code == 2 and "usage: miniattn" in err and "Traceback" not in err, err
        assert [line for line in err.splitlines() if "error:" in line][0], err
        return
    line = assert_one_line(code, err, allowed=status)
    assert fill(named) in line, line


# ==================================================================================================
# 8. Thread configuration recorded in the run, a warning on resume with another one
# ==================================================================================================

_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _thread_cases():
    cases = []
    for var in _THREADS:
        cases.append(pytest.param({var: "1"}, {var: "2"}, True, id=f"{var}-1-to-2"))
        cases.append(pytest.param({var: None}, {var: "4"}, True, id=f"{var}-unset-to-4"))
        cases.append(pytest.param({var: "3"}, {var: None}, True, id=f"{var}-3-to-unset"))
        cases.append(pytest.param({var: "2"}, {var: "2"}, False, id=f"{var}-same"))
    cases.append(pytest.param({v: "1" for v in _THREADS}, {v: "8" for v in _THREADS}, True, id="all-three-change"))
    return cases


def _set_threads(monkeypatch, values):
    for var, value in values.items():
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)


@pytest.mark.parametrize("first, second, warns", _thread_cases())
def test_8_thread_setting_recorded_and_a_change_warned(first, second, warns, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _set_threads(monkeypatch, first)
    assert cli_run([*COPY, "--steps", "2", "--out", str(run)])[0] == 0
    recorded = json.loads((run / CONFIG_NAME).read_text())["config"]["run"]["threads"]
    for var, value in first.items():
        assert recorded[var] == value
    _set_threads(monkeypatch, second)
    status, _, err = cli_run([*COPY, "--steps", "4", "--out", str(run)])
    assert status == 0, err
    if warns:
        changed = [v for v in first if first[v] != second[v]]
        assert "warning: resuming" in err and all(v in err for v in changed), err
    else:
        assert "warning" not in err, err


@pytest.mark.parametrize("stored", [
    pytest.param({"OPENBLAS_NUM_THREADS": "1", "threadpoolctl": [1, 2]}, id="pools-numbers"),
    pytest.param({"OPENBLAS_NUM_THREADS": "1", "threadpoolctl": "x"}, id="pools-string"),
    pytest.param({"OPENBLAS_NUM_THREADS": "8", "threadpoolctl": [{"internal_api": "openblas", "num_threads": 8}]},
                 id="pools-other-machine"),
    pytest.param("x", id="record-a-string"),
    pytest.param([1], id="record-a-list"),
])
def test_8_a_damaged_thread_record_never_stops_a_resume(stored, reference_run, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    _config_edit(lambda m: m["config"]["run"].__setitem__("threads", stored))(run)
    status, _, err = cli_run([*COPY, "--steps", "6", "--out", str(run)])
    assert status == 0 and "Traceback" not in err, err
    if isinstance(stored, dict):
        assert "warning: resuming" in err and "OPENBLAS_NUM_THREADS" in err
