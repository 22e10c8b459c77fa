"""Smoke tests of the benchmark code paths (benchmarks/), at tiny sizes.

They check that the benchmark code computes the right things — the PyTorch twin is the same model,
the timing helpers time what they are given, the slope fit recovers a known exponent, the FLOP count
is the sum of the matmuls it names (and what PyTorch's FLOP counter counts), the JAX twin is the same
model, every section of ``run_all`` runs and writes its files — and never assert anything about how
long something took. PyTorch and JAX parts are skipped without PyTorch or JAX.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from checks import assert_twin_step_leaves_model_alone
from hypothesis import given
from hypothesis import strategies as st

try:
    import benchmarks  # noqa: F401  (found when pytest runs from the repository root, e.g. `python -m pytest`)
except ImportError:   # plain `pytest` from elsewhere: the repository root is the parent of tests/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import (blas_threads, set_threads, summarize, thread_report, time_interleaved)
from benchmarks import jax_seq2seq, prediction_cost, roofline, run_all, scaling, step_speed
from benchmarks.torch_seq2seq import TorchSeq2Seq, torch_available
from miniattn.batch import Seq2SeqBatch
from miniattn.models.seq2seq import Seq2SeqAttention


@pytest.fixture
def restore_threads():
    """Put NumPy's BLAS and PyTorch back to their thread counts after a test that changes them."""
    before = thread_report()
    yield
    if before["numpy_blas"] is not None:
        set_threads(before["numpy_blas"])
    if before["torch"] is not None:
        import torch
        torch.set_num_threads(before["torch"])


# --------------------------------------------------------------------------------------------------
# Helpers of benchmarks/__init__.py
# --------------------------------------------------------------------------------------------------

@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=40))
def test_summarize_is_median_and_quartiles(values):
    s = summarize(values)
    v = np.sort(np.asarray(values))
    assert s.n == len(values)
    assert s.q25 <= s.median <= s.q75
    # Median: the middle value, or the mean of the two middle values.
    mid = len(v) // 2
    expected = v[mid] if len(v) % 2 else 0.5 * (v[mid - 1] + v[mid])
    assert s.median == pytest.approx(expected, rel=1e-12, abs=1e-9)
    # At least a quarter of the values lie at or below q25, and at or above q75.
    assert np.mean(v <= s.q25 + 1e-9 * (1 + abs(s.q25))) >= 0.25
    assert np.mean(v >= s.q75 - 1e-9 * (1 + abs(s.q75))) >= 0.25
    assert s.iqr >= 0


@pytest.mark.parametrize("bad", [[], [np.nan], [1.0, np.inf], [[1.0, 2.0]]])
def test_summarize_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="values"):
        summarize(bad)


@given(st.integers(1, 5), st.integers(0, 3), st.integers(1, 3))
def test_time_interleaved_calls_every_callable_warmup_plus_reps_times(reps, warmup, n_fns):
    calls = []
    fns = {f"f{i}": (lambda i=i: calls.append(i)) for i in range(n_fns)}
    times = time_interleaved(fns, reps=reps, warmup=warmup)
    assert set(times) == set(fns)
    for i, name in enumerate(fns):
        assert times[name].shape == (reps,)
        assert np.all(times[name] >= 0)
        assert calls.count(i) == warmup + reps
    # Interleaved: after the warm-up, each block of n_fns calls holds every callable once.
    timed = calls[warmup * n_fns:]
    for r in range(reps):
        assert sorted(timed[r * n_fns:(r + 1) * n_fns]) == list(range(n_fns))


@pytest.mark.parametrize("kwargs, match", [({"reps": 0}, "reps"), ({"reps": 2, "warmup": -1}, "warmup"),
                                           ({"reps": True}, "reps")])
def test_time_interleaved_rejects_bad_counts(kwargs, match):
    with pytest.raises(ValueError, match=match):
        time_interleaved({"f": lambda: None}, **kwargs)
    with pytest.raises(ValueError, match="fns"):
        time_interleaved({}, reps=1)


def test_set_threads_round_trip(restore_threads):
    report = set_threads(1)
    if blas_threads() is not None:
        assert report["numpy_blas"] == 1
    if torch_available():
        assert report["torch"] == 1
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            set_threads(bad)


# --------------------------------------------------------------------------------------------------
# Scaling: slope fit and FLOP count
# --------------------------------------------------------------------------------------------------

@given(st.floats(-3, 3), st.floats(-5, 5), st.lists(st.integers(1, 10_000), min_size=2, max_size=8, unique=True))
def test_fit_slope_recovers_a_power_law(exponent, log_prefactor, sizes):
    sizes = np.array(sizes, dtype=np.float64)
    times = np.exp(log_prefactor) * sizes ** exponent
    assert scaling.fit_slope(sizes, times) == pytest.approx(exponent, abs=1e-8)


def test_fit_slope_rejects_bad_input():
    with pytest.raises(ValueError, match="sizes"):
        scaling.fit_slope([1.0], [1.0])
    with pytest.raises(ValueError, match="sizes"):
        scaling.fit_slope([1.0, 2.0], [1.0, -1.0])


@given(st.integers(1, 64), st.integers(1, 50), st.integers(1, 50), st.integers(1, 64), st.integers(2, 70))
def test_step_flops_is_the_sum_of_the_step_matmuls(B, T, S, d, C):
    # Each (m, k, n) product costs 2mkn; the list follows the order of the forward and backward passes.
    mm = [(B * T, d, d),                            # q W_a
          (B * T, d, S), (B * T, S, d),             # scores, context (per batch row: T×d·d×S, T×S·S×d)
          (B * T, 2 * d, C),                        # logits
          (B * T, C, 2 * d), (2 * d, B * T, C),     # dhidden, dW_o
          (B * S, T, d), (B * T, d, S),             # dvalues = αᵀ dC, dα = dC Vᵀ
          (B * S, T, d), (B * T, S, d),             # dkeys = dscoresᵀ (qW), dprojected = dscores K
          (B * T, d, d), (d, B * T, d)]             # dq, dW_a
    assert scaling.step_flops(B, T, S, d, C) == sum(2 * m * k * n for m, k, n in mm)


@given(st.integers(1, 16), st.integers(1, 20), st.integers(1, 20), st.integers(1, 32), st.integers(2, 40),
       st.integers(1, 8), st.booleans())
def test_roofline_step_flops_is_the_sum_of_the_step_matmuls(B, T, S, d, C, H, vp):
    per_head = [(B * T, d, d), (B * T, d, d), (d, B * T, d),          # q W_a, dq, dW_a
                (B * T, d, S), (B * T, S, d),                          # scores, context
                (B * S, T, d), (B * T, d, S), (B * S, T, d), (B * T, S, d)]   # dV, dα, dK, d(q W_a)
    if vp:
        per_head += [(B * S, d, d), (B * S, d, d), (d, B * S, d)]     # h W_v, dh, dW_v
    out = [(B * T, 2 * d, C), (B * T, C, 2 * d), (2 * d, B * T, C)]
    expected = H * sum(2 * m * k * n for m, k, n in per_head) + sum(2 * m * k * n for m, k, n in out)
    assert roofline.step_flops(B, T, S, d, C, heads=H, value_projection=vp) == expected
    if H == 1 and not vp:
        assert roofline.step_flops(B, T, S, d, C) == scaling.step_flops(B, T, S, d, C)


@given(st.integers(1, 16), st.integers(1, 20), st.integers(1, 20), st.integers(1, 32), st.integers(2, 40),
       st.integers(1, 8), st.booleans(), st.integers(1, 50))
def test_roofline_factored_step_flops_is_the_sum_of_the_factored_matmuls(B, T, S, d, C, H, vp, U):
    k = H * d   # one (d, H·d) projection for all heads, as the model computes it
    factored = [(U, d, k), (T, d, k),                                   # E[u] W, P W
                (U, k, d), (T, k, d), (d, U, k), (d, T, k)]            # dE[u], dP, dW = E[u]ᵀ D + Pᵀ G
    per_head = [(B * T, d, S), (B * T, S, d), (B * S, T, d), (B * T, d, S), (B * S, T, d), (B * T, S, d)]
    if vp:
        per_head += [(B * S, d, d), (B * S, d, d), (d, B * S, d)]
    out = [(B * T, 2 * d, C), (B * T, C, 2 * d), (2 * d, B * T, C)]
    expected = sum(2 * m * n * q for m, n, q in factored + out) + H * sum(2 * m * n * q for m, n, q in per_head)
    assert roofline.step_flops(B, T, S, d, C, heads=H, value_projection=vp, distinct=U) == expected
    with pytest.raises(ValueError, match="distinct"):
        roofline.step_flops(B, T, S, d, C, distinct=0)


@pytest.mark.parametrize("heads", [1, 3])
def test_roofline_step_flops_matches_pytorch_flop_counter(heads):
    pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode
    s = step_speed.make_setup(8, heads=heads, batch_size=3, length=4, vocab=6)
    with FlopCounterMode(display=False) as counter:
        s.twin.loss(s.twin_batch).backward()
    B, S = s.batch.source.shape
    T = s.batch.target_in.shape[1]
    assert counter.get_total_flops() == roofline.step_flops(B, T, S, 8, 9, heads=heads)


def test_roofline_rows_profile_and_gemm_rate_at_tiny_sizes(restore_threads):
    rate = roofline.gemm_rate("float32", n=64, threads=1, reps=1)
    assert rate.median > 0
    t = step_speed.time_step(8, "float32", heads=2, reps=2, warmup=0, with_torch=False, batch_size=2, length=3,
                             vocab=5)
    rows = roofline.roofline_rows([t], {"float32": rate}, vocab=5)
    assert rows[0]["flops"] == roofline.step_flops(2, 4, 4, 8, 8, heads=2)
    assert rows[0]["flops_executed"] == roofline.step_flops(2, 4, 4, 8, 8, heads=2, distinct=6)
    assert rows[0]["numpy"]["fraction"] == pytest.approx(rows[0]["flops_executed"] / t.numpy.median / 1e9 / rate.median)
    assert rows[0]["numpy"]["model_fraction"] == pytest.approx(rows[0]["flops"] / t.numpy.median / 1e9 / rate.median)
    assert rows[0]["torch"] is None and rows[0]["jax"] is None
    assert "| 2 | float32 | 8 |" in roofline.format_roofline(rows, {"float32": rate})
    p = roofline.profile_step(8, "float32", steps=2, batch_size=2, length=3, vocab=5, replay_reps=1,
                              gemm_rate_gflops=rate.median)
    names = [name for name, _ in p.phases]
    assert "whole loss_and_grads" in names and "attention backward (4 GEMMs + softmax backward)" in names
    assert "projected lookup backward (scatter + small GEMMs)" in names
    assert len(p.gemm["gemms"]) == 14 and p.gemm["total"] > 0 and p.step_seconds > 0
    assert "all 14 GEMMs" in roofline.format_profile(p)
    assert p.flops == roofline.step_flops(2, 4, 4, 8, 8, distinct=6)
    with pytest.raises(ValueError, match="heads"):
        roofline.step_flops(1, 1, 1, 1, 2, heads=0)


def test_step_flops_rejects_bad_sizes():
    with pytest.raises(ValueError, match="dim"):
        scaling.step_flops(1, 1, 1, 0, 2)


def test_scaling_scans_run_at_tiny_sizes():
    sc = scaling.scan("B", (2, 4), base=(2, 3, 4), reps=1)
    assert sc.sizes == (2, 4) and len(sc.times) == 2 and all(t > 0 for t in sc.times)
    assert np.isfinite(sc.slope) and sc.fixed == {"L": 3, "d": 4}
    at = scaling.scan("L (attention)", (2, 4), base=(2, 3, 4), reps=1)
    assert all(t > 0 for t in at.times)
    assert scaling.matmul_gflops(16, reps=1).median > 0
    with pytest.raises(ValueError, match="axis"):
        scaling.scan("T", (2, 4))
    with pytest.raises(ValueError, match="sizes"):
        scaling.scan("B", (2,))


# --------------------------------------------------------------------------------------------------
# Step comparison and the PyTorch twin
# --------------------------------------------------------------------------------------------------

def test_make_setup_is_deterministic_and_validates():
    a = step_speed.make_setup(8, batch_size=3, length=4, vocab=6, with_torch=False)
    b = step_speed.make_setup(8, batch_size=3, length=4, vocab=6, with_torch=False)
    for k in a.model.params:
        np.testing.assert_array_equal(a.model.params[k], b.model.params[k])
    np.testing.assert_array_equal(a.batch.source, b.batch.source)
    assert a.twin is None
    with pytest.raises(ValueError, match="dtype"):
        step_speed.make_setup(8, "float16", with_torch=False)


def test_time_step_numpy_alone():
    t = step_speed.time_step(8, reps=2, warmup=0, with_torch=False, batch_size=2, length=3, vocab=5)
    assert t.torch is None and t.ratio is None
    assert t.numpy.n == 2 and t.numpy.median > 0
    assert (t.batch_size, t.length, t.dim) == (2, 3, 8)
    assert "not installed" in step_speed.format_table({"timings": [t], "equivalence": [], "torch": False})


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_check_equivalence_tiny(dtype):
    pytest.importorskip("torch")
    e = step_speed.check_equivalence(8, dtype, batch_size=4, length=5, vocab=7)
    assert e.ok, e
    assert set(e.grad_err) == {"embed", "src_pos", "tgt_pos", "score", "out_W", "out_b"}
    assert e.loss_numpy == pytest.approx(e.loss_torch, rel=1e-10 if dtype == "float64" else 1e-5)


@st.composite
def twin_cases(draw):
    """A small model configuration (one head or several) and a padded batch for it."""
    B, S, T = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    Vs, Vt = draw(st.integers(2, 6)), draw(st.integers(2, 6))
    shared = draw(st.booleans()) and Vs == Vt
    cfg = dict(dim=draw(st.integers(1, 6)), shared_embeddings=shared,
               value_projection=draw(st.booleans()), uniform=draw(st.booleans()),
               init_scale=draw(st.sampled_from([None, 0.5, 2.0])), heads=draw(st.sampled_from([1, 1, 2, 3])))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    source_mask = rng.random((B, S)) < 0.7
    source_mask[:, rng.integers(0, S)] = True                  # every row has a real source token
    target_mask = rng.random((B, T)) < 0.7
    target_mask[rng.integers(0, B), rng.integers(0, T)] = True   # at least one counted target
    target_out = np.where(target_mask, rng.integers(0, Vt, (B, T)), 0)
    batch = Seq2SeqBatch(rng.integers(0, Vs, (B, S)), source_mask, rng.integers(0, Vt, (B, T)),
                         target_out, target_mask)
    return (Vs, Vt, S, T), cfg, seed, batch


@given(twin_cases())
def test_torch_twin_matches_numpy_gradients_on_padded_batches(case):
    pytest.importorskip("torch")
    sizes, cfg, seed, batch = case
    model = Seq2SeqAttention(*sizes, rng=np.random.default_rng(seed), **cfg)
    twin = TorchSeq2Seq.from_numpy(model)
    loss_np, grads_np = model.loss_and_grads(batch)
    loss_t, grads_t = twin.loss_and_grads(TorchSeq2Seq.batch(batch))
    assert loss_t == pytest.approx(loss_np, rel=1e-12)
    assert set(grads_t) == set(grads_np)
    for k in grads_np:
        np.testing.assert_allclose(grads_t[k], grads_np[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_torch_twin_step_does_not_move_the_numpy_model():
    pytest.importorskip("torch")
    s = step_speed.make_setup(4, batch_size=2, length=3, vocab=5)
    assert_twin_step_leaves_model_alone(s)


def test_torch_twin_rejects_what_it_does_not_model():
    pytest.importorskip("torch")
    multi = Seq2SeqAttention(5, 5, 3, 3, dim=4, heads=2, rng=np.random.default_rng(0))
    assert TorchSeq2Seq.from_numpy(multi).heads == 2
    with pytest.raises(ValueError, match="value"):
        TorchSeq2Seq(dict(multi.params, value=multi.params["value"][0]))
    with pytest.raises(ValueError, match="score"):
        TorchSeq2Seq(dict(multi.params, score=np.zeros((2, 4, 3))))
    with pytest.raises(ValueError, match="params"):
        TorchSeq2Seq({"score": np.eye(2)})
    model = Seq2SeqAttention(5, 5, 3, 3, dim=4, rng=np.random.default_rng(0))
    mixed = dict(model.params, out_b=model.params["out_b"].astype(np.float32))
    with pytest.raises(TypeError, match="float32 or all float64"):
        TorchSeq2Seq(mixed)


def test_time_step_with_torch_reports_the_ratio():
    pytest.importorskip("torch")
    t = step_speed.time_step(4, "float32", reps=2, warmup=0, batch_size=2, length=3, vocab=5)
    assert t.torch.n == 2 and t.ratio.n == 2 and t.ratio.median > 0
    assert "| float32 | 4 |" in step_speed.format_table({"timings": [t], "equivalence": [], "torch": True})


def test_time_step_multihead_with_torch():
    pytest.importorskip("torch")
    e = step_speed.check_equivalence(8, "float64", heads=3, batch_size=3, length=4, vocab=6)
    assert e.ok and e.heads == 3 and "value" in e.grad_err, e
    t = step_speed.time_step(4, "float32", heads=2, reps=2, warmup=0, batch_size=2, length=3, vocab=5)
    assert t.heads == 2 and t.ratio.n == 2 and t.jax is None


# --------------------------------------------------------------------------------------------------
# The JAX twin
# --------------------------------------------------------------------------------------------------

def _need_jax():
    if not jax_seq2seq.jax_available():
        pytest.skip(f"JAX not available: {jax_seq2seq.jax_unavailable_reason()}")


@pytest.mark.parametrize("heads, dtype", [(1, "float64"), (2, "float32")])
def test_jax_twin_equivalence_tiny(heads, dtype):
    _need_jax()
    e = step_speed.check_equivalence(8, dtype, framework="jax", heads=heads, batch_size=3, length=4, vocab=6)
    assert e.ok and e.framework == "jax", e
    assert e.loss_numpy == pytest.approx(e.loss_torch, rel=1e-12 if dtype == "float64" else 1e-5)


@pytest.mark.parametrize("cfg", [dict(heads=1, value_projection=True, shared_embeddings=False),
                                 dict(heads=1, uniform=True), dict(heads=2, value_projection=False),
                                 dict(heads=3, uniform=True, shared_embeddings=False)])
def test_jax_twin_matches_numpy_on_a_padded_batch(cfg):
    _need_jax()
    from miniattn.optim import Adam
    rng = np.random.default_rng(1)
    B, S, T, V = 3, 5, 4, 6
    source_mask = rng.random((B, S)) < 0.6
    source_mask[:, 0] = True
    target_mask = rng.random((B, T)) < 0.7
    target_mask[0, 0] = True
    batch = Seq2SeqBatch(rng.integers(0, V, (B, S)), source_mask, rng.integers(0, V, (B, T)),
                         np.where(target_mask, rng.integers(0, V, (B, T)), 0), target_mask)
    model = Seq2SeqAttention(V, V, S, T, dim=4, rng=np.random.default_rng(2), **cfg)
    twin = jax_seq2seq.JaxSeq2Seq.from_numpy(model)
    jb = twin.batch(batch)
    loss_np, grads_np = model.loss_and_grads(batch)
    loss_j, grads_j = twin.loss_and_grads(jb)
    assert loss_j == pytest.approx(loss_np, rel=1e-12)
    for k in grads_np:
        np.testing.assert_allclose(grads_j[k], grads_np[k], rtol=1e-10, atol=1e-12, err_msg=k)
    Adam(model.params).step(grads_np)
    twin.step(jb)
    for k, v in twin.numpy_params().items():
        np.testing.assert_allclose(v, model.params[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_jax_time_step_and_thread_configuration():
    _need_jax()
    t = step_speed.time_step(4, "float32", heads=2, reps=2, warmup=0, with_torch=False, with_jax=True,
                             batch_size=2, length=3, vocab=5)
    assert t.jax.n == 2 and t.ratio_jax.median > 0 and t.torch is None
    assert "not installed" in step_speed.format_table({"timings": [t], "equivalence": []})
    assert jax_seq2seq.configure_threads(1) is False      # JAX is imported: XLA's flags are fixed
    with pytest.raises(ValueError, match="threads"):
        jax_seq2seq.configure_threads(0)
    with pytest.raises(ValueError, match="score"):
        jax_seq2seq.JaxSeq2Seq({"embed": np.zeros((3, 2)), "src_pos": np.zeros((2, 2)), "tgt_pos": np.zeros((2, 2)),
                                "score": np.zeros((2, 3)), "out_W": np.zeros((4, 3)), "out_b": np.zeros(3)})


def test_step_speed_says_when_jax_is_missing(monkeypatch, capsys):
    monkeypatch.setattr(jax_seq2seq, "_STATE", {"module": None, "tried": True, "error": "ImportError: no jax",
                                                "threads": None})
    assert not jax_seq2seq.jax_available()
    with pytest.raises(ImportError, match="JAX"):
        step_speed.check_equivalence(4, framework="jax", batch_size=2, length=3, vocab=5)
    res = step_speed.run([4], ["float64"], heads=[1, 2], reps=1, warmup=0, with_torch=False, with_jax=True,
                         batch_size=2, length=3, vocab=5)
    assert not res["jax"] and res["jax_missing"] == "ImportError: no jax"
    assert "JAX is not available (ImportError: no jax)" in capsys.readouterr().out
    assert "ImportError: no jax" in step_speed.format_table(res)
    assert [t.heads for t in res["timings"]] == [1, 2]


# --------------------------------------------------------------------------------------------------
# Prediction cost and the entry point
# --------------------------------------------------------------------------------------------------

def test_prediction_cost_tiny():
    pytest.importorskip("analysis.reduced")
    r = prediction_cost.measure(3, 4, lr=5.0, steps=6, batch_size=4, eval_every=3, eval_size=8, reps=1,
                                prediction_reps=2)
    assert r.prediction.n == 2 and r.train.n == 1 and r.curve.n == 1
    assert r.ratio_train == pytest.approx(r.prediction.median / r.train.median)
    assert 0 <= r.max_abs_prob_diff <= 1
    assert "L=3, V=4" in prediction_cost.format_table({"available": True, "result": r})
    with pytest.raises(ValueError, match="steps"):
        prediction_cost.measure(3, 4, steps=0)


def test_prediction_cost_seq2seq_tiny():
    pytest.importorskip("analysis.reduced_seq2seq")
    # lr 2 keeps this tiny model in the gradient-flow regime, so both curves reach p = 0.5 in the window.
    r = prediction_cost.measure(6, 9, model="seq2seq", dim=8, lr=2.0, steps=60, batch_size=16, eval_every=10,
                                eval_size=32, reps=1, prediction_reps=2)
    c = r.config
    assert (c["model"], c["dim"], c["length"], c["vocab"], c["init_scale"]) == ("seq2seq", 8, 6, 9, None)
    assert r.prediction.n == 2 and r.train.n == 1 and r.curve.n == 1
    for s in (r.prediction, r.train, r.curve):
        assert np.isfinite(s.median) and s.median > 0
    assert r.ratio_train == pytest.approx(r.prediction.median / r.train.median)
    assert r.ratio_curve == pytest.approx(r.prediction.median / r.curve.median)
    # times to learn: finite, positive, and the ratio is predicted / simulated
    assert 0 < r.crossing_sim < np.inf and 0 < r.tau_predicted < np.inf and 0 < r.tau_event < np.inf
    assert r.tau_predicted == r.crossing_ode       # the ODE crosses inside the simulated window here
    assert r.tau_ratio == pytest.approx(r.tau_predicted / r.crossing_sim)
    assert 0 <= r.max_abs_prob_diff <= 1
    table = prediction_cost.format_table({"available": True, "results": [r]})
    row = [line for line in table.splitlines() if "seq2seq d=8, L=6, V=9" in line]
    assert len(row) == 1 and row[0].count("|") == table.splitlines()[0].count("|")
    assert f"{r.crossing_sim:.0f} / {r.tau_predicted:.0f} | {r.tau_ratio:.3f} |" in row[0]
    with pytest.raises(ValueError, match="dim"):
        prediction_cost.measure(3, 4, model="free", dim=8)
    with pytest.raises(ValueError, match="model"):
        prediction_cost.measure(3, 4, model="factorised")


def test_prediction_cost_run_quick_has_both_rows(capsys):
    pytest.importorskip("analysis.reduced_seq2seq")
    res = prediction_cost.run(quick=True)
    assert res["available"] and [r.config["model"] for r in res["results"]] == ["free", "seq2seq"]
    table = prediction_cost.format_table(res)
    assert len(table.splitlines()) == 4
    assert "| free model, L=8, V=12" in table and "| seq2seq d=8, L=6, V=9" in table
    out = capsys.readouterr().out
    assert "free: prediction" in out and "seq2seq: prediction" in out and "predicted / simulated" in out
    assert prediction_cost.run(settings=[], verbose=False)["results"] == []
    with pytest.raises(ValueError, match="settings"):
        prediction_cost.run(settings=["nope"])


def test_run_all_quick_writes_tables_and_json(tmp_path, restore_threads, capsys):
    md, js = tmp_path / "bench.md", tmp_path / "bench.json"
    # JAX is left out here (its compilations would dominate); the JAX tests above cover its code paths.
    args = ["--quick", "--threads", "1", "--no-jax", "--markdown", str(md), "--json", str(js)]
    if not torch_available():
        args.append("--no-torch")
    assert run_all.main(args) == 0
    text = md.read_text()
    for heading in ("## Machine", "## Training step", "## Roofline", "## Scaling", "## Cost of the analytic prediction"):
        assert heading in text
    raw = json.loads(js.read_text())
    assert raw["machine"]["threads"]["numpy_blas"] in (1, None)
    assert len(raw["speed"]["timings"]) == 8          # 2 head counts x 2 dtypes x 2 widths
    assert {t["heads"] for t in raw["speed"]["timings"]} == {1, 2}
    assert all(e["ok"] for e in raw["speed"]["equivalence"])
    assert len(raw["roofline"]["cells"]) == 8 and all(c["numpy"]["fraction"] > 0 for c in raw["roofline"]["cells"])
    assert raw["roofline"]["profile"]["gemm"]["total"] > 0
    assert "all 14 GEMMs" in text
    # The same-algorithm table needs a framework to time (PyTorch or JAX are optional extras).
    assert ("Against the same algorithm" in text) == bool(raw["speed"]["torch"] or raw["speed"]["jax"])
    assert {s["axis"] for s in raw["scaling"]["scans"]} == {"B", "L", "d", "L (attention)"}
    assert "QUICK" in capsys.readouterr().out
