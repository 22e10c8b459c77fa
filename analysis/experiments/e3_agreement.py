"""E3 — agreement between attention, the uniform twin's KTIW probe, β^px and saliency (paper Table 1).

For each task and seed: a normally trained model and its uniform-attention twin are trained from the
same initialisation on the same batches; on a held-out batch we collect α and Δ of the normal model,
β^uf of the twin (:func:`analysis.probes.probe_all`) and β^px of a bag-of-words regression fitted on
a separate batch (:func:`analysis.cooccurrence.beta_px_for_batch`), and compute the paper's
agreement table (:func:`analysis.probes.agreement_table`): A(α, β^uf), A(β^uf, β^px), A(Δ, β^uf),
the shuffled baseline Â and Kendall τ. ξ(v) (:func:`analysis.agreement.xi`) is the normal model's
accuracy at the first checkpoint whose attention agrees with its own final attention more than v;
ξ* is its best accuracy.

Tasks: keyword classification (:class:`~miniattn.tasks.KeywordClassificationTask`,
:class:`~miniattn.models.classifier.AttentionClassifier`) and synthetic translation
(:class:`~miniattn.tasks.TranslationTask`, :class:`~miniattn.models.seq2seq.Seq2SeqAttention`).
The paper's numbers are for IMDB and Multi30k with LSTMs; the claim reproduced is the ordering
A ≫ Â, with a t-interval over seeds.

Real text (SPEC §8: "real text when the user supplies files"): with ``E3_TEXT=labels.tsv`` (a
``label<TAB>text`` or ``.csv`` file, :func:`miniattn.tasks.load_classification_file`) and/or
``E3_PARALLEL_SOURCE=src.txt E3_PARALLEL_TARGET=tgt.txt`` (line-aligned,
:func:`miniattn.tasks.load_parallel_files`) in the environment (``make reproduce E3_TEXT=...``), E3
adds the tasks ``text-classification`` / ``text-translation``. Each file enters the run config with
its SHA-256, so an edited file is a new run. A fixed 20% of the examples (a seeded permutation) is
held out: the agreement table and accuracies are measured on it, training and the bag-of-words fit
draw from the rest.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np

from analysis.experiments import common as C
from miniattn.tasks import HeldOutSplit

EXP = "e3"
MODULE = "analysis.experiments.e3_agreement"
CODE_VERSION = 1
ROOT_SEED = 31003
FIGURES = ["figures/e3_agreement.png"]
ROWS = {"alpha_vs_beta_uf": "A(α, β^uf)", "beta_uf_vs_beta_px": "A(β^uf, β^px)",
        "delta_vs_beta_uf": "A(Δ, β^uf)"}
# SPEC §6: the authors' development runs (×100). Classification ↔ IMDB, translation ↔ Multi30k.
PAPER = {"classification": {"alpha_vs_beta_uf": 52.6, "beta_uf_vs_beta_px": 81.6,
                            "delta_vs_beta_uf": 61.6, "A_hat": 5.6},
         "translation": {"alpha_vs_beta_uf": 31.0, "beta_uf_vs_beta_px": 34.4,
                         "delta_vs_beta_uf": 27.1, "A_hat": 7.1}}
PAPER["text-classification"] = PAPER["classification"]
PAPER["text-translation"] = PAPER["translation"]
HELD_OUT_FRACTION = 0.2
XI_LEVELS = (0.5, 0.75, 0.9)


def profile_config(profile: str) -> dict:
    """Task/model/training settings; the default profile uses fewer seeds and steps."""
    profile = C.get_profile(profile)
    full = profile == "full"
    tasks = {
        "classification": {"vocab": 200, "length": 20, "min_length": 10, "keywords_per_class": 4,
                           "keyword_strength": 0.9, "noise": 0.1, "dim": 16, "lr": 1e-2,
                           "steps": 300, "batch": 64},
        "translation": {"vocab": 60, "length": 10, "dim": 32, "lr": 1e-2,
                        "steps": 400 if full else 200, "batch": 64},
    }
    tasks.update(text_tasks(os.environ))
    return {"experiment": EXP, "code_version": CODE_VERSION, "profile": profile, "tasks": tasks,
            "seeds": 10 if full else 3, "root_seed": ROOT_SEED, "eval_size": 500 if full else 300,
            "fit_size": 5000 if full else 3000, "checkpoints": 20, "n_boot": 500 if full else 200,
            "frac": 0.05}


def _file_record(variable: str, path: str) -> dict:
    """Absolute path and SHA-256 of a user-supplied data file (named by its variable on error)."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise ValueError(f"{variable} must name an existing file, got {path!r}")
    return {"path": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}


def text_tasks(env) -> dict:
    """The real-text tasks requested through ``E3_TEXT`` / ``E3_PARALLEL_SOURCE`` + ``_TARGET``."""
    tasks = {}
    text = env.get("E3_TEXT", "").strip()
    if text:
        tasks["text-classification"] = {"file": _file_record("E3_TEXT", text), "lowercase": True,
                                        "min_count": 1, "max_length": 200, "dim": 32, "lr": 1e-2,
                                        "steps": 300, "batch": 64}
    src, tgt = env.get("E3_PARALLEL_SOURCE", "").strip(), env.get("E3_PARALLEL_TARGET", "").strip()
    if bool(src) != bool(tgt):
        raise ValueError("E3_PARALLEL_SOURCE and E3_PARALLEL_TARGET must be given together, got "
                         f"source={src!r}, target={tgt!r}")
    if src:
        tasks["text-translation"] = {"source": _file_record("E3_PARALLEL_SOURCE", src),
                                     "target": _file_record("E3_PARALLEL_TARGET", tgt), "lowercase": True,
                                     "min_count": 1, "max_length": 50, "dim": 32, "lr": 1e-2,
                                     "steps": 300, "batch": 64}
    return tasks


def _check_unchanged(record: dict) -> str:
    """The path of a data file whose contents still match the SHA-256 in the run config."""
    data = Path(record["path"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise ValueError(f"{record['path']} changed after the run was configured (SHA-256 differs)")
    return record["path"]


def _build(task_name: str, tc: dict, seqs, uniform: bool):
    from miniattn.models.classifier import AttentionClassifier
    from miniattn.models.seq2seq import Seq2SeqAttention
    from miniattn.tasks import KeywordClassificationTask, TranslationTask

    if task_name == "classification":
        task = KeywordClassificationTask(vocab=tc["vocab"], length=tc["length"],
                                         keywords_per_class=tc["keywords_per_class"],
                                         min_length=tc["min_length"],
                                         keyword_strength=tc["keyword_strength"], noise=tc["noise"],
                                         rng=np.random.default_rng(seqs[0]))
        model = AttentionClassifier(task.input_vocab_size, task.output_vocab_size, dim=tc["dim"],
                                    uniform=uniform, rng=np.random.default_rng(seqs[1]))
    elif task_name == "text-classification":
        from miniattn.tasks import load_classification_file

        data = load_classification_file(_check_unchanged(tc["file"]), lowercase=tc["lowercase"],
                                        min_count=tc["min_count"], max_length=tc["max_length"])
        task = HeldOutSplit(data, HELD_OUT_FRACTION, np.random.default_rng(seqs[0]))
        model = AttentionClassifier(task.input_vocab_size, task.output_vocab_size, dim=tc["dim"],
                                    uniform=uniform, rng=np.random.default_rng(seqs[1]))
    elif task_name == "text-translation":
        from miniattn.tasks import load_parallel_files

        data = load_parallel_files(_check_unchanged(tc["source"]), _check_unchanged(tc["target"]),
                                   lowercase=tc["lowercase"], min_count=tc["min_count"],
                                   max_length=tc["max_length"])
        task = HeldOutSplit(data, HELD_OUT_FRACTION, np.random.default_rng(seqs[0]))
        model = Seq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length,
                                 task.target_length, dim=tc["dim"], uniform=uniform,
                                 rng=np.random.default_rng(seqs[1]))
    else:
        task = TranslationTask(tc["vocab"], tc["vocab"], tc["length"], rng=np.random.default_rng(seqs[0]))
        model = Seq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length,
                                 task.target_length, dim=tc["dim"], uniform=uniform,
                                 rng=np.random.default_rng(seqs[1]))
    return task, model


def run_one(config: dict) -> dict:
    """Train the normal model and its uniform twin on one task and seed; agreement table and ξ."""
    from analysis.agreement import xi, xi_star
    from analysis.cooccurrence import beta_px_for_batch
    from analysis.probes import agreement_table, probe_all
    from miniattn.optim import Adam
    from miniattn.train import evaluate

    tc, name = config["task"], config["task_name"]
    # Children: 0 task (lexicon / keywords), 1 initialisation (shared by both twins),
    # 2 training batches (shared), 3 held-out and fit batches, 4 shuffles and bootstrap.
    seqs = C.seed_children(config["seed"], 5)
    task, normal = _build(name, tc, seqs, uniform=False)
    _, twin = _build(name, tc, seqs, uniform=True)
    eval_rng = np.random.default_rng(seqs[3])
    # Real text: measure on the held-out part; synthetic tasks: a fresh sample.
    if isinstance(task, HeldOutSplit):
        eval_batch = task.held_out_batch()
    else:
        eval_batch = task.sample(eval_rng, config["eval_size"])
    fit_batch = task.sample(eval_rng, config["fit_size"])
    every = max(1, tc["steps"] // config["checkpoints"])
    out: dict = {}
    for label, model in (("normal", normal), ("uniform", twin)):
        data = np.random.default_rng(seqs[2])  # identical batches for both twins
        opt = Adam(model.params, lr=tc["lr"])
        ckpt_steps, att, perf = [], [], []
        for k in range(tc["steps"] + 1):  # a loop over training steps, not inside a pass
            if k % every == 0 or k == tc["steps"]:
                ev = evaluate(model, eval_batch)
                ckpt_steps.append(k)
                perf.append(ev["token_accuracy"])
                if label == "normal":
                    att.append(np.asarray(model.forward(eval_batch).attention))
            if k < tc["steps"]:
                opt.step(model.loss_and_grads(task.sample(data, tc["batch"]))[1])
        out[f"{label}_accuracy_curve"] = np.array(perf)
        out[f"{label}_final_accuracy"] = float(perf[-1])
        if label == "normal":
            out["checkpoint_steps"] = np.array(ckpt_steps)
            mask = np.asarray(probe_all(normal, eval_batch).mask)
            out["xi"] = {f"{v:g}": xi(att, att[-1], np.array(perf), v, mask=mask, frac=config["frac"])
                         for v in XI_LEVELS}
            out["xi_star"] = xi_star(np.array(perf))
    beta_px = beta_px_for_batch(fit_batch, eval_batch, task.input_vocab_size, task.output_vocab_size)
    table = agreement_table(probe_all(normal, eval_batch), probe_all(twin, eval_batch), beta_px,
                            np.random.default_rng(seqs[4]), frac=config["frac"], n_boot=config["n_boot"])
    for row in ROWS:
        t = table[row]
        out[row] = {"A": t["A"].mean, "A_low": t["A"].low, "A_high": t["A"].high,
                    "A_hat": t["A_hat"].mean, "tau": t["tau"].mean, "chance": t["chance"],
                    "n_items": t["n_items"]}
    return out


def _runs(cfg: dict) -> list[C.Run]:
    runs = []
    seeds = C.spawn_seed_records(cfg["root_seed"], cfg["seeds"])
    for tname, tc in cfg["tasks"].items():
        for i, seed in enumerate(seeds):
            conf = {"experiment": EXP, "code_version": CODE_VERSION, "task_name": tname, "task": tc,
                    "eval_size": cfg["eval_size"], "fit_size": cfg["fit_size"],
                    "checkpoints": cfg["checkpoints"], "n_boot": cfg["n_boot"], "frac": cfg["frac"],
                    "seed": seed}
            runs.append(C.keyed_run(f"{tname}-s{i:02d}", conf))
    return runs


def compute(profile: str | None = None, *, root=None, executor=None) -> dict:
    """Run (or reuse) every task and seed; write ``results/e3/summary.json``."""
    started = time.time()
    cfg = profile_config(C.get_profile(profile))
    recs = C.run_sweep(EXP, _runs(cfg), run_one, root=root, executor=executor)
    src = f"{EXP}/summary.json"
    stats, claims, rows, xi_rows = {}, [], [], []
    for tname in cfg["tasks"]:
        g = [r["data"] for r in recs if r["config"]["task_name"] == tname]
        st = {}
        for row in ROWS:
            st[row] = {k: C.summarize([100 * d[row][k] for d in g], bounds=(0.0, 100.0))
                       for k in ("A", "A_hat", "chance")}
            st[row]["tau"] = C.summarize([d[row]["tau"] for d in g])
        st["normal_final_accuracy"] = C.summarize([d["normal_final_accuracy"] for d in g], bounds=(0, 1))
        st["uniform_final_accuracy"] = C.summarize([d["uniform_final_accuracy"] for d in g], bounds=(0, 1))
        st["xi"] = {v: C.summarize([d["xi"][v] for d in g if d["xi"][v] is not None])
                    if any(d["xi"][v] is not None for d in g) else None for v in g[0]["xi"]}
        st["xi_star"] = C.summarize([d["xi_star"] for d in g])
        stats[tname] = st
        for row, label in ROWS.items():
            a, ah = st[row]["A"], st[row]["A_hat"]
            holds = bool(a["n"] > 1 and a["ci_low"] > ah["ci_high"]) if a["n"] > 1 else bool(a["mean"] > ah["mean"])
            claims.append({"claim": f"{tname}: {label} ≫ Â (×100; mean over {a['n']} seeds, t-CI)",
                           "paper": PAPER[tname][row], "ours": a["mean"],
                           "ci": [a["ci_low"], a["ci_high"]], "fmt": ".1f", "holds": holds,
                           "source": src})
            rows.append([tname, label, f"{a['mean']:.1f}", f"[{a['ci_low']:.1f}, {a['ci_high']:.1f}]",
                         f"{ah['mean']:.1f}", f"{st[row]['chance']['mean']:.1f}",
                         f"{st[row]['tau']['mean']:.3f}", PAPER[tname][row]])
        ah = st["alpha_vs_beta_uf"]["A_hat"]
        claims.append({"claim": f"{tname}: shuffled baseline Â ≈ k/n (×100)", "paper": PAPER[tname]["A_hat"],
                       "ours": ah["mean"], "ci": [ah["ci_low"], ah["ci_high"]], "fmt": ".1f",
                       "holds": None, "source": src})
        xi_rows.append([tname] + [f"{st['xi'][v]['mean']:.3f}" if st["xi"][v] else "–" for v in st["xi"]]
                       + [f"{st['xi_star']['mean']:.3f}", f"{st['normal_final_accuracy']['mean']:.3f}",
                          f"{st['uniform_final_accuracy']['mean']:.3f}"])
    notes = ["The paper's values are for IMDB (classification) and Multi30k (translation) with LSTM "
             "encoders; our tasks are synthetic, so only the ordering A ≫ Â is expected to carry "
             "over. 'Holds' = the t-interval of A over seeds lies entirely above that of Â.",
             "ξ uses the normal model's own final attention as the reference (the reference model "
             "of the paper is the normally trained model)."]
    for tname, tc in cfg["tasks"].items():
        if tname.startswith("text-"):
            files = [tc[k]["path"] for k in ("file", "source", "target") if k in tc]
            notes.append(f"{tname}: user-supplied text ({', '.join(files)}); measured on a fixed "
                         f"{HELD_OUT_FRACTION:.0%} held-out split, trained on the rest; no paper value "
                         "is expected to match beyond the ordering A ≫ Â.")
    if cfg["profile"] != "full":
        notes.append(f"Default profile: {cfg['seeds']} seeds per task (FULL=1: 10), held-out batch "
                     f"{cfg['eval_size']}, bag-of-words fit on {cfg['fit_size']} examples.")
    summary = {
        "title": "E3", "figures": FIGURES, "claims": claims, "stats": stats,
        "description": (
            "Top-5% agreement A(a, b) (×100) between where the normally trained model attends (α), "
            "its saliency (Δ), the uniform-attention twin's KTIW probe (β^uf) and the bag-of-words "
            "prediction (β^px), with the shuffled baseline Â and Kendall τ; mean over seeds."),
        "tables": [
            {"title": "Agreement (×100), mean over seeds", "source": src,
             "columns": ["task", "pair", "A", "95% CI", "Â", "k/n", "Kendall τ", "paper A"], "rows": rows},
            {"title": "ξ(v): accuracy at the first checkpoint whose attention agrees with the final "
                      "attention more than v", "source": src,
             "columns": ["task"] + [f"ξ({v:g})" for v in XI_LEVELS] + ["ξ*", "final acc. (normal)",
                                                                    "final acc. (uniform twin)"],
             "rows": xi_rows}],
        "notes": notes,
    }
    C.write_summary(EXP, summary, config=cfg, runs=recs, started=started, root=root)
    return summary


def plot(*, root=None) -> list:
    """Bar chart of A per pair and task with the shuffled baseline."""
    from analysis import plotting as P

    s = C.load_summary(EXP, root)
    fig, axes = P.new_figure(1, len(s["stats"]), width=4.2)
    for j, (tname, st) in enumerate(s["stats"].items()):
        ax = axes[0, j]
        xs = np.arange(len(ROWS))
        a = np.array([st[r]["A"]["mean"] for r in ROWS])
        lo = np.array([st[r]["A"]["ci_low"] if st[r]["A"]["ci_low"] is not None else st[r]["A"]["mean"] for r in ROWS])
        hi = np.array([st[r]["A"]["ci_high"] if st[r]["A"]["ci_high"] is not None else st[r]["A"]["mean"] for r in ROWS])
        ax.bar(xs, a, color=P.COLORS["subset"], alpha=0.8, label="A (simulation), 95% CI")
        ax.errorbar(xs, a, yerr=[a - lo, hi - a], fmt="none", color="black", capsize=3, linewidth=1)
        ah = np.array([st[r]["A_hat"]["mean"] for r in ROWS])
        ax.plot(xs, ah, "v", color=P.COLORS["permutation"], label="Â (shuffled baseline)")
        pap = [PAPER[tname][r] for r in ROWS]
        ax.plot(xs, pap, "_", color=P.COLORS["theory"], markersize=18, markeredgewidth=2,
                label="paper (IMDB / Multi30k)")
        ax.set_xticks(xs, list(ROWS.values()))
        ax.set_ylim(0, 105)
        P.finish_axes(ax, xlabel="pair", ylabel="top-5% agreement (×100)", title=tname)
    return [P.save_figure(fig, "e3_agreement", root=root)]


def main(argv=None) -> int:
    """CLI: ``python -m analysis.experiments.e3_agreement {compute,plot,all} [--profile P]``."""
    return C.experiment_cli(MODULE, argv)


if __name__ == "__main__":
    raise SystemExit(main())
