"""E3 on user-supplied real text: configuration from the environment, the held-out split, one run."""

from pathlib import Path

import numpy as np
import pytest

from analysis.experiments import e3_agreement as E3
from analysis.sweep import spawn_seed_records

DATA = Path(__file__).parent / "data"
TEXT = DATA / "sentiment.tsv"
SRC, TGT = DATA / "parallel.de", DATA / "parallel.en"


VARIABLES = ("E3_TEXT", "E3_PARALLEL_SOURCE", "E3_PARALLEL_TARGET")


def _task_names(profile):
    return {r.config["task_name"] for r in E3.runs(profile)}


def test_no_variables_no_text_tasks(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert E3.text_tasks({}) == {}
    assert _task_names("default") >= {"classification", "translation"}
    assert not any(name.startswith("text-") for name in _task_names("default"))


def test_runs_read_the_text_files_from_the_environment(monkeypatch):
    monkeypatch.setenv("E3_TEXT", str(TEXT))
    monkeypatch.setenv("E3_PARALLEL_SOURCE", str(SRC))
    monkeypatch.setenv("E3_PARALLEL_TARGET", str(TGT))
    specs = E3.runs("quick")
    assert {r.config["task_name"] for r in specs} == {"classification", "translation", "text-classification",
                                                     "text-translation"}
    text = [r for r in specs if r.config["task_name"] == "text-classification"][0]
    assert text.config["task"]["file"]["sha256"] == E3.text_tasks({"E3_TEXT": str(TEXT)})["text-classification"][
        "file"]["sha256"]


def test_text_tasks_record_path_and_hash(tmp_path):
    tasks = E3.text_tasks({"E3_TEXT": str(TEXT), "E3_PARALLEL_SOURCE": str(SRC),
                           "E3_PARALLEL_TARGET": str(TGT)})
    assert set(tasks) == {"text-classification", "text-translation"}
    rec = tasks["text-classification"]["file"]
    assert rec["path"] == str(TEXT.resolve()) and len(rec["sha256"]) == 64
    # An edited copy has another hash, hence another run key.
    copy = tmp_path / "copy.tsv"
    copy.write_bytes(TEXT.read_bytes() + b"pos\tgood\n")
    assert E3.text_tasks({"E3_TEXT": str(copy)})["text-classification"]["file"]["sha256"] != rec["sha256"]


def test_text_task_errors_name_the_variable(tmp_path):
    with pytest.raises(ValueError, match="E3_TEXT"):
        E3.text_tasks({"E3_TEXT": str(tmp_path / "missing.tsv")})
    with pytest.raises(ValueError, match="E3_PARALLEL_SOURCE and E3_PARALLEL_TARGET"):
        E3.text_tasks({"E3_PARALLEL_SOURCE": str(SRC)})
    with pytest.raises(ValueError, match="E3_PARALLEL_TARGET"):
        E3.text_tasks({"E3_PARALLEL_SOURCE": str(SRC), "E3_PARALLEL_TARGET": str(tmp_path / "x")})


def test_changed_file_is_refused(tmp_path):
    f = tmp_path / "t.tsv"
    f.write_bytes(TEXT.read_bytes())
    rec = E3.text_tasks({"E3_TEXT": str(f)})["text-classification"]["file"]
    assert E3._check_unchanged(rec) == str(f.resolve())
    f.write_bytes(TEXT.read_bytes() + b"neg\tbad\n")
    with pytest.raises(ValueError, match="changed"):
        E3._check_unchanged(rec)


@pytest.mark.parametrize("task_name", ["text-classification", "text-translation"])
def test_run_on_real_text(task_name):
    tc = E3.text_tasks({"E3_TEXT": str(TEXT), "E3_PARALLEL_SOURCE": str(SRC),
                        "E3_PARALLEL_TARGET": str(TGT)})[task_name]
    tc = dict(tc, steps=6, dim=8)
    config = {"task_name": task_name, "task": tc, "eval_size": 10, "fit_size": 50, "checkpoints": 3,
              "n_boot": 20, "frac": 0.05, "xi_levels": list(E3.XI_LEVELS), "held_out_fraction": E3.HELD_OUT_FRACTION,
              "seed": spawn_seed_records(5, 1)[0]}
    out = E3.run(config)
    assert out["diverged"] is False
    for row in E3.ROWS:
        assert 0.0 <= out[row]["A"] <= 1.0 and out[row]["n_items"] > 0
    assert 0.0 <= out["normal_final_accuracy"] <= 1.0


# ------------------------------------------------------------------------------------------------
# The shared text options (E3_OPTIONS), one-line errors, β^px on the whole training part
# ------------------------------------------------------------------------------------------------

from miniattn.tasks.text_options import TextOptions, parse_text_options  # noqa: E402


def test_text_options_come_from_E3_OPTIONS_and_are_recorded():
    default = E3.text_tasks({"E3_TEXT": str(TEXT)})["text-classification"]
    # E3 adds no processing of its own: no lowercasing, no truncation unless the options say so.
    assert default["options"] == TextOptions().as_dict()
    assert default["options"]["lowercase"] is False and default["options"]["max_length"] is None
    assert "lowercase" not in default and "max_length" not in default
    given = E3.text_tasks({"E3_TEXT": str(TEXT), "E3_PARALLEL_SOURCE": str(SRC), "E3_PARALLEL_TARGET": str(TGT),
                           "E3_OPTIONS": "--lowercase --min-count 2"})
    expected = parse_text_options("--lowercase --min-count 2").as_dict()
    assert all(tc["options"] == expected for tc in given.values())


def test_the_options_decide_the_vocabulary():
    rng = np.random.default_rng(0)
    plain = E3._task("text-classification", E3.text_tasks({"E3_TEXT": str(TEXT)})["text-classification"],
                     E3.HELD_OUT_FRACTION, rng)
    lower = E3._task("text-classification",
                     E3.text_tasks({"E3_TEXT": str(TEXT), "E3_OPTIONS": "--lowercase"})["text-classification"],
                     E3.HELD_OUT_FRACTION, rng)
    words = set(plain.dataset.vocab.words)
    assert "I" in words and "I" not in set(lower.dataset.vocab.words)   # the file has "I loved ..."
    assert lower.input_vocab_size < plain.input_vocab_size


@pytest.mark.parametrize("value", ["--no-such-option", "--min-count 0", "$(touch INJECTED)", "'unbalanced"])
def test_bad_options_are_one_line_naming_E3_OPTIONS(tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="E3_OPTIONS") as info:
        E3.text_tasks({"E3_TEXT": str(TEXT), "E3_OPTIONS": value})
    assert "\n" not in str(info.value)
    assert not (tmp_path / "INJECTED").exists()


@pytest.mark.parametrize("content", [b"pos\tgood film\nthis line has no tab\n", b"pos\tgood \xff film\n"])
def test_a_bad_file_is_one_line_naming_it_when_the_runs_are_configured(tmp_path, monkeypatch, content):
    bad = tmp_path / "bad file.tsv"
    bad.write_bytes(content)
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("E3_TEXT", str(bad))
    with pytest.raises(ValueError, match="E3_TEXT") as info:
        E3.runs("quick")
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_a_bad_file_in_the_make_path_ends_in_one_line(tmp_path):
    import os
    import subprocess
    import sys

    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"pos\tgood film\nthis line has no tab\n")
    env = dict(os.environ, E3_TEXT=str(bad), E3_OPTIONS="--min-count 1")
    env.pop("E3_PARALLEL_SOURCE", None)
    env.pop("E3_PARALLEL_TARGET", None)
    proc = subprocess.run([sys.executable, "-m", "analysis.experiments", "compute", "e3", "--profile", "quick",
                           "--results", str(tmp_path / "res")], cwd=Path(__file__).resolve().parents[1], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(bad) in lines[0] and "line 2" in lines[0]


def test_beta_px_is_the_embedding_bag_fitted_on_the_whole_training_part():
    tc = dict(E3.text_tasks({"E3_PARALLEL_SOURCE": str(SRC), "E3_PARALLEL_TARGET": str(TGT)})["text-translation"],
              steps=4, dim=8)
    tc["beta_px"] = dict(tc["beta_px"], dim=16, max_epochs=3)
    config = {"task_name": "text-translation", "task": tc, "eval_size": 10, "fit_size": 5, "checkpoints": 2,
              "n_boot": 10, "frac": 0.05, "xi_levels": list(E3.XI_LEVELS),
              "held_out_fraction": E3.HELD_OUT_FRACTION, "seed": spawn_seed_records(6, 1)[0]}
    out = E3.run(config)
    fit = out["beta_px_fit"]
    assert fit["method"] == "embedding" and fit["dim"] == 16
    n_train = 20 - round(E3.HELD_OUT_FRACTION * 20)
    # Every training pair enters the fit (fit_size, the synthetic tasks' sample size, is not used).
    assert fit["n_train"] + fit["n_val"] == n_train
    assert 0.0 <= out["beta_px_unseen_tokens"] <= 1.0 and 0.0 <= out["beta_px_tied_top"] <= 1.0
    assert 0.0 <= out["beta_uf_vs_beta_px"]["raw_A"] <= 1.0
