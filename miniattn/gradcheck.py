"""Gradient checking by central differences, usable on any forward/backward pair.

Two checks, both against a *random* upstream gradient ``c`` (never all ones: a softmax row sums to
one, so with an all-ones upstream the true vector-Jacobian product of a softmax is zero and any
backward pass that returns zeros would pass):

* :func:`check_vjp` — element by element, the analytic ``Jᵀ c`` against the central difference
  ``(⟨c, f(x + h e_i)⟩ − ⟨c, f(x − h e_i)⟩) / 2h`` for every input element ``i``.
* :func:`check_directional` — for larger shapes, ``⟨J v, c⟩`` by one central difference along a
  random direction ``v`` (over all inputs at once) against ``⟨v, Jᵀ c⟩``.

The function under test is ``func(**inputs) -> array or float``; its vector-Jacobian product is
``vjp(upstream, **inputs) -> {name: gradient}``. All arithmetic is float64.

Example
-------
>>> rng = np.random.default_rng(0)
>>> func = lambda x: np.tanh(x)
>>> vjp = lambda upstream, x: {"x": upstream * (1 - np.tanh(x) ** 2)}
>>> report = check_vjp(func, vjp, {"x": rng.normal(size=(3, 4))}, rng=rng)
>>> report.passed
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

__all__ = ["GradcheckReport", "check_vjp", "check_directional", "numerical_vjp", "relative_error",
           "check_model"]

DEFAULT_H = 1e-5
DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-8


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """Norm-wise relative error ``‖a − n‖ / max(‖a‖, ‖n‖)`` (0 when both are exactly zero)."""
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numeric, dtype=np.float64)
    scale = max(np.linalg.norm(a), np.linalg.norm(n))
    return 0.0 if scale == 0.0 else float(np.linalg.norm(a - n) / scale)


@dataclass
class GradcheckReport:
    """Outcome of a gradient check: one entry per checked input, and whether all passed."""

    errors: dict[str, float] = field(default_factory=dict)       #: norm-wise relative error
    max_abs_diff: dict[str, float] = field(default_factory=dict)  #: max |analytic − numeric|
    passed_each: dict[str, bool] = field(default_factory=dict)
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL

    @property
    def passed(self) -> bool:
        return all(self.passed_each.values())

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    def __str__(self) -> str:
        width = max((len(k) for k in self.errors), default=4)
        lines = [f"{'input':<{width}}  {'rel. error':>10}  {'max |diff|':>10}  ok"]
        for name in self.errors:
            lines.append(f"{name:<{width}}  {self.errors[name]:10.2e}  {self.max_abs_diff[name]:10.2e}  "
                         f"{'yes' if self.passed_each[name] else 'NO'}")
        lines.append(f"{'passed' if self.passed else 'FAILED'} (rtol={self.rtol:g}, atol={self.atol:g})")
        return "\n".join(lines)


def _as_float64_inputs(inputs: Mapping[str, object]) -> dict[str, object]:
    """Copy float inputs to float64 (the check is meaningless in float32); leave the rest alone."""
    out = {}
    for name, value in inputs.items():
        arr = np.asarray(value)
        out[name] = arr.astype(np.float64, copy=True) if arr.dtype.kind == "f" else value
    return out


def _pairing(func: Callable, inputs: dict, upstream: np.ndarray) -> float:
    """⟨upstream, func(**inputs)⟩ in float64."""
    return float(np.sum(np.asarray(func(**inputs), dtype=np.float64) * upstream))


def _resolve(func, inputs, rng, upstream, wrt):
    inputs = _as_float64_inputs(inputs)
    if "upstream" in inputs:
        raise ValueError("inputs must not contain the name 'upstream' (it is the vjp's first argument)")
    out = np.asarray(func(**inputs), dtype=np.float64)
    if upstream is None:
        if rng is None:
            raise ValueError("give rng (a numpy.random.Generator) or an explicit upstream gradient")
        upstream = rng.standard_normal(out.shape)
    upstream = np.asarray(upstream, dtype=np.float64)
    if upstream.shape != out.shape:
        raise ValueError(f"upstream must have the output's shape {out.shape}, got {upstream.shape}")
    if wrt is None:
        wrt = [k for k, v in inputs.items() if isinstance(v, np.ndarray) and v.dtype.kind == "f"]
    missing = [k for k in wrt if k not in inputs]
    if missing:
        raise ValueError(f"wrt names inputs that do not exist: {missing}")
    return inputs, upstream, list(wrt)


def numerical_vjp(func: Callable, inputs: Mapping[str, object], upstream, wrt=None,
                  h: float = DEFAULT_H) -> dict[str, np.ndarray]:
    """Central-difference estimate of ``Jᵀ upstream`` for each input named in ``wrt``.

    Parameters
    ----------
    func : callable
        ``func(**inputs)`` returns an array (or scalar) of the same shape as ``upstream``.
    inputs : mapping of name -> array
    upstream : array
    wrt : list of str, optional
        Inputs to differentiate (default: every floating-point array).
    h : float
        Step size; ``≈ 1e-5`` balances truncation (∝ h²) and round-off (∝ eps/h) in float64.

    Returns
    -------
    dict of name -> array with each input's shape.
    """
    inputs, upstream, wrt = _resolve(func, inputs, None, upstream, wrt)
    grads = {}
    for name in wrt:
        x = inputs[name]
        g = np.zeros_like(x)
        flat_x, flat_g = x.reshape(-1), g.reshape(-1)
        # A loop over input *elements* is the definition of the check, not a forward pass.
        for i in range(flat_x.size):
            orig = flat_x[i]
            flat_x[i] = orig + h
            plus = _pairing(func, inputs, upstream)
            flat_x[i] = orig - h
            minus = _pairing(func, inputs, upstream)
            flat_x[i] = orig
            flat_g[i] = (plus - minus) / (2 * h)
        grads[name] = g
    return grads


def check_vjp(func: Callable, vjp: Callable, inputs: Mapping[str, object], *, rng=None, upstream=None,
              wrt=None, h: float = DEFAULT_H, rtol: float = DEFAULT_RTOL,
              atol: float = DEFAULT_ATOL) -> GradcheckReport:
    """Compare an analytic vector-Jacobian product with central differences, element by element.

    Parameters
    ----------
    func : callable
        ``func(**inputs) -> array``: the forward pass.
    vjp : callable
        ``vjp(upstream, **inputs) -> {name: gradient}``: the backward pass, gradients keyed like
        ``inputs`` (names it does not return are treated as having zero gradient).
    inputs : mapping of name -> array
        Float arrays are converted to float64 copies; other values are passed through unchanged.
    rng : numpy.random.Generator, optional
        Draws the random upstream gradient when ``upstream`` is not given.
    upstream : array, optional
    wrt : list of str, optional
    h, rtol, atol : float
        A gradient passes when ``|analytic − numeric| ≤ atol + rtol·|numeric|`` everywhere.

    Returns
    -------
    GradcheckReport
    """
    inputs, upstream, wrt = _resolve(func, inputs, rng, upstream, wrt)
    analytic = vjp(upstream, **inputs)
    numeric = numerical_vjp(func, inputs, upstream, wrt=wrt, h=h)
    report = GradcheckReport(rtol=rtol, atol=atol)
    for name in wrt:
        a = analytic.get(name)
        a = np.zeros_like(inputs[name]) if a is None else np.asarray(a, dtype=np.float64)
        n = numeric[name]
        if a.shape != n.shape:
            raise ValueError(f"vjp returned shape {a.shape} for {name!r}, the input has shape {n.shape}")
        report.errors[name] = relative_error(a, n)
        report.max_abs_diff[name] = float(np.max(np.abs(a - n), initial=0.0))
        report.passed_each[name] = bool(np.allclose(a, n, rtol=rtol, atol=atol))
    return report


def check_directional(func: Callable, vjp: Callable, inputs: Mapping[str, object], *, rng,
                      n_directions: int = 3, upstream=None, wrt=None, h: float = DEFAULT_H,
                      rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL) -> GradcheckReport:
    """Random-direction check ``⟨J v, c⟩ ≈ ⟨v, Jᵀ c⟩``: two evaluations per direction, any size.

    ``J v`` is the central difference of ``⟨c, func⟩`` along a random direction ``v`` that perturbs
    every input in ``wrt`` at once. ``v`` is normalised to unit norm over all inputs together, so
    that ``h`` is the actual step length whatever the number of elements (a unit-variance direction
    over N elements would step ``h·√N`` and the O(step²) truncation error would grow with N). The
    report has one entry per direction.
    """
    inputs, upstream, wrt = _resolve(func, inputs, rng, upstream, wrt)
    analytic = vjp(upstream, **inputs)
    report = GradcheckReport(rtol=rtol, atol=atol)
    for j in range(n_directions):
        directions = {k: rng.standard_normal(np.shape(inputs[k])) for k in wrt}
        norm = np.sqrt(sum(float(np.sum(d * d)) for d in directions.values()))
        directions = {k: d / norm for k, d in directions.items()} if norm > 0 else directions
        predicted = sum(float(np.sum(np.asarray(analytic[k], dtype=np.float64) * directions[k]))
                        for k in wrt if analytic.get(k) is not None)
        shifted = {**inputs}
        shifted.update({k: inputs[k] + h * directions[k] for k in wrt})
        plus = _pairing(func, shifted, upstream)
        shifted.update({k: inputs[k] - h * directions[k] for k in wrt})
        minus = _pairing(func, shifted, upstream)
        measured = (plus - minus) / (2 * h)
        name = f"direction {j}"
        report.errors[name] = relative_error(np.array(predicted), np.array(measured))
        report.max_abs_diff[name] = abs(predicted - measured)
        report.passed_each[name] = bool(np.isclose(predicted, measured, rtol=rtol, atol=atol))
    return report


def check_model(model, batch, *, rng=None, names=None, h: float = DEFAULT_H, rtol: float = DEFAULT_RTOL,
                atol: float = DEFAULT_ATOL, directional: bool = False, n_directions: int = 3) -> GradcheckReport:
    """Gradient-check a model's ``loss_and_grads(batch)`` against central differences of its loss.

    The model must expose ``params`` (dict name -> float64 array, modified in place by the check and
    restored afterwards) and ``loss_and_grads(batch) -> (loss, grads)`` with grads keyed like params.
    With ``directional=True`` a random-direction check replaces the element-wise one (large models).
    """
    names = list(model.params) if names is None else list(names)
    saved = {k: v.copy() for k, v in model.params.items()}

    def func(**values):
        for k in names:
            model.params[k][...] = values[k]
        return model.loss_and_grads(batch)[0]

    def vjp(upstream, **values):
        for k in names:
            model.params[k][...] = values[k]
        _, grads = model.loss_and_grads(batch)
        return {k: float(upstream) * grads[k] for k in names}

    inputs = {k: model.params[k].astype(np.float64) for k in names}
    try:
        if directional:
            if rng is None:
                raise ValueError("directional=True needs rng")
            return check_directional(func, vjp, inputs, rng=rng, n_directions=n_directions,
                                     upstream=np.float64(1.0), h=h, rtol=rtol, atol=atol)
        # The loss is a scalar, so the upstream gradient is a scalar: 1 is as good as any.
        return check_vjp(func, vjp, inputs, upstream=np.float64(1.0), h=h, rtol=rtol, atol=atol)
    finally:
        for k, v in saved.items():
            model.params[k][...] = v
