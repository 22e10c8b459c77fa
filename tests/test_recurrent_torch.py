"""Cross-check of :mod:`miniattn.recurrent` against ``torch.nn.LSTM`` / ``torch.nn.GRU`` (float64).

Skipped when PyTorch is not installed (it is only the optional ``bench`` extra). The same weights go
into both implementations — ``W_x = weight_ih.T``, ``W_h = weight_hh.T`` and, for the LSTM,
``b = bias_ih + bias_hh`` — and outputs, final states and the gradients of a random linear
functional of (outputs, final states) must agree to 1e-10. Padded batches go through PyTorch as
packed sequences, whose conventions are ours: padded outputs 0, the final state of each row taken at
its last real token, and the reverse direction starting there.
"""

from __future__ import annotations

import numpy as np
import pytest

from miniattn.recurrent import (
    LSTMParams, bilstm_backward, bilstm_forward, gru_backward, gru_forward, lstm_backward, lstm_forward,
)

torch = pytest.importorskip("torch")

TOL = dict(rtol=1e-10, atol=1e-10)
CASES = [(1, 1, 1, 1, None), (2, 5, 3, 4, None), (3, 4, 2, 3, [4, 2, 1]), (4, 6, 3, 2, [3, 6, 1, 5])]


def _t(a, grad=True):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def _np(t):
    return t.detach().numpy()


def _run_torch(module, x, hx, lengths, T):
    """Run a batch-first torch RNN, packing the batch when it is padded."""
    if lengths is None:
        return module(x, hx)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), batch_first=True,
                                                     enforce_sorted=False)
    out, final = module(packed, hx)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
    return out, final


def _mask(lengths, B, T):
    return None if lengths is None else np.arange(T)[None, :] < np.asarray(lengths)[:, None]


@pytest.mark.parametrize("B, T, D, H, lengths", CASES)
def test_lstm_matches_torch(B, T, D, H, lengths):
    rng = np.random.default_rng(np.random.SeedSequence([B, T, D, H, 1]))
    lstm = torch.nn.LSTM(D, H, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        for p in lstm.parameters():
            p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape))))
    x, h0, c0 = rng.standard_normal((B, T, D)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    W_x, W_h = _np(lstm.weight_ih_l0).T.copy(), _np(lstm.weight_hh_l0).T.copy()
    b = _np(lstm.bias_ih_l0) + _np(lstm.bias_hh_l0)
    (out, (h_T, c_T)), cache = lstm_forward(x, h0, c0, W_x, W_h, b, mask=_mask(lengths, B, T))

    xt, h0t, c0t = _t(x), _t(h0[None]), _t(c0[None])
    out_t, (h_t, c_t) = _run_torch(lstm, xt, (h0t, c0t), lengths, T)
    np.testing.assert_allclose(out, _np(out_t), **TOL)
    np.testing.assert_allclose(h_T, _np(h_t)[0], **TOL)
    np.testing.assert_allclose(c_T, _np(c_t)[0], **TOL)

    dh_all, dh, dc = rng.standard_normal(out.shape), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    g = lstm_backward(dh_all, (dh, dc), cache)
    loss = (out_t * _t(dh_all, False)).sum() + (h_t[0] * _t(dh, False)).sum() + (c_t[0] * _t(dc, False)).sum()
    loss.backward()
    np.testing.assert_allclose(g.x, _np(xt.grad), **TOL)
    np.testing.assert_allclose(g.h0, _np(h0t.grad)[0], **TOL)
    np.testing.assert_allclose(g.c0, _np(c0t.grad)[0], **TOL)
    np.testing.assert_allclose(g.W_x, _np(lstm.weight_ih_l0.grad).T, **TOL)
    np.testing.assert_allclose(g.W_h, _np(lstm.weight_hh_l0.grad).T, **TOL)
    np.testing.assert_allclose(g.b, _np(lstm.bias_ih_l0.grad), **TOL)
    np.testing.assert_allclose(g.b, _np(lstm.bias_hh_l0.grad), **TOL)


@pytest.mark.parametrize("B, T, D, H, lengths", CASES)
def test_gru_matches_torch(B, T, D, H, lengths):
    rng = np.random.default_rng(np.random.SeedSequence([B, T, D, H, 2]))
    gru = torch.nn.GRU(D, H, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        for p in gru.parameters():
            p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape))))
    x, h0 = rng.standard_normal((B, T, D)), rng.standard_normal((B, H))
    W_x, W_h = _np(gru.weight_ih_l0).T.copy(), _np(gru.weight_hh_l0).T.copy()
    b_x, b_h = _np(gru.bias_ih_l0).copy(), _np(gru.bias_hh_l0).copy()
    (out, h_T), cache = gru_forward(x, h0, W_x, W_h, b_x, b_h, mask=_mask(lengths, B, T))

    xt, h0t = _t(x), _t(h0[None])
    out_t, h_t = _run_torch(gru, xt, h0t, lengths, T)
    np.testing.assert_allclose(out, _np(out_t), **TOL)
    np.testing.assert_allclose(h_T, _np(h_t)[0], **TOL)

    dh_all, dh = rng.standard_normal(out.shape), rng.standard_normal((B, H))
    g = gru_backward(dh_all, dh, cache)
    ((out_t * _t(dh_all, False)).sum() + (h_t[0] * _t(dh, False)).sum()).backward()
    np.testing.assert_allclose(g.x, _np(xt.grad), **TOL)
    np.testing.assert_allclose(g.h0, _np(h0t.grad)[0], **TOL)
    np.testing.assert_allclose(g.W_x, _np(gru.weight_ih_l0.grad).T, **TOL)
    np.testing.assert_allclose(g.W_h, _np(gru.weight_hh_l0.grad).T, **TOL)
    np.testing.assert_allclose(g.b_x, _np(gru.bias_ih_l0.grad), **TOL)
    np.testing.assert_allclose(g.b_h, _np(gru.bias_hh_l0.grad), **TOL)


@pytest.mark.parametrize("B, T, D, H, lengths", CASES)
def test_bilstm_matches_torch_bidirectional_lstm(B, T, D, H, lengths):
    """Covers the reverse direction on right-padded rows (PyTorch starts it at the last real token)."""
    rng = np.random.default_rng(np.random.SeedSequence([B, T, D, H, 3]))
    lstm = torch.nn.LSTM(D, H, batch_first=True, bidirectional=True, dtype=torch.float64)
    with torch.no_grad():
        for p in lstm.parameters():
            p.copy_(torch.from_numpy(rng.standard_normal(tuple(p.shape))))
    x, h0, c0 = rng.standard_normal((B, T, D)), rng.standard_normal((2, B, H)), rng.standard_normal((2, B, H))

    def params(suffix, k):
        return LSTMParams(h0[k], c0[k], _np(getattr(lstm, "weight_ih_l0" + suffix)).T.copy(),
                          _np(getattr(lstm, "weight_hh_l0" + suffix)).T.copy(),
                          _np(getattr(lstm, "bias_ih_l0" + suffix)) + _np(getattr(lstm, "bias_hh_l0" + suffix)))

    (out, (fin_f, fin_r)), cache = bilstm_forward(x, params("", 0), params("_reverse", 1), mask=_mask(lengths, B, T))
    xt, h0t, c0t = _t(x), _t(h0), _t(c0)
    out_t, (h_t, c_t) = _run_torch(lstm, xt, (h0t, c0t), lengths, T)
    np.testing.assert_allclose(out, _np(out_t), **TOL)
    for k, fin in enumerate((fin_f, fin_r)):
        np.testing.assert_allclose(fin.h, _np(h_t)[k], **TOL)
        np.testing.assert_allclose(fin.c, _np(c_t)[k], **TOL)

    dh_all = rng.standard_normal(out.shape)
    dh, dc = rng.standard_normal((2, B, H)), rng.standard_normal((2, B, H))
    g = bilstm_backward(dh_all, ((dh[0], dc[0]), (dh[1], dc[1])), cache)
    ((out_t * _t(dh_all, False)).sum() + (h_t * _t(dh, False)).sum() + (c_t * _t(dc, False)).sum()).backward()
    np.testing.assert_allclose(g.x, _np(xt.grad), **TOL)
    for k, (suffix, gd) in enumerate((("", g.forward), ("_reverse", g.reverse))):
        np.testing.assert_allclose(gd.h0, _np(h0t.grad)[k], **TOL)
        np.testing.assert_allclose(gd.c0, _np(c0t.grad)[k], **TOL)
        np.testing.assert_allclose(gd.W_x, _np(getattr(lstm, "weight_ih_l0" + suffix).grad).T, **TOL)
        np.testing.assert_allclose(gd.W_h, _np(getattr(lstm, "weight_hh_l0" + suffix).grad).T, **TOL)
        np.testing.assert_allclose(gd.b, _np(getattr(lstm, "bias_ih_l0" + suffix).grad), **TOL)
