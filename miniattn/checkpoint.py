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
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from miniattn import io
from miniattn.history import History

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
    """All arrays of the ``.npz`` at ``path``, after checking the archive's declared sizes."""
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
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc}); "
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
    if int(data["format"]) != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} has checkpoint format {int(data['format'])}, expected {CHECKPOINT_FORMAT}")
    per_step = json.loads(str(data["history/per_step"])) if "history/per_step" in data else {}
    history = History(evals=json.loads(str(data["history/evals"])),
                      train_loss=data["history/train_loss"].tolist(), per_step=per_step)
    return Checkpoint(
        step=_step_of(data["step"], path),
        params={k[len("params/"):]: v for k, v in data.items() if k.startswith("params/")},
        optimizer_state={k[len("optimizer/"):]: v for k, v in data.items() if k.startswith("optimizer/")},
        rng_state=json.loads(str(data["rng_state"])),
        history=history,
        run_key=json.loads(str(data["run_key"])),
    )



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
    losses and at least the step of the last evaluation), every parameter (exactly the model's
    names, shapes and dtypes, all finite) and the optimiser state (finite, loadable).

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
    if ck.history.evals and int(ck.history.evals[-1].get("step", -1)) > step:
        raise CheckpointError(f"the checkpoint {path} is at step {step} but its history has an "
                              f"evaluation at step {ck.history.evals[-1].get('step')}")
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
    """Remove the temporary files an interrupted atomic write left in ``directory``."""
    directory = Path(directory)
    for p in directory.glob(".*.tmp"):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
