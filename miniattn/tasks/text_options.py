"""How real text is read: one set of options for the command line and the experiments.

:class:`TextOptions` holds the choices that turn a text file into a dataset — header handling,
lower-casing, the vocabulary's ``min_count`` and size cap, a length cap and the file encoding — and
loads files with them, so that ``miniattn train --task text-classification --lowercase ...`` and an
experiment configured with the same options build the same vocabulary and the same examples::

    opts = parse_text_options("--lowercase --min-count 2")        # or TextOptions(lowercase=True, ...)
    data = opts.load_classification("reviews.tsv")
    pairs = opts.load_parallel("train.en", "train.de")
    config["text"] = opts.as_dict()                                # JSON; TextOptions(**d) rebuilds it

Command-line options (:func:`add_text_arguments`) and fields:

============================  ==============  ==================================================
option                        field           meaning
============================  ==============  ==================================================
``--header`` / ``--no-header``  ``header``      skip / keep the first record of a classification
                                              file; default: auto-detect
                                              (:func:`miniattn.tasks.text.detect_header`)
``--lowercase``               ``lowercase``   lower-case the text before tokenizing
``--min-count N``             ``min_count``   words seen fewer than N times become ``<unk>``
``--max-vocab N``             ``max_vocab``   keep at most the N most frequent words (per side)
``--max-length N``            ``max_length``  classification: cut texts to N tokens; parallel:
                                              drop pairs with a side longer than N tokens
``--encoding NAME``           ``encoding``    the files' text encoding (default ``utf-8-sig``:
                                              UTF-8 with or without a byte-order mark)
============================  ==============  ==================================================

Parallel files have no header, so ``header`` does not apply to them.
"""

from __future__ import annotations

import argparse
import codecs
import shlex
from typing import NamedTuple

from miniattn.tasks.text import (ClassificationDataset, ParallelDataset, load_classification_file,
                                 load_parallel_files)

__all__ = ["TextOptions", "add_text_arguments", "int_at_least", "text_options_from_args", "parse_text_options",
           "describe_dataset", "TEXT_OPTION_NAMES"]

#: Field -> command-line option.
TEXT_OPTION_NAMES = {"header": "--header/--no-header", "lowercase": "--lowercase", "min_count": "--min-count",
                     "max_vocab": "--max-vocab", "max_length": "--max-length", "encoding": "--encoding"}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_fields(header, lowercase, min_count, max_vocab, max_length, encoding) -> None:
    """One-line ``ValueError`` naming the field (and its option) for any invalid value."""
    def bad(field: str, expected: str, value) -> ValueError:
        return ValueError(f"{field} ({TEXT_OPTION_NAMES[field]}) must be {expected}, got {value!r}")

    if header is not None and not isinstance(header, bool):
        raise bad("header", "True, False or None (auto-detect)", header)
    if not isinstance(lowercase, bool):
        raise bad("lowercase", "True or False", lowercase)
    if not _is_int(min_count) or min_count < 1:
        raise bad("min_count", "an integer >= 1", min_count)
    for field, value in (("max_vocab", max_vocab), ("max_length", max_length)):
        if value is not None and (not _is_int(value) or value < 1):
            raise bad(field, "an integer >= 1 or None (no limit)", value)
    if not isinstance(encoding, str) or not encoding:
        raise bad("encoding", "the name of a text encoding (e.g. 'utf-8-sig', 'latin-1')", encoding)
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise bad("encoding", "a text encoding Python knows (e.g. 'utf-8-sig', 'latin-1', 'cp1252')",
                  encoding) from None


class _Fields(NamedTuple):
    header: bool | None = None
    lowercase: bool = False
    min_count: int = 1
    max_vocab: int | None = None
    max_length: int | None = None
    encoding: str = "utf-8-sig"


class TextOptions(_Fields):
    """How text files are read (a validated named tuple; see the module docstring for the options).

    Parameters
    ----------
    header : bool or None, default None
        Classification files: True skips the first record, False keeps it, None auto-detects it
        (:func:`miniattn.tasks.text.detect_header`; the decision is in ``dataset.notes``).
        Parallel files have no header.
    lowercase : bool, default False
        Lower-case the text before tokenizing.
    min_count : int >= 1, default 1
        Words seen fewer times become ``<unk>`` (:meth:`~miniattn.tasks.Vocabulary.build`).
    max_vocab : int >= 1 or None, default None
        At most this many ordinary words per vocabulary (``Vocabulary.build(max_size=...)``).
    max_length : int >= 1 or None, default None
        Classification: texts are cut to this many tokens; parallel: pairs with a longer side are
        dropped (``dataset.n_dropped``).
    encoding : str, default "utf-8-sig"

    Raises
    ------
    ValueError
        One line naming the field and its command-line option, for any invalid value.
    """

    __slots__ = ()

    def __new__(cls, header: bool | None = None, lowercase: bool = False, min_count: int = 1,
                max_vocab: int | None = None, max_length: int | None = None, encoding: str = "utf-8-sig"):
        _check_fields(header, lowercase, min_count, max_vocab, max_length, encoding)
        return super().__new__(cls, header, lowercase, min_count, max_vocab, max_length, encoding)

    @classmethod
    def _make(cls, iterable):
        return cls(*iterable)

    def _replace(self, **changes):
        return type(self)(**{**self._asdict(), **changes})

    def _loader_kwargs(self, kwargs: dict, header: bool) -> dict:
        for key in ("lowercase", "min_count", "max_size", "max_length", "encoding", "has_header"):
            if key in kwargs:
                raise TypeError(f"{key} is set by the TextOptions (field "
                                f"{'max_vocab' if key == 'max_size' else 'header' if key == 'has_header' else key}); "
                                f"use options._replace(...) instead of passing it")
        out = {"lowercase": self.lowercase, "min_count": self.min_count, "max_size": self.max_vocab,
               "max_length": self.max_length, "encoding": self.encoding, **kwargs}
        if header:
            out["has_header"] = self.header
        return out

    def load_classification(self, path, **kwargs) -> ClassificationDataset:
        """:func:`~miniattn.tasks.load_classification_file` with these options.

        Parameters
        ----------
        path : str or Path
            A ``label<TAB>text`` (.tsv) or ``label,text`` (.csv) file.
        **kwargs
            Further arguments of the loader (``format``, ``vocab``, ``labels``); the ones the options
            set are refused with a ``TypeError``.
        """
        return load_classification_file(path, **self._loader_kwargs(kwargs, header=True))

    def load_parallel(self, src_path, tgt_path, **kwargs) -> ParallelDataset:
        """:func:`~miniattn.tasks.load_parallel_files` with these options (``header`` does not apply).

        Parameters
        ----------
        src_path, tgt_path : str or Path
            Line-aligned sentence files.
        **kwargs
            Further arguments of the loader (``src_vocab``, ``tgt_vocab``).
        """
        return load_parallel_files(src_path, tgt_path, **self._loader_kwargs(kwargs, header=False))

    def as_dict(self) -> dict:
        """The fields as a JSON-serialisable dict; ``TextOptions(**d)`` rebuilds the options."""
        return dict(self._asdict())

    def as_args(self) -> list[str]:
        """The command-line options that give these options (defaults left out)."""
        args = []
        if self.header is not None:
            args.append("--header" if self.header else "--no-header")
        if self.lowercase:
            args.append("--lowercase")
        default = TextOptions()
        for field in ("min_count", "max_vocab", "max_length", "encoding"):
            value = getattr(self, field)
            if value != getattr(default, field):
                args += [TEXT_OPTION_NAMES[field], str(value)]
        return args


def int_at_least(minimum: int):
    """An argparse ``type=``: an integer ``>= minimum``, else ``ArgumentTypeError`` saying so."""
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


_arg_int = int_at_least(1)


def _arg_encoding(text: str) -> str:
    try:
        codecs.lookup(text)
    except LookupError:
        raise argparse.ArgumentTypeError(f"unknown text encoding {text!r} (e.g. utf-8-sig, latin-1, "
                                         f"cp1252)") from None
    return text


def add_text_arguments(parser_or_group) -> None:
    """Add ``--header/--no-header``, ``--lowercase``, ``--min-count``, ``--max-vocab``,
    ``--max-length`` and ``--encoding`` to an ``argparse`` parser or argument group.

    Every default is None ("not given"), so a caller can tell a given option from a default one;
    :func:`text_options_from_args` maps None to the :class:`TextOptions` default.
    """
    g = parser_or_group
    g.add_argument("--header", dest="header", action=argparse.BooleanOptionalAction, default=None,
                   help="text-classification: --header skips the first record, --no-header keeps it "
                        "(default: auto-detect; the decision is printed)")
    g.add_argument("--lowercase", dest="lowercase", action="store_true", default=None,
                   help="text: lower-case the text before tokenizing (default: keep case)")
    g.add_argument("--min-count", dest="min_count", type=_arg_int, default=None, metavar="N",
                   help="text: words seen fewer than N times become <unk> (default: 1)")
    g.add_argument("--max-vocab", dest="max_vocab", type=_arg_int, default=None, metavar="N",
                   help="text: keep at most the N most frequent words per vocabulary (default: no limit)")
    g.add_argument("--max-length", dest="max_length", type=_arg_int, default=None, metavar="N",
                   help="text: cut classification texts to N tokens; drop parallel pairs with a side "
                        "longer than N tokens (default: no limit)")
    g.add_argument("--encoding", dest="encoding", type=_arg_encoding, default=None, metavar="NAME",
                   help="text: encoding of the data files (default: utf-8-sig, UTF-8 with or without BOM)")


def text_options_from_args(namespace) -> TextOptions:
    """The :class:`TextOptions` of a namespace parsed with :func:`add_text_arguments` (None = default)."""
    given = {field: getattr(namespace, field, None) for field in _Fields._fields}
    return TextOptions(**{k: v for k, v in given.items() if v is not None})


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message):  # noqa: D401 - argparse hook
        raise ValueError(f"text options: {message}")


def parse_text_options(text: str) -> TextOptions:
    """Parse command-line style text options, e.g. ``"--lowercase --min-count 2"``.

    Parameters
    ----------
    text : str
        Split with :func:`shlex.split`; the options of :func:`add_text_arguments`.

    Returns
    -------
    TextOptions

    Raises
    ------
    ValueError
        One line naming the unknown or invalid option (``text options: argument --min-count:
        expected an integer >= 1, got 0``).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str of options, got {type(text).__name__}")
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"text options: cannot split {text!r} ({exc})") from None
    parser = _RaisingParser(prog="text options", add_help=False, exit_on_error=False)
    add_text_arguments(parser)
    try:
        namespace = parser.parse_args(tokens)
    except argparse.ArgumentError as exc:
        raise ValueError(f"text options: {exc}") from None
    return text_options_from_args(namespace)


def describe_dataset(data) -> list[str]:
    """One-line facts about a loaded text dataset (or a :class:`~miniattn.tasks.HeldOutSplit` of
    one), for the summary printed before training: examples, vocabulary sizes, unknown-word share,
    held-out count, dropped pairs, classes, and the loader's decisions (header, truncation).
    """
    split = data if hasattr(data, "held_out_indices") else None
    ds = split.dataset if split is not None else data
    lines = []
    if isinstance(ds, ClassificationDataset):
        counts = [int((ds.labels == c).sum()) for c in range(ds.n_classes)]
        unk = float((ds._seqs.flat[:-1] == ds.vocab.unk_id).mean())
        lines.append(f"examples {len(ds)}, longest {ds.source_length} tokens; vocabulary {len(ds.vocab)} "
                     f"(incl. 4 specials; {unk:.1%} of tokens <unk>)")
        lines.append(f"classes {ds.n_classes}: " + ", ".join(f"{n} ({c})" for n, c in zip(ds.label_names, counts)))
    elif isinstance(ds, ParallelDataset):
        unk_s = float((ds._src.flat[:-1] == ds.src_vocab.unk_id).mean())
        unk_t = float((ds._tgt.flat[:-1] == ds.tgt_vocab.unk_id).mean()) if ds._tgt.flat.size > 1 else 0.0
        lines.append(f"pairs {len(ds)} (dropped {ds.n_dropped}); vocabulary source {len(ds.src_vocab)}, "
                     f"target {len(ds.tgt_vocab)} (incl. 4 specials; <unk> {unk_s:.1%} / {unk_t:.1%} of "
                     f"tokens); lengths {ds.source_length} -> {ds.target_length} (with <eos>)")
    else:
        raise TypeError(f"data must be a text dataset or a HeldOutSplit of one, got {type(data).__name__}")
    if split is not None:
        lines.append(f"held out {len(split.held_out_indices)} ({split.fraction:g}), "
                     f"training on {len(split.train_indices)}")
    else:
        lines.append("held out 0: evaluating on a sample of the training examples")
    lines.extend(getattr(ds, "notes", ()))
    return lines
