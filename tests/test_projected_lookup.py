"""Tests of the projected lookup block and of the model paths built on it.

:func:`miniattn.layers.projected_lookup_forward` computes ``(E[ids] + P) W`` factored through the
distinct ids of the batch. Checked here: its gradients (central differences, float64, random
upstream), that it equals the unfactored product and its unfactored backward to rounding, the usual
block properties, its errors; the multi-head block's already-projected path (``score_matrices=None``)
against the score-matrix path; and the seq2seq model, which now uses both, against the same model
composed from the unfactored blocks (``attention_forward`` / ``multihead_attention_forward`` with
score matrices), to rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from miniattn._validate import NonFiniteError
from miniattn.gradcheck import check_vjp
from miniattn.layers import (attention_backward, attention_forward, embedding_backward, embedding_forward,
                             multihead_attention_backward, multihead_attention_forward,
                             projected_lookup_backward, projected_lookup_forward, softmax_output_backward,
                             softmax_output_forward)
from miniattn.models.seq2seq import Seq2SeqAttention
from checks import assert_gradcheck, assert_linear
from strategies import assert_unchanged, dims, id_arrays, seeds, snapshot
from test_multihead import MultiHeadCase, multihead_cases
from test_seq2seq import model_and_batch

NAMES = ("table", "positions", "weight")


def lookup_fns(ids):
    def func(table, positions, weight):
        return projected_lookup_forward(ids, table, positions, weight)[0]

    def vjp(upstream, table, positions, weight):
        return projected_lookup_backward(upstream, projected_lookup_forward(ids, table, positions, weight)[1])._asdict()

    return func, vjp


@st.composite
def lookup_cases(draw, dtype=np.float64):
    V, B, T = draw(dims(1, 6)), draw(dims(1, 3)), draw(dims(1, 4))
    d, k = draw(dims(1, 4)), draw(dims(1, 4))
    ids = draw(id_arrays((B, T), V))
    rng = np.random.default_rng(np.random.SeedSequence(draw(seeds())))
    inputs = {"table": rng.standard_normal((V, d)).astype(dtype),
              "positions": rng.standard_normal((T, d)).astype(dtype),
              "weight": rng.standard_normal((d, k)).astype(dtype)}
    return ids, inputs, rng


def unfactored(ids, table, positions, weight):
    """The direct computation: project every position's (E[id] + P[t])."""
    return (table[ids] + positions) @ weight


@given(lookup_cases())
def test_projected_lookup_gradcheck(case):
    ids, inputs, rng = case
    func, vjp = lookup_fns(ids)
    assert_gradcheck(check_vjp(func, vjp, inputs, rng=rng))


@given(lookup_cases())
def test_projected_lookup_equals_unfactored_forward_and_backward(case):
    ids, inputs, rng = case
    out, cache = projected_lookup_forward(ids, **inputs)
    np.testing.assert_allclose(out, unfactored(ids, **inputs), rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    g = projected_lookup_backward(dout, cache)
    E, P, W = inputs["table"], inputs["positions"], inputs["weight"]
    x = E[ids] + P                                                   # (B, T, d)
    dx = dout @ W.T
    np.testing.assert_allclose(g.weight, x.reshape(-1, x.shape[-1]).T @ dout.reshape(-1, dout.shape[-1]),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g.positions, dx.sum(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g.table, embedding_backward(dx, embedding_forward(ids, E)[1]), rtol=1e-12, atol=1e-12)
    unused = np.setdiff1d(np.arange(E.shape[0]), ids)
    assert np.all(g.table[unused] == 0.0)                             # exactly zero, not merely small


@given(lookup_cases(), st.floats(-3, 3), st.floats(-3, 3))
def test_projected_lookup_backward_linear_in_upstream(case, a, b):
    ids, inputs, rng = case
    out, cache = projected_lookup_forward(ids, **inputs)
    assert_linear(lambda u: projected_lookup_backward(u, cache)._asdict(),
                  rng.standard_normal(out.shape), rng.standard_normal(out.shape), a, b)


@given(lookup_cases())
def test_projected_lookup_zero_upstream_and_no_mutation(case):
    ids, inputs, _ = case
    before, ids_before = snapshot(inputs), ids.copy()
    out, cache = projected_lookup_forward(ids, **inputs)
    cache_before = snapshot(cache)
    g = projected_lookup_backward(np.zeros_like(out), cache)
    assert all(np.all(x == 0.0) for x in g)
    assert_unchanged(before, inputs, "inputs")
    assert_unchanged(ids_before, ids, "ids")
    assert_unchanged(cache_before, cache, "cache")


@given(lookup_cases(dtype=np.float32))
def test_projected_lookup_float32_stays_float32(case):
    ids, inputs, rng = case
    out, cache = projected_lookup_forward(ids, **inputs)
    assert out.dtype == np.float32
    g = projected_lookup_backward(rng.standard_normal(out.shape).astype(np.float32), cache)
    assert all(x.dtype == np.float32 for x in g)
    np.testing.assert_allclose(out, unfactored(ids, **inputs), rtol=1e-4, atol=1e-5)


def _inputs():
    rng = np.random.default_rng(3)
    return {"ids": rng.integers(0, 5, (2, 3)), "table": rng.standard_normal((5, 4)),
            "positions": rng.standard_normal((3, 4)), "weight": rng.standard_normal((4, 2))}


@pytest.mark.parametrize("change, error, match", [
    ({"ids": np.array([[0, 5, 1], [0, 0, 0]])}, ValueError, r"ids"),
    ({"ids": np.array([[0, -1, 1], [0, 0, 0]])}, ValueError, r"ids"),
    ({"ids": np.zeros((2, 3), dtype=float)}, TypeError, r"ids"),
    ({"ids": np.zeros(6, dtype=int)}, ValueError, r"ids"),
    ({"positions": np.ones((2, 4))}, ValueError, r"positions must have shape \(T, d\) = \(3, 4\)"),
    ({"weight": np.ones((3, 2))}, ValueError, r"weight must have shape \(d=4, k\)"),
    ({"table": np.full((5, 4), np.nan)}, NonFiniteError, r"table contains NaN"),
    ({"weight": np.ones((4, 2), dtype=int)}, TypeError, r"weight"),
])
def test_projected_lookup_rejects_bad_input(change, error, match):
    with pytest.raises(error, match=match):
        projected_lookup_forward(**{**_inputs(), **change})


def test_projected_lookup_overflow_is_a_clear_error_and_bad_dout_is_refused():
    x = _inputs()
    with pytest.raises(NonFiniteError, match=r"projected lookup"):
        projected_lookup_forward(x["ids"], x["table"] * 1e200, x["positions"], x["weight"] * 1e200)
    out, cache = projected_lookup_forward(**x)
    with pytest.raises(ValueError, match=r"dout must have shape \(2, 3, 2\)"):
        projected_lookup_backward(np.ones((2, 3, 3)), cache)
    with pytest.raises(NonFiniteError, match=r"gradient of the projected lookup"):
        projected_lookup_backward(np.full(out.shape, 1e300), cache._replace(weight=cache.weight * 1e300))


# --------------------------------------------------------------------------------------------------
# Multi-head attention on already projected queries
# --------------------------------------------------------------------------------------------------

def projected_inputs(case: MultiHeadCase):
    """The case's inputs with the queries projected per head: queries4[:, :, h] = Q W_h."""
    x = dict(case.inputs)
    x["queries"] = np.einsum("btq,hqk->bthk", x["queries"], x.pop("score_matrices"))
    return x


@given(multihead_cases())
def test_multihead_projected_path_gradcheck(case):
    def func(**inputs):
        return multihead_attention_forward(score_matrices=None, mask=case.mask, uniform=case.uniform, **inputs)[0]

    def vjp(upstream, **inputs):
        _, cache = multihead_attention_forward(score_matrices=None, mask=case.mask, uniform=case.uniform, **inputs)
        g = multihead_attention_backward(upstream, cache)
        assert g.score_matrices is None
        return g._asdict()

    assert_gradcheck(check_vjp(func, vjp, projected_inputs(case), rng=case.rng))


@given(multihead_cases())
def test_multihead_projected_path_equals_score_matrix_path(case):
    ctx, cache = case.forward()
    x = projected_inputs(case)
    ctx_p, cache_p = multihead_attention_forward(**x, score_matrices=None, mask=case.mask, uniform=case.uniform)
    np.testing.assert_allclose(ctx_p, ctx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cache_p.weights, cache.weights, rtol=1e-12, atol=1e-12)
    up = case.rng.standard_normal(ctx.shape)
    g, g_p = multihead_attention_backward(up, cache), multihead_attention_backward(up, cache_p)
    for name in ("keys", "values", "value_matrices"):
        np.testing.assert_allclose(getattr(g_p, name), getattr(g, name), rtol=1e-10, atol=1e-12)
    # The chain rule through q_h = Q W_h gives back the score-matrix path's dQ and dW_h.
    Q, Ws = case.inputs["queries"], case.inputs["score_matrices"]
    np.testing.assert_allclose(np.einsum("bthk,hqk->btq", g_p.queries, Ws), g.queries, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.einsum("btq,bthk->hqk", Q, g_p.queries), g.score_matrices, rtol=1e-10, atol=1e-12)


def test_multihead_projected_path_rejects_wrong_query_shape():
    rng = np.random.default_rng(0)
    keys, values, Ps = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 3, 5))
    with pytest.raises(ValueError, match=r"queries must have shape \(B, T, H, dk\) = \(B, T, 2, 3\)"):
        multihead_attention_forward(rng.standard_normal((2, 3, 3, 3)), keys, values, None, Ps)
    with pytest.raises(ValueError, match=r"queries must have 4 dimensions"):
        multihead_attention_forward(rng.standard_normal((2, 3, 3)), keys, values, None, Ps)


# --------------------------------------------------------------------------------------------------
# The seq2seq model equals its block-composed (unfactored) form to rounding
# --------------------------------------------------------------------------------------------------

def composed_loss_and_grads(model: Seq2SeqAttention, batch):
    """The model built from the unfactored blocks: q = E[y] + P and the score matrix inside attention."""
    p, d, H = model.params, model.dim, model.heads
    src_t, tgt_t = model._tables()
    S, T = batch.source.shape[1], batch.target_in.shape[1]
    emb_s, c_s = embedding_forward(batch.source, src_t)
    h = emb_s + p["src_pos"][:S]
    emb_t, c_t = embedding_forward(batch.target_in, tgt_t)
    q = emb_t + p["tgt_pos"][:T]
    if H == 1:
        v = h @ p["value"] if model.value_projection else h
        ctx, att = attention_forward(q, h, v, p["score"], mask=batch.source_mask, uniform=model.uniform)
    else:
        ctx, att = multihead_attention_forward(q, h, h, p["score"], model._value_matrices(),
                                               mask=batch.source_mask, uniform=model.uniform)
    loss, oc = softmax_output_forward(np.concatenate([q, ctx], axis=-1), p["out_W"], p["out_b"],
                                      batch.target_out, batch.target_mask)
    go = softmax_output_backward(1.0, oc)
    dq, dc = go.hidden[..., :d], go.hidden[..., d:]
    grads = {"out_W": go.weight, "out_b": go.bias}
    if H == 1:
        g = attention_backward(dc, att)
        grads["score"] = g.score_matrix
        if model.value_projection:
            grads["value"] = h.reshape(-1, d).T @ g.values.reshape(-1, d)
            dh = g.keys + g.values @ p["value"].T
        else:
            dh = g.keys + g.values
    else:
        g = multihead_attention_backward(dc, att)
        grads["score"] = g.score_matrices
        if model.value_projection:
            grads["value"] = g.value_matrices
        dh = g.keys + g.values
    dq = dq + g.queries
    grads["src_pos"] = np.zeros_like(p["src_pos"])
    grads["src_pos"][:S] = dh.sum(axis=0)
    grads["tgt_pos"] = np.zeros_like(p["tgt_pos"])
    grads["tgt_pos"][:T] = dq.sum(axis=0)
    ds, dt = embedding_backward(dh, c_s), embedding_backward(dq, c_t)
    if model.shared_embeddings:
        grads["embed"] = ds + dt
    else:
        grads["src_embed"], grads["tgt_embed"] = ds, dt
    return loss, grads


@given(model_and_batch())
def test_seq2seq_factored_step_equals_block_composed_step(mb):
    model, batch = mb
    loss, grads = model.loss_and_grads(batch)
    ref_loss, ref = composed_loss_and_grads(model, batch)
    assert loss == pytest.approx(ref_loss, rel=1e-12, abs=1e-14)
    assert set(grads) == set(ref)
    for name in ref:
        scale = max(1.0, float(np.max(np.abs(ref[name]))))
        np.testing.assert_allclose(grads[name], ref[name], rtol=1e-10, atol=1e-12 * scale, err_msg=name)
    ref_lp = model.forward(batch).log_probs
    assert np.all(np.isfinite(ref_lp))


@pytest.mark.parametrize("heads", [1, 8])
@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-11), ("float32", 2e-4)])
def test_seq2seq_factored_step_equals_composed_at_benchmark_shape(heads, dtype, rtol):
    """A copy-task-like batch (many repeated decoder ids), where the factoring does most of its work."""
    rng = np.random.default_rng(np.random.SeedSequence([heads, len(dtype)]))
    V, L, B, d = 23, 12, 16, 16
    model = Seq2SeqAttention(V, V, L, L, dim=d, heads=heads, rng=rng, dtype=dtype)
    from miniattn.batch import Seq2SeqBatch
    ids = rng.integers(0, V, (B, L))
    ones = np.ones((B, L), dtype=bool)
    batch = Seq2SeqBatch(ids, ones, rng.integers(0, V, (B, L)), ids, ones.copy())
    loss, grads = model.loss_and_grads(batch)
    ref_loss, ref = composed_loss_and_grads(model, batch)
    assert loss == pytest.approx(ref_loss, rel=rtol)
    for name in ref:
        assert grads[name].dtype == np.dtype(dtype), name
        scale = float(np.max(np.abs(ref[name])))
        np.testing.assert_allclose(grads[name], ref[name], rtol=rtol, atol=rtol * scale, err_msg=name)
