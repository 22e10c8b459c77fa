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
