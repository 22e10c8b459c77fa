"""The make pipeline passes user-supplied paths as data, never as shell text."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_no_recipe_expands_a_user_path():
    """E3_TEXT / E3_PARALLEL_* reach Python through the environment only (make exports them)."""
    text = (ROOT / "reproduce.mk").read_text()
    recipes = [line for line in text.splitlines() if line.startswith("\t")]
    assert recipes, "reproduce.mk has recipes"
    for line in recipes:
        assert "E3_" not in line, line
    prerequisites = [line for line in text.splitlines() if ":" in line and not line.startswith(("\t", "#"))]
    assert not any("$(E3_" in line for line in prerequisites)


@pytest.mark.parametrize("value", ["a file with spaces.tsv", "x'; touch INJECTED; echo '", "$(shell touch INJECTED)"])
def test_e3_data_records_any_path_as_data(tmp_path, value):
    env = dict(os.environ, E3_TEXT=value)
    out = tmp_path / ".e3-data"
    subprocess.run([sys.executable, "-m", "analysis.experiments", "e3-data", str(out)], cwd=tmp_path, env=env,
                   check=True, capture_output=True, timeout=60)
    assert value in out.read_text() and "unreadable" in out.read_text()
    assert not (tmp_path / "INJECTED").exists()


def test_make_passes_a_hostile_path_through_without_running_it(tmp_path):
    results = tmp_path / "res"
    value = "x y'; touch INJECTED; echo '"
    proc = subprocess.run(["make", "--no-print-directory", f"RESULTS={results}", f"{results}/.e3-data",
                           f"E3_TEXT={value}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert value in (results / ".e3-data").read_text()
    assert not (ROOT / "INJECTED").exists() and not (tmp_path / "INJECTED").exists()


def test_e3_summary_depends_on_the_options_stamp():
    text = (ROOT / "reproduce.mk").read_text()
    assert "$(RESULTS)/e3/summary.json: $(RESULTS)/.e3-data $(RESULTS)/.e3-options" in text
    assert "$(RESULTS)/.e3-options: FORCE" in text


@pytest.mark.parametrize("value", ["a b'; touch INJECTED; echo '", "$(shell touch INJECTED)", "`touch INJECTED`"])
def test_options_stamp_records_any_value_as_data(tmp_path, value):
    env = dict(os.environ, E3_OPTIONS=value, PYTHONPATH=str(ROOT))
    out = tmp_path / ".e3-options"
    subprocess.run([sys.executable, "-m", "analysis.experiments.e3_agreement", "options-stamp", str(out)],
                   cwd=tmp_path, env=env, check=True, capture_output=True, timeout=60)
    import json
    record = json.loads(out.read_text())
    assert record["E3_OPTIONS"] == value and record["options"].startswith("invalid: E3_OPTIONS")
    assert not (tmp_path / "INJECTED").exists()


# (make itself expands $(...) in a command-line variable, as for E3_TEXT: that case is tested above
# without make.)
@pytest.mark.parametrize("value", ["--lowercase --min-count 2", "x'; touch INJECTED; echo '", "--min-count 0"])
def test_make_passes_hostile_e3_options_through_as_data(tmp_path, value):
    results = tmp_path / "res"
    proc = subprocess.run(["make", "--no-print-directory", f"RESULTS={results}", f"{results}/.e3-options",
                           f"E3_OPTIONS={value}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    stamp = (results / ".e3-options").read_text()
    import json
    record = json.loads(stamp)
    assert record["E3_OPTIONS"] == value
    assert not (ROOT / "INJECTED").exists() and not (tmp_path / "INJECTED").exists()
    if value.startswith("--lowercase"):
        assert record["options"]["lowercase"] is True and record["options"]["min_count"] == 2
    else:
        assert record["options"].startswith("invalid: E3_OPTIONS")
    # Unchanged options leave the stamp alone (make then has nothing to redo for E3).
    before = (results / ".e3-options").stat().st_mtime_ns
    subprocess.run(["make", "--no-print-directory", f"RESULTS={results}", f"{results}/.e3-options",
                    f"E3_OPTIONS={value}"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    assert (results / ".e3-options").stat().st_mtime_ns == before
