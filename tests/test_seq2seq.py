"""Tests of the attention-only sequence-to-sequence model (miniattn.models.seq2seq)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from miniattn.batch import Seq2SeqBatch
from miniattn.gradcheck import check_model
from miniattn.models.base import ForwardResult
from miniattn.models.seq2seq import Seq2SeqAttention, _pairwise_logsumexp
from miniattn.optim import Adam
from miniattn.tasks import CopyTask


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------

def copy_subset_batch(rng, batch_size, length, vocab):
    """Copy batch with specials: content ids 0..V-1, then pad=V, bos=V+1, eos=V+2.

    source = L distinct tokens + eos, target_in = bos + tokens, target_out = tokens + eos. Written
    out here so the unit tests do not depend on the task module (the learning tests use CopyTask).
    """
    bos, eos = vocab + 1, vocab + 2
    tokens = np.argsort(rng.random((batch_size, vocab)), axis=1)[:, :length]
    source = np.concatenate([tokens, np.full((batch_size, 1), eos)], axis=1)
    target_in = np.concatenate([np.full((batch_size, 1), bos), tokens], axis=1)
    target_out = source.copy()
    ones = np.ones(source.shape, dtype=bool)
    alignment = np.concatenate([np.tile(np.arange(length), (batch_size, 1)),
                                np.full((batch_size, 1), -1)], axis=1)
    return Seq2SeqBatch(source, ones, target_in, target_out, ones.copy(), alignment)


def token_accuracy(model, batch):
    pred = model.forward(batch).log_probs.argmax(axis=-1)
    return float(np.mean(pred[batch.target_mask] == batch.target_out[batch.target_mask]))


def train_copy(length, vocab, *, steps, seed, dim=64, batch_size=128, lr=1e-3, check_every=25):
    """Adam on fresh CopyTask(length, vocab, "subset") batches (with <bos>/<eos>).

    Returns (model, first checked step with teacher-forced token accuracy > 0.95 on a fresh batch of
    256, or None).
    """
    task = CopyTask(length, vocab, "subset")
    model_ss, data_ss = np.random.SeedSequence(seed).spawn(2)
    model = Seq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length,
                             task.target_length, dim=dim, rng=np.random.default_rng(model_ss))
    data_rng = np.random.default_rng(data_ss)
    opt = Adam(model.params, lr=lr)
    for step in range(1, steps + 1):
        _, grads = model.loss_and_grads(task.sample(data_rng, batch_size))
        opt.step(grads)
        if step % check_every == 0 and token_accuracy(model, task.sample(data_rng, 256)) > 0.95:
            return model, step
    return model, None


@st.composite
def model_and_batch(draw, heads=None, uniform=None):
    """A small model with a random padded batch (repeated ids, masks, one-position inputs)."""
    B = draw(st.integers(1, 3))
    S = draw(st.integers(1, 4))
    T = draw(st.integers(1, 3))
    v_src = draw(st.integers(2, 6))
    v_tgt = draw(st.sampled_from([v_src, draw(st.integers(2, 6))]))
    H = draw(st.sampled_from([1, 2, 3])) if heads is None else heads
    kwargs = dict(
        dim=draw(st.integers(1, 3)), heads=H,
        shared_embeddings=draw(st.sampled_from([None, False] + ([True] if v_src == v_tgt else []))),
        value_projection=draw(st.sampled_from([None, True, False])),
        uniform=draw(st.booleans()) if uniform is None else uniform,
        init_scale=draw(st.floats(0.3, 1.0)),  # larger saturates the loss (gradients ~1e-9)
    )
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    model = Seq2SeqAttention(v_src, v_tgt, S + draw(st.integers(0, 2)), T + draw(st.integers(0, 2)),
                             rng=rng, **kwargs)
    source_mask = rng.random((B, S)) < 0.7
    source_mask[np.arange(B), rng.integers(0, S, B)] = True          # at least one key per row
    target_mask = rng.random((B, T)) < 0.7
    target_mask.flat[rng.integers(0, B * T)] = True                  # at least one counted target
    # Padding positions still hold in-range ids; uncounted outputs may hold any id >= 0.
    target_out = np.where(target_mask, rng.integers(0, v_tgt, (B, T)), 10**6)
    batch = Seq2SeqBatch(rng.integers(0, v_src, (B, S)), source_mask, rng.integers(0, v_tgt, (B, T)),
                         target_out, target_mask)
    return model, batch


# --------------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------------

def assert_gradients_match(report):
    """Element-wise pass at rtol=1e-5/atol=1e-8, and a norm-wise relative error below 1e-7 for every
    parameter whose difference is above round-off (1e-10): a parameter whose gradient is itself tiny
    by cancellation (say 1e-6) has a meaningless relative error at central-difference round-off."""
    assert report.passed, str(report)
    for name, err in report.errors.items():
        assert err < 1e-7 or report.max_abs_diff[name] < 1e-10, f"{name}\n{report}"


@given(model_and_batch())
def test_gradcheck(mb):
    model, batch = mb
    assert_gradients_match(check_model(model, batch))


@given(model_and_batch(uniform=True))
def test_uniform_twin_gives_no_gradient_to_scores(mb):
    model, batch = mb
    _, grads = model.loss_and_grads(batch)
    assert np.all(grads["score"] == 0.0)
    assert set(grads) == set(model.params)
    assert all(grads[k].shape == model.params[k].shape for k in grads)


def test_gradcheck_large_directional():
    """Random-direction check at a size the element-wise check would be slow for."""
    rng = np.random.default_rng(7)
    batch = copy_subset_batch(rng, 6, 9, 12)
    for kwargs in (dict(), dict(heads=2), dict(value_projection=True, shared_embeddings=False)):
        model = Seq2SeqAttention(15, 15, 10, 10, dim=8, init_scale=0.5, rng=rng, **kwargs)
        report = check_model(model, batch, directional=True, rng=rng, n_directions=4)
        assert report.passed, str(report)


def test_shared_table_receives_source_and_target_gradients():
    rng = np.random.default_rng(1)
    batch = copy_subset_batch(rng, 4, 5, 7)
    shared = Seq2SeqAttention(10, 10, 6, 6, dim=4, rng=np.random.default_rng(3))
    separate = Seq2SeqAttention(10, 10, 6, 6, dim=4, shared_embeddings=False, rng=np.random.default_rng(3))
    assert set(shared.params) == {"embed", "src_pos", "tgt_pos", "score", "out_W", "out_b"}
    assert {"src_embed", "tgt_embed"} <= set(separate.params) and "embed" not in separate.params
    separate.params["src_embed"][...] = shared.params["embed"]
    separate.params["tgt_embed"][...] = shared.params["embed"]
    for k in ("src_pos", "tgt_pos", "score", "out_W", "out_b"):
        separate.params[k][...] = shared.params[k]
    loss_a, ga = shared.loss_and_grads(batch)
    loss_b, gb = separate.loss_and_grads(batch)
    assert loss_a == pytest.approx(loss_b, rel=1e-12)
    np.testing.assert_allclose(ga["embed"], gb["src_embed"] + gb["tgt_embed"], rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------------

@given(model_and_batch())
def test_forward_shapes_and_attention_rows(mb):
    model, batch = mb
    before = {k: v.copy() for k, v in model.params.items()}
    batch_copy = [np.copy(a) for a in batch]
    out = model.forward(batch)
    assert isinstance(out, ForwardResult)
    B, S = batch.source.shape
    T = batch.target_in.shape[1]
    assert out.log_probs.shape == (B, T, model.target_vocab)
    np.testing.assert_allclose(np.exp(out.log_probs).sum(-1), 1.0, rtol=1e-12)
    att = out.attention if model.heads > 1 else out.attention[None]
    assert att.shape == (model.heads, B, T, S)
    np.testing.assert_allclose(att.sum(-1), 1.0, rtol=1e-12)
    assert np.all(att[:, ~batch.source_mask.repeat(T, 0).reshape(B, T, S)] == 0.0)
    assert np.all(att >= 0)
    # nothing mutated
    assert all(np.array_equal(before[k], model.params[k]) for k in before)
    assert all(np.array_equal(a, b) for a, b in zip(batch_copy, batch))


@given(model_and_batch(uniform=True))
def test_uniform_twin_attention_is_exactly_uniform(mb):
    model, batch = mb
    att = model.forward(batch).attention
    n = batch.source_mask.sum(axis=1)
    expected = np.where(batch.source_mask, 1.0 / n[:, None], 0.0)[:, None, :]
    expected = np.broadcast_to(expected, att.shape[-3:])
    np.testing.assert_allclose(att, np.broadcast_to(expected, att.shape), rtol=1e-15, atol=0)


@given(model_and_batch())
def test_loss_is_mean_gold_negative_log_prob(mb):
    model, batch = mb
    loss, _ = model.loss_and_grads(batch)
    lp = model.forward(batch).log_probs
    safe = np.where(batch.target_mask, batch.target_out, 0)
    gold = np.take_along_axis(lp, safe[..., None], -1)[..., 0]
    assert loss == pytest.approx(-gold[batch.target_mask].mean(), rel=1e-12)


def test_permuting_source_positions_with_their_positions_permutes_attention_only():
    """Relabelling source positions (tokens and positional rows together) permutes α and nothing else."""
    rng = np.random.default_rng(11)
    model = Seq2SeqAttention(9, 9, 5, 4, dim=4, heads=2, init_scale=0.7, rng=rng)
    batch = Seq2SeqBatch(rng.integers(0, 9, (2, 5)), np.ones((2, 5), bool), rng.integers(0, 9, (2, 4)),
                         rng.integers(0, 9, (2, 4)), np.ones((2, 4), bool))
    perm = rng.permutation(5)
    permuted = Seq2SeqAttention(9, 9, 5, 4, dim=4, heads=2, init_scale=0.7, rng=np.random.default_rng(0))
    for k, v in model.params.items():
        permuted.params[k][...] = v
    permuted.params["src_pos"][...] = model.params["src_pos"][perm]
    out = model.forward(batch)
    out_p = permuted.forward(batch._replace(source=batch.source[:, perm]))
    np.testing.assert_allclose(out_p.log_probs, out.log_probs, rtol=1e-12)
    np.testing.assert_allclose(out_p.attention, out.attention[..., perm], rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------------------------------

@given(model_and_batch())
def test_ktiw_probe_is_log_prob_when_attending_to_one_position(mb):
    """Masking every source position but s makes α one-hot at s: then forward's gold log-prob is β[..., s]."""
    model, batch = mb
    beta = model.ktiw_probe(batch)
    B, S = batch.source.shape
    T = batch.target_in.shape[1]
    assert beta.shape == (B, T, S)
    valid = batch.source_mask[:, None, :] & batch.target_mask[:, :, None]
    assert np.all(np.isnan(beta) == ~valid)
    safe = np.where(batch.target_mask, batch.target_out, 0)
    for s in range(S):
        only_s = np.zeros((B, S), dtype=bool)
        only_s[:, s] = True
        lp = model.forward(batch._replace(source_mask=only_s)).log_probs
        direct = np.take_along_axis(lp, safe[..., None], -1)[..., 0]
        np.testing.assert_allclose(beta[:, :, s][valid[:, :, s]], direct[valid[:, :, s]], rtol=1e-10, atol=1e-12)


def test_ktiw_probe_by_hand_tiny_case():
    """One example, written out: β[t, s] = log softmax([q_t ; h_s] W_o + b)[y_t]."""
    rng = np.random.default_rng(5)
    model = Seq2SeqAttention(4, 4, 3, 2, dim=2, init_scale=1.0, rng=rng)
    p = model.params
    batch = Seq2SeqBatch(np.array([[1, 3, 0]]), np.array([[True, True, False]]), np.array([[2, 1]]),
                         np.array([[3, 0]]), np.array([[True, True]]))
    beta = model.ktiw_probe(batch)
    for t in range(2):
        q = p["embed"][batch.target_in[0, t]] + p["tgt_pos"][t]
        for s in range(2):
            h = p["embed"][batch.source[0, s]] + p["src_pos"][s]
            logits = np.concatenate([q, h]) @ p["out_W"] + p["out_b"]
            expected = logits[batch.target_out[0, t]] - np.log(np.sum(np.exp(logits)))
            assert beta[0, t, s] == pytest.approx(expected, rel=1e-12)
    assert np.all(np.isnan(beta[0, :, 2]))


@given(st.integers(0, 2**32 - 1), st.sampled_from([np.float64, np.float32]), st.floats(1.0, 3000.0))
def test_pairwise_logsumexp_matches_direct_even_at_extreme_logits(seed, dtype, spread):
    rng = np.random.default_rng(seed)
    a = (spread * rng.standard_normal((2, 3, 5))).astype(dtype)
    b = (spread * rng.standard_normal((2, 4, 5))).astype(dtype)
    z = a[:, :, None, :].astype(np.float64) + b[:, None, :, :]
    m = z.max(-1)
    direct = m + np.log(np.exp(z - m[..., None]).sum(-1))
    got = _pairwise_logsumexp(a, b)
    assert got.dtype == dtype and np.all(np.isfinite(got))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(got, direct, rtol=tol, atol=tol * spread)


@given(model_and_batch())
def test_saliency_matches_central_differences(mb):
    """Δ[b,t,s] = d log p(y_t) / d λ_s, by central differences of forward(source_scale=λ)."""
    model, batch = mb
    delta = model.saliency(batch)
    B, S = batch.source.shape
    T = batch.target_in.shape[1]
    assert delta.shape == (B, T, S)
    valid = batch.source_mask[:, None, :] & batch.target_mask[:, :, None]
    assert np.all(np.isnan(delta) == ~valid)
    safe = np.where(batch.target_mask, batch.target_out, 0)

    def gold(scale):
        lp = model.forward(batch, source_scale=scale).log_probs
        return np.take_along_axis(lp, safe[..., None], -1)[..., 0]

    h = 1e-5
    numeric = np.empty((B, T, S))
    for s in range(S):
        # Examples are independent, so one position of every example can move at once.
        up, down = np.ones((B, S)), np.ones((B, S))
        up[:, s] += h
        down[:, s] -= h
        numeric[:, :, s] = (gold(up) - gold(down)) / (2 * h)
    np.testing.assert_allclose(delta[valid], numeric[valid], rtol=1e-5, atol=1e-8)


def test_saliency_at_masked_positions_and_uniform_twin_by_hand():
    """Uniform twin: Δ_ts = α_ts g_t·h_s exactly (the scores do not depend on λ)."""
    rng = np.random.default_rng(2)
    model = Seq2SeqAttention(6, 6, 3, 2, dim=3, uniform=True, init_scale=0.9, rng=rng)
    p = model.params
    batch = Seq2SeqBatch(np.array([[1, 4, 5]]), np.array([[True, True, False]]), np.array([[2, 3]]),
                         np.array([[0, 1]]), np.array([[True, True]]))
    delta = model.saliency(batch)
    lp = model.forward(batch).log_probs[0]
    for t in range(2):
        grad_logits = -np.exp(lp[t])
        grad_logits[batch.target_out[0, t]] += 1.0
        g = p["out_W"][3:] @ grad_logits
        for s in range(2):
            h = p["embed"][batch.source[0, s]] + p["src_pos"][s]
            assert delta[0, t, s] == pytest.approx(0.5 * g @ h, rel=1e-12)
    assert np.all(np.isnan(delta[0, :, 2]))


# --------------------------------------------------------------------------------------------------
# Validation, config, dtype
# --------------------------------------------------------------------------------------------------

def _good():
    rng = np.random.default_rng(0)
    model = Seq2SeqAttention(8, 8, 4, 3, dim=3, rng=rng)
    batch = Seq2SeqBatch(rng.integers(0, 8, (2, 4)), np.ones((2, 4), bool), rng.integers(0, 8, (2, 3)),
                         rng.integers(0, 8, (2, 3)), np.ones((2, 3), bool))
    return model, batch


@pytest.mark.parametrize("change, exc, words", [
    (dict(source=np.array([[0, 1, 2, 8], [0, 1, 2, 3]])), ValueError, "batch.source must lie in [0, 8)"),
    (dict(source=np.array([[0, 1, 2, -1], [0, 1, 2, 3]])), ValueError, "batch.source must lie in [0, 8)"),
    (dict(source=np.zeros((2, 4))), TypeError, "batch.source must be an integer array"),
    (dict(source=np.zeros((2, 5), int), source_mask=np.ones((2, 5), bool)), ValueError, "source_length"),
    (dict(source=np.zeros(4, int)), ValueError, "batch.source must have 2 dimensions"),
    (dict(source_mask=np.ones((2, 3), bool)), ValueError, "batch.source_mask must have shape (2, 4)"),
    (dict(source_mask=np.ones((2, 4))), TypeError, "batch.source_mask must be a boolean array"),
    (dict(source_mask=np.array([[True] * 4, [False] * 4])), ValueError, "no real source token"),
    (dict(target_in=np.full((2, 3), 9)), ValueError, "batch.target_in must lie in [0, 8)"),
    (dict(target_in=np.zeros((3, 3), int)), ValueError, "B=2"),
    (dict(target_in=np.zeros((2, 4), int), target_out=np.zeros((2, 4), int),
          target_mask=np.ones((2, 4), bool)), ValueError, "target_length"),
    (dict(target_out=np.full((2, 3), 8)), ValueError, "batch.target_out (where target_mask is True)"),
    (dict(target_out=np.zeros((2, 2), int)), ValueError, "batch.target_out must have shape (B, T)"),
    (dict(target_mask=np.zeros((2, 3), bool)), ValueError, "at least one"),
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
    with pytest.raises(TypeError, match="Seq2SeqBatch"):
        model.forward((batch.source, batch.source_mask))
    with pytest.raises(ValueError, match="source_scale must have"):
        model.forward(batch, source_scale=np.ones((2, 3)))
    with pytest.raises(ValueError, match="source_scale contains NaN"):
        model.forward(batch, source_scale=np.full((2, 4), np.nan))


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(source_vocab=0), ValueError, "source_vocab must be an integer >= 1"),
    (dict(target_vocab=1), ValueError, "target_vocab must be an integer >= 2"),
    (dict(dim=2.5), TypeError, "dim must be an integer"),
    (dict(heads=0), ValueError, "heads must be an integer >= 1"),
    (dict(source_vocab=5, shared_embeddings=True), ValueError, "shared_embeddings=True needs"),
    (dict(init_scale=-1.0), ValueError, "init_scale must be a finite float > 0"),
    (dict(init_scale=float("nan")), ValueError, "init_scale must be a finite float > 0"),
    (dict(rng=np.random.RandomState(0)), TypeError, "rng must be a numpy.random.Generator"),
    (dict(dtype=np.int64), ValueError, "dtype must be float32 or float64"),
    (dict(uniform=1), TypeError, "uniform must be a bool"),
    (dict(value_projection="yes"), TypeError, "value_projection must be a bool"),
])
def test_bad_constructor_arguments(kwargs, exc, words):
    base = dict(source_vocab=6, target_vocab=6, source_length=3, target_length=3, rng=np.random.default_rng(0))
    base.update(kwargs)
    with pytest.raises(exc) as info:
        Seq2SeqAttention(**base)
    assert words in str(info.value)


@pytest.mark.parametrize("kwargs", [dict(), dict(heads=3, init_scale=0.2), dict(target_vocab=9, value_projection=True)])
def test_config_round_trip_and_seed_determinism(kwargs):
    args = dict(source_vocab=7, target_vocab=7, source_length=4, target_length=5, dim=5)
    args.update(kwargs)
    a = Seq2SeqAttention(**args, rng=np.random.default_rng(np.random.SeedSequence(3)))
    b = Seq2SeqAttention(**a.config(), rng=np.random.default_rng(np.random.SeedSequence(3)))
    assert a.config() == b.config()
    assert set(a.params) == set(b.params)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    json.dumps(a.config())


def test_defaults_documented():
    model = Seq2SeqAttention(10, 10, 5, 5, rng=np.random.default_rng(0))
    assert model.dim == 64 and model.init_scale == pytest.approx(1 / 8)
    assert model.shared_embeddings and not model.value_projection
    assert Seq2SeqAttention(10, 10, 5, 5, heads=2, rng=np.random.default_rng(0)).value_projection
    assert model.params["score"].shape == (64, 64) and model.params["out_W"].shape == (128, 10)
    assert np.all(model.params["out_b"] == 0)
    assert model.params["embed"].std() == pytest.approx(1 / 8, rel=0.1)


@pytest.mark.parametrize("kwargs", [dict(), dict(heads=2), dict(uniform=True, value_projection=True)])
def test_float32_path_stays_float32_and_close_to_float64(kwargs):
    rng = np.random.default_rng(4)
    batch = copy_subset_batch(rng, 5, 6, 9)
    m64 = Seq2SeqAttention(12, 12, 7, 7, dim=8, rng=np.random.default_rng(9), **kwargs)
    m32 = Seq2SeqAttention(12, 12, 7, 7, dim=8, rng=np.random.default_rng(9), dtype=np.float32, **kwargs)
    assert all(v.dtype == np.float32 for v in m32.params.values())
    out32, out64 = m32.forward(batch), m64.forward(batch)
    assert out32.log_probs.dtype == np.float32 and out32.attention.dtype == np.float32
    np.testing.assert_allclose(out32.log_probs, out64.log_probs, rtol=1e-5, atol=1e-5)
    loss32, g32 = m32.loss_and_grads(batch)
    loss64, g64 = m64.loss_and_grads(batch)
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    for k in g64:
        assert g32[k].dtype == np.float32, k
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-3, atol=1e-5)
    for probe in ("ktiw_probe", "saliency"):
        a, b = getattr(m32, probe)(batch), getattr(m64, probe)(batch)
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Learning
# --------------------------------------------------------------------------------------------------

def test_learns_small_copy_subset():
    """L = 8 from V = 12 reaches token accuracy > 0.95 with the default init and Adam 1e-3."""
    model, step = train_copy(8, 12, steps=600, seed=0, dim=32, batch_size=64)
    assert step is not None, "did not reach token accuracy 0.95 in 600 steps"


@pytest.mark.slow
def test_learns_copy_subset_40_of_60():
    """The paper's subset setting: L = 40 from V = 60, batch 128 fresh, Adam 1e-3, d = 64."""
    model, step = train_copy(40, 60, steps=1500, seed=0, dim=64)
    assert step is not None, "did not reach token accuracy 0.95 in 1500 steps"
    rng = np.random.default_rng(123)
    batch = copy_subset_batch(rng, 256, 40, 60)
    att = model.forward(batch).attention
    # attention accuracy: argmax α at the aligned source position
    assert np.mean(att[:, :40].argmax(-1) == np.arange(40)) > 0.9
