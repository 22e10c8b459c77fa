"""Pictures of attention being learned: snapshots of α during training, and ``miniattn plot --run``.

Two halves:

* :class:`SnapshotRecorder` — an ``on_eval(step, model, record)`` hook for :func:`miniattn.train.train`
  that records, at every evaluation step k, the attention of a fixed *probe batch*,

      α_k = model.forward(probe).attention      (B, T, S), or (H, B, T, S) for a multi-head model,

  α_k[b, t, s] being the weight that output position t of probe example b puts on source position s
  after k optimiser steps. The snapshots are written atomically to ``<out_dir>/attention.npz``
  after every evaluation (:func:`miniattn.io.atomic_save_npz`; plain arrays, no pickle).
* :func:`plot_command` — draws a run directory's learning curves (from ``metrics.jsonl``) and the
  attention maps α of one probe example at chosen snapshots as PNGs, plus an animated GIF of α over
  training (:class:`matplotlib.animation.PillowWriter`). :func:`add_plot_arguments` declares its
  options, for the ``miniattn`` command line.

Snapshot file (``attention.npz``)::

    format     ()              int      SNAPSHOT_FORMAT
    steps      (K,)            int64    strictly increasing evaluation steps, >= 0
    attention  (K, B, T, S)    float32  α_k of the probe batch; (K, H, B, T, S) for H heads
    source     (B, S)          int64    the probe's source (or classifier token) ids
    target     (B, T)          int64    the probe's gold outputs (a classifier's label, T = 1)
    stride     ()              int64    the thinning stride (see below)

Thinning. At most ``max_snapshots`` are kept: a step k is kept while ``k % stride == 0``, and the
latest step always; ``stride`` (a power of 2, never decreasing, stored in the file) doubles whenever
more than ``max_snapshots`` would be kept. Which steps survive therefore depends only on the
evaluation steps seen, not on when a run was interrupted.

Resumption. On construction the recorder reads the run's checkpoint step c (``checkpoint.npz``; no
checkpoint: the run starts over, c = −1) and keeps the stored snapshots at steps ≤ c, dropping
later ones (logged by the interrupted run after its last checkpoint, and evaluated again on
resumption). A run restarted from its checkpoint therefore ends with exactly the snapshots of an
uninterrupted one. A snapshot at a step at or before the latest stored one (a run started over with
``resume=False``) also drops the stored snapshots from that step on.

This module is a viewer: neither ``miniattn`` itself nor any model imports it, and matplotlib is
imported only inside the drawing functions (Agg canvas, no pyplot, no display).

Example
-------
>>> recorder = SnapshotRecorder("runs/copy", probe)                   # doctest: +SKIP
>>> train(model, task, opt, steps=200, batch_size=128, seed=0, out_dir="runs/copy",
...       on_eval=recorder)                                           # doctest: +SKIP
>>> load_snapshots("runs/copy").attention.shape                       # doctest: +SKIP
(21, 4, 41, 41)
"""

from __future__ import annotations

import argparse
import io as _bytes_io
import os
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from miniattn import io
from miniattn.checkpoint import CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME

__all__ = ["SNAPSHOT_NAME", "SNAPSHOT_FORMAT", "SnapshotError", "Snapshots", "SnapshotRecorder",
           "load_snapshots", "probe_batch", "evenly_spaced", "parse_steps", "check_records", "draw_curves", "draw_maps",
           "draw_gif", "pillow_available", "add_plot_arguments", "plot_command"]

SNAPSHOT_NAME = "attention.npz"
SNAPSHOT_FORMAT = 1
_KEYS = ("format", "steps", "attention", "source", "target", "stride")


class SnapshotError(ValueError):
    """A snapshot file that is missing, unreadable or inconsistent (the message names the file)."""


class Snapshots(NamedTuple):
    """The attention snapshots of one run, as read by :func:`load_snapshots`.

    Attributes
    ----------
    steps : int64 array (K,)
        Evaluation steps, strictly increasing.
    attention : float32 array (K, B, T, S), or (K, H, B, T, S) for a multi-head model
        α_k of the probe batch at each step.
    source : int64 array (B, S)
        Probe source ids (classifiers: token ids).
    target : int64 array (B, T)
        Probe gold outputs (classifiers: the label, T = 1).
    stride : int
        Thinning stride (power of 2).
    path : Path
        The file they were read from.
    """

    steps: np.ndarray
    attention: np.ndarray
    source: np.ndarray
    target: np.ndarray
    stride: int
    path: Path

    @property
    def heads(self) -> int | None:
        """H for multi-head snapshots, None for single-head ones."""
        return self.attention.shape[1] if self.attention.ndim == 5 else None


# --------------------------------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------------------------------

def _probe_ids(batch) -> tuple[np.ndarray, np.ndarray]:
    """``(source (B, S), target (B, T))`` int64 ids of a Seq2SeqBatch or ClassificationBatch."""
    if hasattr(batch, "source") and hasattr(batch, "target_out"):
        source, target = np.asarray(batch.source), np.asarray(batch.target_out)
    elif hasattr(batch, "tokens") and hasattr(batch, "labels"):
        source, target = np.asarray(batch.tokens), np.asarray(batch.labels)[:, None]
    else:
        raise TypeError(f"probe_batch must be a Seq2SeqBatch or ClassificationBatch, got {type(batch).__name__}")
    if source.ndim != 2 or target.ndim != 2 or source.shape[0] != target.shape[0] or source.shape[0] < 1:
        raise ValueError(f"probe_batch must hold B >= 1 examples with source (B, S) and target (B, T), "
                         f"got shapes {source.shape} and {target.shape}")
    if source.dtype.kind not in "iu" or target.dtype.kind not in "iu":
        raise ValueError(f"probe_batch ids must be integers, got {source.dtype} and {target.dtype}")
    return source.astype(np.int64), target.astype(np.int64)


def probe_batch(task, seed, size: int = 4):
    """A fixed probe batch of ``size`` examples for :class:`SnapshotRecorder`.

    A task with ``held_out_batch()`` (:class:`miniattn.tasks.HeldOutSplit`) gives its first ``size``
    held-out examples; any other task a sample drawn from ``numpy.random.default_rng(seed)``.

    Parameters
    ----------
    task
        Has ``sample(rng, batch_size)``, optionally ``held_out_batch()``.
    seed : int >= 0 or numpy.random.SeedSequence
        Its own stream (e.g. a child of the run's root seed not used by anything else).
    size : int >= 1, default 4
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be an integer >= 1, got {size!r}")
    held_out = getattr(task, "held_out_batch", None)
    if callable(held_out):
        batch = held_out()
        n = len(_probe_ids(batch)[0])
        return type(batch)(*[f[:size] if isinstance(f, np.ndarray) and f.ndim and f.shape[0] == n else f
                             for f in batch])
    if not callable(getattr(task, "sample", None)):
        raise TypeError(f"task must have a sample(rng, batch_size) method, got {type(task).__name__}")
    return task.sample(np.random.default_rng(seed), int(size))


# --------------------------------------------------------------------------------------------------
# Reading and writing the snapshot file
# --------------------------------------------------------------------------------------------------

def _read_snapshot_file(path: Path) -> Snapshots:
    """Read and validate ``path`` (see the module docstring); :class:`SnapshotError` naming it."""
    try:
        data = io.load_npz(path)
    except FileNotFoundError:
        raise SnapshotError(f"{path}: no such snapshot file") from None
    except Exception as exc:  # a truncated or foreign file: zipfile, OSError, ValueError, EOFError ...
        raise SnapshotError(f"{path}: not a readable snapshot file ({type(exc).__name__}: {exc})") from None
    missing = [k for k in _KEYS if k not in data]
    if missing:
        raise SnapshotError(f"{path}: not a snapshot file (missing {', '.join(missing)})")
    fmt = data["format"]
    if fmt.shape != () or fmt.dtype.kind not in "iu" or int(fmt) != SNAPSHOT_FORMAT:
        raise SnapshotError(f"{path}: snapshot format {fmt.tolist()!r}, expected {SNAPSHOT_FORMAT}")
    steps, att, source, target, stride = (data[k] for k in ("steps", "attention", "source", "target", "stride"))
    if steps.ndim != 1 or steps.dtype.kind not in "iu" or steps.size < 1:
        raise SnapshotError(f"{path}: steps must be a non-empty 1-D integer array, got {steps.dtype}{list(steps.shape)}")
    if np.any(steps < 0) or np.any(np.diff(steps) <= 0):
        raise SnapshotError(f"{path}: steps must be >= 0 and strictly increasing, got {steps.tolist()}")
    if stride.shape != () or stride.dtype.kind not in "iu" or int(stride) < 1 or int(stride) & (int(stride) - 1):
        raise SnapshotError(f"{path}: stride must be one integer power of 2, got {stride.tolist()!r}")
    for name, ids in (("source", source), ("target", target)):
        if ids.ndim != 2 or ids.dtype.kind not in "iu":
            raise SnapshotError(f"{path}: {name} must be a 2-D integer array, got {ids.dtype}{list(ids.shape)}")
    B, S = source.shape
    T = target.shape[1]
    if target.shape[0] != B:
        raise SnapshotError(f"{path}: source and target must hold the same B examples, got {B} and {target.shape[0]}")
    if att.dtype.kind != "f" or att.ndim not in (4, 5):
        raise SnapshotError(f"{path}: attention must be a float array (K, B, T, S) or (K, H, B, T, S), "
                            f"got {att.dtype}{list(att.shape)}")
    if att.shape[0] != steps.size or att.shape[-3:] != (B, T, S):
        expected = f"({steps.size}, [H,] {B}, {T}, {S})"
        raise SnapshotError(f"{path}: attention must have shape {expected} (K steps, probe B, T, S), "
                            f"got {list(att.shape)}")
    if not np.all(np.isfinite(att)):
        raise SnapshotError(f"{path}: attention holds NaN or inf")
    if np.any(att < 0) or np.any(att > 1 + 1e-5):
        raise SnapshotError(f"{path}: attention weights must lie in [0, 1]")
    return Snapshots(steps.astype(np.int64), att, source.astype(np.int64), target.astype(np.int64),
                     int(stride), path)


def load_snapshots(run_dir) -> Snapshots:
    """The attention snapshots of a run directory (``<run_dir>/attention.npz``), validated.

    Parameters
    ----------
    run_dir : path
        A run directory (the ``out_dir`` of :func:`miniattn.train.train`), or the snapshot file itself.

    Returns
    -------
    Snapshots
        ``steps`` (K,), ``attention`` (K, B, T, S) or (K, H, B, T, S), probe ``source`` (B, S) and
        ``target`` (B, T) ids.

    Raises
    ------
    SnapshotError
        Naming the file: missing, unreadable, a missing array, wrong shapes or dtypes, non-finite
        or out-of-range weights, steps not strictly increasing.
    """
    path = Path(run_dir)
    if path.is_dir():
        path = path / SNAPSHOT_NAME
    return _read_snapshot_file(path)


def _checkpoint_step(out_dir: Path) -> int:
    """The step of ``out_dir/checkpoint.npz`` (only that entry is read), or −1 without a checkpoint."""
    path = out_dir / CHECKPOINT_NAME
    if not path.exists():
        return -1
    try:
        with np.load(path, allow_pickle=False) as data:
            step = data["step"]
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint, reported by name
        raise SnapshotError(f"{path}: cannot read the checkpoint's step ({type(exc).__name__}: {exc})") from None
    if step.shape != () or step.dtype.kind not in "iu":
        raise SnapshotError(f"{path}: the checkpoint's step must be one integer, got {step.dtype}{list(step.shape)}")
    return int(step)


class SnapshotRecorder:
    """An ``on_eval(step, model, record)`` hook that records α of a fixed probe batch at each evaluation.

    Parameters
    ----------
    out_dir : path
        The run directory (the ``out_dir`` given to :func:`miniattn.train.train`); the snapshots go to
        ``<out_dir>/attention.npz``, rewritten atomically after every evaluation.
    probe_batch : Seq2SeqBatch or ClassificationBatch
        The B probe examples, fixed for the whole run (e.g. :func:`probe_batch`).
    max_snapshots : int >= 2, default 200
        At most this many snapshots are kept (see *Thinning* in the module docstring).

    Raises
    ------
    SnapshotError
        When an existing snapshot file is unreadable, or holds another probe batch (its ids differ).
    """

    def __init__(self, out_dir, probe_batch, *, max_snapshots: int = 200):
        if isinstance(out_dir, bool) or not isinstance(out_dir, (str, os.PathLike)):
            raise TypeError(f"out_dir must be a path, got {type(out_dir).__name__}")
        if isinstance(max_snapshots, bool) or not isinstance(max_snapshots, (int, np.integer)) or max_snapshots < 2:
            raise ValueError(f"max_snapshots must be an integer >= 2, got {max_snapshots!r}")
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / SNAPSHOT_NAME
        self.probe = probe_batch
        self.source, self.target = _probe_ids(probe_batch)
        self.max_snapshots = int(max_snapshots)
        self.steps: list[int] = []
        self.maps: list[np.ndarray] = []
        self.stride = 1
        if self.path.exists():
            keep_until = _checkpoint_step(self.out_dir)
            stored = _read_snapshot_file(self.path)
            if not (np.array_equal(stored.source, self.source) and np.array_equal(stored.target, self.target)):
                raise SnapshotError(f"{self.path}: holds snapshots of another probe batch; use the run's "
                                    "own probe, or delete the file to start the snapshots over")
            kept = stored.steps <= keep_until
            if keep_until >= 0:
                self.stride = stored.stride
            self.steps = [int(s) for s in stored.steps[kept]]
            self.maps = list(stored.attention[kept])
            if not kept.all():
                self._write()

    def __len__(self) -> int:
        return len(self.steps)

    def _thin(self) -> None:
        """Keep steps with ``step % stride == 0`` and the latest; double the stride while too many remain."""
        while True:
            keep = [i for i, s in enumerate(self.steps) if s % self.stride == 0 or i == len(self.steps) - 1]
            if len(keep) <= self.max_snapshots:
                break
            self.stride *= 2
        if len(keep) < len(self.steps):
            self.steps = [self.steps[i] for i in keep]
            self.maps = [self.maps[i] for i in keep]

    def _write(self) -> None:
        if not self.steps:
            if self.path.exists():
                self.path.unlink()
            return
        io.atomic_save_npz(self.path, format=np.int64(SNAPSHOT_FORMAT), steps=np.asarray(self.steps, dtype=np.int64),
                           attention=np.stack(self.maps), source=self.source, target=self.target,
                           stride=np.int64(self.stride))

    def __call__(self, step: int, model, record=None) -> None:
        """Record ``model.forward(probe).attention`` (as float32) at evaluation step ``step``, write the file."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}")
        attention = np.asarray(model.forward(self.probe).attention)
        B, T, S = self.source.shape[0], self.target.shape[1], self.source.shape[1]
        if attention.ndim not in (3, 4) or attention.shape[-3:] != (B, T, S):
            raise ValueError(f"model.forward(probe).attention must be (B, T, S) = ({B}, {T}, {S}) or "
                             f"(H, {B}, {T}, {S}), got {attention.shape}")
        if self.maps and attention.shape != self.maps[0].shape:
            raise ValueError(f"{self.path}: attention of shape {attention.shape} does not match the stored "
                             f"snapshots' {self.maps[0].shape}")
        if not np.all(np.isfinite(attention)):
            raise ValueError(f"the attention at step {step} holds NaN or inf")
        step = int(step)
        if self.steps and step <= self.steps[-1]:
            # A run started over: what was recorded from this step on belongs to the old run.
            cut = next(i for i, s in enumerate(self.steps) if s >= step)
            del self.steps[cut:], self.maps[cut:]
            if step == 0:
                self.stride = 1
        self.steps.append(step)
        self.maps.append(attention.astype(np.float32))
        self._thin()
        self._write()


# --------------------------------------------------------------------------------------------------
# Choosing snapshots
# --------------------------------------------------------------------------------------------------

def evenly_spaced(n: int, k: int = 6) -> np.ndarray:
    """``min(k, n)`` evenly spaced indices into ``range(n)``, the first and the last included.

    ``round(linspace(0, n − 1, min(k, n)))`` with duplicates removed (int64, increasing).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if k == 1:
        return np.array([n - 1], dtype=np.int64)
    return np.unique(np.rint(np.linspace(0, n - 1, min(int(k), int(n)))).astype(np.int64))


def parse_steps(text: str | None, available: np.ndarray, k: int = 6) -> np.ndarray:
    """Indices into ``available`` (the snapshot steps) of ``--steps S1,S2,..``; default ``k`` evenly spaced.

    Raises
    ------
    ValueError
        ``--steps`` not a comma-separated list of integers >= 0 in ASCII digits, or naming a step
        without a snapshot.
    """
    available = np.asarray(available)
    if text is None:
        return evenly_spaced(len(available), k)
    parts = [p.strip() for p in str(text).split(",")]
    # ASCII digits only: str.isdigit and int() also take other scripts' digits ('\u0661' is 1).
    if not parts or any(not (p.isascii() and p.isdigit()) for p in parts):
        raise ValueError(f"--steps must be comma-separated integers >= 0 (e.g. 0,50,100), got {text!r}")
    wanted = [int(p) for p in parts]
    index = {int(s): i for i, s in enumerate(available)}
    missing = [s for s in wanted if s not in index]
    if missing:
        shown = ", ".join(str(int(s)) for s in available[:12]) + (", ..." if len(available) > 12 else "")
        raise ValueError(f"--steps: no snapshot at step {', '.join(map(str, missing))} "
                         f"(snapshots at steps {shown})")
    return np.array(sorted(set(index[s] for s in wanted)), dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------

def _figure(nrows: int, ncols: int, width: float, height: float):
    """A matplotlib Figure on its own Agg canvas (no pyplot state, no display) and its axes (2-D)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained", dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save_png(fig, path: Path) -> Path:
    buf = _bytes_io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    io.atomic_write_bytes(path, buf.getvalue())
    return path


#: The fields of a metrics record that :func:`draw_curves` draws.
_CURVE_KEYS = ("step", "loss", "train_loss", "token_accuracy", "attention_accuracy")
#: Values beyond this magnitude are not drawn (matplotlib cannot lay out an axis spanning ~1e308).
_DRAWABLE = 1e300


def _metric(records: Sequence[dict], key: str) -> np.ndarray:
    """``records[i][key]`` as floats (None or missing -> NaN; see :func:`check_records`)."""
    return np.array([np.nan if r.get(key) is None else _float(r[key]) for r in records], dtype=np.float64)


def _float(value) -> float:
    """``float(value)``; an integer beyond the float range as ±inf (not drawn)."""
    try:
        return float(value)
    except OverflowError:
        return float("inf") if value > 0 else float("-inf")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_records(records: Sequence, path) -> None:
    """Check that the ``metrics.jsonl`` records at ``path`` can be drawn: each is a JSON object whose
    ``step`` is an integer >= 0 and whose ``loss``, ``train_loss``, ``token_accuracy`` and
    ``attention_accuracy`` are numbers or null (absent).

    Raises
    ------
    ValueError
        Naming the file, the line (as :func:`miniattn.io.read_jsonl` counts them) and the field.
    """
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {_record_line(path, i)} is not a JSON object (got "
                             f"{type(record).__name__}); not a metrics log written by `miniattn train`")
        step = record.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0 or step > _DRAWABLE:
            raise ValueError(f"{path}: line {_record_line(path, i)}: 'step' must be an integer >= 0, got "
                             f"{_short(step)}")
        for key in _CURVE_KEYS[1:]:
            value = record.get(key)
            if value is not None and not _is_number(value):
                raise ValueError(f"{path}: line {_record_line(path, i)}: {key!r} must be a number or null, got "
                                 f"{_short(value)}")


def _short(value, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _record_line(path, index: int) -> int:
    """The line number of record ``index`` of the JSON-lines file ``path`` (blank lines hold none)."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    filled = [number for number, raw in enumerate(lines, start=1) if raw.strip()]
    return filled[index] if index < len(filled) else len(lines)


def _undrawable(records: Sequence[dict]) -> int:
    """How many of the drawn values of ``records`` lie beyond ±``_DRAWABLE`` (not drawn)."""
    return sum(1 for r in records for key in _CURVE_KEYS[1:]
               if _is_number(r.get(key)) and abs(_float(r[key])) > _DRAWABLE)


def draw_curves(records: Sequence[dict], marked_steps: Sequence[int], path: Path, *, title: str = "") -> Path:
    """Learning curves of a run: held-out (and training) loss, token accuracy, attention accuracy.

    Parameters
    ----------
    records : sequence of dict
        The evaluation records of ``metrics.jsonl`` (``step``, ``loss``, ``train_loss``,
        ``token_accuracy``, ``attention_accuracy``: numbers; None, missing, non-finite or beyond
        ±1e300 -> not drawn; see :func:`check_records`).
    marked_steps : sequence of int
        Steps marked with dotted vertical lines (the snapshots drawn as maps).
    path : Path
        The PNG to write (atomically).
    """
    steps = _metric(records, "step")
    fig, axes = _figure(1, 3, 3.4, 2.8)
    panels = (("loss", "cross-entropy (nats)", (("loss", "held-out"), ("train_loss", "training"))),
              ("token accuracy", "accuracy", (("token_accuracy", "held-out"),)),
              ("attention accuracy", "accuracy", (("attention_accuracy", "held-out"),)))
    for ax, (name, ylabel, series) in zip(axes[0], panels):
        drawn = False
        for key, label in series:
            y = _metric(records, key)
            y[np.abs(y) > _DRAWABLE] = np.nan   # an axis spanning ~1e308 cannot be laid out
            if np.isfinite(y).any():
                ax.plot(steps, y, marker="o" if len(y) < 30 else None, markersize=2.5, label=label)
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, f"no {name} recorded", ha="center", va="center", transform=ax.transAxes)
        for s in marked_steps:
            ax.axvline(float(s), color="#999999", linestyle=":", linewidth=0.8)
        if name != "loss":
            ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("training steps")
        ax.set_ylabel(ylabel)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if drawn and len(series) > 1:
            ax.legend(frameon=False, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save_png(fig, path)


def _heads_of(snaps: Snapshots, example: int) -> np.ndarray:
    """α of probe example ``example`` as (K, H, T, S) (H = 1 for a single-head model)."""
    att = snaps.attention
    return att[:, None, example] if att.ndim == 4 else att[:, :, example]


def _map(ax, weights: np.ndarray, title: str, first_col: bool):
    from matplotlib.ticker import MaxNLocator

    im = ax.imshow(weights, origin="upper", aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0,
                   interpolation="nearest")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("source position s")
    if first_col:
        ax.set_ylabel("target position t")
    return im


def draw_maps(snaps: Snapshots, chosen: np.ndarray, example: int, path: Path) -> Path:
    """α of probe example ``example`` (target t × source s) at the snapshots ``chosen`` (indices).

    One column per chosen snapshot; one row per head for multi-head snapshots. One colour bar.

    Parameters
    ----------
    snaps : Snapshots
        ``attention`` (K, B, T, S) or (K, H, B, T, S).
    chosen : int array (J,)
        Indices into ``snaps.steps`` of the snapshots to draw, in [0, K).
    example : int in [0, B)
        The probe example.
    path : Path
        The PNG to write (atomically).
    """
    maps = _heads_of(snaps, example)
    H = maps.shape[1]
    fig, axes = _figure(H, len(chosen), 2.3, 2.2)
    image = None
    for h in range(H):
        for j, k in enumerate(chosen):
            head = f"head {h}, " if H > 1 else ""
            image = _map(axes[h, j], maps[k, h], f"{head}step {int(snaps.steps[k])}", j == 0)
    fig.colorbar(image, ax=axes.ravel().tolist(), label="α (probability)", shrink=0.85)
    fig.suptitle(f"attention α of probe example {example}", fontsize=10)
    return _save_png(fig, path)


def pillow_available() -> bool:
    """Whether matplotlib's PillowWriter can write a GIF here (Pillow importable)."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        return False
    from matplotlib.animation import PillowWriter
    return bool(PillowWriter.isAvailable())


def draw_gif(snaps: Snapshots, example: int, path: Path, *, fps: float = 4.0) -> Path:
    """An animated GIF of α of probe example ``example`` over every snapshot (one frame per step).

    Written with :class:`matplotlib.animation.PillowWriter` into a private temporary directory, then
    copied to ``path`` atomically (:func:`miniattn.io.atomic_write_bytes`): an interrupted write never
    leaves a truncated GIF, and the file gets the mode a plain ``open`` would give it.

    Parameters
    ----------
    snaps : Snapshots
        ``attention`` (K, B, T, S) or (K, H, B, T, S): K frames, one panel per head.
    example : int in [0, B)
        The probe example.
    path : Path
        The GIF to write.
    fps : float, default 4
        Frames (snapshots) per second.
    """
    from matplotlib.animation import PillowWriter

    maps = _heads_of(snaps, example)
    K, H = maps.shape[:2]
    fig, axes = _figure(1, H, 3.0, 2.8)
    images = [_map(axes[0, h], maps[0, h], f"head {h}" if H > 1 else "", h == 0) for h in range(H)]
    fig.colorbar(images[-1], ax=axes.ravel().tolist(), label="α (probability)", shrink=0.85)
    title = fig.suptitle("", fontsize=10)
    with tempfile.TemporaryDirectory(prefix="miniattn-gif-") as tmp_dir:
        tmp = Path(tmp_dir) / path.name
        writer = PillowWriter(fps=fps)
        with writer.saving(fig, str(tmp), dpi=80):
            for k in range(K):   # one frame per snapshot: the animation's time axis
                for h, im in enumerate(images):
                    im.set_data(maps[k, h])
                title.set_text(f"attention α of probe example {example}, step {int(snaps.steps[k])}")
                writer.grab_frame()
        io.atomic_write_bytes(path, tmp.read_bytes())
    return path


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------

def _integer(text: str) -> int:
    """An argparse ``type=``: an integer in ASCII digits (``int()`` also reads other scripts' digits)."""
    try:
        if not text.isascii():
            raise ValueError
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _nonempty_path(text: str) -> Path:
    """An argparse ``type=``: a path that is not empty (``Path('')`` is the current directory)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a directory, got an empty path (it would be the current "
                                         "directory); pass e.g. RUN/plots")
    return Path(text)


def add_plot_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``miniattn plot`` on ``parser`` (a subcommand's parser)."""
    parser.add_argument("--run", type=Path, required=True,
                        help="run directory (the --out of `miniattn train`) holding metrics.jsonl and "
                             f"{SNAPSHOT_NAME}")
    parser.add_argument("--steps", default=None,
                        help="snapshot steps to draw as attention maps, comma-separated, e.g. 0,50,200 "
                             "(default: about 6 evenly spaced snapshots)")
    parser.add_argument("--example", type=_integer, default=0, help="which probe example to draw (0-based)")
    parser.add_argument("--gif", action=argparse.BooleanOptionalAction, default=True,
                        help="also write an animated GIF of the attention over training")
    parser.add_argument("--out", type=_nonempty_path, default=None,
                        help="where to write the pictures; not empty (default: RUN/plots)")


def _fail(message, status: int = 2) -> int:
    """Report a ``plot`` error in one line (line breaks in paths and values escaped); return ``status``."""
    from miniattn.cli import _one_line

    print(f"miniattn plot: {_one_line(message)}", file=sys.stderr)
    return status


def plot_command(args) -> int:
    """Run ``miniattn plot``: learning curves, attention maps at chosen snapshots, a GIF; print the paths.

    Parameters
    ----------
    args : argparse.Namespace
        With ``run`` (Path), ``steps`` (str or None), ``example`` (int), ``gif`` (bool), ``out``
        (Path or None), as declared by :func:`add_plot_arguments`.

    Returns
    -------
    int
        0 on success; 2 for a missing or non-run directory, a run without snapshots, bad ``--steps``
        or ``--example``; 1 for a run file that cannot be read (corrupt ``metrics.jsonl`` or
        snapshot file, or a record that cannot be drawn: see :func:`check_records`). Every error is
        one line on stderr, paths and values with their line breaks escaped. Values beyond ±1e300
        are not drawn (a note on stderr says how many).
    """
    run = Path(args.run)
    if not run.is_dir():
        return _fail(f"--run: no such directory: {run}")
    metrics_path = run / METRICS_NAME
    if not metrics_path.is_file() or not (run / CONFIG_NAME).is_file():
        return _fail(f"--run: {run} is not a miniattn run directory (no {METRICS_NAME} or {CONFIG_NAME})")
    if not (run / SNAPSHOT_NAME).is_file():
        return _fail(f"--run: {run} has no attention snapshots ({SNAPSHOT_NAME}); train it with "
                     "SnapshotRecorder as the on_eval hook")
    try:
        snaps = load_snapshots(run)
        records = io.read_jsonl(metrics_path)
        check_records(records, metrics_path)
    except (ValueError, OSError) as err:
        return _fail(err, 1)
    except RecursionError:
        # json nests one Python frame per level: a crafted record can exhaust the stack.
        return _fail(f"{metrics_path}: a record is nested too deeply to be a metrics record", 1)
    example = args.example
    B = snaps.source.shape[0]
    if isinstance(example, bool) or not isinstance(example, (int, np.integer)) or not 0 <= example < B:
        return _fail(f"--example must be an integer in [0, {B - 1}] (the run's probe has {B} examples), got {example!r}")
    try:
        chosen = parse_steps(args.steps, snaps.steps)
    except ValueError as err:
        return _fail(str(err))
    out = Path(args.out) if args.out is not None else run / "plots"
    beyond = _undrawable(records)
    if beyond:
        from miniattn.cli import _one_line

        print(f"miniattn plot: note: {beyond} value(s) in {_one_line(metrics_path)} beyond ±{_DRAWABLE:g} were "
              "not drawn", file=sys.stderr)
    try:
        if out.exists() and not out.is_dir():
            return _fail(f"--out: {out} is a file, not a directory")
        paths = [draw_curves(records, snaps.steps[chosen], out / "curves.png", title=str(run)),
                 draw_maps(snaps, chosen, int(example), out / f"attention_example{example}.png")]
        if args.gif:
            if pillow_available():
                paths.append(draw_gif(snaps, int(example), out / f"attention_example{example}.gif"))
            else:
                print("miniattn plot: Pillow is not installed, so no GIF was written (the PNGs were)",
                      file=sys.stderr)
    except OSError as err:
        # A name too long for the file system, no permission, a full disk: the user's --out.
        return _fail(f"--out: cannot write the plots to {out} ({err.strerror or err})")
    for p in paths:
        print(p)
    return 0
