"""Regression tests for reading damaged checkpoints: crafted ``.npy`` headers, mistyped JSON entries,
non-finite or mistyped history values, and directories named like temporaries."""

from __future__ import annotations

import io as _bytesio
import zipfile

import numpy as np
import pytest

from miniattn import io
from miniattn.checkpoint import (Checkpoint, CheckpointError, _read_archive, load_checkpoint,
                                 remove_stale_temporaries, save_checkpoint)
from miniattn.history import History


def _npy_header(descr: str, shape: tuple) -> bytes:
    header = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (descr, shape)
    header += " " * (117 - len(header)) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin-1")


def _archive(path, **members: bytes):
    with zipfile.ZipFile(path, "w") as z:
        for name, payload in members.items():
            z.writestr(name, payload)
    return path


@pytest.mark.parametrize("payload, expected", [
    pytest.param(_npy_header("<f8", (10 ** 12,)) + b"\0" * 64, "8000000000000 bytes", id="huge-shape"),
    pytest.param(_npy_header("<f8", (2 ** 40, 2 ** 40)), "bytes", id="huge-2d-shape"),
    pytest.param(_npy_header("<i8", ()), "holds only 0 bytes", id="no-data"),
    pytest.param(_npy_header("<f8", (-1,)), "negative shape", id="negative-shape"),
    pytest.param(b"\x93NUMPY\x01\x00\x10\x00{'descr': garbage", "broken .npy header", id="broken-header"),
    pytest.param(b"\x93NUMPY\x01\x00\xff\x00{'descr'", "broken .npy header", id="truncated-header"),
    pytest.param(b"\x93NUMPY\x09\x00\x10\x00{}", "broken .npy header", id="unknown-version"),
])
def test_load_npz_refuses_crafted_headers_naming_file_and_member(payload, expected, tmp_path):
    path = _archive(tmp_path / "a.npz", **{"params/w.npy": payload})
    with pytest.raises(ValueError, match=expected) as info:
        io.load_npz(path)
    message = str(info.value)
    assert str(path) in message and "'params/w.npy'" in message and "\n" not in message
    with pytest.raises(CheckpointError, match=expected) as info:
        _read_archive(path)
    assert str(info.value).count(str(path)) == 1 and "\n" not in str(info.value)


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_load_npz_still_reads_every_npy_version(version, tmp_path):
    arrays = {"a": np.arange(6.0).reshape(2, 3), "b": np.array("text"), "c": np.zeros((0, 4), np.int32)}
    members = {}
    for name, value in arrays.items():
        buffer = _bytesio.BytesIO()
        np.lib.format.write_array(buffer, value, version=version)
        members[f"{name}.npy"] = buffer.getvalue()
    loaded = io.load_npz(_archive(tmp_path / "a.npz", **members))
    assert set(loaded) == set(arrays)
    for name, value in arrays.items():
        assert loaded[name].dtype == value.dtype and np.array_equal(loaded[name], value)


def _checkpoint(tmp_path, **changes):
    path = tmp_path / "checkpoint.npz"
    history = History(evals=[{"step": 0, "loss": 1.0}], train_loss=[1.0, 2.0], per_step={"x": [0.5, None]})
    save_checkpoint(path, Checkpoint(2, {"w": np.zeros(2)}, {"t": np.array(2)}, {"bit_generator": "PCG64"},
                                     history, {"seed": 1}))
    if changes:
        arrays = io.load_npz(path)
        arrays.update(changes)
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    return path


def test_load_checkpoint_control(tmp_path):
    ck = load_checkpoint(_checkpoint(tmp_path))
    assert ck.history.train_loss == [1.0, 2.0] and ck.history.per_step == {"x": [0.5, None]}
    assert ck.rng_state == {"bit_generator": "PCG64"} and ck.run_key == {"seed": 1}


@pytest.mark.parametrize("entry, value", [
    ("rng_state", "[1, 2]"), ("rng_state", "5"), ("run_key", "[]"), ("run_key", "null"),
    ("history/evals", "{}"), ("history/evals", "[1, 2]"), ("history/evals", '[{"loss": 1}]'),
    ("history/evals", '[{"step": "x"}]'), ("history/evals", '[{"step": true}]'), ("history/evals", '[{"step": 1.5}]'),
    ("history/per_step", "[1]"), ("history/per_step", '{"x": 5}'), ("history/per_step", '{"x": ["a", 1]}'),
    ("rng_state", np.array(["{}", "{}"])), ("run_key", np.array(3)),
    ("history/train_loss", np.array(["a", "b"])), ("history/train_loss", np.zeros((1, 2))),
    ("history/train_loss", np.array([True, False])),
])
def test_load_checkpoint_refuses_mistyped_entries_naming_file_and_entry(entry, value, tmp_path):
    path = _checkpoint(tmp_path, **{entry: np.asarray(value)})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and repr(entry) in message and "\n" not in message


def test_remove_stale_temporaries_copes_with_directories_and_links(tmp_path):
    (tmp_path / ".a.npz.1.tmp").write_bytes(b"junk")
    (tmp_path / ".b.npz.2.tmp").mkdir()
    (tmp_path / ".c.npz.3.tmp").mkdir()
    (tmp_path / ".c.npz.3.tmp" / "kept").write_text("not ours")
    (tmp_path / "target").mkdir()
    (tmp_path / ".d.npz.4.tmp").symlink_to(tmp_path / "target")
    remove_stale_temporaries(tmp_path)
    # The non-empty directory is not something an atomic write leaves: it is kept, with its content.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".c.npz.3.tmp", "target"]
    assert (tmp_path / ".c.npz.3.tmp" / "kept").read_text() == "not ours"
