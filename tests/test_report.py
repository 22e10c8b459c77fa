"""Tests of the report generator on a tiny fake result set."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from analysis import report as R
from analysis.claims import at_least, at_most, check_claim, mean_claim, rate_claim, within
from analysis.experiments.registry import EXPERIMENTS
from analysis.store import ResultStore


def _summary(root: Path, exp: str, claims, *, profile="default", **extra) -> None:
    store = ResultStore(exp, root)
    store.write_summary({"experiment": exp, "profile": profile, "claims": [c.to_dict() for c in claims],
                         "runs": [], "command": f"python -m analysis.experiments compute {exp}",
                         "compute_time_s": 1.0, "wall_time_s": 2.0, "runs_span_s": None, "runs_reused": 0,
                         "finished": "2026-12-01T00:00:00+00:00",
                         "metadata": {"git": {"revision": "0123456789abcdef", "dirty": False},
                                      "versions": {"numpy": "2.0"}}, **extra})


def _fake_results(root: Path) -> None:
    """e1: complete with a figure; e4: a failed and an undecided claim; e2: corrupt; rest missing."""
    _summary(root, "e1", [
        mean_claim("p(1) from simulation", 1.089, [1.0811111, 1.0887654, 1.0922222],
                   within(1.089, 0.01), fmt=".4f", source="e1/runs/uniform.json"),
        check_claim("time to p = 1", 0.93123, within(0.931, 1e-3, "closed form"), paper="≈ 0.931", fmt=".4g"),
    ], description="Toy *classifier*.",
        tables=[{"title": "Trajectory samples", "columns": ["τ", "p"], "rows": [[0.5, 0.6301234]],
                 "source": "e1/summary.json"}], notes=["default profile: scaled down"])
    (root / "figures").mkdir(parents=True, exist_ok=True)
    (root / "figures" / "e1_toy.png").write_bytes(b"\x89PNG fake")
    (root / "e1" / "runs").mkdir(parents=True, exist_ok=True)
    (root / "e1" / "runs" / "uniform.json").write_text("{}")
    _summary(root, "e4", [
        rate_claim("permutations often fail (success rate)", "frequently fail", [True] * 19 + [False],
                   at_most(0.75, "'frequently' = a quarter"), note="Adam learns permutations."),
        rate_claim("subsets every time", "20/20", [True, True], at_least(0.8)),
    ], profile="full")
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

    # The claims table of e1: numbers formatted from the file, CI and n, criterion, verdict, source.
    assert "| Claim | Kind | Paper | Ours (95% CI, n) | Criterion | Verdict | Source |" in text
    row = next(line for line in text.splitlines() if line.startswith("| p(1) from simulation"))
    assert "1.0890" in row and "1.0874 [" in row and ", n = 3" in row and "within ±0.01 of 1.089" in row
    assert "*undecided*" in row  # three seeds whose t-interval straddles the ±0.01 band
    assert "[e1/runs/uniform.json](results/e1/runs/uniform.json)" in row
    row2 = next(line for line in text.splitlines() if line.startswith("| time to p = 1"))
    assert "≈ 0.931" in row2 and "0.9312" in row2 and "| check |" in row2 and "| holds |" in row2
    assert "[e1/summary.json](results/e1/summary.json)" in row2  # default source is the summary
    # Links in the report resolve to files that exist.
    for target in re.findall(r"\]\(([^)]+)\)", text):
        assert (tmp_path / target).exists(), target
    assert "![e1_toy](results/figures/e1_toy.png)" in text
    assert "0.6301" in text and "Trajectory samples" in text
    assert "default profile: scaled down" in text

    # The failed claim is marked, with its note; the undecided one says what would decide it.
    row4 = next(line for line in text.splitlines() if line.startswith("| permutations often fail"))
    assert "**fails**" in row4 and "0.95 [0.76, 0.99], n = 20" in row4
    assert "Adam learns permutations." in text
    row5 = next(line for line in text.splitlines() if line.startswith("| subsets every time"))
    assert "*undecided*; n ≈" in row5
    assert "*No figures yet: run `python -m analysis.experiments plot e4`.*" in text

    # Corrupt and missing experiments are reported, not fatal.
    assert "**Unreadable result file** `results/e2/summary.json`" in text
    assert text.count("**Missing**") == len(EXPERIMENTS) - 3
    assert "python -m analysis.experiments all e3" in text

    # Overview: verdict counts per experiment, decided totals, the undecided listed with their n.
    assert re.search(r"\| E1 [^|]*\| done \| 1 \| 0 \| 1 \| default \|", text)
    assert re.search(r"\| E4 [^|]*\| done \| 0 \| 1 \| 1 \| full \|", text)
    assert re.search(r"\| E2 [^|]*\| unreadable \|", text)
    assert "Decided claims: 2 (1 hold, 1 fail); undecided: 2." in text
    assert re.search(r"- E4: subsets every time \(n = 2; ≈ \d+ needed\)", text)

    # Command and run time come from the summary's metadata.
    assert "- Command: `python -m analysis.experiments compute e1`" in text and "Run time:" in text
    assert "wall time of the compute step" in text and "reused" not in text


def test_report_says_when_runs_were_reused(tmp_path):
    results = tmp_path / "results"
    _fake_results(results)
    path = results / "e1" / "summary.json"
    s = json.loads(path.read_text())
    s.update(runs_reused=2, runs_span_s=480.0, wall_time_s=1.5, compute_time_s=900.0,
             runs=["a", "b"])
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


def test_report_marks_a_result_computed_by_an_earlier_version_of_its_code(tmp_path):
    """A summary whose code fingerprint is not the experiment's current one is flagged, with the
    command that recomputes it; a current one is not."""
    from analysis.fingerprint import fingerprint

    results = tmp_path / "results"
    e1, e4 = (next(e for e in EXPERIMENTS if e.id == i) for i in ("e1", "e4"))
    _summary(results, "e1", [], code=fingerprint(e1.module))
    _summary(results, "e4", [], code="0" * 64)
    text = R.build_report(results, tmp_path / "REPORT.md").read_text()
    sections = {h: body for h, body in re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)}
    assert "earlier version of its code" not in sections[e1.title]
    assert "earlier version of its code" in sections[e4.title] and "make repro-e4" in sections[e4.title]


def test_a_one_sided_null_interval_end_is_unbounded_and_a_two_sided_one_undecided():
    """Strict JSON stores ±inf as null: beside a finite end it is that infinity; both null stays NaN."""
    from analysis.claims import claim_from_dict, within
    from analysis.claims import Claim
    from analysis.report import _unbounded_ends

    crit = within(1.0, 0.2, "t", relative=True)
    stored = Claim("s", "p", 971.0, (294.7, float("inf")), 36, crit, kind="beyond").to_dict()
    stored["interval"] = [294.7, None]                      # what the JSON store writes for +inf
    assert claim_from_dict(_unbounded_ends(stored)).verdict == "fails"
    assert claim_from_dict(stored).verdict == "undecided"    # without the reading: NaN
    both = dict(stored, interval=[None, None])
    assert claim_from_dict(_unbounded_ends(both)).verdict == "undecided"
    low = dict(stored, interval=[None, 0.5])
    assert claim_from_dict(_unbounded_ends(low)).verdict == "fails"
