"""The two batch types every task produces and every model consumes.

Both are ``NamedTuple``s of NumPy arrays, so they can be indexed, saved with ``np.savez`` field by
field, and compared. Masks are boolean with True = real token (counted / may be attended).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Seq2SeqBatch(NamedTuple):
    """A batch for sequence-to-sequence models (copy, translation).

    Attributes
    ----------
    source : int array (B, S)        source token ids (padded with the pad id where source_mask is False)
    source_mask : bool array (B, S)  True where the source position is a real token
    target_in : int array (B, T)     decoder inputs (teacher forcing): <bos> y_1 ... y_{T-1}
    target_out : int array (B, T)    gold outputs y_1 ... y_T (ending with <eos> where the task has one)
    target_mask : bool array (B, T)  True where the output position counts in the loss
    alignment : int array (B, T) or None
        Ground-truth aligned source position of each output position, -1 where there is none
        (e.g. <eos>, target function words). Used for attention accuracy.
    """

    source: np.ndarray
    source_mask: np.ndarray
    target_in: np.ndarray
    target_out: np.ndarray
    target_mask: np.ndarray
    alignment: np.ndarray | None = None


class ClassificationBatch(NamedTuple):
    """A batch for sequence classifiers.

    Attributes
    ----------
    tokens : int array (B, S)     token ids (padded where mask is False)
    mask : bool array (B, S)      True where the position is a real token
    labels : int array (B,)       gold class of each sequence
    salient : bool array (B, S) or None
        True at planted label words (ground-truth salient positions), where the task knows them.
    """

    tokens: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    salient: np.ndarray | None = None
