"""E3 — agreement between attention, the uniform twin's KTIW probe, β^px and saliency (paper Table 1).

For each task and seed a normally trained model and its uniform-attention twin are trained by
:func:`miniattn.train.train` from the same initialisation on the same batches (the same ``seed``).
On a held-out batch we collect α and Δ of the normal model, β^uf of the twin
(:func:`analysis.probes.probe_all`, whose module docstring defines β and Δ) and β^px of a
bag-of-words regression fitted on a separate batch (:func:`analysis.cooccurrence.beta_px_for_batch`),
and compute the paper's agreement table (:func:`analysis.probes.agreement_table`): A(α, β^uf),
A(β^uf, β^px), A(Δ, β^uf), each with its shuffled baseline Â and Kendall τ. ξ(v)
(:func:`analysis.agreement.xi`) is the normal model's accuracy at the first checkpoint whose
attention (stashed by ``on_eval`` at every evaluation) agrees with its own final attention more
than v; ξ* is its best accuracy.

Tasks: keyword classification (:class:`~miniattn.tasks.KeywordClassificationTask`,
:class:`~miniattn.models.classifier.AttentionClassifier`) and synthetic translation
(:class:`~miniattn.tasks.TranslationTask`, :class:`~miniattn.models.seq2seq.Seq2SeqAttention`).
The paper's numbers are for IMDB and Multi30k with LSTMs; the claim reproduced is the ordering
A ≫ Â, read as the mean over seeds of A − Â being at least :data:`MIN_GAP` points (×100).

Real text (when the user supplies files): with ``E3_TEXT=labels.tsv`` (a ``label<TAB>text`` or
``.csv`` file) and/or ``E3_PARALLEL_SOURCE=src.txt E3_PARALLEL_TARGET=tgt.txt`` (line-aligned) in
the environment when :func:`runs` is called, E3 adds the tasks ``text-classification`` /
``text-translation``. The files are read with the shared text options
(:class:`miniattn.tasks.text_options.TextOptions`) parsed by
:func:`~miniattn.tasks.text_options.parse_text_options` from ``E3_OPTIONS`` (e.g.
``E3_OPTIONS="--lowercase --min-count 2"``; empty: the defaults — no lowercasing, no truncation):
E3 adds no text processing of its own, and records the options in the run config. Each file
enters the run config with its SHA-256, so an edited file is a new run (and a file edited after
configuration is refused); every file is loaded once when the runs are configured, so a file the
loaders refuse stops the computation with one line naming it. A fixed 20% of the examples (a seeded
permutation, :class:`miniattn.tasks.HeldOutSplit`) is held out: the agreement table and accuracies
are measured on a seeded subset of at most ``text_eval_size`` of its examples (500 in the default
profile: the probes and the attention stashed at every checkpoint grow with it; forward passes and
probes run in chunks of examples), training draws from the rest.

β^px on real text is the paper's embedding bag of words (``method="embedding"`` of
:func:`analysis.cooccurrence.fit_beta_px`: mean of d = 256 word embeddings, softmax over the target
vocabulary, minibatch Adam, best epoch on a validation tenth) fitted on the *whole* training part
(not a resample of it), so that few held-out words are unseen; an unseen word gets the model's
unconditional prediction. On the synthetic tasks it is the exact regression on a fresh sample.

Ties. :func:`analysis.agreement.top_k_match` counts ties in ``b`` in favour of the match. β^px
gives *different* words exactly the same value when the fit knows nothing that separates them (all
unseen words share the unconditional prediction; hapaxes of one example share their parameters), and
such a tie at the top would count as agreement by accident. Before the table, ties of β^px between
different words of an item are broken at random (:func:`break_word_ties`, seeded); the same word at
two positions stays tied. Kendall τ of that row is computed on the untouched β^px. Each run also
records the share of held-out source tokens unseen in the fit, the share of items whose β^px top is
tied between different words, and A(β^uf, β^px) without the tie break (``raw_A``).
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np

from analysis import stats
from analysis.claims import at_least, mean_claim
from analysis.sweep import seed_children, spawn_seed_records, spec

ROOT_SEED = 31003
ROWS = {"alpha_vs_beta_uf": "A(α, β^uf)", "beta_uf_vs_beta_px": "A(β^uf, β^px)",
        "delta_vs_beta_uf": "A(Δ, β^uf)"}
#: The paper's Table 1 (the authors' development runs, ×100). Classification ↔ IMDB, translation ↔ Multi30k.
PAPER = {"classification": {"alpha_vs_beta_uf": 52.6, "beta_uf_vs_beta_px": 81.6,
                            "delta_vs_beta_uf": 61.6, "A_hat": 5.6, "dataset": "IMDB"},
         "translation": {"alpha_vs_beta_uf": 31.0, "beta_uf_vs_beta_px": 34.4,
                         "delta_vs_beta_uf": 27.1, "A_hat": 7.1, "dataset": "Multi30k"}}
PAPER["text-classification"] = PAPER["classification"]
PAPER["text-translation"] = PAPER["translation"]
HELD_OUT_FRACTION = 0.2
XI_LEVELS = (0.5, 0.75, 0.9)
#: A ≫ Â, in points ×100. Fixed from the paper's table before any run: its smallest gap is
#: Multi30k A(Δ, β^uf) = 27.1 against Â = 7.1, i.e. 20 points; half of it still reads as "far above".
MIN_GAP = 10.0
GAP = at_least(MIN_GAP, "'A ≫ Â' (far above the random baseline) read as the mean over seeds of A − Â "
                        "at least 10 points (×100): half the smallest gap of the paper's table "
                        "(Multi30k A(Δ, β^uf) 27.1 vs Â 7.1)")

DESCRIPTION = (
    "Top-5% agreement A(a, b) (×100) between where the normally trained model attends (α), its "
    "saliency (Δ), the uniform-attention twin's KTIW probe (β^uf) and the bag-of-words prediction "
    "(β^px), with the shuffled baseline Â and Kendall τ; mean over seeds. The paper's claim "
    "reproduced is the ordering A ≫ Â (the paper's values are for IMDB and Multi30k with LSTMs).")

_SYNTHETIC = {
    "classification": {"vocab": 200, "length": 20, "min_length": 10, "keywords_per_class": 4,
                       "keyword_strength": 0.9, "noise": 0.1, "dim": 16, "lr": 1e-2, "batch": 64},
    "translation": {"vocab": 60, "length": 10, "dim": 32, "lr": 1e-2, "batch": 64},
}
_STEPS = {"quick": {"classification": 60, "translation": 60, "text": 30},
          "default": {"classification": 300, "translation": 200, "text": 300},
          "full": {"classification": 300, "translation": 400, "text": 300}}
#: β^px on real text: the paper's embedding bag of words (keyword arguments of fit_embedding_bag).
TEXT_BETA_PX = {"method": "embedding", "dim": 256, "lr": 1e-3, "batch_size": 128, "max_epochs": 30,
                "patience": 2, "validation": 0.1}
_SIZES = {"quick": {"seeds": 3, "eval_size": 120, "fit_size": 600, "n_boot": 50, "checkpoints": 6,
                    "text_eval_size": 120},
          "default": {"seeds": 3, "eval_size": 300, "fit_size": 3000, "n_boot": 200, "checkpoints": 20,
                      "text_eval_size": 500},
          "full": {"seeds": 10, "eval_size": 500, "fit_size": 5000, "n_boot": 500, "checkpoints": 20,
                   "text_eval_size": 2000}}
#: Bound on the (rows × T × n_out) log-probabilities a forward pass or a probe builds at once.
_EVAL_ELEMENTS = 4_000_000


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------

def _file_record(variable: str, path: str) -> dict:
    """Absolute path and SHA-256 of a user-supplied data file (named by its variable on error)."""
    try:
        p = Path(path).expanduser().resolve()
        if not p.is_file():
            raise ValueError(f"{variable} must name an existing file, got {path!r}")
        return {"path": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
    except OSError as exc:   # a name too long for the file system, no permission, a symlink loop
        shown = path if len(path) <= 80 else path[:77] + "..."
        raise ValueError(f"{variable} cannot be read ({exc.strerror or exc}): {shown!r}") from None


def text_options(env):
    """The shared text options parsed from ``E3_OPTIONS`` (data, never shell text); defaults when unset."""
    from miniattn.tasks.text_options import parse_text_options

    value = env.get("E3_OPTIONS", "")
    try:
        return parse_text_options(value)
    except (ValueError, SystemExit) as exc:   # argparse-style parsers exit; report it as a one-liner
        raise ValueError(f"E3_OPTIONS {value!r} is not valid text options: {exc}") from None


def _load(tc: dict):
    """The dataset of a text task config, read with its recorded :class:`TextOptions`."""
    from miniattn.tasks.text_options import TextOptions

    options = TextOptions(**tc["options"])
    if "file" in tc:
        return options.load_classification(_check_unchanged(tc["file"]))
    return options.load_parallel(_check_unchanged(tc["source"]), _check_unchanged(tc["target"]))


_CHECKED: dict = {}


def _check_loads(tc: dict, variables: str) -> None:
    """Load a text task's files once (cached by path, hash and options); one-line error naming them."""
    files = tuple((tc[k]["path"], tc[k]["sha256"]) for k in ("file", "source", "target") if k in tc)
    key = (files, tuple(sorted(tc["options"].items())))
    if key in _CHECKED:
        return
    try:
        data = _load(tc)
    except (ValueError, OSError, UnicodeError) as exc:
        detail = " ".join(str(exc).split())
        named = all(p in detail for p, _ in files)
        raise ValueError(f"{variables}: {detail}" if named else
                         f"{variables} ({', '.join(p for p, _ in files)}): {detail}") from None
    if len(data) < 2:
        raise ValueError(f"{variables} ({', '.join(p for p, _ in files)}): {len(data)} example(s) after "
                         "loading; E3 needs at least 2 (a training and a held-out part)")
    _CHECKED[key] = True


def text_tasks(env, profile: str = "default", check: bool = False) -> dict:
    """The real-text tasks requested through ``E3_TEXT`` / ``E3_PARALLEL_SOURCE`` + ``_TARGET``.

    Parameters
    ----------
    env : mapping
        The environment (``os.environ`` in :func:`runs`); ``E3_OPTIONS`` holds the text options.
    profile : {"quick", "default", "full"}
        Only the number of training steps depends on it.
    check : bool
        Load every file once now (:func:`runs` does), so that a file the loaders refuse is a one-line
        ``ValueError`` naming it here rather than a failure inside a worker.
    """
    steps = _STEPS[profile]["text"]
    tasks = {}
    text = env.get("E3_TEXT", "").strip()
    src, tgt = env.get("E3_PARALLEL_SOURCE", "").strip(), env.get("E3_PARALLEL_TARGET", "").strip()
    if bool(src) != bool(tgt):
        raise ValueError("E3_PARALLEL_SOURCE and E3_PARALLEL_TARGET must be given together, got "
                         f"source={src!r}, target={tgt!r}")
    if not (text or src):
        return tasks
    options = text_options(env).as_dict()
    common = {"options": options, "beta_px": dict(TEXT_BETA_PX), "dim": 32, "lr": 1e-2, "steps": steps,
              "batch": 64}
    if text:
        tasks["text-classification"] = {"file": _file_record("E3_TEXT", text), **common}
    if src:
        tasks["text-translation"] = {"source": _file_record("E3_PARALLEL_SOURCE", src),
                                     "target": _file_record("E3_PARALLEL_TARGET", tgt), **common}
    if check:
        for name, tc in tasks.items():
            _check_loads(tc, "E3_TEXT" if name == "text-classification" else
                         "E3_PARALLEL_SOURCE/E3_PARALLEL_TARGET")
    return tasks


def runs(profile: str) -> list:
    """One run per task and seed; the text tasks come from the environment (see the module docstring)."""
    sizes = _SIZES[profile]
    tasks = {name: dict(tc, steps=_STEPS[profile][name]) for name, tc in _SYNTHETIC.items()}
    tasks.update(text_tasks(os.environ, profile, check=True))
    seeds = spawn_seed_records(ROOT_SEED, sizes["seeds"])
    out = []
    for name, tc in tasks.items():
        for i, seed in enumerate(seeds):
            eval_size = sizes["text_eval_size"] if name.startswith("text-") else sizes["eval_size"]
            config = {"task_name": name, "task": tc, "eval_size": eval_size,
                      "fit_size": sizes["fit_size"], "checkpoints": sizes["checkpoints"],
                      "n_boot": sizes["n_boot"], "frac": 0.05, "xi_levels": list(XI_LEVELS),
                      "held_out_fraction": HELD_OUT_FRACTION, "seed": seed}
            out.append(spec(f"{name}-s{i:02d}", config))
    return out


# --------------------------------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------------------------------

def _check_unchanged(record: dict) -> str:
    """The path of a data file whose contents still match the SHA-256 in the run config."""
    data = Path(record["path"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise ValueError(f"{record['path']} changed after the run was configured (SHA-256 differs)")
    return record["path"]


def _task(name: str, tc: dict, held_out: float, seq):
    """The task of a run (its lexicon, keywords or held-out split drawn from ``seq``)."""
    from miniattn.tasks import HeldOutSplit, KeywordClassificationTask, TranslationTask

    rng = np.random.default_rng(seq)
    if name == "classification":
        return KeywordClassificationTask(vocab=tc["vocab"], length=tc["length"],
                                         keywords_per_class=tc["keywords_per_class"],
                                         min_length=tc["min_length"], keyword_strength=tc["keyword_strength"],
                                         noise=tc["noise"], rng=rng)
    if name == "translation":
        return TranslationTask(tc["vocab"], tc["vocab"], tc["length"], rng=rng)
    if name not in ("text-classification", "text-translation"):
        raise ValueError(f"unknown E3 task {name!r}")
    return HeldOutSplit(_load(tc), held_out, rng)


def _model(name: str, tc: dict, task, seq, uniform: bool):
    """The model of a run; the normal model and its twin get the same ``seq``, hence the same init."""
    from miniattn.models.classifier import AttentionClassifier
    from miniattn.models.seq2seq import Seq2SeqAttention

    rng = np.random.default_rng(seq)
    if name.endswith("classification"):
        return AttentionClassifier(task.input_vocab_size, task.output_vocab_size, dim=tc["dim"],
                                   uniform=uniform, rng=rng)
    return Seq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length,
                            task.target_length, dim=tc["dim"], uniform=uniform, rng=rng)


def break_word_ties(beta, sources, source_mask, rng: np.random.Generator) -> np.ndarray:
    """Break ties of β between *different* words of an item at random; the same word stays tied.

    Each (example, word) gets a uniform random key (every position of the word in the example the
    same key); within each item the positions are ranked by (β, key) and the rank (ties only where
    both are equal: the same word) replaces β. Only the order of β is used by the top-k match, so a
    tie between different words now counts as a match with the chance of a random tie break instead
    of always.

    Parameters
    ----------
    beta : float array (B, T, S), NaN at invalid positions
    sources : int array (B, S); source_mask : bool array (B, S)
    rng : numpy.random.Generator

    Returns
    -------
    ranks : float64 array (B, T, S): 0 for the lowest valid value, NaN where ``beta`` is NaN.
    """
    beta = np.asarray(beta, dtype=np.float64)
    sources, source_mask = np.asarray(sources), np.asarray(source_mask)
    if beta.ndim != 3 or sources.shape != (beta.shape[0], beta.shape[2]) or source_mask.shape != sources.shape:
        raise ValueError(f"beta (B, T, S) and sources, source_mask (B, S) must agree, got {beta.shape}, "
                         f"{sources.shape}, {source_mask.shape}")
    B, T, S = beta.shape
    ids = np.where(source_mask, sources, -1).astype(np.int64)
    _, word = np.unique(np.arange(B)[:, None] * (int(ids.max(initial=0)) + 2) + ids + 1, return_inverse=True)
    key = rng.random(int(word.max(initial=0)) + 1)[word.reshape(B, S)]
    valid = ~np.isnan(beta)
    primary = np.where(valid, beta, -np.inf)
    secondary = np.broadcast_to(key[:, None, :], beta.shape)
    order = np.lexsort((secondary, primary, ~valid), axis=-1)   # invalid last, then β, then key
    sp = np.take_along_axis(primary, order, axis=-1)
    sk = np.take_along_axis(secondary, order, axis=-1)
    new = np.ones(beta.shape, dtype=bool)
    new[..., 1:] = (sp[..., 1:] != sp[..., :-1]) | (sk[..., 1:] != sk[..., :-1])
    ranks = np.empty(beta.shape)
    np.put_along_axis(ranks, order, np.cumsum(new, axis=-1) - 1.0, axis=-1)
    return np.where(valid, ranks, np.nan)


def _batch_rows(batch, idx):
    """The examples ``idx`` of a batch (every field sliced on its first axis; widths kept)."""
    return type(batch)(*(None if f is None else np.asarray(f)[idx] for f in batch))


def _eval_rows(batch, n_out: int) -> int:
    """Examples per chunk so that a chunk's (rows × T × n_out) log-probabilities stay bounded."""
    from analysis.cooccurrence import batch_arrays

    T = batch_arrays(batch)[2].shape[1]
    return max(1, _EVAL_ELEMENTS // max(1, T * n_out))


def _in_chunks(fn, batch, rows: int) -> np.ndarray:
    """``fn(batch)`` computed on chunks of ``rows`` examples, concatenated on the first axis."""
    n = len(batch[0])
    if n <= rows:
        return fn(batch)
    return np.concatenate([fn(_batch_rows(batch, slice(lo, lo + rows))) for lo in range(0, n, rows)], axis=0)


def _probes_in_chunks(model, batch, rows: int):
    """:func:`analysis.probes.probe_all` on chunks of examples, joined (per-example quantities)."""
    from analysis.probes import Probes, probe_all

    n = len(batch[0])
    if n <= rows:
        return probe_all(model, batch)
    parts = [probe_all(model, _batch_rows(batch, slice(lo, lo + rows))) for lo in range(0, n, rows)]
    heads = None if parts[0].alpha_heads is None else np.concatenate([p.alpha_heads for p in parts], axis=1)
    return Probes(*(np.concatenate([getattr(p, f) for p in parts], axis=0) for f in ("alpha", "beta", "delta", "mask")),
                  alpha_heads=heads)


def _tie_diagnostics(beta, sources, source_mask) -> float:
    """Share of items whose top β value is shared by two different words."""
    valid = ~np.isnan(beta)
    top = np.max(np.where(valid, beta, -np.inf), axis=-1, keepdims=True)
    at_top = valid & (beta == top)
    ids = np.broadcast_to(np.where(source_mask, sources, -1)[:, None, :], beta.shape)
    first = np.where(at_top, ids, np.iinfo(np.int64).max).min(axis=-1, keepdims=True)
    other = np.any(at_top & (ids != first), axis=-1)
    items = valid.any(axis=-1)
    return float(other[items].mean()) if items.any() else float("nan")


def run(config: dict) -> dict:
    """Train the normal model and its uniform twin on one task and seed; agreement table and ξ.

    A training that diverges (:class:`miniattn.train.TrainingDiverged`) is a recorded failure
    (``diverged`` True, with the model, step and reason), left out of the claims and counted in the
    notes.
    """
    from analysis.agreement import bootstrap_ci, kendall_tau_items, top_k_match, valid_positions, xi, xi_star
    from analysis.cooccurrence import batch_arrays, beta_px_from_fit, fit_beta_px
    from analysis.probes import agreement_table
    from miniattn.optim import Adam
    from miniattn.train import TrainingDiverged, train

    tc, name = config["task"], config["task_name"]
    # Children: 0 task (lexicon / keywords / split), 1 initialisation (shared by both twins),
    # 2 training batches (shared), 3 held-out and fit batches, 4 shuffles and bootstrap,
    # 5 the embedding bag of words (text), 6 the tie break of β^px.
    task_seq, init_seq, data_seq, eval_seq, shuffle_seq, bow_seq, tie_seq = seed_children(config["seed"], 7)
    task = _task(name, tc, config["held_out_fraction"], task_seq)
    eval_rng = np.random.default_rng(eval_seq)
    # Real text: measured on the held-out part and β^px fitted on the whole training part;
    # a synthetic task: both on fresh samples of its own.
    held_out = getattr(task, "held_out_indices", None)
    if held_out is not None:
        # At most eval_size held-out examples (a seeded subset): the probes and the stashed
        # attentions of every checkpoint grow with it.
        pick = np.sort(eval_rng.permutation(held_out.size)[:config["eval_size"]])
        eval_batch, fit_batch = task.dataset.batch(held_out[pick]), task.dataset.batch(task.train_indices)
    else:
        eval_batch, fit_batch = task.sample(eval_rng, config["eval_size"]), task.sample(eval_rng, config["fit_size"])
    every = max(1, tc["steps"] // config["checkpoints"])

    attentions: list[np.ndarray] = []
    rows = _eval_rows(eval_batch, task.output_vocab_size)

    def stash(step, model, record):
        """The normal model's attention on the held-out batch at every evaluation (for ξ)."""
        attentions.append(_in_chunks(lambda b: np.asarray(model.forward(b).attention), eval_batch, rows))

    models, histories = {}, {}
    for label in ("normal", "uniform"):
        model = _model(name, tc, task, init_seq, uniform=label == "uniform")
        try:
            histories[label] = train(model, task, Adam(model.params, lr=tc["lr"]), steps=tc["steps"],
                                     batch_size=tc["batch"], seed=data_seq, eval_every=every,
                                     eval_batch=eval_batch, eval_size=min(256, rows),
                                     on_eval=stash if label == "normal" else None, progress=False)
        except TrainingDiverged as exc:
            return {"diverged": True, "diverged_model": label, "diverged_step": exc.step,
                    "diverged_reason": str(exc)}
        models[label] = model

    out: dict = {"diverged": False, "checkpoint_steps": histories["normal"].eval_steps()}
    for label, hist in histories.items():
        acc = hist.metric("token_accuracy")
        out[f"{label}_accuracy_curve"] = acc
        out[f"{label}_final_accuracy"] = float(acc[-1])
    perf = out["normal_accuracy_curve"]
    probes_normal, probes_uniform = (_probes_in_chunks(models[k], eval_batch, rows) for k in ("normal", "uniform"))
    out["xi"] = {f"{v:g}": xi(attentions, attentions[-1], perf, v, mask=probes_normal.mask, frac=config["frac"])
                 for v in config["xi_levels"]}
    out["xi_star"] = xi_star(perf)
    bp = dict(tc.get("beta_px", {"method": "regression"}))
    method = bp.pop("method")
    fit = fit_beta_px(fit_batch, task.input_vocab_size, task.output_vocab_size, method,
                      embedding=dict(bp, seed=bow_seq) if method == "embedding" else None)
    beta_px = beta_px_from_fit(fit, eval_batch)
    sources, source_mask, _, _ = batch_arrays(eval_batch)
    mask = probes_normal.mask & probes_uniform.mask
    used = valid_positions(probes_uniform.beta, beta_px, mask)
    token_mask = source_mask & mask.any(axis=1)
    out["beta_px_fit"] = dict(fit.info, method=method)
    out["beta_px_unseen_tokens"] = float(np.mean(~fit.seen[sources[token_mask]])) if token_mask.any() else 0.0
    out["beta_px_tied_top"] = _tie_diagnostics(np.where(used, beta_px, np.nan), sources, source_mask)
    raw_A = float(np.nanmean(top_k_match(probes_uniform.beta, beta_px, used, config["frac"])))
    tie_rng = np.random.default_rng(tie_seq)
    ranked = break_word_ties(np.where(used, beta_px, np.nan), sources, source_mask, tie_rng)
    table = agreement_table(probes_normal, probes_uniform, ranked, np.random.default_rng(shuffle_seq),
                            frac=config["frac"], n_boot=config["n_boot"])
    # Kendall τ of the β^px row on β^px itself (the tie break is only for the top-k match).
    tau_px = kendall_tau_items(probes_uniform.beta, beta_px, used)
    if not np.all(np.isnan(tau_px)):
        table["beta_uf_vs_beta_px"]["tau"] = bootstrap_ci(tau_px, tie_rng, n_boot=config["n_boot"])
    for row in ROWS:
        t = table[row]
        out[row] = {"A": t["A"].mean, "A_low": t["A"].low, "A_high": t["A"].high, "A_hat": t["A_hat"].mean,
                    "tau": t["tau"].mean, "chance": t["chance"], "n_items": t["n_items"]}
    out["beta_uf_vs_beta_px"]["raw_A"] = raw_A
    return out


# --------------------------------------------------------------------------------------------------
# claims, tables, notes, figures (from the stored results only)
# --------------------------------------------------------------------------------------------------

def _finished(results, task: str) -> list[dict]:
    """The data of the runs of ``task`` that did not diverge."""
    return [r.data for r in results.where(task_name=task).records if not r.data.get("diverged")]


def _summary(values, bounds=None) -> dict | None:
    """:func:`analysis.stats.summarize` of the finite values; None when there is none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return stats.summarize(finite, bounds=bounds) if finite else None


def _fmt(s: dict | None, key: str = "mean", f: str = ".1f") -> str:
    v = None if s is None else s.get(key)
    return "–" if v is None or not math.isfinite(v) else format(v, f)


def claims(results) -> list:
    """Per task and row: the mean over seeds of A − Â (×100) against :data:`GAP`."""
    out = []
    for task in results.distinct("task_name"):
        data, paper = _finished(results, task), PAPER[task]
        for row, label in ROWS.items():
            gaps = [100 * (d[row]["A"] - d[row]["A_hat"]) for d in data]
            out.append(mean_claim(
                f"{task}: {label} far above its shuffle baseline Â (A − Â, ×100, mean over seeds)",
                f"A = {paper[row]}, Â = {paper['A_hat']} ({paper['dataset']}, LSTM, ×100)",
                gaps, GAP, bounds=(-100.0, 100.0), fmt=".1f",
                note=f"{len(data)} of {len(results.where(task_name=task))} runs finished (not diverged)"))
    return out


def tables(results) -> list[dict]:
    """The agreement table and the ξ table, means over the seeds that did not diverge."""
    rows, xi_rows = [], []
    for task in results.distinct("task_name"):
        data, paper = _finished(results, task), PAPER[task]
        for row, label in ROWS.items():
            a = _summary([100 * d[row]["A"] for d in data], (0.0, 100.0))
            ah = _summary([100 * d[row]["A_hat"] for d in data], (0.0, 100.0))
            chance = _summary([100 * d[row]["chance"] for d in data])
            tau = _summary([d[row]["tau"] for d in data])
            ci = f"[{_fmt(a, 'ci_low')}, {_fmt(a, 'ci_high')}]"
            rows.append([task, label, _fmt(a), ci, _fmt(ah), _fmt(chance), _fmt(tau, f=".3f"), len(data),
                         paper[row], paper["A_hat"]])
        xi_cells = []
        for v in XI_LEVELS:
            vals = [d["xi"].get(f"{v:g}") for d in data]
            s = _summary(vals)
            defined = sum(x is not None and math.isfinite(x) for x in vals)
            xi_cells.append(f"{_fmt(s, f='.3f')} ({defined}/{len(data)})")
        xi_rows.append([task] + xi_cells + [_fmt(_summary([d["xi_star"] for d in data]), f=".3f"),
                                            _fmt(_summary([d["normal_final_accuracy"] for d in data]), f=".3f"),
                                            _fmt(_summary([d["uniform_final_accuracy"] for d in data]), f=".3f")])
    return [
        {"title": "Agreement (×100), mean over seeds", "source": results.source,
         "columns": ["task", "pair", "A", "95% CI", "Â", "k/n", "Kendall τ", "seeds", "paper A", "paper Â"],
         "rows": rows},
        {"title": "ξ(v): accuracy at the first checkpoint whose attention agrees with the final attention "
                  "more than v (mean over the seeds where some checkpoint does; count in brackets)",
         "source": results.source,
         "columns": ["task"] + [f"ξ({v:g})" for v in XI_LEVELS] + ["ξ*", "final acc. (normal)",
                                                                  "final acc. (uniform twin)"],
         "rows": xi_rows},
    ]


def notes(results) -> list[str]:
    out = ["The paper's values are for IMDB (classification) and Multi30k (translation) with LSTM "
           "encoders; our tasks are synthetic, so only the ordering A ≫ Â is expected to carry over. "
           "Each row's claim compares A with that row's own shuffle baseline Â (b shuffled within "
           "each item), whose expectation is k/n.",
           "ξ uses the normal model's own final attention as the reference (the reference model of "
           "the paper is the normally trained model)."]
    diverged = [r for r in results.records if r.data.get("diverged")]
    if diverged:
        out.append(f"{len(diverged)} run(s) diverged and are left out of the claims and tables: "
                   + "; ".join(f"{r.name} ({r.data['diverged_model']} model, step {r.data['diverged_step']})"
                               for r in diverged))
    for task in results.distinct("task_name"):
        if task.startswith("text-"):
            tc = results.where(task_name=task).records[0].config["task"]
            files = [tc[k]["path"] for k in ("file", "source", "target") if k in tc]
            rec = results.where(task_name=task).records[0]
            first = rec.data if not rec.data.get("diverged") else {}
            fit = first.get("beta_px_fit", {})
            out.append(f"{task}: user-supplied text ({', '.join(files)}), text options {tc.get('options')}; "
                       f"measured on a seeded subset of at most {rec.config['eval_size']} examples of a fixed "
                       f"{HELD_OUT_FRACTION:.0%} held-out split, trained on the rest; β^px: "
                       f"{fit.get('method', '?')} bag of words fitted on the whole training part "
                       f"({fit.get('n_train', '?')} training + {fit.get('n_val', 0)} validation examples, best "
                       f"epoch {fit.get('best_epoch', '–')} of {fit.get('epochs', '–')}); held-out source tokens "
                       f"unseen in the fit {100 * first.get('beta_px_unseen_tokens', float('nan')):.1f}%, items "
                       f"with a β^px top tied between different words "
                       f"{100 * first.get('beta_px_tied_top', float('nan')):.1f}% (first seed; such ties are "
                       "broken at random). No paper value is expected to match beyond the ordering A ≫ Â.")
    if results.records:
        c = results.records[0].config
        n_seeds = len({(r.config["seed"]["entropy"], tuple(r.config["seed"]["spawn_key"])) for r in results})
        out.append(f"Profile {results.profile}: {n_seeds} seeds per task, held-out batch {c['eval_size']} "
                   f"(synthetic tasks), bag-of-words fit on {c['fit_size']} examples, {c['n_boot']} "
                   "bootstrap replicates per run.")
    return out


def figures(results) -> list[Path]:
    """Bar chart of A per pair and task with the shuffled baseline and the paper's values."""
    from analysis import plotting as P

    tasks = results.distinct("task_name")
    fig, axes = P.new_figure(1, max(1, len(tasks)), width=4.2)
    for j, task in enumerate(tasks):
        ax, data = axes[0, j], _finished(results, task)
        xs = np.arange(len(ROWS))
        summ = [_summary([100 * d[r]["A"] for d in data], (0.0, 100.0)) for r in ROWS]
        a = np.array([s["mean"] if s else np.nan for s in summ])
        lo = np.array([s["ci_low"] if s and math.isfinite(s["ci_low"]) else m for s, m in zip(summ, a)])
        hi = np.array([s["ci_high"] if s and math.isfinite(s["ci_high"]) else m for s, m in zip(summ, a)])
        ax.bar(xs, a, color=P.COLORS["subset"], alpha=0.8, label="A (simulation), 95% CI")
        ax.errorbar(xs, a, yerr=[a - lo, hi - a], fmt="none", color="black", capsize=3, linewidth=1)
        ah = [_summary([100 * d[r]["A_hat"] for d in data]) for r in ROWS]
        ax.plot(xs, [s["mean"] if s else np.nan for s in ah], "v", color=P.COLORS["permutation"],
                label="Â (shuffled baseline)")
        ax.plot(xs, [PAPER[task][r] for r in ROWS], "_", color=P.COLORS["theory"], markersize=18,
                markeredgewidth=2, label="paper (IMDB / Multi30k)")
        ax.set_xticks(xs, list(ROWS.values()))
        # Headroom above 100 keeps the legend (first panel only) clear of the bars.
        ax.set_ylim(0, 135)
        ax.set_yticks(np.arange(0, 101, 20))
        P.finish_axes(ax, xlabel="pair", ylabel="top-5% agreement (×100)", title=task, legend=j == 0,
                      loc="upper center", ncol=2, fontsize=7)
    return [P.save_figure(fig, "e3_agreement", root=results.root)]


# --------------------------------------------------------------------------------------------------
# make: the options stamp
# --------------------------------------------------------------------------------------------------

def options_stamp(env) -> str:
    """The text of ``results/.e3-options``: ``E3_OPTIONS`` as given and as parsed (or why not).

    make reruns E3's compute step when this text changes; the value is read from the environment
    (data), never pasted into a recipe.
    """
    import json

    value = env.get("E3_OPTIONS", "")
    try:
        parsed: object = text_options(env).as_dict()
    except ValueError as exc:
        parsed = f"invalid: {exc}"
    return json.dumps({"E3_OPTIONS": value, "options": parsed}, sort_keys=True) + "\n"


def write_options_stamp(path, env=None) -> bool:
    """Write :func:`options_stamp` to ``path`` if it differs from the file's text; True if written."""
    from miniattn.io import atomic_write_text

    text = options_stamp(os.environ if env is None else env)
    target = Path(path)
    if target.is_file() and target.read_text(encoding="utf-8", errors="replace") == text:
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, text)
    return True


if __name__ == "__main__":   # python -m analysis.experiments.e3_agreement options-stamp PATH
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "options-stamp":
        print("usage: python -m analysis.experiments.e3_agreement options-stamp PATH", file=sys.stderr)
        raise SystemExit(2)
    write_options_stamp(sys.argv[2])
