"""Property tests for the single-head blocks of :mod:`miniattn.layers`.

Embedding, single-head attention (dot-product and bilinear, with and without a key mask, and the
uniform twin), the softmax output layer (with and without a target mask) and the shared numerics
``masked_softmax`` / ``log_softmax``. Multi-head attention is in ``test_multihead.py``.

Values for gradient checks come from a seeded ``numpy.random.Generator`` (standard normal), while
hypothesis draws the shapes, masks, ids, flags and the seed: generic values keep the norm-wise
relative error meaningful (for degenerate values such as all-zero arrays it is a ratio of two
round-off noises), and separate tests feed hypothesis-drawn values (zeros, repeats, extremes) where
only the element-wise tolerance is asserted.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.special
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from miniattn.gradcheck import check_directional, check_vjp
from miniattn.layers import (
    attention_backward, attention_forward, embedding_backward, embedding_forward, log_softmax,
    masked_softmax, softmax_output_backward, softmax_output_forward,
)
from checks import assert_gradcheck, assert_linear
from strategies import (
    assert_unchanged, attention_shapes, dims, float_arrays, generators, id_arrays, masks, seeds, snapshot,
)


def no_floating_point_errors():
    """Overflow, invalid operations and division by zero raise (underflow of exp to 0 is harmless)."""
    return np.errstate(over="raise", invalid="raise", divide="raise")


# ==================================================================================================
# Embedding
# ==================================================================================================

def embedding_fns(ids):
    def func(table):
        return embedding_forward(ids, table)[0]

    def vjp(upstream, table):
        return {"table": embedding_backward(upstream, embedding_forward(ids, table)[1])}

    return func, vjp


@st.composite
def embedding_cases(draw):
    V = draw(dims(1, 6))
    d = draw(dims(1, 4))
    id_shape = draw(st.lists(dims(1, 4), min_size=1, max_size=3).map(tuple))
    ids = draw(id_arrays(id_shape, V))
    rng = np.random.default_rng(np.random.SeedSequence(draw(seeds())))
    return ids, rng.standard_normal((V, d)), rng


@given(embedding_cases())
def test_embedding_gradcheck(case):
    ids, table, rng = case
    func, vjp = embedding_fns(ids)
    assert_gradcheck(check_vjp(func, vjp, {"table": table}, rng=rng))


@given(embedding_cases())
def test_embedding_forward_is_row_lookup_and_backward_matches_one_hot(case):
    ids, table, rng = case
    out, cache = embedding_forward(ids, table)
    assert out.shape == ids.shape + (table.shape[1],)
    # Independent reference: a one-hot matrix product (cost V*N*d, fine for tests).
    one_hot = (ids.reshape(-1, 1) == np.arange(table.shape[0])).astype(np.float64)   # (N, V)
    np.testing.assert_array_equal(out.reshape(-1, table.shape[1]), one_hot @ table)
    dout = rng.standard_normal(out.shape)
    np.testing.assert_allclose(embedding_backward(dout, cache), one_hot.T @ dout.reshape(-1, table.shape[1]),
                               rtol=1e-12, atol=1e-14)


@st.composite
def scatter_cases(draw):
    """ids with repeats (few rows, many positions) and an upstream gradient whose entries span many
    orders of magnitude and both signs (zeros of both signs included), so that any change in the
    order or grouping of the additions would change the rounded sums."""
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    V = draw(dims(1, 6))
    d = draw(dims(1, 4))
    id_shape = draw(st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple))
    ids = draw(id_arrays(id_shape, V))
    width = 8 * np.dtype(dtype).itemsize
    elements = st.one_of(st.floats(-2.0 ** 20, 2.0 ** 20, width=width),
                         st.floats(-2.0 ** -20, 2.0 ** -20, width=width),
                         st.sampled_from([0.0, -0.0, 1.0, 2.0 ** -27]))
    dout = draw(hnp.arrays(dtype, ids.shape + (d,), elements=elements))
    return ids, dout, V, d, dtype


@given(scatter_cases())
def test_embedding_backward_is_bit_identical_to_np_add_at(case):
    """The scatter-add's comment in miniattn/layers.py claims the CSR product adds, for each table
    row, the upstream rows in their original order, exactly like np.add.at: test it bit for bit."""
    ids, dout, V, d, dtype = case
    table = np.zeros((V, d), dtype=dtype)
    got = embedding_backward(dout, embedding_forward(ids, table)[1])
    expected = np.zeros((V, d), dtype=dtype)
    np.add.at(expected, ids.reshape(-1), dout.reshape(-1, d))
    assert got.dtype == expected.dtype == dtype
    uint = np.uint64 if dtype == np.float64 else np.uint32
    assert np.array_equal(got.view(uint), expected.view(uint)), (got, expected)   # bits, signed zeros too


def test_embedding_backward_accumulates_repeated_ids_by_hand():
    rng = np.random.default_rng(np.random.SeedSequence(20210314))
    ids = np.array([[0, 2, 0], [2, 2, 1]])
    table = rng.standard_normal((4, 2))
    _, cache = embedding_forward(ids, table)
    dout = rng.standard_normal((2, 3, 2))
    dtable = embedding_backward(dout, cache)
    expected = np.stack([
        dout[0, 0] + dout[0, 2],                  # id 0 at (0,0) and (0,2)
        dout[1, 2],                               # id 1 once
        dout[0, 1] + dout[1, 0] + dout[1, 1],     # id 2 three times
        np.zeros(2),                              # id 3 never used
    ])
    np.testing.assert_allclose(dtable, expected, rtol=1e-15, atol=0)


@given(embedding_cases(), st.floats(-3, 3), st.floats(-3, 3))
def test_embedding_backward_linear_in_upstream(case, a, b):
    ids, table, rng = case
    out, cache = embedding_forward(ids, table)
    u1, u2 = rng.standard_normal(out.shape), rng.standard_normal(out.shape)
    assert_linear(lambda u: {"table": embedding_backward(u, cache)}, u1, u2, a, b)


@given(embedding_cases())
def test_embedding_zero_upstream_gives_zero_gradient(case):
    ids, table, _ = case
    out, cache = embedding_forward(ids, table)
    dtable = embedding_backward(np.zeros_like(out), cache)
    assert dtable.shape == table.shape
    assert not np.any(dtable)


@given(embedding_cases())
def test_embedding_does_not_mutate_inputs_or_cache(case):
    ids, table, rng = case
    before = snapshot((ids, table))
    out, cache = embedding_forward(ids, table)
    cache_before = snapshot(cache)
    dout = rng.standard_normal(out.shape)
    dout_before = dout.copy()
    embedding_backward(dout, cache)
    assert_unchanged(before, (ids, table), "inputs")
    assert_unchanged(cache_before, cache, "cache")
    assert_unchanged(dout_before, dout, "dout")
    out[...] = 0.0                              # the output is a copy, not a view of the table
    assert_unchanged(before[1], table, "table after writing to out")


@given(embedding_cases())
def test_embedding_float32_stays_float32(case):
    ids, table, rng = case
    out32, cache = embedding_forward(ids, table.astype(np.float32))
    assert out32.dtype == np.float32
    assert embedding_backward(rng.standard_normal(out32.shape).astype(np.float32), cache).dtype == np.float32


@pytest.mark.parametrize("ids, match", [
    (np.array([0, 5]), r"ids must lie in \[0, 5\)"),
    (np.array([[-1, 2]]), r"ids must lie in \[0, 5\)"),
    (np.array([0.0, 1.0]), r"ids must be an integer array"),
    (np.array([True, False]), r"ids must be an integer array"),
    (np.zeros((0, 3), dtype=np.int64), r"ids must not be empty"),
])
def test_embedding_rejects_bad_ids(ids, match):
    table = np.ones((5, 2))
    error = TypeError if "integer" in match else ValueError
    with pytest.raises(error, match=match):
        embedding_forward(ids, table)


@pytest.mark.parametrize("table, error, match", [
    (np.array([[0.0, np.nan], [1.0, 2.0]]), ValueError, r"table contains NaN or inf"),
    (np.array([[0.0, np.inf], [1.0, 2.0]]), ValueError, r"table contains NaN or inf"),
    (np.ones(4), ValueError, r"table must have 2 dimensions"),
    (np.ones((2, 2), dtype=np.int64), TypeError, r"table must be a floating-point array"),
])
def test_embedding_rejects_bad_table(table, error, match):
    with pytest.raises(error, match=match):
        embedding_forward(np.array([0, 1]), table)


def test_embedding_backward_rejects_bad_dout():
    _, cache = embedding_forward(np.array([[0, 1, 1]]), np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"dout must have shape \(1, 3, 2\)"):
        embedding_backward(np.ones((1, 3, 3)), cache)
    with pytest.raises(ValueError, match=r"dout contains NaN or inf"):
        embedding_backward(np.full((1, 3, 2), np.nan), cache)


# ==================================================================================================
# Single-head attention
# ==================================================================================================

def attention_fns(mask, uniform):
    """``func(**inputs) -> context`` and its vjp; ``score_matrix`` present only for bilinear attention."""
    def func(queries, keys, values, score_matrix=None):
        return attention_forward(queries, keys, values, score_matrix, mask=mask, uniform=uniform)[0]

    def vjp(upstream, queries, keys, values, score_matrix=None):
        _, cache = attention_forward(queries, keys, values, score_matrix, mask=mask, uniform=uniform)
        grads = attention_backward(upstream, cache)._asdict()
        return {k: g for k, g in grads.items() if g is not None}

    return func, vjp


class AttentionCase:
    """One generated attention problem: inputs (a dict for the gradient checker), mask, uniform, rng."""

    def __init__(self, shape, bilinear, mask, uniform, rng, scale=1.0):
        B, T, S, dq, dk, dv = shape
        self.shape, self.mask, self.uniform, self.rng = shape, mask, uniform, rng
        self.inputs = {"queries": scale * rng.standard_normal((B, T, dq)),
                       "keys": scale * rng.standard_normal((B, S, dk)),
                       "values": rng.standard_normal((B, S, dv))}
        if bilinear:
            self.inputs["score_matrix"] = rng.standard_normal((dq, dk))

    def forward(self, **overrides):
        kw = {**self.inputs, "mask": self.mask, "uniform": self.uniform, **overrides}
        return attention_forward(**kw)

    def __repr__(self):
        return (f"AttentionCase(shape={self.shape}, bilinear={'score_matrix' in self.inputs}, "
                f"mask={None if self.mask is None else self.mask.tolist()}, uniform={self.uniform})")


@st.composite
def attention_cases(draw, *, uniform=None, masked=None, bilinear=None, max_len=4):
    bilinear = draw(st.booleans()) if bilinear is None else bilinear
    shape = draw(attention_shapes(same_qk=not bilinear, max_len=max_len))
    masked = draw(st.booleans()) if masked is None else masked
    mask = draw(masks((shape.B, shape.S))) if masked else None
    uniform = draw(st.booleans()) if uniform is None else uniform
    rng = np.random.default_rng(np.random.SeedSequence(draw(seeds())))
    return AttentionCase(shape, bilinear, mask, uniform, rng)


@pytest.mark.parametrize("bilinear", [False, True], ids=["dot", "bilinear"])
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("uniform", [False, True], ids=["learned", "uniform"])
@given(data=st.data())
def test_attention_gradcheck(bilinear, masked, uniform, data):
    case = data.draw(attention_cases(uniform=uniform, masked=masked, bilinear=bilinear))
    func, vjp = attention_fns(case.mask, case.uniform)
    assert_gradcheck(check_vjp(func, vjp, case.inputs, rng=case.rng))


@pytest.mark.parametrize("B, T, S", [(1, 1, 1), (1, 1, 3), (1, 3, 1), (2, 1, 1), (3, 2, 1)])
@pytest.mark.parametrize("bilinear", [False, True], ids=["dot", "bilinear"])
def test_attention_gradcheck_edge_shapes(B, T, S, bilinear):
    """Single-key rows (S=1: alpha is exactly 1 and no gradient reaches Q, K, W), T=1, B=1."""
    rng = np.random.default_rng(np.random.SeedSequence([B, T, S, bilinear]))
    case = AttentionCase((B, T, S, 2, 3 if bilinear else 2, 2), bilinear, None, False, rng)
    func, vjp = attention_fns(None, False)
    assert_gradcheck(check_vjp(func, vjp, case.inputs, rng=rng))
    if S == 1:
        grads = vjp(rng.standard_normal((B, T, 2)), **case.inputs)
        assert not np.any(grads["queries"]) and not np.any(grads["keys"])


@given(queries=float_arrays((2, 2, 2), magnitude=2.0), keys=float_arrays((2, 3, 2), magnitude=2.0),
       values=float_arrays((2, 3, 2), magnitude=2.0), mask=st.none() | masks((2, 3)), rng=generators())
def test_attention_gradcheck_hypothesis_values(queries, keys, values, mask, rng):
    """Hypothesis-chosen values (zeros, ties, repeated entries): the element-wise tolerance holds."""
    func, vjp = attention_fns(mask, False)
    report = check_vjp(func, vjp, {"queries": queries, "keys": keys, "values": values}, rng=rng)
    assert report.passed, str(report)


@given(attention_cases(), st.floats(-3, 3), st.floats(-3, 3))
def test_attention_backward_linear_in_upstream(case, a, b):
    context, cache = case.forward()
    u1, u2 = case.rng.standard_normal(context.shape), case.rng.standard_normal(context.shape)

    def grads(u):
        return {k: g for k, g in attention_backward(u, cache)._asdict().items() if g is not None}

    assert_linear(grads, u1, u2, a, b)


@given(attention_cases())
def test_attention_zero_upstream_gives_zero_gradients(case):
    context, cache = case.forward()
    grads = attention_backward(np.zeros_like(context), cache)
    for name, g in grads._asdict().items():
        if name == "score_matrix" and "score_matrix" not in case.inputs:
            assert g is None
        else:
            assert g.shape == case.inputs[name].shape, name
            assert not np.any(g), name


@given(attention_cases())
def test_attention_does_not_mutate_inputs_or_cache(case):
    inputs_before = snapshot((case.inputs, case.mask))
    context, cache = case.forward()
    cache_before = snapshot(cache)
    dcontext = case.rng.standard_normal(context.shape)
    dcontext_before = dcontext.copy()
    attention_backward(dcontext, cache)
    attention_backward(dcontext, cache)
    assert_unchanged(inputs_before, (case.inputs, case.mask), "inputs")
    assert_unchanged(cache_before, cache, "cache")
    assert_unchanged(dcontext_before, dcontext, "dcontext")


@given(attention_cases())
def test_attention_weights_are_a_distribution_over_unmasked_keys(case):
    context, cache = case.forward()
    B, T, S, *_ = case.shape
    alpha = cache.weights
    assert alpha.shape == (B, T, S)
    assert np.all(alpha >= 0)
    np.testing.assert_allclose(alpha.sum(axis=-1), 1.0, rtol=0, atol=4 * S * np.finfo(float).eps)
    if case.mask is not None:
        masked = np.broadcast_to(~case.mask[:, None, :], alpha.shape)
        assert np.all(alpha[masked] == 0.0)      # exactly zero, not merely small
    # The context is the alpha-weighted sum of values (reference by einsum).
    np.testing.assert_allclose(context, np.einsum("bts,bsv->btv", alpha, case.inputs["values"]),
                               rtol=1e-12, atol=1e-14)
    if not case.uniform:
        # Against an independent softmax of the scores, masked keys at -inf.
        W = case.inputs.get("score_matrix", np.eye(case.shape.dq))
        scores = np.einsum("btq,qk,bsk->bts", case.inputs["queries"], W, case.inputs["keys"])
        if case.mask is not None:
            scores = np.where(case.mask[:, None, :], scores, -np.inf)
        np.testing.assert_allclose(alpha, scipy.special.softmax(scores, axis=-1), rtol=1e-12, atol=1e-15)


@given(attention_cases(uniform=True))
def test_uniform_twin_is_exactly_uniform_and_passes_no_gradient_to_scores(case):
    context, cache = case.forward()
    B, T, S, *_ = case.shape
    n_unmasked = np.full(B, S) if case.mask is None else case.mask.sum(axis=1)
    keep = np.ones((B, S), dtype=bool) if case.mask is None else case.mask
    expected = np.where(keep, 1.0 / n_unmasked[:, None], 0.0)[:, None, :]
    np.testing.assert_array_equal(cache.weights, np.broadcast_to(expected, (B, T, S)))
    grads = attention_backward(case.rng.standard_normal(context.shape), cache)
    assert not np.any(grads.queries) and not np.any(grads.keys)
    if "score_matrix" in case.inputs:
        assert grads.score_matrix.shape == case.inputs["score_matrix"].shape
        assert not np.any(grads.score_matrix)
    # The values still learn: dV = alphaᵀ dC (nonzero for unmasked keys of a random upstream).
    assert np.any(grads.values)


@given(attention_cases())
def test_attention_permuting_keys_values_and_mask_together(case):
    """Context unchanged, weights permuted; a different permutation for every batch row."""
    B, T, S, *_ = case.shape
    perm = np.argsort(case.rng.random((B, S)), axis=1)                   # (B, S)
    take = lambda x: np.take_along_axis(x, perm[:, :, None], axis=1)    # noqa: E731
    permuted = {"keys": take(case.inputs["keys"]), "values": take(case.inputs["values"])}
    if case.mask is not None:
        permuted["mask"] = np.take_along_axis(case.mask, perm, axis=1)
    context, cache = case.forward()
    context_p, cache_p = case.forward(**permuted)
    np.testing.assert_allclose(context_p, context, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cache_p.weights, np.take_along_axis(cache.weights, perm[:, None, :], axis=2),
                               rtol=1e-12, atol=1e-15)


@given(case=attention_cases(uniform=False), data=st.data())
def test_attention_stable_at_scores_of_1e4(case, data):
    """Scores of order ±1e4 (queries and keys of size ~100): finite, normalised, no warnings."""
    B, T, S, dq, dk, dv = case.shape
    big = {"queries": data.draw(float_arrays((B, T, dq), magnitude=100.0, min_magnitude=50.0)),
           "keys": data.draw(float_arrays((B, S, dk), magnitude=100.0, min_magnitude=50.0))}
    if "score_matrix" in case.inputs:
        big["score_matrix"] = np.sign(case.inputs["score_matrix"]) + (case.inputs["score_matrix"] == 0)
    with warnings.catch_warnings(), no_floating_point_errors():
        warnings.simplefilter("error")
        context, cache = case.forward(**big)
        grads = attention_backward(case.rng.standard_normal(context.shape), cache)
    assert np.all(np.isfinite(context)) and np.all(np.isfinite(cache.weights))
    np.testing.assert_allclose(cache.weights.sum(axis=-1), 1.0, rtol=0, atol=4 * S * np.finfo(float).eps)
    for name, g in grads._asdict().items():
        assert g is None or np.all(np.isfinite(g)), name


@given(attention_cases())
def test_attention_float32_stays_float32(case):
    inputs32 = {k: v.astype(np.float32) for k, v in case.inputs.items()}
    context32, cache32 = case.forward(**inputs32)
    assert context32.dtype == np.float32 and cache32.weights.dtype == np.float32
    context64, _ = case.forward()
    np.testing.assert_allclose(context32, context64, rtol=1e-4, atol=1e-4)
    grads = attention_backward(case.rng.standard_normal(context32.shape).astype(np.float32), cache32)
    for name, g in grads._asdict().items():
        assert g is None or g.dtype == np.float32, name


def test_attention_check_directional_large_shape():
    rng = np.random.default_rng(np.random.SeedSequence(2103_07601))
    B, T, S, d = 8, 12, 16, 32
    mask = rng.random((B, S)) < 0.7
    mask[:, 0] = True
    inputs = {"queries": rng.standard_normal((B, T, d)), "keys": rng.standard_normal((B, S, d)),
              "values": rng.standard_normal((B, S, d)),
              "score_matrix": rng.standard_normal((d, d)) / d}
    for m in (None, mask):
        func, vjp = attention_fns(m, False)
        report = check_directional(func, vjp, inputs, rng=rng, n_directions=4)
        assert_gradcheck(report)


def test_attention_directional_check_catches_a_wrong_score_matrix_gradient():
    """The large-shape check has teeth: a transposed dW (square W) is rejected."""
    rng = np.random.default_rng(np.random.SeedSequence(7))
    B, T, S, d = 8, 12, 16, 32
    inputs = {"queries": rng.standard_normal((B, T, d)), "keys": rng.standard_normal((B, S, d)),
              "values": rng.standard_normal((B, S, d)), "score_matrix": rng.standard_normal((d, d)) / d}
    func, vjp = attention_fns(None, False)

    def wrong_vjp(upstream, **kw):
        grads = vjp(upstream, **kw)
        return {**grads, "score_matrix": grads["score_matrix"].T}

    assert not check_directional(func, wrong_vjp, inputs, rng=rng, wrt=["score_matrix"]).passed


def _attention_inputs(B=2, T=3, S=4, dq=2, dk=2, dv=2):
    return {"queries": np.ones((B, T, dq)), "keys": np.ones((B, S, dk)), "values": np.ones((B, S, dv))}


@pytest.mark.parametrize("change, error, match", [
    ({"queries": np.full((2, 3, 2), np.nan)}, ValueError, r"queries contains NaN or inf"),
    ({"keys": np.full((2, 4, 2), np.inf)}, ValueError, r"keys contains NaN or inf"),
    ({"values": np.full((2, 4, 2), -np.inf)}, ValueError, r"values contains NaN or inf"),
    ({"score_matrix": np.full((2, 2), np.nan)}, ValueError, r"score_matrix contains NaN or inf"),
    ({"keys": np.ones((3, 4, 2))}, ValueError, r"keys \(B, S, dk\) and values .* must share"),
    ({"values": np.ones((2, 5, 2))}, ValueError, r"keys \(B, S, dk\) and values .* must share"),
    ({"keys": np.ones((2, 4, 3)), "values": np.ones((2, 4, 2))}, ValueError, r"dot-product attention needs dq == dk"),
    ({"score_matrix": np.ones((2, 3))}, ValueError, r"score_matrix must have shape \(dq, dk\) = \(2, 2\)"),
    ({"queries": np.ones((2, 3))}, ValueError, r"queries must have 3 dimensions"),
    ({"queries": np.ones((2, 3, 2), dtype=np.int64)}, TypeError, r"queries must be a floating-point array"),
    ({"queries": np.ones((0, 3, 2)), "keys": np.ones((0, 4, 2)), "values": np.ones((0, 4, 2))},
     ValueError, r"queries must not be empty"),
    ({"mask": np.ones((2, 4), dtype=np.int64)}, TypeError, r"mask must be a boolean array"),
    ({"mask": np.ones((2, 4), dtype=np.float64)}, TypeError, r"mask must be a boolean array"),
    ({"mask": np.ones((2, 3), dtype=bool)}, ValueError, r"mask must have shape \(2, 4\)"),
    ({"mask": np.array([[True, False, False, False], [False] * 4])}, ValueError,
     r"mask has rows with every key masked \(batch rows \[1\]\)"),
])
@pytest.mark.parametrize("uniform", [False, True])
def test_attention_rejects_bad_input(change, error, match, uniform):
    kw = {**_attention_inputs(), **change}
    with pytest.raises(error, match=match):
        attention_forward(**kw, uniform=uniform)


def test_attention_backward_rejects_bad_dcontext():
    _, cache = attention_forward(**_attention_inputs())
    with pytest.raises(ValueError, match=r"dcontext must have shape \(2, 3, 2\)"):
        attention_backward(np.ones((2, 3, 3)), cache)
    with pytest.raises(ValueError, match=r"dcontext contains NaN or inf"):
        attention_backward(np.full((2, 3, 2), np.nan), cache)


# ==================================================================================================
# Softmax output with cross-entropy
# ==================================================================================================

class OutputCase:
    def __init__(self, lead, h, C, targets, mask, rng, scale=1.0):
        self.targets, self.mask, self.rng = targets, mask, rng
        self.inputs = {"hidden": scale * rng.standard_normal(lead + (h,)),
                       "weight": scale * rng.standard_normal((h, C)),
                       "bias": rng.standard_normal(C)}

    def forward(self, **overrides):
        kw = {**self.inputs, "targets": self.targets, "mask": self.mask, **overrides}
        return softmax_output_forward(**kw)

    def __repr__(self):
        return (f"OutputCase(hidden={self.inputs['hidden'].shape}, weight={self.inputs['weight'].shape}, "
                f"targets={self.targets.tolist()}, mask={None if self.mask is None else self.mask.tolist()})")


@st.composite
def output_cases(draw, *, masked=None):
    lead = draw(st.lists(dims(1, 3), min_size=0, max_size=2).map(tuple))
    h = draw(dims(1, 3))
    C = draw(dims(1, 4))
    targets = draw(id_arrays(lead, C))
    masked = draw(st.booleans()) if masked is None else masked
    mask = None
    if masked:
        if lead == ():
            mask = np.array(True)        # a single target must count
        else:
            mask = draw(masks((1, int(np.prod(lead))))).reshape(lead)   # >= 1 counted target
            # Padding positions may carry any id >= 0, including ids >= C: they must be ignored.
            targets = np.where(mask, targets, targets + C)
    rng = np.random.default_rng(np.random.SeedSequence(draw(seeds())))
    return OutputCase(lead, h, C, targets, mask, rng)


def output_fns(targets, mask):
    def func(hidden, weight, bias):
        return softmax_output_forward(hidden, weight, bias, targets, mask)[0]

    def vjp(upstream, hidden, weight, bias):
        _, cache = softmax_output_forward(hidden, weight, bias, targets, mask)
        return softmax_output_backward(upstream, cache)._asdict()

    return func, vjp


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@given(data=st.data())
def test_softmax_output_gradcheck(masked, data):
    case = data.draw(output_cases(masked=masked))
    func, vjp = output_fns(case.targets, case.mask)
    assert_gradcheck(check_vjp(func, vjp, case.inputs, rng=case.rng))


@given(output_cases())
def test_softmax_output_matches_independent_cross_entropy(case):
    loss, cache = case.forward()
    logits = case.inputs["hidden"] @ case.inputs["weight"] + case.inputs["bias"]
    log_p = scipy.special.log_softmax(logits, axis=-1)
    np.testing.assert_allclose(cache.log_probs, log_p, rtol=1e-12, atol=1e-12)
    mask = np.ones(case.targets.shape, bool) if case.mask is None else case.mask
    safe = np.where(mask, case.targets, 0)
    gold = np.take_along_axis(log_p, safe[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(loss, -gold[mask].mean(), rtol=1e-12, atol=1e-12)
    # dlogits = (p - onehot(y)) / N on counted positions; check through the bias gradient.
    p = np.exp(log_p)
    onehot = safe[..., None] == np.arange(p.shape[-1])
    dlogits = (p - onehot) * mask[..., None] / mask.sum()
    grads = softmax_output_backward(1.0, cache)
    np.testing.assert_allclose(grads.bias, dlogits.reshape(-1, p.shape[-1]).sum(axis=0), rtol=1e-10, atol=1e-14)


@given(output_cases(masked=True))
def test_softmax_output_ignores_targets_at_masked_positions(case):
    if case.mask is None or case.mask.all():
        return
    loss, cache = case.forward()
    other = np.where(case.mask, case.targets, case.targets + 7)
    loss2, cache2 = case.forward(targets=other)
    assert loss2 == loss
    for g, g2 in zip(softmax_output_backward(1.0, cache), softmax_output_backward(1.0, cache2)):
        np.testing.assert_array_equal(g, g2)


@given(output_cases(), st.floats(-3, 3), st.floats(-3, 3))
def test_softmax_output_backward_linear_in_upstream(case, a, b):
    _, cache = case.forward()
    u1, u2 = case.rng.standard_normal(), case.rng.standard_normal()
    assert_linear(lambda u: softmax_output_backward(u, cache)._asdict(), u1, u2, a, b)


@given(output_cases())
def test_softmax_output_zero_upstream_gives_zero_gradients(case):
    _, cache = case.forward()
    for name, g in softmax_output_backward(0.0, cache)._asdict().items():
        assert g.shape == case.inputs[name].shape, name
        assert not np.any(g), name


@given(output_cases())
def test_softmax_output_does_not_mutate_inputs_or_cache(case):
    before = snapshot((case.inputs, case.targets, case.mask))
    _, cache = case.forward()
    cache_before = snapshot(cache)
    softmax_output_backward(case.rng.standard_normal(), cache)
    softmax_output_backward(case.rng.standard_normal(), cache)
    assert_unchanged(before, (case.inputs, case.targets, case.mask), "inputs")
    assert_unchanged(cache_before, cache, "cache")


@given(case=output_cases(), data=st.data())
def test_softmax_output_stable_at_logits_of_1e4(case, data):
    """Hidden and weights of size 50-100 give logits of order ±1e4: finite loss and gradients."""
    hidden_shape, weight_shape = case.inputs["hidden"].shape, case.inputs["weight"].shape
    big = {"hidden": data.draw(float_arrays(hidden_shape, magnitude=100.0, min_magnitude=50.0)),
           "weight": data.draw(float_arrays(weight_shape, magnitude=100.0, min_magnitude=50.0))}
    with warnings.catch_warnings(), no_floating_point_errors():
        warnings.simplefilter("error")
        loss, cache = case.forward(**big)
        grads = softmax_output_backward(case.rng.standard_normal(), cache)
    assert np.isfinite(loss) and loss >= 0
    assert np.all(cache.log_probs <= 0) and np.all(np.isfinite(cache.log_probs))
    for name, g in grads._asdict().items():
        assert np.all(np.isfinite(g)), name
    # The rows of p - onehot sum to zero, so the bias gradient sums to zero even when saturated.
    assert abs(grads.bias.sum()) <= 1e-12 * (1 + np.abs(grads.bias).sum())


@given(output_cases())
def test_softmax_output_float32_stays_float32(case):
    inputs32 = {k: v.astype(np.float32) for k, v in case.inputs.items()}
    loss32, cache32 = case.forward(**inputs32)
    assert cache32.log_probs.dtype == np.float32
    loss64, _ = case.forward()
    np.testing.assert_allclose(loss32, loss64, rtol=1e-4, atol=1e-4)
    for name, g in softmax_output_backward(np.float32(1.0), cache32)._asdict().items():
        assert g.dtype == np.float32, name


@pytest.mark.parametrize("change, error, match", [
    ({"targets": np.array([0, 3])}, ValueError, r"targets \(where mask is True\) must lie in \[0, 3\)"),
    ({"targets": np.array([-1, 0])}, ValueError, r"targets \(where mask is True\) must lie in \[0, 3\)"),
    ({"targets": np.array([0.0, 1.0])}, TypeError, r"targets must be an integer array"),
    ({"targets": np.array([0, 1, 2])}, ValueError, r"targets must have shape \(2,\)"),
    ({"mask": np.array([False, False])}, ValueError, r"mask must count at least one target"),
    ({"mask": np.array([1, 1])}, TypeError, r"mask must be a boolean array"),
    ({"mask": np.array([True])}, ValueError, r"mask must have shape \(2,\)"),
    ({"hidden": np.ones((2, 5))}, ValueError, r"hidden \(\.\.\., h\) and weight \(h, C\) disagree"),
    ({"hidden": np.array([[np.nan, 0.0], [0.0, 0.0]])}, ValueError, r"hidden contains NaN or inf"),
    ({"weight": np.full((2, 3), np.inf)}, ValueError, r"weight contains NaN or inf"),
    ({"bias": np.ones(4)}, ValueError, r"bias must have shape \(C,\) = \(3,\)"),
    ({"hidden": np.ones((0, 2)), "targets": np.ones(0, dtype=int)}, ValueError, r"hidden must not be empty"),
])
def test_softmax_output_rejects_bad_input(change, error, match):
    kw = {"hidden": np.ones((2, 2)), "weight": np.ones((2, 3)), "bias": np.zeros(3),
          "targets": np.array([0, 2]), **change}
    with pytest.raises(error, match=match):
        softmax_output_forward(**kw)


def test_softmax_output_masked_padding_ids_are_not_range_checked():
    loss, _ = softmax_output_forward(np.ones((2, 2)), np.ones((2, 3)), np.zeros(3), np.array([1, 99]),
                                     np.array([True, False]))
    assert np.isclose(loss, np.log(3.0))


def test_softmax_output_backward_rejects_bad_dloss():
    _, cache = softmax_output_forward(np.ones((2, 2)), np.ones((2, 3)), np.zeros(3), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"dloss must have 0 dimensions"):
        softmax_output_backward(np.ones(2), cache)
    with pytest.raises(ValueError, match=r"dloss contains NaN or inf"):
        softmax_output_backward(np.nan, cache)


# ==================================================================================================
# Shared numerics
# ==================================================================================================

@given(scores=float_arrays(st.tuples(dims(1, 3), dims(1, 5)), magnitude=1e4), data=st.data())
def test_masked_softmax_matches_scipy_and_zeroes_masked_entries(scores, data):
    mask = data.draw(masks(scores.shape))
    with warnings.catch_warnings(), no_floating_point_errors():
        warnings.simplefilter("error")
        p = masked_softmax(scores, mask)
        p_all = masked_softmax(scores, None)
        log_p = log_softmax(scores)
    assert np.all(p[~mask] == 0.0)
    np.testing.assert_allclose(p, scipy.special.softmax(np.where(mask, scores, -np.inf), axis=-1),
                               rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(p_all, scipy.special.softmax(scores, axis=-1), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(log_p, scipy.special.log_softmax(scores, axis=-1), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=0, atol=1e-14)


@given(float_arrays(st.tuples(dims(1, 3), dims(1, 5)), magnitude=1e300))
def test_log_softmax_is_finite_for_huge_finite_logits(scores):
    """Even at 1e300 the max shift keeps exp in range, and differences of logits (at most 2e300) stay
    finite; a spread beyond the float range is a NonFiniteError (tests/test_overflow.py)."""
    with warnings.catch_warnings(), no_floating_point_errors():
        warnings.simplefilter("error", RuntimeWarning)   # no overflow at all below the float range
        log_p = log_softmax(scores)
    assert np.all(np.isfinite(log_p))
    assert np.all(log_p <= 0)
    assert np.all(np.max(log_p, axis=-1) > -np.log(scores.shape[-1]) - 1e-9)
