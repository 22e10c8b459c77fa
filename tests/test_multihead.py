"""Property tests for multi-head attention (:func:`miniattn.layers.multihead_attention_forward`).

H heads, each with its own score matrix W_h (dq, dk) and value matrix P_h (dv, do), contexts averaged:
``context = (1/H) sum_h alpha_h (V P_h)``. Besides the block properties (gradient check, linearity,
zero upstream, no mutation, distributions, permutation, stability, float32, bad input), the block is
compared with an independent per-head composition of the single-head block.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, strategies as st

from miniattn.gradcheck import check_directional, check_vjp
from miniattn.layers import (
    attention_backward, attention_forward, multihead_attention_backward, multihead_attention_forward,
)
from checks import assert_gradcheck
from strategies import assert_unchanged, attention_shapes, dims, float_arrays, masks, seeds, snapshot

NAMES = ("queries", "keys", "values", "score_matrices", "value_matrices")


def multihead_fns(mask, uniform):
    def func(**inputs):
        return multihead_attention_forward(**inputs, mask=mask, uniform=uniform)[0]

    def vjp(upstream, **inputs):
        _, cache = multihead_attention_forward(**inputs, mask=mask, uniform=uniform)
        return multihead_attention_backward(upstream, cache)._asdict()

    return func, vjp


class MultiHeadCase:
    def __init__(self, shape, H, do, mask, uniform, rng):
        B, T, S, dq, dk, dv = shape
        self.shape, self.H, self.mask, self.uniform, self.rng = shape, H, mask, uniform, rng
        self.inputs = {"queries": rng.standard_normal((B, T, dq)), "keys": rng.standard_normal((B, S, dk)),
                       "values": rng.standard_normal((B, S, dv)),
                       "score_matrices": rng.standard_normal((H, dq, dk)),
                       "value_matrices": rng.standard_normal((H, dv, do))}

    def forward(self, **overrides):
        return multihead_attention_forward(**{**self.inputs, "mask": self.mask, "uniform": self.uniform,
                                              **overrides})

    def __repr__(self):
        return (f"MultiHeadCase(shape={self.shape}, H={self.H}, mask="
                f"{None if self.mask is None else self.mask.tolist()}, uniform={self.uniform})")


@st.composite
def multihead_cases(draw, *, uniform=None, masked=None):
    shape = draw(attention_shapes(max_batch=2, max_len=3, max_dim=3))
    H = draw(dims(1, 3))
    do = draw(dims(1, 3))
    masked = draw(st.booleans()) if masked is None else masked
    mask = draw(masks((shape.B, shape.S))) if masked else None
    uniform = draw(st.booleans()) if uniform is None else uniform
    rng = np.random.default_rng(np.random.SeedSequence(draw(seeds())))
    return MultiHeadCase(shape, H, do, mask, uniform, rng)


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("uniform", [False, True], ids=["learned", "uniform"])
@given(data=st.data())
def test_multihead_gradcheck(masked, uniform, data):
    case = data.draw(multihead_cases(uniform=uniform, masked=masked))
    func, vjp = multihead_fns(case.mask, case.uniform)
    assert_gradcheck(check_vjp(func, vjp, case.inputs, rng=case.rng))


@pytest.mark.parametrize("B, T, S, H", [(1, 1, 1, 1), (1, 1, 1, 3), (1, 2, 1, 2), (2, 1, 3, 1)])
def test_multihead_gradcheck_edge_shapes(B, T, S, H):
    rng = np.random.default_rng(np.random.SeedSequence([B, T, S, H]))
    case = MultiHeadCase((B, T, S, 2, 3, 2), H, 2, None, False, rng)
    func, vjp = multihead_fns(None, False)
    assert_gradcheck(check_vjp(func, vjp, case.inputs, rng=rng))


@given(multihead_cases())
def test_multihead_equals_mean_of_single_heads(case):
    """Independent reference: loop over heads in the test, single-head block with value V P_h."""
    context, cache = case.forward()
    x = case.inputs
    heads = [attention_forward(x["queries"], x["keys"], x["values"] @ x["value_matrices"][h],
                               x["score_matrices"][h], mask=case.mask, uniform=case.uniform)
             for h in range(case.H)]
    np.testing.assert_allclose(context, np.mean([c for c, _ in heads], axis=0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cache.weights, np.stack([c.weights for _, c in heads]), rtol=1e-10, atol=1e-14)


@given(multihead_cases())
def test_multihead_backward_equals_sum_of_single_head_blocks(case):
    """The fused backward (heads folded into the query axis, one GEMM per projection) equals the
    block-composed one: per head, the single-head backward with values V P_h and upstream dC / H,
    chained through V P_h by hand, summed over heads."""
    context, cache = case.forward()
    x = case.inputs
    upstream = case.rng.standard_normal(context.shape)
    got = multihead_attention_backward(upstream, cache)
    H = case.H
    dq, dk, dv = (np.zeros_like(x[n]) for n in ("queries", "keys", "values"))
    dWs, dPs = [], []
    for h in range(H):
        P = x["value_matrices"][h]
        _, c = attention_forward(x["queries"], x["keys"], x["values"] @ P, x["score_matrices"][h],
                                 mask=case.mask, uniform=case.uniform)
        g = attention_backward(upstream / H, c)
        dq += g.queries
        dk += g.keys
        dv += g.values @ P.T
        dWs.append(g.score_matrix)
        dPs.append(np.einsum("bsi,bso->io", x["values"], g.values))
    for name, want in (("queries", dq), ("keys", dk), ("values", dv), ("score_matrices", np.stack(dWs)),
                       ("value_matrices", np.stack(dPs))):
        np.testing.assert_allclose(getattr(got, name), want, rtol=1e-10, atol=1e-12, err_msg=name)


@given(multihead_cases(), st.floats(-3, 3), st.floats(-3, 3))
def test_multihead_backward_linear_in_upstream(case, a, b):
    context, cache = case.forward()
    u1, u2 = case.rng.standard_normal(context.shape), case.rng.standard_normal(context.shape)
    combined = multihead_attention_backward(a * u1 + b * u2, cache)
    g1, g2 = multihead_attention_backward(u1, cache), multihead_attention_backward(u2, cache)
    for name, gc, ga, gb in zip(NAMES, combined, g1, g2):
        scale = abs(a) * np.max(np.abs(ga)) + abs(b) * np.max(np.abs(gb))
        np.testing.assert_allclose(gc, a * ga + b * gb, rtol=1e-9, atol=1e-12 * (scale + 1e-300), err_msg=name)


@given(multihead_cases())
def test_multihead_zero_upstream_gives_zero_gradients(case):
    context, cache = case.forward()
    for name, g in multihead_attention_backward(np.zeros_like(context), cache)._asdict().items():
        assert g.shape == case.inputs[name].shape, name
        assert not np.any(g), name


@given(multihead_cases())
def test_multihead_does_not_mutate_inputs_or_cache(case):
    before = snapshot((case.inputs, case.mask))
    context, cache = case.forward()
    cache_before = snapshot(cache)
    dcontext = case.rng.standard_normal(context.shape)
    multihead_attention_backward(dcontext, cache)
    multihead_attention_backward(dcontext, cache)
    assert_unchanged(before, (case.inputs, case.mask), "inputs")
    assert_unchanged(cache_before, cache, "cache")


@given(multihead_cases())
def test_multihead_weights_are_distributions_and_masked_exactly_zero(case):
    _, cache = case.forward()
    B, T, S, *_ = case.shape
    assert cache.weights.shape == (case.H, B, T, S)
    np.testing.assert_allclose(cache.weights.sum(axis=-1), 1.0, rtol=0, atol=4 * S * np.finfo(float).eps)
    if case.mask is not None:
        assert np.all(cache.weights[np.broadcast_to(~case.mask[None, :, None, :], cache.weights.shape)] == 0.0)


@given(multihead_cases(uniform=True))
def test_multihead_uniform_twin(case):
    context, cache = case.forward()
    B, T, S, *_ = case.shape
    keep = np.ones((B, S), dtype=bool) if case.mask is None else case.mask
    expected = np.where(keep, 1.0 / keep.sum(axis=1, keepdims=True), 0.0)
    np.testing.assert_array_equal(cache.weights, np.broadcast_to(expected[None, :, None, :], cache.weights.shape))
    grads = multihead_attention_backward(case.rng.standard_normal(context.shape), cache)
    assert not np.any(grads.queries) and not np.any(grads.keys) and not np.any(grads.score_matrices)
    assert np.any(grads.values) and np.any(grads.value_matrices)


@given(multihead_cases())
def test_multihead_permuting_keys_values_and_mask_together(case):
    B, T, S, *_ = case.shape
    perm = np.argsort(case.rng.random((B, S)), axis=1)
    take = lambda x: np.take_along_axis(x, perm[:, :, None], axis=1)    # noqa: E731
    permuted = {"keys": take(case.inputs["keys"]), "values": take(case.inputs["values"])}
    if case.mask is not None:
        permuted["mask"] = np.take_along_axis(case.mask, perm, axis=1)
    context, cache = case.forward()
    context_p, cache_p = case.forward(**permuted)
    np.testing.assert_allclose(context_p, context, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cache_p.weights, np.take_along_axis(cache.weights, perm[None, :, None, :], axis=3),
                               rtol=1e-12, atol=1e-15)


@given(case=multihead_cases(uniform=False), data=st.data())
def test_multihead_stable_at_scores_of_1e4(case, data):
    B, T, S, dq, dk, dv = case.shape
    big = {"queries": data.draw(float_arrays((B, T, dq), magnitude=100.0, min_magnitude=50.0)),
           "keys": data.draw(float_arrays((B, S, dk), magnitude=100.0, min_magnitude=50.0)),
           "score_matrices": np.sign(case.inputs["score_matrices"]) + (case.inputs["score_matrices"] == 0)}
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        context, cache = case.forward(**big)
        grads = multihead_attention_backward(case.rng.standard_normal(context.shape), cache)
    assert np.all(np.isfinite(context))
    np.testing.assert_allclose(cache.weights.sum(axis=-1), 1.0, rtol=0, atol=4 * S * np.finfo(float).eps)
    for name, g in grads._asdict().items():
        assert np.all(np.isfinite(g)), name


@given(multihead_cases())
def test_multihead_float32_stays_float32(case):
    context32, cache32 = case.forward(**{k: v.astype(np.float32) for k, v in case.inputs.items()})
    assert context32.dtype == np.float32 and cache32.weights.dtype == np.float32
    np.testing.assert_allclose(context32, case.forward()[0], rtol=1e-4, atol=1e-4)
    grads = multihead_attention_backward(case.rng.standard_normal(context32.shape).astype(np.float32), cache32)
    for name, g in grads._asdict().items():
        assert g.dtype == np.float32, name


def test_multihead_check_directional_large_shape():
    rng = np.random.default_rng(np.random.SeedSequence(2103_07601))
    B, T, S, d, H = 8, 12, 16, 32, 4
    mask = rng.random((B, S)) < 0.7
    mask[:, 0] = True
    inputs = {"queries": rng.standard_normal((B, T, d)), "keys": rng.standard_normal((B, S, d)),
              "values": rng.standard_normal((B, S, d)),
              "score_matrices": rng.standard_normal((H, d, d)) / d,
              "value_matrices": rng.standard_normal((H, d, d)) / np.sqrt(d)}
    for m in (None, mask):
        func, vjp = multihead_fns(m, False)
        assert_gradcheck(check_directional(func, vjp, inputs, rng=rng, n_directions=4))


def _inputs(B=2, T=3, S=4, d=2, H=2, do=3):
    return {"queries": np.ones((B, T, d)), "keys": np.ones((B, S, d)), "values": np.ones((B, S, d)),
            "score_matrices": np.ones((H, d, d)), "value_matrices": np.ones((H, d, do))}


@pytest.mark.parametrize("change, error, match", [
    ({"value_matrices": np.ones((3, 2, 3))}, ValueError, r"same number of heads; got 2 and 3"),
    ({"score_matrices": np.ones((2, 2, 3))}, ValueError, r"score_matrices must have shape \(H, dq, dk\)"),
    ({"value_matrices": np.ones((2, 5, 3))}, ValueError, r"value_matrices must have shape \(H, dv=2, do\)"),
    ({"score_matrices": np.ones((2, 2))}, ValueError, r"score_matrices must have 3 dimensions"),
    ({"values": np.ones((2, 5, 2))}, ValueError, r"keys and values must share B and S"),
    ({"keys": np.ones((3, 4, 2)), "values": np.ones((3, 4, 2))}, ValueError, r"keys and values must share B and S"),
    ({"queries": np.full((2, 3, 2), np.nan)}, ValueError, r"queries contains NaN or inf"),
    ({"value_matrices": np.full((2, 2, 3), np.inf)}, ValueError, r"value_matrices contains NaN or inf"),
    ({"score_matrices": np.ones((2, 2, 2), dtype=np.int32)}, TypeError, r"score_matrices must be a floating-point"),
    ({"mask": np.ones((2, 4), dtype=np.int8)}, TypeError, r"mask must be a boolean array"),
    ({"mask": np.ones((4, 2), dtype=bool)}, ValueError, r"mask must have shape \(2, 4\)"),
    ({"mask": np.array([[False] * 4, [True] * 4])}, ValueError, r"mask has rows with every key masked \(batch rows \[0\]\)"),
    ({"queries": np.ones((0, 3, 2)), "keys": np.ones((0, 4, 2)), "values": np.ones((0, 4, 2))},
     ValueError, r"queries must not be empty"),
])
def test_multihead_rejects_bad_input(change, error, match):
    with pytest.raises(error, match=match):
        multihead_attention_forward(**{**_inputs(), **change})


def test_multihead_backward_rejects_bad_dcontext():
    _, cache = multihead_attention_forward(**_inputs())
    with pytest.raises(ValueError, match=r"dcontext must have shape \(2, 3, 3\)"):
        multihead_attention_backward(np.ones((2, 3, 2)), cache)
