"""Real text: a whitespace tokenizer, a vocabulary, and loaders for classification and parallel files.

The loaders turn user-supplied text into datasets with the same interface as the synthetic tasks
(``sample(rng, batch_size)``, vocabulary sizes, lengths, special ids), so every model, probe and
experiment runs on real text unchanged. Nothing here touches the network.

Vocabulary ids: the four specials come first, so that the source and the target vocabulary of a
parallel corpus share them::

    0 <pad>    1 <unk>    2 <bos>    3 <eos>    4.. words, most frequent first (ties alphabetical)

(The synthetic tasks put their specials *after* the content ids, as the paper's code does; always use
the ``pad_id`` / ``bos_id`` / ``eos_id`` attributes rather than literal ids.)

File formats
------------
Classification: one example per line, ``label<TAB>text`` (TSV; the text may contain further tabs)
or ``label,text`` (CSV, read with the :mod:`csv` module, so a text with commas must be quoted —
unquoted extra commas are kept as part of the text). Blank lines are skipped.
Parallel: two files with one sentence per line, line i of one the translation of line i of the
other. Trailing blank lines at the end of a file are ignored; any other blank line is an error.

Every malformed line raises a ``ValueError`` that names the file and the line number.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from miniattn._validate import int_array
from miniattn.batch import ClassificationBatch, Seq2SeqBatch
from miniattn.tasks import _check_generator, _check_int
from miniattn.tasks.vocabulary import (BOS_ID, EOS_ID, PAD_ID, RESERVED_TOKENS, UNK_ID, Vocabulary, _token_list,
                                      tokenize)

__all__ = [
    "RESERVED_TOKENS", "PAD_ID", "UNK_ID", "BOS_ID", "EOS_ID",
    "tokenize", "Vocabulary", "ClassificationDataset", "ParallelDataset",
    "load_classification_file", "load_parallel_files", "draw_indices",
]


# --------------------------------------------------------------------------------------------------
# Ragged storage and padding
# --------------------------------------------------------------------------------------------------

class _Ragged:
    """Variable-length int sequences stored flat: sequence i is ``flat[offsets[i]:offsets[i+1]]``."""

    def __init__(self, name: str, seqs: Sequence, upper: int, min_len: int):
        arrays = []
        for i, s in enumerate(seqs):
            a = np.asarray(s)
            if a.size == 0:
                a = a.astype(np.int64)  # np.asarray([]) is float64; an empty sequence has no dtype to check
            a = int_array(f"{name}[{i}]", a, upper=upper, ndim=1, allow_empty=True)
            if a.size < min_len:
                raise ValueError(f"{name}[{i}] must have at least {min_len} token(s), got {a.size}")
            arrays.append(a.astype(np.int64, copy=False))
        self.lengths = np.array([a.size for a in arrays], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        # One trailing sentinel so that gathering with index 0 is valid even if every sequence is empty.
        self.flat = np.concatenate(arrays + [np.zeros(1, dtype=np.int64)])

    def __len__(self) -> int:
        return self.lengths.size

    def get(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i]:self.offsets[i + 1]].copy()

    def padded(self, idx: np.ndarray, width: int, pad_id: int, shift: int = 0):
        """Rows ``idx`` laid out in a (B, width) array starting at column ``shift``, ``pad_id`` elsewhere.

        Returns ``(ids, inside)`` with ``inside`` True where a sequence token was placed. One gather
        for the whole batch — no loop over rows.
        """
        lengths = self.lengths[idx][:, None]
        col = np.arange(width)[None, :] - shift
        inside = (col >= 0) & (col < lengths)
        gather = np.where(inside, self.offsets[idx][:, None] + col, 0)
        return np.where(inside, self.flat[gather], pad_id), inside


def draw_indices(rng, n: int, batch_size: int) -> np.ndarray:
    """Indices of one sampled batch: without replacement if ``batch_size <= n``, else with."""
    rng = _check_generator(rng)
    B = _check_int("batch_size", batch_size, 1)
    return rng.choice(n, size=B, replace=B > n)


def _epoch(n: int, rng, batch_size: int, drop_last: bool) -> Iterator[np.ndarray]:
    """Index arrays covering ``range(n)`` once, shuffled by ``rng`` (file order if None)."""
    B = _check_int("batch_size", batch_size, 1)
    order = np.arange(n) if rng is None else _check_generator(rng).permutation(n)
    stop = n - n % B if drop_last else n
    for start in range(0, stop, B):
        yield order[start:start + B]


def _check_indices(indices, n: int) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
    return int_array("indices", idx, upper=n, ndim=1)


# --------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------

class ClassificationDataset:
    """Labelled token sequences that produce padded :class:`~miniattn.batch.ClassificationBatch` es.

    Parameters
    ----------
    sequences : sequence of 1-D int arrays
        Token ids of each example (non-empty, ids in ``[0, len(vocab))``).
    labels : int array-like (n,)
        Class of each example, in ``[0, len(label_names))``.
    vocab : Vocabulary
    label_names : sequence of str
        ``label_names[c]`` is the label string of class c.

    Attributes
    ----------
    input_vocab_size = len(vocab), output_vocab_size = n_classes = len(label_names),
    source_length = the longest sequence (every batch has this width), target_length = 1,
    pad_id = vocab.pad_id, bos_id = eos_id = None, labels (n,), lengths (n,).
    """

    def __init__(self, sequences: Sequence, labels, vocab: Vocabulary, label_names: Sequence[str]):
        if not isinstance(vocab, Vocabulary):
            raise TypeError(f"vocab must be a Vocabulary, got {type(vocab).__name__}")
        self.vocab = vocab
        self.label_names = tuple(_token_list("label_names", label_names))
        if len(self.label_names) < 1:
            raise ValueError("label_names must not be empty")
        self._seqs = _Ragged("sequences", sequences, upper=len(vocab), min_len=1)
        if len(self._seqs) == 0:
            raise ValueError("sequences must hold at least one example")
        self.labels = int_array("labels", np.asarray(labels), upper=len(self.label_names), ndim=1).astype(
            np.int64)
        if self.labels.size != len(self._seqs):
            raise ValueError(f"labels must have one entry per sequence ({len(self._seqs)}), "
                             f"got {self.labels.size}")
        self.lengths = self._seqs.lengths
        self.n_classes = len(self.label_names)
        self.input_vocab_size = len(vocab)
        self.output_vocab_size = self.n_classes
        self.source_length = int(self.lengths.max())
        self.target_length = 1
        self.pad_id = vocab.pad_id
        self.bos_id = self.eos_id = None

    def __len__(self) -> int:
        return len(self._seqs)

    def __repr__(self) -> str:
        return (f"ClassificationDataset({len(self)} examples, {self.n_classes} classes, "
                f"vocab {len(self.vocab)}, source_length {self.source_length})")

    def tokens(self, i: int) -> np.ndarray:
        """Token ids of example ``i`` (unpadded copy)."""
        return self._seqs.get(_check_int("i", i, 0, len(self) - 1))

    def batch(self, indices) -> ClassificationBatch:
        """The examples ``indices`` (int array (B,)) as a padded batch.

        Returns
        -------
        ClassificationBatch
            ``tokens (B, source_length)`` int64, ``mask`` bool (True on each row's prefix of length
            ``lengths[i]``), ``labels (B,)``, ``salient=None`` (real text has no ground truth).
        """
        idx = _check_indices(indices, len(self))
        tokens, mask = self._seqs.padded(idx, self.source_length, self.pad_id)
        return ClassificationBatch(tokens=tokens, mask=mask, labels=self.labels[idx].copy(), salient=None)

    def sample(self, rng: np.random.Generator, batch_size: int) -> ClassificationBatch:
        """A random batch (without replacement when ``batch_size <= len(self)``, else with)."""
        return self.batch(draw_indices(rng, len(self), batch_size))

    def batches(self, rng: np.random.Generator | None, batch_size: int,
                drop_last: bool = False) -> Iterator[ClassificationBatch]:
        """One epoch: every example exactly once, shuffled by ``rng`` (in file order if None)."""
        for idx in _epoch(len(self), rng, batch_size, drop_last):
            yield self.batch(idx)


class ParallelDataset:
    """Sentence pairs that produce padded :class:`~miniattn.batch.Seq2SeqBatch` es.

    Parameters
    ----------
    sources, targets : sequences of 1-D int arrays (same number n)
        Word ids of each sentence, without specials (sources non-empty).
    src_vocab, tgt_vocab : Vocabulary

    Batches follow the copy-task layout::

        source = x_1..x_n <eos> <pad>..     target_in = <bos> y_1..y_m <pad>..
        target_out = y_1..y_m <eos> <pad>..

    with ``alignment=None`` (no ground truth for real text).

    Attributes
    ----------
    input_vocab_size = len(src_vocab), output_vocab_size = len(tgt_vocab),
    source_length = longest source + 1, target_length = longest target + 1,
    pad_id = 0, bos_id = 2, eos_id = 3 (shared by both vocabularies; ``source_pad_id`` and
    ``source_eos_id`` are the same ids).
    """

    def __init__(self, sources: Sequence, targets: Sequence, src_vocab: Vocabulary,
                 tgt_vocab: Vocabulary):
        for name, v in (("src_vocab", src_vocab), ("tgt_vocab", tgt_vocab)):
            if not isinstance(v, Vocabulary):
                raise TypeError(f"{name} must be a Vocabulary, got {type(v).__name__}")
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        self._src = _Ragged("sources", sources, upper=len(src_vocab), min_len=1)
        self._tgt = _Ragged("targets", targets, upper=len(tgt_vocab), min_len=0)
        if len(self._src) != len(self._tgt):
            raise ValueError(f"sources and targets must have the same number of sentences, "
                             f"got {len(self._src)} and {len(self._tgt)}")
        if len(self._src) == 0:
            raise ValueError("sources must hold at least one sentence")
        self.input_vocab_size = len(src_vocab)
        self.output_vocab_size = len(tgt_vocab)
        self.source_length = int(self._src.lengths.max()) + 1
        self.target_length = int(self._tgt.lengths.max()) + 1
        self.pad_id, self.bos_id, self.eos_id = PAD_ID, BOS_ID, EOS_ID
        self.source_pad_id, self.source_eos_id = PAD_ID, EOS_ID
        self.n_dropped = 0  # pairs left out by load_parallel_files(max_length=...)

    def __len__(self) -> int:
        return len(self._src)

    def __repr__(self) -> str:
        return (f"ParallelDataset({len(self)} pairs, vocab {len(self.src_vocab)} -> "
                f"{len(self.tgt_vocab)}, lengths {self.source_length} -> {self.target_length})")

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Word ids (source, target) of pair ``i``, without specials."""
        i = _check_int("i", i, 0, len(self) - 1)
        return self._src.get(i), self._tgt.get(i)

    def batch(self, indices) -> Seq2SeqBatch:
        """The pairs ``indices`` (int array (B,)) as a padded batch (layout in the class docstring)."""
        idx = _check_indices(indices, len(self))
        rows = np.arange(idx.size)
        src_len, tgt_len = self._src.lengths[idx], self._tgt.lengths[idx]

        source, _ = self._src.padded(idx, self.source_length, PAD_ID)
        source[rows, src_len] = EOS_ID
        source_mask = np.arange(self.source_length) <= src_len[:, None]

        target_out, _ = self._tgt.padded(idx, self.target_length, PAD_ID)
        target_out[rows, tgt_len] = EOS_ID
        target_in, _ = self._tgt.padded(idx, self.target_length, PAD_ID, shift=1)
        target_in[:, 0] = BOS_ID
        target_mask = np.arange(self.target_length) <= tgt_len[:, None]
        return Seq2SeqBatch(source=source, source_mask=source_mask, target_in=target_in,
                            target_out=target_out, target_mask=target_mask, alignment=None)

    def sample(self, rng: np.random.Generator, batch_size: int) -> Seq2SeqBatch:
        """A random batch (without replacement when ``batch_size <= len(self)``, else with)."""
        return self.batch(draw_indices(rng, len(self), batch_size))

    def batches(self, rng: np.random.Generator | None, batch_size: int,
                drop_last: bool = False) -> Iterator[Seq2SeqBatch]:
        """One epoch: every pair exactly once, shuffled by ``rng`` (in file order if None)."""
        for idx in _epoch(len(self), rng, batch_size, drop_last):
            yield self.batch(idx)


# --------------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------------

def _numbered_lines(path: Path, encoding: str) -> list[tuple[int, str]]:
    """(line number, line without its newline) for every line; universal newlines, BOM stripped."""
    with open(path, encoding=encoding, newline=None) as f:
        return [(n, line.rstrip("\n")) for n, line in enumerate(f, start=1)]


def _classification_records(path: Path, fmt: str, encoding: str, has_header: bool):
    """Yield (line number, label, text) of every non-blank record of a TSV or CSV file."""
    if fmt == "tsv":
        lines = _numbered_lines(path, encoding)
        for n, line in lines[1:] if has_header else lines:
            if not line.strip():
                continue
            if "\t" not in line:
                raise ValueError(f"{path}, line {n}: missing the tab between label and text "
                                 f"(expected 'label<TAB>text')")
            label, text = line.split("\t", 1)
            yield n, label, text
        return
    with open(path, encoding=encoding, newline="") as f:  # newline="": csv handles quoted newlines
        reader = csv.reader(f, strict=True)
        try:
            for i, row in enumerate(reader):
                if i == 0 and has_header:
                    continue
                if not row or all(not field.strip() for field in row):
                    continue
                if len(row) < 2:
                    raise ValueError(f"{path}, line {reader.line_num}: missing field: expected "
                                     f"'label,text', got {len(row)} field")
                # An unquoted comma inside the text splits it; the label is always first, so the
                # rest is rejoined rather than lost.
                yield reader.line_num, row[0], ",".join(row[1:])
        except csv.Error as exc:
            raise ValueError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from exc


def _label_order(names: Iterable[str]) -> list[str]:
    """Sorted label names; numerically if every label is an integer (so '10' follows '2')."""
    names = sorted(set(names))
    try:
        return sorted(names, key=int)
    except ValueError:
        return names


def load_classification_file(path, *, format: str | None = None, lowercase: bool = False,
                             min_count: int = 1, max_size: int | None = None,
                             vocab: Vocabulary | None = None, labels: Sequence[str] | None = None,
                             max_length: int | None = None, has_header: bool = False,
                             encoding: str = "utf-8-sig") -> ClassificationDataset:
    """Load a ``label<TAB>text`` (TSV) or ``label,text`` (CSV) file.

    Parameters
    ----------
    path : str or Path
    format : {"tsv", "csv"} or None
        None: "csv" if the file name ends in ``.csv``, otherwise "tsv".
    lowercase : bool, default False
        Passed to :func:`tokenize`.
    min_count, max_size : int
        Passed to :meth:`Vocabulary.build` when ``vocab`` is None.
    vocab : Vocabulary or None
        An existing vocabulary (e.g. the training set's, for a test file); None builds one.
    labels : sequence of str or None
        The label names in class-id order; a label outside it is an error. None: the labels found,
        sorted (numerically if they are all integers).
    max_length : int >= 1 or None
        Keep only the first ``max_length`` tokens of each text.
    has_header : bool, default False
        Skip the first line (TSV) or record (CSV).
    encoding : str, default "utf-8-sig" (UTF-8, with or without a byte-order mark)

    Returns
    -------
    ClassificationDataset

    Raises
    ------
    ValueError
        Naming the file and line for a line without the separator, an empty label, an empty text,
        a label not in ``labels``, or malformed CSV quoting; and for a file without examples.
    """
    path = Path(path)
    if format is None:
        format = "csv" if path.suffix.lower() == ".csv" else "tsv"
    if format not in ("tsv", "csv"):
        raise ValueError(f"format must be 'tsv', 'csv' or None, got {format!r}")
    if max_length is not None:
        max_length = _check_int("max_length", max_length, 1)
    if labels is not None:
        labels = _token_list("labels", labels)
        if len(set(labels)) != len(labels) or not labels:
            raise ValueError(f"labels must be distinct and non-empty, got {labels}")

    label_strs, token_lists = [], []
    for n, label, text in _classification_records(path, format, encoding, has_header):
        label = label.strip()
        if not label:
            raise ValueError(f"{path}, line {n}: empty label")
        if labels is not None and label not in labels:
            raise ValueError(f"{path}, line {n}: label {label!r} is not one of {labels}")
        toks = tokenize(text, lowercase=lowercase)
        if not toks:
            raise ValueError(f"{path}, line {n}: empty text (label {label!r} has no tokens)")
        label_strs.append(label)
        token_lists.append(toks[:max_length] if max_length is not None else toks)
    if not token_lists:
        raise ValueError(f"{path}: no examples found")

    names = list(labels) if labels is not None else _label_order(label_strs)
    label_id = {name: i for i, name in enumerate(names)}
    if vocab is None:
        vocab = Vocabulary.build(token_lists, min_count=min_count, max_size=max_size)
    elif not isinstance(vocab, Vocabulary):
        raise TypeError(f"vocab must be a Vocabulary or None, got {type(vocab).__name__}")
    return ClassificationDataset([vocab.encode(t) for t in token_lists],
                                 np.array([label_id[s] for s in label_strs], dtype=np.int64),
                                 vocab, names)


def _sentence_lines(path: Path, encoding: str) -> list[tuple[int, str]]:
    lines = _numbered_lines(path, encoding)
    while lines and not lines[-1][1].strip():  # trailing blank lines are end-of-file noise
        lines.pop()
    return lines


def load_parallel_files(src_path, tgt_path, *, lowercase: bool = False, min_count: int = 1,
                        max_size: int | None = None, src_vocab: Vocabulary | None = None,
                        tgt_vocab: Vocabulary | None = None, max_length: int | None = None,
                        encoding: str = "utf-8-sig") -> ParallelDataset:
    """Load two line-aligned files (line i of ``tgt_path`` translates line i of ``src_path``).

    Parameters
    ----------
    src_path, tgt_path : str or Path
    lowercase : bool, default False
    min_count, max_size : int
        Passed to :meth:`Vocabulary.build` for each side whose vocabulary is not given.
    src_vocab, tgt_vocab : Vocabulary or None
        Existing vocabularies (e.g. from the training files); None builds them.
    max_length : int >= 1 or None
        Drop pairs in which either side has more than ``max_length`` tokens (truncating would
        break the translation); ``dataset.n_dropped`` counts them.
    encoding : str, default "utf-8-sig"

    Returns
    -------
    ParallelDataset

    Raises
    ------
    ValueError
        If the files have different numbers of lines (naming both files and the first line without
        a counterpart), if a line is blank on either side (naming the file and line), or if no pair
        is left.
    """
    src_path, tgt_path = Path(src_path), Path(tgt_path)
    if max_length is not None:
        max_length = _check_int("max_length", max_length, 1)
    src_lines, tgt_lines = _sentence_lines(src_path, encoding), _sentence_lines(tgt_path, encoding)
    if len(src_lines) != len(tgt_lines):
        short, long_, n_short = ((src_path, tgt_path, len(src_lines)) if len(src_lines) < len(tgt_lines)
                                 else (tgt_path, src_path, len(tgt_lines)))
        raise ValueError(f"parallel files have different numbers of lines: {src_path} has "
                         f"{len(src_lines)}, {tgt_path} has {len(tgt_lines)}; line {n_short + 1} of "
                         f"{long_} has no counterpart in {short}")
    src_toks, tgt_toks, dropped = [], [], 0
    for (n, s), (_, t) in zip(src_lines, tgt_lines):
        s_t, t_t = tokenize(s, lowercase=lowercase), tokenize(t, lowercase=lowercase)
        for p, toks in ((src_path, s_t), (tgt_path, t_t)):
            if not toks:
                raise ValueError(f"{p}, line {n}: blank line (every line must hold a sentence)")
        if max_length is not None and max(len(s_t), len(t_t)) > max_length:
            dropped += 1
            continue
        src_toks.append(s_t)
        tgt_toks.append(t_t)
    if not src_toks:
        raise ValueError(f"{src_path} / {tgt_path}: no sentence pairs "
                         f"{'left after max_length' if dropped else 'found'}")
    vocabs = []
    for name, v, toks in (("src_vocab", src_vocab, src_toks), ("tgt_vocab", tgt_vocab, tgt_toks)):
        if v is None:
            v = Vocabulary.build(toks, min_count=min_count, max_size=max_size)
        elif not isinstance(v, Vocabulary):
            raise TypeError(f"{name} must be a Vocabulary or None, got {type(v).__name__}")
        vocabs.append(v)
    ds = ParallelDataset([vocabs[0].encode(t) for t in src_toks], [vocabs[1].encode(t) for t in tgt_toks],
                         vocabs[0], vocabs[1])
    ds.n_dropped = dropped
    return ds
