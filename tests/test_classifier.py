"""Tests of the attention classifier (miniattn.models.classifier)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from miniattn.batch import ClassificationBatch
from miniattn.gradcheck import check_model
from miniattn.models.base import ForwardResult
from miniattn.models.classifier import AttentionClassifier
from miniattn.optim import Adam


def assert_gradients_match(report):
    """Element-wise pass at rtol=1e-5/atol=1e-8, and a norm-wise relative error below 1e-7 for every
    parameter whose difference is above round-off (1e-10): a parameter whose gradient is itself tiny
    by cancellation has a meaningless relative error at central-difference round-off."""
    assert report.passed, str(report)
    for name, err in report.errors.items():
        assert err < 1e-7 or report.max_abs_diff[name] < 1e-10, f"{name}\n{report}"


@st.composite
def model_and_batch(draw, uniform=None):
    """A small classifier and a random padded batch (repeated ids, masks, one-token inputs)."""
    B = draw(st.integers(1, 4))
    S = draw(st.integers(1, 5))
    V = draw(st.integers(1, 6))
    C = draw(st.integers(2, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    model = AttentionClassifier(
        V, C, dim=draw(st.integers(1, 4)), score_hidden=draw(st.sampled_from([None, 1, 3])),
        uniform=draw(st.booleans()) if uniform is None else uniform,
        init_scale=draw(st.floats(0.2, 1.0)), rng=rng)
    mask = rng.random((B, S)) < 0.7
    mask[np.arange(B), rng.integers(0, S, B)] = True
    batch = ClassificationBatch(rng.integers(0, V, (B, S)), mask, rng.integers(0, C, B))
    return model, batch


def keyword_batch(rng, batch_size, length=8, vocab=20):
    """Label 1 iff keyword 0 occurs; label 0 iff keyword 1 occurs; the rest is noise (ids 2..V-1)."""
    tokens = rng.integers(2, vocab, (batch_size, length))
    labels = rng.integers(0, 2, batch_size)
    where = rng.integers(0, length, batch_size)
    tokens[np.arange(batch_size), where] = 1 - labels
    salient = np.zeros(tokens.shape, bool)
    salient[np.arange(batch_size), where] = True
    return ClassificationBatch(tokens, np.ones(tokens.shape, bool), labels, salient)


# --------------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------------

@given(model_and_batch())
def test_gradcheck(mb):
    model, batch = mb
    assert_gradients_match(check_model(model, batch))


@given(model_and_batch(uniform=True))
def test_uniform_twin_attention_parameters_get_zero_gradient(mb):
    model, batch = mb
    _, grads = model.loss_and_grads(batch)
    assert set(grads) == set(model.params)
    for k in grads:
        assert grads[k].shape == model.params[k].shape
        if k.startswith("score_"):
            assert np.all(grads[k] == 0.0), k


def test_parameter_names():
    rng = np.random.default_rng(0)
    assert set(AttentionClassifier(5, 2, rng=rng).params) == {"embed", "score_u", "out_W", "out_b"}
    m = AttentionClassifier(5, 3, dim=4, score_hidden=7, rng=rng)
    assert {k: v.shape for k, v in m.params.items()} == {
        "embed": (5, 4), "score_u": (7,), "score_W": (4, 7), "score_b": (7,), "out_W": (4, 3), "out_b": (3,)}


# --------------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------------

@given(model_and_batch())
def test_forward_shapes_rows_and_no_mutation(mb):
    model, batch = mb
    before = {k: v.copy() for k, v in model.params.items()}
    saved = [np.copy(a) for a in batch]
    out = model.forward(batch)
    assert isinstance(out, ForwardResult)
    B, S = batch.tokens.shape
    assert out.log_probs.shape == (B, 1, model.n_classes)
    assert out.attention.shape == (B, 1, S)
    np.testing.assert_allclose(np.exp(out.log_probs).sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(out.attention.sum(-1), 1.0, rtol=1e-12)
    assert np.all(out.attention[:, 0][~batch.mask] == 0.0)
    assert all(np.array_equal(before[k], model.params[k]) for k in before)
    assert all(np.array_equal(a, b) for a, b in zip(saved, batch))


@given(model_and_batch(uniform=True))
def test_uniform_twin_attention_is_exactly_uniform(mb):
    model, batch = mb
    att = model.forward(batch).attention[:, 0]
    n = batch.mask.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(att, np.where(batch.mask, 1.0 / n, 0.0), rtol=1e-15, atol=0)


def test_forward_by_hand_tiny_case():
    """a_l = u·E[x_l]; α = softmax over the unmasked tokens; log p = log_softmax(Σ α_l E[x_l] W_o + b)."""
    model = AttentionClassifier(4, 3, dim=2, init_scale=1.0, rng=np.random.default_rng(1))
    p = model.params
    batch = ClassificationBatch(np.array([[2, 0, 3]]), np.array([[True, True, False]]), np.array([1]))
    h = p["embed"][[2, 0]]
    a = h @ p["score_u"]
    alpha = np.exp(a) / np.exp(a).sum()
    z = (alpha @ h) @ p["out_W"] + p["out_b"]
    out = model.forward(batch)
    np.testing.assert_allclose(out.attention[0, 0], [alpha[0], alpha[1], 0.0], rtol=1e-12)
    np.testing.assert_allclose(out.log_probs[0, 0], z - np.log(np.exp(z).sum()), rtol=1e-12)
    loss, _ = model.loss_and_grads(batch)
    assert loss == pytest.approx(-(z[1] - np.log(np.exp(z).sum())), rel=1e-12)


@given(model_and_batch())
def test_loss_is_mean_gold_negative_log_prob(mb):
    model, batch = mb
    loss, _ = model.loss_and_grads(batch)
    lp = model.forward(batch).log_probs[:, 0]
    assert loss == pytest.approx(-lp[np.arange(len(batch.labels)), batch.labels].mean(), rel=1e-12)


# --------------------------------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------------------------------

@given(model_and_batch())
def test_ktiw_probe_is_log_prob_when_attending_to_one_token(mb):
    """Masking every token but l makes α one-hot at l; forward's gold log-prob is then β[..., l]."""
    model, batch = mb
    beta = model.ktiw_probe(batch)
    B, S = batch.tokens.shape
    assert beta.shape == (B, 1, S)
    assert np.all(np.isnan(beta[:, 0]) == ~batch.mask)
    for s in range(S):
        only = np.zeros((B, S), bool)
        only[:, s] = True
        lp = model.forward(batch._replace(mask=only)).log_probs[:, 0]
        direct = lp[np.arange(B), batch.labels]
        keep = batch.mask[:, s]
        np.testing.assert_allclose(beta[keep, 0, s], direct[keep], rtol=1e-10, atol=1e-12)


def test_ktiw_probe_binary_is_monotone_in_signed_logit_contribution():
    """analysis/probes.py (β): for two classes β is monotone in the gold-signed contribution (2y − 1)·(h_l W_o)."""
    rng = np.random.default_rng(3)
    model = AttentionClassifier(12, 2, dim=5, init_scale=0.8, rng=rng)
    batch = ClassificationBatch(rng.integers(0, 12, (3, 7)), np.ones((3, 7), bool), np.array([0, 1, 1]))
    beta = model.ktiw_probe(batch)[:, 0]
    contrib = model.params["embed"][batch.tokens] @ model.params["out_W"]
    signed = (2 * batch.labels[:, None] - 1) * (contrib[..., 1] - contrib[..., 0])
    for b in range(3):
        order = np.argsort(signed[b])
        rises = np.diff(signed[b, order]) > 1e-12          # repeated tokens tie
        assert np.all(np.diff(beta[b, order])[rises] > 0)
        assert np.all(np.diff(beta[b, order])[~rises] == 0)


@given(model_and_batch())
def test_saliency_matches_central_differences(mb):
    model, batch = mb
    delta = model.saliency(batch)
    B, S = batch.tokens.shape
    assert delta.shape == (B, 1, S)
    assert np.all(np.isnan(delta[:, 0]) == ~batch.mask)

    def gold(scale):
        return model.forward(batch, source_scale=scale).log_probs[np.arange(B), 0, batch.labels]

    h = 1e-5
    numeric = np.empty((B, S))
    for s in range(S):
        up, down = np.ones((B, S)), np.ones((B, S))
        up[:, s] += h
        down[:, s] -= h
        numeric[:, s] = (gold(up) - gold(down)) / (2 * h)
    np.testing.assert_allclose(delta[:, 0][batch.mask], numeric[batch.mask], rtol=1e-5, atol=1e-8)


# --------------------------------------------------------------------------------------------------
# Validation, config, dtype
# --------------------------------------------------------------------------------------------------

def _good():
    rng = np.random.default_rng(0)
    model = AttentionClassifier(6, 3, dim=3, rng=rng)
    return model, ClassificationBatch(rng.integers(0, 6, (2, 4)), np.ones((2, 4), bool), np.array([0, 2]))


@pytest.mark.parametrize("change, exc, words", [
    (dict(tokens=np.array([[0, 1, 2, 6], [0, 0, 0, 0]])), ValueError, "batch.tokens must lie in [0, 6)"),
    (dict(tokens=np.array([[0, 1, 2, -1], [0, 0, 0, 0]])), ValueError, "batch.tokens must lie in [0, 6)"),
    (dict(tokens=np.zeros((2, 4))), TypeError, "batch.tokens must be an integer array"),
    (dict(tokens=np.zeros(4, int)), ValueError, "batch.tokens must have 2 dimensions"),
    (dict(mask=np.ones((2, 3), bool)), ValueError, "batch.mask must have shape (2, 4)"),
    (dict(mask=np.ones((2, 4), int)), TypeError, "batch.mask must be a boolean array"),
    (dict(mask=np.array([[True] * 4, [False] * 4])), ValueError, "no real token"),
    (dict(labels=np.array([0, 3])), ValueError, "batch.labels must lie in [0, 3)"),
    (dict(labels=np.array([0, 1, 2])), ValueError, "batch.labels must have shape (B,)"),
    (dict(labels=np.array([0.0, 1.0])), TypeError, "batch.labels must be an integer array"),
])
def test_bad_batches_raise_clear_errors(change, exc, words):
    model, batch = _good()
    bad = batch._replace(**change)
    for call in (model.loss_and_grads, model.ktiw_probe, model.saliency):
        with pytest.raises(exc) as info:
            call(bad)
        assert words in str(info.value)


def test_bad_batch_type_and_scale():
    model, batch = _good()
    with pytest.raises(TypeError, match="ClassificationBatch"):
        model.forward((batch.tokens, batch.mask))
    with pytest.raises(ValueError, match="source_scale must have"):
        model.forward(batch, source_scale=np.ones((2, 5)))


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(vocab_size=0), ValueError, "vocab_size must be an integer >= 1"),
    (dict(n_classes=1), ValueError, "n_classes must be an integer >= 2"),
    (dict(dim=3.0), TypeError, "dim must be an integer"),
    (dict(score_hidden=0), ValueError, "score_hidden must be an integer >= 1"),
    (dict(init_scale=0.0), ValueError, "init_scale must be a finite float > 0"),
    (dict(rng=np.random.RandomState(0)), TypeError, "rng must be a numpy.random.Generator"),
    (dict(dtype=np.float16), ValueError, "dtype must be float32 or float64"),
    (dict(uniform="no"), TypeError, "uniform must be a bool"),
])
def test_bad_constructor_arguments(kwargs, exc, words):
    base = dict(vocab_size=6, n_classes=2, rng=np.random.default_rng(0))
    base.update(kwargs)
    with pytest.raises(exc) as info:
        AttentionClassifier(**base)
    assert words in str(info.value)


@pytest.mark.parametrize("kwargs", [dict(), dict(score_hidden=4, uniform=True, init_scale=0.3)])
def test_config_round_trip_and_seed_determinism(kwargs):
    a = AttentionClassifier(9, 3, dim=5, rng=np.random.default_rng(np.random.SeedSequence(2)), **kwargs)
    b = AttentionClassifier(**a.config(), rng=np.random.default_rng(np.random.SeedSequence(2)))
    assert a.config() == b.config()
    json.dumps(a.config())
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)


@pytest.mark.parametrize("kwargs", [dict(), dict(score_hidden=3)])
def test_float32_path_stays_float32_and_close_to_float64(kwargs):
    rng = np.random.default_rng(4)
    batch = keyword_batch(rng, 6)
    m64 = AttentionClassifier(20, 2, dim=8, rng=np.random.default_rng(9), init_scale=0.5, **kwargs)
    m32 = AttentionClassifier(20, 2, dim=8, rng=np.random.default_rng(9), init_scale=0.5, dtype="float32", **kwargs)
    out32, out64 = m32.forward(batch), m64.forward(batch)
    assert out32.log_probs.dtype == np.float32 and out32.attention.dtype == np.float32
    np.testing.assert_allclose(out32.log_probs, out64.log_probs, rtol=1e-5, atol=1e-6)
    loss32, g32 = m32.loss_and_grads(batch)
    loss64, g64 = m64.loss_and_grads(batch)
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    for k in g64:
        assert g32[k].dtype == np.float32, k
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-3, atol=1e-6)
    for probe in ("ktiw_probe", "saliency"):
        a, b = getattr(m32, probe)(batch), getattr(m64, probe)(batch)
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Learning: the two-stage story on a keyword task
# --------------------------------------------------------------------------------------------------

def test_learns_keyword_task_and_attends_to_the_keyword():
    """Adam on a one-keyword task: accuracy > 0.95, attention concentrates on the keyword, and the
    uniform twin also learns KTIW (its β ranks the keyword first) while its attention stays uniform."""
    model_ss, twin_ss, data_ss = np.random.SeedSequence(0).spawn(3)
    model = AttentionClassifier(20, 2, dim=16, rng=np.random.default_rng(model_ss))
    twin = AttentionClassifier(20, 2, dim=16, uniform=True, rng=np.random.default_rng(twin_ss))
    opts = [Adam(model.params, lr=1e-2), Adam(twin.params, lr=1e-2)]
    data_rng = np.random.default_rng(data_ss)
    for _ in range(300):
        batch = keyword_batch(data_rng, 32)
        for m, opt in zip((model, twin), opts):
            opt.step(m.loss_and_grads(batch)[1])
    test = keyword_batch(np.random.default_rng(99), 200)
    out = model.forward(test)
    assert np.mean(out.log_probs[:, 0].argmax(-1) == test.labels) > 0.95
    assert np.mean(out.attention[:, 0][test.salient]) > 0.5           # uniform would be 1/8
    beta_uf = twin.ktiw_probe(test)[:, 0]
    assert np.mean(np.argmax(beta_uf, axis=1) == np.argmax(test.salient, axis=1)) > 0.95
    assert np.all(twin.forward(test).attention == 1 / 8)
