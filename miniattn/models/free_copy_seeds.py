"""K independent free-parameter copy models stepped as one computation: a leading seed axis.

The sweeps (E5, E7) train hundreds of small :class:`~miniattn.models.free_copy.FreeAttentionCopyModel`
runs that differ only in their seed. :class:`FreeAttentionCopySeeds` holds K of them with every
parameter stacked on a leading axis — ``A`` (K, L, L), ``M`` (K, V, V) or ``Wo``, ``E`` (K, V, d),
``b`` (K, V) — and each seed reads its own batch, ``source`` (K, B, L) etc. For seed k the equations
are exactly those of the unbatched model (module docstring of :mod:`miniattn.models.free_copy`)::

    α_k      = softmax over unmasked s of A_k                            (K, B, T, S)
    z_{k,t}  = Σ_s α_{k,t,s} M_k[:, x_{k,s}] + b_k                       (K, B, T, V)
    loss_k   = −(1/N_k) Σ_{(b,t) counted in seed k} log softmax(z_{k,t})[y_{k,t}]     (K,)

``N_k`` is the number of counted targets of seed k: ``loss_k`` is seed k's own mean cross-entropy,
and ``grads[name][k] = ∂ loss_k / ∂ params[name][k]`` (the seeds do not interact; the gradient of
``Σ_k loss_k`` with respect to the stack). The factorised form ``M_k = Wₒ_k E_kᵀ`` and the
uniform-attention twin are supported as in the unbatched model.

Every product is the unbatched model's product with a leading K axis (NumPy loops the same (T, S),
(S, V) or (B·T, V) BLAS calls over K instead of over nothing), every reduction runs over the same
axis in the same order, and the scatter-add of the gathered columns is one CSR product over K·V
table rows whose rows collect their entries in the unbatched order. So in float64 the losses and
gradients of seed k are **bit-identical** to ``FreeAttentionCopyModel.loss_and_grads`` on seed k's
batch (tested with 1 and 2 BLAS threads), including a mix of masked and unmasked seeds (a seed with
no masked source takes the unbatched model's shared-softmax backward).

Training: :func:`train_seeds` draws each seed's batches from its own ``numpy.random.SeedSequence``
stream exactly as :func:`miniattn.train.train` does (child 0 of :func:`miniattn.train.seed_streams`),
and steps all K seeds with one optimiser on the stacked params: :class:`miniattn.optim.SGD` is
element-wise and so already per seed; :class:`SeedAdam` is :class:`miniattn.optim.Adam` with its
overflow guard decided per seed instead of per parameter array. With either, K seeds trained
together end with the same parameters, bit for bit, as K separate :func:`~miniattn.train.train` runs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from miniattn._validate import NonFiniteError, bool_array, int_array, integer
from miniattn.batch import Seq2SeqBatch
from miniattn.layers import embedding_backward, embedding_forward, log_softmax, masked_softmax
from miniattn.models.base import ForwardResult
from miniattn.models.free_copy import DEFAULT_INIT_SCALE, FreeAttentionCopyModel
from miniattn.optim import SGD, Adam, _check_grads, _moment_bound
from miniattn.train import TrainingDiverged, seed_streams

__all__ = ["FreeAttentionCopySeeds", "SeedAdam", "make_seed_optimizer", "stack_batches", "train_seeds"]


def stack_batches(batches: Sequence[Seq2SeqBatch]) -> Seq2SeqBatch:
    """Stack K batches of one shape into one batch with a leading seed axis.

    Parameters
    ----------
    batches : sequence of K >= 1 Seq2SeqBatch
        Every field of every batch with the same shape, e.g. ``source`` (B, L).

    Returns
    -------
    Seq2SeqBatch
        Each field stacked to (K, ...), e.g. ``source`` (K, B, L); ``alignment`` is None unless every
        batch has one.
    """
    if isinstance(batches, Seq2SeqBatch) or not isinstance(batches, Sequence) or len(batches) == 0:
        raise TypeError(f"batches must be a non-empty sequence of Seq2SeqBatch, got {type(batches).__name__}")
    for i, b in enumerate(batches):
        if not isinstance(b, Seq2SeqBatch):
            raise TypeError(f"batches[{i}] must be a miniattn.batch.Seq2SeqBatch, got {type(b).__name__}")
    fields = {}
    for name in Seq2SeqBatch._fields:
        values = [getattr(b, name) for b in batches]
        if name == "alignment" and any(v is None for v in values):
            fields[name] = None
            continue
        shapes = {np.shape(v) for v in values}
        if len(shapes) != 1:
            raise ValueError(f"batches must all have one shape of {name}, got {sorted(shapes)}")
        fields[name] = np.stack([np.asarray(v) for v in values])
    return Seq2SeqBatch(**fields)


class FreeAttentionCopySeeds:
    """K independent free-parameter copy models with parameters stacked on a leading seed axis.

    Equations in the module docstring; seed k is :class:`~miniattn.models.free_copy.FreeAttentionCopyModel`
    with the parameters ``params[name][k]``.

    Parameters
    ----------
    length : int
        L = T = S (≥ 1).
    vocab : int
        V = V_in = V_out (≥ 1).
    rngs : sequence of K >= 1 numpy.random.Generator (keyword-only, required)
        Seed k is initialised exactly as ``FreeAttentionCopyModel(length, vocab, ..., rng=rngs[k])``.
    factorised : bool
        ``M = Wₒ Eᵀ`` with ``Wₒ``, ``E`` of shape (V, d) per seed.
    dim : int, optional
        d of the factorised model (default V). Only with ``factorised``.
    uniform : bool
        Uniform-attention twin (no ``A``).
    init_scale : float, default :data:`~miniattn.models.free_copy.DEFAULT_INIT_SCALE`
        Standard deviation of the i.i.d. normal initialisation (the same for every seed here;
        :meth:`from_models` accepts seeds initialised at different scales).

    Attributes
    ----------
    seeds : int
        K.
    params : dict
        ``"A"`` (K, L, L) unless uniform; ``"M"`` (K, V, V) or ``"Wo"`` (K, V, d) and ``"E"`` (K, V, d);
        ``"b"`` (K, V).
    init_scales : tuple of K float
        The initialisation scale of each seed (metadata, given back by :meth:`to_models`).
    """

    def __init__(self, length: int, vocab: int, *, rngs: Sequence[np.random.Generator], factorised: bool = False,
                 dim: int | None = None, uniform: bool = False, init_scale: float = DEFAULT_INIT_SCALE):
        if isinstance(rngs, np.random.Generator) or not isinstance(rngs, Sequence) or len(rngs) == 0:
            raise TypeError(f"rngs must be a non-empty sequence of numpy.random.Generator (one per seed), "
                            f"got {type(rngs).__name__}")
        # Initialisation only (not a forward/backward pass): each seed draws from its own generator.
        models = [FreeAttentionCopyModel(length, vocab, factorised=factorised, dim=dim, uniform=uniform,
                                         init_scale=init_scale, rng=rng) for rng in rngs]
        self._adopt(models)

    @classmethod
    def from_models(cls, models: Sequence[FreeAttentionCopyModel]) -> "FreeAttentionCopySeeds":
        """Stack K unbatched models (copies of their parameters) into one seed-batched model.

        Parameters
        ----------
        models : sequence of K >= 1 FreeAttentionCopyModel
            Same ``length``, ``vocab``, ``factorised``, ``dim`` and ``uniform``, and parameters of one
            dtype; ``init_scale`` may differ.
        """
        obj = cls.__new__(cls)
        obj._adopt(models)
        return obj

    def _adopt(self, models) -> None:
        if isinstance(models, FreeAttentionCopyModel) or not isinstance(models, Sequence) or len(models) == 0:
            raise TypeError(f"models must be a non-empty sequence of FreeAttentionCopyModel, "
                            f"got {type(models).__name__}")
        for i, m in enumerate(models):
            if not isinstance(m, FreeAttentionCopyModel):
                raise TypeError(f"models[{i}] must be a FreeAttentionCopyModel, got {type(m).__name__}")
        first = models[0]
        keys = ("length", "vocab", "factorised", "dim", "uniform")
        for i, m in enumerate(models):
            for key in keys:
                if getattr(m, key) != getattr(first, key):
                    raise ValueError(f"models[{i}].{key} = {getattr(m, key)!r} differs from models[0].{key} = "
                                     f"{getattr(first, key)!r}; every seed must have the same architecture")
            if set(m.params) != set(first.params):
                raise ValueError(f"models[{i}].params has keys {sorted(m.params)}, models[0] has {sorted(first.params)}")
            for name, value in m.params.items():
                ref = first.params[name]
                if value.shape != ref.shape or value.dtype != ref.dtype:
                    raise ValueError(f"models[{i}].params[{name!r}] is {value.dtype} {value.shape}, "
                                     f"models[0] has {ref.dtype} {ref.shape}")
        self.seeds = len(models)
        self.length, self.vocab = first.length, first.vocab
        self.factorised, self.dim, self.uniform = first.factorised, first.dim, first.uniform
        self.init_scales = tuple(float(m.init_scale) for m in models)
        self.params = {name: np.stack([m.params[name] for m in models]) for name in first.params}

    def to_models(self) -> list[FreeAttentionCopyModel]:
        """The K seeds as unbatched models (parameters copied; ``init_scale`` of each seed kept)."""
        out = []
        for k in range(self.seeds):   # conversion, not a pass: one model object per seed
            model = FreeAttentionCopyModel(self.length, self.vocab, factorised=self.factorised, dim=self.dim,
                                           uniform=self.uniform, init_scale=0.0, rng=np.random.default_rng(0))
            model.init_scale = self.init_scales[k]
            model.params = {name: value[k].copy() for name, value in self.params.items()}
            out.append(model)
        return out

    def config(self) -> dict:
        """Constructor arguments that define the model (JSON-serialisable)."""
        return {"model": "FreeAttentionCopySeeds", "seeds": self.seeds, "length": self.length,
                "vocab": self.vocab, "factorised": self.factorised, "dim": self.dim, "uniform": self.uniform,
                "init_scales": list(self.init_scales)}

    # ------------------------------------------------------------------------------------------
    def _check_params(self) -> None:
        """The stacked params must keep their (K, ...) shapes (they may be replaced by assignment)."""
        K, L, V, d = self.seeds, self.length, self.vocab, self.dim
        shapes = {"A": (K, L, L), "M": (K, V, V), "Wo": (K, V, d), "E": (K, V, d), "b": (K, V)}
        for name, value in self.params.items():
            if np.shape(value) != shapes[name]:
                raise ValueError(f"params[{name!r}] must have shape {shapes[name]} (K={K} seeds), "
                                 f"got {np.shape(value)}")

    def _check_batch(self, batch):
        """Validate a (K, B, L) batch; return (source, source_mask, targets, target_mask, counts)."""
        if not isinstance(batch, Seq2SeqBatch):
            raise TypeError(f"batch must be a miniattn.batch.Seq2SeqBatch with a leading seed axis "
                            f"(see stack_batches), got {type(batch).__name__}")
        K, L, V = self.seeds, self.length, self.vocab
        source = int_array("batch.source", batch.source, ndim=3)
        if source.shape[0] != K or source.shape[2] != L:
            raise ValueError(f"batch.source must have shape (K={K}, B, L={L}), got {source.shape}")
        shape = source.shape
        source_mask = bool_array("batch.source_mask", batch.source_mask, shape)
        if not np.all(source_mask.any(axis=2)):
            seeds = np.flatnonzero(~source_mask.any(axis=2).all(axis=1)).tolist()
            raise ValueError(f"batch.source_mask has an example with every source position masked (seeds {seeds})")
        targets = int_array("batch.target_out", batch.target_out, ndim=3)
        if targets.shape != shape:
            raise ValueError(f"batch.target_out must have shape {shape}, got {targets.shape}")
        target_mask = bool_array("batch.target_mask", batch.target_mask, shape)
        counts = target_mask.sum(axis=(1, 2))                                            # (K,) N_k
        if not np.all(counts > 0):
            raise ValueError(f"batch.target_mask must count at least one target for every seed; "
                             f"seeds {np.flatnonzero(counts == 0).tolist()} count none")
        int_array("batch.source (where source_mask is True)", source[source_mask], upper=V)
        int_array("batch.target_out (where target_mask is True)", targets[target_mask], upper=V)
        return (np.where(source_mask, source, 0), source_mask, np.where(target_mask, targets, 0),
                target_mask, counts)

    def _forward(self, batch):
        self._check_params()
        source, source_mask, targets, target_mask, counts = self._check_batch(batch)
        K, B, L = source.shape
        V = self.vocab
        logits_a = np.zeros((K, L, L)) if self.uniform else self.params["A"]
        shared = source_mask.all(axis=(1, 2))                                            # (K,)
        if shared.all():
            # Every example of a seed attends with that seed's weights: K (T, S) softmaxes, broadcast.
            alpha = np.broadcast_to(masked_softmax(logits_a, None)[:, None], (K, B, L, L))
        else:
            alpha = masked_softmax(logits_a[:, None], source_mask[:, :, None, :])         # (K, B, T, S)
        # Seed k's rows of a table are rows k·V .. k·V + V − 1 of the stacked (K·V, ·) table.
        ids = source + (np.arange(K) * V)[:, None, None]
        if self.factorised:
            values, lookup = embedding_forward(ids, self.params["E"].reshape(K * V, self.dim))   # (K, B, S, d)
            context = alpha @ values                                                     # (K, B, T, d)
            logits = context @ self.params["Wo"].transpose(0, 2, 1)[:, None] + self.params["b"][:, None, None]
        else:
            # Column M_k[:, x] = row x of M_kᵀ.
            table = self.params["M"].transpose(0, 2, 1).reshape(K * V, V)
            values, lookup = embedding_forward(ids, table)                               # (K, B, S, V)
            context = None
            logits = alpha @ values + self.params["b"][:, None, None]                    # (K, B, T, V)
        return (targets, target_mask, counts, shared, alpha, values, lookup, context, log_softmax(logits))

    def loss_and_grads(self, batch: Seq2SeqBatch) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Per-seed mean cross-entropy and its gradients, all K seeds at once.

        Parameters
        ----------
        batch : Seq2SeqBatch
            ``source``, ``source_mask``, ``target_out``, ``target_mask`` of shape (K, B, L): seed k
            reads ``batch.X[k]``, exactly what its unbatched model would read (ids in [0, V) where
            masked True). ``target_in`` and ``alignment`` are not used.

        Returns
        -------
        losses : array (K,)
            ``losses[k]`` = seed k's mean cross-entropy over its N_k counted targets.
        grads : dict
            Keyed like ``params``; ``grads[name][k] = ∂ losses[k] / ∂ params[name][k]``.
        """
        targets, target_mask, counts, shared, alpha, values, lookup, context, log_probs = self._forward(batch)
        K, V = self.seeds, self.vocab
        gold = np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]        # (K, B, T)
        losses = -np.sum(gold, axis=(1, 2), where=target_mask) / counts
        # dz = (softmax(z) − onehot(y)) ⊙ counted / N_k
        dz = np.exp(log_probs)
        np.put_along_axis(dz, targets[..., None], np.take_along_axis(dz, targets[..., None], axis=-1) - 1.0, axis=-1)
        dz *= target_mask[..., None] / counts[:, None, None, None]                        # (K, B, T, V)
        grads = {"b": dz.sum(axis=(1, 2))}
        alpha_t = alpha.transpose(0, 1, 3, 2)
        if self.factorised:
            B, T = dz.shape[1:3]
            d = self.dim
            grads["Wo"] = dz.reshape(K, B * T, V).transpose(0, 2, 1) @ context.reshape(K, B * T, d)
            dcontext = dz @ self.params["Wo"][:, None]                                   # (K, B, T, d)
            dvalues = alpha_t @ dcontext                                                 # (K, B, S, d)
            dalpha = dcontext @ values.transpose(0, 1, 3, 2)                             # (K, B, T, S)
            grads["E"] = embedding_backward(dvalues, lookup).reshape(K, V, d)
        else:
            dvalues = alpha_t @ dz                                                       # (K, B, S, V)
            dalpha = dz @ values.transpose(0, 1, 3, 2)                                   # (K, B, T, S)
            grads["M"] = embedding_backward(dvalues, lookup).reshape(K, V, V).transpose(0, 2, 1)
        if not self.uniform:
            # Softmax backward dA = Σ_b α ⊙ (dα − Σ_s α ⊙ dα); masked sources have α = 0.
            def shared_backward(weights, dweights):
                # One (T, S) backward per seed after summing dα over the batch (linear in dα).
                return weights * (dweights - np.sum(weights * dweights, axis=-1, keepdims=True))

            if alpha.strides[1] == 0:
                grads["A"] = shared_backward(alpha[:, 0], dalpha.sum(axis=1))
            else:
                dscores = alpha * (dalpha - np.sum(alpha * dalpha, axis=-1, keepdims=True))
                grads["A"] = dscores.sum(axis=1)
                # A seed with nothing masked takes the unbatched model's shared path (same rounding).
                idx = np.flatnonzero(shared)
                if idx.size:
                    grads["A"][idx] = shared_backward(alpha[idx, 0], dalpha[idx].sum(axis=1))
        return losses, {k: grads[k] for k in self.params}

    def forward(self, batch: Seq2SeqBatch) -> ForwardResult:
        """``log_probs`` (K, B, T, V) of every output word and ``attention`` α (K, B, T, S)."""
        cache = self._forward(batch)
        return ForwardResult(cache[-1], cache[4])


# --------------------------------------------------------------------------------------------------
# Optimisers on the stacked params
# --------------------------------------------------------------------------------------------------

class SeedAdam(Adam):
    """:class:`miniattn.optim.Adam` on stacked (K, ...) params, with its overflow guard per seed.

    The update is Adam's, element by element (``m ← β1 m + (1 − β1) g``, ``v ← β2 v + (1 − β2) g²``,
    ``θ ← θ − lr · m̂ / (√v̂ + ε)``), so seed k follows exactly the trajectory of a separate
    :class:`~miniattn.optim.Adam` on its own parameters. The one non-element-wise decision of
    ``Adam`` — whether a parameter takes the overflow-safe step :meth:`Adam._large_step` (some
    ``|g| > √max / 2``, or a second moment above the fast path's bound) — is made per seed here:
    per parameter array it would couple the seeds.

    Parameters
    ----------
    params : dict of name -> writable float array (K, ...)
        Every entry with the same leading K.
    lr, betas, eps
        As in :class:`miniattn.optim.Adam`.
    """

    def __init__(self, params: dict[str, np.ndarray], lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, lr=lr, betas=betas, eps=eps)
        self.seeds = _leading_axis(params)
        self._large = {k: np.zeros(self.seeds, dtype=bool) for k in params}

    def step(self, grads) -> None:
        _check_grads(self.params, grads)
        self.t += 1
        b1, b2 = self.betas
        correction1 = 1.0 - b1 ** self.t
        correction2 = 1.0 - b2 ** self.t
        K = self.seeds
        for k, p in self.params.items():
            g = np.asarray(grads[k])
            m, v = self.m[k], self.v[k]
            m *= b1
            m += (1.0 - b1) * g
            limit = np.sqrt(_moment_bound(v.dtype))
            large = self._large[k] | (np.max(np.abs(g).reshape(K, -1), axis=1, initial=0.0) > limit)
            if not large.any():
                v *= b2
                v += (1.0 - b2) * (g * g)
                p -= self.lr * (m / correction1) / (np.sqrt(v / correction2) + self.eps)
                continue
            fast, slow = np.flatnonzero(~large), np.flatnonzero(large)
            if fast.size:
                vf, gf = v[fast], g[fast]
                vf *= b2
                vf += (1.0 - b2) * (gf * gf)
                v[fast] = vf
                p[fast] -= self.lr * (m[fast] / correction1) / (np.sqrt(vf / correction2) + self.eps)
            ps, ms, vs = p[slow], m[slow], v[slow]
            self._large_step(ps, ms, vs, g[slow], correction1, correction2)
            p[slow], m[slow], v[slow] = ps, ms, vs
            bound = correction2 * _moment_bound(v.dtype)
            still = ~np.all(vs.reshape(slow.size, -1) <= bound, axis=1)
            self._large[k] = np.zeros(K, dtype=bool)
            self._large[k][slow] = still

    def load_state_dict(self, state) -> None:
        """Restore a :meth:`state_dict` (checked first); the per-seed guard is recomputed from ``v``."""
        super().load_state_dict(state)
        correction2 = 1.0 - self.betas[1] ** self.t
        self._large = {k: ~np.all(a.reshape(self.seeds, -1) <= correction2 * _moment_bound(a.dtype), axis=1)
                       for k, a in self.v.items()}


def _leading_axis(params: dict[str, np.ndarray]) -> int:
    """The common leading K of every stacked parameter, or a one-line error."""
    sizes = {k: (v.shape[0] if v.ndim else None) for k, v in params.items()}
    values = set(sizes.values())
    if not sizes or None in values or len(values) != 1:
        raise ValueError(f"params must all have one leading seed axis K, got leading sizes {sizes}")
    return values.pop()


def make_seed_optimizer(name: str, params: dict[str, np.ndarray], **kwargs):
    """An optimiser on stacked (K, ...) params that steps every seed as its own optimiser would.

    Parameters
    ----------
    name : {"sgd", "adam"}
        ``"sgd"``: :class:`miniattn.optim.SGD` (``θ ← θ − lr·g``, element-wise, so already per seed);
        ``"adam"``: :class:`SeedAdam`.
    params : dict of name -> float array (K, ...)
        Every entry with the same leading K (e.g. ``FreeAttentionCopySeeds.params``).
    **kwargs
        The optimiser's hyperparameters (``lr``, ``momentum``; ``lr``, ``betas``, ``eps``).
    """
    table = {"sgd": SGD, "adam": SeedAdam}
    if not isinstance(name, str) or name.lower() not in table:
        raise ValueError(f"optimizer must be one of {sorted(table)}, got {name!r}")
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of name -> float array, got {type(params).__name__}")
    _leading_axis(params)
    return table[name.lower()](params, **kwargs)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------

def train_seeds(model: FreeAttentionCopySeeds, task, optimizer, *, steps: int, batch_size: int, seeds,
                on_step: Callable | None = None) -> np.ndarray:
    """Train K seeds together: per step, each seed draws its batch, then one batched pass and update.

    Seed k draws batch j as ``task.sample(rng_k, batch_size)`` with ``rng_k =
    default_rng(miniattn.train.seed_streams(seeds[k])[0])`` — the generator and the call sequence of
    :func:`miniattn.train.train` for that seed — so with an element-wise optimiser (SGD,
    :class:`SeedAdam`) every seed ends where its own ``train(..., seed=seeds[k])`` run ends. No
    evaluation, checkpoint or history here (``train`` evaluates without changing the parameters).

    Parameters
    ----------
    model : FreeAttentionCopySeeds
        K seeds; updated in place.
    task
        Has ``sample(rng, batch_size) -> Seq2SeqBatch`` (e.g. ``CopyTask(L, V, mode, specials=False)``).
    optimizer
        Has ``step(grads)``, built on ``model.params`` (:func:`make_seed_optimizer`).
    steps : int >= 0
    batch_size : int >= 1
        B, per seed.
    seeds : sequence of K ints >= 0 or numpy.random.SeedSequence
        The ``seed`` each seed's ``train`` run would be given.
    on_step : callable, optional
        ``on_step(step, model, losses)`` after every update (e.g. to evaluate every few steps).

    Returns
    -------
    losses : array (steps, K)
        The training loss of every seed at every step (``history.train_loss`` of each run).

    Raises
    ------
    miniattn.train.TrainingDiverged
        When a seed's loss, gradient or parameters become non-finite; the message names the seeds.
    """
    if not isinstance(model, FreeAttentionCopySeeds):
        raise TypeError(f"model must be a FreeAttentionCopySeeds, got {type(model).__name__}")
    steps = integer("steps", steps, 0)
    batch_size = integer("batch_size", batch_size, 1)
    if not callable(getattr(task, "sample", None)):
        raise TypeError(f"task must have a sample(rng, batch_size) method, got {type(task).__name__}")
    if not callable(getattr(optimizer, "step", None)):
        raise TypeError(f"optimizer must have a step() method, got {type(optimizer).__name__}")
    if getattr(optimizer, "params", None) is not model.params:
        raise ValueError("optimizer must be built on model.params (the same dict)")
    if isinstance(seeds, (str, bytes, np.random.SeedSequence)) or not isinstance(seeds, Sequence):
        raise TypeError(f"seeds must be a sequence of {model.seeds} seeds, got {type(seeds).__name__}")
    if len(seeds) != model.seeds:
        raise ValueError(f"seeds must hold one seed per model seed: K={model.seeds}, got {len(seeds)}")
    if on_step is not None and not callable(on_step):
        raise TypeError(f"on_step must be callable, got {type(on_step).__name__}")
    rngs = [np.random.default_rng(seed_streams(s)[0]) for s in seeds]
    losses = np.empty((steps, model.seeds))
    for step in range(1, steps + 1):
        # Drawing the data needs each seed's own generator calls (bit-identical to train); the
        # forward/backward pass below is one batched computation over the K seeds.
        batch = stack_batches([task.sample(rng, batch_size) for rng in rngs])
        try:
            loss, grads = model.loss_and_grads(batch)
        except (NonFiniteError, FloatingPointError, RuntimeWarning) as exc:
            raise TrainingDiverged(step, f"a non-finite value inside the batched pass ({exc})") from None
        bad = ~np.isfinite(loss)
        for name, g in grads.items():
            bad |= ~np.isfinite(g.reshape(model.seeds, -1)).all(axis=1)
        if bad.any():
            raise TrainingDiverged(step, f"seeds {np.flatnonzero(bad).tolist()} have a non-finite loss or gradient")
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                optimizer.step(grads)
        except NonFiniteError as exc:          # a refused update: exc.entries marks the offending entries
            seeds = np.flatnonzero(exc.entries.reshape(model.seeds, -1).any(axis=1)).tolist()
            raise TrainingDiverged(step, f"seeds {seeds} would have non-finite parameters after the update "
                                         f"(refused: {exc})") from None
        bad = np.zeros(model.seeds, dtype=bool)
        for name, p in model.params.items():
            bad |= ~np.isfinite(p.reshape(model.seeds, -1)).all(axis=1)
        if bad.any():
            raise TrainingDiverged(step, f"seeds {np.flatnonzero(bad).tolist()} have non-finite parameters "
                                         "after the update")
        losses[step - 1] = loss
        if on_step is not None:
            on_step(step, model, loss)
    return losses
