"""Tests of the recurrent models: :mod:`miniattn.models.rnn_seq2seq` and :mod:`miniattn.models.rnn_classifier`.

Gradients by central differences (float64, tiny sizes), training through :func:`miniattn.train.train`,
the probes' shapes and NaN pattern, the saliency against finite differences of ``forward``, float32,
input validation, padding invariance, and an optional cross-check against PyTorch.
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis.probes import probe_all
from miniattn.batch import ClassificationBatch, Seq2SeqBatch
from miniattn.gradcheck import check_model
from miniattn.layers import log_softmax
from miniattn.models.base import ForwardResult
from miniattn.models.rnn_classifier import RecurrentAttentionClassifier
from miniattn.models.rnn_seq2seq import RecurrentSeq2SeqAttention
from miniattn.optim import Adam
from miniattn.tasks import CopyTask
from miniattn.train import train

ENCODERS = ("lstm", "gru")
V = 5


def masked_batch(rng, B=3, S=4, T=3, v_src=V, v_tgt=V):
    """Right-padded, non-contiguous and full source masks; uncounted outputs hold an out-of-range id."""
    source_mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 1, 0]], dtype=bool)[:B, :S]
    target_mask = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=bool)[:B, :T]
    target_out = np.where(target_mask, rng.integers(0, v_tgt, (B, T)), 10**6)
    return Seq2SeqBatch(rng.integers(0, v_src, (B, S)), source_mask, rng.integers(0, v_tgt, (B, T)),
                        target_out, target_mask)


def tiny_model(encoder="lstm", seed=1, **kwargs):
    kwargs = {"dim": 3, "hidden": 2, "init_scale": 0.8, **kwargs}
    return RecurrentSeq2SeqAttention(V, V, encoder=encoder, rng=np.random.default_rng(seed), **kwargs)


def assert_gradients_match(report):
    """Element-wise pass at rtol=1e-5/atol=1e-8 and a norm-wise relative error below 1e-7 for every
    parameter whose difference is above round-off (1e-10)."""
    assert report.passed, str(report)
    for name, err in report.errors.items():
        assert err < 1e-7 or report.max_abs_diff[name] < 1e-10, f"{name}\n{report}"


def gold_log_probs(model, batch, scale=None):
    lp = model.forward(batch, source_scale=scale).log_probs
    safe = np.where(batch.target_mask, batch.target_out, 0)
    return np.take_along_axis(lp, safe[..., None], axis=-1)[..., 0]


def probe_mask(batch):
    return batch.source_mask[:, None, :] & batch.target_mask[:, :, None]


# --------------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("uniform", [False, True])
def test_gradcheck_masked(encoder, uniform):
    model = tiny_model(encoder, uniform=uniform)
    batch = masked_batch(np.random.default_rng(0))
    assert_gradients_match(check_model(model, batch))


def test_gradcheck_separate_tables_and_vocabularies():
    rng = np.random.default_rng(2)
    model = RecurrentSeq2SeqAttention(4, 6, dim=2, hidden=2, init_scale=0.8, rng=rng)
    assert {"src_embed", "tgt_embed"} <= set(model.params) and "embed" not in model.params
    assert_gradients_match(check_model(model, masked_batch(rng, v_src=4, v_tgt=6)))


@pytest.mark.parametrize("encoder", ENCODERS)
def test_parameter_names_and_shapes(encoder):
    d, H, C = 3, 2, V
    n = 4 if encoder == "lstm" else 3
    model = tiny_model(encoder)
    expected = {"embed": (V, d), "score": (2 * H, 2 * H), "out_W": (4 * H, C), "out_b": (C,)}
    for prefix, D, h in (("enc_fwd_", d, H), ("enc_rev_", d, H), ("dec_", d, 2 * H)):
        expected[prefix + "W_x"] = (D, n * h)
        expected[prefix + "W_h"] = (h, n * h)
        for b in (["b"] if encoder == "lstm" else ["b_x", "b_h"]):
            expected[prefix + b] = (n * h,)
    assert {k: v.shape for k, v in model.params.items()} == expected
    _, grads = model.loss_and_grads(masked_batch(np.random.default_rng(0)))
    assert {k: v.shape for k, v in grads.items()} == expected


@pytest.mark.parametrize("encoder", ENCODERS)
def test_uniform_twin(encoder):
    model = tiny_model(encoder, uniform=True)
    batch = masked_batch(np.random.default_rng(3))
    _, grads = model.loss_and_grads(batch)
    assert np.all(grads["score"] == 0.0)
    att = model.forward(batch).attention
    n = batch.source_mask.sum(axis=1)
    expected = np.where(batch.source_mask, 1.0 / n[:, None], 0.0)[:, None, :]
    np.testing.assert_allclose(att, np.broadcast_to(expected, att.shape), rtol=1e-15, atol=0)


# --------------------------------------------------------------------------------------------------
# Forward, training
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoder", ENCODERS)
def test_forward_and_loss(encoder):
    model = tiny_model(encoder)
    batch = masked_batch(np.random.default_rng(4))
    before = {k: v.copy() for k, v in model.params.items()}
    out = model.forward(batch)
    assert isinstance(out, ForwardResult)
    assert out.log_probs.shape == (3, 3, V) and out.attention.shape == (3, 3, 4)
    np.testing.assert_allclose(np.exp(out.log_probs).sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(out.attention.sum(-1), 1.0, rtol=1e-12)
    assert np.all(out.attention[np.broadcast_to(~batch.source_mask[:, None, :], out.attention.shape)] == 0)
    loss, _ = model.loss_and_grads(batch)
    assert loss == pytest.approx(-gold_log_probs(model, batch)[batch.target_mask].mean(), rel=1e-12)
    assert all(np.array_equal(before[k], model.params[k]) for k in before)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_padding_does_not_change_a_row(encoder):
    """Pad ids and extra padding (source and target) leave the real positions' results unchanged."""
    model = tiny_model(encoder)
    rng = np.random.default_rng(5)
    batch = masked_batch(rng)
    B, S = batch.source.shape
    T = batch.target_in.shape[1]
    source = np.concatenate([np.where(batch.source_mask, batch.source, rng.integers(0, V, (B, S))),
                             rng.integers(0, V, (B, 2))], axis=1)
    other = Seq2SeqBatch(source, np.pad(batch.source_mask, ((0, 0), (0, 2))),
                         np.concatenate([batch.target_in, rng.integers(0, V, (B, 1))], axis=1),
                         np.pad(batch.target_out, ((0, 0), (0, 1))), np.pad(batch.target_mask, ((0, 0), (0, 1))))
    a, b = model.forward(batch), model.forward(other)
    np.testing.assert_allclose(b.log_probs[:, :T], a.log_probs, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(b.attention[:, :T, :S], a.attention, rtol=1e-12, atol=1e-15)
    assert model.loss_and_grads(other)[0] == pytest.approx(model.loss_and_grads(batch)[0], rel=1e-12)
    m = probe_mask(batch)
    for probe in ("ktiw_probe", "saliency"):
        np.testing.assert_allclose(getattr(model, probe)(other)[:, :T, :S][m], getattr(model, probe)(batch)[m],
                                   rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_loss_decreases_on_tiny_copy_task(encoder):
    task = CopyTask(length=3, vocab=5, mode="subset")
    model = RecurrentSeq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length,
                                      task.target_length, dim=8, hidden=6, encoder=encoder,
                                      rng=np.random.default_rng(0))
    history = train(model, task, Adam(model.params, lr=0.02), steps=30, batch_size=16, seed=0,
                    eval_every=30, eval_size=64)
    loss = history.metric("loss")
    assert np.all(np.isfinite(loss))
    assert loss[-1] < 0.8 * loss[0], loss


def test_config_rebuilds_the_same_model():
    model = tiny_model("gru", uniform=True, shared_embeddings=True)
    config = model.config()
    again = RecurrentSeq2SeqAttention(**config, rng=np.random.default_rng(1))
    assert again.config() == config
    assert all(np.array_equal(model.params[k], again.params[k]) for k in model.params)
    default = RecurrentSeq2SeqAttention(V, V, dim=7, rng=np.random.default_rng(0))
    assert default.hidden == 3 and default.config()["hidden"] is None
    assert default.init_scale == pytest.approx(1 / np.sqrt(3))


# --------------------------------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("uniform", [False, True])
def test_probes_shape_and_nan_pattern(encoder, uniform):
    model = tiny_model(encoder, uniform=uniform)
    batch = masked_batch(np.random.default_rng(6))
    m = probe_mask(batch)
    for probe in (model.ktiw_probe(batch), model.saliency(batch)):
        assert probe.shape == (3, 3, 4) and probe.dtype == np.float64
        assert np.all(np.isnan(probe[~m])) and np.all(np.isfinite(probe[m]))
    probes = probe_all(model, batch)
    assert np.array_equal(probes.mask, m)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_ktiw_probe_is_the_gold_log_prob_with_context_h_s(encoder):
    model = tiny_model(encoder)
    batch = masked_batch(np.random.default_rng(7))
    hidden, state = model._hidden(batch.source, batch.source_mask, batch.target_in)
    H2 = 2 * model.hidden
    beta = model.ktiw_probe(batch)
    B, T, S = beta.shape
    for s in range(S):                         # the definition, one source position at a time
        forced = np.concatenate([hidden[..., :H2], np.broadcast_to(state.enc[:, s:s + 1], (B, T, H2))], -1)
        lp = log_softmax(forced @ model.params["out_W"] + model.params["out_b"])
        safe = np.where(batch.target_mask, batch.target_out, 0)
        gold = np.take_along_axis(lp, safe[..., None], -1)[..., 0]
        ok = probe_mask(batch)[:, :, s]
        np.testing.assert_allclose(beta[:, :, s][ok], gold[ok], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("uniform", [False, True])
def test_saliency_matches_finite_differences(encoder, uniform):
    model = tiny_model(encoder, uniform=uniform)
    batch = masked_batch(np.random.default_rng(8))
    delta = model.saliency(batch)
    B, T, S = delta.shape
    eps = 1e-6
    numeric = np.empty((B, T, S))
    for s in range(S):
        up, down = np.ones((B, S)), np.ones((B, S))
        up[:, s] += eps
        down[:, s] -= eps
        numeric[:, :, s] = (gold_log_probs(model, batch, up) - gold_log_probs(model, batch, down)) / (2 * eps)
    m = probe_mask(batch)
    np.testing.assert_allclose(delta[m], numeric[m], rtol=1e-6, atol=1e-9)
    # Chunked over output positions (one position per pass) gives the same values.
    model.saliency_rows = 1
    np.testing.assert_allclose(model.saliency(batch)[m], delta[m], rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------------------------------
# float32, validation
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoder", ENCODERS)
def test_float32_stays_float32(encoder):
    m32 = tiny_model(encoder, dtype=np.float32)
    m64 = tiny_model(encoder)
    batch = masked_batch(np.random.default_rng(9))
    assert all(v.dtype == np.float32 for v in m32.params.values())
    loss32, grads32 = m32.loss_and_grads(batch)
    loss64, grads64 = m64.loss_and_grads(batch)
    assert all(g.dtype == np.float32 for g in grads32.values())
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    for k in grads64:
        np.testing.assert_allclose(grads32[k], grads64[k], rtol=1e-3, atol=1e-5)
    out = m32.forward(batch, source_scale=np.ones(batch.source.shape, dtype=np.float32))
    assert out.log_probs.dtype == np.float32 and out.attention.dtype == np.float32
    assert m32.ktiw_probe(batch).dtype == np.float32 and m32.saliency(batch).dtype == np.float32


def test_bad_constructor_arguments_are_rejected_by_name():
    rng = np.random.default_rng(0)
    cases = [
        (dict(encoder="rnn"), ValueError, "encoder"),
        (dict(encoder=1), TypeError, "encoder"),
        (dict(hidden=0), ValueError, "hidden"),
        (dict(dim=0), ValueError, "dim"),
        (dict(uniform="yes"), TypeError, "uniform"),
        (dict(init_scale=-1.0), ValueError, "init_scale"),
        (dict(dtype=np.float16), ValueError, "dtype"),
    ]
    for kwargs, exc, name in cases:
        with pytest.raises(exc, match=name):
            RecurrentSeq2SeqAttention(V, V, rng=rng, **kwargs)
    with pytest.raises(ValueError, match="shared_embeddings"):
        RecurrentSeq2SeqAttention(4, 5, shared_embeddings=True, rng=rng)
    with pytest.raises(ValueError, match="target_vocab"):
        RecurrentSeq2SeqAttention(4, 1, rng=rng)
    with pytest.raises(ValueError, match="source_length"):
        RecurrentSeq2SeqAttention(4, 4, 0, rng=rng)
    with pytest.raises(TypeError, match="rng"):
        RecurrentSeq2SeqAttention(4, 4, rng=0)


def test_bad_batches_are_rejected_by_name():
    model = RecurrentSeq2SeqAttention(V, V, 4, 3, dim=3, hidden=2, rng=np.random.default_rng(0))
    good = masked_batch(np.random.default_rng(10))
    cases = [
        (good._replace(source=good.source.astype(float)), TypeError, "batch.source"),
        (good._replace(source=good.source + V), ValueError, "batch.source"),
        (good._replace(source_mask=good.source_mask[:, :3]), ValueError, "batch.source_mask"),
        (good._replace(source_mask=np.zeros_like(good.source_mask)), ValueError, "batch.source_mask"),
        (good._replace(target_in=good.target_in[:2]), ValueError, "batch.target_in"),
        (good._replace(target_out=np.where(good.target_mask, V, 0)), ValueError, "batch.target_out"),
        (good._replace(target_mask=np.zeros_like(good.target_mask)), ValueError, "batch.target_mask"),
        (good._replace(source=np.zeros((3, 5), dtype=np.int64), source_mask=np.ones((3, 5), bool)),
         ValueError, "source_length"),
        (ClassificationBatch(good.source, good.source_mask, np.zeros(3, np.int64)), TypeError, "Seq2SeqBatch"),
    ]
    for batch, exc, name in cases:
        for call in (model.loss_and_grads, model.ktiw_probe, model.saliency):
            with pytest.raises(exc, match=name):
                call(batch)
    with pytest.raises(ValueError, match="source_scale"):
        model.forward(good, source_scale=np.ones((3, 2)))
    with pytest.raises(ValueError, match="source_scale"):
        model.forward(good, source_scale=np.full((3, 4), np.nan))


# --------------------------------------------------------------------------------------------------
# The recurrent classifier
# --------------------------------------------------------------------------------------------------

def classification_batch(rng, B=3, S=4, vocab=V, n_classes=3):
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 0, 1]], dtype=bool)[:B, :S]
    return ClassificationBatch(rng.integers(0, vocab, (B, S)), mask, rng.integers(0, n_classes, B))


def tiny_classifier(encoder="lstm", **kwargs):
    return RecurrentAttentionClassifier(V, 3, dim=3, hidden=2, encoder=encoder, init_scale=0.8,
                                        rng=np.random.default_rng(11), **kwargs)


@pytest.mark.parametrize("encoder,uniform", [("lstm", False), ("gru", True)])
def test_classifier_gradcheck(encoder, uniform):
    model = tiny_classifier(encoder, uniform=uniform)
    assert_gradients_match(check_model(model, classification_batch(np.random.default_rng(12))))


@pytest.mark.parametrize("encoder", ENCODERS)
def test_classifier_probes(encoder):
    model = tiny_classifier(encoder)
    batch = classification_batch(np.random.default_rng(13))
    out = model.forward(batch)
    assert out.log_probs.shape == (3, 1, 3) and out.attention.shape == (3, 1, 4)
    m = batch.mask[:, None, :]
    beta, delta = model.ktiw_probe(batch), model.saliency(batch)
    for probe in (beta, delta):
        assert probe.shape == (3, 1, 4)
        assert np.all(np.isnan(probe[~m])) and np.all(np.isfinite(probe[m]))
    eps = 1e-6
    numeric = np.empty((3, 1, 4))
    for s in range(4):
        up, down = np.ones((3, 4)), np.ones((3, 4))
        up[:, s] += eps
        down[:, s] -= eps
        lp = [model.forward(batch, source_scale=lam).log_probs[np.arange(3), 0, batch.labels] for lam in (up, down)]
        numeric[:, 0, s] = (lp[0] - lp[1]) / (2 * eps)
    np.testing.assert_allclose(delta[m], numeric[m], rtol=1e-6, atol=1e-9)
    assert np.array_equal(probe_all(model, batch).mask, np.broadcast_to(m, (3, 1, 4)))
    with pytest.raises(ValueError, match="encoder"):
        RecurrentAttentionClassifier(V, 3, encoder="rnn", rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="batch.labels"):
        model.loss_and_grads(batch._replace(labels=batch.labels + 3))


# --------------------------------------------------------------------------------------------------
# Optional: PyTorch cross-check
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoder", ENCODERS)
def test_matches_pytorch(encoder):
    """Same weights in torch.nn.LSTM/GRU modules: loss and every gradient agree (float64)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(14)
    d, H = 3, 2
    model = RecurrentSeq2SeqAttention(V, V, dim=d, hidden=H, encoder=encoder, init_scale=0.8, rng=rng)
    B, S, T = 3, 4, 3
    lengths = [4, 2, 3]                                   # right-padded: packed sequences in torch
    source_mask = np.arange(S)[None, :] < np.array(lengths)[:, None]
    target_mask = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=bool)
    batch = Seq2SeqBatch(rng.integers(0, V, (B, S)), source_mask, rng.integers(0, V, (B, T)),
                         np.where(target_mask, rng.integers(0, V, (B, T)), 0), target_mask)
    loss, grads = model.loss_and_grads(batch)

    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in model.params.items()}
    Module = torch.nn.LSTM if encoder == "lstm" else torch.nn.GRU
    enc = Module(d, H, batch_first=True, bidirectional=True).double()
    dec = Module(d, 2 * H, batch_first=True).double()

    def load(module, suffix, prefix):
        # Functional parameters so that gradients flow back to the NumPy-shaped tensors in p.
        weights = {f"weight_ih_l0{suffix}": p[prefix + "W_x"].T, f"weight_hh_l0{suffix}": p[prefix + "W_h"].T}
        if encoder == "lstm":
            weights[f"bias_ih_l0{suffix}"] = p[prefix + "b"]
            weights[f"bias_hh_l0{suffix}"] = torch.zeros_like(p[prefix + "b"])
        else:
            weights[f"bias_ih_l0{suffix}"] = p[prefix + "b_x"]
            weights[f"bias_hh_l0{suffix}"] = p[prefix + "b_h"]
        return weights

    enc_weights = {**load(enc, "", "enc_fwd_"), **load(enc, "_reverse", "enc_rev_")}
    dec_weights = load(dec, "", "dec_")
    call = torch.func.functional_call
    e_src = p["embed"][torch.tensor(batch.source)]
    packed = torch.nn.utils.rnn.pack_padded_sequence(e_src, torch.tensor(lengths), batch_first=True,
                                                     enforce_sorted=False)
    out, final = call(enc, enc_weights, (packed,))
    states, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=S)
    if encoder == "lstm":
        h_n, c_n = final
        init = (torch.cat([h_n[0], h_n[1]], -1)[None], torch.cat([c_n[0], c_n[1]], -1)[None])
    else:
        init = torch.cat([final[0], final[1]], -1)[None]
    q, _ = call(dec, dec_weights, (p["embed"][torch.tensor(batch.target_in)], init))
    scores = q @ p["score"] @ states.transpose(1, 2)
    scores = scores.masked_fill(~torch.tensor(source_mask)[:, None, :], -torch.inf)
    context = torch.softmax(scores, -1) @ states
    log_probs = torch.log_softmax(torch.cat([q, context], -1) @ p["out_W"] + p["out_b"], -1)
    gold = log_probs.gather(-1, torch.tensor(batch.target_out)[..., None])[..., 0]
    torch_loss = -gold[torch.tensor(target_mask)].mean()
    torch_loss.backward()
    assert loss == pytest.approx(torch_loss.item(), rel=1e-10)
    for k in model.params:
        np.testing.assert_allclose(grads[k], p[k].grad.numpy(), rtol=1e-8, atol=1e-10, err_msg=k)
