"""The training loop: seeded minibatch training with held-out evaluation, atomic checkpoints and
bit-identical resumption.

One call of :func:`train` runs ``steps`` optimiser steps of ``model`` on fresh batches from ``task``::

    for k = 1 .. steps:
        batch_k  = task.sample(train_rng, batch_size)
        loss, g  = model.loss_and_grads(batch_k)        # stop with TrainingDiverged if not finite
        optimizer.step(g)                               # updates model.params in place
        on_step(k, model, loss, grads) -> extra per-step quantities   (optional hook)
        every eval_every steps (or at the steps in eval_steps), and at k = 0 and k = steps:
            evaluate on the held-out batch (+ metrics_fn), then on_eval(k, model, record)
        every checkpoint_every steps (and at k = steps): write out_dir/checkpoint.npz atomically

Randomness. ``seed`` (an int or a ``numpy.random.SeedSequence``) is split into two independent
streams: child 0 draws the training batches, child 1 draws the held-out batch, once, before step 1.
The children are derived from the seed's own spawn key, so passing the same ``SeedSequence`` twice
gives the same streams. No global random state is touched. The model's initialisation is not drawn
here: build the model from its own generator (the command line spawns it from the same root seed).

Resumption. The checkpoint holds the parameters, the optimiser state, the training generator's
``bit_generator.state`` (as JSON, so the file loads without pickle), the step and the history so
far. A run restarted from it draws exactly the batches the uninterrupted run would have drawn next,
so it ends with bit-identical parameters and history. ``metrics.jsonl`` is rewritten from the
checkpoint's history on resumption, so evaluations logged after the checkpoint by the interrupted
run are not duplicated.

The run key. A checkpoint records the key of its run, and is resumed only by a run with the same
key (:func:`run_key_differences` names what differs): the seed streams, batch and evaluation sizes,
the evaluation schedule, the parameters' names, shapes and dtypes, the optimiser and its
hyperparameters, and the description of the model and of the task (``model.config()`` with the
class name -- e.g. ``uniform``, ``init_scale``, ``heads``, ``dtype`` -- and the task's ``repr``, as
in ``config.json``). A checkpoint written before the key held the model and task description
(:func:`is_legacy_run_key`) cannot be checked against them: it is resumed when the rest of its key
matches, and the next checkpoint written records the full key.

Files in ``out_dir``: ``config.json`` (run metadata, :func:`miniattn.io.run_metadata`),
``metrics.jsonl`` (one evaluation record per line), ``checkpoint.npz`` (:mod:`miniattn.checkpoint`).

This is the one place where any model of the project is trained: the experiments, the simulations
of :mod:`analysis` and the tests all call :func:`train` and observe it through its hooks. The pieces
it is built from live in their own modules: :mod:`miniattn.metrics` (evaluation),
:mod:`miniattn.history` (the record), :mod:`miniattn.checkpoint` (file format and validation),
:mod:`miniattn.progress` (display).

Example
-------
>>> from miniattn.optim import Adam
>>> history = train(model, task, Adam(model.params, lr=1e-3), steps=200, batch_size=128,
...                 seed=0, out_dir="runs/copy-subset")            # doctest: +SKIP
>>> history.metric("token_accuracy")[-1]                          # doctest: +SKIP
"""

from __future__ import annotations

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from miniattn import io
from miniattn._validate import NonFiniteError, integer
from miniattn.checkpoint import (CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, Checkpoint, CheckpointError,
                                 load_checkpoint, remove_stale_temporaries, restore, save_checkpoint)
from miniattn.history import History
from miniattn.metrics import (BUILTIN_METRICS, attention_accuracy, evaluate, plain_record,
                              salient_attention_accuracy, token_accuracy)
from miniattn.progress import ProgressEvent, RateEstimator, progress_callback

__all__ = [
    "TrainingDiverged", "History", "ProgressEvent", "Checkpoint", "CheckpointError", "train", "evaluate",
    "token_accuracy", "attention_accuracy", "salient_attention_accuracy", "save_checkpoint",
    "load_checkpoint", "seed_streams", "CHECKPOINT_NAME", "METRICS_NAME", "CONFIG_NAME", "BUILTIN_METRICS",
    "run_config", "run_key_differences", "is_legacy_run_key",
]


class TrainingDiverged(ValueError):
    """The loss, a gradient or a parameter became NaN or infinite.

    Attributes
    ----------
    step : int
        The step (1-based; 0 = the initial evaluation) at which the non-finite value appeared. The
        checkpoint on disk, if any, is the last one written before it and holds finite values.
    """

    def __init__(self, step: int, what: str):
        self.step, self.what = int(step), str(what)
        super().__init__(f"training diverged at step {self.step}: {self.what}; "
                         "the last finite checkpoint (if any) was kept")

    def __reduce__(self):
        # Pickled with its own arguments: a worker process of a sweep raises it to the parent, and
        # the default (the formatted message as the only argument) cannot rebuild it.
        return type(self), (self.step, self.what)


def seed_streams(seed) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
    """The (training-batch, held-out-batch) seed sequences of :func:`train` for ``seed``.

    Children 0 and 1 of ``seed``, built from its spawn key rather than with ``spawn`` (which would
    advance the parent's counter and give different children on a second call).
    """
    if isinstance(seed, np.random.SeedSequence):
        root = seed
    elif isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
        if seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed}")
        root = np.random.SeedSequence(int(seed))
    else:
        raise TypeError(f"seed must be a non-negative int or a numpy.random.SeedSequence, "
                        f"got {type(seed).__name__}")
    return tuple(np.random.SeedSequence(root.entropy, spawn_key=tuple(root.spawn_key) + (i,),
                                        pool_size=root.pool_size) for i in range(2))


def _optimizer_config(optimizer) -> dict:
    """Class name and scalar hyperparameters (lr, betas, eps, momentum, ...) of an optimiser."""
    config: dict[str, Any] = {"name": type(optimizer).__name__}
    for key, value in sorted(vars(optimizer).items()):
        if key in ("t", "params") or key.startswith("_"):
            continue
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            config[key] = value
        elif isinstance(value, tuple) and all(isinstance(x, (int, float)) for x in value):
            config[key] = list(value)
    return plain_record(config)


def _describe(obj) -> dict:
    """``obj.config()`` when the object has one, else its class name (for config.json)."""
    config = getattr(obj, "config", None)
    if callable(config):
        return {"class": type(obj).__name__, **config()}
    return {"class": type(obj).__name__, "repr": repr(obj)}


def _key_description(obj) -> dict:
    """What the run key records of a model or task: :func:`_describe`, except that an object with
    neither ``config()`` nor its own ``__repr__`` is recorded by its class name only (the default
    ``repr`` holds a memory address, which differs in every process)."""
    if callable(getattr(obj, "config", None)) or type(obj).__repr__ is not object.__repr__:
        return _describe(obj)
    return {"class": type(obj).__name__}


#: Entries of the run key that describe the model and the task; a key without them was written by an
#: earlier version (:func:`is_legacy_run_key`).
_DESCRIPTION_KEYS = ("model", "task")


def is_legacy_run_key(run_key) -> bool:
    """Whether a checkpoint's run key predates the model and task description (neither ``model``
    nor ``task`` in it): such a checkpoint cannot be checked against them."""
    return isinstance(run_key, Mapping) and not any(k in run_key for k in _DESCRIPTION_KEYS)


_MISSING = object()


def run_key_differences(stored, current, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """The leaves in which two JSON records differ, as ``(dotted name, stored, current)``.

    Nested objects are compared entry by entry; an entry present on one side only is reported with
    :data:`_MISSING` on the other (``describe_value`` prints it as ``missing``). Lists and scalars are
    compared whole (``==``, so ``6`` equals ``6.0``).
    """
    if isinstance(stored, Mapping) and isinstance(current, Mapping):
        found = []
        for key in sorted(set(stored) | set(current), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            found += run_key_differences(stored.get(key, _MISSING), current.get(key, _MISSING), name)
        return found
    if stored is _MISSING or current is _MISSING or type(stored) is not type(current) and not (
            _is_plain_number(stored) and _is_plain_number(current)) or stored != current:
        return [(prefix or "(the whole record)", stored, current)]
    return []


def _is_plain_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def describe_value(value, width: int = 60) -> str:
    """A JSON value for a one-line message: ``missing`` for an absent entry, else compact JSON cut to
    ``width`` characters."""
    if value is _MISSING:
        return "missing"
    try:
        text = io.dumps_json(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def describe_differences(differences, first: str, second: str, limit: int = 4) -> str:
    """``name (first: value, second: value); ...`` for :func:`run_key_differences`, at most
    ``limit`` entries (then how many more)."""
    parts = []
    for name, a, b in differences[:limit]:
        if isinstance(a, str) and isinstance(b, str):
            # Long strings (a task's repr) from a little before where they part.
            same = len(os.path.commonprefix([a, b]))
            cut = max(0, same - 12)
            a, b = (text if cut == 0 else "..." + text[cut:] for text in (a, b))
        parts.append(f"{name} ({first}: {describe_value(a)}, {second}: {describe_value(b)})")
    if len(differences) > limit:
        parts.append(f"and {len(differences) - limit} more")
    return "; ".join(parts)


def _resume_key(path: Path, run_key: dict) -> dict:
    """The run key a checkpoint at ``path`` must hold to be resumed by this run.

    The full ``run_key``; for a checkpoint written before the key held the model and task
    description (:func:`is_legacy_run_key`), the key without them. A checkpoint with another key is
    refused here, naming the entries that differ (:class:`CheckpointError`); one that cannot be read
    is left to :func:`miniattn.checkpoint.restore`, which reports it in full.
    """
    try:
        stored = load_checkpoint(path).run_key
    except Exception:  # noqa: BLE001 - restore() reads the file again and reports what is wrong
        return run_key
    if is_legacy_run_key(stored):
        run_key = {k: v for k, v in run_key.items() if k not in _DESCRIPTION_KEYS}
    differences = run_key_differences(stored, run_key)
    if differences:
        raise CheckpointError(f"{path} belongs to a different run: "
                              + describe_differences(differences, "checkpoint", "this run"))
    return run_key


def run_config(model, task, optimizer, *, steps: int, batch_size: int, eval_every: int, eval_size: int,
               checkpoint_every: int, config: Mapping[str, Any] | None = None) -> dict:
    """The ``config`` entry that :func:`train` writes to ``config.json`` for these arguments.

    Returns
    -------
    dict
        ``train`` (steps, batch_size, eval_every, eval_size, checkpoint_every), ``model`` and
        ``task`` (``config()`` with the class name, or the class name and ``repr``), ``optimizer``
        (class name and scalar hyperparameters) and ``run`` (a copy of ``config``).
    """
    return {
        "train": {"steps": steps, "batch_size": batch_size, "eval_every": eval_every,
                  "eval_size": eval_size, "checkpoint_every": checkpoint_every},
        "model": _describe(model), "task": _describe(task), "optimizer": _optimizer_config(optimizer),
        "run": dict(config or {}),
    }


def _first_nonfinite(arrays: Mapping[str, np.ndarray]) -> str | None:
    for name, value in arrays.items():
        if not np.all(np.isfinite(value)):
            return name
    return None


def _eval_schedule(steps: int, eval_every: int, eval_steps) -> frozenset[int]:
    """The steps at which :func:`train` evaluates: always 0 and ``steps``, plus the schedule."""
    if eval_steps is None:
        chosen = set(range(0, steps + 1, eval_every))
    else:
        if isinstance(eval_steps, (str, bytes)) or not isinstance(eval_steps, Iterable):
            raise TypeError(f"eval_steps must be an iterable of ints, got {type(eval_steps).__name__}")
        chosen = {integer("eval_steps[i]", s, 0, steps) for s in eval_steps}
    return frozenset(chosen | {0, steps})


def _step_record(on_step, step: int, model, loss: float, grads) -> dict[str, float]:
    extra = on_step(step, model, loss, grads)
    if extra is None:
        return {}
    if not isinstance(extra, Mapping):
        raise TypeError(f"on_step must return a mapping of names to numbers (or None), "
                        f"got {type(extra).__name__}")
    return {str(k): float(v) for k, v in extra.items()}


def _loss_and_grads(model, batch, step: int):
    """``model.loss_and_grads(batch)``, with every non-finite value reported as divergence.

    The parameters are finite at every step (checked after each update), and the batch comes from
    the task, so a NaN or inf that a layer's input check meets inside the pass (e.g. an overflowing
    score) is the training diverging, not a user's mistake.
    """
    try:
        loss, grads = model.loss_and_grads(batch)
    except (NonFiniteError, FloatingPointError, OverflowError, RuntimeWarning) as exc:
        # RuntimeWarning: an overflow warning turned into an error by a warnings filter;
        # OverflowError: Python's own float overflow (e.g. math.exp) inside the pass.
        raise TrainingDiverged(step, f"a non-finite value inside the forward/backward pass ({exc})") from None
    try:
        loss = float(loss)
    except OverflowError:  # an integer loss beyond the float range
        raise TrainingDiverged(step, "the training loss is beyond the float range") from None
    if not math.isfinite(loss):
        raise TrainingDiverged(step, f"the training loss is {loss}")
    bad = _first_nonfinite(grads)
    if bad is not None:
        raise TrainingDiverged(step, f"the gradient of {bad!r} contains NaN or inf")
    return loss, grads


def train(model, task, optimizer, *, steps: int, batch_size: int, seed, eval_every: int = 10,
          eval_size: int = 256, out_dir=None, checkpoint_every: int = 50, resume: bool = True,
          progress=None, metrics_fn: Callable | None = None,
          config: Mapping[str, Any] | None = None, eval_batch=None,
          eval_steps: Iterable[int] | None = None, on_eval: Callable | None = None,
          on_step: Callable | None = None) -> History:
    """Train ``model`` on fresh batches of ``task`` with ``optimizer``; evaluate, log and checkpoint.

    Parameters
    ----------
    model
        Has ``params`` (dict of float arrays, updated in place), ``loss_and_grads(batch) ->
        (loss, grads)`` and ``forward(batch) -> ForwardResult``; optionally ``config() -> dict``.
    task
        Has ``sample(rng, batch_size) -> batch`` (a ``Seq2SeqBatch`` or ``ClassificationBatch``).
        :class:`miniattn.tasks.FixedBatchTask` turns one batch into full-batch gradient descent.
    optimizer
        Has ``step(grads)``, ``state_dict()``, ``load_state_dict(state)``, built on ``model.params``
        (see :mod:`miniattn.optim`).
    steps : int >= 0
        Total number of optimiser steps of the run (a resumed run continues up to ``steps``).
    batch_size : int >= 1
    seed : int >= 0 or numpy.random.SeedSequence
        Root of the training-batch and held-out streams (:func:`seed_streams`).
    eval_every : int >= 1, default 10
        Evaluate after every ``eval_every``-th step, and also at step 0 and at step ``steps``.
    eval_size : int >= 1, default 256
        Size of the fixed held-out batch, drawn once from its own stream. A task with a
        ``held_out_batch()`` method (:class:`miniattn.tasks.HeldOutSplit`) is evaluated on its whole
        held-out split instead, ``eval_size`` examples per forward pass, so that memory is bounded by
        the chunk, not the split (:func:`miniattn.metrics.evaluate`). An ``eval_batch`` larger than
        ``eval_size`` is evaluated in chunks the same way.
    out_dir : path, optional
        Where to write ``config.json``, ``metrics.jsonl`` and ``checkpoint.npz``; nothing is written
        when None.
    checkpoint_every : int >= 1, default 50
        Write a checkpoint after every ``checkpoint_every``-th step and at step ``steps``.
    resume : bool, default True
        Continue from ``out_dir/checkpoint.npz`` if it exists (validated in full by
        :func:`miniattn.checkpoint.restore`, else :class:`CheckpointError`; a checkpoint of another
        run -- another run key, see *The run key* in the module docstring -- is refused naming what
        differs, e.g. ``model.uniform``). With False, start over:
        an existing checkpoint is deleted and the metrics log restarted.
    progress : None, bool or callable, default None
        None: a one-line display on stderr when stderr is a terminal; True: always; False: never; a
        callable receives a :class:`ProgressEvent` after every step, after that step's checkpoint.
    metrics_fn : callable, optional
        ``metrics_fn(model, held_out_batch) -> dict`` of extra JSON-able metrics for each record.
    config : mapping, optional
        Extra run configuration (e.g. command-line arguments) stored in ``config.json``.
    eval_batch : batch, optional
        Evaluate on this batch instead of a sample drawn from the held-out stream.
    eval_steps : iterable of int in [0, steps], optional
        Evaluate exactly at these steps (plus 0 and ``steps``) instead of every ``eval_every``:
        e.g. densely through an early transition and sparsely after it.
    on_eval : callable, optional
        ``on_eval(step, model, record)`` after every evaluation, with the record just logged: an
        observer for what a record cannot hold (e.g. attention maps at each checkpoint).
    on_step : callable, optional
        ``on_step(step, model, loss, grads) -> mapping of name -> float (or None)`` after every
        optimiser step; the values are appended to ``history.per_step[name]`` (and checkpointed).

    Returns
    -------
    History

    Raises
    ------
    TrainingDiverged
        When the loss, a gradient or a parameter becomes non-finite, or a layer meets a non-finite
        value inside the pass (the step is named; no checkpoint is written for that step or after).
    """
    steps = integer("steps", steps, 0)
    batch_size = integer("batch_size", batch_size, 1)
    eval_every = integer("eval_every", eval_every, 1)
    eval_size = integer("eval_size", eval_size, 1)
    checkpoint_every = integer("checkpoint_every", checkpoint_every, 1)
    for attr in ("params", "loss_and_grads", "forward"):
        if not hasattr(model, attr):
            raise TypeError(f"model must have {attr!r} (see miniattn.models), got {type(model).__name__}")
    if not callable(getattr(task, "sample", None)):
        raise TypeError(f"task must have a sample(rng, batch_size) method, got {type(task).__name__}")
    for attr in ("step", "state_dict", "load_state_dict"):
        if not callable(getattr(optimizer, attr, None)):
            raise TypeError(f"optimizer must have a {attr}() method, got {type(optimizer).__name__}")
    if getattr(optimizer, "params", model.params) is not model.params:
        raise ValueError("optimizer must be built on model.params (the same dict), "
                         "otherwise its updates would not reach the model")
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}")
    for name, hook in (("metrics_fn", metrics_fn), ("on_eval", on_eval), ("on_step", on_step)):
        if hook is not None and not callable(hook):
            raise TypeError(f"{name} must be callable, got {type(hook).__name__}")
    schedule = _eval_schedule(steps, eval_every, eval_steps)
    callback = progress_callback(progress)

    train_ss, eval_ss = seed_streams(seed)
    train_rng = np.random.default_rng(train_ss)
    if eval_batch is None:
        # A finite dataset split by miniattn.tasks.HeldOutSplit evaluates on its held-out examples;
        # an endless synthetic task on a fresh sample from its own stream.
        held_out = getattr(task, "held_out_batch", None)
        eval_batch = held_out() if callable(held_out) else task.sample(np.random.default_rng(eval_ss), eval_size)

    run_key = plain_record({
        "seed": {"entropy": train_ss.entropy, "spawn_key": list(train_ss.spawn_key[:-1])},
        "batch_size": batch_size, "eval_every": eval_every, "eval_size": eval_size,
        "params": {k: [list(np.shape(v)), str(np.asarray(v).dtype)] for k, v in model.params.items()},
        "optimizer": _optimizer_config(optimizer),
        "optimizer_state": sorted(optimizer.state_dict()),
        "model": _key_description(model), "task": _key_description(task),
    })
    if eval_steps is not None:
        run_key["eval_steps"] = sorted(schedule)

    out = Path(out_dir) if out_dir is not None else None
    history = History()
    start = 0
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        checkpoint_path = out / CHECKPOINT_NAME
        metrics_path = out / METRICS_NAME
        if checkpoint_path.exists() and resume:
            start, history = restore(checkpoint_path, _resume_key(checkpoint_path, run_key), steps, model,
                                     optimizer, train_rng)
            # Drop evaluations that the interrupted run logged after its last checkpoint.
            io.atomic_write_text(metrics_path, "".join(io.dumps_json(r) + "\n" for r in history.evals))
        else:
            if checkpoint_path.exists():
                checkpoint_path.unlink()
            io.atomic_write_text(metrics_path, "")
        if start == 0 or not (out / CONFIG_NAME).exists():
            full_config = run_config(model, task, optimizer, steps=steps, batch_size=batch_size,
                                     eval_every=eval_every, eval_size=eval_size,
                                     checkpoint_every=checkpoint_every, config=config)
            io.atomic_write_json(out / CONFIG_NAME, io.run_metadata(full_config, seed))

    def log_eval(step: int) -> dict:
        try:
            record = evaluate(model, eval_batch, metrics_fn, chunk_size=eval_size)
        except (NonFiniteError, FloatingPointError, OverflowError, RuntimeWarning) as exc:
            # As in _loss_and_grads: an overflow under errstate('raise'), a warnings filter or Python's float.
            raise TrainingDiverged(step, f"a non-finite value in the evaluation ({exc})") from None
        if record["loss"] is None:
            raise TrainingDiverged(step, "the held-out loss is not finite")
        since = history.evals[-1]["step"] if history.evals else 0
        recent = history.train_loss[since:step]
        record = {"step": step, "train_loss": float(np.mean(recent)) if recent else None, **record}
        history.evals.append(record)
        if out is not None:
            io.append_jsonl(out / METRICS_NAME, record)
        if on_eval is not None:
            on_eval(step, model, record)
        return record

    def write_checkpoint(step: int) -> None:
        save_checkpoint(out / CHECKPOINT_NAME, Checkpoint(
            step=step, params=model.params, optimizer_state=optimizer.state_dict(),
            rng_state=train_rng.bit_generator.state, history=history, run_key=run_key))

    began = time.monotonic()
    rate = RateEstimator()
    if start == 0 and not history.evals:
        record = log_eval(0)
        if out is not None and steps == 0:
            write_checkpoint(0)
        if callback is not None:
            callback(ProgressEvent(0, steps, None, record, history, 0.0, None))

    for step in range(start + 1, steps + 1):
        batch = task.sample(train_rng, batch_size)
        loss, grads = _loss_and_grads(model, batch, step)
        # An update that overflows is reported as TrainingDiverged naming the parameter, which says
        # more than NumPy's overflow warning would: below, or by an optimiser that checks its own
        # update (miniattn.optim raises NonFiniteError, leaving the parameters as they were).
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                optimizer.step(grads)
        except NonFiniteError as exc:
            raise TrainingDiverged(step, f"the parameter update is not finite ({exc})") from None
        bad = _first_nonfinite(model.params)
        if bad is not None:
            raise TrainingDiverged(step, f"the parameter {bad!r} contains NaN or inf after the update")
        history.train_loss.append(loss)
        if on_step is not None:
            for name, value in _step_record(on_step, step, model, loss, grads).items():
                history.per_step.setdefault(name, []).append(value)
        record = log_eval(step) if step in schedule else None
        if out is not None and (step % checkpoint_every == 0 or step == steps):
            write_checkpoint(step)
        if callback is not None:
            rate.update(step)
            callback(ProgressEvent(step, steps, loss, record, history, time.monotonic() - began,
                                   rate.eta(steps - step)))
    return history
