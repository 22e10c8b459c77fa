"""benchmarks.synthetic_corpus: shapes, determinism, Zipf slope, an ambiguous lexicon, loadable files."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import synthetic_corpus as SC
from miniattn.tasks import load_classification_file, load_parallel_files

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus():
    return SC.parallel_corpus(3000, src_vocab=4000, tgt_vocab=3000, seed=7)


def test_shapes(corpus):
    assert len(corpus["source"]) == len(corpus["target"]) == 3000
    src_len = np.array([s.size for s in corpus["source"]])
    tgt_len = np.array([t.size for t in corpus["target"]])
    assert 11.0 < src_len.mean() < 13.0 and src_len.min() >= 3 and src_len.max() <= 40
    assert tgt_len.min() >= 1 and 0.8 < tgt_len.mean() / src_len.mean() < 1.3
    words = np.concatenate(corpus["source"])
    assert words.min() >= 0 and words.max() < 4000
    assert np.concatenate(corpus["target"]).max() < 3000


def test_default_shape_is_the_real_corpus_shape():
    full = SC.parallel_corpus(seed=0)
    assert len(full["source"]) == 29000
    n_src = np.unique(np.concatenate(full["source"])).size
    n_tgt = np.unique(np.concatenate(full["target"])).size
    assert 10000 <= n_src <= 19000 and 8000 <= n_tgt <= 19000, (n_src, n_tgt)


def test_deterministic_from_the_seed(corpus):
    again = SC.parallel_corpus(3000, src_vocab=4000, tgt_vocab=3000, seed=7)
    other = SC.parallel_corpus(3000, src_vocab=4000, tgt_vocab=3000, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(corpus["target"], again["target"]))
    assert not all(np.array_equal(a, b) for a, b in zip(corpus["target"], other["target"]))
    r1, r2 = SC.review_corpus(200, vocab=3000, polar_words=50, seed=3), SC.review_corpus(200, vocab=3000,
                                                                                         polar_words=50, seed=3)
    assert np.array_equal(r1["labels"], r2["labels"])
    assert all(np.array_equal(a, b) for a, b in zip(r1["tokens"], r2["tokens"]))


def test_zipf_slope():
    corpus = SC.parallel_corpus(20000, src_vocab=19000, tgt_vocab=14000, zipf=1.05, seed=1)
    counts = np.sort(np.bincount(np.concatenate(corpus["source"])))[::-1]
    ranks = np.arange(1, 201)
    slope = np.polyfit(np.log(ranks), np.log(counts[:200]), 1)[0]
    assert -1.2 < slope < -0.9, slope
    p = SC.zipf_probabilities(10, 1.0)
    np.testing.assert_allclose(p[0] / p[1], 2.0)
    np.testing.assert_allclose(p.sum(), 1.0)


def test_lexicon_is_many_to_many(corpus):
    offsets, targets, probs = corpus["lexicon"]
    per_source = np.diff(offsets)
    assert per_source.min() >= 1 and np.mean(per_source > 1) > 0.5          # one-to-many
    np.testing.assert_allclose(np.bincount(np.repeat(np.arange(per_source.size), per_source), weights=probs), 1.0)
    sources_per_target = np.bincount(targets)
    assert np.max(sources_per_target) >= 5                                   # many-to-one
    # Real ambiguity: many source words have two translations each drawn at least a fifth of the time.
    owner = np.repeat(np.arange(per_source.size), per_source)
    strong = np.bincount(owner, weights=(probs >= 0.2).astype(float), minlength=per_source.size)
    assert np.mean(strong >= 2) > 0.2


def test_local_reordering_exists():
    base = dict(src_vocab=500, tgt_vocab=400, untranslated=0.0, insert_rate=0.0, seed=5)
    plain = SC.parallel_corpus(300, swap_rate=0.0, **base)
    swapped = SC.parallel_corpus(300, swap_rate=0.5, **base)
    differs = [not np.array_equal(a, b) for a, b in zip(plain["target"], swapped["target"])]
    assert np.mean(differs) > 0.5
    # Swaps permute within a sentence: the same multiset of words.
    assert all(np.array_equal(np.sort(a), np.sort(b)) for a, b in zip(plain["target"], swapped["target"]))


def test_review_corpus_shape_and_signal():
    r = SC.review_corpus(400, vocab=5000, mean_length=230, polar_words=100, seed=2)
    lengths = np.array([t.size for t in r["tokens"]])
    assert 180 < lengths.mean() < 280 and set(np.unique(r["labels"])) == {0, 1}
    pos_words = set(r["polar"][1].tolist())
    share = [np.mean([w in pos_words for w in t.tolist()]) for t in r["tokens"]]
    share = np.array(share)
    assert share[r["labels"] == 1].mean() > 2 * share[r["labels"] == 0].mean()


def test_files_are_what_the_loaders_read(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.synthetic_corpus", "--pairs", "300", "--reviews", "50",
                           "--src-vocab", "800", "--tgt-vocab", "600", "--seed", "4", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = load_parallel_files(tmp_path / "parallel.src", tmp_path / "parallel.tgt")
    assert len(data) == 300
    reviews = load_classification_file(tmp_path / "reviews.tsv")
    assert len(reviews) == 50 and reviews.output_vocab_size == 2
    corpus = SC.parallel_corpus(300, src_vocab=800, tgt_vocab=600, seed=4)
    first = (tmp_path / "parallel.src").read_text().splitlines()[0].split()
    assert first == [f"s{w}" for w in corpus["source"][0].tolist()]


def test_bad_arguments_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="pairs"):
        SC.parallel_corpus(0)
    with pytest.raises(ValueError, match="function_words"):
        SC.parallel_corpus(10, tgt_vocab=20, function_words=30)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.synthetic_corpus", "--pairs", "-3", "--out",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1 and "pairs" in proc.stderr


def test_e3_scale_measures_the_fit_on_a_generated_corpus(tmp_path):
    from benchmarks import e3_scale

    src, tgt = e3_scale.ensure_corpus(tmp_path, pairs=200)
    assert src.is_file() and tgt.is_file()
    out = e3_scale.measure_fit(src, tgt, "--min-count 2", max_epochs=2, dim=8)
    assert out["pairs"] == 200 and out["train_pairs"] == 160 and out["held_out_pairs"] == 40
    assert out["options"]["min_count"] == 2 and out["epochs"] <= 2 and len(out["val_loss"]) == out["epochs"] + 1
    assert 0.0 <= out["unseen_held_out_tokens"] <= 1.0
    assert out["beta_px_shape"][0] == 40
