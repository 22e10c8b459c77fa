"""Figures of the experiments: one style, theory as lines, simulation as points or bands.

Conventions (so that every figure in ``REPORT.md`` reads the same way):

* **Theory** (closed form, reduced ODE, co-occurrence prediction) is a solid or dashed *line*.
* **Simulation** (trained models) is *markers* (single runs, or means with error bars) or a shaded
  *band* (mean and a confidence interval over seeds).
* Axes carry units: ``steps``, ``τ = step · lr``, ``probability``, ``accuracy``.
* Figures are written with the non-interactive Agg backend, atomically (temporary file, then
  :func:`os.replace`) to ``results/figures/<name>.png``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede the pyplot import
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis.store import results_root  # noqa: E402
from miniattn.io import atomic_write_bytes  # noqa: E402

__all__ = ["STYLE", "COLORS", "new_figure", "theory_line", "sim_points", "sim_band", "finish_axes",
           "save_figure", "TAU_LABEL", "STEPS_LABEL"]

TAU_LABEL = "τ = step · lr"
STEPS_LABEL = "training steps"

STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 110,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.6,
}
# The figures are only ever drawn by the experiment scripts, so the style is applied once, here,
# rather than threaded through every call.
matplotlib.rcParams.update(STYLE)

# A colour-blind-safe cycle (Okabe-Ito); fixed per role so that e.g. "permutation" is the same
# colour in every figure.
COLORS = {
    "theory": "#000000",
    "permutation": "#D55E00",
    "subset": "#0072B2",
    "sgd": "#009E73",
    "adam": "#CC79A7",
    "uniform": "#E69F00",
    "other": "#56B4E9",
    "grey": "#999999",
}


def new_figure(nrows: int = 1, ncols: int = 1, *, width: float = 4.2, height: float = 3.2,
               squeeze: bool = False, **kwargs):
    """A figure with ``nrows × ncols`` axes in the project style (returns ``fig, axes``, axes 2-D)."""
    if nrows < 1 or ncols < 1:
        raise ValueError(f"nrows and ncols must be >= 1, got {nrows}, {ncols}")
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows),
                             squeeze=squeeze, constrained_layout=True, **kwargs)
    return fig, axes


def theory_line(ax, x, y, label: str | None = "theory", *, color: str = COLORS["theory"],
                linestyle: str = "-", **kwargs):
    """Plot a theoretical curve as a line."""
    return ax.plot(np.asarray(x), np.asarray(y), color=color, linestyle=linestyle, label=label,
                   zorder=3, **kwargs)


def sim_points(ax, x, y, label: str | None = "simulation", *, yerr=None, color: str = COLORS["other"],
               marker: str = "o", markersize: float = 3.5, **kwargs):
    """Plot simulated values as markers (with error bars when ``yerr`` is given).

    ``yerr`` is either symmetric (shape (n,)) or ``[lower_err, upper_err]`` (shape (2, n)).
    """
    x, y = np.asarray(x), np.asarray(y)
    if yerr is not None:
        return ax.errorbar(x, y, yerr=np.asarray(yerr), fmt=marker, color=color, label=label,
                           markersize=markersize, capsize=2, linewidth=1, zorder=4, **kwargs)
    return ax.plot(x, y, marker, color=color, label=label, markersize=markersize, zorder=4, **kwargs)


def sim_band(ax, x, mean, low, high, label: str | None = "simulation", *, color: str = COLORS["other"],
             alpha: float = 0.25, **kwargs):
    """Plot a simulated mean as a thin line with a shaded band ``[low, high]`` (e.g. a 95% CI)."""
    x = np.asarray(x)
    ax.fill_between(x, np.asarray(low), np.asarray(high), color=color, alpha=alpha, linewidth=0)
    return ax.plot(x, np.asarray(mean), color=color, label=label, linewidth=1.2, **kwargs)


def finish_axes(ax, *, xlabel: str, ylabel: str, title: str | None = None, legend: bool = True,
                **legend_kwargs) -> None:
    """Label the axes (with units), set the title, and add a legend if anything is labelled."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if legend:
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(frameon=False, **legend_kwargs)


def save_figure(fig, name: str, *, root: str | os.PathLike | None = None, close: bool = True) -> Path:
    """Save ``fig`` as ``<results>/figures/<name>.png`` atomically and return the path.

    The PNG is rendered into memory first and then written with a temporary file and
    :func:`os.replace`, so an interrupted run never leaves a truncated image that ``make`` would
    consider up to date. The timestamp-free metadata keeps reruns byte-stable.
    """
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"name must be a file name without '/' or suffix, got {name!r}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    path = results_root(root) / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    if close:
        plt.close(fig)
    return path


def band_from_runs(curves: Sequence[np.ndarray] | np.ndarray, confidence: float = 0.95,
                   bounds: tuple[float, float] | None = None):
    """Mean and a t-interval band over runs of equal length: returns ``mean, low, high`` (each (T,)).

    With one run the band collapses to the curve. ``bounds = (lo, hi)`` clips the band to the range
    the quantity can take (an accuracy's t-interval over two seeds can reach far outside [0, 1]).
    """
    from scipy import stats

    arr = np.asarray(curves, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"curves must be (runs, T) with runs >= 1, got shape {arr.shape}")
    mean = arr.mean(axis=0)
    n = arr.shape[0]
    if n < 2:
        return mean, mean.copy(), mean.copy()
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * arr.std(axis=0, ddof=1) / np.sqrt(n)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = np.clip(low, *bounds), np.clip(high, *bounds)
    return mean, low, high


__all__.append("band_from_runs")


def checkpoint_indices(n: int, k: int = 6) -> np.ndarray:
    """``k`` evenly spaced indices into ``range(n)``, always the first and the last (fewer if n < k).

    The same choice as ``miniattn plot`` makes (:func:`miniattn.runplot.evenly_spaced`).
    """
    from miniattn.runplot import evenly_spaced
    return evenly_spaced(n, k)


def attention_map(ax, weights, *, title: str | None = None, alignment=None, colorbar: bool = False):
    """Draw attention weights α (target position t × source position s) as an image; returns it.

    Parameters
    ----------
    ax : matplotlib Axes
    weights : float array (T, S)
        α[t, s], each row a probability distribution over source positions (values in [0, 1]).
    title : str, optional
    alignment : int array (T,), optional
        The true aligned source position of each target position (−1: none), marked with dots.
    colorbar : bool, default False
        Add a colour bar for this axes alone.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or 0 in w.shape:
        raise ValueError(f"weights must be a non-empty (T, S) array, got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite")
    im = ax.imshow(w, origin="upper", aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0,
                   interpolation="nearest")
    if alignment is not None:
        a = np.asarray(alignment)
        if a.shape != (w.shape[0],):
            raise ValueError(f"alignment must have shape (T,) = ({w.shape[0]},), got {a.shape}")
        t = np.flatnonzero(a >= 0)
        ax.plot(a[t], t, ".", color="white", markersize=1.5, alpha=0.6)
    ax.grid(False)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    ax.set_xlabel("source position s")
    ax.set_ylabel("target position t")
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, label="α (probability)")
    return im


def attention_stages_figure(rows: Sequence[dict], *, checkpoints: int = 6, threshold: float | None = None):
    """One row per run: α of a probe example at ~``checkpoints`` evaluation steps, then its curves.

    Each row shows α_k[t, s] (target × source) at the steps ``checkpoint_indices(K, checkpoints)``
    picks out of the run's K snapshots, and a last panel with the run's held-out token accuracy
    (solid) and attention accuracy (dashed) against steps, the chosen steps marked by dotted lines,
    titled with the row's label. One colour bar is shared by every map (α in [0, 1]).

    Parameters
    ----------
    rows : sequence of dict
        Each with ``label`` (str), ``color``, ``steps`` (K,) the snapshot steps (increasing),
        ``attention`` (K, T, S), optional ``alignment`` (T,), and ``curve_steps`` (E,),
        ``token_accuracy`` (E,), ``attention_accuracy`` (E,) (optional, NaN allowed).
    checkpoints : int >= 1, default 6
    threshold : float, optional
        Drawn as a dotted horizontal line on the accuracy panel (e.g. the success criterion).

    Returns
    -------
    matplotlib Figure
    """
    if not rows:
        raise ValueError("rows must hold at least one run")
    picked = []
    for i, row in enumerate(rows):
        att = np.asarray(row.get("attention"), dtype=np.float64)
        steps = np.asarray(row.get("steps"))
        if att.ndim != 3 or att.shape[0] < 1:
            raise ValueError(f"rows[{i}]['attention'] must be (K, T, S) with K >= 1, got shape {att.shape}")
        if steps.shape != (att.shape[0],):
            raise ValueError(f"rows[{i}]['steps'] must have shape (K,) = ({att.shape[0]},), got {steps.shape}")
        if np.any(np.diff(steps) <= 0):
            raise ValueError(f"rows[{i}]['steps'] must be strictly increasing")
        for key in ("curve_steps", "token_accuracy"):
            if key not in row:
                raise ValueError(f"rows[{i}] needs {key!r}")
        picked.append(checkpoint_indices(att.shape[0], checkpoints))
    ncols = max(len(p) for p in picked) + 1
    fig, axes = new_figure(len(rows), ncols, width=2.1, height=2.1)
    image = None
    for i, (row, idx) in enumerate(zip(rows, picked)):
        att, steps = np.asarray(row["attention"]), np.asarray(row["steps"])
        for j in range(ncols - 1):
            ax = axes[i, j]
            if j >= len(idx):
                ax.set_visible(False)
                continue
            k = idx[j]
            image = attention_map(ax, att[k], title=f"step {int(steps[k])}", alignment=row.get("alignment"))
            if j:
                ax.set_ylabel("")
        ax = axes[i, ncols - 1]
        x = np.asarray(row["curve_steps"])
        ax.plot(x, np.asarray(row["token_accuracy"], dtype=float), color=row.get("color", COLORS["other"]),
                label="token accuracy")
        if row.get("attention_accuracy") is not None:
            ax.plot(x, np.asarray(row["attention_accuracy"], dtype=float), color=row.get("color", COLORS["other"]),
                    linestyle="--", label="attention accuracy")
        for k in idx:
            ax.axvline(float(steps[k]), color=COLORS["grey"], linestyle=":", linewidth=0.7)
        if threshold is not None:
            ax.axhline(threshold, color=COLORS["grey"], linestyle="-.", linewidth=0.7)
        ax.set_ylim(-0.03, 1.03)
        finish_axes(ax, xlabel=STEPS_LABEL, ylabel="held-out accuracy", title=str(row["label"]),
                    loc="lower right", fontsize=7)
    fig.colorbar(image, ax=axes[:, : ncols - 1].ravel().tolist(), label="α (probability)", shrink=0.8)
    return fig


__all__ += ["checkpoint_indices", "attention_map", "attention_stages_figure"]
