"""Finite inputs give finite outputs or a one-line ``NonFiniteError`` naming the quantity that overflowed.

Each block of :mod:`miniattn.layers` is driven with finite inputs large enough for a product or a sum
to leave the float range (float64 ≳ 1e154 per factor, float32 ≳ 1e19): before the check the blocks
returned NaN or inf silently. Masked entries may hold anything (also inf) without effect. Overflow
*warnings* are silenced here (``np.errstate``) so that what is tested is the block's own check; the
training loop turns both into ``TrainingDiverged``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from miniattn._validate import NonFiniteError
from miniattn.layers import (
    attention_backward, attention_forward, embedding_backward, embedding_forward, log_softmax,
    masked_softmax, multihead_attention_backward, multihead_attention_forward, softmax_output_backward,
    softmax_output_forward,
)

DTYPES = (np.float32, np.float64)

#: The quantity names a block may report (the first words of its error message).
QUANTITIES = ("attention scores", "attention context", "attention weight gradient", "gradient of the",
              "output logits", "log-probabilities from output logits", "cross-entropy loss",
              "embedding gradient")


def quiet():
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


def big(dtype, power=0.6):
    """A finite number whose square overflows ``dtype`` (max**0.6), and whose product with max**0.6 does."""
    return dtype(np.finfo(dtype).max) ** dtype(power)


def all_finite(*arrays):
    return all(a is None or np.all(np.isfinite(a)) for a in arrays)


def finite_or_named(fn):
    """Run ``fn``: its outputs must all be finite, or it must raise NonFiniteError naming a quantity.

    Returns the error message, or None when the outputs were finite.
    """
    try:
        with quiet():
            out = fn()
    except NonFiniteError as exc:
        msg = str(exc)
        assert "\n" not in msg
        assert msg.startswith(QUANTITIES), msg
        return msg
    assert all_finite(*out), "finite inputs gave a non-finite output without an error"
    return None


def rng_for(seed):
    return np.random.default_rng(np.random.SeedSequence(seed))


# --------------------------------------------------------------------------------------------------
# Single-head attention
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_forward_score_overflow_is_named(dtype):
    rng = rng_for(1)
    q = (rng.standard_normal((2, 3, 4)) * big(dtype)).astype(dtype)
    k = (rng.standard_normal((2, 5, 4)) * big(dtype)).astype(dtype)
    v = rng.standard_normal((2, 5, 4)).astype(dtype)
    with quiet(), pytest.raises(NonFiniteError, match=r"^attention scores overflowed .*from finite inputs"):
        attention_forward(q, k, v)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_bilinear_projection_overflow_is_named(dtype):
    rng = rng_for(2)
    q = (rng.standard_normal((2, 3, 4)) * big(dtype)).astype(dtype)
    W = (rng.standard_normal((4, 4)) * big(dtype)).astype(dtype)
    k = rng.standard_normal((2, 5, 4)).astype(dtype)
    with quiet(), pytest.raises(NonFiniteError, match=r"^attention scores overflowed"):
        attention_forward(q, k, k, score_matrix=W)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_masked_key_of_any_size_does_not_matter(dtype):
    """A masked key so large that its score is inf changes nothing, forward or backward."""
    rng = rng_for(3)
    q = rng.standard_normal((2, 3, 4)).astype(dtype)
    k = rng.standard_normal((2, 5, 4)).astype(dtype)
    v = rng.standard_normal((2, 5, 4)).astype(dtype)
    mask = np.ones((2, 5), dtype=bool)
    mask[:, 4] = False
    k_huge = k.copy()
    k_huge[:, 4] = np.finfo(dtype).max / 2 * np.sign(q.sum(axis=(0, 1)))   # q·k → +inf at the masked key
    dcontext = rng.standard_normal((2, 3, 4)).astype(dtype)
    with quiet():
        assert np.isposinf((q @ k_huge.transpose(0, 2, 1))[:, :, 4]).any()
    ref, ref_cache = attention_forward(q, k, v, mask=mask)
    ref_g = attention_backward(dcontext, ref_cache)
    out, cache = attention_forward(q, k_huge, v, mask=mask)        # no warning, no error
    g = attention_backward(dcontext, cache)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(cache.weights, ref_cache.weights)
    for name in ("queries", "values"):
        np.testing.assert_array_equal(getattr(g, name), getattr(ref_g, name))
    np.testing.assert_array_equal(g.keys[:, :4], ref_g.keys[:, :4])
    assert np.all(g.keys[:, 4] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_backward_weight_gradient_overflow_is_named(dtype):
    """dalpha = dC Vᵀ overflows (huge values and upstream); the forward pass is still finite."""
    rng = rng_for(4)
    q = rng.standard_normal((2, 3, 4)).astype(dtype)
    k = rng.standard_normal((2, 5, 4)).astype(dtype)
    v = (rng.standard_normal((2, 5, 4)) * big(dtype)).astype(dtype)
    context, cache = attention_forward(q, k, v)
    assert np.all(np.isfinite(context))
    dcontext = (rng.standard_normal((2, 3, 4)) * big(dtype)).astype(dtype)
    with quiet(), pytest.raises(NonFiniteError, match=r"^attention weight gradient .*overflowed"):
        attention_backward(dcontext, cache)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_backward_key_gradient_overflow_is_named(dtype):
    """Scores stay O(1) (huge queries, tiny keys) but dK = dscoresᵀ Q overflows."""
    rng = rng_for(5)
    q = (rng.standard_normal((2, 3, 4)) * big(dtype)).astype(dtype)
    k = (rng.standard_normal((2, 5, 4)) / big(dtype)).astype(dtype)
    v = rng.standard_normal((2, 5, 4)).astype(dtype)
    _, cache = attention_forward(q, k, v)
    dcontext = (rng.standard_normal((2, 3, 4)) * big(dtype)).astype(dtype)
    with quiet(), pytest.raises(NonFiniteError, match=r"^gradient of the attention keys overflowed"):
        attention_backward(dcontext, cache)


@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([0.3, 0.5, 0.6, 0.8, 0.95]),
       which=st.sets(st.sampled_from(["q", "k", "v", "W", "dC"]), min_size=1))
def test_attention_huge_finite_inputs_give_finite_outputs_or_named_error(dtype, seed, scale, which):
    rng = rng_for(seed)
    size = {name: big(dtype, scale) if name in which else dtype(1) for name in ("q", "k", "v", "W", "dC")}
    q = (rng.standard_normal((2, 3, 4)) * size["q"]).astype(dtype)
    k = (rng.standard_normal((2, 5, 4)) * size["k"]).astype(dtype)
    v = (rng.standard_normal((2, 5, 3)) * size["v"]).astype(dtype)
    W = (rng.standard_normal((4, 4)) * size["W"]).astype(dtype)
    dC = (rng.standard_normal((2, 3, 3)) * size["dC"]).astype(dtype)
    mask = rng.random((2, 5)) < 0.7
    mask[:, 0] = True

    def run():
        context, cache = attention_forward(q, k, v, score_matrix=W, mask=mask)
        return (context, cache.weights) + tuple(attention_backward(dC, cache))

    finite_or_named(run)


# --------------------------------------------------------------------------------------------------
# Multi-head attention
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_multihead_score_overflow_is_named(dtype):
    rng = rng_for(6)
    q = rng.standard_normal((2, 3, 4)).astype(dtype)
    k = (rng.standard_normal((2, 5, 4)) * big(dtype)).astype(dtype)
    Ws = (rng.standard_normal((3, 4, 4)) * big(dtype)).astype(dtype)
    Ps = rng.standard_normal((3, 4, 2)).astype(dtype)
    with quiet(), pytest.raises(NonFiniteError, match=r"^attention scores overflowed"):
        multihead_attention_forward(q, k, k, Ws, Ps)


@pytest.mark.parametrize("dtype", DTYPES)
def test_multihead_context_overflow_is_named(dtype):
    """Values times huge value matrices overflow although every score is ordinary."""
    rng = rng_for(7)
    q = rng.standard_normal((2, 3, 4)).astype(dtype)
    k = rng.standard_normal((2, 5, 4)).astype(dtype)
    v = (rng.standard_normal((2, 5, 4)) * big(dtype)).astype(dtype)
    Ws = rng.standard_normal((3, 4, 4)).astype(dtype)
    Ps = (rng.standard_normal((3, 4, 2)) * big(dtype)).astype(dtype)
    with quiet(), pytest.raises(NonFiniteError, match=r"^attention context overflowed"):
        multihead_attention_forward(q, k, v, Ws, Ps)


@pytest.mark.parametrize("dtype", DTYPES)
def test_multihead_backward_overflow_is_named(dtype):
    rng = rng_for(8)
    q = rng.standard_normal((2, 3, 4)).astype(dtype)
    k = rng.standard_normal((2, 5, 4)).astype(dtype)
    v = rng.standard_normal((2, 5, 4)).astype(dtype)
    Ws = rng.standard_normal((3, 4, 4)).astype(dtype)
    Ps = (rng.standard_normal((3, 4, 2)) * big(dtype)).astype(dtype)
    context, cache = multihead_attention_forward(q, k, v, Ws, Ps)
    assert np.all(np.isfinite(context))
    dcontext = (rng.standard_normal((2, 3, 2)) * big(dtype)).astype(dtype)
    with quiet(), pytest.raises(NonFiniteError, match=r"^(attention weight gradient|gradient of the)"):
        multihead_attention_backward(dcontext, cache)


@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([0.3, 0.5, 0.6, 0.8, 0.95]),
       which=st.sets(st.sampled_from(["q", "k", "v", "W", "P", "dC"]), min_size=1), uniform=st.booleans())
def test_multihead_huge_finite_inputs_give_finite_outputs_or_named_error(dtype, seed, scale, which, uniform):
    rng = rng_for(seed)
    size = {n: big(dtype, scale) if n in which else dtype(1) for n in ("q", "k", "v", "W", "P", "dC")}
    q = (rng.standard_normal((2, 3, 4)) * size["q"]).astype(dtype)
    k = (rng.standard_normal((2, 5, 4)) * size["k"]).astype(dtype)
    v = (rng.standard_normal((2, 5, 3)) * size["v"]).astype(dtype)
    Ws = (rng.standard_normal((2, 4, 4)) * size["W"]).astype(dtype)
    Ps = (rng.standard_normal((2, 3, 2)) * size["P"]).astype(dtype)
    dC = (rng.standard_normal((2, 3, 2)) * size["dC"]).astype(dtype)
    mask = rng.random((2, 5)) < 0.7
    mask[:, 0] = True

    def run():
        context, cache = multihead_attention_forward(q, k, v, Ws, Ps, mask=mask, uniform=uniform)
        return (context, cache.weights) + tuple(multihead_attention_backward(dC, cache))

    finite_or_named(run)


# --------------------------------------------------------------------------------------------------
# Softmax output, embedding
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_output_logit_overflow_is_named(dtype):
    hidden = np.full((2, 3), big(dtype), dtype=dtype)
    weight = np.full((3, 4), big(dtype), dtype=dtype)
    with quiet(), pytest.raises(NonFiniteError, match=r"^output logits overflowed"):
        softmax_output_forward(hidden, weight, np.zeros(4, dtype), np.array([0, 1]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_output_log_probability_overflow_is_named(dtype):
    """Logits ±0.9·max are finite, but their difference (a log-probability) is not."""
    m = np.finfo(dtype).max
    hidden = np.ones((2, 1), dtype=dtype)
    weight = np.array([[0.9 * m, -0.9 * m]], dtype=dtype)
    with quiet(), pytest.raises(NonFiniteError, match=r"^log-probabilities from output logits overflowed"):
        softmax_output_forward(hidden, weight, np.zeros(2, dtype), np.array([0, 1]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_output_loss_overflow_is_named(dtype):
    """Each gold log-probability is finite (-0.6·max) but their sum is not."""
    m = np.finfo(dtype).max
    hidden = np.ones((2, 1), dtype=dtype)
    weight = np.array([[0.3 * m, -0.3 * m]], dtype=dtype)
    with quiet(), pytest.raises(NonFiniteError, match=r"^cross-entropy loss overflowed"):
        softmax_output_forward(hidden, weight, np.zeros(2, dtype), np.array([1, 1]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_output_backward_overflow_is_named(dtype):
    rng = rng_for(9)
    hidden = rng.standard_normal((4, 3)).astype(dtype)
    weight = (rng.standard_normal((3, 5)) * big(dtype, 0.3)).astype(dtype)
    _, cache = softmax_output_forward(hidden, weight, np.zeros(5, dtype), np.array([0, 1, 2, 3]))
    with quiet(), pytest.raises(NonFiniteError, match=r"^gradient of the output"):
        softmax_output_backward(dtype(np.finfo(dtype).max / 2), cache)


@pytest.mark.parametrize("dtype", DTYPES)
@given(seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([0.3, 0.5, 0.6, 0.95]),
       which=st.sets(st.sampled_from(["h", "W", "b", "dloss"]), min_size=1))
def test_softmax_output_huge_finite_inputs_give_finite_outputs_or_named_error(dtype, seed, scale, which):
    rng = rng_for(seed)
    size = {n: big(dtype, scale) if n in which else dtype(1) for n in ("h", "W", "b", "dloss")}
    hidden = (rng.standard_normal((2, 3, 4)) * size["h"]).astype(dtype)
    weight = (rng.standard_normal((4, 5)) * size["W"]).astype(dtype)
    bias = (rng.standard_normal(5) * size["b"]).astype(dtype)
    targets = rng.integers(0, 5, size=(2, 3))
    dloss = float(size["dloss"])

    def run():
        loss, cache = softmax_output_forward(hidden, weight, bias, targets)
        return (np.array(loss), cache.log_probs) + tuple(softmax_output_backward(dloss, cache))

    finite_or_named(run)


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_backward_overflow_is_named(dtype):
    table = np.zeros((3, 2), dtype=dtype)
    _, cache = embedding_forward(np.array([[0, 0, 0, 1]]), table)
    dout = np.full((1, 4, 2), np.finfo(dtype).max / 2, dtype=dtype)
    with quiet(), pytest.raises(NonFiniteError, match=r"^embedding gradient .*overflowed"):
        embedding_backward(dout, cache)
    dout[0, :3] = 1.0                        # ordinary repeated rows: finite, as before
    np.testing.assert_array_equal(embedding_backward(dout, cache)[0], 3.0)


# --------------------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_softmax_ignores_any_value_at_masked_entries(dtype):
    scores = np.array([[1.0, 2.0, np.inf, np.nan], [np.inf, 0.5, -np.inf, 3.0]], dtype=dtype)
    mask = np.array([[True, True, False, False], [False, True, False, True]])
    p = masked_softmax(scores, mask)
    ref = masked_softmax(np.where(mask, scores, 0.0).astype(dtype), mask)
    np.testing.assert_array_equal(p, ref)
    assert np.all(p[~mask] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_masked_softmax_rejects_unmasked_inf_or_nan(dtype, bad):
    scores = np.array([[1.0, bad, 0.0]], dtype=dtype)
    for mask in (None, np.array([[True, True, False]])):
        with pytest.raises(NonFiniteError, match=r"^scores overflowed to inf or NaN at unmasked entries"):
            masked_softmax(scores, mask)
    with pytest.raises(NonFiniteError, match=r"^attention scores overflowed"):
        masked_softmax(scores, None, name="attention scores")


def test_masked_softmax_rejects_all_masked_rows():
    scores = np.zeros((2, 3))
    mask = np.array([[True, False, False], [False, False, False]])
    with pytest.raises(NonFiniteError, match=r"^scores have a row with every entry masked"):
        masked_softmax(scores, mask)


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_softmax_rejects_inf_nan_and_range_overflow(dtype):
    m = np.finfo(dtype).max
    for bad in (np.inf, np.nan):
        with pytest.raises(NonFiniteError, match=r"^logits overflowed to inf or NaN"):
            log_softmax(np.array([[0.0, bad]], dtype=dtype))
    with pytest.raises(NonFiniteError, match=r"^logits have a row with every entry -inf"):
        log_softmax(np.array([[-np.inf, -np.inf]], dtype=dtype))
    with quiet(), pytest.raises(NonFiniteError, match=r"^log-probabilities from logits overflowed to -inf"):
        log_softmax(np.array([[0.9 * m, -0.9 * m]], dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_softmax_keeps_explicit_minus_inf_and_huge_ordinary_spread(dtype):
    m = np.finfo(dtype).max
    out = log_softmax(np.array([[0.0, -np.inf, 1.0]], dtype=dtype))
    assert out[0, 1] == -np.inf and np.all(np.isfinite(out[0, [0, 2]]))
    out = log_softmax(np.array([[0.4 * m, -0.4 * m]], dtype=dtype))   # spread 0.8·max: representable
    assert np.all(np.isfinite(out)) and out[0, 0] == 0
