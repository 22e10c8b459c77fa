"""E6 — multi-head rescue of the permutation copy task (paper §5.2).

Protocol. A fixed *base* initialisation gives every parameter outside the attention heads
(embeddings, positions, output layer). Each candidate head i has its own initial score and value
matrices (from its own seed). Phase 1 trains every candidate *alone* (a one-head model: base + head
i) on the permutation task with several data seeds and classifies it: **good** if its token accuracy
exceeds 0.95 within the budget for every data seed, **bad** if it ends below 0.6 for every data seed
(otherwise unclassified). Phase 2 trains 8-head models (contexts averaged) assembled from the
classified heads with the same base: *8 bad*, *7 bad + 1 good* and *8 random* candidates, each trial
a fresh draw of heads and data seed. Heads are drawn WITHOUT replacement (a duplicated head would
start, and stay, identical to its copy); the random arm draws from the whole candidate pool, which
is larger than the number of heads, so its trials differ in their heads. An arm that cannot be
formed (too few heads of a needed class) has no trials and its claim is undecided, saying why.
The paper's expectation: all-bad combinations fail like their members, while one good head, or
random heads (likely to include a good one), make the 8-head model learn — better learning
dynamics, not more expressiveness.

Phases and the run store. Each phase-1 run is one (head, data seed) training. E6 is a *staged*
experiment: once the phase-1 runs are stored, ``runs(profile, results)`` classifies the candidates
from them and lists the phase-2 trials, each with the heads drawn for it (and their classes) in its
config. A trial is therefore keyed by exactly the heads it trains, and nothing is retrained. The
claims check that every trial's recorded classes agree with the stored phase-1 runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis import stats
from analysis.claims import Claim, at_least, at_most, rate_claim
from analysis.sweep import seed_record, spec

ROOT_SEED = 66066
ARMS = ("8 bad", "7 bad + 1 good", "8 random")
#: Arm -> (bad heads, good heads) it needs out of ``heads``; None = drawn from the whole pool.
_NEEDS = {"8 bad": lambda H: (H, 0), "7 bad + 1 good": lambda H: (H - 1, 1), "8 random": lambda H: None}
#: Trials per arm below which a claim is marked as resting on too few trials.
ENOUGH_TRIALS = 20

# The paper's words, read once (none of these was tuned to an outcome).
FAIL_LIKE_MEMBERS = at_most(0.25, "'fail like their members' read as: at most a quarter of the trials "
                                  "learn (each member alone fails for every data seed)")
LEARN = at_least(0.75, "'learn' read as: at least three quarters of the trials learn")
EXPECT = {"8 bad": ("fail like their members", FAIL_LIKE_MEMBERS),
          "7 bad + 1 good": ("learn", LEARN), "8 random": ("learn (likely to include a good head)", LEARN)}

DESCRIPTION = (
    "Permutation copying with single heads classified good/bad on a fixed base initialisation, then "
    "8-head models assembled (heads drawn without replacement) from 8 bad heads, 7 bad + 1 good, or "
    "8 random heads of the whole candidate pool; success = token accuracy > 0.95 within the budget.")

_SHARED = ("length", "dim", "optimizer", "lr", "steps", "batch", "eval_every", "eval_size", "root_seed",
           "dtype")
_POOL = ("candidates", "data_seeds", "heads", "good", "bad")


def _profile(profile: str) -> dict:
    """Sizes of each profile.

    Default (the evidence): the paper's task, L = V = 40, at the smallest width and learning rate at
    which both classes of head are common. Measured before these runs on a fixed base (float32,
    Adam, 200 steps, batch 128; candidate heads × 3 data seeds): d = 64 lr 1e-3: 0/8 candidates good;
    d = 64 lr 1.5e-3: 5/12 good, 5/12 bad; d = 64 lr 2e-3: 8/12 good, 4/12 bad; d = 64 lr 3e-3: 5/5
    good; d = 128 lr 1e-3: 6/8 good, 2/8 bad. So lr 1.5e-3 at d = 64, with a pool of 32 so that 8 bad
    heads can be drawn without replacement. FULL=1 is the paper's width d = 256 (lr 1e-3, float64).
    """
    if profile == "quick":
        # A smoke version on a tiny model: the protocol end to end in seconds, not evidence.
        # (Chosen so that both classes occur and every arm can be formed: 3 good, 8 bad of 16.)
        return {"length": 8, "dim": 16, "optimizer": "adam", "lr": 2e-2, "steps": 60, "batch": 32,
                "eval_every": 10, "eval_size": 64, "candidates": 16, "data_seeds": 2, "heads": 8,
                "trials": 2, "good": 0.95, "bad": 0.6, "root_seed": ROOT_SEED, "dtype": "float64"}
    full = profile == "full"
    return {"length": 40, "dim": 256 if full else 64, "optimizer": "adam",
            "lr": 1e-3 if full else 1.5e-3, "steps": 200, "batch": 128, "eval_every": 10,
            "eval_size": 256 if full else 128, "candidates": 32, "data_seeds": 3,
            "heads": 8, "trials": 50 if full else 20, "good": 0.95, "bad": 0.6, "root_seed": ROOT_SEED,
            "dtype": "float64" if full else "float32"}


def _data_seed(root_seed: int, data_seed: int) -> dict:
    return seed_record(np.random.SeedSequence(root_seed, spawn_key=(2, int(data_seed))))


def head_config(shared: dict, head: int, data_seed: int) -> dict:
    """The config of the phase-1 run of candidate ``head`` alone with data seed ``data_seed``."""
    return {**{k: shared[k] for k in _SHARED}, "phase": "head", "head": int(head), "data_seed": int(data_seed),
            "seed": _data_seed(shared["root_seed"], data_seed)}


def runs(profile: str, results=None) -> list:
    """Phase 1 (every candidate × data seed); once its results exist, phase 2 (every arm × trial).

    A staged experiment (:func:`analysis.experiments.framework._staged_sweep`): a trial's config
    holds the heads drawn for it from the phase-1 classes, so a trial is keyed by exactly the heads
    it trains, and a change of phase 1 recomputes the trials it affects.
    """
    cfg = _profile(profile)
    out = [spec(f"head{i:02d}-data{s}", head_config(cfg, i, s))
           for i in range(cfg["candidates"]) for s in range(cfg["data_seeds"])]
    if results is None:
        return out
    labels = _stored_labels(results, cfg)
    for arm in ARMS:
        if _NEEDS[arm](cfg["heads"]) is None and cfg["candidates"] <= cfg["heads"]:
            continue   # drawing all candidates every time is one configuration, not a random arm
        for t in range(cfg["trials"]):
            conf = {**{k: cfg[k] for k in _SHARED + _POOL}, "phase": "trial", "arm": arm, "trial": t,
                    "data_seed": 1000 + t, "seed": _data_seed(cfg["root_seed"], 1000 + t)}
            needs_labels = _NEEDS[arm](cfg["heads"]) is not None
            heads, why = draw_heads(conf, labels if needs_labels else None)
            conf.update(head_ids=heads or [], why=why,
                        labels_used=[labels[h] for h in heads] if heads and needs_labels else [])
            out.append(spec(f"{arm.replace(' ', '').replace('+', 'p')}-t{t:02d}", conf))
    return out


def _model(config: dict, head_ids: list[int]):
    """A model with the base parameters of ``config`` and the initial heads ``head_ids`` (1 or H)."""
    from miniattn.models.seq2seq import Seq2SeqAttention
    from miniattn.tasks import CopyTask

    L, d = config["length"], config["dim"]
    task = CopyTask(L, L, "permutation")
    base_seq = np.random.SeedSequence(config["root_seed"], spawn_key=(0,))
    H = len(head_ids)
    model = Seq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length,
                             task.target_length, dim=d, heads=H, value_projection=True,
                             rng=np.random.default_rng(base_seq), dtype=np.dtype(config["dtype"]))
    # Candidate i's score and value matrices come from its own stream, drawn at the model's scale.
    scale = model.init_scale
    score = np.empty((H, d, d))   # drawn in float64 and cast on assignment, as the model's own init
    value = np.empty((H, d, d))
    for j, i in enumerate(head_ids):  # a loop over heads at construction, not inside a pass
        rng = np.random.default_rng(np.random.SeedSequence(config["root_seed"], spawn_key=(1, int(i))))
        score[j] = scale * rng.standard_normal((d, d))
        value[j] = scale * rng.standard_normal((d, d))
    model.params["score"][...] = score[0] if H == 1 else score
    model.params["value"][...] = value[0] if H == 1 else value
    return task, model


def _train(config: dict, head_ids: list[int]) -> dict:
    """Train base + ``head_ids`` on permutations with the data stream of ``config['seed']``."""
    from miniattn.optim import make_optimizer
    from miniattn.train import TrainingDiverged, train

    task, model = _model(config, head_ids)
    opt = make_optimizer(config["optimizer"], model.params, lr=config["lr"])
    seed = config["seed"]
    data_seq = np.random.SeedSequence(seed["entropy"], spawn_key=tuple(seed["spawn_key"]))
    try:
        hist = train(model, task, opt, steps=config["steps"], batch_size=config["batch"], seed=data_seq,
                     eval_every=config["eval_every"], eval_size=config["eval_size"], progress=False)
    except TrainingDiverged as exc:
        # A diverged run is a failed run, recorded as such (not a crash of the whole sweep).
        return {"token_accuracy": np.zeros(1), "max_accuracy": 0.0, "final_accuracy": 0.0, "diverged": str(exc)}
    acc = hist.metric("token_accuracy")
    return {"steps": hist.eval_steps(), "token_accuracy": acc, "max_accuracy": float(np.max(acc)),
            "final_accuracy": float(acc[-1]), "diverged": None}


def _stored_labels(results, cfg: dict) -> list[str]:
    """The phase-1 class of every candidate, from the stored phase-1 runs of this profile."""
    heads = results.where(phase="head")
    labels = []
    for i in range(cfg["candidates"]):
        g = heads.where(head=i)
        labels.append(classify(g.values("max_accuracy"), g.values("final_accuracy"), cfg["good"], cfg["bad"]))
    return labels


def classify(max_acc: list[float], final_acc: list[float], good: float, bad: float) -> str:
    """``good`` if every data seed's best accuracy exceeds ``good``, ``bad`` if every final one is below ``bad``."""
    if all(a > good for a in max_acc):
        return "good"
    if all(a < bad for a in final_acc):
        return "bad"
    return "mixed"


def draw_heads(config: dict, labels: list[str] | None) -> tuple[list[int] | None, str]:
    """The heads of a trial, drawn without replacement: ``(head ids, "")`` or ``(None, why not)``."""
    rng = np.random.default_rng(np.random.SeedSequence(config["root_seed"],
                                                       spawn_key=(3, ARMS.index(config["arm"]), config["trial"])))
    H, N = config["heads"], config["candidates"]
    need = _NEEDS[config["arm"]](H)
    if need is None:
        if N <= H:
            return None, f"a pool of {N} candidates for {H} heads leaves no random choice"
        return sorted(int(h) for h in rng.choice(N, size=H, replace=False)), ""
    n_bad, n_good = need
    bad = [i for i, v in enumerate(labels) if v == "bad"]
    good = [i for i, v in enumerate(labels) if v == "good"]
    if len(bad) < n_bad or len(good) < n_good:
        return None, (f"needs {n_bad} bad and {n_good} good distinct heads; the pool of {N} has "
                      f"{len(bad)} bad and {len(good)} good")
    heads = sorted(int(h) for h in rng.choice(bad, size=n_bad, replace=False))
    heads += [int(h) for h in rng.choice(good, size=n_good, replace=False)] if n_good else []
    return heads, ""


def run(config: dict) -> dict:
    """One phase-1 run (a candidate head alone) or one phase-2 trial (an assembled multi-head model)."""
    if config["phase"] == "head":
        return _train(config, [config["head"]])
    heads = config["head_ids"]
    if not heads:
        return {"formed": False, "why": config["why"], "head_ids": [], "labels_used": [], "success": None}
    out = _train(config, heads)
    return {**out, "formed": True, "why": "", "head_ids": heads, "labels_used": config["labels_used"],
            "success": bool(out["max_accuracy"] > config["good"])}


# ---------------------------------------------------------------------------------------------
# Claims, tables, notes, figures (from the stored runs only)


def _phase1(results) -> dict[str, Any]:
    """Phase-1 classes from the stored runs: ``{"labels", "max"}`` by candidate id."""
    heads = results.where(phase="head")
    trials = results.where(phase="trial")
    ref = (trials.records[0] if trials.records else heads.records[0]).config
    good = trials.records[0].config["good"] if trials.records else _profile(results.profile)["good"]
    bad = trials.records[0].config["bad"] if trials.records else _profile(results.profile)["bad"]
    labels, best = {}, {}
    for i in heads.distinct("head"):
        g = heads.where(head=i)
        best[i] = g.values("max_accuracy")
        labels[i] = classify(best[i], g.values("final_accuracy"), good, bad)
    return {"labels": labels, "max": best, "good": good, "bad": bad, "length": ref["length"], "dim": ref["dim"]}


def claims(results) -> list:
    """One claim per arm: the success rate of the multi-head model against the paper's expectation."""
    p1 = _phase1(results)
    out = []
    trials = results.where(phase="trial")
    H = trials.records[0].config["heads"] if trials.records else _profile(results.profile)["heads"]
    for arm in ARMS:
        paper, criterion = EXPECT[arm]
        statement = f"{arm}: success rate of the {H}-head model (acc > {p1['good']} within budget)"
        g = trials.where(arm=arm)
        if not g.records:
            # Only the random arm is ever left out of the runs: the pool is no larger than H.
            continue
        formed = [r for r in g.records if r.data["formed"]]
        if not formed:
            out.append(Claim(statement, paper, None, None, 0, criterion,
                             note=f"not formed: {g.records[0].data['why']}"))
            continue
        notes_ = []
        if len(formed) < ENOUGH_TRIALS:
            notes_.append(f"rests on {len(formed)} trials (< {ENOUGH_TRIALS}): an interval this wide "
                          "decides only an extreme outcome")
        stale = [r.name for r in formed if r.data["labels_used"]
                 and r.data["labels_used"] != [p1["labels"].get(h) for h in r.data["head_ids"]]]
        if stale:
            notes_.append(f"head classes used by {', '.join(stale)} differ from the stored phase-1 runs")
        sets = {tuple(sorted(r.data["head_ids"])) for r in formed}
        if len(sets) < len(formed):
            notes_.append(f"{len(sets)} distinct head set(s) among {len(formed)} trials (the class has few "
                          "enough heads that draws repeat); repeated sets differ only in the data seed")
        if arm == "8 random":
            n_good = [sum(p1["labels"].get(h) == "good" for h in r.data["head_ids"]) for r in formed]
            notes_.append(f"good heads per draw: {', '.join(map(str, n_good))}")
        out.append(rate_claim(statement, paper, [r.data["success"] for r in formed], criterion,
                              note="; ".join(notes_)))
    return out


def tables(results) -> list:
    p1 = _phase1(results)
    rows = []
    for arm in ARMS:
        g = results.where(phase="trial", arm=arm)
        formed = [r for r in g.records if r.data["formed"]]
        if not g.records:
            rows.append([arm, 0, "–", "–", "–", "not run: the pool is no larger than the number of heads"])
        elif not formed:
            rows.append([arm, 0, "–", "–", "–", f"not formed: {g.records[0].data['why']}"])
        else:
            succ = stats.success_summary([r.data["success"] for r in formed])
            fin = stats.summarize([r.data["final_accuracy"] for r in formed], bounds=(0, 1))
            heads = "; ".join(",".join(map(str, r.data["head_ids"])) for r in formed)
            rows.append([arm, len(formed), f"{succ['k']}/{succ['n']}", f"[{succ['ci'][0]:.2f}, {succ['ci'][1]:.2f}]",
                         f"{fin['mean']:.3f}", f"heads {heads}"])
    classes = [[i, p1["labels"][i], ", ".join(f"{a:.3f}" for a in p1["max"][i])] for i in sorted(p1["labels"])]
    return [{"title": "Multi-head trials",
             "columns": ["arm", "trials", "successes", "Wilson 95% CI", "final acc. (mean)", "heads drawn"],
             "rows": rows},
            {"title": "Phase 1: candidate heads alone",
             "columns": ["candidate", "class", "best token accuracy per data seed"], "rows": classes}]


def notes(results) -> list:
    p1 = _phase1(results)
    n_lab = {k: sum(v == k for v in p1["labels"].values()) for k in ("good", "bad", "mixed")}
    heads = results.where(phase="head")
    seeds = len(heads.distinct("data_seed"))
    out = [f"Head classes among {len(p1['labels'])} candidates: {n_lab['good']} good, {n_lab['bad']} bad, "
           f"{n_lab['mixed']} unclassified ({seeds} data seeds each). Heads are drawn without replacement; "
           "the random arm draws from the whole pool.",
           "Criteria: 8 bad succeed in at most 25% of trials, the other two arms in at least 75%; a verdict "
           "needs the whole Wilson interval on one side."]
    trials = results.where(phase="trial")
    if trials.records and not trials.where(arm="8 random").records:
        out.append("No random arm in this profile: the pool is no larger than the number of heads, so "
                   "every draw would be the same configuration.")
    if results.smoke:
        out.append("Quick profile: a smoke test of the protocol on a tiny model; not evidence.")
    good = stats.success_summary([lab == "good" for lab in p1["labels"].values()])
    out.append(f"Good-head fraction: {good['k']}/{good['n']} = {good['k'] / max(good['n'], 1):.2f} "
               f"(Wilson 95% [{good['ci'][0]:.2f}, {good['ci'][1]:.2f}]) at L = V = {p1['length']}, "
               f"d = {p1['dim']}.")
    agree = [len({a > p1["good"] for a in accs}) == 1 for accs in p1["max"].values()]
    out.append(f"A head's outcome is a property of its initialisation, not of the data: for "
               f"{sum(agree)}/{len(agree)} candidates every data seed gives the same side of the "
               f"{p1['good']} threshold.")
    if results.profile == "default":
        c = _profile("default")
        out.append(f"Default profile: the paper's task (L = V = {c['length']}, 8 heads) at d = {c['dim']} "
                   f"instead of the paper's 256 (float32, Adam lr {c['lr']:g}: the smallest width at which "
                   f"good and bad heads are both common, measured beforehand), {c['candidates']} candidate "
                   f"heads, {c['trials']} trials per arm. FULL=1: d = 256, lr 1e-3, float64, 50 trials.")
    return out


def figures(results) -> list:
    """Left: each candidate head's best accuracy per data seed; right: success rate per arm."""
    from analysis import plotting as P

    p1 = _phase1(results)
    fig, axes = P.new_figure(1, 2, width=4.4)
    ax = axes[0, 0]
    colors = {"good": P.COLORS["subset"], "bad": P.COLORS["permutation"], "mixed": P.COLORS["grey"]}
    for i, accs in p1["max"].items():
        P.sim_points(ax, [int(i)] * len(accs), accs, None, color=colors[p1["labels"][i]])
    for lab, c in colors.items():
        ax.plot([], [], "o", color=c, label=lab)
    ax.axhline(p1["good"], color=P.COLORS["grey"], linestyle=":", linewidth=0.8)
    ax.axhline(p1["bad"], color=P.COLORS["grey"], linestyle="--", linewidth=0.8)
    P.finish_axes(ax, xlabel="candidate head", ylabel="best token accuracy (one head alone)",
                  title=f"phase 1: L = V = {p1['length']}, d = {p1['dim']}")
    ax = axes[0, 1]
    xs, rates, lo, hi, n = [], [], [], [], []
    for k, arm in enumerate(ARMS):
        formed = [r for r in results.where(phase="trial", arm=arm).records if r.data["formed"]]
        if not formed:
            continue
        s = stats.success_summary([r.data["success"] for r in formed])
        xs.append(k)
        rates.append(s["rate"])
        lo.append(s["rate"] - s["ci"][0])
        hi.append(s["ci"][1] - s["rate"])
        n.append(s["n"])
    trials = results.where(phase="trial")
    H = trials.records[0].config["heads"] if trials.records else 8
    if xs:
        P.sim_points(ax, xs, rates, f"{H}-head model", yerr=[lo, hi], color=P.COLORS["adam"])
    ax.set_xticks(range(len(ARMS)), list(ARMS))
    ax.set_ylim(-0.05, 1.05)
    P.finish_axes(ax, xlabel="heads", ylabel="success rate (probability), Wilson 95% CI",
                  title=f"phase 2: {max(n) if n else 0} trials per formed arm")
    return [P.save_figure(fig, "e6_multihead", root=results.root)]
