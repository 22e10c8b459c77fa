"""Overflow from finite inputs in the recurrent blocks and the gated toy: a named error, never NaN.

``tests/test_adversarial.py`` checks the opposite-sign overflow of the forward pass. These tests
reach the other places an overflow can happen (the GRU candidate, a padded position, the backward
pass with a finite forward pass, the sum of a BiLSTM's two directions, the toy's batch sums), and
that huge *finite* pre-activations still just saturate the gates, without a warning (the suite
turns RuntimeWarning into an error).
"""

from __future__ import annotations

import numpy as np
import pytest

from miniattn._validate import NonFiniteError
from miniattn.batch import ClassificationBatch
from miniattn.gru import gru_backward, gru_forward
from miniattn.models.toy import GatedToyClassifier, toy_batch
from miniattn.recurrent import bilstm_backward, bilstm_forward, lstm_backward, lstm_forward

DTYPES = (np.float32, np.float64)


def _max(dtype) -> float:
    return float(np.finfo(dtype).max)


def _raises(match: str):
    """A one-line NonFiniteError whose message names ``match`` (numpy's own warnings silenced)."""
    return pytest.raises(NonFiniteError, match=match)


def _one_line(excinfo) -> None:
    message = str(excinfo.value)
    assert "\n" not in message and "overflowed to inf or NaN" in message, message


@pytest.mark.parametrize("dtype", DTYPES)
def test_opposite_sign_overflow_names_the_pre_activations(dtype):
    M = _max(dtype)
    x, h0 = np.array([[[M]]], dtype), np.array([[-M]], dtype)
    with np.errstate(all="ignore"), _raises("LSTM gate pre-activations") as excinfo:
        lstm_forward(x, h0, None, np.full((1, 4), 4, dtype), np.full((1, 4), 4, dtype), np.zeros(4, dtype))
    _one_line(excinfo)
    with np.errstate(all="ignore"), _raises("GRU reset/update gate pre-activations") as excinfo:
        gru_forward(x, h0, np.full((1, 3), 4, dtype), np.full((1, 3), 4, dtype), np.zeros(3, dtype),
                    np.zeros(3, dtype))
    _one_line(excinfo)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gru_candidate_overflow_is_named(dtype):
    # r and z pre-activations are 0; x W_xn + r (h W_hn) = 0.75 M + 0.5 · 0.75 M overflows.
    M = _max(dtype)
    x, h0 = np.array([[[M / 2]]], dtype), np.array([[M / 2]], dtype)
    W = np.array([[0.0, 0.0, 1.5]], dtype)
    with np.errstate(all="ignore"), _raises("GRU candidate pre-activations") as excinfo:
        gru_forward(x, h0, W, W, np.zeros(3, dtype), np.zeros(3, dtype))
    _one_line(excinfo)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_overflow_at_a_padded_position_is_refused_too(cell):
    # The padded step's output is discarded, but its gates would reach the backward pass as NaN.
    M = _max(np.float64)
    x = np.zeros((1, 2, 1))
    x[0, 1, 0] = M
    mask = np.array([[True, False]])
    with np.errstate(all="ignore"), _raises("pre-activations"):
        if cell == "lstm":
            lstm_forward(x, None, None, np.full((1, 4), 4.0), np.zeros((1, 4)), np.zeros(4), mask=mask)
        else:
            gru_forward(x, None, np.full((1, 3), 4.0), np.zeros((1, 3)), np.zeros(3), np.zeros(3), mask=mask)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_huge_finite_pre_activations_saturate_without_warnings(dtype, reverse):
    rng = np.random.default_rng(0)
    big = 1e30 if dtype is np.float32 else 1e300
    x = (rng.standard_normal((2, 3, 2)) * big).astype(dtype)
    signs = lambda *shape: np.sign(rng.standard_normal(shape)).astype(dtype)  # noqa: E731
    (out, (h, c)), cache = lstm_forward(x, None, None, signs(2, 8), signs(2, 8), np.zeros(8, dtype),
                                        reverse=reverse)
    grads = lstm_backward(np.ones_like(out), None, cache)
    (gout, gh), gcache = gru_forward(x, None, signs(2, 6), signs(2, 6), np.zeros(6, dtype), np.zeros(6, dtype),
                                     reverse=reverse)
    ggrads = gru_backward(np.ones_like(gout), None, gcache)
    for a in (out, h, c, *grads, gout, gh, *ggrads):
        assert a.dtype == dtype and np.all(np.isfinite(a))
    assert np.all(np.abs(out) <= 1) and np.all(np.abs(gout) <= 1)


def _unsaturated_lstm(dtype, *, x=0.5, w_x=1.0, w_h=1.0):
    """T = 1, H = D = 1, h0 = c0 = 0: gates at moderate pre-activations, so gradients do not vanish."""
    W_x = np.array([[w_x, w_x, w_x, w_x]], dtype)
    W_h = np.array([[w_h, w_h, w_h, w_h]], dtype)
    return lstm_forward(np.array([[[x]]], dtype), None, None, W_x, W_h, np.zeros(4, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_backward_overflows_are_named(dtype):
    M = _max(dtype)
    # δh + dh_all overflows: every gate gradient of the step is inf or NaN.
    (out, _), cache = _unsaturated_lstm(dtype)
    with np.errstate(all="ignore"), _raises("gradient of the LSTM gate pre-activations") as excinfo:
        lstm_backward(np.full_like(out, M), (np.full((1, 1), M, dtype), None), cache)
    _one_line(excinfo)
    # da is finite, da W_hᵀ (the initial hidden state's gradient) overflows.
    (out, _), cache = _unsaturated_lstm(dtype, w_h=M / 2)
    with np.errstate(all="ignore"), _raises("gradient of the LSTM initial hidden state"):
        lstm_backward(np.full_like(out, 100), None, cache)
    # da is finite, xᵀ da overflows (x huge, W_x tiny: the pre-activation stays moderate).
    (out, _), cache = _unsaturated_lstm(dtype, x=M / 2, w_x=1 / M)
    with np.errstate(all="ignore"), _raises("gradient of the LSTM weight W_x"):
        lstm_backward(np.full_like(out, 100), None, cache)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gru_backward_overflows_are_named(dtype):
    M = _max(dtype)
    x, W = np.array([[[0.5]]], dtype), np.ones((1, 3), dtype)
    (out, _), cache = gru_forward(x, None, W, W, np.zeros(3, dtype), np.zeros(3, dtype))
    with np.errstate(all="ignore"), _raises("gradient of the GRU gate pre-activations") as excinfo:
        gru_backward(np.full_like(out, M), np.full((1, 1), M, dtype), cache)
    _one_line(excinfo)
    (out, _), cache = gru_forward(x, None, W, np.full((1, 3), M / 2, dtype), np.zeros(3, dtype), np.zeros(3, dtype))
    with np.errstate(all="ignore"), _raises("gradient of the GRU initial hidden state"):
        gru_backward(np.full_like(out, 100), None, cache)


def test_bilstm_sum_of_the_two_directions_input_gradients_overflow_is_named():
    # T = 1 and equal parameters: both directions give the same dx, each 0.6 M, their sum inf.
    M = _max(np.float64)
    c = M / 4
    x = np.array([[[1.0 / c]]])
    params = (None, None, np.array([[c, 0.0, 0.0, 0.0]]), np.zeros((1, 4)), np.array([0.0, 0.0, 10.0, 0.0]))
    (out, _), cache = bilstm_forward(x, params, params)
    one = bilstm_backward(np.ones((1, 1, 2)), None, cache)
    scale = 0.6 * M / abs(float(one.x[0, 0, 0]) / 2)
    with np.errstate(all="ignore"), _raises("BiLSTM input gradient"):
        bilstm_backward(np.full((1, 1, 2), scale), None, cache)


def _batch(tokens, labels) -> ClassificationBatch:
    tokens = np.asarray(tokens, dtype=np.int64)
    return ClassificationBatch(tokens=tokens, mask=np.ones(tokens.shape, dtype=bool),
                               labels=np.asarray(labels, dtype=np.int64), salient=tokens == 1)


def test_toy_opposite_sign_score_overflow_is_named():
    M = _max(np.float64)
    model = GatedToyClassifier(beta=(M / 2, M / 2), p=M / 2)   # (1 − p) β_0 = −inf, p β_1 = +inf
    for method in (model.loss_and_grads, model.forward, model.saliency):
        with np.errstate(all="ignore"), _raises("gated toy scores") as excinfo:
            method(toy_batch())
        _one_line(excinfo)
    # The probe reads β alone, not the score, so it still answers (numpy warns about the score).
    with np.errstate(all="ignore"):
        assert np.all(np.isfinite(model.ktiw_probe(toy_batch())))


def test_toy_batch_sums_and_dp_overflows_are_named():
    M = _max(np.float64)
    with np.errstate(all="ignore"), _raises("gated toy loss"):   # finite scores 0.6 M, their sum is not
        GatedToyClassifier(beta=(0.6 * M, 0.0), p=0.0).loss_and_grads(_batch([[0, 0], [0, 0]], [1, 1]))
    with np.errstate(all="ignore"), _raises("gated toy gradient of beta"):   # Σ (1 − p) over the batch
        GatedToyClassifier(beta=(0.0, 0.0), p=-0.6 * M).loss_and_grads(_batch([[0, 0], [0, 0]], [1, 1]))
    with np.errstate(all="ignore"), _raises("gated toy gradient of p"):      # β_1 − β_0 = 1.2 M
        GatedToyClassifier(beta=(-0.6 * M, 0.6 * M), p=0.0).loss_and_grads(_batch([[0, 1]], [1]))


def test_toy_blog_values_unchanged():
    # On the blog's batch, loss = p (β_0 − β_1) exactly; the checks must not touch ordinary values.
    model = GatedToyClassifier(beta=(0.25, -1.5), p=0.75)
    loss, grads = model.loss_and_grads(toy_batch())
    assert loss == 0.75 * (0.25 - (-1.5))
    assert grads["p"] == 0.25 - (-1.5) and list(grads["beta"]) == [0.75, -0.75]
