"""Chunked evaluation: the same record as one dense pass, and never more rows per pass than asked."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from miniattn.metrics import evaluate
from miniattn.models import AttentionClassifier, Seq2SeqAttention
from miniattn.tasks import CopyTask
from miniattn.tasks.keyword import KeywordClassificationTask as KeywordTask


class _RowCounter:
    """Wraps a model and records the number of rows of every forward pass."""

    def __init__(self, model):
        self.model, self.rows = model, []
        self.params = model.params

    def forward(self, batch):
        self.rows.append(len(batch[0]))
        return self.model.forward(batch)


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], list):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-12, atol=0)
        elif a[k] is None:
            assert b[k] is None
        else:
            assert a[k] == pytest.approx(b[k], rel=1e-12, abs=0), k


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 23), chunk=st.integers(1, 30), heads=st.sampled_from([1, 3]), seed=st.integers(0, 99))
def test_chunked_seq2seq_equals_one_pass(n, chunk, heads, seed):
    task = CopyTask(5, 7, "subset")
    model = Seq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length,
                             task.target_length, dim=6, heads=heads, rng=np.random.default_rng(seed))
    batch = task.sample(np.random.default_rng(seed + 1), n)
    whole = evaluate(model, batch)
    counter = _RowCounter(model)
    chunked = evaluate(counter, batch, chunk_size=chunk)
    _assert_same(whole, chunked)
    assert max(counter.rows) <= chunk and sum(counter.rows) == n
    assert len(counter.rows) == -(-n // chunk)
    if heads > 1:
        assert len(chunked["attention_accuracy_per_head"]) == heads


@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 20), chunk=st.integers(1, 8), seed=st.integers(0, 99))
def test_chunked_classifier_equals_one_pass(n, chunk, seed):
    task = KeywordTask(12, 6)
    model = AttentionClassifier(task.vocab, task.n_classes, dim=5, rng=np.random.default_rng(seed))
    batch = task.sample(np.random.default_rng(seed + 1), n)
    _assert_same(evaluate(model, batch), evaluate(model, batch, chunk_size=chunk))


def test_a_changed_model_changes_the_chunked_record():
    """The chunked path really evaluates the model (a guard against summing stale or empty chunks)."""
    task = CopyTask(5, 7, "subset")
    model = Seq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length,
                             task.target_length, dim=6, rng=np.random.default_rng(0))
    batch = task.sample(np.random.default_rng(1), 9)
    before = evaluate(model, batch, chunk_size=2)
    model.params["out_b"][batch.target_out[0, 0]] += 5.0
    assert evaluate(model, batch, chunk_size=2)["loss"] != before["loss"]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "3"])
def test_chunk_size_must_be_a_positive_integer(bad):
    task = CopyTask(5, 7, "subset")
    model = Seq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length,
                             task.target_length, dim=6, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="chunk_size"):
        evaluate(model, task.sample(np.random.default_rng(1), 4), chunk_size=bad)
