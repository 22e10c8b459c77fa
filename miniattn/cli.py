"""The ``miniattn`` command line: train a model on a task, show a run's metrics, print versions.

Examples
--------
Copy 40 distinct tokens out of 60 with the seq2seq attention model at the paper's width d = 256
(the default ``--dim`` of ``--model seq2seq``), 200 Adam steps of 128 examples at lr 1e-3 (the
defaults); it ends at token accuracy 1.0 (0.07 at step 50, 1.0 from step 100), in about 50 s on one
core::

    miniattn train --model seq2seq --task copy --mode subset --vocab 60 --length 40 --seed 0 \\
                   --out runs/copy-subset
    miniattn eval --run runs/copy-subset
    miniattn info

Real text (a ``label<TAB>text`` file; the text options are :mod:`miniattn.tasks.text_options`)::

    miniattn train --model classifier --task text-classification --data reviews.tsv \\
                   --lowercase --min-count 2 --max-vocab 20000 --out runs/reviews

Before training a text task the command prints a summary of the data (examples, vocabulary sizes,
held-out count, dropped pairs, classes, the header decision) and its memory estimate. Every command
refuses a configuration whose estimate exceeds the memory available (or ``--max-memory``); the
estimate is made from the arguments (and a text task's data) before the task and the model are
built, so a ``--vocab``, ``--dim`` or ``--heads`` too large to fit is refused in one line instead of
being allocated.

A run with ``--out`` writes ``config.json``, ``metrics.jsonl`` and ``checkpoint.npz`` there; the
same command run again resumes from the checkpoint (``--fresh`` starts over), so an interrupted run
finishes with exactly the result of an uninterrupted one. Resuming first verifies that the directory
holds exactly this run: every entry of ``config.json`` (the options, and the model, task, optimiser,
training and seed sections) must be what this command would write, except ``--steps`` and the
bookkeeping options; for a text task the SHA-256 of each data file (recorded in
``config.run.data_sha256``) must be unchanged, and a text-task run made before that record existed
cannot be verified and is refused (``--fresh`` starts it over); and the checkpoint's run key must be
this run's, including the model and task description (a checkpoint copied from a run with another
``--mode``, ``--uniform`` or ``--init-scale`` is refused; see :mod:`miniattn.train`). A refusal is one
line naming what differs.

Seeding: ``--seed`` is the root of a ``numpy.random.SeedSequence`` whose children are, in order, the
model's initialisation, the task's construction (e.g. the translation lexicon, or the held-out split
of a text file, ``--held-out``), the training streams (batches and held-out sample, see
:func:`miniattn.train.train`) and the probe batch whose attention a run with ``--out`` records at
every evaluation (``RUN/attention.npz``; ``miniattn plot --run RUN`` draws it).

Exit status: 0 success; 1 training diverged, a checkpoint that cannot be resumed, or a run directory
that could not be read; 2 bad arguments (including a model/task combination that does not fit), a
data file that cannot be used, a memory estimate above the limit (or memory running out while the
model is built), an ``--out`` that cannot be created or holds another run, or a malformed
``config.json`` in it (these print one line, ``miniattn: error: ...``); 130 interrupted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from miniattn import __version__, io
from miniattn.allocator import keep_freed_memory
from miniattn.models import (AttentionClassifier, FreeAttentionCopyModel, GatedToyClassifier,
                             Seq2SeqAttention)
from miniattn.models.rnn_classifier import RecurrentAttentionClassifier
from miniattn.models.rnn_seq2seq import RecurrentSeq2SeqAttention
from miniattn.models.toy import toy_batch
from miniattn.optim import make_optimizer
from miniattn.progress import progress_callback
from miniattn.tasks import CopyTask, FixedBatchTask, HeldOutSplit, KeywordClassificationTask, TranslationTask
from miniattn.tasks.text_options import add_text_arguments, describe_dataset, int_at_least, text_options_from_args
from miniattn.train import (CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, TrainingDiverged, describe_differences,
                            is_legacy_run_key, load_checkpoint, run_config, run_key_differences, train)

__all__ = ["main", "build_parser", "MODELS", "TASKS", "COMPATIBLE_TASKS", "estimate_memory",
           "planned_memory", "thread_settings"]

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
                 "held_out": ("text-classification", "parallel"), "header": ("text-classification",),
                 **{dest: ("text-classification", "parallel")
                    for dest in ("lowercase", "min_count", "max_vocab", "max_length", "encoding")}}
_DEFAULTS = {"mode": "subset", "vocab": 60, "length": 40, "n_classes": 2, "dim": 64, "held_out": 0.1}
#: Model widths that differ from ``_DEFAULTS["dim"]``: the seq2seq model at the paper's d = 256, with
#: which the headline copy command (subset, V = 60, L = 40, seed 0, 200 steps) reaches token accuracy
#: 1.0 by step 100; at d = 64 it ends at 0.85.
_MODEL_DIM_DEFAULTS = {"seq2seq": 256}
#: Models whose ``--dim`` is a width with a default; a run's config stores the width used. Runs made
#: before the config did (``"dim": null``) used ``_LEGACY_DIM`` for every model.
_WIDTH_MODELS = ("seq2seq", "classifier", "rnn-seq2seq", "rnn-classifier")
_LEGACY_DIM = 64


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line: a path or value holding a line break
    (``--run $'a\\nb'``) is escaped (:func:`_one_line`), so it can neither split the message nor forge
    a second ``miniattn:`` line. Its subcommand parsers are of this class too."""

    def error(self, message):
        super().error(_one_line(message))


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default; where the help text states its own (context-dependent) default, that one."""

    def _get_help_string(self, action):
        if action.help and "default" in action.help.lower():
            return action.help
        return super()._get_help_string(action)


def _int_at_least(minimum: int):
    """:func:`miniattn.tasks.text_options.int_at_least` that also refuses digits other than ASCII
    ``0-9`` (``int()`` reads ``'\\u0661'``, an Arabic-Indic one, as 1): what is typed is what is recorded."""
    parse_int = int_at_least(minimum)

    def parse(text: str) -> int:
        if not str(text).isascii():
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum} in ASCII digits, got {text!r}")
        return parse_int(text)
    parse.__name__ = parse_int.__name__
    return parse


def _float_type(accept, expected: str, expected_value: str):
    """An argparse ``type=``: a float for which ``accept(value)`` is true, else one line saying what
    was expected (``expected`` for text that is no number, ``expected_value`` for a number out of range)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected_value}, got {text}")
        return value
    return parse


_positive_float = _float_type(lambda v: np.isfinite(v) and v > 0, "a positive number", "a finite positive number")
_nonnegative_float = _float_type(lambda v: np.isfinite(v) and v >= 0, "a number >= 0", "a finite number >= 0")
_fraction = _float_type(lambda v: 0 <= v < 1, "a number in [0, 1)", "a number in [0, 1)")


_UNITS = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def _memory_size(text: str) -> int:
    """``2G``, ``512M``, ``1.5GB``, ``2GiB``, ``100000`` -> bytes (binary units: K = 1024)."""
    raw = text.strip().upper()
    for suffix in ("IB", "B"):
        if raw.endswith(suffix) and len(raw) > len(suffix):
            raw = raw[:-len(suffix)]
            break
    scale = _UNITS.get(raw[-1:], 1)
    try:
        value = float(raw[:-1] if raw[-1:] in _UNITS else raw) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 2G, 512M or a number of bytes, "
                                         f"got {text!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive size, got {text!r}")
    return int(value)


def _format_bytes(n: float) -> str:
    for unit, size in (("TB", 2 ** 40), ("GB", 2 ** 30), ("MB", 2 ** 20), ("kB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``miniattn`` (subcommands ``train``, ``eval``, ``info``)."""
    parser = _Parser(
        prog="miniattn", formatter_class=_HelpFormatter,
        description="NumPy reference implementation of 'Approximating How Single Head Attention "
                    "Learns' (Snell et al., 2021): train attention models and log how they learn.",
        epilog="Exit status:" + __doc__.split("Exit status:")[1] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"miniattn {__version__}")
    runplot = _runplot()
    commands = "train,eval,info" + (",plot" if runplot is not None else "")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + commands + "}")

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
                   help="model width d (default: 256 for seq2seq, the paper's width; 64 for classifier, "
                        "rnn-seq2seq and rnn-classifier); free-copy with --factorised: rank of "
                        "M = Wo E^T (default: V)")
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

    x = t.add_argument_group("text files", "how --data / --source-file / --target-file are read "
                                           "(text-classification and parallel tasks only)")
    add_text_arguments(x)

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
    r.add_argument("--eval-size", type=_int_at_least(1), default=256,
                   help="examples per evaluation chunk for text tasks (the whole held-out split is "
                        "evaluated, this many examples per forward pass), the size of the sampled "
                        "held-out batch for synthetic tasks")
    r.add_argument("--max-memory", type=_memory_size, default=None, metavar="SIZE",
                   help="refuse to train when the estimated peak memory of a training step or an "
                        "evaluation chunk exceeds SIZE (e.g. 2G, 512M, or bytes) (default: the "
                        "MemAvailable of /proc/meminfo when readable, else no check)")
    r.add_argument("--checkpoint-every", type=_int_at_least(1), default=50,
                   help="write a checkpoint every this many steps (and at the end); needs --out")
    r.add_argument("--out", type=Path, default=None,
                   help="run directory, e.g. runs/NAME, for config.json, metrics.jsonl and "
                        "checkpoint.npz (default: none, nothing is written)")
    r.add_argument("--fresh", action="store_true",
                   help="start over even if --out holds a checkpoint (default: resume from it, after "
                        "verifying that --out holds this very run: its config.json, the SHA-256 of a text "
                        "task's data files and the checkpoint's run key)")
    r.add_argument("--quiet", action="store_true",
                   help="no progress display and no summary (errors are still reported)")

    # ---- eval -------------------------------------------------------------------------------------
    e = sub.add_parser("eval", help="print the last metrics of a run", formatter_class=_HelpFormatter,
                       description="Print the latest evaluation record of a run directory. A metrics.jsonl "
                                   "that `miniattn train` did not write (a record that is not a JSON object, "
                                   "or steps that do not increase) is refused in one line (exit 1).")
    e.set_defaults(_handler=_run_eval, _sub=e)
    e.add_argument("--run", type=Path, required=True, help="run directory (the --out of `miniattn train`)")
    e.add_argument("--json", action="store_true", help="print the record as JSON")

    # ---- info -------------------------------------------------------------------------------------
    i = sub.add_parser("info", help="print versions, platform and git revision",
                       formatter_class=_HelpFormatter, description="Print the environment of this installation.")
    i.set_defaults(_handler=_run_info, _sub=i)
    i.add_argument("--json", action="store_true", help="print as JSON")

    # ---- plot (when miniattn.runplot is installed) --------------------------------------------------
    if runplot is not None:
        pl = sub.add_parser("plot", help="draw a run's learning curves and attention snapshots",
                            formatter_class=_HelpFormatter,
                            description="Draw the learning curves and the attention maps recorded during "
                                        "`miniattn train --out RUN` (RUN/attention.npz) as PNGs and a GIF.")
        pl.set_defaults(_handler=_run_plot, _sub=pl)
        runplot.add_plot_arguments(pl)
    return parser


def _runplot():
    """:mod:`miniattn.runplot` (attention snapshots and ``miniattn plot``), or None if it is absent."""
    try:
        from miniattn import runplot
    except ImportError:
        return None
    return runplot


def _run_plot(args, parser) -> int:
    return _runplot().plot_command(args)


# --------------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------------

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


def _fail(message: str, status: int = 2):
    """Report a data, memory or run-state error in one line (``miniattn: error: ...``) and exit.

    Unlike ``parser.error`` this prints no usage block: the arguments were well formed; the data,
    the memory or the run directory do not fit them.
    """
    print(f"miniattn: error: {_one_line(message)}", file=sys.stderr)
    raise SystemExit(status)


def _warn(message: str) -> None:
    print(f"miniattn: warning: {_one_line(message)}", file=sys.stderr)


def _one_line(message: str) -> str:
    """``message`` with line breaks escaped: a path or an environment value holding a newline must
    neither split the report nor forge a second ``miniattn:`` line."""
    return str(message).replace("\r", "\\r").replace("\n", "\\n")


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
    if args.init_scale == 0 and args.model in ("seq2seq", "classifier", "rnn-seq2seq", "rnn-classifier"):
        parser.error(f"--init-scale must be > 0 for --model {args.model}")


def _check_task_arguments(args, parser) -> None:
    """Usage errors (exit 2) of the synthetic tasks' sizes that the task constructors would raise:
    checked here from the arguments, so that they come before the memory estimate (an impossible
    combination of a huge ``--n-classes`` and a small ``--vocab`` is a usage error, not a memory
    refusal) and before anything is built."""
    if args.task == "copy":
        V, L, mode = _option(args, "vocab"), _option(args, "length"), _option(args, "mode")
        if mode == "permutation" and V != L:
            parser.error(f"--mode permutation orders all tokens, so it needs vocab == length; got --vocab {V}, "
                         f"--length {L} (use --mode subset for vocab > length)")
        if mode == "subset" and L > V:
            parser.error(f"--mode subset draws distinct tokens, so it needs length <= vocab; got --length {L}, "
                         f"--vocab {V} (use --mode replacement for i.i.d. tokens)")
    elif args.task == "keyword":
        V, C = _option(args, "vocab"), _option(args, "n_classes")
        if 2 * C >= V:   # two keywords per class and at least one filler word
            parser.error(f"--task keyword plants 2 keywords per class, so --vocab must exceed 2 x --n-classes "
                         f"= {2 * C}; got --vocab {V}")
    elif args.task == "translation":
        target = args.target_vocab or _option(args, "vocab")
        if target < 3:   # the two function words and at least one content word
            parser.error(f"--task translation needs a target vocabulary of at least 3 (--target-vocab, "
                         f"default --vocab), got {target}")


def _option(args, dest):
    value = getattr(args, dest)
    if value is not None:
        return value
    if dest == "dim":
        return _MODEL_DIM_DEFAULTS.get(args.model, _DEFAULTS["dim"])
    return _DEFAULTS[dest]


def _load_text(args):
    """The dataset of a text task, read with the ``--header/--lowercase/...`` options.

    A file that cannot be used (missing, a directory, not valid in ``--encoding``, empty, one
    class, malformed lines) ends the command with one line naming the file and line.
    """
    options = text_options_from_args(args)
    paths = ((("--data", args.data),) if args.task == "text-classification" else
             (("--source-file", args.source_file), ("--target-file", args.target_file)))
    for option, path in paths:
        try:
            odd = path.exists() and not path.is_file() and not path.is_dir()
        except OSError:
            odd = False  # the loader reports it, naming the file
        if odd:
            # Reading a FIFO blocks until someone writes to it, /dev/zero never ends: neither is data.
            _fail(f"{option}: {path} is not a regular file (a FIFO, device or socket); pass a text file")
    try:
        if args.task == "text-classification":
            return options.load_classification(args.data)
        return options.load_parallel(args.source_file, args.target_file)
    except (ValueError, TypeError, OSError) as err:
        _fail(str(err))


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
        data = _load_text(args)
        fraction = _option(args, "held_out")
        if fraction == 0:
            return data
        try:
            return HeldOutSplit(data, fraction, rng)
        except ValueError as err:
            _fail(f"--held-out {fraction:g}: {err}")
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


# --------------------------------------------------------------------------------------------------
# Memory estimate
# --------------------------------------------------------------------------------------------------

#: Arrays of one example's output, attention and hidden states that a training step holds at once
#: (forward values, their gradients and the softmax intermediates); an evaluation holds fewer.
_TRAIN_COPIES = {"output": 4, "attention": 4, "hidden": 12}
_EVAL_COPIES = {"output": 3, "attention": 2, "hidden": 6}


def estimate_memory(args, task, model) -> dict:
    """Estimated peak bytes of one training step and of one evaluation chunk.

    With B = ``--batch-size``, E = the evaluation chunk (``--eval-size``, at most the held-out
    split of a text task), S and T the source and target lengths (T = 1 for classifiers), C the
    output classes (target vocabulary), h heads, w the width of the hidden states (d, or 8 ×
    ``--hidden`` for a bidirectional LSTM/GRU with its gates), P the parameters and b the bytes
    per float::

        per example  a = k_out·T·C + k_att·h·T·S + k_hid·(S + T)·w
        train step   M_train = b · (B · a_train + 4 P)      (parameters, gradients, Adam m and v)
        eval chunk   M_eval  = b · (E · a_eval + 4 P)

    with (k_out, k_att, k_hid) = (4, 4, 12) for a training step (log-probs, softmax, their
    gradients; scores, weights and their gradients; activations and their gradients) and (3, 2, 6)
    for an evaluation. It is an estimate of the arrays' size, not a measurement; it is dominated by
    the B × T × C log-probs of a text task with a large vocabulary, and by the 4 P term of a model
    with a huge vocabulary or width. :func:`planned_memory` evaluates the same formula from the
    arguments alone, before anything is built.

    Parameters
    ----------
    args : argparse.Namespace
        The ``train`` options (``batch_size``, ``eval_size``, ``model``, ``heads``, ``hidden``, ``dim``).
    task
        The task or dataset (``source_length``, ``target_length``, ``output_vocab_size``).
    model
        The built model (``params``: dict of arrays).

    Returns
    -------
    dict
        ``train``, ``eval`` (bytes), and the sizes used: ``batch``, ``eval_chunk``, ``source``,
        ``target``, ``classes``, ``heads``, ``params`` and ``param_bytes`` (b · 4 P).
    """
    params = sum(int(np.asarray(v).size) for v in model.params.values())
    itemsize = max((np.asarray(v).dtype.itemsize for v in model.params.values()), default=8)
    held = getattr(task, "held_out_indices", None)
    sizes = {"source": int(getattr(task, "source_length", 1) or 1),
             "target": int(getattr(task, "target_length", 0) or 0),
             "classes": int(getattr(task, "output_vocab_size", 2) or 2),
             "held_out": None if held is None else len(held)}
    return _memory_formula(args, sizes, params, itemsize)


def _memory_formula(args, sizes: dict, params: int, itemsize: int) -> dict:
    """The formula of :func:`estimate_memory` with the sizes ``source`` (S), ``target`` (T; 0 means
    T = S), ``classes`` (C) and ``held_out`` (the held-out examples of a text task, or None), in
    Python integers (no overflow for any size)."""
    S = max(1, int(sizes["source"]))
    classify = args.model in ("classifier", "rnn-classifier", "toy")
    T = 1 if classify else int(sizes["target"] or S)
    C = max(2, int(sizes["classes"] or 2))
    heads = int(args.heads or 1) if args.model == "seq2seq" else 1
    if args.model in ("rnn-seq2seq", "rnn-classifier"):
        width = 8 * int(args.hidden or max(1, _option(args, "dim") // 2))
    elif args.model in ("seq2seq", "classifier"):
        width = int(_option(args, "dim"))
    else:
        width = 1
    B = 2 if args.model == "toy" else int(args.batch_size)
    held = sizes.get("held_out")
    E = int(args.eval_size) if held is None else max(1, min(int(args.eval_size), int(held)))

    def per_example(k):
        return k["output"] * T * C + k["attention"] * heads * T * S + k["hidden"] * (S + T) * width

    return {"train": itemsize * (B * per_example(_TRAIN_COPIES) + 4 * params),
            "eval": itemsize * (E * per_example(_EVAL_COPIES) + 4 * params),
            "batch": B, "eval_chunk": E, "source": S, "target": T, "classes": C, "heads": heads,
            "params": params, "param_bytes": itemsize * 4 * params}


def _recurrent_parameters(kind: str, D: int, H: int) -> int:
    """Parameters of one LSTM/GRU layer with input size D and hidden size H (its W_x, W_h, biases)."""
    gates = 4 if kind == "lstm" else 3
    biases = 1 if kind == "lstm" else 2
    return D * gates * H + H * gates * H + biases * gates * H


def _planned_sizes(args, task=None) -> dict | None:
    """The sizes the task of ``args`` will have, from the arguments alone (or from ``task`` when given,
    e.g. a loaded text dataset); None for the toy task, whose sizes are fixed and tiny.

    Returns
    -------
    dict or None
        ``input_vocab`` (V_in), ``classes`` (C, the output vocabulary), ``source`` (S), ``target``
        (T; for translation the lower bound L + 1 of its lexicon-dependent length) and
        ``held_out`` (held-out examples of a text task, else None).
    """
    if task is not None:
        held = getattr(task, "held_out_indices", None)
        return {"input_vocab": int(task.input_vocab_size), "classes": int(task.output_vocab_size),
                "source": int(task.source_length), "target": int(task.target_length),
                "held_out": None if held is None else len(held)}
    if args.task == "copy":
        V, L = _option(args, "vocab"), _option(args, "length")
        extra = 0 if args.model == "free-copy" else 1   # specials: V + 3 ids, L + 1 positions
        return {"input_vocab": V + 3 * extra, "classes": V + 3 * extra, "source": L + extra,
                "target": L + extra, "held_out": None}
    if args.task == "keyword":
        return {"input_vocab": _option(args, "vocab") + 1, "classes": _option(args, "n_classes"),
                "source": _option(args, "length"), "target": 1, "held_out": None}
    if args.task == "translation":
        V, L = _option(args, "vocab"), _option(args, "length")
        return {"input_vocab": V + 3, "classes": (args.target_vocab or V) + 3, "source": L + 1,
                "target": L + 1, "held_out": None}
    return None


def _parameter_count(args, sizes: dict) -> int:
    """The number of parameters the model of ``args`` will have on a task of ``sizes``
    (:func:`_planned_sizes`), counted from the shapes its constructor allocates::

        seq2seq         V_in·d [+ C·d unless shared] + (S + T)·d + h·d² [+ h·d² value, h > 1] + 2d·C + C
        classifier      V_in·d + k [+ d·k + k with --score-hidden k] + d·C + C      (k = d without)
        rnn-seq2seq     embeddings + 2 R(d, H) + R(d, 2H) + (2H)² + 4H·C + C
        rnn-classifier  V_in·d + 2 R(d, H) + 2H + 2H·C + C
        free-copy       [L² unless uniform] + (2 V·r if factorised, else V²) + V

    where R(D, H) is one LSTM/GRU layer (:func:`_recurrent_parameters`), H = ``--hidden``
    (default d // 2), r the factorisation rank (``--dim``, default V), and L, V the copy length
    and vocabulary (S and V_in without specials).
    """
    V, C, S, T = sizes["input_vocab"], sizes["classes"], sizes["source"], sizes["target"]
    d = int(_option(args, "dim"))
    if args.model == "seq2seq":
        heads = int(args.heads or 1)
        embeddings = V * d + (0 if V == C else C * d)
        return embeddings + (S + T) * d + heads * d * d * (2 if heads > 1 else 1) + 2 * d * C + C
    if args.model == "classifier":
        k = args.score_hidden or d
        return V * d + k + (d * k + k if args.score_hidden else 0) + d * C + C
    if args.model in ("rnn-seq2seq", "rnn-classifier"):
        H = int(args.hidden or max(1, d // 2))
        kind = args.encoder or "lstm"
        encoder = 2 * _recurrent_parameters(kind, d, H)
        if args.model == "rnn-classifier":
            return V * d + encoder + 2 * H + 2 * H * C + C
        embeddings = V * d + (0 if V == C else C * d)
        return embeddings + encoder + _recurrent_parameters(kind, d, 2 * H) + 4 * H * H + 4 * H * C + C
    if args.model == "free-copy":
        rank = args.dim or V
        return (0 if args.uniform else S * S) + (2 * V * rank if args.factorised else V * V) + V
    raise ValueError(f"no parameter count for --model {args.model}")


def planned_memory(args, task=None) -> dict | None:
    """:func:`estimate_memory` from the arguments alone, before the task and the model are built.

    The parameters P are counted from the shapes the model's constructor will allocate
    (:func:`_parameter_count`); the sizes S, T, C come from the arguments (or from ``task``, a
    loaded text dataset). It equals :func:`estimate_memory` of the built model, except for the
    translation task, whose target length depends on its drawn lexicon: there T is its lower bound
    L + 1 (in the activations and in the seq2seq model's T × d target positions), so the estimate
    never exceeds the one made after building, which :func:`_build` checks as well.

    Parameters
    ----------
    args : argparse.Namespace
        The ``train`` options after :func:`_check_combination`.
    task : optional
        The loaded dataset of a text task (its vocabulary sizes are those of the file).

    Returns
    -------
    dict or None
        As :func:`estimate_memory`; None for the toy model (fixed, tiny sizes).
    """
    sizes = _planned_sizes(args, task)
    if sizes is None or args.model == "toy":
        return None
    return _memory_formula(args, sizes, _parameter_count(args, sizes), np.dtype(np.float64).itemsize)


def _memory_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes, or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


#: Options that set the size of a model or task, in the order a refusal names them.
_SIZE_OPTIONS = ("vocab", "target_vocab", "length", "n_classes", "max_vocab", "max_length", "dim", "heads",
                 "hidden", "score_hidden")


def _size_options(args) -> str:
    """``--vocab, --length, --dim, --batch-size or --eval-size``: what a memory refusal advises to lower
    (the size options that apply to this model and task, then the batch sizes)."""
    names = []
    for dest in _SIZE_OPTIONS:
        models, tasks = _MODEL_OPTIONS.get(dest, MODELS), _TASK_OPTIONS.get(dest, TASKS)
        if args.model in models and args.task in tasks and not (dest == "dim" and args.model == "free-copy"
                                                                 and not args.factorised):
            names.append(_option_name(dest))
    names += ["--batch-size", "--eval-size"]
    return ", ".join(names[:-1]) + " or " + names[-1]


def _check_memory(args, estimate: dict) -> str | None:
    """Refuse (one line, exit 2) an estimate above ``--max-memory`` or MemAvailable; else a summary line."""
    if args.max_memory is not None:
        limit, source = args.max_memory, f"--max-memory {_format_bytes(args.max_memory)}"
    else:
        limit = _memory_available()
        source = None if limit is None else f"{_format_bytes(limit)} available (MemAvailable)"
    e = estimate
    peak = max(e["train"], e["eval"])
    summary = (f"memory: about {_format_bytes(e['train'])} per training step, {_format_bytes(e['eval'])} per "
               f"evaluation chunk of {e['eval_chunk']}" + ("" if source is None else f" (limit: {source})"))
    if limit is not None and peak > limit:
        what = "training step" if e["train"] >= e["eval"] else "evaluation chunk"
        _fail(f"estimated peak memory {_format_bytes(peak)} per {what} exceeds {source} "
              f"(training: {e['batch']} x {e['target']} x {e['classes']} log-probs and gradients, "
              f"attention {e['batch']} x {e['target']} x {e['source']} x {e['heads']} head(s), "
              f"{e['params']} parameters with Adam state = {_format_bytes(e['param_bytes'])}, "
              f"{_format_bytes(e['train'])} in all; evaluation: "
              f"{_format_bytes(e['eval'])} per chunk of {e['eval_chunk']}); lower "
              f"{_size_options(args)} (or raise --max-memory)")
    return summary


# --------------------------------------------------------------------------------------------------
# Run state: threads, resumption, the command line of a run
# --------------------------------------------------------------------------------------------------

_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def thread_settings() -> dict:
    """The BLAS thread configuration of this process, for the run's config.

    Returns
    -------
    dict
        ``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` (the environment values,
        None when unset) and ``threadpoolctl``: for each thread pool that the optional
        ``threadpoolctl`` reports, ``{"user_api", "internal_api", "num_threads", "version"}``, or
        None when it is not installed. Results differ at ~1e-15 across thread counts (the order of
        floating-point sums changes), so a resumed run compares this with its first session.
    """
    settings: dict[str, Any] = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
    try:
        import threadpoolctl
    except ImportError:
        settings["threadpoolctl"] = None
    else:
        pools = [{k: pool.get(k) for k in ("user_api", "internal_api", "num_threads", "version")}
                 for pool in threadpoolctl.threadpool_info()]
        # The order of the pools is the order in which the libraries were loaded, which depends on
        # what was imported first; the same configuration must compare equal whatever that order.
        settings["threadpoolctl"] = _sorted_pools(pools)
    return settings


def _sorted_pools(pools):
    """A well-formed ``threadpoolctl`` report (a list of objects) in a canonical order; anything else as is."""
    if not (isinstance(pools, list) and all(isinstance(p, dict) for p in pools)):
        return pools
    return sorted(pools, key=lambda p: json.dumps(p, sort_keys=True, default=str))


def _malformed_threads(stored) -> str | None:
    """Why a stored thread record (``config.run.threads``) cannot be compared, or None when it can."""
    if not isinstance(stored, dict):
        return f"an object was expected, got {type(stored).__name__}"
    for name in _THREAD_VARIABLES:
        value = stored.get(name)
        if value is not None and not isinstance(value, str):
            return f"{name} should be a string or null, got {type(value).__name__}"
    pools = stored.get("threadpoolctl")
    if pools is not None and not (isinstance(pools, list) and all(isinstance(p, dict) for p in pools)):
        return f"threadpoolctl should be a list of objects or null, got {json.dumps(pools)[:40]}"
    return None


def _describe_pools(report) -> str:
    if report is None:
        return "not reported"
    return ", ".join(f"{_clip(p.get('internal_api'))} {_clip(p.get('version'))} ({_clip(p.get('num_threads'))} threads)"
                     for p in report) or "none"


def _clip(value, width: int = 40) -> str:
    """``str(value)``, cut to ``width`` characters with "..." (a damaged record must not make a huge line)."""
    text = str(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _short_value(value) -> str:
    """A thread variable's value for a message: ``unset`` for None/empty, quoted when odd, at most 40 characters."""
    if value is None:
        return "unset"
    return _clip(value if value.strip().isdigit() and value.strip() == value else repr(value))


def _thread_difference(stored, current) -> str | None:
    """How the BLAS thread setting ``current`` (:func:`thread_settings`) differs from the ``stored``
    record of a run's first session, as one clause for the resume warning, or None when it does not.

    A run from before the setting was recorded (``stored`` None) is not compared. A malformed record
    (not an object, a variable that is not a string, a ``threadpoolctl`` entry that is not a list of
    objects) makes the first session's setting unknown: the clause says so and lists this session's.
    """
    if stored is None:
        return None
    problem = _malformed_threads(stored)
    if problem is not None:
        now = ", ".join(f"{name} {_short_value(current.get(name))}" for name in _THREAD_VARIABLES)
        if current.get("threadpoolctl") is not None:
            now += f", threadpoolctl {_describe_pools(current['threadpoolctl'])}"
        return f"first session unknown: its record in {CONFIG_NAME} is malformed ({problem}); this session: {now}"
    parts = []
    for name in _THREAD_VARIABLES:
        if stored.get(name) != current.get(name):
            parts.append(f"{name} {_short_value(stored.get(name))} -> {_short_value(current.get(name))}")
    if "threadpoolctl" in stored and (_sorted_pools(stored.get("threadpoolctl"))
                                      != _sorted_pools(current.get("threadpoolctl"))):
        parts.append(f"threadpoolctl {_describe_pools(stored.get('threadpoolctl'))} -> "
                     f"{_describe_pools(current.get('threadpoolctl'))}")
    return "; ".join(parts) or None


#: Options that may differ between a run and its resumption: they change neither its data, its model
#: nor its arithmetic (``--steps`` extends or confirms a run; the rest are output and bookkeeping;
#: ``threads`` only warns, see :func:`thread_settings`).
_RESUMABLE_DIFFERENCES = {"steps", "quiet", "out", "fresh", "checkpoint_every", "command", "seed_streams",
                          "max_memory", "threads", "steps_history"}


def _option_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _train_command(run: dict, steps: int | None = None) -> str:
    """The ``miniattn train`` command line of a stored run config (the options that differ from
    their defaults), with ``--steps`` replaced by ``steps`` when given."""
    sub = build_parser()._subparsers._group_actions[0].choices["train"]
    words = ["miniattn", "train"]
    for action in sub._actions:
        dest = action.dest
        if not action.option_strings or dest in ("help", "fresh", "quiet") or dest not in run:
            continue
        value = steps if dest == "steps" and steps is not None else run[dest]
        if value is None or (value == action.default and dest != "steps"):
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            words.append(f"--{'' if value else 'no-'}{dest.replace('_', '-')}")
        elif action.nargs == 0:
            if value:
                words.append(action.option_strings[-1])
        else:
            words += [action.option_strings[-1], shlex.quote(str(value))]
    return " ".join(words)


def _stored_run(out: Path | None):
    """``(meta, run)`` of the run in ``out`` (``config.json`` and its ``config.run``), or (None, None).

    Raises
    ------
    OSError, ValueError
        When ``config.json`` cannot be read or is not JSON.
    TypeError
        When it is not a run config: ``config``, ``config.run`` or ``config.train`` is missing or is
        not an object (the message names the entry).
    """
    if out is None or not (out / CONFIG_NAME).exists():
        return None, None
    meta = io.read_json(out / CONFIG_NAME)
    config = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(config, dict):
        raise TypeError("its 'config' entry is missing or not an object")
    for key in ("run", "train"):
        if not isinstance(config.get(key), dict):
            raise TypeError(f"config.{key} is missing or not an object")
    return meta, config["run"]


def _reason(err: BaseException) -> str:
    """What went wrong reading a file, in a few words (a RecursionError's message is NumPy/JSON jargon)."""
    if isinstance(err, RecursionError):
        return "nested too deeply to read"
    return str(err)


def _parent_problem(out: Path) -> str | None:
    """Why the directory ``out`` (which does not exist) cannot be created, when its nearest existing
    ancestor tells: that ancestor is a file. None otherwise (``mkdir`` may still fail, see
    :func:`_make_run_directory`)."""
    for parent in out.absolute().parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                return f"{parent} is a file, not a directory"
            return None
    return None


def _make_run_directory(out: Path) -> None:
    """Create ``--out`` (and its parents) or end in one line naming it and the reason (exit 2)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = _parent_problem(out) or err.strerror or str(err)
        _fail(f"--out: cannot create the run directory {out} ({reason})")
    if not out.is_dir():
        _fail(f"--out: {out} is not a directory")


def _check_run_directory(args, config: dict, recorded: dict | None = None) -> dict | None:
    """Refuse (one line, exit 2) an ``--out`` that is not this run's directory: a file, a path under
    a file, a foreign directory, an unreadable or malformed ``config.json``, or a run of other
    options (unless ``--fresh`` asks to start that run over). Return the stored ``config.json`` of
    the run to resume, if any. Nothing is written.

    Resuming verifies the whole ``config.json`` against ``recorded``, what this command would write
    (``{"config": ..., "seed": ...}``): the options (``config.run``, where the options in
    ``_RESUMABLE_DIFFERENCES`` may differ), the SHA-256 of a text task's data files, and the
    ``config.model``, ``config.task``, ``config.optimizer`` and ``config.train`` sections (all but
    ``steps`` and ``checkpoint_every``) and the seed, entry by entry. A difference is refused in one
    line naming it (exit 2). A ``config.json`` written before its model and task sections held every
    entry of this version (e.g. by an older miniattn) is refused the same way: start it over with
    ``--fresh``.
    """
    out = args.out
    if out is None:
        return None
    try:
        return _check_existing_run_directory(args, config, out, recorded)
    except OSError as err:  # e.g. a name too long for the file system, a loop of symbolic links
        _fail(f"--out: cannot use the run directory {out} ({err.strerror or err})")


def _first_write_leftover(p: Path) -> bool:
    if p.name.startswith(".") and p.name.endswith(".tmp"):
        return True
    return p.name == METRICS_NAME and p.is_file() and not p.is_symlink() and p.stat().st_size == 0


def _check_existing_run_directory(args, config: dict, out: Path, recorded: dict | None = None) -> dict | None:
    if not out.exists():
        problem = _parent_problem(out)
        if problem is not None:
            _fail(f"--out: cannot create the run directory {out} ({problem})")
        return None
    if not out.is_dir():
        _fail(f"--out: {out} is a file, not a directory")
    meta_path = out / CONFIG_NAME
    if not meta_path.exists():
        # What a run killed before its config.json was in place leaves behind is no one else's data:
        # the temporary files of the interrupted write (train() removes them) and the empty
        # metrics.jsonl that train() writes first.
        if any(not _first_write_leftover(p) for p in out.iterdir()):
            _fail(f"--out: {out} is not empty and is not a miniattn run (no {CONFIG_NAME}); "
                  "choose an empty or new directory")
        return None
    try:
        meta, stored = _stored_run(out)
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
        _fail(f"--out: {meta_path} is not a readable miniattn run config ({_reason(err)}); choose another directory")
    if args.fresh:
        return None
    current = json.loads(io.dumps_json(config))
    if stored.get("dim") is None and stored.get("model") in _WIDTH_MODELS:
        stored = {**stored, "dim": _LEGACY_DIM}  # a run from before the width was stored
    differ = sorted(k for k in set(stored) | set(current)
                    if k not in _RESUMABLE_DIFFERENCES and k != _DATA_HASHES and stored.get(k) != current.get(k))
    if differ:
        what = ", ".join(f"{_option_name(k)} {stored.get(k)!r} (this command: {current.get(k)!r})" for k in differ)
        _fail(f"--out: {out} holds a run with other options: {what}; rerun with those options to resume, "
              "add --fresh to start it over, or choose another --out")
    _check_data_hashes(args, stored.get(_DATA_HASHES), current.get(_DATA_HASHES), meta_path)
    if recorded is not None:
        _check_recorded_sections(meta, recorded, meta_path)
    checkpoint = out / CHECKPOINT_NAME
    args._legacy_checkpoint = False
    if checkpoint.exists():
        try:
            ck = load_checkpoint(checkpoint)
            done = ck.step
            args._legacy_checkpoint = is_legacy_run_key(ck.run_key)
        except (OSError, ValueError, KeyError, TypeError):
            done = None  # train() reports an unreadable checkpoint in full
        if done is not None and done > args.steps:
            _fail(f"--out: {out} holds a run already trained to step {done}, more than --steps {args.steps}; "
                  f"pass --steps {done} to keep it as it is, a larger --steps to extend it, or --fresh to "
                  "start over")
        stored_threads = stored.get("threads")
        difference = _thread_difference(stored_threads, current.get("threads"))
        if difference is not None and _malformed_threads(stored_threads) is not None:
            _warn(f"resuming {out}, whose BLAS thread setting is unknown ({difference}); results may differ "
                  "from an uninterrupted run at the ~1e-15 level")
        elif difference is not None:
            _warn(f"resuming {out} with another BLAS thread setting than its first session ({difference}); "
                  "results may differ from an uninterrupted run at the ~1e-15 level")
    return meta


#: The entry of ``config.run`` recording the SHA-256 of a text task's data files (option dest -> hex digest).
_DATA_HASHES = "data_sha256"
#: The data files of the text tasks (option dest, in the order they are hashed).
_DATA_FILES = {"text-classification": ("data",), "parallel": ("source_file", "target_file")}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _data_hashes(args) -> dict | None:
    """``{dest: SHA-256}`` of the data files of a text task (``--data``, or ``--source-file`` and
    ``--target-file``), recorded in ``config.run.data_sha256``; None for a synthetic task. A file that
    cannot be read ends the command in one line naming it (exit 2)."""
    dests = _DATA_FILES.get(args.task)
    if dests is None:
        return None
    hashes = {}
    for dest in dests:
        path = getattr(args, dest)
        try:
            hashes[dest] = _file_sha256(path)
        except OSError as err:
            _fail(f"{_option_name(dest)}: cannot read {path} ({err.strerror or err})")
    return hashes


def _check_data_hashes(args, stored, current, meta_path: Path) -> None:
    """Refuse (one line, exit 2) to resume a text-task run whose data files are not the ones it was
    trained on: their SHA-256 differs from ``config.run.data_sha256``, or the run predates that record
    (its data cannot be verified; ``--fresh`` starts it over)."""
    if current is None:
        if stored is not None:
            _fail(f"--out: {meta_path} records data files ({_DATA_HASHES}) for a run without any; add --fresh "
                  "to start the run over")
        return
    if stored is None:
        _fail(f"--out: {meta_path} records no SHA-256 of the data ({', '.join(map(_option_name, current))}): "
              "the run predates that record, so the data it was trained on cannot be verified; add --fresh to "
              "start the run over on the current data")
    if not isinstance(stored, dict):
        _fail(f"--out: {meta_path}: config.run.{_DATA_HASHES} should be an object, got {type(stored).__name__}")
    for dest, digest in current.items():
        if stored.get(dest) != digest:
            _fail(f"{_option_name(dest)}: {getattr(args, dest)} is not the file the run in {meta_path.parent} was "
                  f"trained on (SHA-256 {str(stored.get(dest))[:16]}... recorded in {CONFIG_NAME}, "
                  f"{digest[:16]}... now); restore that file, or add --fresh to start the run over on this one")
    extra = sorted(set(stored) - set(current), key=str)
    if extra:
        _fail(f"--out: {meta_path}: config.run.{_DATA_HASHES} names files this run does not read: "
              f"{', '.join(map(str, extra))}")


#: Entries of ``config.train`` that a resumption may change (``--steps`` is recorded anew by
#: :func:`_record_steps`; ``--checkpoint-every`` is bookkeeping).
_UPDATED_TRAIN_ENTRIES = ("steps", "checkpoint_every")


def _check_recorded_sections(meta: dict, recorded: dict, meta_path: Path) -> None:
    """Refuse (one line, exit 2) a ``config.json`` whose sections other than ``config.run`` (compared
    option by option before) are not what this command would write: ``config.model``,
    ``config.task``, ``config.optimizer``, ``config.train`` (but ``steps`` and ``checkpoint_every``),
    any unknown section, and the ``seed``."""
    stored_config, expected = meta["config"], json.loads(io.dumps_json(recorded["config"]))
    stored_config = {k: v for k, v in stored_config.items() if k != "run"}
    expected = {k: v for k, v in expected.items() if k != "run"}
    for section in (stored_config, expected):
        if isinstance(section.get("train"), dict):
            section["train"] = {k: v for k, v in section["train"].items() if k not in _UPDATED_TRAIN_ENTRIES}
    differences = run_key_differences({"config": stored_config, "seed": meta.get("seed")},
                                      {"config": expected, "seed": json.loads(io.dumps_json(recorded["seed"]))})
    if differences:
        _fail(f"--out: {meta_path} does not describe this run: "
              + describe_differences(differences, CONFIG_NAME, "this command")
              + "; it was edited, or written by another version of miniattn; add --fresh to start the run over, "
                "or choose another --out")


def _record_steps(out: Path, steps: int) -> None:
    """Make ``config.json`` say the run now aims at ``steps`` (after a resume with another ``--steps``),
    so that ``miniattn eval`` compares the run with the steps it was last asked for.

    Called only once :func:`miniattn.train.train` has accepted the run's checkpoint (a refused resume
    leaves ``config.json`` as it was); the file is read again here, since ``train`` rewrites it when
    the run starts over. A file that cannot be read or is not a run config ends the command in one
    line naming it (exit 2).
    """
    path = out / CONFIG_NAME
    try:
        meta, _ = _stored_run(out)
    except (OSError, ValueError, TypeError, RecursionError) as err:
        _fail(f"--out: {path} is not a readable miniattn run config ({_reason(err)}); it was not updated to "
              f"--steps {steps}")
    if meta is None:
        return
    config = meta["config"]
    before = config["train"].get("steps")
    if before == steps:
        return
    history = config["run"].get("steps_history")
    history = list(history) if isinstance(history, list) else [before]
    config["train"]["steps"] = steps
    config["run"]["steps"] = steps
    config["run"]["steps_history"] = history + [steps]
    io.atomic_write_json(path, meta)


#: Probe examples whose attention is recorded at every evaluation of a run with ``--out``.
_PROBE_SIZE = 4


def _snapshot_recorder(args, task, probe_ss):
    """The ``on_eval`` hook that writes attention snapshots of a probe batch to ``--out``
    (:class:`miniattn.runplot.SnapshotRecorder`, drawn by ``miniattn plot``), or None without
    ``--out`` or without :mod:`miniattn.runplot`.

    The probe is the first ``_PROBE_SIZE`` held-out examples of a text task, else a sample drawn
    from its own seed stream (child 3 of ``--seed``), so a resumed run records the same probe.
    """
    runplot = _runplot()
    if args.out is None or runplot is None:
        return None
    snapshots = args.out / runplot.SNAPSHOT_NAME
    if args.fresh and snapshots.exists():
        snapshots.unlink()  # the run starts over, possibly with another probe
    try:
        return runplot.SnapshotRecorder(args.out, runplot.probe_batch(task, probe_ss, size=_PROBE_SIZE))
    except (ValueError, TypeError) as err:
        _fail(f"--out: {err}")


def _build(args, parser, task_ss, model_ss):
    """``(task, model, memory line)``: the memory estimate from the arguments (:func:`planned_memory`)
    is checked first, then the task and the model are built, then the estimate of what was built.

    A text task's dataset is loaded before the first estimate (its vocabulary is the file's). An
    estimate above the limit, or a MemoryError while building, ends the command in one line (exit 2);
    a constructor's ValueError/TypeError is a usage error naming the argument.
    """
    text_task = args.task in ("text-classification", "parallel")
    planned = None
    try:
        task = _build_task(args, np.random.default_rng(task_ss)) if text_task else None
        planned = planned_memory(args, task)
        if planned is not None:
            _check_memory(args, planned)
        if task is None:
            task = _build_task(args, np.random.default_rng(task_ss))
        model = _build_model(args, task, np.random.default_rng(model_ss))
    except (ValueError, TypeError) as err:
        # The constructors name the offending argument and its allowed range.
        parser.error(str(err))
    except MemoryError:
        need = "" if planned is None else f" (estimated {_format_bytes(max(planned['train'], planned['eval']))})"
        _fail(f"out of memory while building --model {args.model} for --task {args.task}{need}; lower "
              f"{_size_options(args)}")
    return task, model, _check_memory(args, estimate_memory(args, task, model))


def _run_train(args, parser) -> int:
    _check_combination(args, parser)
    _check_task_arguments(args, parser)
    root = np.random.SeedSequence(args.seed)
    # spawn(4): children 0-2 are those of the earlier spawn(3), so runs made before the probe stream
    # existed keep their initialisation, task and batches.
    model_ss, task_ss, train_ss, probe_ss = root.spawn(4)
    task, model, memory_line = _build(args, parser, task_ss, model_ss)
    text_task = args.task in ("text-classification", "parallel")
    opt_kwargs: dict[str, Any] = {} if args.lr is None else {"lr": args.lr}
    if args.optimizer == "sgd":
        opt_kwargs["momentum"] = args.momentum
    optimizer = make_optimizer(args.optimizer, model.params, **opt_kwargs)
    config = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    if args.model in _WIDTH_MODELS:
        config["dim"] = _option(args, "dim")  # the width actually used (its default depends on --model)
    config["seed_streams"] = "SeedSequence(seed).spawn(4): model init, task, training, attention probe"
    config["threads"] = thread_settings()
    hashes = _data_hashes(args)
    if hashes is not None:
        config[_DATA_HASHES] = hashes   # resuming compares them with the files (_check_data_hashes)
    recorded_config = run_config(model, task, optimizer, steps=args.steps, batch_size=args.batch_size,
                                 eval_every=args.eval_every, eval_size=args.eval_size,
                                 checkpoint_every=args.checkpoint_every, config=config)
    meta = _check_run_directory(args, config, {"config": recorded_config, "seed": train_ss})
    if text_task and not args.quiet:
        for line in describe_dataset(task):
            print(f"data: {line}")
        print(memory_line)
    on_eval = _snapshot_recorder(args, task, probe_ss)
    if args.out is not None:
        _make_run_directory(args.out)
    # config.json records a new --steps only once train() has accepted the checkpoint: at the first
    # step it trains, or when it returns (a resume with nothing left to train).
    recorded = meta is None

    def record_steps():
        nonlocal recorded
        if not recorded:
            recorded = True
            _record_steps(args.out, args.steps)

    display = progress_callback(False if args.quiet else None)
    legacy = meta is not None and getattr(args, "_legacy_checkpoint", False)

    def warn_legacy():
        # Once train() has accepted the checkpoint: a refusal is then the only line on stderr.
        nonlocal legacy
        if legacy:
            legacy = False
            _warn(f"{args.out / CHECKPOINT_NAME} predates the model and task description in its run key, so "
                  "they cannot be checked against this run; resumed (the next checkpoint records them)")

    def progress(event):
        record_steps()
        warn_legacy()
        if display is not None:
            display(event)

    try:
        history = train(model, task, optimizer, steps=args.steps, batch_size=args.batch_size,
                        seed=train_ss, eval_every=args.eval_every, eval_size=args.eval_size,
                        out_dir=args.out, checkpoint_every=args.checkpoint_every, resume=not args.fresh,
                        progress=progress, config=config, on_eval=on_eval)
    except TrainingDiverged as err:
        record_steps()  # the checkpoint was accepted: the divergence came in a step after it
        print(f"miniattn train: {_one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = " (run the same command again to resume from the last checkpoint)" if args.out else ""
        print(f"\nminiattn train: interrupted{hint}", file=sys.stderr)
        return 130
    except ValueError as err:  # e.g. --out holds a checkpoint that does not fit this run
        print(f"miniattn train: {_one_line(err)} (--fresh starts the run in --out over)", file=sys.stderr)
        return 1
    record_steps()
    warn_legacy()
    if not args.quiet:
        print(_format_record(history.last))
        if args.out is not None:
            print(f"run saved in {args.out}")
    return 0


# --------------------------------------------------------------------------------------------------
# eval and info
# --------------------------------------------------------------------------------------------------

def _record_line(path: Path, index: int) -> int:
    """The line number of record ``index`` of the JSON-lines file ``path`` as
    :func:`miniattn.io.read_jsonl` counts records (blank lines hold none)."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    filled = [number for number, raw in enumerate(lines, start=1) if raw.strip()]
    return filled[index] if index < len(filled) else len(lines)


def _eval_error(message) -> int:
    """Report an ``eval`` error in one line (line breaks escaped, :func:`_one_line`); return 1."""
    print(f"miniattn eval: {_one_line(message)}", file=sys.stderr)
    return 1


def _is_step(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _run_eval(args, parser) -> int:
    run = args.run
    if not run.is_dir():
        parser.error(f"--run: no such directory: {run}")
    metrics = run / METRICS_NAME
    if not metrics.is_file():
        return _eval_error(f"{run} has no {METRICS_NAME} (not a miniattn run directory?)")
    try:
        records = io.read_jsonl(metrics)
    except (OSError, ValueError) as err:
        return _eval_error(err)
    except RecursionError:
        return _eval_error(f"{metrics}: a record is nested too deeply to read; not a metrics log written by "
                           "`miniattn train`")
    bad = next((i for i, record in enumerate(records) if not isinstance(record, dict)), None)
    if bad is not None:
        return _eval_error(f"{metrics}: line {_record_line(metrics, bad)} is not a JSON object (got "
                           f"{type(records[bad]).__name__}); not a metrics log written by `miniattn train`")
    if not records:
        return _eval_error(f"{metrics} holds no evaluation yet")
    # `miniattn train` logs each evaluation once, in step order: a step that does not increase means
    # an edited log or two runs' logs mixed, whose last record is not the run's latest.
    previous = None
    for i, record in enumerate(records):
        step = record.get("step")
        if not _is_step(step):
            continue   # shown as it is (eval is lenient about the fields of a record)
        if previous is not None and step <= previous:
            return _eval_error(f"{metrics}: line {_record_line(metrics, i)} is at step {step}, after a record "
                               f"at step {previous} (the steps must increase); not a metrics log written by "
                               "`miniattn train`")
        previous = step
    last = records[-1]
    if args.json:
        print(io.dumps_json(last))
        return 0
    print(_format_record(last))
    try:
        meta, stored = _stored_run(run)
        steps = meta["config"]["train"]["steps"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        meta = stored = steps = None
    done = last.get("step")
    if not isinstance(steps, int) or not isinstance(done, int) or done == steps:
        return 0
    command = None if stored is None else _train_command(stored, steps)
    if done < steps:
        checkpoint = run / CHECKPOINT_NAME
        try:
            resume_from = load_checkpoint(checkpoint).step if checkpoint.exists() else None
        except (OSError, ValueError, KeyError, TypeError):
            resume_from = None
        where = "from step 0" if resume_from is None else f"from its checkpoint at step {resume_from}"
        print(f"(incomplete: evaluated up to step {done} of --steps {steps}; "
              + (f"to resume {where}, run: {command})" if command else
                 f"to resume {where}, run the same `miniattn train` command with --steps {steps})"))
    else:
        print(f"(the run went on to step {done}, beyond its recorded --steps {steps}; it is complete at "
              f"step {done}: to extend it, rerun its `miniattn train` command with --steps N, N > {done})")
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
    keep_freed_memory()   # a step's temporaries reuse freed pages instead of page-faulting (allocator.py)
    # Usage errors found after parsing are reported by the subcommand's parser (its usage line).
    return args._handler(args, args._sub)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
