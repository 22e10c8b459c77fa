"""E2 — two stages: KTIW first, attention later (keyword classification and copying 40 of 60).

For each task and seed a normally trained model and its uniform-attention twin are trained by
:func:`miniattn.train.train` from the same initialisation on the same batches (the same ``seed``).
At every evaluation, on a fixed held-out batch, the probes of :func:`analysis.probes.probe_all`
give two bounded quantities at the *salient* word (classification: the planted label words; copy:
the aligned source position):

* **KTIW** — the mean probability of the gold token under one-hot attention to the salient word,
  ``exp β`` of the KTIW probe there (a probability, so it saturates instead of growing without end);
* **attention** — the attention weight on the salient word(s).

Each quantity's *progress* is the fraction of its final change made so far; the stage time is the
step at which the progress first reaches ½, linearly interpolated between evaluations (every step
through the first third of training, sparser after). The two-stage account predicts
``t_attention − t_ktiw > 0``; a tie is not a pass. We also record the uniform twin's KTIW and the
top-5% agreement A(α, β^px) of the attention with the bag-of-words prediction
(:func:`analysis.cooccurrence.beta_px_for_batch`).

Models: :class:`~miniattn.models.classifier.AttentionClassifier` (Adam) on
:class:`~miniattn.tasks.KeywordClassificationTask`; :class:`~miniattn.models.seq2seq.Seq2SeqAttention`
(SGD, the theory's gradient flow) on :class:`~miniattn.tasks.CopyTask` (L = 40, V = 60).
"""

from __future__ import annotations

import math

import numpy as np

from analysis.claims import Criterion, at_least, mean_claim
from analysis.sweep import seed_children, spawn_seed_records, spec

ROOT_SEED = 22222
DESCRIPTION = (
    "Progress of the KTIW probe (gold-token probability under one-hot attention to the salient/aligned "
    "word) and of the attention on that word over training, for the normal model; the uniform-attention "
    "twin's KTIW; and the agreement A(α, β^px) of attention with the bag-of-words prediction.")

#: The progress at which a stage counts as under way: half of its final change.
HALF = 0.5
#: "KTIW first" means t_attention − t_ktiw > 0 strictly: a tie (both at the same step) is not a pass.
STRICTLY_POSITIVE = Criterion("> 0", math.nextafter(0.0, math.inf), math.inf,
                              "'KTIW first, attention later' read as a positive mean lead of the KTIW "
                              "half-change time over the attention's; a tie is not a pass")
#: The uniform twin learns KTIW: the gold-token probability under one-hot attention is higher at the
#: salient word than at the other words at the end of training (strictly).
TWIN_LEARNS = Criterion("> 0", math.nextafter(0.0, math.inf), math.inf,
                        "'the uniform model learns KTIW' read as a positive final gap between the salient "
                        "and the other words' gold-token probability under one-hot attention")
#: "attention follows β^px (≫ Â)" read as a final agreement of at least twice the shuffled
#: baseline's expectation k/n (k = ⌈0.05·n⌉ of the n positions of an item).
AGREEMENT_OVER_CHANCE = 2.0


def _tasks(profile: str) -> dict:
    if profile == "quick":
        return {"classification": {"vocab": 40, "length": 10, "min_length": 6, "keywords_per_class": 2,
                                   "keyword_strength": 0.9, "noise": 0.1, "dim": 8, "optimizer": "adam",
                                   "lr": 3e-2, "steps": 60, "batch": 32},
                "copy": {"length": 10, "vocab": 20, "dim": 32, "optimizer": "sgd", "lr": 5.0, "steps": 100,
                         "batch": 64},
                "translation": {"vocab": 30, "length": 6, "dim": 16, "optimizer": "adam", "lr": 1e-2,
                                "steps": 60, "batch": 32}}
    return {"classification": {"vocab": 200, "length": 20, "min_length": 10, "keywords_per_class": 4,
                               "keyword_strength": 0.9, "noise": 0.1, "dim": 16, "optimizer": "adam",
                               "lr": 1e-2, "steps": 300, "batch": 64},
            "copy": {"length": 40, "vocab": 60, "dim": 256 if profile == "full" else 128, "optimizer": "sgd",
                     "lr": 20.0, "steps": 200, "batch": 128},
            # The synthetic translation task of E3 (random lexicon with one-to-many words, local
            # reordering, untranslated source words and target function words; a true alignment).
            "translation": {"vocab": 60, "length": 10, "dim": 32, "optimizer": "adam", "lr": 1e-2,
                            "steps": 200, "batch": 64}}


def runs(profile: str) -> list:
    """Three tasks (classification, copy, translation) over the seeds of the profile."""
    seeds = {"quick": 2, "default": 10, "full": 20}[profile]
    sizes = {"quick": (32, 300), "default": (128, 3000), "full": (256, 3000)}[profile]
    out = []
    for tname, tc in _tasks(profile).items():
        # Evaluations: every step through the first third of training, every 2nd through the second
        # (the stage changes happen there: the copy task's transition near 40% of its steps), every 5th after.
        steps = tc["steps"]
        schedule = [[steps // 3, 1], [2 * steps // 3, 2], [steps, 5]]
        for i, seed in enumerate(spawn_seed_records(ROOT_SEED, seeds)):
            out.append(spec(f"{tname}-s{i:02d}", {
                "task_name": tname, "task": tc, "schedule": schedule, "eval_size": sizes[0],
                "fit_size": sizes[1], "frac": 0.05, "seed": seed}))
    return out


def _eval_steps(steps: int, schedule) -> list[int]:
    """The evaluation steps of ``schedule``: segments ``[until, every]`` from step 0 (plus the last step)."""
    chosen, start = {0, steps}, 0
    for until, every in schedule:
        chosen.update(range(start, min(until, steps) + 1, every))
        start = until
    return sorted(chosen)


def _build(name: str, tc: dict, task_seed, init_seed, uniform: bool, task=None):
    from miniattn.models.classifier import AttentionClassifier
    from miniattn.models.seq2seq import Seq2SeqAttention
    from miniattn.tasks import CopyTask, KeywordClassificationTask, TranslationTask

    if name == "classification":
        task = task or KeywordClassificationTask(
            vocab=tc["vocab"], length=tc["length"], keywords_per_class=tc["keywords_per_class"],
            min_length=tc["min_length"], keyword_strength=tc["keyword_strength"], noise=tc["noise"],
            rng=np.random.default_rng(task_seed))
        model = AttentionClassifier(task.input_vocab_size, task.output_vocab_size, dim=tc["dim"],
                                    uniform=uniform, rng=np.random.default_rng(init_seed))
    elif name == "translation":
        task = task or TranslationTask(tc["vocab"], tc["vocab"], tc["length"], rng=np.random.default_rng(task_seed))
        model = Seq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length,
                                 task.target_length, dim=tc["dim"], uniform=uniform,
                                 rng=np.random.default_rng(init_seed))
    else:
        task = task or CopyTask(tc["length"], tc["vocab"], "subset")
        model = Seq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length,
                                 task.target_length, dim=tc["dim"], uniform=uniform,
                                 rng=np.random.default_rng(init_seed))
    return task, model


def _salient(batch, mask: np.ndarray) -> np.ndarray:
    """(B, T, S) bool: the salient (classification) or aligned (copy) source positions of each item."""
    if getattr(batch, "salient", None) is not None and hasattr(batch, "labels"):
        sal = np.asarray(batch.salient, dtype=bool)[:, None, :]
    else:
        sal = np.asarray(batch.alignment)[:, :, None] == np.arange(mask.shape[2])[None, None, :]
    return sal & mask


def _stage_quantities(probes, salient: np.ndarray) -> dict:
    """Gold-token probability under one-hot attention (salient vs other words) and attention on the salient words.

    Averaged over the items (example, output position) that have a salient word; the "other"
    probability over the items that also have another word.
    """
    mask = probes.mask
    other = mask & ~salient
    has_sal, has_other = salient.any(-1), salient.any(-1) & other.any(-1)
    gold = np.exp(np.where(mask, probes.beta, -np.inf))           # exp β; 0 where masked
    p_sal = (gold * salient).sum(-1) / np.maximum(salient.sum(-1), 1)
    p_other = (gold * other).sum(-1) / np.maximum(other.sum(-1), 1)
    a_sal = np.where(salient, probes.alpha, 0.0).sum(-1)
    return {"ktiw_salient": float(p_sal[has_sal].mean()), "ktiw_other": float(p_other[has_other].mean()),
            "attention_salient": float(a_sal[has_sal].mean())}


def progress(values: np.ndarray) -> np.ndarray | None:
    """The fraction of its final change each value has made, ``(v − v_0)/(v_end − v_0)``; None without change."""
    values = np.asarray(values, dtype=np.float64)
    change = values[-1] - values[0]
    # A change at round-off level has no direction: no stage time can be read from it.
    if not np.isfinite(change) or abs(change) <= 1e-12 * max(1.0, abs(values[0])):
        return None
    return (values - values[0]) / change


def crossing_time(steps: np.ndarray, frac: np.ndarray | None, level: float = HALF) -> float | None:
    """First step at which ``frac`` reaches ``level``, linearly interpolated between evaluations."""
    if frac is None:
        return None
    hit = np.flatnonzero(frac >= level)
    if not hit.size:
        return None
    i = int(hit[0])
    if i == 0:
        return float(steps[0])
    f0, f1 = frac[i - 1], frac[i]
    return float(steps[i - 1] + (level - f0) / (f1 - f0) * (steps[i] - steps[i - 1]))


def _first(t_ktiw, t_attention) -> str:
    if t_ktiw is None or t_attention is None:
        return "undetermined"
    return "KTIW" if t_ktiw < t_attention else "attention" if t_attention < t_ktiw else "tie"


def run(config: dict) -> dict:
    """Train both twins on one task and seed; record the stage quantities at every evaluation."""
    from analysis.agreement import agreement, top_k_size
    from analysis.cooccurrence import beta_px_for_batch
    from analysis.probes import probe_all
    from miniattn.optim import make_optimizer
    from miniattn.train import train

    tc, name = config["task"], config["task_name"]
    task_seed, init_seed, data_seed, eval_seed = seed_children(config["seed"], 4)
    task, normal = _build(name, tc, task_seed, init_seed, uniform=False)
    _, twin = _build(name, tc, task_seed, init_seed, uniform=True, task=task)
    ev_rng = np.random.default_rng(eval_seed)
    held_out = task.sample(ev_rng, config["eval_size"])
    beta_px = beta_px_for_batch(task.sample(ev_rng, config["fit_size"]), held_out,
                                task.input_vocab_size, task.output_vocab_size)
    mask = probe_all(normal, held_out).mask
    salient = _salient(held_out, mask)
    n = mask.sum(-1)[mask.any(-1)]
    chance = float(np.mean(top_k_size(n, config["frac"]) / n))   # expectation of the shuffled baseline Â

    def normal_metrics(model, batch):
        pr = probe_all(model, batch)
        return {**_stage_quantities(pr, salient), "agreement_px": agreement(pr.alpha, beta_px, pr.mask, config["frac"])}

    def twin_metrics(model, batch):
        return _stage_quantities(probe_all(model, batch), salient)

    out: dict = {"chance": chance, "source_positions": int(mask.shape[2])}
    dense = _eval_steps(tc["steps"], config["schedule"])
    # The twin feeds only its final KTIW and a figure panel: the sparse grid is enough.
    sparse = list(range(0, tc["steps"] + 1, config["schedule"][-1][1]))
    for label, model, fn, grid in (("normal", normal, normal_metrics, dense), ("uniform", twin, twin_metrics, sparse)):
        opt = make_optimizer(tc["optimizer"], model.params, lr=tc["lr"])
        # The same seed for both twins: the same training batches, drawn from its child 0.
        hist = train(model, task, opt, steps=tc["steps"], batch_size=tc["batch"], seed=data_seed,
                     eval_batch=held_out, eval_steps=grid, metrics_fn=fn, progress=False)
        out["steps" if label == "normal" else "twin_steps"] = hist.eval_steps().astype(np.float64)
        for key in ("ktiw_salient", "ktiw_other") + (("attention_salient",) if label == "normal" else ()):
            out[f"{label}_{key}"] = hist.metric(key)
        out[f"{label}_accuracy"] = hist.metric("token_accuracy")
        if label == "normal":
            out["agreement_alpha_beta_px"] = hist.metric("agreement_px")
    steps = out["steps"]
    out["ktiw_progress"] = progress(out["normal_ktiw_salient"])
    out["attention_progress"] = progress(out["normal_attention_salient"])
    t_k = crossing_time(steps, out["ktiw_progress"])
    t_a = crossing_time(steps, out["attention_progress"])
    for key in ("ktiw_progress", "attention_progress"):
        if out[key] is None:   # no change at all: stored as NaN (arrays go to the .npz)
            out[key] = np.full(steps.shape, np.nan)
    out.update({
        "t_ktiw": t_k, "t_attention": t_a, "lead": None if t_k is None or t_a is None else t_a - t_k,
        "first": _first(t_k, t_a),
        "twin_ktiw_gap": float(out["uniform_ktiw_salient"][-1] - out["uniform_ktiw_other"][-1]),
        "attention_gain": float(out["normal_attention_salient"][-1] - out["normal_attention_salient"][0]),
        "final_agreement": float(out["agreement_alpha_beta_px"][-1]),
        "final_accuracy": float(out["normal_accuracy"][-1]),
        "final_accuracy_uniform": float(out["uniform_accuracy"][-1]),
    })
    return out


def _schedule_words(results, task: str) -> str:
    schedule = results.where(task_name=task).records[0].config["schedule"]
    return "every " + ", then ".join(f"{every} step(s) up to {until}" for until, every in schedule)


def claims(results) -> list:
    out = []
    for task in results.distinct("task_name"):
        sel = results.where(task_name=task)
        firsts = sel.values("first")
        counts = ", ".join(f"{k}: {firsts.count(k)}" for k in ("KTIW", "attention", "tie", "undetermined")
                           if firsts.count(k))
        out.append(mean_claim(
            f"{task}: KTIW moves first — t_attention − t_ktiw, the lead (steps) of the KTIW probe's "
            "half-change over the attention's on the salient word", "KTIW first, attention later",
            sel.values("lead"), STRICTLY_POSITIVE, fmt=".1f",
            note=f"which moves first per seed — {counts}; times interpolated between evaluations "
                 f"({_schedule_words(results, task)})"))
        out.append(mean_claim(
            f"{task}: the uniform-attention twin learns KTIW — final gold-token probability under one-hot "
            "attention, salient word minus the other words", "> 0", sel.values("twin_ktiw_gap"), TWIN_LEARNS,
            bounds=(-1.0, 1.0), fmt=".2f"))
        chance = float(np.mean(sel.values("chance")))
        n_pos, frac = sel.values("source_positions")[0], sel.records[0].config["frac"]
        # Every copy item has all n positions, so k/n is one number (classification lengths vary).
        words = ("" if task != "copy" else
                 f"; copy has n = {n_pos} source positions, so k = ⌈{frac:g}·{n_pos}⌉ = "
                 f"{math.ceil(round(frac * n_pos, 9))} and Â ≈ k/n")
        out.append(mean_claim(
            f"{task}: attention follows the bag-of-words prediction — final A(α, β^px)", "≫ Â ≈ k/n",
            sel.values("final_agreement"),
            at_least(AGREEMENT_OVER_CHANCE * chance,
                     f"'≫ Â' read as at least {AGREEMENT_OVER_CHANCE:g}× the shuffled baseline's expectation "
                     f"k/n = {chance:.3f}"),
            bounds=(0.0, 1.0), fmt=".2f", note=f"shuffled baseline Â ≈ mean k/n = {chance:.3f}{words}"))
    return out


def _fmt(t) -> str:
    return "–" if t is None else f"{t:.1f}"


def tables(results) -> list:
    rows = []
    for r in results.records:
        d = r.data
        rows.append([r.config["task_name"], r.name, _fmt(d["t_ktiw"]), _fmt(d["t_attention"]), _fmt(d["lead"]),
                     d["first"], f"{d['attention_gain']:.3f}", f"{d['final_accuracy']:.3f}",
                     f"{d['final_accuracy_uniform']:.3f}"])
    return [{"title": "Stage times per seed (steps at which each progress reaches ½) and outcomes",
             "columns": ["task", "run", "t_KTIW", "t_attention", "t_attention − t_KTIW", "moves first",
                         "attention gain on salient word", "final acc. (normal)", "final acc. (uniform twin)"],
             "rows": rows}]


def notes(results) -> list:
    out = [f"Progress = fraction of the final change; the stage time is where it first reaches {HALF:g}, "
           "linearly interpolated between evaluations (" +
           "; ".join(f"{t}: {_schedule_words(results, t)}" for t in results.distinct("task_name")) + ")."]
    if results.profile != "full":
        n = len(results.where(task_name=results.distinct("task_name")[0]))
        out.append(f"{results.profile.capitalize()} profile: {n} seeds per task (full: 20 seeds, copy hidden size 256).")
    return out


def figures(results) -> list:
    """Per task: both progresses with the stage times, KTIW (normal and twin), attention, A(α, β^px)."""
    from analysis import plotting as P

    tasks = results.distinct("task_name")
    fig, axes = P.new_figure(len(tasks), 4, width=3.5, height=2.8)
    for i, task in enumerate(tasks):
        data = results.where(task_name=task).values
        steps, twin_steps = data("steps")[0], data("twin_steps")[0]
        ax = axes[i, 0]
        for key, tkey, label, color in (("ktiw_progress", "t_ktiw", "KTIW probe", P.COLORS["sgd"]),
                                        ("attention_progress", "t_attention", "attention", P.COLORS["adam"])):
            # One line per seed: a t-band over a few seeds would hide the crossing each time marks.
            for j, (curve, t) in enumerate(zip(data(key), data(tkey))):
                ax.plot(steps, curve, color=color, linewidth=1.0, alpha=0.8, label=label if j == 0 else None)
                if t is not None:
                    ax.axvline(t, color=color, linestyle=":", linewidth=0.8)
        ax.axhline(HALF, color=P.COLORS["grey"], linewidth=0.8)
        P.finish_axes(ax, xlabel=P.STEPS_LABEL, ylabel="fraction of the final change", title=f"{task}: progress")
        ax = axes[i, 1]
        for x, key, label, color in ((steps, "normal_ktiw_salient", "normal, salient word", P.COLORS["adam"]),
                                     (twin_steps, "uniform_ktiw_salient", "uniform twin, salient", P.COLORS["uniform"]),
                                     (twin_steps, "uniform_ktiw_other", "uniform twin, other words", P.COLORS["grey"])):
            P.sim_band(ax, x, *P.band_from_runs(data(key), bounds=(0.0, 1.0)), label=label, color=color)
        P.finish_axes(ax, xlabel=P.STEPS_LABEL, ylabel="gold prob. under one-hot attention", title="KTIW probe")
        ax = axes[i, 2]
        P.sim_band(ax, steps, *P.band_from_runs(data("normal_attention_salient"), bounds=(0.0, 1.0)),
                   label="normal model", color=P.COLORS["adam"])
        P.finish_axes(ax, xlabel=P.STEPS_LABEL, ylabel="attention on salient word (probability)", title="attention")
        ax = axes[i, 3]
        P.sim_band(ax, steps, *P.band_from_runs(data("agreement_alpha_beta_px"), bounds=(0.0, 1.0)),
                   label="A(α, β^px)", color=P.COLORS["subset"])
        ax.axhline(float(np.mean(data("chance"))), color=P.COLORS["grey"], linestyle="--", linewidth=0.8,
                   label="Â ≈ k/n (shuffled)")
        P.finish_axes(ax, xlabel=P.STEPS_LABEL, ylabel="top-5% agreement", title="attention vs β^px")
    return [P.save_figure(fig, "e2_two_stages", root=results.root)]
