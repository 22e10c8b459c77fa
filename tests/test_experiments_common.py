"""Tests of the experiment machinery: hashing, atomic files, seeds, sweeps, executors, statistics."""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from analysis.experiments import common as C

# --------------------------------------------------------------------------------------------------
# hashing / JSON
# --------------------------------------------------------------------------------------------------

json_scalars = st.one_of(st.integers(-10**6, 10**6), st.floats(-1e6, 1e6, allow_nan=False),
                         st.text(max_size=5), st.booleans(), st.none())
configs = st.dictionaries(st.text(min_size=1, max_size=6), json_scalars, min_size=1, max_size=6)


@given(configs, st.randoms(use_true_random=False))
def test_config_hash_ignores_key_order(cfg, rnd):
    items = list(cfg.items())
    rnd.shuffle(items)
    assert C.config_hash(dict(items)) == C.config_hash(cfg)


@given(configs, st.data())
def test_config_hash_changes_with_any_value(cfg, data):
    key = data.draw(st.sampled_from(sorted(cfg)))
    new = data.draw(json_scalars.filter(lambda v: C.canonical_json(v) != C.canonical_json(cfg[key])))
    changed = dict(cfg, **{key: new})
    assert C.config_hash(changed) != C.config_hash(cfg)


def test_config_hash_profile_matters():
    assert C.config_hash({"profile": "default", "n": 1}) != C.config_hash({"profile": "full", "n": 1})


def test_to_jsonable_converts_numpy_and_nonfinite():
    out = C.to_jsonable({"a": np.float64(1.5), "b": np.int64(3), "c": np.array([1.0, np.nan]),
                         "d": (np.bool_(True), float("inf"))})
    assert out == {"a": 1.5, "b": 3, "c": [1.0, None], "d": [True, None]}
    json.dumps(out, allow_nan=False)
    with pytest.raises(TypeError, match="cannot store"):
        C.to_jsonable({"x": object()})


def test_config_hash_rejects_non_mapping():
    with pytest.raises(TypeError, match="config"):
        C.config_hash([1, 2])


# --------------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------------

def test_atomic_json_roundtrip_and_no_temp_left(tmp_path):
    p = tmp_path / "sub" / "x.json"
    C.atomic_write_json(p, {"b": 2, "a": [1.0, float("nan")]})
    assert json.loads(p.read_text()) == {"a": [1.0, None], "b": 2}
    assert [q.name for q in p.parent.iterdir()] == ["x.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    p = tmp_path / "x.json"
    C.atomic_write_json(p, {"v": 1})

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        C._io._atomic_write(p, boom)
    assert json.loads(p.read_text()) == {"v": 1}
    assert [q.name for q in tmp_path.iterdir()] == ["x.json"]


def test_atomic_npz_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal((3, 4)), "b": np.arange(5)}
    C.atomic_save_npz(tmp_path / "r.npz", arrays)
    with np.load(tmp_path / "r.npz") as z:
        for k, v in arrays.items():
            np.testing.assert_array_equal(z[k], v)
    with pytest.raises(TypeError, match="object"):
        C.atomic_save_npz(tmp_path / "o.npz", {"o": np.array([{}], dtype=object)})


# --------------------------------------------------------------------------------------------------
# seeds
# --------------------------------------------------------------------------------------------------

@given(st.integers(0, 2**63), st.integers(1, 8))
def test_seed_records_are_spawned_children(root, n):
    recs = C.spawn_seed_records(root, n)
    children = np.random.SeedSequence(root).spawn(n)
    for rec, child in zip(recs, children):
        np.testing.assert_array_equal(np.random.SeedSequence(rec["entropy"], spawn_key=tuple(rec["spawn_key"])).generate_state(4),
                                      child.generate_state(4))
    # Adding seeds keeps the first ones (so FULL=1 extends, not replaces, the default sweep).
    assert C.spawn_seed_records(root, n + 3)[:n] == recs
    assert len({C.canonical_json(r) for r in recs}) == n


def test_rng_from_record_is_reproducible():
    rec = C.spawn_seed_records(7, 2)[1]
    a = C.rng_from_record(rec).standard_normal(5)
    b = C.rng_from_record(json.loads(json.dumps(rec))).standard_normal(5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, C.rng_from_record(C.spawn_seed_records(7, 1)[0]).standard_normal(5))
    with pytest.raises(ValueError, match="record"):
        C.rng_from_record({"entropy": 1})


@pytest.mark.parametrize("root,n", [(-1, 2), (1.5, 2), (1, -1)])
def test_spawn_seed_records_rejects_bad_input(root, n):
    with pytest.raises(ValueError):
        C.spawn_seed_records(root, n)


def test_get_profile(monkeypatch):
    monkeypatch.delenv("FULL", raising=False)
    assert C.get_profile() == "default"
    monkeypatch.setenv("FULL", "1")
    assert C.get_profile() == "full"
    assert C.get_profile("default") == "default"
    with pytest.raises(ValueError, match="profile"):
        C.get_profile("huge")


# --------------------------------------------------------------------------------------------------
# sweeps
# --------------------------------------------------------------------------------------------------

CALLS: list[str] = []


def _toy_run(config: dict) -> dict:
    """A run function: a few random numbers from the run's own seed (module-level: it pickles)."""
    CALLS.append(config["tag"])
    if config.get("fail"):
        raise RuntimeError(f"run {config['tag']} failed")
    rng = C.rng_from_record(config["seed"])
    draws = rng.standard_normal(config["n"])
    return {"mean": float(draws.mean()), "draws": draws, "tag": config["tag"]}


def _runs(n=4, n_draws=3, fail=None):
    seeds = C.spawn_seed_records(123, n)
    return [C.Run(f"r{i}", {"tag": f"r{i}", "n": n_draws, "seed": s, "fail": fail == i})
            for i, s in enumerate(seeds)]


def test_sweep_serial_writes_each_run_and_reuses(tmp_path):
    CALLS.clear()
    out = io.StringIO()
    recs = C.run_sweep("ex", _runs(), _toy_run, root=tmp_path, executor=C.SerialExecutor(),
                       progress_stream=out)
    assert CALLS == ["r0", "r1", "r2", "r3"]
    assert [r["name"] for r in recs] == ["r0", "r1", "r2", "r3"]
    for r in recs:
        assert r["data"]["draws"].shape == (3,)
        assert math.isclose(r["data"]["mean"], float(r["data"]["draws"].mean()))
        assert r["config_hash"] == C.config_hash(r["config"])
        assert r["metadata"]["versions"]["numpy"] == np.__version__
        assert "revision" in r["metadata"]["git"] and "dirty" in r["metadata"]["git"]
        assert r["runtime_s"] >= 0 and r["started"] and r["finished"]
        assert (tmp_path / "ex" / "runs" / f"{r['name']}.npz").is_file()
    text = out.getvalue()
    assert "[ex] run 4/4 done" in text and "ETA" in text
    # Different seeds -> different draws.
    assert len({r["data"]["mean"] for r in recs}) == 4

    # Nothing changed: nothing recomputed, identical results.
    CALLS.clear()
    again = C.run_sweep("ex", _runs(), _toy_run, root=tmp_path, executor=C.SerialExecutor(),
                        progress_stream=io.StringIO())
    assert CALLS == []
    for a, b in zip(recs, again):
        np.testing.assert_array_equal(a["data"]["draws"], b["data"]["draws"])

    # One config changed, one result deleted: exactly those two recompute.
    runs = _runs()
    runs[1].config["n"] = 5
    (tmp_path / "ex" / "runs" / "r3.json").unlink()
    C.run_sweep("ex", runs, _toy_run, root=tmp_path, executor=C.SerialExecutor(),
                progress_stream=io.StringIO())
    assert sorted(CALLS) == ["r1", "r3"]


def test_interrupted_sweep_resumes_with_unfinished_runs_only(tmp_path):
    CALLS.clear()
    with pytest.raises(RuntimeError, match="r2 failed"):
        C.run_sweep("ex", _runs(fail=2), _toy_run, root=tmp_path, executor=C.SerialExecutor(),
                    progress_stream=io.StringIO())
    done = sorted(p.name for p in (tmp_path / "ex" / "runs").glob("*.json"))
    assert "r2.json" not in done and "r0.json" in done and "r1.json" in done
    assert not list((tmp_path / "ex" / "runs").glob(".*.tmp"))
    CALLS.clear()
    C.run_sweep("ex", _runs(), _toy_run, root=tmp_path, executor=C.SerialExecutor(),
                progress_stream=io.StringIO())
    assert "r0" not in CALLS and "r1" not in CALLS and "r2" in CALLS


def test_sweep_rejects_duplicate_and_bad_names(tmp_path):
    r = _runs(2)
    with pytest.raises(ValueError, match="unique"):
        C.run_sweep("ex", [r[0], r[0]], _toy_run, root=tmp_path, executor=C.SerialExecutor())
    with pytest.raises(ValueError, match="run name"):
        C.run_sweep("ex", [C.Run("a/b", {})], _toy_run, root=tmp_path, executor=C.SerialExecutor())


def test_sweep_process_pool_matches_serial(tmp_path):
    serial = C.run_sweep("s", _runs(3), _toy_run, root=tmp_path, executor=C.SerialExecutor(),
                         progress_stream=io.StringIO())
    ex = C.make_executor("process", jobs=2)
    try:
        par = C.run_sweep("p", _runs(3), _toy_run, root=tmp_path, executor=ex,
                          progress_stream=io.StringIO())
    finally:
        ex.shutdown()
    for a, b in zip(serial, par):
        np.testing.assert_array_equal(a["data"]["draws"], b["data"]["draws"])


def test_sweep_on_local_dask_cluster(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    # In-process workers, but over real TCP on loopback (the inproc transport takes no host), so
    # the executor talks to the scheduler exactly as it would to a remote cluster.
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        ex = C.make_executor("dask", scheduler=cluster.scheduler_address)
        try:
            recs = C.run_sweep("d", _runs(2), _toy_run, root=tmp_path, executor=ex,
                               progress_stream=io.StringIO())
        finally:
            ex.shutdown()
    serial = C.run_sweep("s", _runs(2), _toy_run, root=tmp_path, executor=C.SerialExecutor(),
                         progress_stream=io.StringIO())
    for a, b in zip(serial, recs):
        np.testing.assert_array_equal(a["data"]["draws"], b["data"]["draws"])


def test_make_executor_choices(monkeypatch):
    monkeypatch.setenv("EXECUTOR", "serial")
    assert isinstance(C.make_executor(), C.SerialExecutor)
    monkeypatch.setenv("EXECUTOR", "bogus")
    with pytest.raises(ValueError, match="EXECUTOR"):
        C.make_executor()
    monkeypatch.delenv("EXECUTOR")
    monkeypatch.setenv("JOBS", "x")
    with pytest.raises(ValueError, match="JOBS"):
        C.make_executor()
    with pytest.raises(ValueError, match="jobs"):
        C.make_executor("process", jobs=0)
    monkeypatch.delenv("SCHEDULER", raising=False)
    with pytest.raises(ValueError, match="SCHEDULER"):
        C.make_executor("dask")


def test_serial_executor_delivers_exceptions_via_future():
    ex = C.SerialExecutor()
    fut = ex.submit(_toy_run, {"tag": "x", "fail": True})
    with pytest.raises(RuntimeError, match="x failed"):
        fut.result()
    ex.shutdown()
    with pytest.raises(RuntimeError, match="shutdown"):
        ex.submit(_toy_run, {})


def test_write_and_load_summary(tmp_path):
    import time

    recs = C.run_sweep("ex", _runs(2), _toy_run, root=tmp_path, executor=C.SerialExecutor(),
                       progress_stream=io.StringIO())
    cfg = {"profile": "default", "code_version": 1}
    C.write_summary("ex", {"title": "T", "claims": []}, config=cfg, runs=recs, started=time.time(),
                    root=tmp_path)
    s = C.load_summary("ex", tmp_path)
    assert s["config_hash"] == C.config_hash(cfg) and s["profile"] == "default"
    assert s["runs"] == ["runs/r0.json", "runs/r1.json"]
    assert math.isclose(s["compute_time_s"], sum(r["runtime_s"] for r in recs))
    assert s["seeds"] == [r["config"]["seed"] for r in recs]
    assert "command" in s
    assert C.summary_is_current("ex", cfg, tmp_path)
    assert not C.summary_is_current("ex", dict(cfg, profile="full"), tmp_path)
    assert s["runs_reused"] == 0 and s["runs_span_s"] >= 0


def test_summary_counts_runs_reused_from_an_earlier_compute(tmp_path):
    import datetime as dt

    recs = C.run_sweep("ex", _runs(2), _toy_run, root=tmp_path, executor=C.SerialExecutor(),
                       progress_stream=io.StringIO())
    # Pretend the first run was computed an hour before this compute step and took 10 s.
    hour_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    recs[0] = dict(recs[0], started=hour_ago.isoformat(timespec="seconds"),
                   finished=(hour_ago + dt.timedelta(seconds=10)).isoformat(timespec="seconds"))
    C.write_summary("ex", {"title": "T", "claims": []}, config={"profile": "default"}, runs=recs,
                    started=dt.datetime.now(dt.timezone.utc).timestamp(), root=tmp_path)
    s = C.load_summary("ex", tmp_path)
    assert s["runs_reused"] == 1
    assert 3590 <= s["runs_span_s"] <= 3700


# --------------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------------

@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=30))
def test_summarize_t_interval(values):
    s = C.summarize(values)
    x = np.asarray(values)
    assert s["n"] == len(values)
    assert math.isclose(s["mean"], x.mean(), rel_tol=1e-12, abs_tol=1e-9)
    assert math.isclose(s["std"], x.std(ddof=1), rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(s["sem"], s["std"] / math.sqrt(len(values)), rel_tol=1e-12, abs_tol=1e-12)
    assert s["ci_low"] <= s["mean"] <= s["ci_high"]
    from scipy import stats
    half = stats.t.ppf(0.975, len(values) - 1) * s["sem"]
    assert math.isclose(s["ci_high"] - s["mean"], half, rel_tol=1e-9, abs_tol=1e-9)


def test_summarize_single_value_and_bootstrap():
    s = C.summarize([2.0])
    assert s["mean"] == 2.0 and math.isnan(s["std"]) and math.isnan(s["ci_low"])
    vals = np.random.default_rng(1).standard_normal(40)
    b1 = C.summarize(vals, method="bootstrap", rng=np.random.default_rng(5))
    b2 = C.summarize(vals, method="bootstrap", rng=np.random.default_rng(5))
    assert b1 == b2
    assert b1["ci_low"] < b1["mean"] < b1["ci_high"]
    t = C.summarize(vals)
    # Bootstrap and t intervals of a normal sample agree to within a fraction of their width.
    assert abs(b1["ci_low"] - t["ci_low"]) < 0.3 * (t["ci_high"] - t["ci_low"])


@pytest.mark.parametrize("kwargs,exc", [
    (dict(values=[]), ValueError), (dict(values=[1.0, np.nan]), ValueError),
    (dict(values=[1.0, 2.0], confidence=1.5), ValueError), (dict(values=[1.0, 2.0], method="x"), ValueError),
    (dict(values=[1.0, 2.0], method="bootstrap"), TypeError),
])
def test_summarize_rejects_bad_input(kwargs, exc):
    with pytest.raises(exc):
        C.summarize(**kwargs)


@given(st.integers(1, 500), st.data())
def test_wilson_interval_properties(n, data):
    k = data.draw(st.integers(0, n))
    lo, hi = C.wilson_interval(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert (lo == 0.0) == (k == 0)
    assert (hi == 1.0) == (k == n)
    lo99, hi99 = C.wilson_interval(k, n, confidence=0.99)
    assert lo99 <= lo + 1e-12 and hi99 >= hi - 1e-12


def test_wilson_interval_known_value():
    # 20/20: lower bound n / (n + z^2) with z = 1.959964 -> 0.83887.
    lo, hi = C.wilson_interval(20, 20)
    assert math.isclose(lo, 20 / (20 + 1.959963984540054**2), rel_tol=1e-9) and hi == 1.0
    lo, hi = C.wilson_interval(5, 10)
    assert math.isclose(lo + hi, 1.0, rel_tol=1e-12)


@pytest.mark.parametrize("k,n,exc", [(1, 0, ValueError), (3, 2, ValueError), (-1, 2, ValueError),
                                     (1.0, 2, TypeError), (True, 2, TypeError)])
def test_wilson_interval_rejects_bad_input(k, n, exc):
    with pytest.raises(exc):
        C.wilson_interval(k, n)


def test_result_store_validates_names(tmp_path):
    with pytest.raises(ValueError, match="experiment"):
        C.ResultStore("a/b", tmp_path)
    store = C.ResultStore("e", tmp_path)
    assert not store.is_current("r", {"a": 1})
    store.run_path("r").parent.mkdir(parents=True)
    store.run_path("r").write_text("{not json")
    assert not store.is_current("r", {"a": 1})
    os.makedirs(store.dir, exist_ok=True)


def test_seed_children_are_stable_and_distinct():
    rec = C.spawn_seed_records(11, 3)[2]
    a, b = C.seed_children(rec, 2), C.seed_children(rec, 2)
    assert [x.spawn_key for x in a] == [(2, 0), (2, 1)]
    np.testing.assert_array_equal(a[0].generate_state(4), b[0].generate_state(4))
    assert not np.array_equal(a[0].generate_state(4), a[1].generate_state(4))
    with pytest.raises(ValueError, match="record"):
        C.seed_children({}, 2)


def test_keyed_run_and_success_summary():
    r1, r2 = C.keyed_run("x", {"a": 1}), C.keyed_run("x", {"a": 2})
    assert r1.name.startswith("x-") and r1.name != r2.name
    assert r1.name == C.keyed_run("x", {"a": 1}).name
    s = C.success_summary([True, False, True, True])
    assert s["k"] == 3 and s["n"] == 4 and s["rate"] == 0.75
    assert tuple(s["ci"]) == C.wilson_interval(3, 4)
    with pytest.raises(ValueError):
        C.success_summary([])


def test_summarize_bounds_clip_the_interval():
    s = C.summarize([0.0, 1.0], bounds=(0.0, 1.0))
    assert s["ci_low"] == 0.0 and s["ci_high"] == 1.0 and s["mean"] == 0.5


def test_experiment_cli_reports_an_interrupt_and_exits_130(monkeypatch, capsys, tmp_path):
    import sys
    import types

    fake = types.ModuleType("fake_experiment_for_cli")
    fake.EXP = "ex"

    def compute(profile):
        raise KeyboardInterrupt

    fake.compute = compute
    fake.plot = lambda: None
    monkeypatch.setitem(sys.modules, "fake_experiment_for_cli", fake)
    monkeypatch.setenv("MINIATTN_RESULTS", str(tmp_path))
    assert C.experiment_cli("fake_experiment_for_cli", ["compute", "--results", str(tmp_path)]) == 130
    assert "[ex] interrupted: finished runs are kept" in capsys.readouterr().err
