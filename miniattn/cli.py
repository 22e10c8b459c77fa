"""The ``miniattn`` command line: train a model on a task, show a run's metrics, print versions.

Examples
--------
Copy 40 distinct tokens out of 60 with the seq2seq attention model (the paper's setting)::

    miniattn train --model seq2seq --task copy --mode subset --vocab 60 --length 40 \\
                   --steps 200 --batch-size 128 --optimizer adam --lr 1e-3 --out runs/copy-subset
    miniattn eval --run runs/copy-subset
    miniattn info

A run with ``--out`` writes ``config.json``, ``metrics.jsonl`` and ``checkpoint.npz`` there; the
same command run again resumes from the checkpoint (``--fresh`` starts over), so an interrupted run
finishes with exactly the result of an uninterrupted one.

Seeding: ``--seed`` is the root of a ``numpy.random.SeedSequence`` whose children are, in order, the
model's initialisation, the task's construction (e.g. the translation lexicon, or the held-out split
of a text file, ``--held-out``) and the training streams (batches and held-out sample, see
:func:`miniattn.train.train`).

Exit status: 0 success; 1 training diverged or a run directory could not be read; 2 bad arguments
(including a model/task combination that does not fit); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from miniattn import __version__, io
from miniattn.models import (AttentionClassifier, FreeAttentionCopyModel, GatedToyClassifier,
                             Seq2SeqAttention)
from miniattn.models.rnn_classifier import RecurrentAttentionClassifier
from miniattn.models.rnn_seq2seq import RecurrentSeq2SeqAttention
from miniattn.models.toy import toy_batch
from miniattn.optim import make_optimizer
from miniattn.tasks import (CopyTask, FixedBatchTask, HeldOutSplit, KeywordClassificationTask, TranslationTask,
                            load_classification_file, load_parallel_files)
from miniattn.train import CONFIG_NAME, METRICS_NAME, TrainingDiverged, train

__all__ = ["main", "build_parser", "MODELS", "TASKS", "COMPATIBLE_TASKS"]

MODELS = ("seq2seq", "classifier", "free-copy", "toy", "rnn-seq2seq", "rnn-classifier")
TASKS = ("copy", "keyword", "translation", "text-classification", "parallel", "toy")
#: The tasks each model can be trained on; the first is its default task.
COMPATIBLE_TASKS = {
    "seq2seq": ("copy", "translation", "parallel"),
    "classifier": ("keyword", "text-classification"),
    "free-copy": ("copy",),
    "toy": ("toy",),
    "rnn-seq2seq": ("copy", "translation", "parallel"),
    "rnn-classifier": ("keyword", "text-classification"),
}
#: Options that only make sense for some models / tasks (option dest -> allowed values).
_MODEL_OPTIONS = {"heads": ("seq2seq",), "score_hidden": ("classifier",), "factorised": ("free-copy",),
                  "dim": ("seq2seq", "classifier", "free-copy", "rnn-seq2seq", "rnn-classifier"),
                  "encoder": ("rnn-seq2seq", "rnn-classifier"), "hidden": ("rnn-seq2seq", "rnn-classifier")}
_TASK_OPTIONS = {"mode": ("copy",), "vocab": ("copy", "keyword", "translation"),
                 "length": ("copy", "keyword", "translation"), "target_vocab": ("translation",),
                 "n_classes": ("keyword",), "data": ("text-classification",),
                 "source_file": ("parallel",), "target_file": ("parallel",),
                 "held_out": ("text-classification", "parallel")}
_DEFAULTS = {"mode": "subset", "vocab": 60, "length": 40, "n_classes": 2, "dim": 64, "held_out": 0.1}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default; where the help text states its own (context-dependent) default, that one."""

    def _get_help_string(self, action):
        if action.help and "default" in action.help.lower():
            return action.help
        return super()._get_help_string(action)


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    parse.__name__ = f"int>={minimum}"
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite positive number, got {text}")
    return value


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``miniattn`` (subcommands ``train``, ``eval``, ``info``)."""
    parser = argparse.ArgumentParser(
        prog="miniattn", formatter_class=_HelpFormatter,
        description="NumPy reference implementation of 'Approximating How Single Head Attention "
                    "Learns' (Snell et al., 2021): train attention models and log how they learn.",
        epilog="Exit status:" + __doc__.split("Exit status:")[1] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"miniattn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,eval,info}")

    # ---- train ------------------------------------------------------------------------------------
    t = sub.add_parser("train", help="train a model on a task", formatter_class=_HelpFormatter,
                       description="Train a model; with --out, log metrics and checkpoints there and "
                                   "resume from an existing checkpoint.")
    t.set_defaults(_handler=_run_train, _sub=t)
    g = t.add_argument_group("model and task")
    g.add_argument("--model", choices=MODELS, default="seq2seq", help="model to train")
    g.add_argument("--task", choices=TASKS, default=None,
                   help="task to train on (default: the model's own task: "
                        + ", ".join(f"{m} -> {ts[0]}" for m, ts in COMPATIBLE_TASKS.items())
                        + "; compatible: "
                        + "; ".join(f"{m}: {'/'.join(ts)}" for m, ts in COMPATIBLE_TASKS.items()) + ")")
    g.add_argument("--mode", choices=("permutation", "subset", "replacement"), default=None,
                   help="copy task: how the L tokens are drawn (default: subset)")
    g.add_argument("--vocab", type=_int_at_least(1), default=None,
                   help="copy/keyword/translation: vocabulary size V (source vocabulary for "
                        "translation) (default: 60)")
    g.add_argument("--length", type=_int_at_least(1), default=None,
                   help="copy/keyword/translation: sequence length L (default: 40)")
    g.add_argument("--target-vocab", type=_int_at_least(1), default=None,
                   help="translation: target vocabulary size (default: --vocab)")
    g.add_argument("--n-classes", type=_int_at_least(2), default=None,
                   help="keyword: number of classes (default: 2)")
    g.add_argument("--data", type=Path, default=None,
                   help="text-classification: a label<TAB>text (.tsv) or label,text (.csv) file "
                        "(required for that task; no default)")
    g.add_argument("--source-file", type=Path, default=None,
                   help="parallel: source sentences, one per line (required for that task; no default)")
    g.add_argument("--target-file", type=Path, default=None,
                   help="parallel: target sentences, line-aligned with --source-file "
                        "(required for that task; no default)")
    g.add_argument("--held-out", type=_fraction, default=None,
                   help="text-classification/parallel: share of the examples held out for evaluation "
                        "(a seeded split; training never sees them); 0 evaluates on a sample of the "
                        "training examples (default: 0.1)")
    g.add_argument("--dim", type=_int_at_least(1), default=None,
                   help="seq2seq/classifier: model width d (default: 64); free-copy with "
                        "--factorised: rank of M = Wo E^T (default: V)")
    g.add_argument("--heads", type=_int_at_least(1), default=None,
                   help="seq2seq: number of attention heads, contexts averaged (default: 1)")
    g.add_argument("--encoder", choices=("lstm", "gru"), default=None,
                   help="rnn-seq2seq/rnn-classifier: recurrent cell of encoder and decoder (default: lstm)")
    g.add_argument("--hidden", type=_int_at_least(1), default=None,
                   help="rnn-seq2seq/rnn-classifier: hidden units per direction (default: dim // 2)")
    g.add_argument("--score-hidden", type=_int_at_least(1), default=None,
                   help="classifier: hidden units of a one-layer attention score function "
                        "(default: none, the linear score u . h)")
    g.add_argument("--factorised", action="store_true",
                   help="free-copy: factor the KTIW matrix as M = Wo E^T")
    g.add_argument("--uniform", action="store_true",
                   help="train the uniform-attention twin (attention fixed to uniform)")
    g.add_argument("--init-scale", type=_nonnegative_float, default=None,
                   help="standard deviation of the initial weights (default: the model's own: "
                        "1/sqrt(dim) for seq2seq, 0.1 for classifier and free-copy, 0 for toy)")

    o = t.add_argument_group("optimisation")
    o.add_argument("--steps", type=_int_at_least(0), default=200, help="optimiser steps")
    o.add_argument("--batch-size", type=_int_at_least(1), default=128,
                   help="fresh training examples per step (the toy task always uses its 2 sequences)")
    o.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="optimiser")
    o.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default: 1e-3 for adam, 1e-2 for sgd)")
    o.add_argument("--momentum", type=_nonnegative_float, default=0.0, help="sgd: heavy-ball momentum in [0, 1)")
    o.add_argument("--seed", type=_int_at_least(0), default=0, help="root random seed")

    r = t.add_argument_group("evaluation and output")
    r.add_argument("--eval-every", type=_int_at_least(1), default=10,
                   help="evaluate on the held-out sample every this many steps (and at the start and end)")
    r.add_argument("--eval-size", type=_int_at_least(1), default=256, help="size of the held-out sample")
    r.add_argument("--checkpoint-every", type=_int_at_least(1), default=50,
                   help="write a checkpoint every this many steps (and at the end); needs --out")
    r.add_argument("--out", type=Path, default=None,
                   help="run directory, e.g. runs/NAME, for config.json, metrics.jsonl and "
                        "checkpoint.npz (default: none, nothing is written)")
    r.add_argument("--fresh", action="store_true",
                   help="start over even if --out holds a checkpoint (default: resume from it)")
    r.add_argument("--quiet", action="store_true",
                   help="no progress display and no summary (errors are still reported)")

    # ---- eval -------------------------------------------------------------------------------------
    e = sub.add_parser("eval", help="print the last metrics of a run", formatter_class=_HelpFormatter,
                       description="Print the latest evaluation record of a run directory.")
    e.set_defaults(_handler=_run_eval, _sub=e)
    e.add_argument("--run", type=Path, required=True, help="run directory (the --out of `miniattn train`)")
    e.add_argument("--json", action="store_true", help="print the record as JSON")

    # ---- info -------------------------------------------------------------------------------------
    i = sub.add_parser("info", help="print versions, platform and git revision",
                       formatter_class=_HelpFormatter, description="Print the environment of this installation.")
    i.set_defaults(_handler=_run_info, _sub=i)
    i.add_argument("--json", action="store_true", help="print as JSON")
    return parser


# --------------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------------

def _check_combination(args, parser) -> None:
    allowed = COMPATIBLE_TASKS[args.model]
    if args.task is None:
        args.task = allowed[0]
    if args.task not in allowed:
        parser.error(f"--model {args.model} cannot be trained on --task {args.task}; "
                     f"compatible tasks: {', '.join(allowed)}")
    for dest, models in _MODEL_OPTIONS.items():
        value = getattr(args, dest)
        if value not in (None, False) and args.model not in models:
            parser.error(f"--{dest.replace('_', '-')} applies only to --model {'/'.join(models)}")
    for dest, tasks in _TASK_OPTIONS.items():
        value = getattr(args, dest)
        if value is not None and args.task not in tasks:
            parser.error(f"--{dest.replace('_', '-')} applies only to --task {'/'.join(tasks)}")
    if args.model == "free-copy" and args.dim is not None and not args.factorised:
        parser.error("--dim applies to --model free-copy only with --factorised")
    if args.optimizer != "sgd" and args.momentum != 0.0:
        parser.error("--momentum applies only to --optimizer sgd")
    if args.momentum >= 1:
        parser.error(f"--momentum must lie in [0, 1), got {args.momentum}")
    if args.task == "text-classification" and args.data is None:
        parser.error("--task text-classification needs --data FILE")
    if args.task == "parallel" and (args.source_file is None or args.target_file is None):
        parser.error("--task parallel needs --source-file and --target-file")
    for dest in ("data", "source_file", "target_file"):
        path = getattr(args, dest)
        if path is not None and not path.is_file():
            parser.error(f"--{dest.replace('_', '-')}: no such file: {path}")
    if args.init_scale == 0 and args.model in ("seq2seq", "classifier", "rnn-seq2seq", "rnn-classifier"):
        parser.error(f"--init-scale must be > 0 for --model {args.model}")


def _option(args, dest):
    value = getattr(args, dest)
    return _DEFAULTS[dest] if value is None else value


def _build_task(args, rng: np.random.Generator):
    if args.task == "copy":
        return CopyTask(_option(args, "length"), _option(args, "vocab"), _option(args, "mode"),
                        specials=args.model != "free-copy")
    if args.task == "keyword":
        return KeywordClassificationTask(_option(args, "vocab"), _option(args, "length"),
                                         n_classes=_option(args, "n_classes"))
    if args.task == "translation":
        vocab = _option(args, "vocab")
        return TranslationTask(vocab, args.target_vocab or vocab, _option(args, "length"), rng=rng)
    if args.task in ("text-classification", "parallel"):
        if args.task == "text-classification":
            data = load_classification_file(args.data)
        else:
            data = load_parallel_files(args.source_file, args.target_file)
        fraction = _option(args, "held_out")
        if fraction == 0:
            return data
        return HeldOutSplit(data, fraction, rng)
    return FixedBatchTask(toy_batch(), name="toy", vocab_sizes=(2, 2))


def _build_model(args, task, rng: np.random.Generator):
    init = {} if args.init_scale is None else {"init_scale": args.init_scale}
    if args.model == "seq2seq":
        return Seq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length, task.target_length,
                                dim=_option(args, "dim"), heads=args.heads or 1, uniform=args.uniform, rng=rng, **init)
    if args.model == "classifier":
        return AttentionClassifier(task.input_vocab_size, task.output_vocab_size, dim=_option(args, "dim"),
                     score_hidden=args.score_hidden, uniform=args.uniform, rng=rng, **init)
    if args.model == "rnn-seq2seq":
        return RecurrentSeq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length,
                                         task.target_length, dim=_option(args, "dim"), hidden=args.hidden,
                                         encoder=args.encoder or "lstm", uniform=args.uniform, rng=rng, **init)
    if args.model == "rnn-classifier":
        return RecurrentAttentionClassifier(task.input_vocab_size, task.output_vocab_size, dim=_option(args, "dim"),
                                            hidden=args.hidden, encoder=args.encoder or "lstm",
                                            uniform=args.uniform, rng=rng, **init)
    if args.model == "free-copy":
        return FreeAttentionCopyModel(task.length, task.vocab, factorised=args.factorised, dim=args.dim,
                     uniform=args.uniform, rng=rng, **init)
    return GatedToyClassifier(uniform=args.uniform, rng=rng, **init)


def _format_record(record: dict) -> str:
    parts = [f"step {record.get('step')}"]
    for key, value in record.items():
        if key == "step":
            continue
        if isinstance(value, float):
            parts.append(f"{key} {value:.4f}")
        elif isinstance(value, list):
            parts.append(f"{key} [" + ", ".join("-" if v is None else f"{v:.3f}" if isinstance(v, float)
                                               else str(v) for v in value) + "]")
        else:
            parts.append(f"{key} {'-' if value is None else value}")
    return "  ".join(parts)


#: Options that may differ between a run and its resumption: they change neither its data, its model
#: nor its arithmetic (``--steps`` extends or confirms a run; the rest are output and bookkeeping).
_RESUMABLE_DIFFERENCES = {"steps", "quiet", "out", "fresh", "checkpoint_every", "command", "seed_streams"}


def _option_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _check_run_directory(args, config: dict, parser) -> None:
    """Refuse an ``--out`` that is not this run's directory: a file, a foreign directory, or a run of
    other options (unless ``--fresh`` asks to start that run over)."""
    out = args.out
    if out is None or not out.exists():
        return
    if not out.is_dir():
        parser.error(f"--out: {out} is a file, not a directory")
    meta_path = out / CONFIG_NAME
    if not meta_path.exists():
        if any(out.iterdir()):
            parser.error(f"--out: {out} is not empty and is not a miniattn run (no {CONFIG_NAME}); "
                         "choose an empty or new directory")
        return
    try:
        stored = io.read_json(meta_path)["config"]["run"]
        if not isinstance(stored, dict):
            raise TypeError("not an object")
    except (OSError, ValueError, KeyError, TypeError) as err:
        parser.error(f"--out: {meta_path} is not a readable miniattn run config ({err}); "
                     "choose another directory")
    if args.fresh:
        return
    current = json.loads(io.dumps_json(config))
    differ = sorted(k for k in set(stored) | set(current)
                    if k not in _RESUMABLE_DIFFERENCES and stored.get(k) != current.get(k))
    if differ:
        what = ", ".join(f"{_option_name(k)} {stored.get(k)!r} (this command: {current.get(k)!r})" for k in differ)
        parser.error(f"--out: {out} holds a run with other options: {what}; "
                     "rerun with those options to resume, add --fresh to start it over, or choose another --out")


def _run_train(args, parser) -> int:
    _check_combination(args, parser)
    root = np.random.SeedSequence(args.seed)
    model_ss, task_ss, train_ss = root.spawn(3)
    try:
        task = _build_task(args, np.random.default_rng(task_ss))
        model = _build_model(args, task, np.random.default_rng(model_ss))
    except (ValueError, TypeError) as err:
        # The constructors name the offending argument and its allowed range.
        parser.error(str(err))
    opt_kwargs: dict[str, Any] = {} if args.lr is None else {"lr": args.lr}
    if args.optimizer == "sgd":
        opt_kwargs["momentum"] = args.momentum
    optimizer = make_optimizer(args.optimizer, model.params, **opt_kwargs)
    config = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    config["seed_streams"] = "SeedSequence(seed).spawn(3): model init, task, training"
    _check_run_directory(args, config, parser)
    try:
        history = train(model, task, optimizer, steps=args.steps, batch_size=args.batch_size,
                        seed=train_ss, eval_every=args.eval_every, eval_size=args.eval_size,
                        out_dir=args.out, checkpoint_every=args.checkpoint_every, resume=not args.fresh,
                        progress=False if args.quiet else None, config=config)
    except TrainingDiverged as err:
        print(f"miniattn train: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = " (run the same command again to resume from the last checkpoint)" if args.out else ""
        print(f"\nminiattn train: interrupted{hint}", file=sys.stderr)
        return 130
    except ValueError as err:  # e.g. --out holds a checkpoint of a different run
        print(f"miniattn train: {err}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(_format_record(history.last))
        if args.out is not None:
            print(f"run saved in {args.out}")
    return 0


# --------------------------------------------------------------------------------------------------
# eval and info
# --------------------------------------------------------------------------------------------------

def _run_eval(args, parser) -> int:
    run = args.run
    if not run.is_dir():
        parser.error(f"--run: no such directory: {run}")
    metrics = run / METRICS_NAME
    if not metrics.is_file():
        print(f"miniattn eval: {run} has no {METRICS_NAME} (not a miniattn run directory?)", file=sys.stderr)
        return 1
    try:
        records = io.read_jsonl(metrics)
    except ValueError as err:
        print(f"miniattn eval: {err}", file=sys.stderr)
        return 1
    if not records:
        print(f"miniattn eval: {metrics} holds no evaluation yet", file=sys.stderr)
        return 1
    last = records[-1]
    if args.json:
        print(io.dumps_json(last))
        return 0
    print(_format_record(last))
    try:
        steps = io.read_json(run / CONFIG_NAME)["config"]["train"]["steps"]
    except (OSError, ValueError, KeyError, TypeError):
        steps = None
    if steps is not None and last.get("step") != steps:
        print(f"(incomplete: the run asks for {steps} steps; run the same `miniattn train` command to resume)")
    return 0


def _run_info(args, parser) -> int:
    info = io.environment_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for name, version in info["versions"].items():
        print(f"{name:<12}{version or 'not installed'}")
    print(f"{'platform':<12}{info['platform']}")
    git = info["git"]
    print(f"{'git':<12}" + ("not available" if git is None
                             else f"{git['revision']}{' (dirty)' if git['dirty'] else ''}"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``miniattn`` command line with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    Usage errors raise ``SystemExit(2)`` (argparse's convention), ``--help`` ``SystemExit(0)``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    # Usage errors found after parsing are reported by the subcommand's parser (its usage line).
    return args._handler(args, args._sub)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
