"""Smoke tests of :mod:`benchmarks.recurrent_speed` (the recurrent step against PyTorch).

Only tiny sizes: these check that the benchmark runs and that its PyTorch twins compute what the
NumPy code computes, not how fast either is.
"""

from __future__ import annotations


import pytest
from checks import assert_twin_step_leaves_model_alone

import benchmarks
from benchmarks import recurrent_speed, set_threads, thread_report


@pytest.fixture
def restore_threads():
    """Put NumPy's BLAS and PyTorch back to their thread counts after a test that changes them."""
    before = thread_report()
    yield
    benchmarks._LIMITER.clear()
    if before["numpy_blas"] is not None:
        set_threads(before["numpy_blas"])
    if before["torch"] is not None:
        import torch
        torch.set_num_threads(before["torch"])


def test_quick_run_prints_the_table(restore_threads, capsys):
    assert recurrent_speed.main(["--quick", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "QUICK" in out and "| bench | dtype | d |" in out
    for name in ("BiLSTM fwd+bwd", "Adam step (model)"):
        for dtype in ("float32", "float64"):
            assert f"| {name} | {dtype} | 8 |" in out
    if recurrent_speed.torch_available():
        assert "FAILED" not in out and "NumPy/PyTorch" in out and "| check |" in out
    else:
        assert "PyTorch is not installed" in out


def test_quick_run_without_torch_prints_numpy_times_alone(restore_threads, capsys):
    assert recurrent_speed.main(["--quick", "--markdown", "--no-torch", "--reps", "1"]) == 0
    out = capsys.readouterr().out
    assert "NumPy times only" in out and "not installed" in out and "| check |" not in out


def test_timings_numpy_alone_and_validation():
    t = recurrent_speed.time_model(4, "float32", reps=2, warmup=0, batch_size=2, length=3, vocab=5,
                                   with_torch=False)
    assert t.torch is None and t.ratio is None and t.numpy.n == 2 and t.numpy.median > 0
    with pytest.raises(ValueError, match="even"):
        recurrent_speed.make_layer_setup(3, with_torch=False)
    with pytest.raises(ValueError, match="dtype"):
        recurrent_speed.make_model_setup(4, "float16", with_torch=False)
    with pytest.raises(ValueError, match="threads"):
        recurrent_speed.limit_threads(0)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_equivalence_tiny(dtype):
    pytest.importorskip("torch")
    size = dict(batch_size=3, length=4)
    layer = recurrent_speed.check_layer_equivalence(6, dtype, **size)
    model = recurrent_speed.check_model_equivalence(6, dtype, vocab=6, **size)
    assert layer.ok, layer
    assert model.ok, model
    assert set(layer.grad_err) == {"x", "fwd_W_x", "fwd_W_h", "fwd_b", "rev_W_x", "rev_W_h", "rev_b"}
    s = recurrent_speed.make_model_setup(6, dtype, vocab=6, **size)
    assert set(model.grad_err) == set(model.param_err) == set(s.model.params)
    if dtype == "float64":   # to rounding
        assert max(layer.grad_err.values()) < 1e-12 and max(model.grad_err.values()) < 1e-12
        assert max(model.param_err.values()) < 1e-12


def test_twin_steps_leave_the_numpy_model_alone_and_freeze_bias_hh():
    pytest.importorskip("torch")
    s = recurrent_speed.make_model_setup(4, batch_size=2, length=3, vocab=5)
    assert_twin_step_leaves_model_alone(s)
    assert not s.twin.enc.bias_hh_l0.requires_grad and float(s.twin.dec.bias_hh_l0.abs().max()) == 0.0
    assert len(s.twin.parameters()) == len(s.model.params)


def test_threads_without_threadpoolctl_use_the_openblas_c_api(monkeypatch, restore_threads):
    """CI installs only the project's files (no threadpoolctl): the C-API fallback must still work."""
    monkeypatch.setattr(benchmarks, "_tpc", None)
    assert benchmarks.thread_method().startswith("OpenBLAS C API")
    if benchmarks._LIB is None:
        pytest.skip("NumPy's OpenBLAS not found")
    assert set_threads(1)["numpy_blas"] == 1
