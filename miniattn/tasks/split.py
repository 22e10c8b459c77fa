"""A seeded held-out split of a finite text dataset (:class:`HeldOutSplit`)."""

from __future__ import annotations

import numpy as np

from miniattn.tasks import _check_generator
from miniattn.tasks.text import draw_indices

__all__ = ["HeldOutSplit"]


class HeldOutSplit:
    """A loaded dataset split once, at random, into training examples and held-out examples.

    A real-text dataset is finite, so evaluating on ``dataset.sample(...)`` would measure examples the
    model trains on. The split fixes ``round(fraction * n)`` examples (a permutation drawn from
    ``rng``) as held out; :meth:`sample` draws training batches from the others only, and
    :meth:`held_out_batch` returns the held-out examples as one batch, which
    :func:`miniattn.train.train` then uses as its evaluation batch. Every other attribute
    (vocabulary sizes, lengths, special ids, vocabularies) is the dataset's.

    Parameters
    ----------
    dataset : ClassificationDataset or ParallelDataset
        Anything with ``len()`` and ``batch(indices)``.
    fraction : float in (0, 1)
        Share of the examples held out.
    rng : numpy.random.Generator
        Draws the split.

    Raises
    ------
    ValueError
        If ``fraction`` is outside (0, 1) or leaves either part empty.
    """

    def __init__(self, dataset, fraction: float, rng: np.random.Generator):
        rng = _check_generator(rng)
        if not callable(getattr(dataset, "batch", None)):
            raise TypeError(f"dataset must have a batch(indices) method, got {type(dataset).__name__}")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise ValueError(f"fraction must be a number in (0, 1), got {fraction!r}")
        n = len(dataset)
        n_held = int(round(fraction * n))
        if not 1 <= n_held < n:
            raise ValueError(f"holding out {fraction:g} of {n} examples leaves an empty part "
                             f"({n_held} held out); use a larger dataset or another fraction")
        order = rng.permutation(n)
        self.dataset, self.fraction = dataset, float(fraction)
        self.held_out_indices, self.train_indices = np.sort(order[:n_held]), np.sort(order[n_held:])

    def __getattr__(self, name):
        if name == "dataset":   # not yet set (e.g. during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self) -> int:
        """The number of training examples."""
        return len(self.train_indices)

    def __repr__(self) -> str:
        return (f"HeldOutSplit({self.dataset!r}, {len(self.train_indices)} training, "
                f"{len(self.held_out_indices)} held out)")

    def sample(self, rng: np.random.Generator, batch_size: int):
        """A batch of training examples (without replacement when ``batch_size`` allows)."""
        return self.dataset.batch(self.train_indices[draw_indices(rng, len(self.train_indices), batch_size)])

    def held_out_batch(self):
        """Every held-out example, in file order, as one batch."""
        return self.dataset.batch(self.held_out_indices)

