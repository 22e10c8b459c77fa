"""What every model returns from ``forward``."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class ForwardResult(NamedTuple):
    """Output of ``model.forward(batch)``.

    Attributes
    ----------
    log_probs : array (B, T, C)
        Log-probabilities of every output class at every output position (T = 1 for classifiers).
    attention : array (B, T, S), or (H, B, T, S) for a multi-head model
        Attention weights over source positions (0 at masked positions).
    """

    log_probs: np.ndarray
    attention: np.ndarray


def copy_params(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A deep copy of a parameter dict (for snapshots and checkpoints)."""
    return {k: v.copy() for k, v in params.items()}
