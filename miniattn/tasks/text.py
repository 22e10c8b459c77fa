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

Every malformed line raises a one-line ``ValueError`` that names the file and the line number;
so do bytes that are not valid in the file's encoding (``FILE, line N: not valid UTF-8 (byte 0x..
at column C)``), a directory, an empty file, and a classification file with a single class. A
missing file is a ``FileNotFoundError`` (``FILE: no such file``). Header lines of classification
files: see :func:`detect_header`.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections import Counter
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
    "load_classification_file", "load_parallel_files", "draw_indices", "detect_header",
    "HEADER_LABEL_WORDS",
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
    source_length = the longest sequence (a batch is as wide as its own longest one, at most this),
    target_length = 1,
    pad_id = vocab.pad_id, bos_id = eos_id = None, labels (n,), lengths (n,);
    header_line (the line :func:`load_classification_file` skipped as a header, or None),
    n_truncated (texts cut by its ``max_length``), notes (tuple of str: what the loader decided).
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
        # Set by load_classification_file: the skipped header line, texts cut by max_length, and what
        # the loader decided (one line each, for the dataset summary).
        self.header_line: int | None = None
        self.n_truncated = 0
        self.notes: tuple[str, ...] = ()

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
            ``tokens (B, S)`` int64 with S = the longest of these examples (at most
            ``source_length``), ``mask`` bool (True on each row's prefix of length ``lengths[i]``),
            ``labels (B,)``, ``salient=None`` (real text has no ground truth).
        """
        idx = _check_indices(indices, len(self))
        # As wide as this batch needs, not the corpus's longest text: real lengths are skewed, and
        # every column of padding costs a full column of work in the forward and backward passes.
        tokens, mask = self._seqs.padded(idx, int(self.lengths[idx].max()), self.pad_id)
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
    source_length = longest source + 1, target_length = longest target + 1 (the widest batch; a
    batch is as wide as its own longest pair needs),
    pad_id = 0, bos_id = 2, eos_id = 3 (shared by both vocabularies; ``source_pad_id`` and
    ``source_eos_id`` are the same ids).
    n_dropped (pairs :func:`load_parallel_files` left out by ``max_length``), notes (tuple of str).
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
        self.notes: tuple[str, ...] = ()  # what load_parallel_files decided, one line each

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
        """The pairs ``indices`` (int array (B,)) as a padded batch (layout in the class docstring).

        The batch is (B, S) on the source side and (B, T) on the target side with S and T the longest
        source and target of these pairs plus one for ``<eos>`` (at most ``source_length`` and
        ``target_length``): padding is trimmed per batch, since every padded column costs as much
        work as a real one and real sentence lengths are skewed.
        """
        idx = _check_indices(indices, len(self))
        rows = np.arange(idx.size)
        src_len, tgt_len = self._src.lengths[idx], self._tgt.lengths[idx]
        S, T = int(src_len.max()) + 1, int(tgt_len.max()) + 1

        source, _ = self._src.padded(idx, S, PAD_ID)
        source[rows, src_len] = EOS_ID
        source_mask = np.arange(S) <= src_len[:, None]

        target_out, _ = self._tgt.padded(idx, T, PAD_ID)
        target_out[rows, tgt_len] = EOS_ID
        target_in, _ = self._tgt.padded(idx, T, PAD_ID, shift=1)
        target_in[:, 0] = BOS_ID
        target_mask = np.arange(T) <= tgt_len[:, None]
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

def _check_encoding(encoding) -> str:
    """``encoding`` if Python knows that text encoding, else a one-line ``ValueError``."""
    if not isinstance(encoding, str):
        raise TypeError(f"encoding must be a str naming a text encoding, got {type(encoding).__name__}")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(f"encoding: unknown text encoding {encoding!r} (e.g. 'utf-8-sig', 'latin-1', "
                         f"'cp1252')") from None
    return encoding


def _encoding_label(encoding: str) -> str:
    """How an error names the encoding: ``UTF-8`` for any spelling of UTF-8 (with or without BOM)."""
    name = codecs.lookup(encoding).name
    return "UTF-8" if name in ("utf-8", "utf-8-sig") else name


def _read_text(path: Path, encoding: str) -> str:
    """The whole text of ``path`` decoded with ``encoding`` (a UTF-8 byte-order mark is stripped by
    ``utf-8-sig``).

    Raises
    ------
    FileNotFoundError
        ``"FILE: no such file"``.
    ValueError
        ``"FILE is a directory, expected a text file"``; for bytes that do not decode,
        ``"FILE, line N: not valid UTF-8 (byte 0x.. at column C); pass --encoding"``, where N is
        the 1-based line and C the 1-based character column of the first offending byte.
    """
    encoding = _check_encoding(encoding)
    if path.is_dir():
        raise ValueError(f"{path} is a directory, expected a text file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raw = exc.object if isinstance(exc.object, bytes) else data  # the bytes after any stripped BOM
        # Lines as the loaders count them (universal newlines: \n, \r\n or \r).
        before = raw[:exc.start].replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        line = before.count(b"\n") + 1
        column = len(before[before.rfind(b"\n") + 1:].decode(encoding, errors="replace")) + 1
        raise ValueError(f"{path}, line {line}: not valid {_encoding_label(encoding)} (byte "
                         f"0x{raw[exc.start]:02x} at column {column}); pass --encoding (e.g. "
                         f"--encoding latin-1) if the file uses another encoding") from None


def _numbered_lines(path: Path, encoding: str) -> list[tuple[int, str]]:
    """(line number, line without its newline) for every line; universal newlines, BOM stripped."""
    stream = io.StringIO(_read_text(path, encoding), newline=None)
    return [(n, line.rstrip("\n")) for n, line in enumerate(stream, start=1)]


def _classification_records(path: Path, fmt: str, encoding: str, skip_first: bool):
    """``(records, skipped)``: (line number, label, text) of every non-blank record of a TSV or CSV
    file, and the line number of the first record if ``skip_first`` dropped it unparsed (else None)."""
    records, skipped = [], None
    if fmt == "tsv":
        for n, line in _numbered_lines(path, encoding):
            if not line.strip():
                continue
            if skip_first and skipped is None:
                skipped = n
                continue
            if "\t" not in line:
                hint = " (a header line? pass --header)" if not records else ""
                raise ValueError(f"{path}, line {n}: missing the tab between label and text "
                                 f"(expected 'label<TAB>text'){hint}")
            label, text = line.split("\t", 1)
            records.append((n, label, text))
        return records, skipped
    text = _read_text(path, encoding)
    with io.StringIO(text, newline="") as f:  # newline="": csv handles quoted newlines
        reader = csv.reader(f, strict=True)
        try:
            for row in reader:
                if not row or all(not field.strip() for field in row):
                    continue
                if skip_first and skipped is None:
                    skipped = reader.line_num - _row_lines(row) + 1
                    continue
                if len(row) < 2:
                    raise ValueError(f"{path}, line {reader.line_num}: missing field: expected "
                                     f"'label,text', got {len(row)} field")
                # An unquoted comma inside the text splits it; the label is always first, so the
                # rest is rejoined rather than lost.
                records.append((reader.line_num, row[0], ",".join(row[1:])))
        except csv.Error as exc:
            raise ValueError(f"{path}, line {reader.line_num}: malformed CSV ({exc})") from exc
    return records, skipped


def _row_lines(row: list[str]) -> int:
    """How many physical lines a parsed CSV row spans (quoted fields may hold newlines)."""
    return 1 + sum(field.count("\n") for field in row)


#: Label-column names that make a first record a header (compared lower-cased, see :func:`detect_header`).
HEADER_LABEL_WORDS = frozenset({"label", "labels", "class", "classes", "category", "categories", "sentiment",
                                "target", "targets", "y", "tag", "polarity", "gold", "gold_label", "intent"})


def detect_header(labels: Sequence[str], texts: Sequence[str]) -> tuple[bool, str]:
    """Decide whether the first record of a classification file is a header (column names).

    Rule: the first record is a header when its label does not recur anywhere else in the label
    column **and** either

    (a) its label, lower-cased, is a common label-column name (:data:`HEADER_LABEL_WORDS`: label,
        class, category, sentiment, target, ...), or
    (b) every other label occurs at least twice and the first record's text is a single word
        (a column name such as ``text`` or ``sentence``).

    Otherwise it is an example. (b) can misfire on a tiny file whose first example has a class of its
    own and a one-word text; pass ``has_header=False`` (``--no-header``) then.

    Parameters
    ----------
    labels : sequence of str (n,)
        The label field of every record, in file order (stripped).
    texts : sequence of str (n,)
        The text field of every record.

    Returns
    -------
    (is_header, reason) : (bool, str)
        ``reason`` says which part of the rule decided, for the dataset summary.
    """
    labels, texts = list(labels), list(texts)
    if not labels:
        return False, "no records"
    first, rest = labels[0], Counter(labels[1:])
    if first in rest:
        return False, f"its label {first!r} recurs in the label column"
    if first.lower() in HEADER_LABEL_WORDS:
        return True, f"its label {first!r} is a column name and does not recur"
    if rest and min(rest.values()) >= 2 and len(texts[0].split()) == 1:
        return True, (f"its label {first!r} occurs only there while every other label recurs, "
                      f"and its text {texts[0].strip()!r} is one word")
    return False, f"its label {first!r} is not a column name"


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
                             max_length: int | None = None, has_header: bool | None = False,
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
        sorted (numerically if they are all integers); then at least two classes are required.
    max_length : int >= 1 or None
        Keep only the first ``max_length`` tokens of each text (``dataset.n_truncated`` counts the
        texts cut).
    has_header : bool or None, default False
        True: skip the first record (the first non-blank line of a TSV file, the first CSV record).
        None: decide with :func:`detect_header`. False: the first record is an example, except that
        one which :func:`detect_header` would call a header by its label-column name (rule (a)) is
        an error, since it would become a class of one example. The decision is in
        ``dataset.header_line`` (the skipped line, or None) and ``dataset.notes``.
    encoding : str, default "utf-8-sig" (UTF-8, with or without a byte-order mark)

    Returns
    -------
    ClassificationDataset

    Raises
    ------
    FileNotFoundError
        ``"FILE: no such file"``.
    ValueError
        One line naming the file (and the line, where there is one) for: a directory, bytes that
        are not valid in ``encoding``, an empty file, a file with only a header, a line without the
        separator, an empty label, an empty text, a label not in ``labels``, malformed CSV quoting,
        a header line read as an example, and a file whose examples all have one label.
    """
    path = Path(path)
    if format is None:
        format = "csv" if path.suffix.lower() == ".csv" else "tsv"
    if format not in ("tsv", "csv"):
        raise ValueError(f"format must be 'tsv', 'csv' or None, got {format!r}")
    if max_length is not None:
        max_length = _check_int("max_length", max_length, 1)
    if has_header is not None and not isinstance(has_header, bool):
        raise TypeError(f"has_header must be True, False or None (auto-detect), got {has_header!r}")
    if labels is not None:
        labels = _token_list("labels", labels)
        if len(set(labels)) != len(labels) or not labels:
            raise ValueError(f"labels must be distinct and non-empty, got {labels}")

    records, skipped = _classification_records(path, format, encoding, skip_first=has_header is True)
    if skipped is not None and not records:
        raise ValueError(f"{path}: only a header line (line {skipped}), no examples found")
    if not records:
        raise ValueError(f"{path}: empty file, no examples found (expected 'label<TAB>text' or "
                         f"'label,text' lines)")
    notes, header_line = [], skipped
    is_header, reason = detect_header([r[1].strip() for r in records], [r[2] for r in records])
    first_n, first_label = records[0][0], records[0][1].strip()
    if has_header:
        notes.append(f"header: line {skipped} skipped (--header)")
    elif has_header is None:
        if is_header:
            header_line = first_n
            notes.append(f"header: line {first_n} skipped (auto-detected: {reason}; --no-header keeps it)")
        else:
            notes.append(f"header: none (auto-detected: {reason}; --header skips line {first_n})")
    elif is_header and first_label.lower() in HEADER_LABEL_WORDS and labels is None:
        raise ValueError(f"{path}, line {first_n}: looks like a header line ({reason}); pass --header "
                         f"(has_header=True) to skip it, or rename that label")
    if header_line is not None and has_header is None:
        records = records[1:]
        if not records:
            raise ValueError(f"{path}: only a header line (line {header_line}), no examples found")

    label_strs, token_lists, truncated = [], [], 0
    for n, label, text in records:
        label = label.strip()
        if not label:
            raise ValueError(f"{path}, line {n}: empty label")
        if labels is not None and label not in labels:
            raise ValueError(f"{path}, line {n}: label {label!r} is not one of {labels}")
        toks = tokenize(text, lowercase=lowercase)
        if not toks:
            raise ValueError(f"{path}, line {n}: empty text (label {label!r} has no tokens)")
        label_strs.append(label)
        if max_length is not None and len(toks) > max_length:
            truncated += 1
            toks = toks[:max_length]
        token_lists.append(toks)

    names = list(labels) if labels is not None else _label_order(label_strs)
    if labels is None and len(names) < 2:
        raise ValueError(f"{path}: every example ({len(label_strs)}) has the label {names[0]!r}; "
                         f"a classification file needs at least 2 classes")
    label_id = {name: i for i, name in enumerate(names)}
    if vocab is None:
        vocab = Vocabulary.build(token_lists, min_count=min_count, max_size=max_size)
    elif not isinstance(vocab, Vocabulary):
        raise TypeError(f"vocab must be a Vocabulary or None, got {type(vocab).__name__}")
    ds = ClassificationDataset([vocab.encode(t) for t in token_lists],
                               np.array([label_id[s] for s in label_strs], dtype=np.int64),
                               vocab, names)
    if truncated:
        notes.append(f"max_length: {truncated} of {len(ds)} texts cut to {max_length} tokens")
    ds.header_line, ds.n_truncated, ds.notes = header_line, truncated, tuple(notes)
    return ds


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
    FileNotFoundError
        ``"FILE: no such file"``.
    ValueError
        One line each: a directory, bytes not valid in ``encoding`` (file, line and column), an
        empty file; files with different numbers of lines (naming both files and the first line
        without a counterpart); a blank line on either side (naming the file and line); no pair left.
    """
    src_path, tgt_path = Path(src_path), Path(tgt_path)
    if max_length is not None:
        max_length = _check_int("max_length", max_length, 1)
    src_lines, tgt_lines = _sentence_lines(src_path, encoding), _sentence_lines(tgt_path, encoding)
    for p, lines in ((src_path, src_lines), (tgt_path, tgt_lines)):
        if not lines:
            raise ValueError(f"{p}: empty file, no sentences found (expected one sentence per line)")
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
    if dropped:
        ds.notes = (f"max_length: {dropped} of {len(src_lines)} pairs dropped (a side longer than "
                    f"{max_length} tokens)",)
    return ds
