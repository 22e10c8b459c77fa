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
