"""Collect the paper's per-position quantities from any model, and the agreement table (experiment E3).

Notation: example b, output position t (T = 1 for a classifier: the label is the one output),
source position s; ``y_t`` the gold output, ``p_θ`` the model's output distribution, ``α_{t,s}``
its attention, ``v_s`` the value (what attending to s puts in the context) and
``c_t = Σ_s α_{t,s} v_s`` the context that output t reads.

**Attention α** — ``α[b, t, s]``, from ``model.forward(batch).attention``. For a multi-head model
the per-head attention is kept (``alpha_heads``) and α is the head average, the quantity the
model's averaged context actually uses.

**KTIW probe β** (knowledge to translate individual words) — the log-probability of the gold
output when the context is replaced by source position s alone, everything else fixed::

    β[b, t, s] = log p_θ(y_t | c_t := v_s)        (α_{t,·} replaced by the one-hot of s)

e.g. ``log softmax([q_t ; v_s] W_o + b)[y_t]`` for :class:`~miniattn.models.seq2seq.Seq2SeqAttention`,
``log softmax(E[x_s] W_o + b)[y]`` for :class:`~miniattn.models.classifier.AttentionClassifier`,
``log softmax(M[:, x_s] + b)[y_t]`` for :class:`~miniattn.models.free_copy.FreeAttentionCopyModel`,
``log σ(y± β[x_s])`` for the toys of :mod:`miniattn.models.toy` (``model.ktiw_probe``). β of the
uniform-attention twin is β^uf; β^px is the same quantity for a bag-of-words regression
(:mod:`analysis.bag_of_words`, :mod:`analysis.cooccurrence`).

**Saliency Δ** — gradient × input: scale what source position s contributes by ``λ_s`` (its
encoder state ``h_s → λ_s h_s``, keys and values alike; the value alone in the toys and the free
copy model) and differentiate the gold log-probability at λ = 1::

    Δ[b, t, s] = ∂ log p_θ(y_t) / ∂λ_s |_{λ = 1}  =  (∂ log p_θ(y_t) / ∂h_s) · h_s

signed: the most supportive position ranks first (``model.saliency``).

:func:`probe_all` returns the three aligned on (example, output position, source position) with
the mask of valid triples; whatever a model puts at a masked triple (0, −inf or NaN), the probes
are NaN there and only there. :func:`agreement_table` computes, on the same valid triples, the
paper's table:

* ``A(α, β^uf)`` — where the normal model attends vs what the uniform twin's KTIW supports;
* ``A(β^uf, β^px)`` — the uniform twin's KTIW vs the bag-of-words (co-occurrence) prediction;
* ``A(Δ, β^uf)`` — the normal model's saliency vs the uniform twin's KTIW;

each with its shuffled baseline Â, Kendall τ and percentile-bootstrap confidence intervals (the
metrics are defined in :mod:`analysis.agreement`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from analysis.agreement import (BootstrapCI, bootstrap_ci, kendall_tau_items, shuffle_within_items, top_k_match,
                                top_k_size, valid_positions)
from analysis.bag_of_words import batch_arrays

__all__ = ["Probes", "probe_all", "agreement_table", "PAIRS"]


class Probes(NamedTuple):
    """The paper's quantities of one model on one batch, aligned on (example, output, source) triples.

    Every array is float64 with NaN at invalid triples (so any metric skips them even without
    ``mask``).

    Attributes
    ----------
    alpha : array (B, T, S)
        Attention weights α (the head average for a multi-head model).
    beta : array (B, T, S)
        KTIW probe β: log-probability of the gold output if the model attended only to s.
    delta : array (B, T, S)
        Gradient × input saliency Δ of the gold log-probability w.r.t. a scale on source state s.
    mask : bool array (B, T, S)
        True where source position s is real and output position t is counted.
    alpha_heads : array (H, B, T, S) or None
        Per-head attention of a multi-head model; None for a single head.
    """

    alpha: np.ndarray
    beta: np.ndarray
    delta: np.ndarray
    mask: np.ndarray
    alpha_heads: np.ndarray | None = None


def _probe_array(name: str, value, shape: tuple, mask: np.ndarray) -> np.ndarray:
    """``value`` as float64 with NaN outside ``mask``; NaN inside it is refused (see :func:`probe_all`)."""
    arr = np.asarray(value)
    if arr.dtype.kind != "f":
        raise TypeError(f"{name} must return a floating-point array, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"{name} must return shape (B, T, S) = {shape}, got {arr.shape}")
    # NaN is the mark of an invalid triple: a NaN at a valid one would silently drop it from
    # every metric, so it is an error of the model (e.g. diverged parameters), not a value.
    if np.isnan(arr[mask]).any():
        raise ValueError(f"{name} returned NaN at {int(np.isnan(arr[mask]).sum())} valid (example, output, "
                         "source) triple(s); NaN may only mark masked ones")
    return np.where(mask, arr.astype(np.float64), np.nan)


def probe_all(model, batch) -> Probes:
    """α, β and Δ of ``model`` on ``batch``, with the mask of valid (example, output, source) triples.

    Parameters
    ----------
    model : object
        Any model with ``forward(batch) -> ForwardResult(log_probs, attention)`` (attention (B, T, S)
        or (H, B, T, S)), ``ktiw_probe(batch) -> (B, T, S)`` and ``saliency(batch) -> (B, T, S)``.
    batch : Seq2SeqBatch or ClassificationBatch
        For a classification batch T = 1 (the label is the one output).

    Returns
    -------
    Probes
        ``mask[b, t, s] = source_mask[b, s] & target_mask[b, t]``.

    Notes
    -----
    The one contract for values outside the mask, the same for every model: α, β and Δ (and
    ``alpha_heads``) are NaN **exactly** where ``mask`` is False, whatever the model returns there
    (0, −inf or NaN), so any metric skips those triples even without the mask. Where ``mask`` is
    True they are the model's values; a NaN there raises ``ValueError`` (it would otherwise be
    mistaken for a masked triple). ±inf is kept as an ordered value (a log-probability may
    underflow); on finite parameters every model of :mod:`miniattn.models` returns finite values.

    Raises
    ------
    TypeError
        If the model lacks a method, a method returns a non-float array, or the batch type is unknown.
    ValueError
        If a method returns the wrong shape, or NaN at a valid triple.
    """
    for method in ("forward", "ktiw_probe", "saliency"):
        if not callable(getattr(model, method, None)):
            raise TypeError(f"model must have a {method}(batch) method, got {type(model).__name__}")
    _, source_mask, _, target_mask = batch_arrays(batch)
    source_mask, target_mask = np.asarray(source_mask, dtype=bool), np.asarray(target_mask, dtype=bool)
    mask = target_mask[:, :, None] & source_mask[:, None, :]
    shape = mask.shape
    attention = np.asarray(model.forward(batch).attention)
    alpha_heads = None
    if attention.ndim == 4:
        if attention.shape[1:] != shape:
            raise ValueError(f"model.forward attention must have shape (H, B, T, S) = (H,) + {shape}, "
                             f"got {attention.shape}")
        alpha_heads = np.where(mask, attention.astype(np.float64), np.nan)
        attention = attention.mean(axis=0)
    alpha = _probe_array("model.forward(batch).attention", attention, shape, mask)
    beta = _probe_array("model.ktiw_probe", model.ktiw_probe(batch), shape, mask)
    delta = _probe_array("model.saliency", model.saliency(batch), shape, mask)
    return Probes(alpha, beta, delta, mask, alpha_heads)


#: The rows of the agreement table: name -> (which probes give a, which give b). "normal" and
#: "uniform" are the two models' Probes; "px" is the β^px array.
PAIRS = {
    "alpha_vs_beta_uf": (("normal", "alpha"), ("uniform", "beta")),
    "beta_uf_vs_beta_px": (("uniform", "beta"), ("px", None)),
    "delta_vs_beta_uf": (("normal", "delta"), ("uniform", "beta")),
}


def agreement_table(probes_normal: Probes, probes_uniform: Probes, beta_px, rng: np.random.Generator,
                    frac: float = 0.05, n_boot: int = 1000, level: float = 0.95, groups=None) -> dict:
    """The paper's agreement table with shuffled baselines, Kendall τ and bootstrap CIs.

    Rows (``a`` ranks a position first; is it within the top ``k = ceil(frac · n)`` of ``b``?):
    ``"alpha_vs_beta_uf"`` = A(α, β^uf), ``"beta_uf_vs_beta_px"`` = A(β^uf, β^px),
    ``"delta_vs_beta_uf"`` = A(Δ, β^uf), with α and Δ from the normally trained model and β^uf from
    its uniform-attention twin on the same batch. Δ is used signed (the most supportive position
    ranks first). An item is one (example, output position) pair; only triples valid in both
    models' masks (and not NaN in either score) count.

    Parameters
    ----------
    probes_normal, probes_uniform : Probes
        From :func:`probe_all` on the same batch.
    beta_px : float array (B, T, S)
        β^px from :func:`analysis.cooccurrence.beta_px_for_batch` on the same batch.
    rng : numpy.random.Generator
        Drives the shuffles and the bootstrap.
    frac : float in (0, 1]
    n_boot : int
    level : float in (0, 1)
    groups : array (B,), optional
        A label per example (e.g. the training seed when batches of several seeds are concatenated):
        the bootstrap then resamples groups, then items (see :func:`~analysis.agreement.bootstrap_ci`).

    Returns
    -------
    dict
        For each row name, a dict with ``"A"``, ``"A_hat"`` (agreement after shuffling ``b`` within
        each item), ``"tau"`` (Kendall τ-b): each a :class:`~analysis.agreement.BootstrapCI`
        (fields ``mean, low, high, level, n``); ``"chance"``: the mean of k/n over the items (the
        expectation of Â); ``"n_items"``. Top-level ``"A_hat"`` is the row ``"alpha_vs_beta_uf"``'s
        Â (the paper's random baseline), and ``"frac"``, ``"level"``.
    """
    for name, probes in (("probes_normal", probes_normal), ("probes_uniform", probes_uniform)):
        if not isinstance(probes, Probes):
            raise TypeError(f"{name} must be a Probes (from probe_all), got {type(probes).__name__}")
    shape = probes_normal.mask.shape
    if probes_uniform.mask.shape != shape:
        raise ValueError(f"probes_normal and probes_uniform must come from the same batch: shapes {shape} and "
                         f"{probes_uniform.mask.shape}")
    beta_px = np.asarray(beta_px)
    if beta_px.dtype.kind != "f":
        raise TypeError(f"beta_px must be a floating-point array, got dtype {beta_px.dtype}")
    if beta_px.shape != shape:
        raise ValueError(f"beta_px must have the probes' shape (B, T, S) = {shape}, got {beta_px.shape}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    item_groups = None
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != shape[:1]:
            raise ValueError(f"groups must have one label per example, shape ({shape[0]},), got {groups.shape}")
        item_groups = np.broadcast_to(groups[:, None], shape[:2])
    mask = probes_normal.mask & probes_uniform.mask
    sources = {"normal": probes_normal, "uniform": probes_uniform}

    def pick(spec):
        which, field = spec
        return np.asarray(beta_px, dtype=np.float64) if which == "px" else getattr(sources[which], field)

    def ci(values: np.ndarray) -> BootstrapCI:
        return bootstrap_ci(values, rng, n_boot=n_boot, level=level, groups=item_groups)

    table: dict = {}
    for row, (spec_a, spec_b) in PAIRS.items():
        a, b = pick(spec_a), pick(spec_b)
        valid = valid_positions(a, b, mask)
        n = valid.sum(axis=-1)
        match = top_k_match(a, b, valid, frac)
        if np.all(np.isnan(match)):
            raise ValueError(f"no valid (example, output position) item for {row}: every item is masked or NaN")
        shuffled = top_k_match(a, shuffle_within_items(b, valid, rng), valid, frac)
        tau = kendall_tau_items(a, b, valid)
        used = n > 0
        table[row] = {
            "A": ci(match),
            "A_hat": ci(shuffled),
            "tau": ci(tau) if not np.all(np.isnan(tau)) else BootstrapCI(np.nan, np.nan, np.nan, float(level), 0),
            "chance": float(np.mean(top_k_size(n[used], frac) / n[used])),
            "n_items": int(used.sum()),
        }
    table["A_hat"] = table["alpha_vs_beta_uf"]["A_hat"]
    table["frac"] = float(frac)
    table["level"] = float(level)
    return table
