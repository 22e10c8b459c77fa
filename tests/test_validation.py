"""Tests of the input-validation helpers (:mod:`miniattn._validate`).

Every error must name the argument it is about and say what is allowed, because these messages are
what a user sees when a shape, dtype or id is wrong anywhere in miniattn.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from miniattn._validate import bool_array, float_array, int_array, result_dtype
from strategies import dims, float_arrays, id_arrays, masks

shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)


# --------------------------------------------------------------------------------------------------
# float_array
# --------------------------------------------------------------------------------------------------

@given(x=float_arrays(shapes, magnitude=1e300), dtype=st.sampled_from([np.float32, np.float64]))
def test_float_array_accepts_finite_floats_and_keeps_precision(x, dtype):
    x = x.astype(dtype) if dtype is np.float64 else np.clip(x, -1e30, 1e30).astype(dtype)
    out = float_array("x", x)
    assert out.dtype == dtype and out.shape == x.shape
    np.testing.assert_array_equal(out, x)


@given(x=float_arrays(shapes.filter(lambda s: len(s) > 0)), bad=st.sampled_from([np.nan, np.inf, -np.inf]),
       data=st.data())
def test_float_array_rejects_any_nonfinite_entry(x, bad, data):
    index = data.draw(st.tuples(*(st.integers(0, n - 1) for n in x.shape)))
    x = x.copy()
    x[index] = bad
    with pytest.raises(ValueError, match=r"^hidden contains NaN or inf$"):
        float_array("hidden", x)


def test_float_array_python_numbers_become_float64():
    assert float_array("x", [[1, 2], [3, 4]]).dtype == np.float64
    assert float_array("dloss", 2.5, ndim=0).dtype == np.float64
    assert float_array("dloss", 3, ndim=0).dtype == np.float64


@pytest.mark.parametrize("x, kind", [
    (np.array([1, 2]), "int64"), (np.array([1, 2], dtype=np.uint8), "uint8"),
    (np.array([True, False]), "bool"), (np.array([1 + 2j]), "complex128"),
    (np.array(["a"]), "<U1"), (np.array([None]), "object"),
])
def test_float_array_rejects_non_float_dtypes(x, kind):
    # An integer *array* in a float slot is usually token ids passed by mistake: never cast silently.
    with pytest.raises(TypeError, match=rf"^queries must be a floating-point array, got dtype {kind}$"):
        float_array("queries", x)


def test_float_array_shape_rules():
    with pytest.raises(ValueError, match=r"^table must have 2 dimensions, got shape \(3,\)$"):
        float_array("table", np.ones(3), ndim=2)
    with pytest.raises(ValueError, match=r"^hidden must have at least 1 dimensions, got shape \(\)$"):
        float_array("hidden", np.float64(1.0), min_ndim=1)
    with pytest.raises(ValueError, match=r"^keys must not be empty, got shape \(0, 3\)$"):
        float_array("keys", np.ones((0, 3)))
    assert float_array("dout", np.ones((0, 3)), allow_empty=True).shape == (0, 3)


# --------------------------------------------------------------------------------------------------
# int_array
# --------------------------------------------------------------------------------------------------

@given(vocab=dims(1, 10), data=st.data())
def test_int_array_accepts_ids_in_range(vocab, data):
    ids = data.draw(id_arrays(data.draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4)), vocab))
    out = int_array("ids", ids, upper=vocab)
    np.testing.assert_array_equal(out, ids)


@given(vocab=dims(1, 10), offset=st.integers(0, 1000), negative=st.booleans(), data=st.data())
def test_int_array_rejects_ids_out_of_range_never_wraps(vocab, offset, negative, data):
    ids = data.draw(id_arrays((2, 3), vocab)).copy()
    bad = -1 - offset if negative else vocab + offset
    ids[data.draw(st.integers(0, 1)), data.draw(st.integers(0, 2))] = bad
    lo, hi = int(ids.min()), int(ids.max())
    with pytest.raises(ValueError, match=rf"^ids must lie in \[0, {vocab}\), got values in \[{lo}, {hi}\]$"):
        int_array("ids", ids, upper=vocab)


@pytest.mark.parametrize("x, kind", [
    (np.array([0.0, 1.0]), "float64"), (np.array([0.0], dtype=np.float32), "float32"),
    (np.array([True]), "bool"), ([0.5], "float64"),
])
def test_int_array_rejects_non_integer_dtypes(x, kind):
    with pytest.raises(TypeError, match=rf"^targets must be an integer array, got dtype {kind}$"):
        int_array("targets", x, upper=3)


def test_int_array_shape_rules():
    with pytest.raises(ValueError, match=r"^batch.source must have 2 dimensions, got shape \(3,\)$"):
        int_array("batch.source", np.array([0, 1, 2]), ndim=2)
    with pytest.raises(ValueError, match=r"^ids must not be empty, got shape \(0,\)$"):
        int_array("ids", np.zeros(0, dtype=np.int64), upper=3)
    assert int_array("ids", np.zeros(0, dtype=np.int64), upper=3, allow_empty=True).size == 0
    assert int_array("ids", np.array([0, 2], dtype=np.uint16), upper=3).dtype == np.uint16


# --------------------------------------------------------------------------------------------------
# bool_array and result_dtype
# --------------------------------------------------------------------------------------------------

@given(mask=masks(st.tuples(dims(1, 3), dims(1, 4))))
def test_bool_array_accepts_exact_shape(mask):
    np.testing.assert_array_equal(bool_array("mask", mask, mask.shape), mask)
    assert mask.any(axis=-1).all()     # the strategy's promise: one True per row


@pytest.mark.parametrize("x, error, match", [
    (np.ones((2, 3), dtype=np.int64), TypeError, r"^mask must be a boolean array \(True = keep\), got dtype int64$"),
    (np.ones((2, 3)), TypeError, r"^mask must be a boolean array \(True = keep\), got dtype float64$"),
    (np.ones((3, 2), dtype=bool), ValueError, r"^mask must have shape \(2, 3\), got \(3, 2\)$"),
    (np.ones(6, dtype=bool), ValueError, r"^mask must have shape \(2, 3\), got \(6,\)$"),
])
def test_bool_array_rejects_bad_masks(x, error, match):
    with pytest.raises(error, match=match):
        bool_array("mask", x, (2, 3))


def test_result_dtype():
    f32, f64 = np.ones(1, np.float32), np.ones(1, np.float64)
    assert result_dtype(f32, f32) == np.float32
    assert result_dtype(f32, f64) == np.float64
    assert result_dtype(f32, None) == np.float32


# --------------------------------------------------------------------------------------------------
# integer / flag options of every model, task and optimiser constructor
# --------------------------------------------------------------------------------------------------

def _constructors():
    """(label, factory(**overrides), integer options, boolean options, optional boolean options)."""
    from miniattn.models import (AttentionClassifier, FreeAttentionCopyModel, GatedToyClassifier,
                                 Seq2SeqAttention, SoftmaxGatedToyClassifier)
    from miniattn.tasks import CopyTask, KeywordClassificationTask, TranslationTask

    def rng():
        return np.random.default_rng(0)

    return [
        ("Seq2SeqAttention",
         lambda **kw: Seq2SeqAttention(**{"source_vocab": 6, "target_vocab": 6, "source_length": 3,
                                          "target_length": 3, "rng": rng(), **kw}),
         ["source_vocab", "target_vocab", "source_length", "target_length", "dim", "heads"],
         ["uniform"], ["shared_embeddings", "value_projection"]),
        ("AttentionClassifier",
         lambda **kw: AttentionClassifier(**{"vocab_size": 6, "n_classes": 2, "rng": rng(), **kw}),
         ["vocab_size", "n_classes", "dim", "score_hidden"], ["uniform"], []),
        ("GatedToyClassifier", lambda **kw: GatedToyClassifier(beta=0.0, **kw), ["vocab"], ["uniform"], []),
        ("SoftmaxGatedToyClassifier", lambda **kw: SoftmaxGatedToyClassifier(**kw), ["vocab"], ["uniform"], []),
        ("FreeAttentionCopyModel",
         lambda **kw: FreeAttentionCopyModel(**{"length": 3, "vocab": 4, "factorised": True, "rng": rng(), **kw}),
         ["length", "vocab", "dim"], ["factorised", "uniform"], []),
        ("CopyTask", lambda **kw: CopyTask(**{"length": 3, "vocab": 5, "mode": "subset", **kw}),
         ["length", "vocab"], ["specials"], []),
        ("KeywordClassificationTask", lambda **kw: KeywordClassificationTask(**{"vocab": 20, "length": 5, **kw}),
         ["vocab", "length", "n_classes", "keywords_per_class", "min_length", "keywords_per_sequence"], [], []),
        ("TranslationTask",
         lambda **kw: TranslationTask(**{"src_vocab": 5, "tgt_vocab": 5, "length": 3, "rng": rng(), **kw}),
         ["src_vocab", "tgt_vocab", "length", "min_length", "max_fertility", "n_function_words",
          "reorder_window"], [], []),
    ]


CONSTRUCTORS = _constructors()
INTEGER_CASES = [(label, make, name) for label, make, ints, _, _ in CONSTRUCTORS for name in ints]
FLAG_CASES = [(label, make, name, bad) for label, make, _, flags, optional in CONSTRUCTORS
              for name in flags + optional for bad in ["False", 0, None] if not (bad is None and name in optional)]


@pytest.mark.parametrize("label, make, name", INTEGER_CASES, ids=[f"{c[0]}-{c[2]}" for c in INTEGER_CASES])
@pytest.mark.parametrize("bad, error", [(True, TypeError), (False, TypeError), (2.0, TypeError),
                                        ("3", TypeError), (-1, ValueError)], ids=["True", "False", "2.0", "str", "-1"])
def test_integer_options_refuse_bools_floats_strings_and_negatives(label, make, name, bad, error):
    make()                                                   # the defaults are valid
    with pytest.raises(error) as info:
        make(**{name: bad})
    assert name in str(info.value)


@pytest.mark.parametrize("label, make, name, bad", FLAG_CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[3]!r}" for c in FLAG_CASES])
def test_boolean_options_accept_only_true_or_false(label, make, name, bad):
    # bool("False") is True: a string from a config file must never switch uniform attention on.
    with pytest.raises(TypeError) as info:
        make(**{name: bad})
    assert name in str(info.value)
    for ok in (True, False, np.bool_(True), np.bool_(False)):
        assert getattr(make(**{name: ok}), name) is bool(ok)     # stored as a plain bool


@pytest.mark.parametrize("cls, name, bad, error", [
    ("SGD", "lr", True, TypeError), ("SGD", "lr", "0.1", TypeError), ("SGD", "lr", -0.1, ValueError),
    ("SGD", "lr", float("nan"), ValueError), ("SGD", "momentum", True, TypeError),
    ("SGD", "momentum", "0.9", TypeError), ("SGD", "momentum", -0.5, ValueError),
    ("Adam", "lr", False, TypeError), ("Adam", "lr", float("inf"), ValueError), ("Adam", "eps", "1e-8", TypeError),
    ("Adam", "eps", -1e-8, ValueError), ("Adam", "betas", (True, 0.999), TypeError),
    ("Adam", "betas", (0.9, -0.5), ValueError),
])
def test_optimiser_options_refuse_bad_types_and_values(cls, name, bad, error):
    from miniattn import optim
    with pytest.raises(error) as info:
        getattr(optim, cls)({"w": np.zeros(2)}, **{name: bad})
    assert name in str(info.value)
