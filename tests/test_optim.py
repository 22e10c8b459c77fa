"""Tests of the hand-written optimisers (:mod:`miniattn.optim`).

SGD (plain and heavy-ball momentum) and Adam are compared with updates worked out by hand for a few
steps, and with an independent scalar re-implementation of the textbook rules on generated
gradients; defaults are the standard ones (Adam: lr 1e-3, betas 0.9/0.999, eps 1e-8); a checkpoint
(state_dict -> .npz -> load_state_dict into a fresh optimiser) resumes bit-identically.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from miniattn.optim import SGD, Adam, make_optimizer
from strategies import assert_unchanged, dims, float_arrays, seeds, snapshot


def params_pair():
    return {"W": np.array([[1.0, -2.0], [0.5, 3.0]]), "b": np.array([0.25])}


# --------------------------------------------------------------------------------------------------
# SGD against hand computation
# --------------------------------------------------------------------------------------------------

def test_sgd_three_steps_by_hand():
    p = {"x": np.array([1.0, -2.0])}
    opt = SGD(p, lr=0.1)
    grads = [np.array([0.5, 1.0]), np.array([-0.25, 0.0]), np.array([2.0, -4.0])]
    # x1 = x0 - 0.1 g1 = [0.95, -2.1];  x2 = [0.975, -2.1];  x3 = [0.775, -1.7]
    expected = [[0.95, -2.1], [0.975, -2.1], [0.775, -1.7]]
    x = p["x"]
    for g, e in zip(grads, expected):
        opt.step({"x": g})
        np.testing.assert_allclose(p["x"], e, rtol=1e-15, atol=1e-15)
    assert p["x"] is x           # updated in place: models keep references to their arrays


def test_sgd_momentum_three_steps_by_hand():
    p = {"x": np.array([1.0])}
    opt = SGD(p, lr=0.1, momentum=0.9)
    # v1 = 0.5          x1 = 1 - 0.05  = 0.95
    # v2 = 0.45 - 0.25 = 0.2    x2 = 0.95 - 0.02 = 0.93
    # v3 = 0.18 + 2.0  = 2.18   x3 = 0.93 - 0.218 = 0.712
    for g, v, x in [(0.5, 0.5, 0.95), (-0.25, 0.2, 0.93), (2.0, 2.18, 0.712)]:
        opt.step({"x": np.array([g])})
        np.testing.assert_allclose(opt.velocity["x"], [v], rtol=1e-14)
        np.testing.assert_allclose(p["x"], [x], rtol=1e-14)
    assert opt.t == 3


def sgd_reference(x0, grads, lr, momentum):
    """Scalar heavy-ball SGD: v <- mu v + g; x <- x - lr v."""
    x, v = float(x0), 0.0
    for g in grads:
        v = momentum * v + g
        x = x - lr * v
    return x


@given(n_steps=dims(1, 4), lr=st.floats(1e-4, 1.0), momentum=st.sampled_from([0.0, 0.5, 0.9, 0.99]),
       seed=seeds())
def test_sgd_matches_scalar_reference(n_steps, lr, momentum, seed):
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    x0 = rng.standard_normal(3)
    grads = rng.standard_normal((n_steps, 3))
    p = {"x": x0.copy()}
    opt = SGD(p, lr=lr, momentum=momentum)
    for g in grads:
        opt.step({"x": g})
    expected = [sgd_reference(x0[i], grads[:, i], lr, momentum) for i in range(3)]
    np.testing.assert_allclose(p["x"], expected, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Adam against hand computation
# --------------------------------------------------------------------------------------------------

def adam_reference(x0, grads, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """Scalar Adam with bias correction (Kingma & Ba, Algorithm 1)."""
    x, m, v = float(x0), 0.0, 0.0
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        x = x - lr * m_hat / (math.sqrt(v_hat) + eps)
    return x


def test_adam_defaults():
    opt = Adam({"x": np.zeros(2)})
    assert opt.lr == 1e-3 and opt.betas == (0.9, 0.999) and opt.eps == 1e-8
    assert opt.t == 0


def test_adam_first_steps_by_hand_with_defaults():
    """Step 1: m̂ = g, v̂ = g², so x moves by lr·g/(|g| + eps). With a constant gradient m̂ = g and
    v̂ = g² at every step (the bias corrections undo the averaging), so each step moves the same."""
    p = {"x": np.array([1.0, -1.0, 0.0])}
    g = np.array([0.5, -4.0, 1e-3])
    opt = Adam(p)
    step = 1e-3 * g / (np.abs(g) + 1e-8)     # = [1e-3·(1 − 2e-8), −1e-3·(1 − 2.5e-9), 1e-3·(1 − 1e-5)]
    for k in (1, 2, 3):
        opt.step({"x": g})
        np.testing.assert_allclose(p["x"], np.array([1.0, -1.0, 0.0]) - k * step, rtol=1e-12, atol=1e-15)


def test_adam_three_steps_by_hand_with_varying_gradient():
    """lr=0.1, betas (0.5, 0.75), eps=0 on purpose-chosen numbers, worked out on paper:

    g = 1, -1, 2
    t=1: m = 0.5,   v = 0.25;    m̂ = 1,          v̂ = 1;            x = 0 - 0.1·1        = -0.1
    t=2: m = -0.25, v = 0.4375;  m̂ = -1/3,       v̂ = 1;            x = -0.1 + 0.1/3     = -0.0666…
    t=3: m = 0.875, v = 1.328125; m̂ = 0.875/0.875 = 1,  v̂ = 1.328125/0.578125 = 85/37
         x = -1/15 - 0.1/√(85/37)
    """
    p = {"x": np.array([0.0])}
    opt = Adam(p, lr=0.1, betas=(0.5, 0.75), eps=1e-300)    # eps must be positive; 1e-300 is 0 here
    opt.step({"x": np.array([1.0])})
    np.testing.assert_allclose(p["x"], [-0.1], rtol=1e-14)
    opt.step({"x": np.array([-1.0])})
    np.testing.assert_allclose(p["x"], [-0.1 + 0.1 / 3], rtol=1e-14)
    opt.step({"x": np.array([2.0])})
    np.testing.assert_allclose(p["x"], [-1 / 15 - 0.1 / math.sqrt(85 / 37)], rtol=1e-14)
    np.testing.assert_allclose([opt.m["x"][0], opt.v["x"][0]], [0.875, 1.328125], rtol=1e-15)


@given(n_steps=dims(1, 4), lr=st.floats(1e-5, 0.1), b1=st.floats(0.0, 0.99), b2=st.floats(0.5, 0.9999),
       eps=st.floats(1e-10, 1e-6), seed=seeds())
def test_adam_matches_scalar_reference(n_steps, lr, b1, b2, eps, seed):
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    x0 = rng.standard_normal(4)
    grads = rng.standard_normal((n_steps, 4)) * np.array([1e-3, 1.0, 10.0, 1e-6])
    p = {"x": x0.copy()}
    opt = Adam(p, lr=lr, betas=(b1, b2), eps=eps)
    for g in grads:
        opt.step({"x": g})
    expected = [adam_reference(x0[i], grads[:, i], lr, b1, b2, eps) for i in range(4)]
    np.testing.assert_allclose(p["x"], expected, rtol=1e-12, atol=1e-15)


@given(seed=seeds())
def test_zero_gradient_leaves_fresh_params_unchanged(seed):
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    for opt_cls, kw in [(SGD, {"momentum": 0.9}), (SGD, {}), (Adam, {})]:
        p = {"x": rng.standard_normal(3)}
        x0 = p["x"].copy()
        opt = opt_cls(p, **kw)
        opt.step({"x": np.zeros(3)})
        np.testing.assert_array_equal(p["x"], x0)


# --------------------------------------------------------------------------------------------------
# Checkpoints: state_dict / load_state_dict
# --------------------------------------------------------------------------------------------------

OPTIMISERS = [("sgd", {"lr": 0.05}), ("sgd", {"lr": 0.05, "momentum": 0.9}),
              ("adam", {}), ("adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6})]


def _grad_sequence(seed, n):
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    return [{"W": rng.standard_normal((2, 2)), "b": rng.standard_normal(1)} for _ in range(n)]


def _to_npz_and_back(state):
    """What a checkpoint does: plain arrays through an .npz file."""
    buffer = io.BytesIO()
    np.savez(buffer, **state)
    buffer.seek(0)
    with np.load(buffer) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("name, kw", OPTIMISERS)
@given(seed=seeds(), split=st.integers(0, 5))
def test_resume_from_state_dict_is_bit_identical(name, kw, seed, split):
    grads = _grad_sequence(seed, 5)
    straight = params_pair()
    opt = make_optimizer(name, straight, **kw)
    for g in grads:
        opt.step(g)

    first = params_pair()
    opt1 = make_optimizer(name, first, **kw)
    for g in grads[:split]:
        opt1.step(g)
    params_state = _to_npz_and_back(first)
    optim_state = _to_npz_and_back(opt1.state_dict())
    resumed = {k: v.copy() for k, v in params_state.items()}
    opt2 = make_optimizer(name, resumed, **kw)
    opt2.load_state_dict(optim_state)
    assert opt2.t == split
    for g in grads[split:]:
        opt2.step(g)
    for k in straight:
        np.testing.assert_array_equal(resumed[k], straight[k])   # bit-identical, not merely close
    assert_unchanged(snapshot(opt.state_dict()), opt2.state_dict(), "optimiser state")


@pytest.mark.parametrize("name, kw", OPTIMISERS)
def test_state_dict_is_a_snapshot(name, kw):
    """A state kept in memory (e.g. the last finite checkpoint) must not change as training goes on."""
    grads = _grad_sequence(11, 4)
    p = params_pair()
    opt = make_optimizer(name, p, **kw)
    opt.step(grads[0])
    state = opt.state_dict()
    before = snapshot(state)
    for g in grads[1:]:
        opt.step(g)
    assert_unchanged(before, state, "state_dict taken before later steps")
    # And loading does not alias the given arrays either.
    other = make_optimizer(name, params_pair(), **kw)
    other.load_state_dict(state)
    other.step(grads[1])
    assert_unchanged(before, state, "state_dict after loading it elsewhere")


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sgd", "adam"])
@pytest.mark.parametrize("grads, match", [
    ({"W": np.ones((2, 2))}, r"grads must have exactly the keys of params; missing \['b'\]"),
    ({"W": np.ones((2, 2)), "b": np.ones(1), "c": np.ones(1)}, r"unexpected \['c'\]"),
    ({"W": np.ones((2, 3)), "b": np.ones(1)}, r"grads\['W'\] has shape \(2, 3\), params\['W'\] has \(2, 2\)"),
    ({"W": np.array([[1.0, np.nan], [0.0, 0.0]]), "b": np.ones(1)}, r"grads\['W'\] contains NaN or inf"),
    ({"W": np.ones((2, 2)), "b": np.array([np.inf])}, r"grads\['b'\] contains NaN or inf"),
])
def test_bad_grads_rejected_before_any_update(name, grads, match):
    p = params_pair()
    before = snapshot(p)
    opt = make_optimizer(name, p, momentum=0.9) if name == "sgd" else make_optimizer(name, p)
    state_before = snapshot(opt.state_dict())
    with pytest.raises(ValueError, match=match):
        opt.step(grads)
    assert_unchanged(before, p, "params")
    assert_unchanged(state_before, opt.state_dict(), "optimiser state")


@pytest.mark.parametrize("factory, match", [
    (lambda p: SGD(p, lr=0.0), r"lr must be positive, got 0.0"),
    (lambda p: SGD(p, lr=-1.0), r"lr must be positive"),
    (lambda p: SGD(p, lr=float("nan")), r"lr must be positive"),
    (lambda p: SGD(p, momentum=1.0), r"momentum must lie in \[0, 1\)"),
    (lambda p: SGD(p, momentum=-0.1), r"momentum must be non-negative"),
    (lambda p: Adam(p, lr=0.0), r"lr must be positive"),
    (lambda p: Adam(p, betas=(1.0, 0.999)), r"betas must lie in \[0, 1\)"),
    (lambda p: Adam(p, betas=(0.9, -0.1)), r"betas must lie in \[0, 1\)"),
    (lambda p: Adam(p, eps=0.0), r"eps must be positive"),
    (lambda p: make_optimizer("rmsprop", p), r"optimizer must be one of \['adam', 'sgd'\], got 'rmsprop'"),
])
def test_bad_hyperparameters_rejected(factory, match):
    with pytest.raises(ValueError, match=match):
        factory(params_pair())


def test_make_optimizer_builds_by_name_case_insensitively():
    p = params_pair()
    assert isinstance(make_optimizer("SGD", p, lr=0.1, momentum=0.5), SGD)
    adam = make_optimizer("Adam", p, lr=0.02)
    assert isinstance(adam, Adam) and adam.lr == 0.02


@given(x=float_arrays((3,), magnitude=10.0), g=float_arrays((3,), magnitude=10.0))
def test_float32_params_stay_float32(x, g):
    for opt_cls in (SGD, Adam):
        p = {"x": x.astype(np.float32)}
        opt_cls(p).step({"x": g.astype(np.float32)})
        assert p["x"].dtype == np.float32


def test_load_state_dict_names_a_missing_or_misshapen_entry():
    params = {"w": np.zeros((2, 3))}
    opt = Adam(params)
    state = opt.state_dict()
    del state["v/w"]
    with pytest.raises(ValueError, match="v/w"):
        Adam({"w": np.zeros((2, 3))}).load_state_dict(state)
    bad = opt.state_dict()
    bad["m/w"] = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"m/w.*shape"):
        Adam({"w": np.zeros((2, 3))}).load_state_dict(bad)
    with pytest.raises(ValueError, match="velocity/w"):
        SGD({"w": np.zeros(2)}, momentum=0.5).load_state_dict({"t": np.array(1)})


# --------------------------------------------------------------------------------------------------
# Constructor arguments and loaded state are checked, naming what is wrong
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("params, error, match", [
    ([np.zeros(2)], TypeError, r"params must be a dict"),
    ({"w": [0.0, 1.0]}, TypeError, r"params\['w'\] must be a numpy array"),
    ({"w": np.zeros(2, dtype=np.int64)}, TypeError, r"params\['w'\] must be a floating-point array, got dtype int64"),
    ({"w": np.zeros(2, dtype=bool)}, TypeError, r"params\['w'\] must be a floating-point array"),
    ({"w": np.broadcast_to(np.zeros(1), (3,))}, ValueError, r"params\['w'\] is read-only"),
    ({1: np.zeros(2)}, TypeError, r"params keys must be strings"),
])
@pytest.mark.parametrize("cls", [SGD, Adam])
def test_bad_params_rejected(cls, params, error, match):
    with pytest.raises(error, match=match):
        cls(params)


@pytest.mark.parametrize("factory, error, match", [
    (lambda p: SGD(p, lr=float("inf")), ValueError, r"lr must be positive"),
    (lambda p: SGD(p, lr="0.1"), TypeError, r"lr must be a real number"),
    (lambda p: SGD(p, lr=True), TypeError, r"lr must be a real number"),
    (lambda p: SGD(p, momentum=float("nan")), ValueError, r"momentum must lie in \[0, 1\)"),
    (lambda p: SGD(p, momentum="0.9"), TypeError, r"momentum must be a real number"),
    (lambda p: Adam(p, lr=-1e-3), ValueError, r"lr must be positive"),
    (lambda p: Adam(p, lr=float("nan")), ValueError, r"lr must be positive"),
    (lambda p: Adam(p, betas=0.9), TypeError, r"betas must be a pair"),
    (lambda p: Adam(p, betas=(0.9, 0.99, 0.999)), ValueError, r"betas must be a pair"),
    (lambda p: Adam(p, betas=("0.9", 0.999)), TypeError, r"betas\[0\] must be a real number"),
    (lambda p: Adam(p, betas=(0.9, float("nan"))), ValueError, r"betas\[1\] must be finite"),
    (lambda p: Adam(p, eps=-1e-8), ValueError, r"eps must be positive"),
    (lambda p: Adam(p, eps=float("inf")), ValueError, r"eps must be positive"),
    (lambda p: make_optimizer(None, p), TypeError, r"optimizer must be one of"),
])
def test_bad_hyperparameter_types_and_values(factory, error, match):
    with pytest.raises(error, match=match):
        factory(params_pair())


def _trained(name, **kw):
    opt = make_optimizer(name, {"w": np.zeros((2, 3))}, **kw)
    for g in _grad_sequence(3, 2):
        opt.step({"w": np.concatenate([g["W"], g["b"][:, None] * np.ones((2, 1))], axis=1)})
    return opt


@pytest.mark.parametrize("name, kw, key", [("adam", {}, "m/w"), ("adam", {}, "v/w"),
                                           ("sgd", {"momentum": 0.5}, "velocity/w")])
@pytest.mark.parametrize("corrupt, error, match", [
    (lambda a: np.where(a == a.flat[0], np.nan, a), ValueError, "contains NaN or inf"),
    (lambda a: np.full_like(a, np.inf), ValueError, "contains NaN or inf"),
    (lambda a: a.astype(np.float32), TypeError, "has dtype float32, expected float64"),
    (lambda a: a.astype(np.int64), TypeError, "has dtype int64, expected float64"),
    (lambda a: a[:1], ValueError, "has shape"),
])
def test_load_state_dict_rejects_a_corrupt_entry_naming_it(name, kw, key, corrupt, error, match):
    opt = _trained(name, **kw)
    before = snapshot(opt.state_dict())
    bad = opt.state_dict()
    bad[key] = corrupt(bad[key])
    with pytest.raises(error, match=match) as info:
        opt.load_state_dict(bad)
    assert key in str(info.value)
    assert_unchanged(before, opt.state_dict(), "state after a refused load")   # checked before any copy


def test_load_state_dict_rejects_negative_second_moments_and_bad_step_counters():
    opt = _trained("adam")
    before = snapshot(opt.state_dict())
    bad = opt.state_dict()
    bad["v/w"] = bad["v/w"].copy()
    bad["v/w"][0, 0] = -1e-12
    with pytest.raises(ValueError, match=r"v/w.*negative"):
        opt.load_state_dict(bad)
    for t, error, match in [(np.array(-1), ValueError, r"state\['t'\] must be >= 0, got -1"),
                            (np.array(2.0), TypeError, r"state\['t'\] must be an integer"),
                            (np.array(True), TypeError, r"state\['t'\] must be an integer"),
                            (np.array([2]), TypeError, r"state\['t'\] must be an integer")]:
        bad = opt.state_dict()
        bad["t"] = t
        with pytest.raises(error, match=match):
            opt.load_state_dict(bad)
    bad = opt.state_dict()
    bad["m/other"] = np.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected entries \['m/other'\]"):
        opt.load_state_dict(bad)
    with pytest.raises(TypeError, match="state must be a mapping"):
        opt.load_state_dict([("t", 1)])
    assert_unchanged(before, opt.state_dict(), "state after refused loads")
    opt.load_state_dict({"t": 5, **{k: v for k, v in before.items() if k != "t"}})   # a plain int is fine
    assert opt.t == 5


# --------------------------------------------------------------------------------------------------
# Adam on huge but finite gradients: the second moment must not overflow and freeze the parameter
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, big", [(np.float32, 1e20), (np.float32, 3e38), (np.float64, 1e200),
                                        (np.float64, 1e307)])
def test_adam_huge_gradients_do_not_freeze_the_parameter(dtype, big):
    lr = 0.1
    p = {"w": np.array([1.0, -1.0, 0.5], dtype=dtype)}
    opt = Adam(p, lr=lr)
    g = np.array([big, -big, 1e-3], dtype=dtype)      # g² overflows the dtype in the first two entries
    opt.step({"w": g})                                 # RuntimeWarnings are errors in this suite
    # Step 1 is exact: m̂ = g, v̂ = g², so each entry moves by lr · g / (|g| + eps).
    np.testing.assert_allclose(p["w"], np.array([1.0, -1.0, 0.5]) - lr * np.sign(g) * [1, 1, 1 - 1e-5], rtol=1e-6)
    previous = p["w"].copy()
    for _ in range(50):
        opt.step({"w": g})
        assert np.all(np.isfinite(opt.v["w"])) and np.all(np.isfinite(opt.m["w"]))
        moved = previous - p["w"]
        # Every entry keeps moving against its gradient, by a step of order lr (exact Adam: lr).
        assert np.all(np.sign(moved) == np.sign(g)) and np.all(np.abs(moved) > 0.2 * lr), moved
        assert np.all(np.abs(moved[:2]) < 3 * lr), moved
        previous = p["w"].copy()
    for _ in range(5):                                 # back to normal gradients: still finite and moving
        opt.step({"w": np.ones(3, dtype=dtype)})
        assert np.all(np.isfinite(p["w"])) and not np.array_equal(previous, p["w"])
        previous = p["w"].copy()
    assert p["w"].dtype == dtype and opt.v["w"].dtype == dtype


def test_adam_resume_is_bit_identical_through_huge_gradients():
    grads = [np.array([1e20, 1.0], np.float32), np.array([-3e38, 0.5], np.float32),
             np.array([1.0, -1.0], np.float32), np.array([2.0, 1e19], np.float32)]
    straight = {"w": np.array([0.5, -0.5], np.float32)}
    opt = Adam(straight, lr=0.05)
    for g in grads:
        opt.step({"w": g})
    for split in range(len(grads) + 1):
        first = {"w": np.array([0.5, -0.5], np.float32)}
        opt1 = Adam(first, lr=0.05)
        for g in grads[:split]:
            opt1.step({"w": g})
        resumed = {"w": first["w"].copy()}
        opt2 = Adam(resumed, lr=0.05)
        opt2.load_state_dict(_to_npz_and_back(opt1.state_dict()))
        for g in grads[split:]:
            opt2.step({"w": g})
        np.testing.assert_array_equal(resumed["w"], straight["w"])
        assert_unchanged(snapshot(opt.state_dict()), opt2.state_dict(), "optimiser state")
