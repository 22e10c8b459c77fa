"""Regression tests for the optimiser and result-store hardening (beyond tests/test_adversarial.py).

A refused optimiser step must change nothing; a run record or arrays file the store did not write
must never be loaded; leftovers of interrupted writers are removed whatever their kind.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from analysis.store import ResultStore
from miniattn.optim import SGD, Adam


def _params():
    return {"a": np.arange(3.0), "b": np.ones((2, 2))}


def _snapshot(opt):
    return {k: v.copy() for k, v in opt.state_dict().items()}, {k: v.copy() for k, v in opt.params.items()}


def _assert_unchanged(opt, before):
    state, params = before
    after_state, after_params = _snapshot(opt)
    assert state.keys() == after_state.keys()
    assert all(np.array_equal(state[k], after_state[k]) for k in state), "a refused step changed the state"
    assert all(np.array_equal(params[k], after_params[k]) for k in params), "a refused step changed params"


@pytest.mark.parametrize("make", [lambda p: Adam(p), lambda p: SGD(p, momentum=0.9), lambda p: SGD(p)],
                         ids=["adam", "sgd-momentum", "sgd"])
@pytest.mark.parametrize("bad_b, error", [(np.ones((2, 2), complex), TypeError), (np.ones((2, 2), int), TypeError),
                                          (np.ones((2, 2), bool), TypeError), (np.full((2, 2), "x"), TypeError),
                                          (np.ones(4), ValueError), (np.full((2, 2), np.inf), ValueError)],
                         ids=["complex", "int", "bool", "str", "shape", "inf"])
def test_a_refused_step_changes_nothing_even_when_only_the_last_grad_is_bad(make, bad_b, error):
    opt = make(_params())
    opt.step({"a": np.ones(3), "b": np.ones((2, 2))})       # non-zero moments, t = 1
    before = _snapshot(opt)
    with pytest.raises(error, match=r"grads\['b'\]"):
        opt.step({"a": np.full(3, 0.5), "b": bad_b})          # "a" is valid and comes first
    _assert_unchanged(opt, before)
    assert opt.t == 1


@pytest.mark.parametrize("grads", [None, [np.ones(3)], "abc", 1.0], ids=["None", "list", "str", "float"])
def test_grads_that_are_not_a_mapping_are_a_type_error_naming_grads(grads):
    for opt in (Adam({"a": np.zeros(3)}), SGD({"a": np.zeros(3)})):
        with pytest.raises(TypeError, match="grads must be a mapping") as info:
            opt.step(grads)
        assert "\n" not in str(info.value)
        assert opt.t == 0


def test_a_ragged_grad_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match=r"grads\['a'\]"):
        Adam({"a": np.zeros(2)}).step({"a": [[1.0], [1.0, 2.0]]})


def test_a_non_string_extra_key_in_grads_is_the_keys_error():
    with pytest.raises(ValueError, match="unexpected") as info:
        Adam({"a": np.zeros(2)}).step({"a": np.zeros(2), 1: np.zeros(2), "z": np.zeros(2)})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("opt", [Adam, SGD])
def test_non_finite_float32_params_are_refused(opt, value):
    with pytest.raises(ValueError, match=r"params\['w'\] contains NaN or inf"):
        opt({"ok": np.zeros(2), "w": np.array([1.0, value], np.float32)})


def test_valid_float32_and_scalar_grads_still_step():
    p = {"w": np.zeros(3, np.float32), "s": np.array(1.0)}
    opt = Adam(p, lr=0.1)
    opt.step({"w": np.ones(3, np.float64), "s": np.float64(1.0)})  # other float widths, a NumPy scalar
    assert p["w"].dtype == np.float32 and np.all(p["w"] < 0) and p["s"] < 1.0


# --------------------------------------------------------------------------------------------------
# result store
# --------------------------------------------------------------------------------------------------

_CONFIG, _CODE = {"seed": 1}, "code-1"


def _store(root, arrays=True):
    store = ResultStore("e9", root)
    result = {"x": 1.0, **({"curve": np.arange(4.0)} if arrays else {})}
    store.save_run("r", _CONFIG, _CODE, result, metadata={"m": 1})
    return store


def _edit(store, edit):
    path = store.run_path("r")
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


def test_a_valid_run_round_trips(tmp_path):
    store = _store(tmp_path)
    assert store.is_current("r", _CONFIG, _CODE)
    run = store.load_run("r")
    assert run.data["x"] == 1.0
    np.testing.assert_array_equal(run.data["curve"], np.arange(4.0))


def test_a_replaced_npz_is_refused_naming_it(tmp_path):
    store = _store(tmp_path)
    npz = store.run_path("r").with_suffix(".npz")
    np.savez(npz, curve=np.arange(4.0) + 1)                   # a valid archive, but not the one recorded
    assert not store.is_current("r", _CONFIG, _CODE)
    with pytest.raises(ValueError, match=r"runs/r\.npz.*SHA-256") as info:
        store.load_run("r")
    assert "\n" not in str(info.value)


def test_a_record_without_its_checksum_is_refused(tmp_path):
    store = _store(tmp_path)
    _edit(store, lambda r: r.pop("arrays_sha256"))
    assert not store.is_current("r", _CONFIG, _CODE)
    with pytest.raises(ValueError, match=r"runs/r\.npz"):
        store.load_run("r")


@pytest.mark.parametrize("data", [None, [1], "x", 3], ids=["null", "list", "str", "int"])
@pytest.mark.parametrize("arrays", [True, False], ids=["with-arrays", "scalars-only"])
def test_a_record_whose_data_is_not_an_object_is_not_current(tmp_path, data, arrays):
    store = _store(tmp_path, arrays=arrays)
    _edit(store, lambda r: r.__setitem__("data", data))
    assert not store.is_current("r", _CONFIG, _CODE)
    with pytest.raises(ValueError, match=r"runs/r\.json") as info:
        store.load_run("r")
    assert "\n" not in str(info.value)


def test_clean_temps_removes_temporary_files_and_empty_directories_in_both_places(tmp_path):
    store = _store(tmp_path)
    (store.runs_dir / ".r.npz.x.tmp").mkdir()
    (store.runs_dir / ".r.json.y.tmp").write_text("x")
    (store.dir / ".summary.json.z.tmp").mkdir()
    store.clean_temps()
    assert sorted(p.name for p in store.runs_dir.iterdir()) == ["r.json", "r.npz"]
    assert sorted(p.name for p in store.dir.iterdir()) == ["runs"]
    assert store.is_current("r", _CONFIG, _CODE)


def test_clean_temps_leaves_a_non_empty_temporary_directory_and_goes_on(tmp_path):
    """Atomic writes never make directories: one with contents is not ours to delete, and harmless."""
    store = _store(tmp_path)
    nested = store.runs_dir / ".r.npz.x.tmp"
    (nested / "inner").mkdir(parents=True)
    (nested / "inner" / "f").write_text("x")
    (store.runs_dir / ".r.json.y.tmp").write_text("x")
    store.clean_temps()
    assert sorted(p.name for p in store.runs_dir.iterdir()) == [".r.npz.x.tmp", "r.json", "r.npz"]
    assert (nested / "inner" / "f").read_text() == "x" and store.is_current("r", _CONFIG, _CODE)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_clean_temps_unlinks_a_symlinked_temp_directory_without_following_it(tmp_path):
    store = _store(tmp_path / "results")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep").write_text("x")
    (store.runs_dir / ".r.json.l.tmp").symlink_to(target, target_is_directory=True)
    store.clean_temps()
    assert sorted(p.name for p in store.runs_dir.iterdir()) == ["r.json", "r.npz"]
    assert (target / "keep").read_text() == "x"
