"""Tests of the report generator on a tiny fake result set."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from analysis import report as R
from analysis.experiments import EXPERIMENTS
from analysis.experiments import common as C


def _fake_results(root: Path) -> None:
    """e1: complete with a figure; e4: a failed claim and a missing figure; e2: corrupt; rest missing."""
    C.write_summary("e1", {
        "title": "ignored", "description": "Toy *classifier*.",
        "figures": ["figures/e1_toy.png"],
        "claims": [
            {"claim": "p(1) from simulation", "paper": 1.089, "ours": 1.0887654, "ci": [1.0811111, 1.0922222],
             "holds": True, "source": "e1/runs/uniform.json", "fmt": ".4f"},
            {"claim": "time to p = 1", "paper": "≈ 0.931", "ours": 0.93123, "ci": None, "holds": None},
        ],
        "tables": [{"title": "Trajectory samples", "columns": ["τ", "p"], "rows": [[0.5, 0.6301234]],
                    "source": "e1/summary.json"}],
        "notes": ["default profile: scaled down"],
    }, config={"profile": "default"}, runs=[], started=time.time(), root=root)
    (root / "figures").mkdir(parents=True, exist_ok=True)
    (root / "figures" / "e1_toy.png").write_bytes(b"\x89PNG fake")
    (root / "e1" / "runs").mkdir(parents=True, exist_ok=True)
    (root / "e1" / "runs" / "uniform.json").write_text("{}")
    C.write_summary("e4", {
        "figures": ["figures/e4_curves.png"],
        "claims": [{"claim": "permutations often fail (success rate)", "paper": "frequently fail",
                    "ours": 0.95, "ci": [0.75, 0.99], "holds": False, "note": "Adam learns permutations."}],
    }, config={"profile": "full"}, runs=[], started=time.time(), root=root)
    (root / "e2").mkdir(parents=True, exist_ok=True)
    (root / "e2" / "summary.json").write_text("{truncated")


def test_report_tables_links_and_missing(tmp_path):
    results = tmp_path / "results"
    _fake_results(results)
    out = R.build_report(results, tmp_path / "REPORT.md")
    text = out.read_text()

    # One section per registered experiment, in order.
    heads = re.findall(r"^## (.+)$", text, flags=re.M)
    assert heads == [e.title for e in EXPERIMENTS]

    # The claims table of e1: numbers formatted from the file, CI, holds, source link.
    assert "| Claim | Paper | Ours (95% CI) | Holds | Source |" in text
    row = next(line for line in text.splitlines() if line.startswith("| p(1) from simulation"))
    assert "1.0890" in row and "1.0888 [1.0811, 1.0922]" in row and "| yes |" in row
    assert "[e1/runs/uniform.json](results/e1/runs/uniform.json)" in row
    row2 = next(line for line in text.splitlines() if line.startswith("| time to p = 1"))
    assert "≈ 0.931" in row2 and "0.9312" in row2 and "n/a" in row2
    assert "[e1/summary.json](results/e1/summary.json)" in row2  # default source is the summary
    # Links in the report resolve to files that exist.
    for target in re.findall(r"\]\(([^)]+)\)", text):
        if "e4_curves" not in target:
            assert (tmp_path / target).exists(), target
    assert "![e1_toy](results/figures/e1_toy.png)" in text
    assert "0.6301" in text and "Trajectory samples" in text
    assert "default profile: scaled down" in text

    # The failed claim is plain, with its note; the missing figure is named.
    row4 = next(line for line in text.splitlines() if line.startswith("| permutations often fail"))
    assert "**no**" in row4 and "0.95 [0.75, 0.99]" in row4
    assert "Adam learns permutations." in text
    assert "Figure `figures/e4_curves.png` is missing" in text

    # Corrupt and missing experiments are reported, not fatal.
    assert "**Unreadable result file** `results/e2/summary.json`" in text
    assert text.count("**Missing**") == len(EXPERIMENTS) - 3
    assert "python -m analysis.experiments.e3_agreement all" in text

    # Overview table: state, claims holding, profile, read from the files.
    assert re.search(r"\| E1 [^|]*\| done \| 1/1 \| default \|", text)
    assert re.search(r"\| E4 [^|]*\| done \| 0/1 \| full \|", text)
    assert re.search(r"\| E2 [^|]*\| unreadable \|", text)

    # Command and run time come from the summary's metadata.
    assert "- Command: `" in text and "Run time:" in text
    assert "wall time of the compute step" in text and "reused" not in text


def test_report_says_when_runs_were_reused(tmp_path):
    results = tmp_path / "results"
    _fake_results(results)
    path = results / "e1" / "summary.json"
    s = json.loads(path.read_text())
    s.update(runs_reused=2, runs_span_s=480.0, wall_time_s=1.5, compute_time_s=900.0,
             runs=["runs/a.json", "runs/b.json"])
    path.write_text(json.dumps(s))
    text = R.render_report(results, tmp_path)
    line = next(x for x in text.splitlines() if x.startswith("- Run time:") and "15.0 min" in x)
    assert "over 2 runs, computed within 8.0 min of wall time" in line
    assert "reused 2 of them from earlier computes and took 1.5 s" in line


def test_report_on_empty_results_lists_everything_missing(tmp_path):
    text = R.render_report(tmp_path / "nothing", tmp_path)
    assert text.count("**Missing**") == len(EXPERIMENTS)


def test_report_cli(tmp_path, capsys):
    results = tmp_path / "results"
    _fake_results(results)
    assert R.main(["--results", str(results), "--out", str(tmp_path / "R.md")]) == 0
    assert (tmp_path / "R.md").read_text().startswith("# miniattn")


@pytest.mark.parametrize("value,fmt,expected", [
    (None, None, "–"), (True, None, "yes"), (3, None, "3"), (0.123456, None, "0.1235"),
    (0.5, ".1%", "50.0%"), (float("nan"), None, "–"), ("a|b", None, "a\\|b"), ([1, 2.5], None, "1, 2.5"),
])
def test_format_value(value, fmt, expected):
    assert R.format_value(value, fmt) == expected


def test_format_ci():
    assert R.format_ci([0.1, 0.2], ".2f") == " [0.10, 0.20]"
    assert R.format_ci(None) == "" and R.format_ci([None, 1.0]) == ""


def test_summary_is_json_standard(tmp_path):
    _fake_results(tmp_path)
    json.loads((tmp_path / "e1" / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(c))


def test_save_figure_writes_png_atomically(tmp_path):
    from analysis import plotting as P

    fig, axes = P.new_figure(1, 2)
    ax = axes[0, 0]
    P.theory_line(ax, [0, 1, 2], [0.5, 0.7, 1.0], label="closed form")
    P.sim_points(ax, [0, 1, 2], [0.5, 0.69, 1.01], label="GD", yerr=[0.01, 0.01, 0.02])
    mean, lo, hi = P.band_from_runs([[0.1, 0.2, 0.3], [0.2, 0.3, 0.5]])
    assert (lo <= mean).all() and (mean <= hi).all()
    P.sim_band(axes[0, 1], [0, 1, 2], mean, lo, hi, label="runs")
    P.finish_axes(ax, xlabel=P.TAU_LABEL, ylabel="p (probability)", title="t")
    assert ax.get_xlabel() == "τ = step · lr" and ax.get_legend() is not None
    path = P.save_figure(fig, "e0_test", root=tmp_path)
    assert path == tmp_path / "figures" / "e0_test.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["e0_test.png"]
    with pytest.raises(ValueError, match="name"):
        P.save_figure(fig, "a/b", root=tmp_path)
    with pytest.raises(ValueError, match="curves"):
        P.band_from_runs([])
    # Two seeds far apart: the t-interval leaves [0, 1] unless clipped to the quantity's range.
    mean, lo, hi = P.band_from_runs([[0.0, 0.0], [1.0, 1.0]])
    assert lo.min() < 0 and hi.max() > 1
    mean, lo, hi = P.band_from_runs([[0.0, 0.0], [1.0, 1.0]], bounds=(0.0, 1.0))
    np.testing.assert_array_equal(lo, [0.0, 0.0])
    np.testing.assert_array_equal(hi, [1.0, 1.0])
    np.testing.assert_array_equal(mean, [0.5, 0.5])


def test_e1_pipeline_end_to_end(tmp_path):
    """E1 is cheap enough to run for real: compute, reuse, plot, report."""
    from analysis.experiments import e1_toy

    s = e1_toy.compute("default", root=tmp_path)
    assert s["claims"] and all(isinstance(c["holds"], bool) for c in s["claims"])
    before = (tmp_path / "e1" / "runs" / "wrong.json").stat().st_mtime_ns
    e1_toy.compute("default", root=tmp_path)  # up to date: runs reused, not rewritten
    assert (tmp_path / "e1" / "runs" / "wrong.json").stat().st_mtime_ns == before
    paths = e1_toy.plot(root=tmp_path)
    assert all(p.is_file() for p in paths)
    text = R.render_report(tmp_path, tmp_path)
    assert "| p(τ=1) from the blog start" in text and "![e1_toy](figures/e1_toy.png)" in text
