"""The warm-up toy of the paper's blog post: a gated classifier with one attention weight.

Two models live here.

:class:`GatedToyClassifier`
    The blog's toy, exactly. Two-token sequences ``x = (x_0, x_1)`` over a vocabulary of ``V`` words
    (the blog uses ``V = 2``). Each word ``v`` has a score ``β_v`` (its *knowledge to translate
    individual words*, KTIW), and the model puts a free attention weight ``p`` on position 1 and
    ``1 − p`` on position 0::

        s(x)  = (1 − p) β[x_0] + p β[x_1]                       (the sequence score)
        loss  = Σ_b −y±_b · s(x_b),     y± = +1 (positive), −1 (negative)     (reduction="sum")

    ``p`` is a free real number (it is *not* squashed into [0, 1]), and the loss is linear in the
    score. On the blog's two training sequences, ``{0, 0} → negative`` and ``{0, 1} → positive``,
    the summed loss is ``+β_0 − ((1 − p) β_0 + p β_1) = p (β_0 − β_1)``, and gradient flow
    ``dθ/dτ = −∂loss/∂θ`` gives exactly the blog's equations::

        dβ_1/dτ = p,      dβ_0/dτ = −p,      dp/dτ = β_1 − β_0.

    (``reduction="mean"`` halves every right-hand side, i.e. runs the same flow at half speed.)

:class:`SoftmaxGatedToyClassifier`
    The same idea with a proper attention and a proper loss: every word ``v`` has an attention logit
    ``a_v`` (the blog model's ``u · h`` with one-hot embeddings), ``α = softmax_l(a[x_l])`` over the
    unmasked positions, ``s = Σ_l α_l β[x_l]``, and the mean logistic loss
    ``(1/B) Σ_b log(1 + exp(−y±_b s_b))``. Sequences may have any length and a mask.

Both expose ``params``, ``loss_and_grads(batch)``, ``forward(batch)``, ``ktiw_probe(batch)``,
``saliency(batch)`` and ``config()``, and take a :class:`miniattn.batch.ClassificationBatch`
(labels in {0, 1}).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from miniattn._validate import bool_array, float_array, int_array, real
from miniattn.batch import ClassificationBatch
from miniattn.layers import _require_finite, masked_softmax
from miniattn.models.base import ForwardResult, check_flag, check_size

__all__ = ["GatedToyClassifier", "SoftmaxGatedToyClassifier", "toy_batch"]


def toy_batch() -> ClassificationBatch:
    """The blog's two training sequences: ``{0, 0} → negative (label 0)``, ``{0, 1} → positive (1)``.

    Returns
    -------
    ClassificationBatch
        ``tokens`` (2, 2), ``mask`` all True, ``labels`` (2,) = [0, 1], ``salient`` marks the word 1.
    """
    tokens = np.array([[0, 0], [0, 1]], dtype=np.int64)
    return ClassificationBatch(tokens=tokens, mask=np.ones((2, 2), dtype=bool),
                               labels=np.array([0, 1], dtype=np.int64), salient=tokens == 1)


def _check_batch(batch, vocab: int, *, length: int | None = None):
    """Validate a ClassificationBatch; return (tokens with masked ids set to 0, mask, signs y±)."""
    if not isinstance(batch, ClassificationBatch):
        raise TypeError(f"batch must be a miniattn.batch.ClassificationBatch, got {type(batch).__name__}")
    tokens = int_array("batch.tokens", batch.tokens, ndim=2)
    B, S = tokens.shape
    if length is not None and S != length:
        raise ValueError(f"batch.tokens must have shape (B, {length}) for this model, got {tokens.shape}")
    mask = bool_array("batch.mask", batch.mask, (B, S))
    if not np.all(mask.any(axis=1)):
        raise ValueError("batch.mask has a sequence with no unmasked token; every row needs at least one True")
    int_array("batch.tokens (where mask is True)", tokens[mask], upper=vocab)
    labels = int_array("batch.labels", batch.labels, upper=2, ndim=1)
    if labels.shape != (B,):
        raise ValueError(f"batch.labels must have shape ({B},), got {labels.shape}")
    # Masked positions may hold a pad id outside the vocabulary; they get weight 0, so read word 0.
    safe = np.where(mask, tokens, 0)
    signs = 2.0 * labels - 1.0
    return safe, mask, signs


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    """``log σ(z) = −log(1 + e^{−z})``, stable for any finite z."""
    return -np.logaddexp(0.0, -z)


def _init_vector(name, value, size, init_scale, rng):
    """A float64 vector of ``size`` from ``value`` (scalar or array), plus N(0, init_scale²) noise."""
    vec = np.array(np.broadcast_to(float_array(name, value), (size,)), dtype=np.float64) if np.ndim(value) == 0 \
        else float_array(name, value, ndim=1).astype(np.float64, copy=True)
    if vec.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), got {vec.shape}")
    if init_scale > 0:
        vec += init_scale * rng.standard_normal(size)
    return vec


def _check_init(init_scale, rng):
    init_scale = real("init_scale", init_scale, low=0.0)
    if init_scale > 0 and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator when init_scale > 0, got {type(rng).__name__}")
    return init_scale


class _GatedCache(NamedTuple):
    tokens: np.ndarray    #: (B, 2) int
    signs: np.ndarray     #: (B,) ±1
    gate: float           #: p (½ for the uniform twin)
    scores: np.ndarray    #: (B,) s(x)


class GatedToyClassifier:
    """The blog's gated toy classifier: word scores β, free attention weight p on position 1.

    Equations (``x = (x_0, x_1)``, ``y± ∈ {−1, +1}``)::

        s(x)  = (1 − p) β[x_0] + p β[x_1]
        loss  = Σ_b −y±_b s(x_b)                 (reduction="sum", the blog's normalisation)
              = (1/B) Σ_b −y±_b s(x_b)           (reduction="mean")
        ∂loss/∂β_v = Σ_b −y±_b [(1 − p) 1{x_b0 = v} + p 1{x_b1 = v}]
        ∂loss/∂p   = Σ_b −y±_b (β[x_b1] − β[x_b0])

    On :func:`toy_batch` with ``reduction="sum"``: ``loss = p (β_0 − β_1)``.

    Parameters
    ----------
    beta : float or array (V,), default (0, 0)
        Initial word scores; a scalar is broadcast to ``vocab`` words.
    p : float, default 0.5
        Initial attention weight on position 1 (a free real number, not clipped).
    vocab : int, default 2
        Number of words V (used when ``beta`` is a scalar).
    uniform : bool
        Uniform-attention twin: ``p`` is fixed at ½ and is not a parameter.
    reduction : {"sum", "mean"}
        ``"sum"`` over the batch reproduces the blog's flow; ``"mean"`` runs it at speed 1/B.
    init_scale : float, default 0.0
        Standard deviation of i.i.d. normal noise added to the initial β (and p). The default 0 gives
        the blog's deterministic start β = 0, p = ½.
    rng : numpy.random.Generator, optional
        Required when ``init_scale > 0``.

    Attributes
    ----------
    params : dict
        ``"beta"`` (V,) and, unless uniform, ``"p"`` of shape () (a 0-d array, updated in place).
    """

    def __init__(self, beta=(0.0, 0.0), p: float = 0.5, *, vocab: int = 2, uniform: bool = False,
                 reduction: str = "sum", init_scale: float = 0.0, rng: np.random.Generator | None = None):
        vocab = check_size("vocab", vocab)
        if not isinstance(reduction, str):
            raise TypeError(f"reduction must be 'sum' or 'mean', got {type(reduction).__name__} {reduction!r}")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        init_scale = _check_init(init_scale, rng)
        size = int(vocab) if np.ndim(beta) == 0 else len(np.asarray(beta))
        self.vocab = size
        self.uniform = check_flag("uniform", uniform)
        self.reduction = reduction
        self.init_scale = init_scale
        self.params: dict[str, np.ndarray] = {"beta": _init_vector("beta", beta, size, init_scale, rng)}
        if not self.uniform:
            gate = float(float_array("p", p, ndim=0))
            if init_scale > 0:
                gate += init_scale * float(rng.standard_normal())
            self.params["p"] = np.array(gate, dtype=np.float64)

    def config(self) -> dict:
        """Constructor arguments that define the architecture (JSON-serialisable)."""
        return {"model": "GatedToyClassifier", "vocab": self.vocab, "uniform": self.uniform,
                "reduction": self.reduction, "init_scale": self.init_scale}

    @property
    def gate(self) -> float:
        """The attention weight p on position 1 (½ for the uniform twin)."""
        return 0.5 if self.uniform else float(self.params["p"])

    def _forward(self, batch) -> _GatedCache:
        tokens, mask, signs = _check_batch(batch, self.vocab, length=2)
        if not mask.all():
            raise ValueError("batch.mask must be all True: the gated toy reads exactly two tokens")
        beta, p = self.params["beta"], self.gate
        scores = (1.0 - p) * beta[tokens[:, 0]] + p * beta[tokens[:, 1]]
        return _GatedCache(tokens, signs, p, scores)

    def _scored(self, batch) -> _GatedCache:
        """:meth:`_forward`, and a check that the scores did not overflow (for the methods that use them)."""
        cache = self._forward(batch)
        # p is free and unbounded, so finite β and p can overflow the products: one term ±inf gives
        # an infinite score, two of opposite signs a NaN one, and either would reach the loss and
        # the log-probabilities silently. Reordering the sum could avoid some of these, but would
        # change the bits of every ordinary score; a named error does not.
        _require_finite("the gated toy scores s = (1 - p) beta[x_0] + p beta[x_1]", cache.scores)
        return cache

    def loss_and_grads(self, batch: ClassificationBatch) -> tuple[float, dict[str, np.ndarray]]:
        """Loss and its gradients.

        Parameters
        ----------
        batch : ClassificationBatch
            ``tokens`` (B, 2) in [0, V), ``mask`` (B, 2) all True, ``labels`` (B,) in {0, 1}.

        Returns
        -------
        loss : float
        grads : dict
            ``"beta"`` (V,) and ``"p"`` () (absent for the uniform twin).

        Raises
        ------
        NonFiniteError
            If finite β and p overflow: the scores, the loss (their signed sum) or a gradient (a sum
            over the batch, or ``β[x_1] − β[x_0]``) is inf or NaN.
        """
        tokens, signs, p, scores = self._scored(batch)
        scale = 1.0 if self.reduction == "sum" else 1.0 / len(signs)
        loss = -scale * float(np.sum(signs * scores))
        dscore = -scale * signs                                    # ∂loss/∂s_b
        beta = self.params["beta"]
        # Scatter-add over the batch with bincount: each word collects the weight of its positions.
        dbeta = (np.bincount(tokens[:, 0], weights=(1.0 - p) * dscore, minlength=self.vocab)
                 + np.bincount(tokens[:, 1], weights=p * dscore, minlength=self.vocab))
        grads = {"beta": dbeta}
        if not self.uniform:
            grads["p"] = np.array(np.sum(dscore * (beta[tokens[:, 1]] - beta[tokens[:, 0]])))
        # Finite scores can still overflow when summed over the batch (the loss, dβ), and
        # β[x_1] − β[x_0] can overflow on its own (dp).
        _require_finite("the gated toy loss (the signed sum of the scores)", np.float64(loss))
        for name, grad in grads.items():
            _require_finite(f"the gated toy gradient of {name}", grad)
        return loss, grads

    def forward(self, batch: ClassificationBatch) -> ForwardResult:
        """Logistic reading of the score and the attention weights.

        Returns
        -------
        ForwardResult
            ``log_probs`` (B, 1, 2) = ``[log σ(−s), log σ(s)]`` and ``attention`` (B, 1, 2) =
            ``[1 − p, p]`` (p is free, so these need not lie in [0, 1]).

        Raises
        ------
        NonFiniteError
            If finite β and p overflow the scores (see :meth:`loss_and_grads`).
        """
        tokens, _, p, scores = self._scored(batch)
        log_probs = np.stack([_log_sigmoid(-scores), _log_sigmoid(scores)], axis=-1)[:, None, :]
        attention = np.broadcast_to(np.array([1.0 - p, p]), (len(scores), 1, 2)).copy()
        return ForwardResult(log_probs, attention)

    def ktiw_probe(self, batch: ClassificationBatch) -> np.ndarray:
        """β_{s} = log σ(y± β[x_s]): log-probability of the gold label if only position s were read.

        Returns
        -------
        beta : array (B, 1, 2)
        """
        tokens, signs, _, _ = self._forward(batch)
        return _log_sigmoid(signs[:, None] * self.params["beta"][tokens])[:, None, :]

    def saliency(self, batch: ClassificationBatch) -> np.ndarray:
        """Gradient × input of ``log σ(y± s)`` w.r.t. a scale λ_l on the score of position l (at λ = 1).

        ``Δ_l = σ(−y± s) · y± · α_l β[x_l]`` with ``α = (1 − p, p)``.

        Returns
        -------
        delta : array (B, 1, 2)

        Raises
        ------
        NonFiniteError
            If finite β and p overflow the scores (see :meth:`loss_and_grads`).
        """
        tokens, signs, p, scores = self._scored(batch)
        weights = np.array([1.0 - p, p])
        factor = np.exp(_log_sigmoid(-signs * scores)) * signs
        return (factor[:, None] * weights[None, :] * self.params["beta"][tokens])[:, None, :]


class _SoftmaxCache(NamedTuple):
    tokens: np.ndarray    #: (B, S) int (masked positions read word 0)
    mask: np.ndarray      #: (B, S) bool
    signs: np.ndarray     #: (B,) ±1
    alpha: np.ndarray     #: (B, S) attention weights
    scores: np.ndarray    #: (B,) s = Σ α β[x]


class SoftmaxGatedToyClassifier:
    """Softmax-gated toy: an attention logit per word, softmax attention, logistic loss.

    Equations (``y± ∈ {−1, +1}``, positions l over the unmasked tokens)::

        α_l   = exp(a[x_l]) / Σ_{l'} exp(a[x_l'])
        s     = Σ_l α_l β[x_l]
        loss  = (1/B) Σ_b log(1 + exp(−y±_b s_b))
        g_b   = ∂loss/∂s_b = −y±_b σ(−y±_b s_b) / B
        ∂loss/∂β_v = Σ_{b,l: x_bl = v} g_b α_bl
        ∂loss/∂a_v = Σ_{b,l: x_bl = v} g_b α_bl (β[x_bl] − s_b)

    The last line is the paper's stage-2 statement in miniature: a word's attention logit grows when
    its own KTIW score β (signed by the label) beats the attention-weighted average.

    Parameters
    ----------
    vocab : int, default 2
    uniform : bool
        Uniform twin: α is uniform over the unmasked positions, and ``"logits"`` is not a parameter.
    init_scale : float, default 0.0
        Standard deviation of the i.i.d. normal initialisation of β and the logits. The default 0
        starts at β = 0 and uniform attention, as the blog's toy.
    rng : numpy.random.Generator, optional
        Required when ``init_scale > 0``.

    Attributes
    ----------
    params : dict
        ``"beta"`` (V,) and, unless uniform, ``"logits"`` (V,).
    """

    def __init__(self, vocab: int = 2, *, uniform: bool = False, init_scale: float = 0.0,
                 rng: np.random.Generator | None = None):
        vocab = check_size("vocab", vocab)
        init_scale = _check_init(init_scale, rng)
        self.vocab = vocab
        self.uniform = check_flag("uniform", uniform)
        self.init_scale = init_scale
        self.params: dict[str, np.ndarray] = {"beta": _init_vector("beta", 0.0, self.vocab, init_scale, rng)}
        if not self.uniform:
            self.params["logits"] = _init_vector("logits", 0.0, self.vocab, init_scale, rng)

    def config(self) -> dict:
        """Constructor arguments that define the architecture (JSON-serialisable)."""
        return {"model": "SoftmaxGatedToyClassifier", "vocab": self.vocab, "uniform": self.uniform,
                "init_scale": self.init_scale}

    def _forward(self, batch) -> _SoftmaxCache:
        tokens, mask, signs = _check_batch(batch, self.vocab)
        beta = self.params["beta"]
        logits = np.zeros(tokens.shape) if self.uniform else self.params["logits"][tokens]
        alpha = masked_softmax(logits, mask)
        scores = np.sum(alpha * beta[tokens], axis=1)
        return _SoftmaxCache(tokens, mask, signs, alpha, scores)

    def loss_and_grads(self, batch: ClassificationBatch) -> tuple[float, dict[str, np.ndarray]]:
        """Mean logistic loss and its gradients (equations in the class docstring).

        Parameters
        ----------
        batch : ClassificationBatch
            ``tokens`` (B, S), ``mask`` (B, S), ``labels`` (B,) in {0, 1}.

        Returns
        -------
        loss : float
        grads : dict
            ``"beta"`` (V,) and ``"logits"`` (V,) (absent for the uniform twin).
        """
        tokens, mask, signs, alpha, scores = self._forward(batch)
        B = len(signs)
        margins = signs * scores
        loss = float(np.mean(np.logaddexp(0.0, -margins)))
        dscore = -signs * np.exp(-np.logaddexp(0.0, margins)) / B      # −y± σ(−y± s) / B
        beta = self.params["beta"]
        flat = tokens.reshape(-1)
        dbeta = np.bincount(flat, weights=(dscore[:, None] * alpha).reshape(-1), minlength=self.vocab)
        grads = {"beta": dbeta}
        if not self.uniform:
            # Softmax backward: dlogit_l = α_l (dα_l − Σ α dα) with dα_l = g β[x_l], Σ α dα = g s.
            dlogit = dscore[:, None] * alpha * (beta[tokens] - scores[:, None])
            grads["logits"] = np.bincount(flat, weights=dlogit.reshape(-1), minlength=self.vocab)
        return loss, grads

    def forward(self, batch: ClassificationBatch) -> ForwardResult:
        """``log_probs`` (B, 1, 2) = ``[log σ(−s), log σ(s)]``; ``attention`` (B, 1, S) = α."""
        _, _, _, alpha, scores = self._forward(batch)
        log_probs = np.stack([_log_sigmoid(-scores), _log_sigmoid(scores)], axis=-1)[:, None, :]
        return ForwardResult(log_probs, alpha[:, None, :])

    def ktiw_probe(self, batch: ClassificationBatch) -> np.ndarray:
        """β_{l} = log σ(y± β[x_l]) (B, 1, S); −inf at masked positions."""
        tokens, mask, signs, _, _ = self._forward(batch)
        probe = _log_sigmoid(signs[:, None] * self.params["beta"][tokens])
        return np.where(mask, probe, -np.inf)[:, None, :]

    def saliency(self, batch: ClassificationBatch) -> np.ndarray:
        """Gradient × input of ``log σ(y± s)`` w.r.t. a scale on word l's value β[x_l] (B, 1, S).

        ``Δ_l = σ(−y± s) y± α_l β[x_l]`` (attention does not depend on the scale); 0 where masked.
        """
        tokens, mask, signs, alpha, scores = self._forward(batch)
        factor = np.exp(_log_sigmoid(-signs * scores)) * signs
        return (factor[:, None] * alpha * self.params["beta"][tokens])[:, None, :]
