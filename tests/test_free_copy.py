"""Tests of the free-parameter copy model (miniattn.models.free_copy)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from miniattn.batch import Seq2SeqBatch
from miniattn.gradcheck import check_model
from miniattn.layers import log_softmax
from miniattn.models.free_copy import FreeAttentionCopyModel
from miniattn.tasks import CopyTask


def copy_batch(rng, batch_size, length, vocab):
    """Copy inputs of the free model: ``CopyTask(specials=False)``, permutations when V = L."""
    return CopyTask(length, vocab, "permutation" if vocab == length else "subset", specials=False).sample(rng, batch_size)


def assert_gradients_ok(report):
    """Passed at rtol=1e-5/atol=1e-8, and relative error < 1e-7 wherever the gradient is not ~0."""
    assert report.passed, str(report)
    for name, err in report.errors.items():
        assert err < 1e-7 or report.max_abs_diff[name] < 1e-10, str(report)


@st.composite
def model_and_batch(draw, masks=True):
    L = draw(st.integers(1, 4))
    V = draw(st.integers(L, 6))
    B = draw(st.integers(1, 4))
    factorised = draw(st.booleans())
    dim = draw(st.integers(1, 4)) if factorised else None
    uniform = draw(st.booleans())
    scale = draw(st.sampled_from([0.1, 1.0, 3.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    model = FreeAttentionCopyModel(L, V, factorised=factorised, dim=dim, uniform=uniform, init_scale=scale, rng=rng)
    model.params["b"][:] = rng.normal(size=V)           # a nonzero bias exercises its gradient too
    batch = copy_batch(rng, B, L, V)
    if masks and draw(st.booleans()):
        source_mask = rng.random((B, L)) < 0.7
        source_mask[np.arange(B), rng.integers(0, L, B)] = True
        target_mask = rng.random((B, L)) < 0.7
        target_mask[0, 0] = True
        # Padding ids outside the vocabulary must be ignored where masked.
        batch = batch._replace(source=np.where(source_mask, batch.source, V + 7), source_mask=source_mask,
                               target_out=np.where(target_mask, batch.target_out, V + 3), target_mask=target_mask)
    if draw(st.booleans()):   # not only copying: arbitrary targets in range
        targets = rng.integers(0, V, size=(B, L))
        batch = batch._replace(target_out=np.where(batch.target_mask, targets, batch.target_out))
    return model, batch, rng


@given(data=model_and_batch())
def test_gradcheck(data):
    model, batch, _ = data
    assert_gradients_ok(check_model(model, batch))


@given(data=model_and_batch())
def test_attention_rows_sum_to_one_and_respect_the_mask(data):
    model, batch, _ = data
    out = model.forward(batch)
    np.testing.assert_allclose(out.attention.sum(axis=-1), 1.0, rtol=1e-12)
    assert np.all(out.attention[~np.broadcast_to(batch.source_mask[:, None, :], out.attention.shape)] == 0)
    np.testing.assert_allclose(np.exp(out.log_probs).sum(axis=-1), 1.0, rtol=1e-12)
    if model.uniform:
        counts = batch.source_mask.sum(axis=1)
        np.testing.assert_allclose(out.attention.max(axis=-1), np.broadcast_to(1.0 / counts[:, None], out.attention.shape[:2]))


@given(data=model_and_batch(masks=False))
def test_logits_are_the_attention_weighted_ktiw_columns(data):
    # z_t = Σ_s α_{t,s} M[:, x_s] + b, computed here the slow explicit way.
    model, batch, _ = data
    M, A = model.ktiw_matrix(), model.attention_logits()
    alpha = np.exp(A - A.max(axis=1, keepdims=True))
    alpha /= alpha.sum(axis=1, keepdims=True)
    z = np.einsum("ts,vbs->btv", alpha, M[:, batch.source]) + model.params["b"]
    np.testing.assert_allclose(model.forward(batch).log_probs, log_softmax(z), rtol=1e-10, atol=1e-12)


@given(data=model_and_batch())
def test_inputs_and_params_not_mutated(data):
    model, batch, _ = data
    before = {k: v.copy() for k, v in model.params.items()}
    batch_before = [np.array(f, copy=True) for f in batch]
    model.loss_and_grads(batch)
    model.forward(batch)
    model.ktiw_probe(batch)
    model.saliency(batch)
    for k, v in before.items():
        np.testing.assert_array_equal(model.params[k], v)
    for f, g in zip(batch_before, batch):
        np.testing.assert_array_equal(f, g)


@given(data=model_and_batch())
def test_duplicated_batch_gives_the_same_mean_loss_and_gradients(data):
    # The loss is a mean over counted targets: duplicating every example changes nothing. Checks the
    # 1/N normalisation (with masks) and that the shared-attention fast path sums over the batch.
    model, batch, _ = data
    loss, grads = model.loss_and_grads(batch)
    doubled = Seq2SeqBatch(*[None if f is None else np.concatenate([f, f]) for f in batch])
    loss2, grads2 = model.loss_and_grads(doubled)
    assert loss2 == pytest.approx(loss, rel=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads2[k], grads[k], rtol=1e-10, atol=1e-14)


@given(data=model_and_batch(masks=False))
def test_shared_attention_fast_path_equals_the_masked_path(data):
    # An all-True mask takes the shared (T, S) softmax; a mask with one harmless False elsewhere
    # forces the per-example path. On the unaffected examples both must agree exactly.
    model, batch, _ = data
    B, L = batch.source.shape
    if L < 2:
        return
    extra = batch._replace(source=np.concatenate([batch.source, batch.source[:1]]),
                           source_mask=np.concatenate([batch.source_mask, batch.source_mask[:1]]),
                           target_out=np.concatenate([batch.target_out, batch.target_out[:1]]),
                           target_mask=np.concatenate([batch.target_mask, np.zeros((1, L), bool)]),
                           target_in=None, alignment=None)
    extra.source_mask[-1, -1] = False
    a = model.forward(batch)
    b = model.forward(extra)
    np.testing.assert_allclose(b.attention[:B], a.attention, rtol=1e-14)
    loss_a, grads_a = model.loss_and_grads(batch)
    loss_b, grads_b = model.loss_and_grads(extra)      # the extra example counts no target
    assert loss_b == pytest.approx(loss_a, rel=1e-12)
    for k in grads_a:
        np.testing.assert_allclose(grads_b[k], grads_a[k], rtol=1e-10, atol=1e-14)


@given(data=model_and_batch())
def test_ktiw_probe_is_single_position_attention(data):
    # β_{t,s} = log p(y_t) of the same model when only source s is visible (mask everything else).
    model, batch, _ = data
    beta = model.ktiw_probe(batch)
    B, L = batch.source.shape
    for s in range(L):                      # a loop in the test, not in the model
        only_s = np.zeros((B, L), dtype=bool)
        only_s[:, s] = True
        rows = batch.source_mask[:, s]
        if not rows.any():
            continue
        alone = batch._replace(source=np.where(batch.source_mask, batch.source, 0), source_mask=only_s)
        logp = model.forward(alone).log_probs
        gold = np.take_along_axis(logp, np.where(batch.target_mask, batch.target_out, 0)[..., None], -1)[..., 0]
        expected = np.where(batch.target_mask, gold, np.nan)[rows]
        np.testing.assert_allclose(beta[rows, :, s], expected, rtol=1e-10, atol=1e-12)
    assert np.all(np.isneginf(beta[np.broadcast_to(~batch.source_mask[:, None, :], beta.shape)
                                    & np.broadcast_to(batch.target_mask[..., None], beta.shape)]))


@given(seed=st.integers(0, 2**32 - 1), L=st.integers(1, 4), extra=st.integers(0, 3), factorised=st.booleans())
def test_saliency_matches_finite_differences(seed, L, extra, factorised):
    # One example with distinct tokens: scaling column x_s of M (or row x_s of E) scales the value
    # of source s alone, so Δ_{t,s} = d log p(y_t)/dλ at λ = 1 by central differences.
    rng = np.random.default_rng(seed)
    V = L + extra
    model = FreeAttentionCopyModel(L, V, factorised=factorised, init_scale=1.0, rng=rng)
    model.params["b"][:] = rng.normal(size=V)
    batch = copy_batch(rng, 1, L, V)
    delta = model.saliency(batch)
    h = 1e-6
    key = "E" if factorised else "M"
    for s in range(L):
        word = batch.source[0, s]
        values = []
        for lam in (1 + h, 1 - h):
            saved = model.params[key].copy()
            if factorised:
                model.params["E"][word] *= lam
            else:
                model.params["M"][:, word] *= lam
            logp = model.forward(batch).log_probs
            values.append(np.take_along_axis(logp, batch.target_out[..., None], -1)[0, :, 0])
            model.params[key][...] = saved
        numeric = (values[0] - values[1]) / (2 * h)
        np.testing.assert_allclose(delta[0, :, s], numeric, rtol=1e-6, atol=1e-8)


def test_stable_at_extreme_logits():
    rng = np.random.default_rng(0)
    model = FreeAttentionCopyModel(3, 4, init_scale=1e4, rng=rng)
    batch = copy_batch(rng, 5, 3, 4)
    loss, grads = model.loss_and_grads(batch)
    assert np.isfinite(loss) and all(np.all(np.isfinite(g)) for g in grads.values())


@given(seed=st.integers(0, 2**32 - 1), L=st.integers(1, 5), extra=st.integers(0, 3))
def test_zero_init_is_a_fixed_point_for_permutations_only(seed, L, extra):
    # At M = A = 0, b = 0: dM[:, x_s] = (1/V − 1/L)·1 per example... more precisely
    # Σ_t α_{t,s}(p_t − onehot(x_t)) = 1/V − (1/L) Σ_t onehot(x_t); on a permutation every word
    # occurs once, so *every minibatch's* gradient vanishes: not even SGD noise can leave this point.
    rng = np.random.default_rng(seed)
    V = L + extra
    model = FreeAttentionCopyModel(L, V, init_scale=0.0, rng=rng)
    _, grads = model.loss_and_grads(copy_batch(rng, 8, L, V))
    np.testing.assert_allclose(grads["A"], 0.0, atol=1e-15)   # M = 0: attention gets no signal
    if extra == 0:
        for g in grads.values():
            np.testing.assert_allclose(g, 0.0, atol=1e-15)
    else:
        assert np.abs(grads["M"]).max() > 1e-3 and np.trace(grads["M"]) < 0   # KTIW diagonal grows


def test_params_and_config():
    rng = np.random.default_rng(0)
    plain = FreeAttentionCopyModel(5, 7, rng=rng)
    assert set(plain.params) == {"A", "M", "b"}
    assert plain.params["A"].shape == (5, 5) and plain.params["M"].shape == (7, 7)
    assert np.all(plain.params["b"] == 0)
    assert abs(plain.params["M"].std() - 0.1) < 0.03          # documented default init_scale
    fact = FreeAttentionCopyModel(5, 7, factorised=True, dim=3, uniform=True, rng=rng)
    assert set(fact.params) == {"Wo", "E", "b"} and fact.params["Wo"].shape == (7, 3)
    np.testing.assert_allclose(fact.ktiw_matrix(), fact.params["Wo"] @ fact.params["E"].T)
    assert fact.config() == {"model": "FreeAttentionCopyModel", "length": 5, "vocab": 7, "factorised": True,
                             "dim": 3, "uniform": True, "init_scale": 0.1}
    assert FreeAttentionCopyModel(2, 3, factorised=True, rng=rng).dim == 3
    a = FreeAttentionCopyModel(3, 3, rng=np.random.default_rng(5)).params
    b = FreeAttentionCopyModel(3, 3, rng=np.random.default_rng(5)).params
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_validation():
    rng = np.random.default_rng(0)
    with pytest.raises(TypeError, match="rng"):
        FreeAttentionCopyModel(3, 3, rng=0)
    with pytest.raises(ValueError, match="length"):
        FreeAttentionCopyModel(0, 3, rng=rng)
    with pytest.raises(ValueError, match="init_scale"):
        FreeAttentionCopyModel(3, 3, init_scale=-1, rng=rng)
    with pytest.raises(ValueError, match="dim"):
        FreeAttentionCopyModel(3, 3, dim=2, rng=rng)
    model = FreeAttentionCopyModel(3, 4, rng=rng)
    good = copy_batch(rng, 2, 3, 4)
    with pytest.raises(ValueError, match="batch.source"):
        model.loss_and_grads(good._replace(source=good.source[:, :2]))
    with pytest.raises(ValueError, match=r"batch.source .*\[0, 4\)"):
        model.loss_and_grads(good._replace(source=good.source + 4))
    with pytest.raises(ValueError, match="batch.target_out"):
        model.loss_and_grads(good._replace(target_out=-good.target_out - 1))
    with pytest.raises(TypeError, match="batch.source_mask"):
        model.loss_and_grads(good._replace(source_mask=good.source_mask.astype(int)))
    with pytest.raises(ValueError, match="source_mask"):
        model.loss_and_grads(good._replace(source_mask=np.zeros((2, 3), bool)))
    with pytest.raises(ValueError, match="target_mask"):
        model.loss_and_grads(good._replace(target_mask=np.zeros((2, 3), bool)))
    with pytest.raises(TypeError, match="Seq2SeqBatch"):
        model.loss_and_grads(tuple(good))


# The structure of CopyTask(specials=False) batches (shapes, dtypes, distinct tokens, permutations
# when V = L, target = source, identity alignment) and its argument checks are tested in
# tests/test_tasks.py; what it does not cover is kept here.

@given(seed=st.integers(0, 2**32 - 1), B=st.integers(1, 6), L=st.integers(1, 6), extra=st.integers(0, 4))
def test_copy_task_without_specials_is_reproducible(seed, B, L, extra):
    V = L + extra
    batch = copy_batch(np.random.default_rng(seed), B, L, V)
    again = copy_batch(np.random.default_rng(seed), B, L, V)
    np.testing.assert_array_equal(again.source, batch.source)
    np.testing.assert_array_equal(batch.target_out, batch.source)


def test_copy_task_without_specials_is_uniform_over_positions():
    # Each token is equally likely at each position: counts over many rows are flat (4σ band).
    batch = copy_batch(np.random.default_rng(3), 20000, 3, 5)
    counts = np.stack([np.bincount(batch.source[:, t], minlength=5) for t in range(3)])
    expected = 20000 / 5
    assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected))


def test_boolean_flags_are_checked():
    # bool("False") is True: a string must be refused, not read as a flag.
    rng = np.random.default_rng(0)
    for name in ("factorised", "uniform"):
        with pytest.raises(TypeError, match=name):
            FreeAttentionCopyModel(3, 3, rng=rng, **{name: "False"})
    with pytest.raises(TypeError, match="length"):
        FreeAttentionCopyModel(3.0, 3, rng=rng)
