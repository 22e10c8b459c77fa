"""The training loop: seeded minibatch training with held-out evaluation, atomic checkpoints and
bit-identical resumption.

One call of :func:`train` runs ``steps`` optimiser steps of ``model`` on fresh batches from ``task``::

    for k = 1 .. steps:
        batch_k  = task.sample(train_rng, batch_size)
        loss, g  = model.loss_and_grads(batch_k)        # stop with TrainingDiverged if not finite
        optimizer.step(g)                               # updates model.params in place
        every eval_every steps (and at k = 0 and k = steps): evaluate on the held-out batch
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

Files in ``out_dir``: ``config.json`` (run metadata, :func:`miniattn.io.run_metadata`),
``metrics.jsonl`` (one evaluation record per line), ``checkpoint.npz``.

Example
-------
>>> from miniattn.optim import Adam
>>> history = train(model, task, Adam(model.params, lr=1e-3), steps=200, batch_size=128,
...                 seed=0, out_dir="runs/copy-subset")            # doctest: +SKIP
>>> history.metric("token_accuracy")[-1]                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from miniattn import io

__all__ = [
    "TrainingDiverged", "History", "ProgressEvent", "Checkpoint", "train", "evaluate",
    "token_accuracy", "attention_accuracy", "salient_attention_accuracy", "save_checkpoint",
    "load_checkpoint", "seed_streams", "CHECKPOINT_NAME", "METRICS_NAME", "CONFIG_NAME",
]

CHECKPOINT_NAME = "checkpoint.npz"
METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.json"
_CHECKPOINT_FORMAT = 1

#: Keys of every evaluation record that :func:`evaluate` fills in itself; ``metrics_fn`` may not reuse them.
BUILTIN_METRICS = ("step", "train_loss", "loss", "token_accuracy", "attention_accuracy",
                   "attention_accuracy_per_head")


class TrainingDiverged(ValueError):
    """The loss, a gradient or a parameter became NaN or infinite.

    Attributes
    ----------
    step : int
        The step (1-based; 0 = the initial evaluation) at which the non-finite value appeared. The
        checkpoint on disk, if any, is the last one written before it and holds finite values.
    """

    def __init__(self, step: int, what: str):
        self.step = int(step)
        super().__init__(f"training diverged at step {self.step}: {what}; "
                         "the last finite checkpoint (if any) was kept")


# --------------------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------------------

@dataclass
class History:
    """What a run has produced so far.

    Attributes
    ----------
    evals : list of dict
        One record per evaluation, in step order: ``step``, ``train_loss`` (mean minibatch loss since
        the previous evaluation; None at step 0), ``loss`` (held-out cross-entropy per counted
        output), ``token_accuracy``, ``attention_accuracy`` (None where the task has no alignment),
        ``attention_accuracy_per_head`` (multi-head models only) and any ``metrics_fn`` keys. The
        records hold plain JSON values (None for NaN), exactly as in ``metrics.jsonl``.
    train_loss : list of float
        ``train_loss[k - 1]`` is the minibatch loss of step k.
    """

    evals: list[dict] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)

    @property
    def steps_done(self) -> int:
        """The number of optimiser steps taken."""
        return len(self.train_loss)

    @property
    def last(self) -> dict | None:
        """The latest evaluation record (None before the first)."""
        return self.evals[-1] if self.evals else None

    def eval_steps(self) -> np.ndarray:
        """int array (n_evals,): the step of each evaluation record."""
        return np.array([r["step"] for r in self.evals], dtype=np.int64)

    def metric(self, name: str) -> np.ndarray:
        """float array (n_evals,) (or (n_evals, H) for a per-head metric) of one evaluation metric.

        Missing or None values become NaN, so the result can be plotted or averaged with ``nanmean``.
        """
        if self.evals and not any(name in r for r in self.evals):
            raise KeyError(f"no evaluation record has the metric {name!r}; "
                           f"available: {sorted(set().union(*self.evals))}")
        values = [r.get(name) for r in self.evals]
        return np.array([[np.nan if x is None else x for x in v] if isinstance(v, list)
                         else (np.nan if v is None else v) for v in values], dtype=np.float64)

    def to_dict(self) -> dict:
        return {"evals": self.evals, "train_loss": self.train_loss}

    @classmethod
    def from_dict(cls, data: Mapping) -> "History":
        return cls(evals=list(data["evals"]), train_loss=[float(x) for x in data["train_loss"]])


class ProgressEvent(NamedTuple):
    """What a ``progress`` callable receives after every step (and after the initial evaluation).

    ``step`` counts optimiser steps (0 = initial evaluation); ``train_loss`` is the loss of this
    step's minibatch (None at step 0); ``record`` is the evaluation record made at this step, if
    any; ``elapsed`` and ``eta`` are wall-clock seconds (this process only; never stored).
    """

    step: int
    steps: int
    train_loss: float | None
    record: dict | None
    history: History
    elapsed: float
    eta: float | None


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------

def _gold_and_mask(batch) -> tuple[np.ndarray, np.ndarray]:
    """Gold outputs (B, T) and the mask of counted positions (B, T) of a seq2seq or classification batch."""
    if hasattr(batch, "target_out"):
        return np.asarray(batch.target_out), np.asarray(batch.target_mask, dtype=bool)
    if hasattr(batch, "labels"):
        labels = np.asarray(batch.labels)
        return labels[:, None], np.ones((labels.shape[0], 1), dtype=bool)
    raise TypeError(f"batch must be a Seq2SeqBatch or a ClassificationBatch (with target_out or labels), "
                    f"got {type(batch).__name__}")


def token_accuracy(log_probs, gold, mask=None) -> float:
    """Fraction of counted output positions whose argmax class is the gold output.

    ``acc = Σ_{b,t} m_{bt} [argmax_c log_probs[b,t,c] = gold[b,t]] / Σ_{b,t} m_{bt}``

    Parameters
    ----------
    log_probs : float array (B, T, C)
    gold : int array (B, T)
    mask : bool array (B, T), optional
        True where the position counts (default: all).

    Returns
    -------
    float (NaN when no position counts).
    """
    log_probs = np.asarray(log_probs)
    gold = np.asarray(gold)
    if log_probs.ndim != 3:
        raise ValueError(f"log_probs must have shape (B, T, C), got {log_probs.shape}")
    if gold.shape != log_probs.shape[:2]:
        raise ValueError(f"gold must have shape {log_probs.shape[:2]}, got {gold.shape}")
    mask = np.ones(gold.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != gold.shape:
        raise ValueError(f"mask must have shape {gold.shape}, got {mask.shape}")
    counted = int(mask.sum())
    if counted == 0:
        return math.nan
    hits = (np.argmax(log_probs, axis=-1) == gold) & mask
    return float(hits.sum() / counted)


def _hit_rate(attention: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Fraction of rows (b, t) with any target whose argmax attention lands on a target position.

    attention (..., B, T, S), targets bool (B, T, S) -> array (...) (NaN where no row has a target).
    """
    if attention.shape[-3:] != targets.shape:
        raise ValueError(f"attention must end with shape {targets.shape}, got {attention.shape}")
    valid = targets.any(axis=-1)                                        # (B, T)
    n_valid = int(valid.sum())
    if n_valid == 0:
        return np.full(attention.shape[:-3], np.nan)
    pred = np.argmax(attention, axis=-1)                                # (..., B, T)
    # targets[b, t, pred[..., b, t]] by broadcasting the (B, T, S) targets against the leading axes.
    hit = np.take_along_axis(np.broadcast_to(targets, attention.shape), pred[..., None], axis=-1)[..., 0]
    return (hit & valid).sum(axis=(-2, -1)) / n_valid


def attention_accuracy(attention, alignment, mask=None):
    """Fraction of aligned output positions whose most-attended source position is the aligned one.

    ``acc = Σ [argmax_s α[b,t,s] = a[b,t]] / #{(b,t) : m_{bt} and a[b,t] >= 0}``

    Parameters
    ----------
    attention : float array (B, T, S), or (H, B, T, S) for H heads
    alignment : int array (B, T)
        Aligned source position of each output position; -1 where there is none (not counted).
    mask : bool array (B, T), optional
        Output positions that count (default: all).

    Returns
    -------
    float, or float array (H,) (one accuracy per head) for 4-d attention; NaN when no position counts.
    """
    attention = np.asarray(attention)
    alignment = np.asarray(alignment)
    if attention.ndim not in (3, 4):
        raise ValueError(f"attention must have shape (B, T, S) or (H, B, T, S), got {attention.shape}")
    B, T, S = attention.shape[-3:]
    if alignment.shape != (B, T):
        raise ValueError(f"alignment must have shape {(B, T)}, got {alignment.shape}")
    if alignment.dtype.kind not in "iu":
        raise TypeError(f"alignment must be an integer array, got dtype {alignment.dtype}")
    if alignment.size and (alignment.min() < -1 or alignment.max() >= S):
        raise ValueError(f"alignment must lie in [-1, {S}), got values in [{alignment.min()}, {alignment.max()}]")
    mask = np.ones((B, T), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if mask.shape != (B, T):
        raise ValueError(f"mask must have shape {(B, T)}, got {mask.shape}")
    # One-hot of the aligned position, empty where there is no alignment or the output is masked.
    targets = (np.arange(S) == alignment[..., None]) & (mask & (alignment >= 0))[..., None]
    rate = _hit_rate(attention, targets)
    return float(rate) if attention.ndim == 3 else rate


def salient_attention_accuracy(attention, salient):
    """Classifier attention accuracy: fraction of sequences whose most-attended token is a salient one.

    ``acc = Σ_b [salient[b, argmax_s α[b,0,s]]] / #{b : any salient[b]}``

    Parameters
    ----------
    attention : float array (B, 1, S), or (H, B, 1, S)
    salient : bool array (B, S)
        Planted label words; sequences without any are not counted.

    Returns
    -------
    float, or float array (H,) for 4-d attention; NaN when no sequence has a salient token.
    """
    attention = np.asarray(attention)
    salient = np.asarray(salient)
    if attention.ndim not in (3, 4) or attention.shape[-2] != 1:
        raise ValueError(f"attention must have shape (B, 1, S) or (H, B, 1, S), got {attention.shape}")
    if salient.dtype != np.bool_:
        raise TypeError(f"salient must be a boolean array, got dtype {salient.dtype}")
    if salient.shape != (attention.shape[-3], attention.shape[-1]):
        raise ValueError(f"salient must have shape {(attention.shape[-3], attention.shape[-1])}, "
                         f"got {salient.shape}")
    rate = _hit_rate(attention, salient[:, None, :])
    return float(rate) if attention.ndim == 3 else rate


def _plain(record: Mapping) -> dict:
    """The record as plain JSON values, exactly as it will read back from metrics.jsonl."""
    return json.loads(io.dumps_json(record))


def evaluate(model, batch, metrics_fn: Callable | None = None) -> dict:
    """Evaluate ``model`` on ``batch``: held-out loss, token accuracy, attention accuracy, extras.

    * ``loss`` = −Σ m_{bt} log p(gold_{bt}) / Σ m_{bt} (mean cross-entropy over counted outputs),
      computed from ``model.forward(batch).log_probs``.
    * ``token_accuracy`` — :func:`token_accuracy`.
    * ``attention_accuracy`` — for a seq2seq batch with ``alignment``: :func:`attention_accuracy` of
      the attention (for a multi-head model, of the head-averaged attention, which is what the
      model's averaged context uses); for a classification batch with ``salient``:
      :func:`salient_attention_accuracy`; None otherwise.
    * ``attention_accuracy_per_head`` — multi-head models only: the same accuracy per head (list).
    * the entries of ``metrics_fn(model, batch)`` (a mapping), if given.

    Returns
    -------
    dict of plain JSON values (NaN -> None).
    """
    gold, mask = _gold_and_mask(batch)
    result = model.forward(batch)
    log_probs = np.asarray(result.log_probs)
    attention = np.asarray(result.attention)
    if log_probs.ndim != 3 or log_probs.shape[:2] != gold.shape:
        raise ValueError(f"model.forward returned log_probs of shape {log_probs.shape}; "
                         f"expected (B, T, C) with (B, T) = {gold.shape}")
    counted = int(mask.sum())
    # Gold ids at uncounted positions may be anything (padding); index with a safe 0 there.
    safe_gold = np.where(mask, gold, 0)
    gold_log_probs = np.take_along_axis(log_probs, safe_gold[..., None], axis=-1)[..., 0]
    with np.errstate(invalid="ignore"):  # -inf * 0 at masked positions is discarded by the where
        total = np.sum(np.where(mask, gold_log_probs, 0.0))
    record: dict[str, Any] = {
        "loss": float(-total / counted) if counted else math.nan,
        "token_accuracy": token_accuracy(log_probs, gold, mask),
        "attention_accuracy": None,
    }
    per_head = None
    if getattr(batch, "alignment", None) is not None and hasattr(batch, "target_out"):
        if attention.ndim == 4:
            per_head = attention_accuracy(attention, batch.alignment, mask)
        record["attention_accuracy"] = attention_accuracy(
            attention.mean(axis=0) if attention.ndim == 4 else attention, batch.alignment, mask)
    elif getattr(batch, "salient", None) is not None and hasattr(batch, "labels"):
        if attention.ndim == 4:
            per_head = salient_attention_accuracy(attention, batch.salient)
        record["attention_accuracy"] = salient_attention_accuracy(
            attention.mean(axis=0) if attention.ndim == 4 else attention, batch.salient)
    if per_head is not None:
        record["attention_accuracy_per_head"] = per_head
    if metrics_fn is not None:
        extra = metrics_fn(model, batch)
        if not isinstance(extra, Mapping):
            raise TypeError(f"metrics_fn must return a mapping, got {type(extra).__name__}")
        clash = sorted(set(extra) & set(BUILTIN_METRICS))
        if clash:
            raise ValueError(f"metrics_fn must not return the built-in metric names {clash}")
        record.update(extra)
    return _plain(record)


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------

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
        "format": np.array(_CHECKPOINT_FORMAT),
        "step": np.array(int(checkpoint.step), dtype=np.int64),
        "rng_state": np.array(io.dumps_json(checkpoint.rng_state)),
        "run_key": np.array(io.dumps_json(checkpoint.run_key)),
        "history/evals": np.array(io.dumps_json(checkpoint.history.evals)),
        "history/train_loss": np.array(checkpoint.history.train_loss, dtype=np.float64),
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
    data = io.load_npz(path)
    required = {"format", "step", "rng_state", "run_key", "history/evals", "history/train_loss"}
    if not required <= set(data):
        raise ValueError(f"{path} is not a miniattn checkpoint (missing {sorted(required - set(data))})")
    if int(data["format"]) != _CHECKPOINT_FORMAT:
        raise ValueError(f"{path} has checkpoint format {int(data['format'])}, expected {_CHECKPOINT_FORMAT}")
    history = History(evals=json.loads(str(data["history/evals"])),
                      train_loss=data["history/train_loss"].tolist())
    return Checkpoint(
        step=int(data["step"]),
        params={k[len("params/"):]: v for k, v in data.items() if k.startswith("params/")},
        optimizer_state={k[len("optimizer/"):]: v for k, v in data.items() if k.startswith("optimizer/")},
        rng_state=json.loads(str(data["rng_state"])),
        history=history,
        run_key=json.loads(str(data["run_key"])),
    )


# --------------------------------------------------------------------------------------------------
# Helpers of train()
# --------------------------------------------------------------------------------------------------

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


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


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
    return _plain(config)


def _describe(obj) -> dict:
    """``obj.config()`` when the object has one, else its class name (for config.json)."""
    config = getattr(obj, "config", None)
    if callable(config):
        return {"class": type(obj).__name__, **config()}
    return {"class": type(obj).__name__, "repr": repr(obj)}


def _first_nonfinite(arrays: Mapping[str, np.ndarray]) -> str | None:
    for name, value in arrays.items():
        if not np.all(np.isfinite(value)):
            return name
    return None


class _StderrProgress:
    """A one-line progress display on stderr (step, loss, accuracy, ETA), redrawn at most 10×/s."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.last_draw = -math.inf
        self.accuracy = None

    def __call__(self, event: ProgressEvent) -> None:
        if event.record is not None:
            self.accuracy = event.record.get("token_accuracy")
        now = time.monotonic()
        final = event.step == event.steps
        if not final and now - self.last_draw < 0.1:
            return
        self.last_draw = now
        loss = "   -    " if event.train_loss is None else f"{event.train_loss:8.4f}"
        acc = "  -  " if self.accuracy is None else f"{self.accuracy:5.3f}"
        eta = "?" if event.eta is None else f"{event.eta:6.1f}s"
        width = len(str(event.steps))
        self.stream.write(f"\rstep {event.step:{width}d}/{event.steps}  loss {loss}  acc {acc}  ETA {eta} ")
        if final:
            self.stream.write("\n")
        self.stream.flush()


def _progress_callback(progress) -> Callable[[ProgressEvent], None] | None:
    if progress is None:
        # Automatic: a display only for a human watching a terminal, never in logs or tests.
        return _StderrProgress() if sys.stderr is not None and sys.stderr.isatty() else None
    if progress is True:
        return _StderrProgress()
    if progress is False:
        return None
    if callable(progress):
        return progress
    raise TypeError(f"progress must be None, a bool or a callable, got {type(progress).__name__}")


# --------------------------------------------------------------------------------------------------
# train()
# --------------------------------------------------------------------------------------------------

def train(model, task, optimizer, *, steps: int, batch_size: int, seed, eval_every: int = 10,
          eval_size: int = 256, out_dir=None, checkpoint_every: int = 50, resume: bool = True,
          progress=None, metrics_fn: Callable | None = None,
          config: Mapping[str, Any] | None = None) -> History:
    """Train ``model`` on fresh batches of ``task`` with ``optimizer``; evaluate, log and checkpoint.

    Parameters
    ----------
    model
        Has ``params`` (dict of float arrays, updated in place), ``loss_and_grads(batch) ->
        (loss, grads)`` and ``forward(batch) -> ForwardResult``; optionally ``config() -> dict``.
    task
        Has ``sample(rng, batch_size) -> batch`` (a ``Seq2SeqBatch`` or ``ClassificationBatch``).
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
        ``held_out_batch()`` method (:class:`miniattn.tasks.HeldOutSplit`) is evaluated on that batch
        instead, and ``eval_size`` is not used.
    out_dir : path, optional
        Where to write ``config.json``, ``metrics.jsonl`` and ``checkpoint.npz``; nothing is written
        when None.
    checkpoint_every : int >= 1, default 50
        Write a checkpoint after every ``checkpoint_every``-th step and at step ``steps``.
    resume : bool, default True
        Continue from ``out_dir/checkpoint.npz`` if it exists (it must come from the same seed,
        batch and evaluation settings, parameter shapes and optimiser, else ``ValueError``). With
        False, start over: an existing checkpoint is deleted and the metrics log restarted.
    progress : None, bool or callable, default None
        None: a one-line display on stderr when stderr is a terminal; True: always; False: never; a
        callable receives a :class:`ProgressEvent` after every step, after that step's checkpoint.
    metrics_fn : callable, optional
        ``metrics_fn(model, held_out_batch) -> dict`` of extra metrics for each evaluation record.
    config : mapping, optional
        Extra run configuration (e.g. command-line arguments) stored in ``config.json``.

    Returns
    -------
    History

    Raises
    ------
    TrainingDiverged
        When the loss, a gradient or a parameter becomes non-finite (the step is named; no
        checkpoint is written for that step or after it).
    """
    steps = _check_count("steps", steps, 0)
    batch_size = _check_count("batch_size", batch_size, 1)
    eval_every = _check_count("eval_every", eval_every, 1)
    eval_size = _check_count("eval_size", eval_size, 1)
    checkpoint_every = _check_count("checkpoint_every", checkpoint_every, 1)
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
    callback = _progress_callback(progress)

    train_ss, eval_ss = seed_streams(seed)
    train_rng = np.random.default_rng(train_ss)
    # A finite dataset split by miniattn.tasks.HeldOutSplit evaluates on its held-out examples;
    # an endless synthetic task on a fresh sample from its own stream.
    held_out = getattr(task, "held_out_batch", None)
    eval_batch = held_out() if callable(held_out) else task.sample(np.random.default_rng(eval_ss), eval_size)

    run_key = _plain({
        "seed": {"entropy": train_ss.entropy, "spawn_key": list(train_ss.spawn_key[:-1])},
        "batch_size": batch_size, "eval_every": eval_every, "eval_size": eval_size,
        "params": {k: [list(np.shape(v)), str(np.asarray(v).dtype)] for k, v in model.params.items()},
        "optimizer": _optimizer_config(optimizer),
        "optimizer_state": sorted(optimizer.state_dict()),
    })

    out = Path(out_dir) if out_dir is not None else None
    history = History()
    start = 0
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        checkpoint_path = out / CHECKPOINT_NAME
        metrics_path = out / METRICS_NAME
        if checkpoint_path.exists() and resume:
            start, history = _restore(checkpoint_path, run_key, steps, model, optimizer, train_rng)
            # Drop evaluations that the interrupted run logged after its last checkpoint.
            io.atomic_write_text(metrics_path, "".join(io.dumps_json(r) + "\n" for r in history.evals))
        else:
            if checkpoint_path.exists():
                checkpoint_path.unlink()
            io.atomic_write_text(metrics_path, "")
        if start == 0 or not (out / CONFIG_NAME).exists():
            full_config = {
                "train": {"steps": steps, "batch_size": batch_size, "eval_every": eval_every,
                          "eval_size": eval_size, "checkpoint_every": checkpoint_every},
                "model": _describe(model), "task": _describe(task), "optimizer": run_key["optimizer"],
                "run": dict(config or {}),
            }
            io.atomic_write_json(out / CONFIG_NAME, io.run_metadata(full_config, seed))

    def log_eval(step: int) -> dict:
        record = evaluate(model, eval_batch, metrics_fn)
        if record["loss"] is None:
            raise TrainingDiverged(step, "the held-out loss is not finite")
        since = history.evals[-1]["step"] if history.evals else 0
        recent = history.train_loss[since:step]
        record = {"step": step, "train_loss": float(np.mean(recent)) if recent else None, **record}
        history.evals.append(record)
        if out is not None:
            io.append_jsonl(out / METRICS_NAME, record)
        return record

    def write_checkpoint(step: int) -> None:
        save_checkpoint(out / CHECKPOINT_NAME, Checkpoint(
            step=step, params=model.params, optimizer_state=optimizer.state_dict(),
            rng_state=train_rng.bit_generator.state, history=history, run_key=run_key))

    began = time.monotonic()
    if start == 0 and not history.evals:
        record = log_eval(0)
        if out is not None and steps == 0:
            write_checkpoint(0)
        if callback is not None:
            callback(ProgressEvent(0, steps, None, record, history, 0.0, None))

    for step in range(start + 1, steps + 1):
        batch = task.sample(train_rng, batch_size)
        loss, grads = model.loss_and_grads(batch)
        loss = float(loss)
        if not math.isfinite(loss):
            raise TrainingDiverged(step, f"the training loss is {loss}")
        bad = _first_nonfinite(grads)
        if bad is not None:
            raise TrainingDiverged(step, f"the gradient of {bad!r} contains NaN or inf")
        # An update that overflows is reported below as TrainingDiverged naming the parameter, which
        # says more than NumPy's overflow warning would.
        with np.errstate(over="ignore", invalid="ignore"):
            optimizer.step(grads)
        bad = _first_nonfinite(model.params)
        if bad is not None:
            raise TrainingDiverged(step, f"the parameter {bad!r} contains NaN or inf after the update")
        history.train_loss.append(loss)
        record = log_eval(step) if step % eval_every == 0 or step == steps else None
        if out is not None and (step % checkpoint_every == 0 or step == steps):
            write_checkpoint(step)
        if callback is not None:
            elapsed = time.monotonic() - began
            eta = elapsed / (step - start) * (steps - step)
            callback(ProgressEvent(step, steps, loss, record, history, elapsed, eta))
    return history


def _restore(path: Path, run_key: dict, steps: int, model, optimizer, train_rng) -> tuple[int, History]:
    """Load a checkpoint into model, optimiser and generator (in place); return (step, history)."""
    ck = load_checkpoint(path)
    if ck.run_key != run_key:
        differ = sorted(k for k in set(ck.run_key) | set(run_key) if ck.run_key.get(k) != run_key.get(k))
        raise ValueError(f"the checkpoint {path} belongs to a different run (differs in {differ}); "
                         "use resume=False to start over or choose another out_dir")
    if ck.step > steps:
        raise ValueError(f"the checkpoint {path} is at step {ck.step}, beyond steps={steps}")
    if ck.rng_state.get("bit_generator") != type(train_rng.bit_generator).__name__:
        raise ValueError(f"the checkpoint's generator is {ck.rng_state.get('bit_generator')}, "
                         f"expected {type(train_rng.bit_generator).__name__}")
    for name, value in ck.params.items():
        # In place: the optimiser (and any views the model holds) refer to these very arrays.
        model.params[name][...] = value
    optimizer.load_state_dict(ck.optimizer_state)
    train_rng.bit_generator.state = ck.rng_state
    return ck.step, ck.history
