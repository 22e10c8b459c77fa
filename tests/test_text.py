"""Tests for the text side of miniattn.tasks: tokenizer, vocabulary, file loaders and datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from miniattn.batch import ClassificationBatch, Seq2SeqBatch
from miniattn.tasks import (ClassificationDataset, ParallelDataset, Vocabulary,
                            load_classification_file, load_parallel_files, tokenize)
from miniattn.tasks.text import RESERVED_TOKENS

DATA = Path(__file__).parent / "data"
SENTIMENT = DATA / "sentiment.tsv"
REVIEWS = DATA / "reviews.csv"
SRC, TGT = DATA / "parallel.en", DATA / "parallel.de"

words = st.text(alphabet=st.characters(categories=["L", "N", "P"]), min_size=1, max_size=6)


def rng_of(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed))


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def raw_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# ==================================================================================================
# Tokenizer and vocabulary
# ==================================================================================================

def test_tokenize_splits_on_any_whitespace():
    assert tokenize("  The cat\tsat\n on  the MAT ") == ["The", "cat", "sat", "on", "the", "MAT"]
    assert tokenize("The cat", lowercase=True) == ["the", "cat"]
    assert tokenize(" \t\n") == []
    with pytest.raises(TypeError, match="text"):
        tokenize(["a", "b"])


@given(st.lists(st.lists(words, max_size=8), max_size=8), st.integers(1, 3))
def test_vocabulary_build_and_round_trip(token_lists, min_count):
    vocab = Vocabulary.build(token_lists, min_count=min_count)
    assert vocab.tokens[:4] == RESERVED_TOKENS
    assert (vocab.pad_id, vocab.unk_id, vocab.bos_id, vocab.eos_id) == (0, 1, 2, 3)
    counts: dict[str, int] = {}
    for toks in token_lists:
        for t in toks:
            counts[t] = counts.get(t, 0) + 1
    expected = {t for t, c in counts.items() if c >= min_count and t not in RESERVED_TOKENS}
    assert set(vocab.words) == expected and len(vocab) == 4 + len(expected)
    # Most frequent first, ties alphabetical.
    keys = [(-counts[t], t) for t in vocab.words]
    assert keys == sorted(keys)
    for toks in token_lists:
        ids = vocab.encode(toks, add_bos=True, add_eos=True)
        assert ids.dtype == np.int64 and ids.shape == (len(toks) + 2,)
        assert ids[0] == vocab.bos_id and ids[-1] == vocab.eos_id
        back = vocab.decode(ids, strip_specials=True)
        assert back == [t if t in vocab else "<unk>" for t in toks]
        for t, i in zip(toks, ids[1:-1]):
            assert vocab.id_to_token(int(i)) == (t if t in vocab else "<unk>")


def test_vocabulary_min_count_max_size_and_unknowns():
    texts = [["a", "b", "a", "c"], ["a", "b", "d"]]
    v = Vocabulary.build(texts, min_count=2)
    assert v.words == ("a", "b")
    assert v.encode(["a", "c", "zzz"]).tolist() == [4, 1, 1]
    assert Vocabulary.build(texts, max_size=1).words == ("a",)
    assert Vocabulary.build(texts).words == ("a", "b", "c", "d")
    assert "a" in v and "c" not in v and v.token_to_id("c") == v.unk_id
    assert v.decode([0, 2, 4, 1, 3]) == ["<pad>", "<bos>", "a", "<unk>", "<eos>"]
    assert v.decode(np.array([0, 2, 4, 1, 3]), strip_specials=True) == ["a", "<unk>"]
    # A token spelling a special encodes to that special and is not added twice.
    assert Vocabulary.build([["<eos>", "x"]]).words == ("x",)


def test_vocabulary_rejects_bad_input():
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary(["a", "a"])
    with pytest.raises(ValueError, match="special"):
        Vocabulary(["<unk>"])
    with pytest.raises(ValueError, match="empty"):
        Vocabulary([""])
    with pytest.raises(TypeError, match="words"):
        Vocabulary([1, 2])
    v = Vocabulary(["a"])
    with pytest.raises(TypeError, match="tokens"):
        v.encode("a b")  # a str would be read character by character
    with pytest.raises(ValueError, match="ids"):
        v.decode([0, 5])
    with pytest.raises(ValueError, match="ids"):
        v.decode([-1])
    with pytest.raises(TypeError, match="ids"):
        v.decode(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="min_count"):
        Vocabulary.build([["a"]], min_count=0)


@given(st.lists(words, unique=True, max_size=20).filter(lambda ws: not set(ws) & set(RESERVED_TOKENS)))
def test_vocabulary_save_load_round_trip(tmp_path_factory, ws):
    path = tmp_path_factory.mktemp("vocab") / "vocab.json"
    v = Vocabulary(ws)
    v.save(path)
    loaded = Vocabulary.load(path)
    assert loaded == v and loaded.tokens == v.tokens
    assert [p.name for p in path.parent.iterdir()] == ["vocab.json"]  # no temporary left behind


def test_vocabulary_load_rejects_malformed_files(tmp_path):
    cases = {
        "notjson.json": "{not json",
        "wrongformat.json": json.dumps({"format": "other", "version": 1, "tokens": list(RESERVED_TOKENS)}),
        "wrongversion.json": json.dumps({"format": "miniattn-vocabulary", "version": 99,
                                         "tokens": list(RESERVED_TOKENS)}),
        "nospecials.json": json.dumps({"format": "miniattn-vocabulary", "version": 1, "tokens": ["a"]}),
        "dup.json": json.dumps({"format": "miniattn-vocabulary", "version": 1,
                                "tokens": list(RESERVED_TOKENS) + ["a", "a"]}),
    }
    for name, text in cases.items():
        with pytest.raises(ValueError, match=name):
            Vocabulary.load(write(tmp_path, name, text))


# ==================================================================================================
# Classification files
# ==================================================================================================

def test_load_sentiment_tsv():
    ds = load_classification_file(SENTIMENT, lowercase=True)
    lines = raw_lines(SENTIMENT)
    assert len(ds) == len(lines) == 30
    assert ds.label_names == ("neg", "pos") and ds.n_classes == ds.output_vocab_size == 2
    labels = [ln.split("\t", 1)[0] for ln in lines]
    np.testing.assert_array_equal(ds.labels, [ds.label_names.index(s) for s in labels])
    texts = [tokenize(ln.split("\t", 1)[1], lowercase=True) for ln in lines]
    assert ds.source_length == max(map(len, texts)) and ds.input_vocab_size == len(ds.vocab)
    assert "wonderful" in ds.vocab and "Wonderful" not in ds.vocab
    for i in range(len(ds)):
        assert ds.vocab.decode(ds.tokens(i)) == texts[i]
    # A second tab belongs to the text.
    assert ds.vocab.decode(ds.tokens(24)) == ["great", "film", ",", "with", "a", "tab", "inside",
                                             "the", "text"]

    b = ds.batch(np.arange(len(ds)))
    assert isinstance(b, ClassificationBatch) and b.salient is None
    assert b.tokens.shape == b.mask.shape == (30, ds.source_length) and b.tokens.dtype == np.int64
    assert b.mask.dtype == np.bool_
    np.testing.assert_array_equal(b.mask.sum(axis=1), [len(t) for t in texts])
    np.testing.assert_array_equal(b.mask, np.arange(ds.source_length) < ds.lengths[:, None])
    assert (b.tokens[~b.mask] == ds.pad_id).all() and (b.tokens[b.mask] >= 4).all()
    for i in range(30):
        assert ds.vocab.decode(b.tokens[i, b.mask[i]]) == texts[i]


def test_load_csv_with_quoted_commas():
    ds = load_classification_file(REVIEWS, has_header=True)
    assert len(ds) == 7 + 1 and ds.label_names == ("negative", "positive")
    assert ds.vocab.decode(ds.tokens(0)) == ["great", "food,", "friendly", "staff"]
    assert ds.vocab.decode(ds.tokens(3)) == ["the", '"special"', "was", "anything", "but", "special"]
    np.testing.assert_array_equal(ds.labels[:4], [1, 0, 1, 0])
    # Auto-detection (has_header=None) skips the same header line and says so; has_header=False
    # refuses a first line whose label is a column name (it would become a class of one example).
    auto = load_classification_file(REVIEWS, has_header=None)
    assert auto.header_line == 1 and auto.vocab == ds.vocab and auto.labels.tolist() == ds.labels.tolist()
    assert any("line 1 skipped" in note for note in auto.notes)
    with pytest.raises(ValueError) as info:
        load_classification_file(REVIEWS)
    assert str(REVIEWS) in str(info.value) and "line 1" in str(info.value) and "--header" in str(info.value)


def test_classification_fixed_labels_vocab_and_truncation(tmp_path):
    train = load_classification_file(SENTIMENT, lowercase=True, min_count=2)
    assert all(c >= 2 for c in [sum(tokenize(ln, lowercase=True).count(w) for ln in raw_lines(SENTIMENT))
                                for w in train.vocab.words])
    test_file = write(tmp_path, "test.tsv", "pos\tgreat unseenword film\nneg\tboring\n")
    test = load_classification_file(test_file, lowercase=True, vocab=train.vocab, labels=train.label_names,
                                    max_length=2)
    assert test.vocab is train.vocab and test.label_names == train.label_names
    assert test.vocab.decode(test.tokens(0)) == ["great", "<unk>"]
    assert test.labels.tolist() == [1, 0] and test.source_length == 2
    # Integer labels are ordered numerically.
    ints = load_classification_file(write(tmp_path, "ints.tsv", "10\ta\n2\tb\n0\tc\n"))
    assert ints.label_names == ("0", "2", "10") and ints.labels.tolist() == [2, 1, 0]


@pytest.mark.parametrize("text, line, what", [
    ("pos\tgood\nneg bad\n", 2, "tab"),
    ("pos\tgood\n\t bad\n", 2, "empty label"),
    ("pos\tgood\nneg\t   \n", 2, "empty text"),
    ("pos\tgood\n\nneutral\tmeh\n", 3, "not one of"),
])
def test_classification_tsv_malformed_lines(tmp_path, text, line, what):
    path = write(tmp_path, "bad.tsv", text)
    labels = ["neg", "pos"] if what == "not one of" else None
    with pytest.raises(ValueError) as info:
        load_classification_file(path, labels=labels)
    msg = str(info.value)
    assert str(path) in msg and f"line {line}" in msg and what in msg


@pytest.mark.parametrize("text, line, what", [
    ("pos,good\nneg\n", 2, "missing field"),
    ('pos,good\nneg,"unterminated\n', 2, "malformed CSV"),
    ('pos,"two\nlines"\n,empty label\n', 3, "empty label"),
])
def test_classification_csv_malformed_lines(tmp_path, text, line, what):
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(ValueError) as info:
        load_classification_file(path)
    msg = str(info.value)
    assert str(path) in msg and f"line {line}" in msg and what in msg


def test_classification_empty_file_and_bad_options(tmp_path):
    with pytest.raises(ValueError, match="no examples"):
        load_classification_file(write(tmp_path, "empty.tsv", "\n\n"))
    with pytest.raises(ValueError, match="format"):
        load_classification_file(SENTIMENT, format="json")
    with pytest.raises(ValueError, match="max_length"):
        load_classification_file(SENTIMENT, max_length=0)
    with pytest.raises(TypeError, match="vocab"):
        load_classification_file(SENTIMENT, vocab={"a": 4})
    with pytest.raises(FileNotFoundError):
        load_classification_file(tmp_path / "missing.tsv")


def test_classification_sample_batches_and_purity():
    ds = load_classification_file(SENTIMENT)
    a = ds.sample(rng_of(0), 8)
    b = ds.sample(rng_of(0), 8)
    for x, y in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.labels, ds.sample(rng_of(1), 8).labels) or \
        not np.array_equal(a.tokens, ds.sample(rng_of(1), 8).tokens)
    assert ds.sample(rng_of(0), 100).tokens.shape == (100, ds.source_length)  # with replacement
    # batch_size <= len: without replacement, so a full-size sample is a reordering of the data.
    full = ds.sample(rng_of(6), len(ds))
    assert sorted(map(tuple, full.tokens.tolist())) == sorted(map(tuple, ds.batch(np.arange(len(ds))).tokens.tolist()))

    seen = [bt.labels.size for bt in ds.batches(rng_of(2), 7)]
    assert seen == [7, 7, 7, 7, 2] and [bt.labels.size for bt in ds.batches(None, 7, drop_last=True)] == [7] * 4
    # One epoch visits every example exactly once.
    firsts = np.concatenate([bt.tokens[:, 0] for bt in ds.batches(rng_of(3), 4)])
    np.testing.assert_array_equal(np.sort(firsts), np.sort(ds.batch(np.arange(len(ds))).tokens[:, 0]))
    in_order = next(ds.batches(None, 30))
    np.testing.assert_array_equal(in_order.labels, ds.labels)

    before = np.random.get_state()
    ds.sample(rng_of(5), 4)
    list(ds.batches(rng_of(5), 4))
    after = np.random.get_state()
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2:] == after[2:]

    with pytest.raises(TypeError, match="rng"):
        ds.sample(None, 4)
    with pytest.raises(ValueError, match="batch_size"):
        ds.sample(rng_of(0), 0)
    with pytest.raises(ValueError, match="indices"):
        ds.batch([0, 30])
    with pytest.raises(ValueError, match="indices"):
        ds.batch([-1])


@given(st.lists(st.lists(st.integers(4, 9), min_size=1, max_size=6), min_size=1, max_size=10),
       st.data())
def test_classification_dataset_padding(seqs, data):
    vocab = Vocabulary([f"w{i}" for i in range(6)])
    labels = data.draw(st.lists(st.integers(0, 2), min_size=len(seqs), max_size=len(seqs)))
    ds = ClassificationDataset([np.array(s) for s in seqs], labels, vocab, ["a", "b", "c"])
    idx = np.array(data.draw(st.lists(st.integers(0, len(seqs) - 1), min_size=1, max_size=12)))
    b = ds.batch(idx)
    # As wide as the longest example in the batch: padding is trimmed per batch.
    assert b.tokens.shape == (idx.size, max(len(seqs[i]) for i in idx))
    for row, i in enumerate(idx):
        n = len(seqs[i])
        assert b.tokens[row, :n].tolist() == seqs[i] and (b.tokens[row, n:] == vocab.pad_id).all()
        assert b.mask[row].tolist() == [True] * n + [False] * (b.tokens.shape[1] - n)
        assert b.labels[row] == labels[i]


def test_classification_dataset_validation():
    v = Vocabulary(["a", "b"])
    with pytest.raises(ValueError, match=r"sequences\[1\]"):
        ClassificationDataset([np.array([4]), np.array([], dtype=np.int64)], [0, 1], v, ["x", "y"])
    with pytest.raises(ValueError, match=r"sequences\[0\]"):
        ClassificationDataset([np.array([6])], [0], v, ["x"])
    with pytest.raises(ValueError, match="labels"):
        ClassificationDataset([np.array([4])], [2], v, ["x", "y"])
    with pytest.raises(ValueError, match="labels"):
        ClassificationDataset([np.array([4])], [0, 1], v, ["x", "y"])


# ==================================================================================================
# Parallel files
# ==================================================================================================

def test_load_parallel_files():
    ds = load_parallel_files(SRC, TGT)
    src_lines, tgt_lines = raw_lines(SRC), raw_lines(TGT)
    assert len(ds) == len(src_lines) == len(tgt_lines) == 20
    assert ds.source_length == max(len(tokenize(s)) for s in src_lines) + 1
    assert ds.target_length == max(len(tokenize(t)) for t in tgt_lines) + 1
    assert ds.input_vocab_size == len(ds.src_vocab) and ds.output_vocab_size == len(ds.tgt_vocab)
    assert (ds.pad_id, ds.bos_id, ds.eos_id) == (0, 2, 3) == (ds.source_pad_id, 2, ds.source_eos_id)
    assert "schläft" in ds.tgt_vocab and "schläft" not in ds.src_vocab

    b = ds.batch(np.arange(20))
    assert isinstance(b, Seq2SeqBatch) and b.alignment is None
    assert b.source.shape == b.source_mask.shape == (20, ds.source_length)
    assert b.target_in.shape == b.target_out.shape == b.target_mask.shape == (20, ds.target_length)
    for i in range(20):
        s, t = tokenize(src_lines[i]), tokenize(tgt_lines[i])
        assert ds.src_vocab.decode(b.source[i, b.source_mask[i]]) == s + ["<eos>"]
        assert ds.tgt_vocab.decode(b.target_out[i, b.target_mask[i]]) == t + ["<eos>"]
        assert ds.tgt_vocab.decode(b.target_in[i, b.target_mask[i]]) == ["<bos>"] + t
        assert b.source_mask[i].sum() == len(s) + 1 and b.target_mask[i].sum() == len(t) + 1
        assert (b.source[i, ~b.source_mask[i]] == 0).all() and (b.target_out[i, ~b.target_mask[i]] == 0).all()
        assert (b.target_in[i, ~b.target_mask[i]] == 0).all()
        assert ds.tgt_vocab.decode(ds.pair(i)[1]) == t


def test_parallel_batches_are_trimmed_to_their_longest_pair():
    """A batch is as wide as its own longest source / target (+1 for <eos>), and the trimmed batch
    is the full-width batch with its all-padding columns removed."""
    ds = load_parallel_files(SRC, TGT)
    full = ds.batch(np.arange(len(ds)))
    for idx in (np.array([0]), np.array([3, 1]), np.arange(0, 20, 3)):
        b = ds.batch(idx)
        src_len, tgt_len = (np.array([len(x) for x in side]) for side in zip(*(ds.pair(i) for i in idx)))
        S, T = src_len.max() + 1, tgt_len.max() + 1
        assert b.source.shape == b.source_mask.shape == (idx.size, S)
        assert b.target_in.shape == b.target_out.shape == b.target_mask.shape == (idx.size, T)
        for name, width in (("source", S), ("source_mask", S), ("target_in", T), ("target_out", T),
                            ("target_mask", T)):
            np.testing.assert_array_equal(getattr(b, name), getattr(full, name)[idx, :width])
        # What was cut is padding only.
        assert not full.source_mask[idx, S:].any() and not full.target_mask[idx, T:].any()


def test_parallel_sampling_vocab_reuse_and_max_length(tmp_path):
    ds = load_parallel_files(SRC, TGT, min_count=2)
    assert all(tok in ds.src_vocab for tok in ("the", "cat", "dog"))
    a, b = ds.sample(rng_of(1), 5), ds.sample(rng_of(1), 5)
    for x, y in zip(a[:5], b[:5]):
        np.testing.assert_array_equal(x, y)
    assert sum(bt.source.shape[0] for bt in ds.batches(rng_of(2), 6)) == 20
    short = load_parallel_files(SRC, TGT, max_length=4, src_vocab=ds.src_vocab, tgt_vocab=ds.tgt_vocab)
    n_long = sum(max(len(tokenize(s)), len(tokenize(t))) > 4 for s, t in zip(raw_lines(SRC), raw_lines(TGT)))
    assert short.n_dropped == n_long > 0 and len(short) == 20 - n_long
    assert short.source_length <= 5 and short.src_vocab is ds.src_vocab
    # Trailing blank lines are ignored.
    s = write(tmp_path, "a.src", "x y\nz\n\n\n")
    t = write(tmp_path, "a.tgt", "X\nZ Z\n")
    assert len(load_parallel_files(s, t)) == 2


def test_parallel_malformed_files(tmp_path):
    s = write(tmp_path, "s.txt", "a b\nc\nd e\n")
    t = write(tmp_path, "t.txt", "A B\nC\n")
    with pytest.raises(ValueError) as info:
        load_parallel_files(s, t)
    msg = str(info.value)
    assert str(s) in msg and str(t) in msg and "line 3" in msg
    with pytest.raises(ValueError, match="line 3"):
        load_parallel_files(t, s)  # either order names the first line without a counterpart
    blank = write(tmp_path, "blank.txt", "A B\n  \nD\n")
    with pytest.raises(ValueError) as info:
        load_parallel_files(s, blank)
    assert str(blank) in str(info.value) and "line 2" in str(info.value)
    with pytest.raises(ValueError, match="no sentence pairs"):
        load_parallel_files(s, write(tmp_path, "long.txt", "A B C\nC D E\nE F G\n"), max_length=2)
    with pytest.raises(TypeError, match="tgt_vocab"):
        load_parallel_files(s, write(tmp_path, "ok.txt", "A\nB\nC\n"), tgt_vocab=["A"])


def test_parallel_dataset_validation_and_empty_targets():
    v = Vocabulary(["a", "b"])
    ds = ParallelDataset([np.array([4, 5]), np.array([5])], [np.array([4]), np.array([], dtype=np.int64)], v, v)
    b = ds.batch(np.array([1, 1, 0]))
    assert b.target_out[0].tolist() == [3, 0] and b.target_in[0].tolist() == [2, 0]
    assert b.target_mask[0].tolist() == [True, False] and b.source[0].tolist() == [5, 3, 0]
    with pytest.raises(ValueError, match="same number"):
        ParallelDataset([np.array([4])], [], v, v)
    with pytest.raises(ValueError, match=r"sources\[0\]"):
        ParallelDataset([[]], [[4]], v, v)


# --------------------------------------------------------------------------------------------------
# HeldOutSplit: a fixed held-out part of a finite dataset
# --------------------------------------------------------------------------------------------------

def _parallel():
    return load_parallel_files(DATA / "parallel.de", DATA / "parallel.en")


def test_held_out_split_is_a_partition_and_training_batches_avoid_it():
    from miniattn.tasks import HeldOutSplit

    data = _parallel()
    split = HeldOutSplit(data, 0.2, np.random.default_rng(0))
    n = len(data)
    assert len(split.held_out_indices) == round(0.2 * n) and len(split) == n - round(0.2 * n)
    assert sorted(np.concatenate([split.held_out_indices, split.train_indices]).tolist()) == list(range(n))
    held = split.held_out_batch()
    np.testing.assert_array_equal(held.source, data.batch(split.held_out_indices).source)
    # Attributes are the dataset's, so models are built from the split unchanged.
    assert (split.input_vocab_size, split.source_length, split.pad_id) == (
        data.input_vocab_size, data.source_length, data.pad_id)
    # A batch the size of the training part holds each training example exactly once.
    batch = split.sample(np.random.default_rng(1), len(split))
    rows = sorted(batch.source[j].tobytes() for j in range(len(split)))
    assert rows == sorted(data.batch(split.train_indices).source[j].tobytes() for j in range(len(split)))


def test_held_out_split_is_seeded():
    from miniattn.tasks import HeldOutSplit

    data = _parallel()
    a = HeldOutSplit(data, 0.3, np.random.default_rng(7)).held_out_indices
    b = HeldOutSplit(data, 0.3, np.random.default_rng(7)).held_out_indices
    c = HeldOutSplit(data, 0.3, np.random.default_rng(8)).held_out_indices
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, True, "0.2", 0.001])
def test_held_out_split_rejects_bad_fractions(fraction):
    from miniattn.tasks import HeldOutSplit

    with pytest.raises(ValueError, match="fraction|empty part"):
        HeldOutSplit(_parallel(), fraction, np.random.default_rng(0))


def test_held_out_split_rejects_a_non_dataset():
    from miniattn.tasks import HeldOutSplit

    with pytest.raises(TypeError, match="dataset"):
        HeldOutSplit([1, 2, 3], 0.5, np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng"):
        HeldOutSplit(_parallel(), 0.5, 0)


def test_train_evaluates_on_the_held_out_part():
    from miniattn.models import Seq2SeqAttention
    from miniattn.optim import Adam
    from miniattn.tasks import HeldOutSplit
    from miniattn.train import train

    split = HeldOutSplit(_parallel(), 0.25, np.random.default_rng(0))
    model = Seq2SeqAttention(split.input_vocab_size, split.output_vocab_size, split.source_length,
                             split.target_length, dim=8, rng=np.random.default_rng(1))
    seen = []
    train(model, split, Adam(model.params, lr=1e-2), steps=2, batch_size=4, seed=3, eval_every=1,
          eval_size=999, progress=False, metrics_fn=lambda m, b: seen.append(b.source.copy()) or {})
    assert len(seen) == 3
    for src in seen:
        np.testing.assert_array_equal(src, split.held_out_batch().source)


# ==================================================================================================
# One-line file errors: encoding, directories, missing and empty files, one class, header lines
# ==================================================================================================

def _one_line_error(exc_type, fn, *args, **kwargs) -> str:
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("suffix", [".tsv", ".csv"])
def test_classification_not_utf8_names_file_line_and_column(tmp_path, suffix):
    sep = "\t" if suffix == ".tsv" else ","
    path = tmp_path / f"latin{suffix}"
    path.write_bytes(f"pos{sep}good film\nneg{sep}bad\npos{sep}caf".encode() + b"\xe9 ok\n")
    msg = _one_line_error(ValueError, load_classification_file, path)
    assert msg.startswith(f"{path}, line 3: not valid UTF-8 (byte 0xe9 at column 8)") and "--encoding" in msg
    # The same file in its real encoding loads, é included.
    ds = load_classification_file(path, encoding="latin-1")
    assert "café" in ds.vocab


def test_not_utf8_line_numbers_follow_universal_newlines(tmp_path):
    for newline in ("\r\n", "\r"):
        path = tmp_path / "crlf.tsv"
        path.write_bytes(newline.join(["pos\tgood", "neg\tbad", "neg\tx\x80y"]).encode("latin-1"))
        msg = _one_line_error(ValueError, load_classification_file, path)
        assert msg.startswith(f"{path}, line 3: not valid UTF-8 (byte 0x80 at column 6)"), (newline, msg)


def test_parallel_not_utf8_after_a_bom_counts_lines_of_the_file(tmp_path):
    src = tmp_path / "s.txt"
    src.write_bytes(b"\xef\xbb\xbfa b\nc \xff d\n")
    tgt = write(tmp_path, "t.txt", "A B\nC D\n")
    msg = _one_line_error(ValueError, load_parallel_files, src, tgt)
    assert msg.startswith(f"{src}, line 2: not valid UTF-8 (byte 0xff at column 3)")


def test_directories_missing_and_empty_files_are_one_line_errors(tmp_path):
    ok = write(tmp_path, "ok.txt", "a\nb\n")
    msg = _one_line_error(ValueError, load_classification_file, tmp_path)
    assert msg == f"{tmp_path} is a directory, expected a text file"
    msg = _one_line_error(ValueError, load_parallel_files, ok, tmp_path)
    assert msg == f"{tmp_path} is a directory, expected a text file"
    missing = tmp_path / "missing.tsv"
    assert _one_line_error(FileNotFoundError, load_classification_file, missing) == f"{missing}: no such file"
    assert _one_line_error(FileNotFoundError, load_parallel_files, missing, ok) == f"{missing}: no such file"
    empty = write(tmp_path, "empty.tsv", "")
    assert _one_line_error(ValueError, load_classification_file, empty).startswith(f"{empty}: empty file")
    msg = _one_line_error(ValueError, load_parallel_files, ok, empty)
    assert msg.startswith(f"{empty}: empty file")
    with pytest.raises(ValueError, match="encoding: unknown text encoding 'nope'"):
        load_classification_file(ok, encoding="nope")


def test_classification_with_one_class_or_only_a_header(tmp_path):
    one = write(tmp_path, "one.tsv", "pos\tgood\npos\tfine\n")
    msg = _one_line_error(ValueError, load_classification_file, one)
    assert str(one) in msg and "'pos'" in msg and "at least 2 classes" in msg
    # Declared labels make a one-class file (e.g. a small test split) legitimate.
    assert load_classification_file(one, labels=["neg", "pos"]).labels.tolist() == [1, 1]
    header_only = write(tmp_path, "header.tsv", "label\ttext\n")
    for has_header in (None, True):
        msg = _one_line_error(ValueError, load_classification_file, header_only, has_header=has_header)
        assert msg == f"{header_only}: only a header line (line 1), no examples found"
    no_tab = write(tmp_path, "notab.tsv", "label text\npos\tgood\nneg\tbad\n")
    msg = _one_line_error(ValueError, load_classification_file, no_tab)
    assert f"{no_tab}, line 1" in msg and "--header" in msg
    ds = load_classification_file(no_tab, has_header=True)
    assert len(ds) == 2 and ds.header_line == 1 and ds.notes == ("header: line 1 skipped (--header)",)
    # A quoted CSV header spanning two lines is skipped whole; the header line is where it starts.
    csv_path = write(tmp_path, "two.csv", '\n"label\nname",text\npos,good\nneg,bad\n')
    ds = load_classification_file(csv_path, has_header=True)
    assert len(ds) == 2 and ds.header_line == 2


@pytest.mark.parametrize("text, header", [
    ("label\ttext\npos\tgood\nneg\tbad\n", True),                  # (a) a column name
    ("Sentiment\tReview\npos\tgood\nneg\tbad\n", True),            # (a), any case
    ("polarity\tsentence\npos\tgood\nneg\tbad\npos\tok\n", True),
    ("stars\ttext\npos\tgood\nneg\tbad\npos\tok\nneg\tno\n", True),  # (b) unique label, one-word text
    ("stars\ttext\npos\tgood\nneg\tbad\npos\tok\n", False),        # (b) fails: 'neg' occurs once
    ("odd\tone two\npos\tgood\nneg\tbad\npos\tok\nneg\tno\n", False),  # (b) fails: two-word text
    ("pos\tgood\nneg\tbad\npos\tfine\n", False),                   # the first label recurs
    ("label\tgood\nlabel\tbad\nother\tx\n", False),               # 'label' recurs: it is a class
])
def test_header_auto_detection_rule(tmp_path, text, header):
    path = write(tmp_path, "h.tsv", text)
    ds = load_classification_file(path, has_header=None)
    n_records = text.count("\n")
    assert (ds.header_line == 1) is header and len(ds) == n_records - header
    assert len(ds.notes) == 1 and ds.notes[0].startswith("header: " + ("line 1 skipped" if header else "none"))


def test_max_length_truncation_and_dropped_pairs_are_counted(tmp_path):
    ds = load_classification_file(write(tmp_path, "c.tsv", "pos\ta b c\nneg\td\n"), max_length=2)
    assert ds.n_truncated == 1 and any("1 of 2 texts cut to 2" in n for n in ds.notes)
    s = write(tmp_path, "s.txt", "a b c\nd\n")
    t = write(tmp_path, "t.txt", "A\nD\n")
    pairs = load_parallel_files(s, t, max_length=2)
    assert pairs.n_dropped == 1 and pairs.notes == ("max_length: 1 of 2 pairs dropped (a side longer than "
                                                    "2 tokens)",)
    assert load_parallel_files(s, t).notes == ()
