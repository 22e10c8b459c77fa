"""Tests of the result store and of sweeps: hashing, seeds, executors, reuse, corruption, resumption.

(Ported from the tests of the former ``analysis.experiments.common``; atomic writes are tested in
``tests/test_io.py``.)
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from analysis.store import ResultStore, canonical_json, config_hash
from analysis.sweep import (RunSpec, SerialExecutor, make_executor, run_sweep, seed_children, seed_record,
                            spawn_seed_records, spec)
from miniattn import io as mio

CODE = "code-fingerprint-A"

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
    assert config_hash(dict(items)) == config_hash(cfg)


@given(configs, st.data())
def test_config_hash_changes_with_any_value(cfg, data):
    key = data.draw(st.sampled_from(sorted(cfg)))
    new = data.draw(json_scalars.filter(lambda v: canonical_json(v) != canonical_json(cfg[key])))
    changed = dict(cfg, **{key: new})
    assert config_hash(changed) != config_hash(cfg)


def test_config_hash_profile_matters():
    assert config_hash({"profile": "default", "n": 1}) != config_hash({"profile": "full", "n": 1})


def test_to_jsonable_converts_numpy_and_nonfinite():
    out = mio.to_jsonable({"a": np.float64(1.5), "b": np.int64(3), "c": np.array([1.0, np.nan]),
                           "d": (np.bool_(True), float("inf"))})
    assert out == {"a": 1.5, "b": 3, "c": [1.0, None], "d": [True, None]}
    json.dumps(out, allow_nan=False)
    assert canonical_json({"b": np.int64(3), "a": (np.float64(1.5), float("nan"))}) == '{"a":[1.5,null],"b":3}'
    with pytest.raises(TypeError, match="cannot store"):
        canonical_json({"x": object()})
    with pytest.raises(TypeError, match="cannot store"):
        config_hash({"x": object()})


def test_config_hash_rejects_non_mapping():
    with pytest.raises(TypeError, match="config"):
        config_hash([1, 2])


# --------------------------------------------------------------------------------------------------
# seeds
# --------------------------------------------------------------------------------------------------

def _rng(record) -> np.random.Generator:
    """The generator of a seed record (what the run functions build from ``config["seed"]``)."""
    return np.random.default_rng(np.random.SeedSequence(int(record["entropy"]),
                                                        spawn_key=tuple(int(k) for k in record["spawn_key"])))


@given(st.integers(0, 2**63), st.integers(1, 8))
def test_seed_records_are_spawned_children(root, n):
    recs = spawn_seed_records(root, n)
    children = np.random.SeedSequence(root).spawn(n)
    for rec, child in zip(recs, children):
        np.testing.assert_array_equal(np.random.SeedSequence(rec["entropy"], spawn_key=tuple(rec["spawn_key"])).generate_state(4),
                                      child.generate_state(4))
    # Adding seeds keeps the first ones (so FULL=1 extends, not replaces, the default sweep).
    assert spawn_seed_records(root, n + 3)[:n] == recs
    assert spawn_seed_records(root, 3, offset=n) == spawn_seed_records(root, n + 3)[n:]
    assert len({canonical_json(r) for r in recs}) == n


def test_seed_record_is_reproducible_through_json():
    rec = spawn_seed_records(7, 2)[1]
    a = _rng(rec).standard_normal(5)
    b = _rng(json.loads(json.dumps(rec))).standard_normal(5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, _rng(spawn_seed_records(7, 1)[0]).standard_normal(5))
    seq = np.random.SeedSequence(7, spawn_key=(1,))
    assert seed_record(seq) == rec
    with pytest.raises(TypeError, match="SeedSequence"):
        seed_record(7)


# A non-integer is a TypeError now (miniattn._validate.integer), as everywhere in the package.
@pytest.mark.parametrize("root,n,exc", [(-1, 2, ValueError), (1.5, 2, TypeError), (1, -1, ValueError)])
def test_spawn_seed_records_rejects_bad_input(root, n, exc):
    with pytest.raises(exc):
        spawn_seed_records(root, n)


def test_seed_children_are_stable_and_distinct():
    rec = spawn_seed_records(11, 3)[2]
    a, b = seed_children(rec, 2), seed_children(rec, 2)
    assert [x.spawn_key for x in a] == [(2, 0), (2, 1)]
    np.testing.assert_array_equal(a[0].generate_state(4), b[0].generate_state(4))
    assert not np.array_equal(a[0].generate_state(4), a[1].generate_state(4))
    with pytest.raises(ValueError, match="record"):
        seed_children({}, 2)
    with pytest.raises(ValueError, match="record"):
        seed_children({"entropy": 1}, 2)


def test_spec_names_runs_by_config_hash():
    r1, r2 = spec("x", {"a": 1}), spec("x", {"a": 2})
    assert isinstance(r1, RunSpec)
    assert r1.name.startswith("x-") and r1.name != r2.name
    assert r1.name == spec("x", {"a": 1}).name == f"x-{config_hash({'a': 1})[:10]}"
    assert r1.config == {"a": 1}


# --------------------------------------------------------------------------------------------------
# sweeps
# --------------------------------------------------------------------------------------------------

CALLS: list[str] = []


def _toy_run(config: dict) -> dict:
    """A run function: a few random numbers from the run's own seed (module-level: it pickles)."""
    CALLS.append(config["tag"])
    if config.get("fail"):
        raise RuntimeError(f"run {config['tag']} failed")
    draws = _rng(config["seed"]).standard_normal(config["n"])
    return {"mean": float(draws.mean()), "draws": draws, "tag": config["tag"]}


def _not_a_dict(config: dict):
    return [1, 2]


def _runs(n=4, n_draws=3, fail=None):
    seeds = spawn_seed_records(123, n)
    return [RunSpec(f"r{i}", {"tag": f"r{i}", "n": n_draws, "seed": s, "fail": fail == i})
            for i, s in enumerate(seeds)]


def _sweep(root, runs=None, code=CODE, name="ex", executor=None, stream=None):
    return run_sweep(name, _runs() if runs is None else runs, _toy_run, code=code, root=root,
                     executor=executor or SerialExecutor(), progress_stream=stream or io.StringIO())


def test_sweep_serial_writes_each_run_and_reuses(tmp_path):
    CALLS.clear()
    out = io.StringIO()
    recs = _sweep(tmp_path, stream=out)
    assert CALLS == ["r0", "r1", "r2", "r3"]
    assert [r["name"] for r in recs] == [r.name for r in recs] == ["r0", "r1", "r2", "r3"]
    for r in recs:
        assert r["data"]["draws"].shape == (3,)
        assert math.isclose(r["data"]["mean"], float(r["data"]["draws"].mean()))
        assert r["config_hash"] == config_hash(r["config"])
        assert r["code"] == CODE
        assert r["versions"]["numpy"] == np.__version__
        assert "revision" in r["git"] and "dirty" in r["git"]
        assert r["runtime_s"] >= 0 and r["started"] and r["finished"]
        assert (tmp_path / "ex" / "runs" / f"{r['name']}.npz").is_file()
        assert r["arrays"] == ["draws"] and r["seed"] == r["config"]["seed"]
    text = out.getvalue()
    assert "[ex] run 4/4 done" in text and "ETA" in text
    # Different seeds -> different draws.
    assert len({r["data"]["mean"] for r in recs}) == 4

    # Nothing changed: nothing recomputed, identical results.
    CALLS.clear()
    again = _sweep(tmp_path)
    assert CALLS == []
    for a, b in zip(recs, again):
        np.testing.assert_array_equal(a["data"]["draws"], b["data"]["draws"])
        assert a["finished"] == b["finished"]

    # One config changed, one result deleted: exactly those two recompute.
    runs = _runs()
    runs[1].config["n"] = 5
    (tmp_path / "ex" / "runs" / "r3.json").unlink()
    _sweep(tmp_path, runs)
    assert sorted(CALLS) == ["r1", "r3"]


def test_another_code_fingerprint_recomputes_every_run(tmp_path):
    CALLS.clear()
    first = _sweep(tmp_path)
    CALLS.clear()
    again = _sweep(tmp_path, code="code-fingerprint-B")
    assert sorted(CALLS) == ["r0", "r1", "r2", "r3"]
    assert all(r["code"] == "code-fingerprint-B" for r in again)
    for a, b in zip(first, again):  # same seeds, same results
        np.testing.assert_array_equal(a["data"]["draws"], b["data"]["draws"])
    # Back to the first code: recomputed again (one file per run, keyed by config and code).
    CALLS.clear()
    _sweep(tmp_path)
    assert len(CALLS) == 4


def test_truncated_run_json_is_recomputed_not_fatal(tmp_path):
    first = _sweep(tmp_path)
    path = tmp_path / "ex" / "runs" / "r2.json"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    store = ResultStore("ex", tmp_path)
    assert not store.is_current("r2", _runs()[2].config, CODE)
    with pytest.raises(ValueError, match="r2.json"):
        store.load_run("r2")
    CALLS.clear()
    again = _sweep(tmp_path)
    assert CALLS == ["r2"]
    np.testing.assert_array_equal(again[2]["data"]["draws"], first[2]["data"]["draws"])
    assert json.loads(path.read_text())["name"] == "r2"


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_npz_is_recomputed(tmp_path, damage):
    first = _sweep(tmp_path)
    npz = tmp_path / "ex" / "runs" / "r1.npz"
    data = bytearray(npz.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # the checksum catches bytes changed anywhere, even where NumPy would not notice
        mid = len(data) // 2
        data[mid:mid + 8] = bytes(b ^ 0xFF for b in data[mid:mid + 8])
    npz.write_bytes(bytes(data))
    assert not ResultStore("ex", tmp_path).is_current("r1", _runs()[1].config, CODE)
    CALLS.clear()
    again = _sweep(tmp_path)
    assert CALLS == ["r1"]
    np.testing.assert_array_equal(again[1]["data"]["draws"], first[1]["data"]["draws"])


def test_missing_npz_is_recomputed(tmp_path):
    _sweep(tmp_path)
    (tmp_path / "ex" / "runs" / "r0.npz").unlink()
    CALLS.clear()
    _sweep(tmp_path)
    assert CALLS == ["r0"]


def test_load_run_of_a_corrupt_or_missing_json_names_the_file(tmp_path):
    store = ResultStore("ex", tmp_path)
    with pytest.raises(ValueError, match=r"runs/nothing\.json"):
        store.load_run("nothing")
    store.run_path("bad").parent.mkdir(parents=True)
    store.run_path("bad").write_text("{not json")
    with pytest.raises(ValueError, match=r"runs/bad\.json"):
        store.load_run("bad")
    store.run_path("list").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"runs/list\.json"):
        store.load_run("list")


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_load_run_of_a_corrupt_npz_raises_value_error_naming_it(tmp_path, damage):
    _sweep(tmp_path)
    npz = tmp_path / "ex" / "runs" / "r1.npz"
    data = bytearray(npz.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # inside the array's bytes: the zip CRC check fails on reading
        i = data.index(b"\x93NUMPY") + 128 + 4
        data[i:i + 8] = bytes(b ^ 0xFF for b in data[i:i + 8])
    npz.write_bytes(bytes(data))
    try:
        ResultStore("ex", tmp_path).load_run("r1")
    except ValueError as exc:
        assert "r1.npz" in str(exc)
    else:
        pytest.fail("load_run returned data from a corrupt file")


def test_interrupted_sweep_resumes_with_unfinished_runs_only(tmp_path):
    CALLS.clear()
    with pytest.raises(RuntimeError, match="r2 failed"):
        _sweep(tmp_path, _runs(fail=2))
    done = sorted(p.name for p in (tmp_path / "ex" / "runs").glob("*.json"))
    assert "r2.json" not in done and "r0.json" in done and "r1.json" in done
    assert not list((tmp_path / "ex" / "runs").glob(".*.tmp"))
    CALLS.clear()
    recs = _sweep(tmp_path)
    assert "r0" not in CALLS and "r1" not in CALLS and "r2" in CALLS
    assert sorted(CALLS) == sorted(set(CALLS))
    assert [r.name for r in recs] == ["r0", "r1", "r2", "r3"]


def test_stale_temporary_files_are_removed(tmp_path):
    _sweep(tmp_path, _runs(2))
    runs_dir, exp_dir = tmp_path / "ex" / "runs", tmp_path / "ex"
    stale = [runs_dir / ".r0.json.abc123.tmp", runs_dir / ".r1.npz.x.tmp", exp_dir / ".summary.json.q.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    keep = runs_dir / "notes.tmp"  # not a temporary of an atomic write
    keep.write_text("mine")
    CALLS.clear()
    _sweep(tmp_path, _runs(2))
    assert CALLS == []
    assert not any(p.exists() for p in stale)
    assert keep.exists()


def test_sweep_rejects_duplicate_and_bad_names(tmp_path):
    r = _runs(2)
    with pytest.raises(ValueError, match="unique"):
        _sweep(tmp_path, [r[0], r[0]])
    with pytest.raises(ValueError, match="run name"):
        _sweep(tmp_path, [RunSpec("a/b", {})])
    with pytest.raises(ValueError, match="run name"):
        _sweep(tmp_path, [RunSpec(".hidden", {})])


def test_sweep_rejects_runs_that_are_not_runspecs(tmp_path):
    with pytest.raises(TypeError, match="RunSpec"):
        _sweep(tmp_path, [("r0", {})])


def test_run_function_must_return_a_dict(tmp_path):
    with pytest.raises(TypeError, match="must return a dict"):
        run_sweep("ex", _runs(1), _not_a_dict, code=CODE, root=tmp_path, executor=SerialExecutor(),
                  progress_stream=io.StringIO())
    assert not list((tmp_path / "ex" / "runs").glob("*.json"))


def test_sweep_process_pool_matches_serial(tmp_path):
    serial = _sweep(tmp_path, _runs(3), name="s")
    ex = make_executor("process", jobs=2)
    try:
        par = _sweep(tmp_path, _runs(3), name="p", executor=ex)
    finally:
        ex.shutdown()
    assert [r.name for r in par] == [r.name for r in serial]
    for a, b in zip(serial, par):
        np.testing.assert_array_equal(a["data"]["draws"], b["data"]["draws"])
        assert a["data"]["mean"] == b["data"]["mean"] and a["config_hash"] == b["config_hash"]


def test_sweep_on_local_dask_cluster(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    # In-process workers, but over real TCP on loopback (the inproc transport takes no host), so
    # the executor talks to the scheduler exactly as it would to a remote cluster.
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        ex = make_executor("dask", scheduler=cluster.scheduler_address)
        try:
            recs = _sweep(tmp_path, _runs(2), name="d", executor=ex)
        finally:
            ex.shutdown()
    serial = _sweep(tmp_path, _runs(2), name="s")
    for a, b in zip(serial, recs):
        np.testing.assert_array_equal(a["data"]["draws"], b["data"]["draws"])


def test_make_executor_choices(monkeypatch):
    monkeypatch.setenv("EXECUTOR", "serial")
    assert isinstance(make_executor(), SerialExecutor)
    monkeypatch.setenv("EXECUTOR", "bogus")
    with pytest.raises(ValueError, match="EXECUTOR"):
        make_executor()
    monkeypatch.delenv("EXECUTOR")
    monkeypatch.setenv("JOBS", "x")
    with pytest.raises(ValueError, match="JOBS"):
        make_executor()
    monkeypatch.setenv("JOBS", "0")
    with pytest.raises(ValueError, match="JOBS"):
        make_executor()
    with pytest.raises(ValueError, match="jobs"):
        make_executor("process", jobs=0)
    monkeypatch.delenv("SCHEDULER", raising=False)
    with pytest.raises(ValueError, match="SCHEDULER"):
        make_executor("dask")


def test_serial_executor_delivers_exceptions_via_future():
    ex = SerialExecutor()
    fut = ex.submit(_toy_run, {"tag": "x", "fail": True})
    with pytest.raises(RuntimeError, match="x failed"):
        fut.result()
    ex.shutdown()
    with pytest.raises(RuntimeError, match="shutdown"):
        ex.submit(_toy_run, {})


def test_result_store_validates_names(tmp_path):
    with pytest.raises(ValueError, match="experiment"):
        ResultStore("a/b", tmp_path)
    with pytest.raises(ValueError, match="experiment"):
        ResultStore("", tmp_path)
    store = ResultStore("e", tmp_path)
    assert store.dir == tmp_path / "e" and store.summary_path == tmp_path / "e" / "summary.json"
    assert not store.is_current("r", {"a": 1}, CODE)
    store.run_path("r").parent.mkdir(parents=True)
    store.run_path("r").write_text("{not json")
    assert not store.is_current("r", {"a": 1}, CODE)
    os.makedirs(store.dir, exist_ok=True)


def test_result_store_save_and_is_current(tmp_path):
    store = ResultStore("e", tmp_path)
    cfg = {"a": 1, "seed": {"entropy": 1, "spawn_key": [0]}}
    store.save_run("r", cfg, CODE, {"x": 2.5, "nan": float("nan"), "v": np.arange(3.0)}, metadata={"m": 1})
    assert store.is_current("r", cfg, CODE)
    assert store.is_current("r", dict(reversed(list(cfg.items()))), CODE)
    assert not store.is_current("r", dict(cfg, a=2), CODE)
    assert not store.is_current("r", cfg, "other code")
    rec = store.load_run("r")
    assert rec.config == cfg and rec["m"] == 1 and rec.data["x"] == 2.5 and rec.data["nan"] is None
    np.testing.assert_array_equal(rec.data["v"], np.arange(3.0))
    # A run without arrays has no .npz and is current on its JSON alone.
    store.save_run("s", {"a": 1}, CODE, {"x": 1}, metadata={})
    assert store.is_current("s", {"a": 1}, CODE) and not store.run_path("s").with_suffix(".npz").exists()


def test_results_root_from_environment(tmp_path, monkeypatch):
    from analysis.store import results_root
    monkeypatch.setenv("MINIATTN_RESULTS", str(tmp_path))
    assert results_root() == tmp_path and ResultStore("e").dir == tmp_path / "e"
    assert results_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("MINIATTN_RESULTS")
    assert str(results_root()) == "results"
