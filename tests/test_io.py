"""Tests for miniattn.io: atomic writes, JSON lines, JSON encoding of NumPy data, run metadata."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from miniattn import io

# Hypothesis reuses a function-scoped fixture across examples, so property tests make a fresh
# directory per example inside a module-scoped one (which pytest cleans up like tmp_path).


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("io")


def _fresh_dir(scratch: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=scratch))


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------------------------------
# JSON encoding
# --------------------------------------------------------------------------------------------------

finite_floats = st.floats(allow_nan=False, allow_infinity=False)
json_keys = st.text(min_size=1, max_size=8)
json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | finite_floats | st.text(max_size=10)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(json_keys, inner, max_size=4), max_leaves=12)


@given(hnp.arrays(dtype=st.sampled_from([np.float64, np.float32, np.int64, np.int32, np.bool_]),
                  shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
                  elements={"allow_nan": False, "allow_infinity": False}))
def test_to_jsonable_array_round_trips_exactly(arr):
    decoded = json.loads(io.dumps_json(arr))
    # Python floats round-trip through their repr exactly, so the decoded values equal the array's.
    np.testing.assert_array_equal(np.asarray(decoded, dtype=arr.dtype).reshape(arr.shape), arr)


@given(finite_floats, st.integers(-2**62, 2**62), st.booleans())
def test_to_jsonable_numpy_scalars_become_python_scalars(x, n, b):
    out = io.to_jsonable({"f": np.float64(x), "f32": np.float32(1.5), "i": np.int64(n), "b": np.bool_(b)})
    assert out == {"f": x, "f32": 1.5, "i": n, "b": b}
    assert type(out["f"]) is float and type(out["i"]) is int and type(out["b"]) is bool


def test_to_jsonable_nonfinite_becomes_none_and_output_is_strict_json():
    out = io.dumps_json({"a": np.nan, "b": [np.inf, -np.inf, 1.0], "c": np.array([np.nan, 2.0])})
    assert json.loads(out) == {"a": None, "b": [None, None, 1.0], "c": [None, 2.0]}
    assert "NaN" not in out and "Infinity" not in out


def test_to_jsonable_other_types():
    ss = np.random.SeedSequence(123).spawn(2)[1]
    out = io.to_jsonable({"t": (1, 2), "p": Path("a") / "b", "s": {3, 1, 2}, 5: "int key", "ss": ss})
    assert out == {"t": [1, 2], "p": os.path.join("a", "b"), "s": [1, 2, 3], "5": "int key",
                   "ss": {"entropy": 123, "spawn_key": [1]}}


@pytest.mark.parametrize("bad", [object(), np.array([object()], dtype=object), lambda: 0, 1 + 2j])
def test_to_jsonable_rejects_unknown_types(bad):
    with pytest.raises(TypeError, match="JSON"):
        io.to_jsonable({"x": bad})


@given(json_values)
def test_dumps_json_round_trips_plain_data(value):
    assert json.loads(io.dumps_json(value)) == value


# --------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------

@given(st.binary(max_size=2000), st.binary(max_size=2000))
def test_atomic_write_bytes_replaces_content_and_leaves_no_temp_file(scratch, first, second):
    d = _fresh_dir(scratch)
    path = d / "sub" / "file.bin"  # the missing parent is created
    io.atomic_write_bytes(path, first)
    assert path.read_bytes() == first
    io.atomic_write_bytes(path, second)
    assert path.read_bytes() == second
    assert _leftovers(path.parent) == []


@given(st.text(max_size=200))
def test_atomic_write_text_round_trip(scratch, text):
    d = _fresh_dir(scratch)
    io.atomic_write_text(d / "t.txt", text)
    assert (d / "t.txt").read_bytes().decode("utf-8") == text


@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_interrupted_atomic_write_keeps_old_content(tmp_path, monkeypatch, exc):
    path = tmp_path / "result.json"
    io.atomic_write_json(path, {"version": 1})

    def failing_fsync(fd):
        raise exc

    # Fail after the new content has been written to the temporary file but before the rename:
    # the destination must still hold the old, complete file and the temporary file must be gone.
    monkeypatch.setattr(io.os, "fsync", failing_fsync)
    with pytest.raises(type(exc)):
        io.atomic_write_json(path, {"version": 2})
    monkeypatch.undo()
    assert io.read_json(path) == {"version": 1}
    assert _leftovers(tmp_path) == []


def test_interrupted_first_write_leaves_nothing(tmp_path, monkeypatch):
    def failing_replace(src, dst):
        raise OSError("simulated crash")

    monkeypatch.setattr(io.os, "replace", failing_replace)
    with pytest.raises(OSError):
        io.atomic_save_npz(tmp_path / "ck.npz", a=np.zeros(3))
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_atomic_writes_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    io.atomic_write_text(tmp_path / "a.txt", "x")
    io.atomic_save_npz(tmp_path / "b.npz", x=np.zeros(2))
    for name in ("a.txt", "b.npz"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask


def test_atomic_write_argument_errors(tmp_path):
    with pytest.raises(TypeError, match="data"):
        io.atomic_write_bytes(tmp_path / "x", "not bytes")
    with pytest.raises(TypeError, match="text"):
        io.atomic_write_text(tmp_path / "x", b"bytes")
    with pytest.raises(ValueError, match="directory"):
        io.atomic_write_bytes(tmp_path, b"x")


def test_atomic_write_json_is_strict_and_readable(tmp_path):
    io.atomic_write_json(tmp_path / "c.json", {"lr": np.float64(1e-3), "dims": np.arange(3), "bad": np.nan})
    text = (tmp_path / "c.json").read_text()
    assert text.endswith("\n")
    assert io.read_json(tmp_path / "c.json") == {"lr": 1e-3, "dims": [0, 1, 2], "bad": None}


@given(hnp.arrays(dtype=st.sampled_from([np.float64, np.float32, np.int64, np.bool_]),
                  shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)),
       hnp.arrays(dtype=np.float64, shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=5)))
def test_atomic_save_npz_round_trip_is_bit_exact(scratch, a, b):
    d = _fresh_dir(scratch)
    path = d / "checkpoint.npz"
    io.atomic_save_npz(path, **{"params/a": a, "params/b": b, "meta": np.array(io.dumps_json({"k": 1}))})
    loaded = io.load_npz(path)
    assert set(loaded) == {"params/a", "params/b", "meta"}
    # Bitwise comparison: NaNs and signed zeros must survive too.
    for name, original in (("params/a", a), ("params/b", b)):
        assert loaded[name].dtype == original.dtype and loaded[name].shape == original.shape
        assert loaded[name].tobytes() == original.tobytes()
    assert json.loads(str(loaded["meta"])) == {"k": 1}
    assert _leftovers(d) == []


def test_atomic_save_npz_uses_path_as_given_and_refuses_objects(tmp_path):
    io.atomic_save_npz(tmp_path / "ck", x=np.ones(2))
    assert (tmp_path / "ck").exists() and not (tmp_path / "ck.npz").exists()
    with pytest.raises(TypeError, match="'x'.*object"):
        io.atomic_save_npz(tmp_path / "o.npz", x=np.array([{}, 1], dtype=object))
    with pytest.raises(ValueError, match="at least one"):
        io.atomic_save_npz(tmp_path / "e.npz")


# --------------------------------------------------------------------------------------------------
# JSON lines
# --------------------------------------------------------------------------------------------------

records_strategy = st.lists(st.dictionaries(json_keys, json_values, max_size=3), max_size=4)


@given(records_strategy)
def test_append_then_read_jsonl_round_trip(scratch, records):
    d = _fresh_dir(scratch)
    path = d / "metrics.jsonl"
    for r in records:
        io.append_jsonl(path, r)
    assert io.read_jsonl(path) == records if records else not path.exists()
    if records:
        lines = path.read_bytes().split(b"\n")
        assert lines[-1] == b"" and len(lines) == len(records) + 1  # exactly one line per record


@given(records_strategy.filter(bool), st.data())
def test_truncated_last_line_is_skipped_and_repaired(scratch, records, data):
    d = _fresh_dir(scratch)
    path = d / "metrics.jsonl"
    for r in records:
        io.append_jsonl(path, r)
    content = path.read_bytes()
    last_start = content.rstrip(b"\n").rfind(b"\n") + 1
    # Cut inside the last record (never at its very end, where it would still be complete).
    cut = data.draw(st.integers(last_start, len(content) - 2))
    partial = content[last_start:cut]
    path.write_bytes(content[:cut])
    try:
        complete = [json.loads(partial.decode())] if partial else []
    except ValueError:  # includes UnicodeDecodeError
        complete = []   # the cut left a partial record, which must be skipped
    # A prefix of a record can only parse if it is the record itself (e.g. "{}" minus nothing): in
    # that case the reader rightly keeps it.
    assert io.read_jsonl(path) == records[:-1] + complete
    io.append_jsonl(path, {"after": "crash"})
    assert io.read_jsonl(path) == records[:-1] + complete + [{"after": "crash"}]


def test_unterminated_but_complete_last_line_is_kept(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"b": 2}')
    assert io.read_jsonl(path) == [{"a": 1}, {"b": 2}]
    io.append_jsonl(path, {"c": 3})
    assert io.read_jsonl(path) == [{"a": 1}, {"b": 2}, {"c": 3}]


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"b": \n{"c": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        io.read_jsonl(path)


def test_append_jsonl_rejects_non_mapping(tmp_path):
    with pytest.raises(TypeError, match="record"):
        io.append_jsonl(tmp_path / "m.jsonl", [1, 2])


# --------------------------------------------------------------------------------------------------
# Run metadata
# --------------------------------------------------------------------------------------------------

def test_run_metadata_contents():
    config = {"model": "seq2seq", "lr": np.float64(1e-3), "shape": (40, 60)}
    meta = io.run_metadata(config, np.random.SeedSequence(7))
    assert meta["config"] == {"model": "seq2seq", "lr": 1e-3, "shape": [40, 60]}
    assert meta["seed"] == {"entropy": 7, "spawn_key": []}
    assert set(meta["versions"]) >= {"python", "numpy", "scipy", "matplotlib"}
    assert meta["versions"]["numpy"] == np.__version__
    assert isinstance(meta["platform"], str) and meta["platform"]
    assert meta["timestamp_utc"].endswith("+00:00")
    json.loads(io.dumps_json(meta))  # all plain JSON
    assert io.run_metadata({}, 3)["seed"] == 3


def test_git_info_inside_and_outside_a_repository(tmp_path):
    outside = io.git_info(tmp_path)
    assert outside is None
    inside = io.git_info()
    package_dir = Path(io.__file__).resolve().parent
    if inside is None:  # the package may be installed outside a git checkout
        pytest.skip(f"{package_dir} is not in a git work tree with git available")
    assert len(inside["revision"]) == 40 and int(inside["revision"], 16) >= 0
    assert isinstance(inside["dirty"], bool)


def test_git_info_dirty_counts_code_not_committed_results(tmp_path):
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("no git executable")

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True,
                       env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})

    (tmp_path / "pkg").mkdir()
    (tmp_path / "results" / "e1").mkdir(parents=True)
    (tmp_path / "pkg" / "code.py").write_text("x = 1\n")
    (tmp_path / "results" / "e1" / "summary.json").write_text("{}\n")
    (tmp_path / "REPORT.md").write_text("# r\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "init")
    assert io.git_info(tmp_path / "pkg")["dirty"] is False
    (tmp_path / "results" / "e1" / "summary.json").write_text('{"new": 1}\n')
    (tmp_path / "REPORT.md").write_text("# regenerated\n")
    assert io.git_info(tmp_path / "pkg")["dirty"] is False
    (tmp_path / "pkg" / "code.py").write_text("x = 2\n")
    assert io.git_info(tmp_path / "pkg")["dirty"] is True


def test_git_info_without_git_executable(monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert io.git_info() is None


@pytest.mark.parametrize("config, seed, exc", [([1], 0, TypeError), ({}, 1.5, TypeError),
                                               ({}, True, TypeError), ({}, "0", TypeError)])
def test_run_metadata_argument_errors(config, seed, exc):
    with pytest.raises(exc):
        io.run_metadata(config, seed)
