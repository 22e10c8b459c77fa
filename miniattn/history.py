"""The record of a training run: evaluation records, per-step losses and per-step quantities."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

__all__ = ["History"]


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
    per_step : dict of str -> list of float
        Quantities recorded after every step by :func:`miniattn.train.train`'s ``on_step`` hook:
        ``per_step[name][k - 1]`` is the value after step k.
    """

    evals: list[dict] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    per_step: dict[str, list[float]] = field(default_factory=dict)

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

    def step_values(self, name: str) -> np.ndarray:
        """float array (steps_done,): a quantity recorded by the ``on_step`` hook after every step."""
        if name not in self.per_step:
            raise KeyError(f"no per-step quantity {name!r}; recorded: {sorted(self.per_step)}")
        return np.asarray(self.per_step[name], dtype=np.float64)

    def to_dict(self) -> dict:
        return {"evals": self.evals, "train_loss": self.train_loss, "per_step": self.per_step}

    @classmethod
    def from_dict(cls, data: Mapping) -> "History":
        return cls(evals=list(data["evals"]), train_loss=[float(x) for x in data["train_loss"]],
                   per_step={str(k): [float(x) for x in v] for k, v in data.get("per_step", {}).items()})

