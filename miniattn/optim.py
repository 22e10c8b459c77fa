"""Hand-written optimisers over a dict of parameter arrays, updated in place.

Both keep their state as plain arrays so that it can be saved in a checkpoint (``state_dict``) and
restored (``load_state_dict``) to resume bit-identically.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from miniattn._validate import NonFiniteError, real

__all__ = ["SGD", "Adam", "make_optimizer"]


def _check_params(params) -> dict[str, np.ndarray]:
    """Check the parameters an optimiser is built on.

    Parameters
    ----------
    params : dict of str -> numpy.ndarray
        Writable, finite floating-point arrays; they are updated in place.

    Returns
    -------
    dict of str -> numpy.ndarray
        ``params`` itself (not a copy: the model keeps references to these arrays).

    Raises
    ------
    TypeError
        If ``params`` is not a dict, a key is not a string, or a value is not a floating-point array.
    ValueError
        If a value has no elements, is read-only or holds NaN or inf, naming ``params[key]``.
    """
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of name -> float array, got {type(params).__name__}")
    for k, v in params.items():
        if not isinstance(k, str):
            raise TypeError(f"params keys must be strings (they name the optimiser state), got {k!r}")
        if not isinstance(v, np.ndarray):
            raise TypeError(f"params[{k!r}] must be a numpy array (it is updated in place), "
                            f"got {type(v).__name__}")
        if v.dtype.kind != "f":
            raise TypeError(f"params[{k!r}] must be a floating-point array, got dtype {v.dtype}")
        if v.size == 0:
            raise ValueError(f"params[{k!r}] has no elements (shape {v.shape}); a zero-size parameter "
                             "cannot be trained")
        if not v.flags.writeable:
            raise ValueError(f"params[{k!r}] is read-only; the optimiser updates parameters in place")
        # A NaN or inf parameter makes every later step NaN without any error: refuse it up front.
        if not np.all(np.isfinite(v)):
            raise ValueError(f"params[{k!r}] contains NaN or inf; expected finite values")
    return params


def _check_grads(params: Mapping[str, np.ndarray], grads) -> dict[str, np.ndarray]:
    """Check a whole set of gradients before a step touches any parameter or optimiser state.

    Every gradient is checked (type, dtype, shape, finiteness) before the first update, so a refused
    step leaves the parameters, the moments and the step counter exactly as they were.

    Parameters
    ----------
    params : mapping of str -> numpy.ndarray
        The optimiser's parameters; ``grads`` must have exactly their keys and shapes.
    grads : mapping of str -> array_like
        One real floating-point gradient per parameter.

    Returns
    -------
    dict of str -> numpy.ndarray
        ``np.asarray`` of each gradient (the very same object when it already is an ndarray, so a
        valid step computes exactly what it computed before these checks).

    Raises
    ------
    TypeError
        If ``grads`` is not a mapping, or a gradient is not a real floating-point array
        (strings, objects, bool, int or complex), naming ``grads[key]``.
    ValueError
        If the keys differ from those of ``params``, or a gradient has the wrong shape or holds NaN or inf.
    """
    return _check_grads_ranges(params, grads)[0]


def _check_grads_ranges(params: Mapping[str, np.ndarray], grads) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """:func:`_check_grads`, also returning a bound on ``max |g|`` of every gradient.

    The finiteness check is :func:`_bound` (one pass, NaN or inf exactly when ``g`` holds one), so
    the bounds the overflow guards of :meth:`SGD.step` and :meth:`Adam.step` need come out of the
    same pass over each gradient.

    Returns
    -------
    (dict of str -> numpy.ndarray, dict of str -> float)
        The checked gradients (as :func:`_check_grads`) and an upper bound on ``max |g|`` per key
        (a finite float).

    Raises
    ------
    TypeError, ValueError
        As :func:`_check_grads`.
    """
    if not isinstance(grads, Mapping):
        raise TypeError(f"grads must be a mapping of name -> float array, got {type(grads).__name__}")
    missing = set(params) - set(grads)
    extra = set(grads) - set(params)
    if missing or extra:
        # key=str: a non-string key in grads must not turn this message into a sort TypeError.
        raise ValueError(f"grads must have exactly the keys of params; missing {sorted(missing, key=str)}, "
                         f"unexpected {sorted(extra, key=str)}")
    checked, absmax = {}, {}
    for k in params:
        try:
            g = np.asarray(grads[k])
        except (TypeError, ValueError):              # e.g. a ragged list
            raise TypeError(f"grads[{k!r}] must be a real floating-point array, "
                            f"got {type(grads[k]).__name__}") from None
        # The dtype first: complex grads would otherwise pass isfinite and fail inside the update,
        # after m has been scaled; strings or objects would fail inside isfinite without a name.
        if g.dtype.kind != "f":
            raise TypeError(f"grads[{k!r}] must be a real floating-point array, got dtype {g.dtype}")
        if g.shape != params[k].shape:
            raise ValueError(f"grads[{k!r}] has shape {g.shape}, params[{k!r}] has {params[k].shape}")
        bound = _bound(g)
        if not np.isfinite(bound):
            raise ValueError(f"grads[{k!r}] contains NaN or inf")
        checked[k], absmax[k] = g, bound
    return checked, absmax


def _absmax(a: np.ndarray) -> float:
    """``max |a|`` as a Python float from two reductions (no temporary); NaN if ``a`` holds NaN, inf
    if it holds an inf (``np.min`` and ``np.max`` propagate NaN)."""
    if a.size == 0:
        return 0.0
    lo, hi = float(np.min(a)), float(np.max(a))
    if lo != lo or hi != hi:
        return float("nan")
    return max(hi, -lo)


def _bound(a: np.ndarray) -> float:
    """An upper bound on ``max |a|`` from one pass over ``a``; NaN or inf exactly if ``a`` holds NaN or inf.

    For a contiguous float32/float64 array it is ``√(a · a)`` (one BLAS dot product, with slack):
    every partial sum of non-negative squares is at least the largest square it holds, whatever the
    summation order, so ``a · a >= max a²`` up to rounding (and underflow, covered by ``2 √tiny``);
    a NaN or inf makes ``a · a`` NaN or inf. Otherwise (float16, a strided view, or ``a · a``
    overflowing) it is the exact :func:`_absmax` (two reductions).
    """
    if a.size and a.dtype.type in (np.float32, np.float64) and (a.flags.c_contiguous or a.flags.f_contiguous):
        flat = np.asarray(a).ravel(order="K")                      # a 1-D view: a is contiguous
        with np.errstate(over="ignore", invalid="ignore"):         # an inf is handled just below
            square = float(np.dot(flat, flat))
        if square != square:
            return square                                          # NaN: a holds a NaN
        if square != float("inf"):
            return math.sqrt(square) * 1.001 + 2.0 * math.sqrt(float(np.finfo(a.dtype).tiny))
    return _absmax(a)


def _spec(params: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """What an optimiser was built for: the shape and dtype of every parameter (its state has them)."""
    return {k: (v.shape, v.dtype) for k, v in params.items()}


def _check_unchanged(params, spec: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    """Check that the params dict still matches what the optimiser was built for.

    The dict is the model's, and may have been changed since construction; the state (velocity,
    moments) has the original keys, shapes and dtypes. Finiteness is checked by the step itself,
    from the ``max |p|`` its overflow guard computes anyway.

    Raises
    ------
    TypeError
        If a parameter is no longer a numpy array or has another dtype, naming ``params[key]``.
    ValueError
        If keys were added or removed, or a parameter has another shape or became read-only,
        naming ``params[key]``.
    """
    if not isinstance(params, Mapping) or params.keys() != spec.keys():
        keys = set(params) if isinstance(params, Mapping) else set()
        raise ValueError(f"params changed after the optimiser was built: added {sorted(keys - set(spec), key=str)}, "
                         f"removed {sorted(set(spec) - keys, key=str)}; build a new optimiser for new parameters")
    for k, (shape, dtype) in spec.items():
        v = params[k]
        if not isinstance(v, np.ndarray):
            raise TypeError(f"params[{k!r}] must be a numpy array (it is updated in place), got {type(v).__name__}")
        if v.dtype != dtype:
            raise TypeError(f"params[{k!r}] has dtype {v.dtype}, but the optimiser was built for dtype {dtype}")
        if v.shape != shape:
            raise ValueError(f"params[{k!r}] has shape {v.shape}, but the optimiser was built for shape {shape}")
        if not v.flags.writeable:
            raise ValueError(f"params[{k!r}] is read-only; the optimiser updates parameters in place")


def _param_absmax(k: str, p: np.ndarray) -> float:
    """A bound on ``max |p|`` (:func:`_bound`), refusing a NaN or inf parameter (put there after
    construction)."""
    bound = _bound(p)
    if not np.isfinite(bound):
        raise _refused(f"params[{k!r}] contains NaN or inf (changed after the optimiser was built?); "
                       "expected finite values", k, ~np.isfinite(p))
    return bound


def _refused(message: str, key: str, entries: np.ndarray) -> NonFiniteError:
    """A NonFiniteError for a refused step, carrying ``param`` (the key) and ``entries`` (a boolean
    array of the parameter's shape: the entries that are, or would become, NaN or inf), so a caller
    stepping several models stacked in one array (e.g. one per seed) can tell which ones failed."""
    error = NonFiniteError(message)
    error.param, error.entries = key, entries
    return error


def _headroom(*dtypes: np.dtype) -> float:
    """A quarter of the largest finite value of the narrowest dtype: while every operand and partial
    result of an update stays below it (with rounding slack), no sum of two of them can overflow."""
    return min(float(np.finfo(d).max) for d in dtypes) / 4.0


def _positive(name: str, value) -> float:
    """A finite real > 0. :func:`miniattn._validate.real` decides what is a number (TypeError
    otherwise, bool and str included); the ValueErrors keep the wording "NAME must be positive"."""
    try:
        value = real(name, value)
    except ValueError:
        raise ValueError(f"{name} must be positive and finite, got {value}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def _decay(name: str, value) -> float:
    """A finite real in [0, 1) (a momentum), checked like :func:`_positive`."""
    try:
        value = real(name, value)
    except ValueError:
        raise ValueError(f"{name} must lie in [0, 1), got {value}") from None
    if value < 0:
        raise ValueError(f"{name} must be non-negative (it must lie in [0, 1)), got {value}")
    if value >= 1:
        raise ValueError(f"{name} must lie in [0, 1), got {value}")
    return value


def _check_state(state, expected: Mapping[str, np.ndarray], nonnegative: tuple[str, ...] = ()) -> int:
    """Validate a whole optimiser state before any of it is loaded; return the step counter ``t``.

    ``expected`` maps every key but ``"t"`` to the array it will be copied into: each entry must have
    its shape and dtype and be finite; keys starting with a prefix in ``nonnegative`` (second
    moments, which are means of squares) must also be >= 0. Every error names the key.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping of name -> array, got {type(state).__name__}")
    if "t" not in state:
        raise ValueError("state is missing the step counter 't'")
    unexpected = sorted(set(state) - set(expected) - {"t"})
    if unexpected:
        raise ValueError(f"state has unexpected entries {unexpected} (was it saved by this optimiser?)")
    t = np.asarray(state["t"])
    if t.shape != () or t.dtype.kind not in "iu":
        raise TypeError(f"state['t'] must be an integer step counter, got {t.dtype} array of shape {t.shape}")
    if int(t) < 0:
        raise ValueError(f"state['t'] must be >= 0, got {int(t)}")
    for key, target in expected.items():
        if key not in state:
            raise ValueError(f"state is missing the entry {key!r} (was it saved by this optimiser?)")
        value = np.asarray(state[key])
        if value.dtype != target.dtype:
            raise TypeError(f"state[{key!r}] has dtype {value.dtype}, expected {target.dtype}")
        if value.shape != target.shape:
            raise ValueError(f"state[{key!r}] has shape {value.shape}, expected {target.shape}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"state[{key!r}] contains NaN or inf")
        if key.startswith(nonnegative) and np.any(value < 0):
            raise ValueError(f"state[{key!r}] has negative entries; a second moment is a mean of squares")
    return int(t)


class SGD:
    """Stochastic gradient descent, optionally with (heavy-ball) momentum.

    ``v ← μ v + g``;  ``θ ← θ − lr · v``   (plain SGD when ``μ = 0``: ``θ ← θ − lr · g``).

    Parameters
    ----------
    params : dict of name -> writable float array
        Updated in place by :meth:`step`.
    lr : float > 0
    momentum : float in [0, 1)
    """

    def __init__(self, params: dict[str, np.ndarray], lr: float = 1e-2, momentum: float = 0.0):
        self.params = _check_params(params)
        self._spec = _spec(params)
        self.lr = _positive("lr", lr)
        self.momentum = _decay("momentum", momentum)
        self.t = 0
        self.velocity = {k: np.zeros_like(v) for k, v in params.items()} if self.momentum else {}

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        """One update of every parameter in place.

        Every check, the overflow guard included, runs for all parameters before the first one is
        changed. The guard costs one pass (:func:`_bound`) over each parameter (and velocity); the
        gradient's bound comes from its finiteness check. While the bounds on ``|p|``, ``|lr · g|``
        (and ``|v|``) stay below a quarter of the dtype's maximum the update cannot overflow and runs
        in place, as always; otherwise the new values are computed into temporaries, checked and only
        then copied in (the same arithmetic, so the same bits).
        A refused step changes nothing (parameters, velocity, ``t``).

        Parameters
        ----------
        grads : mapping of str -> numpy.ndarray
            Exactly the keys and shapes of ``params``; real floating-point and finite.

        Raises
        ------
        TypeError
            If ``params`` was changed after construction so that a parameter is no longer a numpy
            array or has another dtype (naming ``params[key]``), or from :func:`_check_grads`.
        ValueError
            If keys were added to or removed from ``params``, or a parameter has another shape or
            became read-only (naming ``params[key]``), or from :func:`_check_grads`.
        miniattn._validate.NonFiniteError
            If a parameter holds NaN or inf, or the update of a finite parameter with a finite gradient
            would overflow it (or its velocity) to inf, naming ``params[key]``; its ``param`` and
            ``entries`` attributes give the key and a boolean mask of the offending entries.
        """
        _check_unchanged(self.params, self._spec)
        grads, gmax = _check_grads_ranges(self.params, grads)
        careful = {}
        for k, p in self.params.items():
            g = grads[k]
            bound = _headroom(p.dtype, g.dtype)
            size = _param_absmax(k, p)
            if self.momentum:
                velocity = self.momentum * _bound(self.velocity[k]) + gmax[k]   # >= max |μ v + g|
                safe = velocity <= bound and self.lr * velocity <= bound
            else:
                safe = self.lr * gmax[k] <= bound
            if not (safe and size <= bound):
                careful[k] = self._checked_update(k, p, g)
        self.t += 1
        for k, p in self.params.items():
            if k in careful:
                new_p, new_v = careful[k]
                p[...] = new_p
                if self.momentum:
                    self.velocity[k][...] = new_v
                continue
            g = grads[k]
            if self.momentum:
                v = self.velocity[k]
                v *= self.momentum
                v += g
                g = v
            p -= self.lr * g

    def _checked_update(self, k: str, p: np.ndarray, g: np.ndarray):
        """The new ``(p, v)`` of one parameter into temporaries (the arithmetic of the in-place step),
        or a NonFiniteError naming ``params[k]`` if either overflows."""
        new_v = None
        with np.errstate(all="ignore"):                           # checked just below
            if self.momentum:
                new_v = self.velocity[k] * self.momentum
                new_v += g
                g = new_v
            new_p = p.copy()
            new_p -= self.lr * g
        if new_v is not None and not np.all(np.isfinite(new_v)):
            raise _refused(f"SGD.step: the velocity of params[{k!r}] overflows to inf (finite parameter and "
                           "gradient); nothing was changed: lower the momentum or scale the loss down",
                           k, ~np.isfinite(new_v))
        if not np.all(np.isfinite(new_p)):
            raise _refused(f"SGD.step: the update overflows params[{k!r}] to inf (finite parameter and "
                           "gradient); nothing was changed: lower lr or scale the loss down", k, ~np.isfinite(new_p))
        return new_p, new_v

    def state_dict(self) -> dict[str, np.ndarray]:
        # Copies: a state kept in memory (the last finite checkpoint) must not follow later steps.
        state = {"t": np.array(self.t)}
        state.update({f"velocity/{k}": v.copy() for k, v in self.velocity.items()})
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore a :meth:`state_dict`; the whole state is checked first, so a bad one changes nothing."""
        targets = {f"velocity/{k}": v for k, v in self.velocity.items()}
        t = _check_state(state, targets)
        for key, target in targets.items():
            target[...] = state[key]
        self.t = t


def _moment_bound(dtype: np.dtype) -> float:
    """``L² = max/4`` of ``dtype``: Adam's fast path needs ``g² <= L²`` and ``v <= (1 − β2ᵗ) L²``."""
    return float(np.finfo(dtype).max) / 4.0


class Adam:
    """Adam with bias correction (Kingma & Ba, 2015), the update PyTorch's ``torch.optim.Adam`` uses.

    ``m ← β1 m + (1 − β1) g``;  ``v ← β2 v + (1 − β2) g²``;
    ``m̂ = m / (1 − β1ᵗ)``;  ``v̂ = v / (1 − β2ᵗ)``;  ``θ ← θ − lr · m̂ / (√v̂ + ε)``.

    Huge but finite gradients (``|g| > √max / 2`` of the parameter dtype, e.g. float32 gradients of
    1e20) do not overflow ``g²`` to inf — an inf second moment would make every later step
    ``m̂ / inf = 0`` and freeze the parameter for good. See :meth:`_large_step`.

    Parameters
    ----------
    params : dict of name -> writable float array
        Updated in place by :meth:`step`.
    lr : float > 0, default 1e-3
    betas : (float, float) in [0, 1), default (0.9, 0.999)
    eps : float > 0, default 1e-8
    """

    def __init__(self, params: dict[str, np.ndarray], lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = _check_params(params)
        self._spec = _spec(params)
        self.lr = _positive("lr", lr)
        if not isinstance(betas, (tuple, list, np.ndarray)):
            raise TypeError(f"betas must be a pair (beta1, beta2), got {type(betas).__name__} {betas!r}")
        if len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {len(betas)} values")
        b1, b2 = (real(f"betas[{i}]", b) for i, b in enumerate(betas))
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must lie in [0, 1), got {(b1, b2)}")
        self.betas = (b1, b2)
        self.eps = _positive("eps", eps)
        self.t = 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        # Per parameter: may v exceed (1 − β2ᵗ) L², so that the fast path's v / (1 − β2ᵗ) could
        # overflow? A function of (v, t) alone — recomputed by load_state_dict, not saved.
        self._large = {k: False for k in params}

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        """One Adam update of every parameter in place.

        Every check, the overflow guard included, runs for all parameters before ``t``, the moments
        or any parameter is changed. The guard costs one pass (:func:`_bound`) over each parameter and
        first moment; the gradient's bound comes from its finiteness check. While the bounds on
        ``|p|``, ``|m|`` and ``lr · |m̂| / ε`` (a bound on the step) stay below a quarter of the
        dtype's maximum, the update cannot overflow and runs in place, as always; otherwise (and on
        the :meth:`_large_step` path) the new values are computed into temporaries, checked and only
        then copied in (the same arithmetic, so the same bits). A refused step changes nothing
        (parameters, ``m``, ``v``, ``t``).

        Parameters
        ----------
        grads : mapping of str -> numpy.ndarray
            Exactly the keys and shapes of ``params``; real floating-point and finite.

        Raises
        ------
        TypeError
            From :func:`_check_grads`; for a gradient of a narrower float dtype than its parameter
            (float32 grads of a float64 parameter: its moments would hold float32-precision values,
            which :meth:`load_state_dict` refuses; a wider gradient is rounded into the parameter's
            dtype); or if ``params`` was changed after construction so that a parameter is no longer
            a numpy array or has another dtype (naming ``params[key]``).
        ValueError
            From :func:`_check_grads`; or if keys were added to or removed from ``params``, or a
            parameter has another shape or became read-only (naming ``params[key]``).
        miniattn._validate.NonFiniteError
            If a parameter holds NaN or inf, or the update of a finite parameter with a finite gradient
            would overflow it or its moments to inf (e.g. a huge ``lr``), naming ``params[key]``; its
            ``param`` and ``entries`` attributes give the key and a boolean mask of the offending entries.
        """
        _check_unchanged(self.params, self._spec)
        grads, gmax = _check_grads_ranges(self.params, grads)
        for k, g in grads.items():
            if g.dtype.itemsize < self.params[k].dtype.itemsize:
                raise TypeError(f"grads[{k!r}] has dtype {g.dtype}, narrower than params[{k!r}] "
                                f"({self.params[k].dtype}); compute the gradient in the parameter's precision")
        t = self.t + 1
        b1, b2 = self.betas
        correction1 = 1.0 - b1 ** t
        correction2 = 1.0 - b2 ** t
        careful = {}
        for k, p in self.params.items():
            size = _param_absmax(k, p)
            limit = np.sqrt(_moment_bound(p.dtype))                    # L
            # The path must be chosen on the exact max |g| (it decides the rounding); the bound is exact
            # enough to rule the large path out.
            large = self._large[k] or (gmax[k] > limit and _absmax(grads[k]) > limit)
            if not large:
                bound = _headroom(p.dtype)
                with np.errstate(all="ignore"):                      # eps rounded into the dtype (may be 0)
                    eps = float(np.asarray(self.eps, dtype=p.dtype))
                moment = b1 * _bound(self.m[k]) + (1.0 - b1) * gmax[k]          # >= max |m| after the step
                corrected = moment / correction1                                  # >= max |m̂|
                if (size <= bound and moment <= bound and corrected <= bound and self.lr * corrected <= bound
                        and 0.0 < eps <= bound and self.lr * corrected / eps <= bound):
                    continue                                          # fast path in place below
            careful[k] = self._checked_update(k, p, grads[k], large, correction1, correction2)
        self.t = t
        for k, p in self.params.items():
            m, v = self.m[k], self.v[k]
            if k in careful:
                new_p, new_m, new_v, self._large[k] = careful[k]
                p[...] = new_p
                m[...] = new_m
                v[...] = new_v
                continue
            g = grads[k]
            m *= b1
            m += (1.0 - b1) * g            # |m| <= max |g| seen: cannot overflow
            # Fast path. Invariant: g² <= L² at every step keeps v <= (1 − β2ᵗ) L², so neither g² nor
            # v / (1 − β2ᵗ) <= L² can overflow; the guard above keeps p and the step below max / 4.
            v *= b2
            v += (1.0 - b2) * (g * g)
            p -= self.lr * (m / correction1) / (np.sqrt(v / correction2) + self.eps)

    def _checked_update(self, k: str, p, g, large: bool, correction1: float, correction2: float):
        """The new ``(p, m, v, large)`` of one parameter into temporaries — the arithmetic of the
        in-place step (or of :meth:`_large_step`) — or a NonFiniteError naming ``params[k]``."""
        b1, b2 = self.betas
        with np.errstate(all="ignore"):                           # checked just below
            m = self.m[k] * b1
            m += (1.0 - b1) * g
            p, v = p.copy(), self.v[k].copy()
            if large:
                large = self._large_step(p, m, v, g, correction1, correction2)
            else:
                v *= b2
                v += (1.0 - b2) * (g * g)
                p -= self.lr * (m / correction1) / (np.sqrt(v / correction2) + self.eps)
        if not (np.all(np.isfinite(m)) and np.all(np.isfinite(v))):
            raise _refused(f"Adam.step: the moments of params[{k!r}] overflow to inf (gradient too large for "
                           f"dtype {p.dtype}); nothing was changed: scale the loss down",
                           k, ~(np.isfinite(m) & np.isfinite(v)))
        if not np.all(np.isfinite(p)):
            with np.errstate(all="ignore"):
                tiny = not np.asarray(self.eps, dtype=p.dtype) > 0
            hint = f"eps = {self.eps} rounds to 0 in {p.dtype}: raise eps" if tiny else "lower lr"
            raise _refused(f"Adam.step: the update overflows params[{k!r}] to inf or NaN (finite parameter "
                           f"and gradient); nothing was changed: {hint}", k, ~np.isfinite(p))
        return p, m, v, large

    def _large_step(self, p, m, v, g, correction1: float, correction2: float) -> bool:
        """The Adam step of one parameter when ``g²`` or ``v̂`` could overflow its dtype.

        ``r = √(β2 v + (1 − β2) g²)`` is formed as ``hypot(√β2 √v, √(1 − β2) g)`` in float64: hypot
        never squares its arguments (float64 parameters), and float64 holds every float32 square.
        The step is written ``(m/c1) √c2 / (r + ε √c2)`` (= ``m̂ / (√v̂ + ε)``), so ``v / c2`` is
        never formed either: this step is the exact Adam step.

        Where the new second moment ``r²`` exceeds ``L² = max/4`` of the dtype it cannot be stored,
        and both moments of that entry are rescaled by ``λ = L / r`` (``m ← λ m``, ``v ← λ² v = L²``),
        which keeps the ratio ``m / √v`` that Adam's step is made of. From then on the remembered past
        weighs λ times less against new gradients than in exact Adam, so later steps are not exact
        (in a test with a constant gradient of 1e20 in float32, or 1e200 in float64, they were within
        a factor 2.5 of exact Adam's ``lr``) but stay finite and move the parameter. The alternatives
        are worse: clipping ``v`` alone leaves ``m / √v`` huge (steps of ``lr · |g| / L``), and an inf
        ``v`` makes every later step ``m̂ / inf = 0``, freezing the parameter for good; an exact scaled
        form would need a per-parameter exponent in the saved state. Returns whether ``v`` is still
        above the fast path's bound.
        """
        b2 = self.betas[1]
        m64 = m.astype(np.float64)
        r = np.hypot(np.sqrt(b2 * v.astype(np.float64)), np.sqrt(1.0 - b2) * g.astype(np.float64))
        sqrt_c2 = np.sqrt(correction2)
        p -= self.lr * (m64 / correction1) * sqrt_c2 / (r + self.eps * sqrt_c2)
        limit = np.sqrt(_moment_bound(v.dtype))                                     # L
        scale = np.divide(limit, r, out=np.ones_like(r), where=r > limit)           # λ <= 1
        r *= scale
        m[...] = m64 * scale
        v[...] = r * r                                                               # <= L²
        return not bool(np.all(v <= correction2 * _moment_bound(v.dtype)))

    def state_dict(self) -> dict[str, np.ndarray]:
        # Copies: a state kept in memory (the last finite checkpoint) must not follow later steps.
        state = {"t": np.array(self.t)}
        state.update({f"m/{k}": a.copy() for k, a in self.m.items()})
        state.update({f"v/{k}": a.copy() for k, a in self.v.items()})
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore a :meth:`state_dict`; the whole state is checked first, so a bad one changes nothing."""
        targets = {f"m/{k}": a for k, a in self.m.items()}
        targets.update({f"v/{k}": a for k, a in self.v.items()})
        t = _check_state(state, targets, nonnegative=("v/",))
        for key, target in targets.items():
            target[...] = state[key]
        self.t = t
        correction2 = 1.0 - self.betas[1] ** t
        self._large = {k: not bool(np.all(a <= correction2 * _moment_bound(a.dtype))) for k, a in self.v.items()}


def make_optimizer(name: str, params: dict[str, np.ndarray], **kwargs):
    """Build an optimiser by name: ``"sgd"`` or ``"adam"``."""
    table = {"sgd": SGD, "adam": Adam}
    if not isinstance(name, str):
        raise TypeError(f"optimizer must be one of {sorted(table)}, got {type(name).__name__} {name!r}")
    if name.lower() not in table:
        raise ValueError(f"optimizer must be one of {sorted(table)}, got {name!r}")
    return table[name.lower()](params, **kwargs)
