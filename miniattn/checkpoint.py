"""The checkpoint file of a training run: format, atomic writing, and validation on resumption.

A checkpoint (``checkpoint.npz``, no pickled objects) holds the parameters, the optimiser state, the
training generator's ``bit_generator.state`` (JSON), the step and the history so far, plus a
*run key* (seed, batch and evaluation settings, parameter shapes and dtypes, optimiser) that
identifies the run it belongs to. :func:`restore` loads one into a model, optimiser and generator
only after checking all of it: the run key, every parameter's name, shape and dtype, finiteness of
parameters and optimiser state, the step against the budget and against the history.
"""

from __future__ import annotations

import json
import tokenize
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from miniattn import io
from miniattn.history import History
from miniattn.optim import Adam

__all__ = ["CHECKPOINT_NAME", "METRICS_NAME", "CONFIG_NAME", "CHECKPOINT_FORMAT", "Checkpoint",
           "save_checkpoint", "load_checkpoint", "restore", "CheckpointError"]

CHECKPOINT_NAME = "checkpoint.npz"
METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.json"
CHECKPOINT_FORMAT = 1
#: No single entry of a checkpoint is allowed to be larger than this when unpacked (a crafted
#: ``.npy`` header or a deflate bomb must not exhaust memory); real checkpoints are far smaller.
MAX_ENTRY_BYTES = 2 ** 31


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, not a miniattn checkpoint, or of another run."""


def _read_archive(path) -> dict[str, np.ndarray]:
    """All arrays of the ``.npz`` at ``path``, after checking the archive's declared sizes.

    Every member must unpack to at most :data:`MAX_ENTRY_BYTES`, and :func:`miniattn.io.load_npz`
    checks that no ``.npy`` header declares more data than its member holds, so nothing larger is
    ever allocated.

    Raises
    ------
    CheckpointError
        Naming the file, for anything unreadable: not a zip archive, truncated, an oversized member,
        a broken or lying ``.npy`` header, a pickled entry.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.file_size > MAX_ENTRY_BYTES:
                    raise CheckpointError(f"{path}: entry {info.filename!r} unpacks to {info.file_size} "
                                          f"bytes, more than a checkpoint can hold ({MAX_ENTRY_BYTES})")
        return io.load_npz(path)
    except CheckpointError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, SyntaxError,
            tokenize.TokenError) as exc:
        # io.load_npz turns numpy's header-parser errors into ValueError; SyntaxError and
        # TokenError are listed as well so that no parser change can bring back a traceback.
        # One line (numpy's messages may span several), naming the file once.
        message = " ".join(str(exc).split()).removeprefix(f"{path}: ")
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {message}); "
                              "delete it or start over") from None


class Checkpoint(NamedTuple):
    """The contents of a checkpoint file (see :func:`save_checkpoint`)."""

    step: int
    params: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]
    rng_state: dict
    history: History
    run_key: dict


def save_checkpoint(path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` atomically to ``path`` as an ``.npz`` archive (no pickled objects).

    Layout: ``params/<name>`` and ``optimizer/<key>`` arrays, ``history/train_loss`` (float64),
    and JSON strings ``rng_state``, ``history/evals``, ``run_key``; plus ``step`` and ``format``.
    """
    arrays: dict[str, np.ndarray] = {
        "format": np.array(CHECKPOINT_FORMAT),
        "step": np.array(int(checkpoint.step), dtype=np.int64),
        "rng_state": np.array(io.dumps_json(checkpoint.rng_state)),
        "run_key": np.array(io.dumps_json(checkpoint.run_key)),
        "history/evals": np.array(io.dumps_json(checkpoint.history.evals)),
        "history/train_loss": np.array(checkpoint.history.train_loss, dtype=np.float64),
        "history/per_step": np.array(io.dumps_json(checkpoint.history.per_step)),
    }
    arrays.update({f"params/{k}": np.asarray(v) for k, v in checkpoint.params.items()})
    arrays.update({f"optimizer/{k}": np.asarray(v) for k, v in checkpoint.optimizer_state.items()})
    io.atomic_save_npz(path, **arrays)


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    ValueError
        If the file is not a miniattn checkpoint of a known format.
    """
    data = _read_archive(path)
    required = {"format", "step", "rng_state", "run_key", "history/evals", "history/train_loss"}
    if not required <= set(data):
        raise ValueError(f"{path} is not a miniattn checkpoint (missing {sorted(required - set(data))})")
    _format_of(data["format"], path)
    # Older checkpoints have no per-step records.
    per_step = _json_entry(data, "history/per_step", path, dict) if "history/per_step" in data else {}
    history = History(evals=_evals_of(_json_entry(data, "history/evals", path, list), path),
                      train_loss=_train_loss_of(data["history/train_loss"], path),
                      per_step=_per_step_of(per_step, path))
    return Checkpoint(
        step=_step_of(data["step"], path),
        params={k[len("params/"):]: v for k, v in data.items() if k.startswith("params/")},
        optimizer_state={k[len("optimizer/"):]: v for k, v in data.items() if k.startswith("optimizer/")},
        rng_state=_json_entry(data, "rng_state", path, dict),
        history=history,
        run_key=_json_entry(data, "run_key", path, dict),
    )


def _format_of(value: np.ndarray, path) -> None:
    """``format``: exactly one integer equal to :data:`CHECKPOINT_FORMAT` (not 1.5, '1' or True)."""
    if value.shape != () or value.dtype.kind not in "iu":
        raise CheckpointError(f"{path}: entry 'format' must be one integer, got {value.dtype}{list(value.shape)}")
    if int(value) != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {int(value)}, expected {CHECKPOINT_FORMAT}")


_JSON_TYPE_NAMES = {dict: "object", list: "array", str: "string", int: "number", float: "number",
                    bool: "boolean", type(None): "null"}


def _json_entry(data: dict[str, np.ndarray], key: str, path, expected: type):
    """The JSON value stored as a string in entry ``key``, which must be of type ``expected``.

    Checked here, where the file is known, so that a list where an object belongs is a
    :class:`CheckpointError` naming the file and the entry, not an ``AttributeError`` later on.
    """
    value = data[key]
    if value.shape != () or value.dtype.kind != "U":
        raise CheckpointError(f"{path}: entry {key!r} must be one JSON string, "
                              f"got {value.dtype}{list(value.shape)}")
    try:
        parsed = json.loads(str(value))
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deeply nested JSON
        raise CheckpointError(f"{path}: entry {key!r} is not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(parsed, expected):
        raise CheckpointError(f"{path}: entry {key!r} must be a JSON {_JSON_TYPE_NAMES[expected]}, "
                              f"got a JSON {_JSON_TYPE_NAMES.get(type(parsed), type(parsed).__name__)}")
    return parsed


def _evals_of(evals: list, path) -> list[dict]:
    """``history/evals``: a list of records (JSON objects), each with an integer ``step`` >= 0, in
    strictly increasing step order (as :func:`miniattn.train.train` appends them)."""
    previous = None
    for i, record in enumerate(evals):
        if not isinstance(record, dict):
            raise CheckpointError(f"{path}: entry 'history/evals' record {i} must be a JSON object, "
                                  f"got {record!r:.80}")
        step = record.get("step")
        # bool is an int to Python, but true is not a step.
        if not isinstance(step, int) or isinstance(step, bool):
            raise CheckpointError(f"{path}: entry 'history/evals' record {i} has step {step!r:.40}, "
                                  "expected an integer")
        if step < 0:
            raise CheckpointError(f"{path}: entry 'history/evals' record {i} has step {step}, "
                                  "expected a step >= 0")
        if previous is not None and step <= previous:
            raise CheckpointError(f"{path}: entry 'history/evals' record {i} has step {step} after step "
                                  f"{previous}, expected strictly increasing steps")
        previous = step
    return evals


def _train_loss_of(value: np.ndarray, path) -> list[float]:
    """``history/train_loss``: a 1-D array of numbers, as a list of float."""
    if value.ndim != 1 or value.dtype.kind not in "fiu":
        raise CheckpointError(f"{path}: entry 'history/train_loss' must be a 1-D array of numbers, "
                              f"got {value.dtype}{list(value.shape)}")
    return value.astype(np.float64).tolist()


def _per_step_of(per_step: dict, path) -> dict[str, list]:
    """``history/per_step``: a JSON object of lists of numbers (None where a value was NaN)."""
    for name, values in per_step.items():
        if not isinstance(values, list) or not all(v is None or isinstance(v, (int, float)) for v in values):
            raise CheckpointError(f"{path}: entry 'history/per_step' quantity {name!r} must be a list of "
                                  f"numbers, got {values!r:.80}")
    return per_step



def _step_of(value: np.ndarray, path) -> int:
    if value.shape != () or value.dtype.kind not in "iu":
        raise CheckpointError(f"{path}: the step must be one integer, got {value.dtype}{list(value.shape)}")
    return int(value)


def _differing(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def restore(path, run_key: dict, steps: int, model, optimizer, train_rng) -> tuple[int, History]:
    """Load the checkpoint at ``path`` into ``model``, ``optimizer`` and ``train_rng`` (in place).

    Everything is checked before anything is changed, so a refused checkpoint leaves the fresh
    model untouched: the run key (same seed, batch, evaluation, parameter shapes and dtypes,
    optimiser), the step (an integer in ``[0, steps]`` equal to the number of recorded training
    losses and at least the step of the last evaluation), the history (JSON entries of the right
    types, finite training losses, integer evaluation steps), every parameter (exactly the model's
    names, shapes and dtypes, all finite) and the optimiser state (finite, loadable; for
    :class:`~miniattn.optim.Adam` a step counter ``t`` equal to the step).

    Returns
    -------
    (step, history)

    Raises
    ------
    CheckpointError
        Naming the file and what is wrong.
    """
    try:
        ck = load_checkpoint(path)
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path} is not a valid miniattn checkpoint: {exc}") from None
    if ck.run_key != run_key:
        raise CheckpointError(f"the checkpoint {path} belongs to a different run (differs in "
                              f"{_differing(ck.run_key, run_key)})")
    step = ck.step
    if step < 0:
        raise CheckpointError(f"the checkpoint {path} is at a negative step ({step})")
    if step > steps:
        raise CheckpointError(f"the checkpoint {path} is at step {step}, beyond steps={steps}")
    if len(ck.history.train_loss) != step:
        raise CheckpointError(f"the checkpoint {path} is at step {step} but records "
                              f"{len(ck.history.train_loss)} training losses")
    # Training never records a non-finite loss (it stops with TrainingDiverged instead), so one
    # here means the file was damaged or edited.
    if not np.all(np.isfinite(ck.history.train_loss)):
        raise CheckpointError(f"the checkpoint {path}: entry 'history/train_loss' contains NaN or inf")
    last_eval = max((record["step"] for record in ck.history.evals), default=-1)
    if last_eval > step:
        raise CheckpointError(f"the checkpoint {path} is at step {step} but its history has an "
                              f"evaluation at step {last_eval}")
    if any(len(v) != step for v in ck.history.per_step.values()):
        raise CheckpointError(f"the checkpoint {path}: per-step records do not have {step} entries")
    if set(ck.params) != set(model.params):
        raise CheckpointError(f"the checkpoint {path} has parameters {sorted(ck.params)}, "
                              f"the model has {sorted(model.params)}")
    for name, value in ck.params.items():
        target = model.params[name]
        if value.shape != target.shape or value.dtype != target.dtype:
            raise CheckpointError(f"the checkpoint {path}: parameter {name!r} is {value.dtype}{list(value.shape)}, "
                                  f"the model's is {target.dtype}{list(target.shape)}")
        if not np.all(np.isfinite(value)):
            raise CheckpointError(f"the checkpoint {path}: parameter {name!r} contains NaN or inf")
    for key, value in ck.optimizer_state.items():
        if value.dtype.kind not in "fiu" or not np.all(np.isfinite(value)):
            raise CheckpointError(f"the checkpoint {path}: optimiser state {key!r} is not finite numbers")
    # Adam's bias corrections 1 - beta**t depend on t, which train() advances once per step from a
    # fresh optimiser: any other t would silently change every later update.
    t = ck.optimizer_state.get("t")
    if isinstance(optimizer, Adam) and t is not None and t.shape == () and t.dtype.kind in "iu" and int(t) != step:
        raise CheckpointError(f"the checkpoint {path}: entry 'optimizer/t' is {int(t)}, expected the "
                              f"checkpoint's step {step} (Adam's step counter)")
    if ck.rng_state.get("bit_generator") != type(train_rng.bit_generator).__name__:
        raise CheckpointError(f"the checkpoint {path}: generator {ck.rng_state.get('bit_generator')}, "
                              f"expected {type(train_rng.bit_generator).__name__}")
    saved = {k: v.copy() for k, v in model.params.items()}
    saved_state = optimizer.state_dict()
    try:
        for name, value in ck.params.items():
            # In place: the optimiser (and any views the model holds) refer to these very arrays.
            model.params[name][...] = value
        optimizer.load_state_dict(ck.optimizer_state)
        train_rng.bit_generator.state = ck.rng_state
    except (ValueError, TypeError, KeyError) as exc:
        for name, value in saved.items():
            model.params[name][...] = value
        optimizer.load_state_dict(saved_state)
        raise CheckpointError(f"the checkpoint {path} cannot be loaded: {exc}") from None
    return step, ck.history


def remove_stale_temporaries(directory) -> None:
    """Remove the temporary files an interrupted atomic write left in ``directory``.

    Entries named like a temporary (``.*.tmp``) are removed: files and symbolic links are unlinked,
    empty directories removed. A non-empty directory of that name, or an entry that cannot be
    removed, is left alone: atomic writes never create directories, and the next write picks a
    fresh temporary name, so a leftover never gets in its way and is no reason to stop a run.
    """
    directory = Path(directory)
    for p in directory.glob(".*.tmp"):
        try:
            if p.is_dir() and not p.is_symlink():
                p.rmdir()
            else:
                p.unlink()
        except OSError:  # already gone, not empty, or not ours to remove
            pass
