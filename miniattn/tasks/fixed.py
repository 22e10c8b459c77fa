"""A task that always returns the same batch: full-batch gradient descent through the training loop.

The warm-up toy's gradient flow is defined on exactly the two sequences {0,0} -> 0 and {0,1} -> 1,
and the reduced dynamics of the copy task are checked against full-batch gradient descent on every
input; both train through :func:`miniattn.train.train` with this task.
"""

from __future__ import annotations

from typing import Any

from miniattn.batch import ClassificationBatch, Seq2SeqBatch

__all__ = ["FixedBatchTask"]


class FixedBatchTask:
    """``sample(rng, batch_size)`` returns ``batch`` itself, whatever the generator and size.

    Parameters
    ----------
    batch : Seq2SeqBatch or ClassificationBatch
        Returned by every call (its arrays are not copied; the models never modify a batch).
    name : str, default "fixed"
        Recorded by :meth:`config`.
    vocab_sizes : (int, int), optional
        ``(input_vocab_size, output_vocab_size)`` when the caller knows them.
    """

    pad_id = bos_id = eos_id = None

    def __init__(self, batch, name: str = "fixed", vocab_sizes: tuple[int, int] | None = None):
        if not isinstance(batch, (Seq2SeqBatch, ClassificationBatch)):
            raise TypeError(f"batch must be a Seq2SeqBatch or a ClassificationBatch, got {type(batch).__name__}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.batch, self.name = batch, name
        self.input_vocab_size, self.output_vocab_size = vocab_sizes if vocab_sizes is not None else (None, None)
        source = batch.source if isinstance(batch, Seq2SeqBatch) else batch.tokens
        self.source_length = int(source.shape[1])
        self.target_length = int(batch.target_out.shape[1]) if isinstance(batch, Seq2SeqBatch) else 1

    def sample(self, rng, batch_size: int):
        return self.batch

    def config(self) -> dict[str, Any]:
        return {"task": self.name, "examples": int(self.batch.source.shape[0] if isinstance(self.batch, Seq2SeqBatch)
                                                    else self.batch.tokens.shape[0])}
