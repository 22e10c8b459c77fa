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
import math
import os
import tokenize
import zipfile
from pathlib import Path
from typing import Mapping, NamedTuple

import numpy as np

from miniattn import io
from miniattn._validate import float_array, integer
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
            seen = set()
            for info in archive.infolist():
                _check_member_name(path, info.filename, seen)
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


#: The archive members :func:`save_checkpoint` writes (each as ``<name>.npy``), besides
#: ``params/<name>`` and ``optimizer/<key>``.
_FIXED_MEMBERS = frozenset({"format", "step", "rng_state", "run_key", "history/evals", "history/train_loss",
                            "history/per_step"})
_PREFIXED_MEMBERS = ("params/", "optimizer/")


def _check_member_name(path, filename: str, seen: set) -> None:
    """An archive member must be one :func:`save_checkpoint` writes, and appear once.

    Checked from the zip directory alone, before any array is read: a member that no checkpoint
    has (``junk``, ``history/junk``, a non-``.npy`` file) means the file was edited or is not ours,
    and silently ignoring it would accept a file whose contents nobody checked.
    """
    if filename in seen:
        raise CheckpointError(f"{path}: entry {filename!r} appears more than once in the archive")
    seen.add(filename)
    name = filename[:-len(".npy")] if filename.endswith(".npy") else None
    if name is None or not (name in _FIXED_MEMBERS or name.startswith(_PREFIXED_MEMBERS)):
        raise CheckpointError(f"{path} is not a miniattn checkpoint as written: unknown entry {filename!r}, "
                              "which no checkpoint has (the file was edited or is another archive)")


class Checkpoint(NamedTuple):
    """The contents of a checkpoint file (see :func:`save_checkpoint`)."""

    step: int
    params: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]
    rng_state: dict
    history: History
    run_key: dict


def _check_path(path) -> None:
    """``path`` must be a ``str`` or an ``os.PathLike`` (not None, bytes or a number)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__} {path!r:.60}")


_INT64_MAX = int(np.iinfo(np.int64).max)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating, np.bool_))


def _is_real(value) -> bool:
    """A real number that is not a bool and, if an int, within the float range (NaN and inf are
    fine: io.dumps_json writes them as null)."""
    if not _is_number(value) or isinstance(value, (bool, np.bool_)):
        return False
    try:
        float(value)
    except OverflowError:  # an int beyond the float range, which load_checkpoint refuses
        return False
    return True


def _check_arrays(name: str, arrays, *, floating: bool) -> None:
    """A mapping of str -> finite array: floating-point (``params``) or any real numbers (optimiser)."""
    if not isinstance(arrays, Mapping):
        raise TypeError(f"{name} must be a dict of name -> array, got {type(arrays).__name__}")
    for key, value in arrays.items():
        if not isinstance(key, str):
            raise TypeError(f"{name} keys must be strings, got {type(key).__name__} {key!r:.40}")
        entry = f"{name}[{key!r}]"
        if floating:
            float_array(entry, value, allow_empty=True)
            continue
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"{entry} must be an array of real numbers, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{entry} contains NaN or inf")


def _check_history(history) -> None:
    """What :func:`load_checkpoint` requires of the history entries (and :func:`restore` of the losses)."""
    if not isinstance(history, History):
        raise TypeError(f"checkpoint.history must be a History, got {type(history).__name__}")
    evals = history.evals
    if not isinstance(evals, (list, tuple)):
        raise TypeError(f"checkpoint.history.evals must be a list of records, got {type(evals).__name__}")
    previous = None
    for i, record in enumerate(evals):
        if not isinstance(record, Mapping):
            raise TypeError(f"checkpoint.history.evals[{i}] must be a dict, got {type(record).__name__}")
        step = integer(f"checkpoint.history.evals[{i}]['step']", record.get("step"), low=0)
        if previous is not None and step <= previous:
            raise ValueError(f"checkpoint.history.evals[{i}]['step'] is {step} after step {previous}, "
                             "expected strictly increasing steps")
        previous = step
        for field_name in _EVAL_NUMBER_FIELDS:
            value = record.get(field_name)
            if value is not None and not _is_real(value):
                raise TypeError(f"checkpoint.history.evals[{i}][{field_name!r}] must be a number or None, "
                                f"got {type(value).__name__} {value!r:.40}")
        per_head = record.get("attention_accuracy_per_head")
        if per_head is not None and not (
                (isinstance(per_head, np.ndarray) and per_head.ndim == 1 and per_head.dtype.kind in "iuf")
                or (isinstance(per_head, (list, tuple)) and all(v is None or _is_real(v) for v in per_head))):
            raise TypeError(f"checkpoint.history.evals[{i}]['attention_accuracy_per_head'] must be a list of "
                            f"numbers (or None), got {per_head!r:.60}")
    train_loss = history.train_loss
    if not isinstance(train_loss, (list, tuple, np.ndarray)) or not all(
            _is_number(x) and not isinstance(x, (bool, np.bool_)) for x in train_loss):
        raise TypeError(f"checkpoint.history.train_loss must be a list of numbers, got {train_loss!r:.80}")
    try:
        finite = bool(np.all(np.isfinite(np.asarray(train_loss, dtype=np.float64))))
    except OverflowError:  # a Python int beyond the float range
        finite = False
    if not finite:
        raise ValueError("checkpoint.history.train_loss contains NaN or inf (or a number beyond float64)")
    per_step = history.per_step
    if not isinstance(per_step, Mapping):
        raise TypeError(f"checkpoint.history.per_step must be a dict of name -> list, got {type(per_step).__name__}")
    for name, values in per_step.items():
        if not isinstance(name, str):
            raise TypeError(f"checkpoint.history.per_step keys must be strings, got {type(name).__name__} {name!r:.40}")
        if isinstance(values, np.ndarray):
            ok = values.ndim == 1 and values.dtype.kind in "biuf"
        else:
            ok = isinstance(values, (list, tuple)) and all(v is None or _is_number(v) for v in values)
        if not ok:
            raise TypeError(f"checkpoint.history.per_step[{name!r}] must be a list of numbers (or None), "
                            f"got {values!r:.80}")


def _json_field(name: str, value, expected: type = Mapping) -> str:
    """``value`` (a dict, or the ``expected`` container) as the JSON string the checkpoint stores."""
    if not isinstance(value, expected):
        raise TypeError(f"{name} must be a {'dict' if expected is Mapping else 'list'}, got {type(value).__name__}")
    try:
        return io.dumps_json(value)
    except (TypeError, ValueError, RecursionError) as exc:
        kind = TypeError if isinstance(exc, TypeError) else ValueError
        raise kind(f"{name} cannot be stored as JSON: {' '.join(str(exc).split())}") from None


def _check_checkpoint(checkpoint) -> None:
    """Everything :func:`load_checkpoint` (and, for finiteness, :func:`restore`) will require."""
    if not isinstance(checkpoint, Checkpoint):
        raise TypeError(f"checkpoint must be a Checkpoint, got {type(checkpoint).__name__}")
    integer("checkpoint.step", checkpoint.step, low=0, high=_INT64_MAX)
    _check_arrays("checkpoint.params", checkpoint.params, floating=True)
    _check_arrays("checkpoint.optimizer_state", checkpoint.optimizer_state, floating=False)
    _check_history(checkpoint.history)


def save_checkpoint(path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` atomically to ``path`` as an ``.npz`` archive (no pickled objects).

    Layout: ``params/<name>`` and ``optimizer/<key>`` arrays, ``history/train_loss`` (float64),
    and JSON strings ``rng_state``, ``history/evals``, ``run_key``; plus ``step`` and ``format``.
    Everything is checked before anything is written, so that whatever is saved loads back.

    Raises
    ------
    TypeError
        If ``path`` is not a str or os.PathLike, ``checkpoint`` not a :class:`Checkpoint`, or a
        field of the wrong type: ``checkpoint.step`` not an int (bool and float refused),
        ``checkpoint.params`` not a dict of str -> floating-point array, ``checkpoint.optimizer_state``
        not a dict of str -> array of real numbers, ``checkpoint.history`` not a
        :class:`~miniattn.history.History` of the documented types, ``checkpoint.rng_state`` or
        ``checkpoint.run_key`` not a JSON-encodable dict.
    ValueError
        If ``checkpoint.step`` is negative or beyond int64, a parameter, an optimiser entry or a
        training loss holds NaN or inf, the evaluation steps are not strictly increasing integers
        >= 0, or ``path`` cannot be written (e.g. it is a directory).
    """
    _check_path(path)
    _check_checkpoint(checkpoint)
    arrays: dict[str, np.ndarray] = {
        "format": np.array(CHECKPOINT_FORMAT),
        "step": np.array(int(checkpoint.step), dtype=np.int64),
        "rng_state": np.array(_json_field("checkpoint.rng_state", checkpoint.rng_state)),
        "run_key": np.array(_json_field("checkpoint.run_key", checkpoint.run_key)),
        "history/evals": np.array(_json_field("checkpoint.history.evals", checkpoint.history.evals,
                                              (list, tuple))),
        "history/train_loss": np.array(checkpoint.history.train_loss, dtype=np.float64),
        "history/per_step": np.array(_json_field("checkpoint.history.per_step", checkpoint.history.per_step)),
    }
    arrays.update({f"params/{k}": np.asarray(v) for k, v in checkpoint.params.items()})
    arrays.update({f"optimizer/{k}": np.asarray(v) for k, v in checkpoint.optimizer_state.items()})
    io.atomic_save_npz(path, **arrays)


def load_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises
    ------
    TypeError
        If ``path`` is not a str or os.PathLike.
    CheckpointError (a ValueError)
        Naming the file and the entry, if the file is not a miniattn checkpoint of a known format:
        unreadable, an archive member no checkpoint has (checked before any array is read), a
        missing or mistyped entry, NaN, Infinity or a number beyond float64 in a JSON entry, an
        evaluation record whose step is not an integer in strictly increasing order or whose
        ``loss`` / ``train_loss`` / accuracies are not finite numbers (or null where allowed).
    """
    _check_path(path)
    data = _read_archive(path)
    required = {"format", "step", "rng_state", "run_key", "history/evals", "history/train_loss"}
    if not required <= set(data):
        raise CheckpointError(f"{path} is not a miniattn checkpoint (missing {sorted(required - set(data))})")
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
        parsed = json.loads(str(value), parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deeply nested JSON
        raise CheckpointError(f"{path}: entry {key!r} is not valid JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(parsed, expected):
        raise CheckpointError(f"{path}: entry {key!r} must be a JSON {_JSON_TYPE_NAMES[expected]}, "
                              f"got a JSON {_JSON_TYPE_NAMES.get(type(parsed), type(parsed).__name__)}")
    where = _first_non_finite(parsed)
    if where is not None:
        raise CheckpointError(f"{path}: entry {key!r} holds a number beyond float64 at {where} "
                              "(miniattn never writes one)")
    return parsed


def _refuse_constant(name: str):
    # save_checkpoint writes strict JSON (io.dumps_json: allow_nan=False), so NaN, Infinity or
    # -Infinity in an entry means the file was edited.
    raise ValueError(f"{name} is not allowed (miniattn writes strict JSON)")


def _first_non_finite(value) -> str | None:
    """Where in a parsed JSON value a float is inf (``1e999``), as ``[0]['loss']``; else None.

    Iterative, so that a deeply nested value (which json.loads accepted) cannot overflow the stack.
    """
    stack = [("", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return where or "the top level"
        elif isinstance(item, dict):
            stack.extend((f"{where}[{k!r}]", v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(item))
    return None


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
        for field_name, may_be_none in _EVAL_NUMBER_FIELDS.items():
            if field_name in record and not _is_json_number(record[field_name], may_be_none):
                raise CheckpointError(f"{path}: entry 'history/evals' record {i} (step {step}) has "
                                      f"{field_name} {record[field_name]!r:.40}, expected a finite number"
                                      f"{' or null' if may_be_none else ''}")
        per_head = record.get("attention_accuracy_per_head", [])
        if not isinstance(per_head, list) or not all(_is_json_number(v, True) for v in per_head):
            raise CheckpointError(f"{path}: entry 'history/evals' record {i} (step {step}) has "
                                  f"attention_accuracy_per_head {per_head!r:.60}, expected a list of "
                                  "finite numbers (or null)")
    return evals


#: The numeric fields of an evaluation record (see :class:`~miniattn.history.History`) and whether
#: they may be None: ``train_loss`` at step 0, an accuracy where the task has none. ``save_checkpoint``
#: writes a NaN as null, so a null ``loss`` loads; :func:`restore` refuses it, since
#: :func:`miniattn.train.train` stops with TrainingDiverged instead of recording a non-finite loss.
_EVAL_NUMBER_FIELDS = {"loss": True, "train_loss": True, "token_accuracy": True, "attention_accuracy": True}
#: The fields every record :func:`miniattn.train.train` writes has (``restore`` requires them).
_EVAL_REQUIRED_FIELDS = ("step", "train_loss", "loss", "token_accuracy", "attention_accuracy")


def _is_json_number(value, may_be_none: bool) -> bool:
    """A finite int or float as JSON parses it (bool is not a number; None only if allowed)."""
    if value is None:
        return may_be_none
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond the float range
        return False


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


def _check_eval_records(evals: list[dict], run_key, step: int, path) -> None:
    """The evaluation records against what :func:`miniattn.train.train` writes and when.

    Every record has the fields train() writes (``step``, ``train_loss``, ``loss``,
    ``token_accuracy``, ``attention_accuracy``; their types were checked by :func:`load_checkpoint`)
    with a non-null ``loss``. The steps follow the run key's schedule: with ``eval_steps`` (an
    explicit schedule, which includes the budget and so fixes it) exactly its steps up to ``step``;
    with ``eval_every`` every multiple of it up to ``step`` must be there, and a step off that
    schedule is allowed, as the last step of an earlier, shorter budget the run was extended from
    (which the checkpoint does not record, so such a step cannot be checked further). Without
    either key only the order and the bound ``<= step`` (checked by the caller) are known.
    """
    entry = f"the checkpoint {path}: entry 'history/evals'"
    for i, record in enumerate(evals):
        missing = [f for f in _EVAL_REQUIRED_FIELDS if f not in record]
        if missing:
            raise CheckpointError(f"{entry} record {i} (step {record['step']}) lacks {missing}")
        if record["loss"] is None:
            raise CheckpointError(f"{entry} record {i} (step {record['step']}) has no loss")
    steps_logged = [record["step"] for record in evals]
    if not isinstance(run_key, Mapping):
        return
    eval_steps, eval_every = run_key.get("eval_steps"), run_key.get("eval_every")
    if isinstance(eval_steps, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in eval_steps):
        expected = sorted(s for s in set(eval_steps) if s <= step)
        if steps_logged != expected:
            raise CheckpointError(f"{entry} has evaluations at steps {_steps_text(steps_logged)}, expected "
                                  f"the run's schedule up to step {step}: {_steps_text(expected)}")
    elif isinstance(eval_every, int) and not isinstance(eval_every, bool) and eval_every >= 1:
        missing_steps = sorted(set(range(0, step + 1, eval_every)) - set(steps_logged))
        if missing_steps:
            raise CheckpointError(f"{entry} lacks the evaluations at steps {_steps_text(missing_steps)} "
                                  f"(the run evaluates every {eval_every} steps, up to step {step})")


def _steps_text(steps: list[int], limit: int = 8) -> str:
    """``[0, 1, 2]``, or the first ``limit`` steps then ``...`` and the count."""
    if len(steps) <= limit:
        return "[" + ", ".join(map(str, steps)) + "]"
    return "[" + ", ".join(map(str, steps[:limit])) + f", ...] ({len(steps)} steps)"


#: Integer fields of the two PCG generators' ``state`` dicts and their upper bounds (exclusive).
_PCG_LAYOUT = {"state": {"state": 2 ** 128, "inc": 2 ** 128}, "has_uint32": 2, "uinteger": 2 ** 32}


def _check_rng_state(rng_state: dict, bit_generator, path) -> None:
    """``rng_state`` must be exactly a state the generator ``bit_generator`` can have.

    Every number in it must be an exact int (a float would be truncated by NumPy, silently giving
    another stream; bool is no int here). For PCG64 and PCG64DXSM the layout is checked field by
    field: ``state`` and ``inc`` in [0, 2**128) with ``inc`` odd (as every seeded PCG's is),
    ``has_uint32`` 0 or 1, ``uinteger`` in [0, 2**32), nothing else. For any generator the state is
    then set on a fresh instance of its type and must read back unchanged, so nothing NumPy would
    reject, wrap or ignore reaches ``train_rng``.
    """
    entry = f"the checkpoint {path}: entry 'rng_state'"
    stack = [("", rng_state)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, bool) or isinstance(item, float):
            raise CheckpointError(f"{entry} holds {item!r} at {where}, expected an integer")
        if isinstance(item, dict):
            stack.extend((f"{where}[{k!r}]", v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(item))
    if type(bit_generator).__name__ in ("PCG64", "PCG64DXSM"):
        _check_layout(entry, rng_state, {"bit_generator": None, **_PCG_LAYOUT}, "")
        if rng_state["state"]["inc"] % 2 == 0:
            raise CheckpointError(f"{entry} has an even ['state']['inc'], which no seeded "
                                  f"{type(bit_generator).__name__} has")
    try:
        trial = type(bit_generator)()
        trial.state = rng_state
        read_back = json.loads(io.dumps_json(trial.state))
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise CheckpointError(f"{entry} is not a state of {type(bit_generator).__name__} "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    if read_back != rng_state:
        raise CheckpointError(f"{entry} is not a state of {type(bit_generator).__name__}: "
                              "NumPy would not keep it as written")


def _check_layout(entry: str, value, layout, where: str) -> None:
    """``value`` has exactly the keys of ``layout``; an int bound there means an int in [0, bound)."""
    if isinstance(layout, dict):
        if not isinstance(value, dict) or set(value) != set(layout):
            keys = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise CheckpointError(f"{entry}{where} has {keys}, expected the fields {sorted(layout)}")
        for key, sub in layout.items():
            if sub is not None:
                _check_layout(entry, value[key], sub, f"{where}[{key!r}]")
    elif not isinstance(value, int) or not 0 <= value < layout:
        raise CheckpointError(f"{entry}{where} is {value!r:.60}, expected an integer in [0, {layout})")


def restore(path, run_key: dict, steps: int, model, optimizer, train_rng) -> tuple[int, History]:
    """Load the checkpoint at ``path`` into ``model``, ``optimizer`` and ``train_rng`` (in place).

    Everything is checked before anything is changed, so a refused checkpoint leaves the fresh
    model untouched: the run key (same seed, batch, evaluation, parameter shapes and dtypes,
    optimiser), the step (an integer in ``[0, steps]`` equal to the number of recorded training
    losses and at least the step of the last evaluation), the history (JSON entries of the right
    types, finite training losses, evaluation records with finite numbers on the run key's evaluation
    schedule, see :func:`_check_eval_records`), every parameter (exactly the model's names, shapes
    and dtypes, all finite), the optimiser state (finite, loadable; for
    :class:`~miniattn.optim.Adam` a step counter ``t`` equal to the step) and the generator state
    (exact integers NumPy keeps as written, see :func:`_check_rng_state`).

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
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
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
    _check_eval_records(ck.history.evals, run_key, step, path)
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
    _check_rng_state(ck.rng_state, train_rng.bit_generator, path)
    saved = {k: v.copy() for k, v in model.params.items()}
    saved_state = optimizer.state_dict()
    try:
        for name, value in ck.params.items():
            # In place: the optimiser (and any views the model holds) refer to these very arrays.
            model.params[name][...] = value
        optimizer.load_state_dict(ck.optimizer_state)
        train_rng.bit_generator.state = ck.rng_state
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
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
