"""Property tests for the recurrent blocks of :mod:`miniattn.recurrent` (LSTM, GRU, bidirectional LSTM).

Hypothesis draws the shapes (B, T, D, H from 1 up), the masks, the flags and a seed; the values come
from a seeded ``numpy.random.Generator`` (standard normal), as in ``test_layers.py``: generic values
keep the norm-wise relative error of the gradient check meaningful.

Every gradient check covers all outputs at once — the per-position outputs *and* the final state —
by flattening them into one vector, so a single random upstream vector exercises both ``dh_all``
and ``dfinal`` together.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from miniattn.gradcheck import check_directional, check_vjp
from miniattn.recurrent import (
    LSTMParams, LSTMState, bilstm_backward, bilstm_forward, gru_backward, gru_forward, lstm_backward,
    lstm_forward,
)
from checks import assert_gradcheck, assert_linear
from strategies import assert_unchanged, dims, masks, seeds, snapshot

CELLS = ("lstm", "gru")
N_GATES = {"lstm": 4, "gru": 3}


def right_padded(lengths, T: int) -> np.ndarray:
    """(B, T) mask, True for the first ``lengths[b]`` positions of row b."""
    return np.arange(T)[None, :] < np.asarray(lengths)[:, None]


@st.composite
def right_padded_masks(draw, B: int, T: int) -> np.ndarray:
    """Right-padded masks: every row has a length in [1, T] (so at least one real token)."""
    return right_padded(draw(st.lists(st.integers(1, T), min_size=B, max_size=B)), T)


# ==================================================================================================
# One cell-agnostic interface over LSTM and GRU, for the gradient checker
# ==================================================================================================

def make_inputs(cell: str, B: int, T: int, D: int, H: int, rng) -> dict:
    n = N_GATES[cell]
    inputs = {"x": rng.standard_normal((B, T, D)), "h0": rng.standard_normal((B, H))}
    if cell == "lstm":
        inputs["c0"] = rng.standard_normal((B, H))
    inputs["W_x"] = rng.standard_normal((D, n * H))
    inputs["W_h"] = rng.standard_normal((H, n * H))
    if cell == "lstm":
        inputs["b"] = rng.standard_normal(n * H)
    else:
        inputs["b_x"] = rng.standard_normal(n * H)
        inputs["b_h"] = rng.standard_normal(n * H)
    return inputs


def run_forward(cell, inputs, mask=None, reverse=False):
    """((outputs, finals), cache) with ``finals`` always a tuple of (B, H) arrays (h[, c])."""
    if cell == "lstm":
        (out, final), cache = lstm_forward(**inputs, mask=mask, reverse=reverse)
        return (out, tuple(final)), cache
    (out, h), cache = gru_forward(**inputs, mask=mask, reverse=reverse)
    return (out, (h,)), cache


def run_backward(cell, dh_all, dfinals, cache) -> dict:
    if cell == "lstm":
        return lstm_backward(dh_all, dfinals, cache)._asdict()
    return gru_backward(dh_all, None if dfinals is None else dfinals[0], cache)._asdict()


def flatten(out, finals) -> np.ndarray:
    return np.concatenate([out.ravel()] + [f.ravel() for f in finals])


def unflatten(u, B, T, H, n_finals):
    dh_all = u[:B * T * H].reshape(B, T, H)
    rest = u[B * T * H:]
    return dh_all, tuple(rest[k * B * H:(k + 1) * B * H].reshape(B, H) for k in range(n_finals))


def cell_fns(cell, mask, reverse, shape):
    B, T, D, H = shape
    n_finals = 2 if cell == "lstm" else 1

    def func(**inputs):
        return flatten(*run_forward(cell, inputs, mask, reverse)[0])

    def vjp(upstream, **inputs):
        _, cache = run_forward(cell, inputs, mask, reverse)
        return run_backward(cell, *unflatten(upstream, B, T, H, n_finals), cache)

    return func, vjp


class Case:
    """One generated recurrent problem: cell, shape (B, T, D, H), inputs, mask, reverse, rng."""

    def __init__(self, cell, shape, mask, reverse, rng):
        self.cell, self.shape, self.mask, self.reverse, self.rng = cell, shape, mask, reverse, rng
        self.inputs = make_inputs(cell, *shape, rng)

    def forward(self, **overrides):
        return run_forward(self.cell, {**self.inputs, **overrides}, self.mask, self.reverse)

    def __repr__(self):
        return (f"Case({self.cell}, shape={self.shape}, reverse={self.reverse}, "
                f"mask={None if self.mask is None else self.mask.astype(int).tolist()})")


@st.composite
def cases(draw, cell=None, masked=None, reverse=None, max_len=4, max_dim=3, any_mask=False):
    cell = draw(st.sampled_from(CELLS)) if cell is None else cell
    B, T = draw(dims(1, 3)), draw(dims(1, max_len))
    D, H = draw(dims(1, max_dim)), draw(dims(1, max_dim))
    masked = draw(st.booleans()) if masked is None else masked
    if not masked:
        mask = None
    elif any_mask:
        mask = draw(masks((B, T)))
    else:
        mask = draw(right_padded_masks(B, T))
    reverse = draw(st.booleans()) if reverse is None else reverse
    rng = np.random.default_rng(np.random.SeedSequence(draw(seeds())))
    return Case(cell, (B, T, D, H), mask, reverse, rng)


# ==================================================================================================
# Gradient checks
# ==================================================================================================

@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "padded"])
@pytest.mark.parametrize("reverse", [False, True], ids=["ltr", "rtl"])
@given(data=st.data())
def test_gradcheck(cell, masked, reverse, data):
    """Every input (x, h0[, c0], W_x, W_h, biases) against central differences, random upstream."""
    case = data.draw(cases(cell=cell, masked=masked, reverse=reverse))
    func, vjp = cell_fns(cell, case.mask, reverse, case.shape)
    assert_gradcheck(check_vjp(func, vjp, case.inputs, rng=case.rng))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("B, T, D, H", [(1, 1, 1, 1), (1, 1, 3, 2), (1, 5, 2, 2), (3, 1, 2, 3)])
@pytest.mark.parametrize("reverse", [False, True], ids=["ltr", "rtl"])
def test_gradcheck_edge_shapes(cell, B, T, D, H, reverse):
    rng = np.random.default_rng(np.random.SeedSequence([B, T, D, H, reverse, N_GATES[cell]]))
    case = Case(cell, (B, T, D, H), None, reverse, rng)
    func, vjp = cell_fns(cell, None, reverse, case.shape)
    assert_gradcheck(check_vjp(func, vjp, case.inputs, rng=rng))


@pytest.mark.parametrize("cell", CELLS)
@given(data=st.data())
def test_gradcheck_with_holes_in_the_mask(cell, data):
    """Masks of any pattern (padding between tokens, on the left, ...), not only right-padded ones."""
    case = data.draw(cases(cell=cell, masked=True, any_mask=True, max_dim=2))
    func, vjp = cell_fns(cell, case.mask, case.reverse, case.shape)
    assert_gradcheck(check_vjp(func, vjp, case.inputs, rng=case.rng))


def _large_case(cell, rng, B=5, T=9, D=6, H=7):
    inputs = make_inputs(cell, B, T, D, H, rng)
    inputs["W_x"] /= np.sqrt(D)
    inputs["W_h"] /= np.sqrt(H)
    return inputs, right_padded([9, 4, 1, 7, 9], T), (B, T, D, H)


@pytest.mark.parametrize("cell", CELLS)
def test_check_directional_large_shape(cell):
    rng = np.random.default_rng(np.random.SeedSequence(2103_07601))
    inputs, padded, shape = _large_case(cell, rng)
    holes = rng.random(padded.shape) < 0.6
    holes[:, 3] = True
    for mask in (None, padded, holes):
        for reverse in (False, True):
            func, vjp = cell_fns(cell, mask, reverse, shape)
            assert_gradcheck(check_directional(func, vjp, inputs, rng=rng, n_directions=3))


@pytest.mark.parametrize("cell", CELLS)
def test_directional_check_catches_truncated_backpropagation(cell):
    """The large-shape check has teeth: a backward pass that stops the gradient flowing back through
    ``h_{t-1} W_h`` (the cached gates stay correct, only ``δh ← da W_hᵀ`` is dropped) is rejected."""
    rng = np.random.default_rng(np.random.SeedSequence(11))
    inputs, mask, (B, T, D, H) = _large_case(cell, rng)
    func, _ = cell_fns(cell, mask, False, (B, T, D, H))
    n_finals = 2 if cell == "lstm" else 1

    def truncated_vjp(upstream, **kw):
        _, cache = run_forward(cell, kw, mask, False)
        cache = cache._replace(W_h=np.zeros_like(cache.W_h))
        return run_backward(cell, *unflatten(upstream, B, T, H, n_finals), cache)

    assert not check_directional(func, truncated_vjp, inputs, rng=rng, wrt=["x"]).passed


# ==================================================================================================
# Algebraic properties of the backward pass
# ==================================================================================================

@given(cases(), st.floats(-3, 3), st.floats(-3, 3))
def test_backward_linear_in_upstream(case, a, b):
    (out, finals), cache = case.forward()
    B, T, D, H = case.shape
    size = flatten(out, finals).size

    def grads(u):
        return run_backward(case.cell, *unflatten(u, B, T, H, len(finals)), cache)

    assert_linear(grads, case.rng.standard_normal(size), case.rng.standard_normal(size), a, b)


@given(cases())
def test_zero_upstream_gives_zero_gradients(case):
    (out, finals), cache = case.forward()
    zero = run_backward(case.cell, np.zeros_like(out), tuple(np.zeros_like(f) for f in finals), cache)
    absent = run_backward(case.cell, None, None, cache)
    for grads in (zero, absent):
        assert grads.keys() == case.inputs.keys()
        for name, g in grads.items():
            assert g.shape == case.inputs[name].shape, name
            assert not np.any(g), name


@given(cases(masked=True))
def test_upstream_at_padded_positions_is_ignored(case):
    """The output at a padded position is the constant 0, so its upstream gradient goes nowhere."""
    (out, finals), cache = case.forward()
    dh_all = case.rng.standard_normal(out.shape)
    dfinals = tuple(case.rng.standard_normal(f.shape) for f in finals)
    noisy = np.where(case.mask[:, :, None], dh_all, case.rng.standard_normal(out.shape))
    clean = run_backward(case.cell, np.where(case.mask[:, :, None], dh_all, 0.0), dfinals, cache)
    for name, g in run_backward(case.cell, noisy, dfinals, cache).items():
        np.testing.assert_allclose(g, clean[name], rtol=1e-13, atol=1e-13, err_msg=name)
    assert not np.any(clean["x"][~case.mask]), "padded inputs must get no gradient"
    assert not np.any(out[~case.mask]), "padded outputs must be exactly 0"


@given(cases())
def test_does_not_mutate_inputs_or_cache(case):
    inputs_before = snapshot((case.inputs, case.mask))
    (out, finals), cache = case.forward()
    cache_before = snapshot(cache)
    dh_all = case.rng.standard_normal(out.shape)
    dfinals = tuple(case.rng.standard_normal(f.shape) for f in finals)
    upstream_before = snapshot((dh_all, dfinals))
    g1 = run_backward(case.cell, dh_all, dfinals, cache)
    g2 = run_backward(case.cell, dh_all, dfinals, cache)
    assert_unchanged(inputs_before, (case.inputs, case.mask), "inputs")
    assert_unchanged(cache_before, cache, "cache")
    assert_unchanged(upstream_before, (dh_all, dfinals), "upstream")
    for name in g1:
        np.testing.assert_array_equal(g1[name], g2[name], err_msg=name)   # deterministic, no state
    # Gradients are fresh arrays: writing into them changes neither the upstream nor the inputs.
    for g in g1.values():
        g[...] = 0.0
    assert_unchanged(upstream_before, (dh_all, dfinals), "upstream after writing to the gradients")
    assert_unchanged(inputs_before, (case.inputs, case.mask), "inputs after writing to the gradients")


@pytest.mark.parametrize("cell", CELLS)
@given(data=st.data())
def test_float32_stays_float32_and_mixed_promotes(cell, data):
    case = data.draw(cases(cell=cell))
    inputs32 = {k: v.astype(np.float32) for k, v in case.inputs.items()}
    (out, finals), cache = run_forward(cell, inputs32, case.mask, case.reverse)
    assert out.dtype == np.float32 and all(f.dtype == np.float32 for f in finals)
    grads = run_backward(cell, out.astype(np.float32), tuple(f.copy() for f in finals), cache)
    assert all(g.dtype == np.float32 for g in grads.values()), {k: g.dtype for k, g in grads.items()}
    (out64, finals64), _ = run_forward(cell, case.inputs, case.mask, case.reverse)
    np.testing.assert_allclose(out, out64, rtol=0, atol=1e-4)
    # One float64 input promotes everything (forward and backward) to float64.
    (outm, _), cache_m = run_forward(cell, {**inputs32, "W_h": case.inputs["W_h"]}, case.mask, case.reverse)
    assert outm.dtype == np.float64
    assert all(g.dtype == np.float64 for g in run_backward(cell, outm, None, cache_m).values())


@pytest.mark.parametrize("cell", CELLS)
@given(data=st.data())
def test_all_true_mask_is_the_same_as_no_mask(cell, data):
    case = data.draw(cases(cell=cell, masked=False))
    B, T, _, _ = case.shape
    (out, finals), cache = case.forward()
    (out_m, finals_m), cache_m = run_forward(cell, case.inputs, np.ones((B, T), bool), case.reverse)
    np.testing.assert_array_equal(out, out_m)
    for f, fm in zip(finals, finals_m):
        np.testing.assert_array_equal(f, fm)


# ==================================================================================================
# Semantics: hand-computed steps, padding, reverse direction
# ==================================================================================================

def sigmoid(a: float) -> float:
    return 1.0 / (1.0 + math.exp(-a))


def test_lstm_one_step_by_hand():
    """T = 1, B = D = H = 1: every gate written out with math.exp / math.tanh (PyTorch order i, f, g, o)."""
    x, h0, c0 = 0.5, -0.3, 0.8
    W_x, W_h, b = [0.1, -0.2, 0.3, 0.4], [0.5, 0.6, -0.7, 0.8], [0.01, 0.02, 0.03, 0.04]
    a = [x * W_x[k] + h0 * W_h[k] + b[k] for k in range(4)]
    i, f, g, o = sigmoid(a[0]), sigmoid(a[1]), math.tanh(a[2]), sigmoid(a[3])
    c = f * c0 + i * g
    h = o * math.tanh(c)
    (out, (h_T, c_T)), cache = lstm_forward(np.array([[[x]]]), np.array([[h0]]), np.array([[c0]]),
                                            np.array([W_x]), np.array([W_h]), np.array(b))
    assert out.shape == (1, 1, 1)
    np.testing.assert_allclose([out[0, 0, 0], h_T[0, 0], c_T[0, 0]], [h, h, c], rtol=1e-15, atol=0)
    # Backward from dc_T = 1 alone: dc0 = f; da = (g i(1-i), c0 f(1-f), i(1-g²), 0).
    da = [g * i * (1 - i), c0 * f * (1 - f), i * (1 - g * g), 0.0]
    grads = lstm_backward(None, (None, np.array([[1.0]])), cache)
    np.testing.assert_allclose(grads.c0, [[f]], rtol=1e-15)
    np.testing.assert_allclose(grads.h0, [[sum(w * d for w, d in zip(W_h, da))]], rtol=1e-14)
    np.testing.assert_allclose(grads.x, [[[sum(w * d for w, d in zip(W_x, da))]]], rtol=1e-14)
    np.testing.assert_allclose(grads.b, da, rtol=1e-14)
    np.testing.assert_allclose(grads.W_x, [[x * d for d in da]], rtol=1e-14)
    np.testing.assert_allclose(grads.W_h, [[h0 * d for d in da]], rtol=1e-14)
    # Backward from the output: dh = 1 → dc = o(1 − tanh² c), da_o = tanh(c) o(1 − o).
    dc = o * (1 - math.tanh(c) ** 2)
    da = [dc * g * i * (1 - i), dc * c0 * f * (1 - f), dc * i * (1 - g * g), math.tanh(c) * o * (1 - o)]
    grads = lstm_backward(np.ones((1, 1, 1)), None, cache)
    np.testing.assert_allclose(grads.b, da, rtol=1e-14)
    np.testing.assert_allclose(grads.c0, [[dc * f]], rtol=1e-14)


def test_gru_one_step_by_hand():
    """T = 1, B = D = H = 1, PyTorch's GRU: the reset gate scales only the hidden part of n."""
    x, h0 = 0.7, -0.4
    W_x, W_h = [0.3, -0.5, 0.9], [0.2, 0.4, -0.6]
    b_x, b_h = [0.05, -0.1, 0.15], [-0.2, 0.25, 0.3]
    r = sigmoid(x * W_x[0] + b_x[0] + h0 * W_h[0] + b_h[0])
    z = sigmoid(x * W_x[1] + b_x[1] + h0 * W_h[1] + b_h[1])
    n = math.tanh(x * W_x[2] + b_x[2] + r * (h0 * W_h[2] + b_h[2]))
    h = (1 - z) * n + z * h0
    (out, h_T), cache = gru_forward(np.array([[[x]]]), np.array([[h0]]), np.array([W_x]), np.array([W_h]),
                                    np.array(b_x), np.array(b_h))
    np.testing.assert_allclose([out[0, 0, 0], h_T[0, 0]], [h, h], rtol=1e-15, atol=0)
    # Backward from dh_T = 1: dh0 = z + (W_h · dq) with dq = (da_r, da_z, r da_n).
    da_n = (1 - z) * (1 - n * n)
    da_r = da_n * (h0 * W_h[2] + b_h[2]) * r * (1 - r)
    da_z = (h0 - n) * z * (1 - z)
    grads = gru_backward(None, np.array([[1.0]]), cache)
    np.testing.assert_allclose(grads.b_x, [da_r, da_z, da_n], rtol=1e-14)
    np.testing.assert_allclose(grads.b_h, [da_r, da_z, r * da_n], rtol=1e-14)
    np.testing.assert_allclose(grads.h0, [[z + W_h[0] * da_r + W_h[1] * da_z + W_h[2] * r * da_n]], rtol=1e-14)


def _row_inputs(cell, inputs, b, positions):
    """The inputs of batch row ``b`` alone, keeping only the time ``positions``."""
    row = {k: v for k, v in inputs.items()}
    row["x"] = inputs["x"][b:b + 1, positions]
    row["h0"] = inputs["h0"][b:b + 1]
    if cell == "lstm":
        row["c0"] = inputs["c0"][b:b + 1]
    return row


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True], ids=["ltr", "rtl"])
@given(data=st.data())
def test_right_padded_batch_matches_each_row_alone(cell, reverse, data):
    """Outputs, final states and every gradient of a padded batch equal those of unpadded single rows."""
    case = data.draw(cases(cell=cell, masked=True, reverse=reverse))
    B, T, D, H = case.shape
    (out, finals), cache = case.forward()
    dh_all = case.rng.standard_normal(out.shape)
    dfinals = tuple(case.rng.standard_normal(f.shape) for f in finals)
    grads = run_backward(cell, dh_all, dfinals, cache)
    summed = {k: np.zeros_like(grads[k]) for k in ("W_x", "W_h", "b", "b_x", "b_h") if k in grads}
    lengths = case.mask.sum(axis=1)
    for b in range(B):   # the reference loops over rows; the implementation does not
        L = int(lengths[b])
        assert np.array_equal(case.mask[b], np.arange(T) < L)
        row = _row_inputs(cell, case.inputs, b, slice(0, L))
        (row_out, row_finals), row_cache = run_forward(cell, row, None, reverse)
        np.testing.assert_allclose(out[b, :L], row_out[0], rtol=1e-13, atol=1e-14)
        assert not np.any(out[b, L:])
        for f, rf in zip(finals, row_finals):
            np.testing.assert_allclose(f[b], rf[0], rtol=1e-13, atol=1e-14)
        row_grads = run_backward(cell, dh_all[b:b + 1, :L], tuple(f[b:b + 1] for f in dfinals), row_cache)
        np.testing.assert_allclose(grads["x"][b, :L], row_grads["x"][0], rtol=1e-12, atol=1e-13)
        assert not np.any(grads["x"][b, L:])
        for k in ("h0", "c0"):
            if k in grads:
                np.testing.assert_allclose(grads[k][b], row_grads[k][0], rtol=1e-12, atol=1e-13)
        for k in summed:
            summed[k] += row_grads[k]
    for k in summed:
        np.testing.assert_allclose(grads[k], summed[k], rtol=1e-11, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("cell", CELLS)
@given(data=st.data())
def test_padded_positions_carry_the_state_unchanged(cell, data):
    """Any mask: a row gives what its real tokens alone give (padding anywhere is skipped), outputs 0."""
    case = data.draw(cases(cell=cell, masked=True, any_mask=True))
    (out, finals), _ = case.forward()
    for b in range(case.shape[0]):
        real = np.flatnonzero(case.mask[b])
        (row_out, row_finals), _ = run_forward(cell, _row_inputs(cell, case.inputs, b, real), None,
                                               case.reverse)
        np.testing.assert_allclose(out[b, real], row_out[0], rtol=1e-13, atol=1e-14)
        assert not np.any(out[b, ~case.mask[b]])
        for f, rf in zip(finals, row_finals):
            np.testing.assert_allclose(f[b], rf[0], rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("cell", CELLS)
@given(data=st.data())
def test_reverse_is_forward_over_each_row_flipped(cell, data):
    """Reference by per-row index flipping (a vectorised gather): position t of row b ↔ L_b − 1 − t."""
    case = data.draw(cases(cell=cell, masked=True, reverse=True))
    B, T, _, _ = case.shape
    lengths = case.mask.sum(axis=1)
    t = np.arange(T)[None, :]
    flip = np.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)       # (B, T), a permutation per row
    flipped_x = np.take_along_axis(case.inputs["x"], flip[:, :, None], axis=1)
    (out_r, finals_r), _ = case.forward()
    (out_f, finals_f), _ = run_forward(cell, {**case.inputs, "x": flipped_x}, case.mask, False)
    np.testing.assert_allclose(out_r, np.take_along_axis(out_f, flip[:, :, None], axis=1), rtol=1e-13, atol=1e-14)
    for fr, ff in zip(finals_r, finals_f):
        np.testing.assert_allclose(fr, ff, rtol=1e-13, atol=1e-14)


def test_reverse_of_a_right_padded_row_starts_at_its_last_real_token():
    """With T = 3 and length 2, the reverse LSTM's first step consumes x[1] from the initial state."""
    rng = np.random.default_rng(np.random.SeedSequence(5))
    inputs = make_inputs("lstm", 1, 3, 2, 2, rng)
    mask = np.array([[True, True, False]])
    (out, _), _ = lstm_forward(**inputs, mask=mask, reverse=True)
    (first, _), _ = lstm_forward(**{**inputs, "x": inputs["x"][:, 1:2]})
    np.testing.assert_allclose(out[:, 1], first[:, 0], rtol=1e-14, atol=0)
    assert not np.any(out[:, 2])


# ==================================================================================================
# Bidirectional LSTM
# ==================================================================================================

DIRS = ("f", "r")
PARAM_NAMES = LSTMParams._fields


def bilstm_inputs(B, T, D, H, rng, H_r=None):
    inputs = {"x": rng.standard_normal((B, T, D))}
    for d, h in zip(DIRS, (H, H if H_r is None else H_r)):
        one = make_inputs("lstm", B, T, D, h, rng)
        inputs.update({f"{d}_{k}": one[k] for k in PARAM_NAMES})
    return inputs


def bilstm_call(inputs, mask):
    params = [LSTMParams(*(inputs[f"{d}_{k}"] for k in PARAM_NAMES)) for d in DIRS]
    return bilstm_forward(inputs["x"], *params, mask=mask)


def bilstm_fns(mask, shape, H_r):
    B, T, D, H = shape

    def func(**inputs):
        (out, (ff, fr)), _ = bilstm_call(inputs, mask)
        return np.concatenate([out.ravel(), *(a.ravel() for a in (*ff, *fr))])

    def vjp(upstream, **inputs):
        _, cache = bilstm_call(inputs, mask)
        n = B * T * (H + H_r)
        dh_all = upstream[:n].reshape(B, T, H + H_r)
        sizes = [B * H, B * H, B * H_r, B * H_r]
        parts = np.split(upstream[n:], np.cumsum(sizes)[:-1])
        dfinal = ((parts[0].reshape(B, H), parts[1].reshape(B, H)),
                  (parts[2].reshape(B, H_r), parts[3].reshape(B, H_r)))
        g = bilstm_backward(dh_all, dfinal, cache)
        out = {"x": g.x}
        for d, gd in zip(DIRS, (g.forward, g.reverse)):
            out.update({f"{d}_{k}": v for k, v in gd._asdict().items()})
        return out

    return func, vjp


@given(B=dims(1, 3), T=dims(1, 4), D=dims(1, 2), H=dims(1, 2), H_r=dims(1, 2), masked=st.booleans(),
       data=st.data())
def test_bilstm_gradcheck(B, T, D, H, H_r, masked, data):
    mask = data.draw(right_padded_masks(B, T)) if masked else None
    rng = np.random.default_rng(np.random.SeedSequence(data.draw(seeds())))
    inputs = bilstm_inputs(B, T, D, H, rng, H_r)
    func, vjp = bilstm_fns(mask, (B, T, D, H), H_r)
    assert_gradcheck(check_vjp(func, vjp, inputs, rng=rng))


def test_bilstm_check_directional_large_shape():
    rng = np.random.default_rng(np.random.SeedSequence(42))
    B, T, D, H = 5, 9, 6, 7
    inputs = bilstm_inputs(B, T, D, H, rng)
    for mask in (None, right_padded([9, 4, 1, 7, 9], T)):
        func, vjp = bilstm_fns(mask, (B, T, D, H), H)
        assert_gradcheck(check_directional(func, vjp, inputs, rng=rng, n_directions=3))


@given(cases(cell="lstm", masked=True))
def test_bilstm_is_two_lstms_concatenated(case):
    B, T, D, H = case.shape
    inputs = bilstm_inputs(B, T, D, H, case.rng)
    (out, (final_f, final_r)), cache = bilstm_call(inputs, case.mask)
    assert out.shape == (B, T, 2 * H)
    assert isinstance(final_f, LSTMState) and isinstance(final_r, LSTMState)
    dh_all = case.rng.standard_normal(out.shape)
    g = bilstm_backward(dh_all, None, cache)
    dx = np.zeros_like(inputs["x"])
    for d, reverse, half, final, gd in ((("f", False, slice(0, H), final_f, g.forward)),
                                        (("r", True, slice(H, 2 * H), final_r, g.reverse))):
        one = {k: inputs[f"{d}_{k}"] for k in PARAM_NAMES}
        (o, fin), c = lstm_forward(inputs["x"], **one, mask=case.mask, reverse=reverse)
        np.testing.assert_array_equal(out[..., half], o)
        np.testing.assert_array_equal(final.h, fin.h)
        np.testing.assert_array_equal(final.c, fin.c)
        ref = lstm_backward(dh_all[..., half], None, c)
        for k in PARAM_NAMES:
            np.testing.assert_allclose(getattr(gd, k), getattr(ref, k), rtol=1e-14, atol=1e-15, err_msg=k)
        dx += ref.x
    np.testing.assert_allclose(g.x, dx, rtol=1e-14, atol=1e-15)


# ==================================================================================================
# Bad input
# ==================================================================================================

def _lstm_args(B=2, T=3, D=2, H=3):
    return {"x": np.ones((B, T, D)), "h0": np.zeros((B, H)), "c0": np.zeros((B, H)),
            "W_x": np.ones((D, 4 * H)), "W_h": np.ones((H, 4 * H)), "b": np.zeros(4 * H)}


def _gru_args(B=2, T=3, D=2, H=3):
    return {"x": np.ones((B, T, D)), "h0": np.zeros((B, H)), "W_x": np.ones((D, 3 * H)),
            "W_h": np.ones((H, 3 * H)), "b_x": np.zeros(3 * H), "b_h": np.zeros(3 * H)}


@pytest.mark.parametrize("change, error, match", [
    ({"x": np.full((2, 3, 2), np.nan)}, ValueError, r"^x contains NaN or inf$"),
    ({"x": np.ones((2, 3))}, ValueError, r"^x must have 3 dimensions"),
    ({"x": np.ones((2, 3, 2), dtype=np.int64)}, TypeError, r"^x must be a floating-point array"),
    ({"x": np.ones((2, 0, 2))}, ValueError, r"^x must not be empty"),
    ({"h0": np.zeros((3, 3))}, ValueError, r"^h0 must have shape \(B, H\) = \(2, 3\), got \(3, 3\)"),
    ({"c0": np.full((2, 3), np.inf)}, ValueError, r"^c0 contains NaN or inf$"),
    ({"W_x": np.ones((3, 12))}, ValueError, r"^W_x must have shape \(D, 4H\) = \(2, 12\)"),
    ({"W_h": np.ones((3, 9))}, ValueError, r"^W_h must have shape \(H, 4H\)"),
    ({"W_h": np.ones((12, 3))}, ValueError, r"^W_h must have shape \(H, 4H\)"),
    ({"b": np.zeros(9)}, ValueError, r"^b must have shape \(4H,\) = \(12,\), got \(9,\)"),
    ({"b": np.full(12, -np.inf)}, ValueError, r"^b contains NaN or inf$"),
    ({"mask": np.ones((2, 3), dtype=np.int64)}, TypeError, r"^mask must be a boolean array"),
    ({"mask": np.ones((2, 4), dtype=bool)}, ValueError, r"^mask must have shape \(2, 3\)"),
    ({"mask": np.array([[True, False, False], [False, False, False]])}, ValueError,
     r"^mask has rows with no real token \(batch rows \[1\]\)"),
])
def test_lstm_rejects_bad_input(change, error, match):
    with pytest.raises(error, match=match):
        lstm_forward(**{**_lstm_args(), **change})


@pytest.mark.parametrize("change, error, match", [
    ({"W_h": np.ones((3, 12))}, ValueError, r"^W_h must have shape \(H, 3H\)"),
    ({"W_x": np.ones((2, 12))}, ValueError, r"^W_x must have shape \(D, 3H\) = \(2, 9\)"),
    ({"b_x": np.zeros(12)}, ValueError, r"^b_x must have shape \(3H,\) = \(9,\)"),
    ({"b_h": np.zeros((3, 3))}, ValueError, r"^b_h must have 1 dimensions"),
    ({"h0": np.zeros((2, 3, 1))}, ValueError, r"^h0 must have 2 dimensions"),
    ({"mask": np.zeros((2, 3), dtype=bool)}, ValueError, r"^mask has rows with no real token \(batch rows \[0, 1\]\)"),
])
def test_gru_rejects_bad_input(change, error, match):
    with pytest.raises(error, match=match):
        gru_forward(**{**_gru_args(), **change})


def test_initial_states_may_be_omitted():
    args = _lstm_args()
    (out, final), _ = lstm_forward(**{**args, "h0": None, "c0": None})
    (ref, ref_final), _ = lstm_forward(**args)
    np.testing.assert_array_equal(out, ref)
    g = _gru_args()
    np.testing.assert_array_equal(gru_forward(**{**g, "h0": None})[0][0], gru_forward(**g)[0][0])


def test_backward_rejects_bad_upstream():
    (_, _), cache = lstm_forward(**_lstm_args())
    with pytest.raises(ValueError, match=r"^dh_all must have shape \(2, 3, 3\), got \(2, 3, 4\)"):
        lstm_backward(np.ones((2, 3, 4)), None, cache)
    with pytest.raises(ValueError, match=r"^dh_all contains NaN or inf$"):
        lstm_backward(np.full((2, 3, 3), np.nan), None, cache)
    with pytest.raises(TypeError, match=r"^dfinal must be None or a pair \(dh_T, dc_T\)"):
        lstm_backward(None, np.ones((2, 3)), cache)
    with pytest.raises(ValueError, match=r"^dc_T must have shape \(2, 3\)"):
        lstm_backward(None, (None, np.ones((3, 2))), cache)
    (_, _), gcache = gru_forward(**_gru_args())
    with pytest.raises(ValueError, match=r"^dh_final must have shape \(2, 3\)"):
        gru_backward(None, np.ones((2, 4)), gcache)


def test_bilstm_rejects_bad_input():
    a = _lstm_args()
    good = LSTMParams(a["h0"], a["c0"], a["W_x"], a["W_h"], a["b"])
    with pytest.raises(ValueError, match=r"^forward_params\.W_x must have shape \(D, 4H\)"):
        bilstm_forward(a["x"], good._replace(W_x=np.ones((5, 12))), good)
    with pytest.raises(ValueError, match=r"^reverse_params\.b contains NaN or inf$"):
        bilstm_forward(a["x"], good, good._replace(b=np.full(12, np.nan)))
    with pytest.raises(TypeError, match=r"^reverse_params must be a 5-sequence"):
        bilstm_forward(a["x"], good, good[:4])
    with pytest.raises(ValueError, match=r"^mask has rows with no real token"):
        bilstm_forward(a["x"], good, good, mask=np.array([[True, True, True], [False] * 3]))
    (_, _), cache = bilstm_forward(a["x"], good, good)
    with pytest.raises(ValueError, match=r"^dh_all must have shape \(2, 3, 6\)"):
        bilstm_backward(np.ones((2, 3, 3)), None, cache)
    with pytest.raises(ValueError, match=r"^reverse dh_T must have shape \(2, 3\)"):
        bilstm_backward(None, (None, (np.ones((2, 2)), None)), cache)
    with pytest.raises(TypeError, match=r"^dfinal must be None or a pair \(dfinal_forward, dfinal_reverse\)"):
        bilstm_backward(None, (None,), cache)
