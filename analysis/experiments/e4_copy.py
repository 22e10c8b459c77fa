"""E4 — copying permutations (L = V = 40) vs subsets (40 of 60) with the seq2seq attention model.

Paper (§5.1): with every input a permutation of the same 40 tokens, the bag of words carries no
information, KTIW cannot form in stage 1, and the model "frequently fails" to learn to copy; drawing
40 distinct tokens from 60 is learned "every time" (20 seeds, batch 128 of fresh samples per step,
Adam lr 1e-3, 200 steps, hidden size 256, success = token accuracy > 0.95).

Each run trains :class:`miniattn.models.seq2seq.Seq2SeqAttention` on :class:`miniattn.tasks.CopyTask`
(with <bos>/<eos>) through :func:`miniattn.train.train` and records held-out learning curves of
token accuracy, attention accuracy (argmax α at the aligned source position) and loss. Settings:

* ``adam`` — the paper's optimiser and schedule (Adam, lr 1e-3, 200 steps, batch 128);
* ``sgd`` — plain SGD (the theory's gradient flow) on the same budget, side by side (SPEC §8).

Seeds: run i of an arm uses ``SeedSequence(ROOT_SEED, spawn_key=(i,))``; child 0 initialises the
model, child 1 draws the training batches and the held-out batch. The two arms use the same seeds.
"""

from __future__ import annotations

import time

import numpy as np

from analysis.experiments import common as C

EXP = "e4"
MODULE = "analysis.experiments.e4_copy"
CODE_VERSION = 3
ROOT_SEED = 20210312
FIGURES = ["figures/e4_curves.png", "figures/e4_success.png"]
ARMS = {"permutation": 40, "subset": 60}  # arm -> V, at L = 40
LENGTH = 40
SUCCESS = 0.95


def profile_config(profile: str) -> dict:
    """Settings of each profile. The default profile is scaled down to fit the 15-minute budget."""
    profile = C.get_profile(profile)
    full = profile == "full"
    # The paper's size (d = 256) in both profiles: at d = 64 Adam does not learn even subsets in
    # 200 steps (token accuracy 0.87 in a probe), so a smaller default would change the result.
    # The default profile saves time with the float32 path (a step costs 0.47x the float64 one at
    # d = 256) and fewer seeds for the secondary SGD setting; the paper's 20 seeds per distribution
    # are kept for its own Adam setting.
    dtype = "float64" if full else "float32"
    settings = [
        {"name": "adam", "optimizer": "adam", "lr": 1e-3, "steps": 200, "batch": 128, "dim": 256,
         "seeds": 20, "dtype": dtype},
        {"name": "sgd", "optimizer": "sgd", "lr": 20.0, "steps": 200, "batch": 128, "dim": 256,
         "seeds": 20 if full else 2, "dtype": dtype},
    ]
    return {"experiment": EXP, "code_version": CODE_VERSION, "profile": profile, "length": LENGTH,
            "arms": ARMS, "root_seed": ROOT_SEED, "settings": settings,
            "eval_every": 10, "eval_size": 256 if full else 128, "success_threshold": SUCCESS}


def run_one(config: dict) -> dict:
    """Train one seq2seq model on one copy distribution; return its learning curves."""
    from miniattn.models.seq2seq import Seq2SeqAttention
    from miniattn.optim import make_optimizer
    from miniattn.tasks import CopyTask
    from miniattn.train import TrainingDiverged, train

    init_seq, train_seq = C.seed_children(config["seed"], 2)
    mode = "permutation" if config["vocab"] == config["length"] else "subset"
    task = CopyTask(config["length"], config["vocab"], mode)
    model = Seq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length,
                             task.target_length, dim=config["dim"], rng=np.random.default_rng(init_seq),
                             dtype=np.dtype(config.get("dtype", "float64")))
    opt = make_optimizer(config["optimizer"], model.params, lr=config["lr"])
    try:
        hist = train(model, task, opt, steps=config["steps"], batch_size=config["batch"], seed=train_seq,
                     eval_every=config["eval_every"], eval_size=config["eval_size"], progress=False)
    except TrainingDiverged as exc:
        # A diverged run is a failed run, recorded as such (not a crash of the whole sweep).
        n = config["steps"] // config["eval_every"] + 1
        nan = np.full(n, np.nan)
        return {"steps": np.arange(n) * config["eval_every"], "token_accuracy": nan, "attention_accuracy": nan,
                "loss": nan, "train_loss": np.full(1, np.nan), "final_token_accuracy": 0.0,
                "final_attention_accuracy": 0.0, "success": False, "steps_to_success": None,
                "diverged": str(exc)}
    acc = hist.metric("token_accuracy")
    steps = hist.eval_steps()
    above = np.flatnonzero(acc > config["success_threshold"])
    return {
        "steps": steps, "token_accuracy": acc, "attention_accuracy": hist.metric("attention_accuracy"),
        "loss": hist.metric("loss"), "train_loss": np.asarray(hist.train_loss),
        "final_token_accuracy": float(acc[-1]),
        "final_attention_accuracy": float(hist.metric("attention_accuracy")[-1]),
        "success": bool(acc[-1] > config["success_threshold"]),
        "steps_to_success": int(steps[above[0]]) if above.size else None,
        "diverged": None,
    }


def _runs(cfg: dict) -> list[C.Run]:
    runs = []
    for st in cfg["settings"]:
        seeds = C.spawn_seed_records(cfg["root_seed"], st["seeds"])
        for arm, vocab in cfg["arms"].items():
            for i, seed in enumerate(seeds):
                conf = {"experiment": EXP, "code_version": CODE_VERSION, "setting": st["name"],
                        "arm": arm, "length": cfg["length"], "vocab": vocab,
                        "optimizer": st["optimizer"], "lr": st["lr"], "steps": st["steps"],
                        "batch": st["batch"], "dim": st["dim"], "dtype": st["dtype"],
                        "eval_every": cfg["eval_every"], "eval_size": cfg["eval_size"], "success_threshold": cfg["success_threshold"],
                        "seed": seed}
                runs.append(C.keyed_run(f"{st['name']}-{arm}-s{i:02d}", conf))
    return runs


def _group(recs: list[dict], setting: str, arm: str) -> list[dict]:
    return [r for r in recs if r["config"]["setting"] == setting and r["config"]["arm"] == arm]


def compute(profile: str | None = None, *, root=None, executor=None) -> dict:
    """Run (or reuse) every seed of every setting and arm; write ``results/e4/summary.json``."""
    started = time.time()
    cfg = profile_config(C.get_profile(profile))
    runs = _runs(cfg)
    recs = C.run_sweep(EXP, runs, run_one, root=root, executor=executor)
    groups, rows, claims = {}, [], []
    src = f"{EXP}/summary.json"
    for st in cfg["settings"]:
        for arm in cfg["arms"]:
            g = _group(recs, st["name"], arm)
            succ = C.success_summary([r["data"]["success"] for r in g])
            acc = C.summarize([r["data"]["final_token_accuracy"] for r in g])
            att = C.summarize([r["data"]["final_attention_accuracy"] for r in g])
            t = [r["data"]["steps_to_success"] for r in g if r["data"]["steps_to_success"] is not None]
            groups[f"{st['name']}/{arm}"] = {"success": succ,
                                            "diverged": sum(bool(r["data"].get("diverged")) for r in g), "final_token_accuracy": acc,
                                            "final_attention_accuracy": att,
                                            "median_steps_to_success": float(np.median(t)) if t else None,
                                            "runs": [r["name"] for r in g]}
            rows.append([st["name"], f"{arm} (V={cfg['arms'][arm]})", f"{succ['k']}/{succ['n']}",
                         f"[{succ['ci'][0]:.2f}, {succ['ci'][1]:.2f}]",
                         f"{acc['mean']:.3f} ± {acc['std']:.3f}" if acc["n"] > 1 else f"{acc['mean']:.3f}",
                         f"{att['mean']:.3f}", groups[f"{st['name']}/{arm}"]["median_steps_to_success"]])
        perm, sub = groups[f"{st['name']}/permutation"]["success"], groups[f"{st['name']}/subset"]["success"]
        what = (f"{st['optimizer']} lr={st['lr']:g}, {st['steps']} steps, batch {st['batch']}, "
                f"d={st['dim']}, {st['dtype']}")
        claims.append({"claim": f"subsets (40 of 60) are learned every time [{what}]: success rate",
                       "paper": "20/20", "ours": sub["rate"], "ci": sub["ci"], "fmt": ".2f",
                       "holds": sub["k"] == sub["n"], "source": src})
        claims.append({"claim": f"permutations (L=V=40) frequently fail [{what}]: success rate",
                       "paper": "frequently fail", "ours": perm["rate"], "ci": perm["ci"], "fmt": ".2f",
                       # "Frequently" is read as: at least a quarter of the seeds fail.
                       "holds": perm["rate"] <= 0.75,
                       "note": "holds = at least 25% of seeds fail (our reading of 'frequently')"
                       if st["name"] == cfg["settings"][0]["name"] else None,
                       "source": src})
        claims.append({"claim": f"the contrast: subset rate − permutation rate, Wilson CIs disjoint [{what}]",
                       "paper": "> 0", "ours": sub["rate"] - perm["rate"], "ci": None, "fmt": ".2f",
                       "holds": sub["ci"][0] > perm["ci"][1], "source": src})
    notes = []
    if cfg["profile"] != "full":
        notes.append("Default profile (scaled down to fit the 15-minute budget): "
                     + ", ".join(f"{st['seeds']} seeds per arm for {st['name']}" for st in cfg["settings"])
                     + " (the paper: 20), held-out batch 128, float32 arithmetic; the model size and "
                     "schedule are the paper's. FULL=1 runs 20 seeds per arm in both settings in float64.")
    notes.append("SGD uses lr = 20 (the paper gives no SGD setting; in a probe lr 1 and 5 left subsets "
                 "unlearned after 200 steps, lr 20 learned them by step ~60, lr 100 diverged). "
                 "Diverged runs count as failures: "
                 + ", ".join(f"{k}: {v['diverged']}" for k, v in groups.items()) + ".")
    summary = {
        "title": "E4", "figures": FIGURES, "claims": claims, "groups": groups,
        "description": (
            "Success (held-out token accuracy > 0.95 after the last step) of the seq2seq attention "
            "model on copying, per seed, with Wilson 95% intervals; learning curves of token "
            "accuracy and attention accuracy (argmax α at the aligned source position). Adam is the "
            "paper's optimiser; SGD is the gradient flow the two-stage theory describes."),
        "tables": [{"title": "Per setting and arm", "source": src,
                    "columns": ["setting", "arm", "successes", "Wilson 95% CI", "final token acc.",
                                "final attention acc.", "median steps to acc. > 0.95"],
                    "rows": rows}],
        "notes": notes,
    }
    C.write_summary(EXP, summary, config=cfg, runs=recs, started=started, root=root)
    return summary


def plot(*, root=None) -> list:
    """Figures: learning curves (token and attention accuracy) and success rates with Wilson CIs."""
    from analysis import plotting as P

    s = C.load_summary(EXP, root)
    store = C.ResultStore(EXP, root)
    cfg = s["config"]
    settings = cfg["settings"]
    fig, axes = P.new_figure(len(settings), 2, width=4.2, height=3.0)
    for i, st in enumerate(settings):
        for arm in cfg["arms"]:
            data = [store.load_run(n)["data"] for n in s["groups"][f"{st['name']}/{arm}"]["runs"]]
            steps = data[0]["steps"]  # every run of a group evaluates at the same steps
            for j, key in enumerate(("token_accuracy", "attention_accuracy")):
                ax = axes[i, j]
                curves = np.array([d[key] for d in data if np.all(np.isfinite(d[key]))])
                if curves.size == 0:
                    continue
                for c in curves:
                    ax.plot(steps, c, color=P.COLORS[arm], alpha=0.25, linewidth=0.7)
                mean, lo, hi = P.band_from_runs(curves, bounds=(0.0, 1.0))
                P.sim_band(ax, steps, mean, lo, hi, label=f"{arm} (V={cfg['arms'][arm]}), mean ± 95% CI",
                           color=P.COLORS[arm])
                if key == "token_accuracy":
                    ax.axhline(cfg["success_threshold"], color=P.COLORS["grey"], linestyle=":", linewidth=0.8)
                P.finish_axes(ax, xlabel=P.STEPS_LABEL,
                              ylabel="token accuracy" if j == 0 else "attention accuracy",
                              title=f"{st['optimizer']} lr={st['lr']:g}, d={st['dim']}, "
                                    f"{st.get('dtype', 'float64')}, {st['seeds']} seeds/arm",
                              loc="center right" if j == 0 else "best")
    paths = [P.save_figure(fig, "e4_curves", root=root)]

    fig, axes = P.new_figure(1, 1, width=4.5)
    ax = axes[0, 0]
    xs = np.arange(len(settings))
    for k, arm in enumerate(cfg["arms"]):
        rates = np.array([s["groups"][f"{st['name']}/{arm}"]["success"]["rate"] for st in settings])
        cis = np.array([s["groups"][f"{st['name']}/{arm}"]["success"]["ci"] for st in settings])
        P.sim_points(ax, xs + (k - 0.5) * 0.2, rates, f"{arm} (V={cfg['arms'][arm]})",
                     yerr=np.vstack([rates - cis[:, 0], cis[:, 1] - rates]), color=P.COLORS[arm],
                     marker="o")
    ax.set_xticks(xs, [f"{st['optimizer']} lr={st['lr']:g}" for st in settings])
    ax.set_ylim(-0.05, 1.05)
    P.finish_axes(ax, xlabel="optimiser", ylabel="success rate (probability), Wilson 95% CI",
                  title="copy L=40: " + ", ".join(f"{st['name']} {st['seeds']} seeds/arm" for st in settings))
    paths.append(P.save_figure(fig, "e4_success", root=root))
    return paths


def main(argv=None) -> int:
    """CLI: ``python -m analysis.experiments.e4_copy {compute,plot,all} [--profile P]``."""
    return C.experiment_cli(MODULE, argv)


if __name__ == "__main__":
    raise SystemExit(main())
