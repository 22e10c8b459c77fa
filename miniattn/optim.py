"""Hand-written optimisers over a dict of parameter arrays, updated in place.

Both keep their state as plain arrays so that it can be saved in a checkpoint (``state_dict``) and
restored (``load_state_dict``) to resume bit-identically.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

__all__ = ["SGD", "Adam", "make_optimizer"]


def _check_grads(params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> None:
    missing = set(params) - set(grads)
    extra = set(grads) - set(params)
    if missing or extra:
        raise ValueError(f"grads must have exactly the keys of params; missing {sorted(missing)}, "
                         f"unexpected {sorted(extra)}")
    for k, g in grads.items():
        if np.shape(g) != params[k].shape:
            raise ValueError(f"grads[{k!r}] has shape {np.shape(g)}, params[{k!r}] has {params[k].shape}")
        if not np.all(np.isfinite(g)):
            raise ValueError(f"grads[{k!r}] contains NaN or inf")


def _restore(target: np.ndarray, state: Mapping[str, np.ndarray], key: str) -> None:
    """Copy ``state[key]`` into ``target`` in place, with a clear error for a missing or misshapen entry."""
    if key not in state:
        raise ValueError(f"state is missing the entry {key!r} (was it saved by this optimiser?)")
    value = np.asarray(state[key])
    if value.shape != target.shape:
        raise ValueError(f"state[{key!r}] has shape {value.shape}, expected {target.shape}")
    target[...] = value


def _positive(name: str, value: float, allow_zero: bool = False) -> float:
    value = float(value)
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value}")
    return value


class SGD:
    """Stochastic gradient descent, optionally with (heavy-ball) momentum.

    ``v ← μ v + g``;  ``θ ← θ − lr · v``   (plain SGD when ``μ = 0``: ``θ ← θ − lr · g``).

    Parameters
    ----------
    params : dict of name -> float array
        Updated in place by :meth:`step`.
    lr : float
    momentum : float in [0, 1)
    """

    def __init__(self, params: dict[str, np.ndarray], lr: float = 1e-2, momentum: float = 0.0):
        self.params = params
        self.lr = _positive("lr", lr)
        self.momentum = _positive("momentum", momentum, allow_zero=True)
        if self.momentum >= 1:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        self.t = 0
        self.velocity = {k: np.zeros_like(v) for k, v in params.items()} if self.momentum else {}

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        _check_grads(self.params, grads)
        self.t += 1
        for k, p in self.params.items():
            g = grads[k]
            if self.momentum:
                v = self.velocity[k]
                v *= self.momentum
                v += g
                g = v
            p -= self.lr * g

    def state_dict(self) -> dict[str, np.ndarray]:
        # Copies: a state kept in memory (the last finite checkpoint) must not follow later steps.
        state = {"t": np.array(self.t)}
        state.update({f"velocity/{k}": v.copy() for k, v in self.velocity.items()})
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        if "t" not in state:
            raise ValueError("state is missing the step counter 't'")
        for k in self.velocity:
            _restore(self.velocity[k], state, f"velocity/{k}")
        self.t = int(state["t"])


class Adam:
    """Adam with bias correction (Kingma & Ba, 2015), the update PyTorch's ``torch.optim.Adam`` uses.

    ``m ← β1 m + (1 − β1) g``;  ``v ← β2 v + (1 − β2) g²``;
    ``m̂ = m / (1 − β1ᵗ)``;  ``v̂ = v / (1 − β2ᵗ)``;  ``θ ← θ − lr · m̂ / (√v̂ + ε)``.

    Parameters
    ----------
    params : dict of name -> float array
        Updated in place by :meth:`step`.
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    """

    def __init__(self, params: dict[str, np.ndarray], lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = params
        self.lr = _positive("lr", lr)
        b1, b2 = (float(b) for b in betas)
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must lie in [0, 1), got {tuple(betas)}")
        self.betas = (b1, b2)
        self.eps = _positive("eps", eps)
        self.t = 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        _check_grads(self.params, grads)
        self.t += 1
        b1, b2 = self.betas
        correction1 = 1.0 - b1 ** self.t
        correction2 = 1.0 - b2 ** self.t
        for k, p in self.params.items():
            g = grads[k]
            m, v = self.m[k], self.v[k]
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * (g * g)
            p -= self.lr * (m / correction1) / (np.sqrt(v / correction2) + self.eps)

    def state_dict(self) -> dict[str, np.ndarray]:
        # Copies: a state kept in memory (the last finite checkpoint) must not follow later steps.
        state = {"t": np.array(self.t)}
        state.update({f"m/{k}": a.copy() for k, a in self.m.items()})
        state.update({f"v/{k}": a.copy() for k, a in self.v.items()})
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        if "t" not in state:
            raise ValueError("state is missing the step counter 't'")
        for k in self.m:
            _restore(self.m[k], state, f"m/{k}")
            _restore(self.v[k], state, f"v/{k}")
        self.t = int(state["t"])


def make_optimizer(name: str, params: dict[str, np.ndarray], **kwargs):
    """Build an optimiser by name: ``"sgd"`` or ``"adam"``."""
    table = {"sgd": SGD, "adam": Adam}
    if name.lower() not in table:
        raise ValueError(f"optimizer must be one of {sorted(table)}, got {name!r}")
    return table[name.lower()](params, **kwargs)
