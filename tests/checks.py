"""Assertions shared by the property tests of the building blocks (layers, multi-head, recurrent)."""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_REL_ERROR", "assert_gradcheck", "assert_linear"]

#: Largest relative error a float64 gradient check may show (central differences, h ≈ 1e-5).
MAX_REL_ERROR = 1e-7


def assert_gradcheck(report):
    assert report.passed, str(report)
    assert report.max_error < MAX_REL_ERROR, str(report)


def assert_linear(grad_fn, u1, u2, a, b):
    """``grad_fn(a u1 + b u2) == a grad_fn(u1) + b grad_fn(u2)`` up to round-off, for every output."""
    combined = grad_fn(a * u1 + b * u2)
    g1, g2 = grad_fn(u1), grad_fn(u2)
    assert combined.keys() == g1.keys() == g2.keys()
    for name in combined:
        expected = a * g1[name] + b * g2[name]
        # Round-off scales with the size of the terms being added, not with their (possibly cancelling) sum.
        scale = abs(a) * np.max(np.abs(g1[name]), initial=0) + abs(b) * np.max(np.abs(g2[name]), initial=0)
        np.testing.assert_allclose(combined[name], expected, rtol=1e-9, atol=1e-12 * (scale + 1e-300),
                                   err_msg=name)


def assert_twin_step_leaves_model_alone(setup):
    """One optimiser step of a benchmark's PyTorch twin moves the twin's parameters, never the NumPy model's."""
    before = {k: v.copy() for k, v in setup.model.params.items()}
    setup.twin.step(setup.twin_batch, setup.twin_optimizer)
    for k in before:
        np.testing.assert_array_equal(setup.model.params[k], before[k])
    assert any(not np.array_equal(setup.twin.numpy_params()[k], before[k]) for k in before)
