"""Tasks: data generators and text loaders that produce :mod:`miniattn.batch` batches.

Every task (and every text dataset) has the same interface, so that training and analysis code does
not need to know where its data come from::

    batch = task.sample(rng, batch_size)    # fresh samples; rng is a numpy.random.Generator

and the attributes ``input_vocab_size``, ``output_vocab_size``, ``source_length``,
``target_length``, ``pad_id`` and, for sequence-to-sequence tasks, ``bos_id`` and ``eos_id``.
A synthetic task's batches have the full width ``source_length`` (and ``target_length``); a text
dataset's batch is as wide as its own longest member needs, never wider than these attributes. So
positional parameters sized from them fit every batch (a model uses their first S rows).

Modules
-------
copy         :class:`CopyTask` (permutation / subset / replacement copying)
keyword      :class:`KeywordClassificationTask` (Zipf filler with planted label words)
translation  :class:`TranslationTask` (random bilingual lexicon with a ground-truth alignment)
fixed        :class:`FixedBatchTask` (one fixed batch: full-batch gradient descent)
vocabulary   :class:`Vocabulary`, :func:`tokenize`
text         :func:`load_classification_file`, :func:`load_parallel_files` and the datasets they return
split        :class:`HeldOutSplit` (a seeded held-out part of a finite dataset)

Randomness comes only from the ``numpy.random.Generator`` passed in; nothing here touches NumPy's
global random state.
"""

from __future__ import annotations

import numpy as np

from miniattn._validate import integer

# The argument checks below are shared by every task module. They are defined before the submodules
# are imported (at the bottom of this file) so that ``from miniattn.tasks import _check_int`` works
# inside those submodules while this package is still initialising. The decisions themselves are
# :mod:`miniattn._validate`'s (one vocabulary of argument checks for models, tasks and optimisers).


def _check_generator(rng, name: str = "rng") -> np.random.Generator:
    """Return ``rng`` if it is a ``numpy.random.Generator``; otherwise raise a ``TypeError``.

    A legacy ``RandomState`` or an integer seed is refused on purpose: every random draw must come
    from a Generator that the caller seeded (from a ``SeedSequence``), never from global state.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{name} must be a numpy.random.Generator (e.g. np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    return rng


def _check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """:func:`miniattn._validate.integer` (kept under this name for the task modules that import it).

    A non-integer (bool, float, str, None, ...) is a ``TypeError``; an integer outside
    ``[low, high]`` (``None`` = unbounded) a ``ValueError`` naming ``name``.
    """
    return integer(name, value, low, high)


from miniattn.tasks.copy import CopyTask  # noqa: E402
from miniattn.tasks.keyword import KeywordClassificationTask  # noqa: E402
from miniattn.tasks.text import (  # noqa: E402
    ClassificationDataset,
    ParallelDataset,
    Vocabulary,
    load_classification_file,
    load_parallel_files,
    tokenize,
)
from miniattn.tasks.split import HeldOutSplit  # noqa: E402
from miniattn.tasks.translation import TranslationTask  # noqa: E402
from miniattn.tasks.fixed import FixedBatchTask  # noqa: E402

__all__ = [
    "CopyTask", "KeywordClassificationTask", "TranslationTask", "FixedBatchTask",
    "Vocabulary", "tokenize", "load_classification_file", "load_parallel_files",
    "ClassificationDataset", "ParallelDataset", "HeldOutSplit",
]
