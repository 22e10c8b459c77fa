"""Tests of the experiment driver (analysis.experiments.framework), its command line and the report,
on a fake experiment whose functions live in this test module.

The fake is registered by monkeypatching the registry (``analysis.experiments.registry.EXPERIMENTS``) and
``sys.modules``; its code fingerprint is a string the tests control (``framework.fingerprint`` is
monkeypatched), since the fake is not a project module.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import analysis.experiments.registry as registry
from analysis import report as R
from analysis.claims import at_least, at_most, check_claim, claim_from_dict, rate_claim
from analysis.experiments import framework
from analysis.experiments.registry import ExperimentInfo
from analysis.experiments import __main__ as cli
from analysis.store import ResultStore, StoredRun
from analysis.sweep import SerialExecutor, spawn_seed_records, spec
from miniattn.io import to_jsonable

FAKE_MODULE = "tests_fake_experiment"
FAKE_INFO = ExperimentInfo("fake", FAKE_MODULE, "Fake - an experiment of the tests")
FAKE_CODE = ["fake-code-1"]
FAKE_CALLS: list[str] = []
N_RUNS = {"quick": 2, "default": 3, "full": 4}


# --------------------------------------------------------------------------------------------------
# the fake experiment
# --------------------------------------------------------------------------------------------------

def fake_runs(profile):
    # Seeds are the first children of one root: the larger profiles extend the smaller ones.
    return [spec("fake", {"seed": s, "n": 4, "group": "ab"[i % 2]})
            for i, s in enumerate(spawn_seed_records(5, N_RUNS[profile]))]


def fake_run(config):
    FAKE_CALLS.append(config["group"])
    rng = np.random.default_rng(np.random.SeedSequence(config["seed"]["entropy"],
                                                       spawn_key=tuple(config["seed"]["spawn_key"])))
    curve = rng.standard_normal(config["n"])
    return {"score": float(curve.mean()), "ok": True, "curve": curve}


def fake_claims(results):
    return [
        check_claim("at least one run", len(results), at_least(1)),                          # holds
        check_claim("at most one run", len(results), at_most(1), kind="beyond"),             # fails
        rate_claim("runs often fail", "frequently", results.values("ok"), at_most(0.75)),    # undecided
    ]


def fake_figures(results):
    out = results.root / "figures" / f"{results.experiment}_curve.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"\x89PNG " + b"".join(np.asarray(v).tobytes() for v in results.values("curve")))
    return [out]


def fake_tables(results):
    return [{"title": "Scores", "columns": ["run", "score"],
             "rows": [[r.name, r.data["score"]] for r in results]}]


def fake_notes(results):
    return [f"{len(results)} runs of the fake"]


def _fake_module(**overrides) -> types.ModuleType:
    mod = types.ModuleType(FAKE_MODULE, "The fake experiment.\n\nMore text.")
    mod.runs, mod.run, mod.claims, mod.figures = fake_runs, fake_run, fake_claims, fake_figures
    mod.tables, mod.notes = fake_tables, fake_notes
    mod.DESCRIPTION = "A fake experiment for the framework's tests."
    for k, v in overrides.items():
        setattr(mod, k, v)
    return mod


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Register the fake experiment; returns the results root."""
    monkeypatch.setattr(registry, "EXPERIMENTS", registry.EXPERIMENTS + (FAKE_INFO,))
    monkeypatch.setitem(sys.modules, FAKE_MODULE, _fake_module())
    monkeypatch.setattr(framework, "fingerprint", lambda name: FAKE_CODE[0])
    FAKE_CODE[0] = "fake-code-1"
    for var in ("QUICK", "FULL", "EXECUTOR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MINIATTN_RESULTS", str(tmp_path))
    FAKE_CALLS.clear()
    return tmp_path


def _compute(root, profile=None, **kw):
    return framework.compute("fake", profile, root=root, executor=SerialExecutor(), **kw)


# --------------------------------------------------------------------------------------------------
# profiles, Results
# --------------------------------------------------------------------------------------------------

def test_get_profile(monkeypatch):
    monkeypatch.delenv("FULL", raising=False)
    monkeypatch.delenv("QUICK", raising=False)
    assert framework.get_profile() == "default"
    monkeypatch.setenv("QUICK", "1")
    assert framework.get_profile() == "quick"
    monkeypatch.setenv("FULL", "1")
    assert framework.get_profile() == "full"          # FULL wins over QUICK
    assert framework.get_profile("default") == "default"
    monkeypatch.setenv("FULL", "0")
    assert framework.get_profile() == "quick"
    assert framework.PROFILES == ("quick", "default", "full")
    with pytest.raises(ValueError, match="profile"):
        framework.get_profile("huge")


def _record(name, config, data):
    return StoredRun({"name": name, "config": config, "data": data})


def test_results_where_values_distinct(tmp_path):
    recs = [_record("a", {"v": 8, "task": "perm"}, {"acc": 0.1}),
            _record("b", {"v": 4, "task": "subset"}, {"acc": 0.9}),
            _record("c", {"v": 8, "task": "subset"}, {"acc": 1.0}),
            _record("d", {"v": 16, "task": "perm"}, {"acc": 0.2})]
    res = framework.Results("e9", "quick", recs, tmp_path)
    assert len(res) == 4 and [r.name for r in res] == ["a", "b", "c", "d"]
    assert res.distinct("v") == [8, 4, 16] and res.distinct("task") == ["perm", "subset"]
    assert res.distinct("missing") == [None]
    sub = res.where(task="subset")
    assert isinstance(sub, framework.Results) and [r.name for r in sub] == ["b", "c"]
    assert sub.values("acc") == [0.9, 1.0]
    assert [r.name for r in res.where(task="perm", v=16)] == ["d"]
    assert [r.name for r in res.where(v=lambda v: v >= 8)] == ["a", "c", "d"]
    assert len(res.where(task="none")) == 0 and res.where(task="none").values("acc") == []
    assert res.where().values("acc") == [0.1, 0.9, 1.0, 0.2]
    assert sub.experiment == "e9" and sub.profile == "quick" and sub.root == tmp_path
    assert res.source == "e9/summary.json" and res.smoke
    assert not framework.Results("e9", "default", [], tmp_path).smoke


# --------------------------------------------------------------------------------------------------
# compute / load_results / plot
# --------------------------------------------------------------------------------------------------

def test_compute_writes_the_summary(fake):
    summary = _compute(fake)
    assert FAKE_CALLS == ["a", "b", "a"]
    path = fake / "fake" / "summary.json"
    stored = json.loads(path.read_text())
    assert stored == json.loads(json.dumps(stored)) and stored["experiment"] == "fake"
    assert stored["claims"] == to_jsonable(summary["claims"])  # infinite bounds stored as null
    # Claims: verdicts recomputable from the stored intervals and criteria.
    verdicts = [c["verdict"] for c in stored["claims"]]
    assert verdicts == ["holds", "fails", "undecided"]
    assert [claim_from_dict(c).verdict for c in stored["claims"]] == verdicts
    assert all(c["source"] == "fake/summary.json" for c in stored["claims"])
    assert stored["claims"][2]["n_to_decide"] == claim_from_dict(stored["claims"][2]).n_to_decide > 3
    # Runs listed, in order, each a file of the store; the seeds and the code fingerprint stored.
    specs = fake_runs("default")
    assert stored["runs"] == [s.name for s in specs]
    store = ResultStore("fake", fake)
    for s in specs:
        assert store.run_path(s.name).is_file() and store.run_path(s.name).with_suffix(".npz").is_file()
        assert store.is_current(s.name, s.config, "fake-code-1")
    assert stored["seeds"] == [s.config["seed"] for s in specs]
    assert stored["code"] == "fake-code-1"
    assert stored["profile"] == "default" and stored["module"] == FAKE_MODULE and stored["title"] == FAKE_INFO.title
    assert stored["command"] == "python -m analysis.experiments compute fake --profile default"
    assert stored["description"] == "A fake experiment for the framework's tests."
    assert stored["tables"][0]["title"] == "Scores" and len(stored["tables"][0]["rows"]) == 3
    assert stored["notes"] == ["3 runs of the fake"]
    assert stored["metadata"]["versions"]["numpy"] == np.__version__
    records = [store.load_run(s.name) for s in specs]
    assert math.isclose(stored["compute_time_s"], sum(r["runtime_s"] for r in records))
    assert stored["runs_reused"] == 0 and stored["runs_span_s"] >= 0 and stored["wall_time_s"] >= 0
    assert stored["started"] <= stored["finished"]


def test_description_defaults_to_the_module_docstring(fake, monkeypatch):
    mod = _fake_module()
    del mod.DESCRIPTION
    monkeypatch.setitem(sys.modules, FAKE_MODULE, mod)
    assert _compute(fake)["description"] == "The fake experiment."


def test_compute_reuses_runs_and_recomputes_when_the_code_changes(fake):
    first = _compute(fake)
    FAKE_CALLS.clear()
    again = _compute(fake)
    assert FAKE_CALLS == []
    assert again["runs"] == first["runs"] and again["claims"] == first["claims"]
    FAKE_CODE[0] = "fake-code-2"
    try:
        changed = framework.compute(FAKE_MODULE, root=fake, executor=SerialExecutor())  # by module name
    finally:
        FAKE_CODE[0] = "fake-code-1"
    assert sorted(FAKE_CALLS) == ["a", "a", "b"]
    assert changed["code"] == "fake-code-2" and changed["runs_reused"] == 0
    assert json.loads((fake / "fake" / "summary.json").read_text())["code"] == "fake-code-2"


def test_profiles_extend_each_other(fake, monkeypatch):
    monkeypatch.setenv("QUICK", "1")
    quick = _compute(fake)
    assert quick["profile"] == "quick" and len(quick["runs"]) == 2 and FAKE_CALLS == ["a", "b"]
    assert quick["command"].endswith("--profile quick")
    monkeypatch.delenv("QUICK")
    FAKE_CALLS.clear()
    default = _compute(fake)
    assert default["runs"][:2] == quick["runs"] and FAKE_CALLS == ["a"]  # only the new seed runs
    FAKE_CALLS.clear()
    full = _compute(fake, "full")
    assert len(full["runs"]) == 4 and FAKE_CALLS == ["b"]


def test_summary_counts_runs_reused_from_an_earlier_compute(fake):
    _compute(fake)
    specs = fake_runs("default")
    store = ResultStore("fake", fake)
    # Pretend the first run was computed an hour before the next compute step and took 10 s; the
    # other two are recomputed by that step.
    path = store.run_path(specs[0].name)
    rec = json.loads(path.read_text())
    hour_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    rec["started"] = hour_ago.isoformat(timespec="seconds")
    rec["finished"] = (hour_ago + dt.timedelta(seconds=10)).isoformat(timespec="seconds")
    path.write_text(json.dumps(rec))
    for s in specs[1:]:
        store.run_path(s.name).unlink()
    FAKE_CALLS.clear()
    s = _compute(fake)
    assert len(FAKE_CALLS) == 2
    assert s["runs_reused"] == 1
    assert 3590 <= s["runs_span_s"] <= 3700


def test_load_results_and_plot_read_the_stored_runs_only(fake):
    summary = _compute(fake)
    FAKE_CALLS.clear()
    loaded, results = framework.load_results("fake", fake)
    assert loaded == json.loads((fake / "fake" / "summary.json").read_text())
    assert [r.name for r in results] == summary["runs"] and results.profile == "default"
    assert results.root == fake and results.experiment == "fake"
    assert all(r.data["curve"].shape == (4,) for r in results)
    paths = framework.plot("fake", root=fake)
    assert paths == [fake / "figures" / "fake_curve.png"] and paths[0].is_file()
    assert FAKE_CALLS == []
    # Figures come from the stored arrays.
    assert paths[0].read_bytes() == b"\x89PNG " + b"".join(r.data["curve"].tobytes() for r in results)


def test_plot_before_compute_names_the_missing_summary(fake):
    with pytest.raises(ValueError, match="summary.json"):
        framework.plot("fake", root=fake)


def test_compute_rejects_bad_experiments(fake, monkeypatch):
    with pytest.raises(ValueError, match="unknown experiment"):
        framework.compute("nope", root=fake)
    monkeypatch.setitem(sys.modules, FAKE_MODULE, _fake_module(claims=lambda results: ["not a claim"]))
    with pytest.raises(TypeError, match="Claim"):
        _compute(fake)
    mod = _fake_module()
    del mod.figures
    monkeypatch.setitem(sys.modules, FAKE_MODULE, mod)
    with pytest.raises(TypeError, match="figures"):
        _compute(fake)
    assert framework.experiment_info("fake") == framework.experiment_info(FAKE_MODULE) == FAKE_INFO


# --------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------

def _computed_and_plotted(root):
    _compute(root)
    framework.plot("fake", root=root)


def _assert_fake_section(text):
    assert f"## {FAKE_INFO.title}" in text
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| at ")
            or line.startswith("| runs often fail")}
    assert "| holds |" in rows["at least one run"]
    assert "| **fails** |" in rows["at most one run"]
    assert "*undecided*" in rows["runs often fail"] and "would decide it" in rows["runs often fail"]
    assert "![fake_curve](figures/fake_curve.png)" in text
    assert "Claims: 1 hold, 1 fail, 1 undecided." in text
    assert "3 runs of the fake" in text and "**Scores**" in text


def test_report_renders_the_fake_experiment_when_it_is_listed(fake):
    _computed_and_plotted(fake)
    _assert_fake_section(R.render_report(fake, fake, experiments=(FAKE_INFO,)))
    with_real = R.render_report(fake, fake, experiments=registry.EXPERIMENTS)  # includes the fake here
    _assert_fake_section(with_real)


def test_report_omits_the_fake_experiment_when_it_is_not_registered(fake, monkeypatch):
    _computed_and_plotted(fake)
    monkeypatch.setattr(registry, "EXPERIMENTS", tuple(e for e in registry.EXPERIMENTS if e.id != "fake"))
    monkeypatch.setattr(R, "EXPERIMENTS", registry.EXPERIMENTS)
    text = R.render_report(fake, fake)
    assert FAKE_INFO.title not in text and "runs often fail" not in text and "at most one run" not in text


def test_report_follows_the_registry(fake, monkeypatch):
    _computed_and_plotted(fake)
    monkeypatch.setattr(R, "EXPERIMENTS", registry.EXPERIMENTS)
    _assert_fake_section(R.render_report(fake, fake))


# --------------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------------

def test_experiment_cli_reports_an_interrupt_and_exits_130(fake, monkeypatch, capsys, tmp_path):
    def compute(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(framework, "compute", compute)
    assert cli.main(["compute", "e1", "--results", str(tmp_path)]) == 130
    assert "[e1] interrupted: finished runs are kept" in capsys.readouterr().err
    assert cli.main(["all", "fake", "--results", str(tmp_path)]) == 130
    assert "[fake] interrupted: finished runs are kept" in capsys.readouterr().err


def test_experiment_cli_all_computes_and_plots(fake, monkeypatch, capsys):
    monkeypatch.setenv("EXECUTOR", "serial")
    other = fake / "elsewhere"
    assert cli.main(["all", "fake", "--profile", "quick", "--results", str(other)]) == 0
    s = json.loads((other / "fake" / "summary.json").read_text())
    assert s["profile"] == "quick" and len(s["runs"]) == 2
    assert (other / "figures" / "fake_curve.png").is_file()
    assert not (fake / "fake").exists()
    FAKE_CALLS.clear()
    assert cli.main(["compute", "fake", "--profile", "quick", "--results", str(other)]) == 0
    assert FAKE_CALLS == []


def test_experiment_cli_errors(fake, capsys):
    assert cli.main(["plot", "fake", "--results", str(fake)]) == 1
    err = capsys.readouterr().err
    assert "[fake] error:" in err and "summary.json" in err
    with pytest.raises(SystemExit) as exc:
        cli.main(["compute", "nope"])
    assert exc.value.code == 2
    assert "unknown experiment" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["compute", "fake", "--profile", "huge"])


def test_experiment_cli_lists_the_registry(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == [e.id for e in registry.EXPERIMENTS]
    assert all(Path(__file__).parent.parent.joinpath(*e.module.split(".")).with_suffix(".py").is_file()
               for e in registry.EXPERIMENTS)
