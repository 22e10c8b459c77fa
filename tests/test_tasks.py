"""Tests for the synthetic task generators (copy, keyword classification, translation)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from miniattn.batch import ClassificationBatch, Seq2SeqBatch
from miniattn.tasks import CopyTask, KeywordClassificationTask, TranslationTask

seeds = st.integers(0, 2**32 - 1)
probs = st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0])


def rng_of(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed))


def assert_batches_equal(a, b):
    assert type(a) is type(b)
    for x, y in zip(a, b):
        if x is None:
            assert y is None
        else:
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)


def assert_global_state_untouched(fn):
    """Run ``fn`` and check that NumPy's legacy global random state did not move."""
    before = np.random.get_state()
    fn()
    after = np.random.get_state()
    assert before[0] == after[0] and before[2:] == after[2:]
    np.testing.assert_array_equal(before[1], after[1])


def assert_prefix_mask(mask, lengths):
    """mask[b] is True exactly on the first lengths[b] positions."""
    np.testing.assert_array_equal(mask, np.arange(mask.shape[1]) < np.asarray(lengths)[:, None])


# ==================================================================================================
# Copy
# ==================================================================================================

@st.composite
def copy_configs(draw):
    mode = draw(st.sampled_from(["permutation", "subset", "replacement"]))
    length = draw(st.integers(1, 12))
    if mode == "permutation":
        vocab = length
    elif mode == "subset":
        vocab = length + draw(st.integers(0, 10))
    else:
        vocab = draw(st.integers(1, 20))
    return length, vocab, mode, draw(st.booleans())


@given(copy_configs(), st.integers(1, 8), seeds)
def test_copy_batch_structure(config, batch_size, seed):
    L, V, mode, specials = config
    task = CopyTask(L, V, mode, specials=specials)
    b = task.sample(rng_of(seed), batch_size)
    assert isinstance(b, Seq2SeqBatch)
    S, T = task.source_length, task.target_length
    assert b.source.shape == b.source_mask.shape == (batch_size, S)
    assert b.target_in.shape == b.target_out.shape == b.target_mask.shape == b.alignment.shape == (batch_size, T)
    for arr in (b.source, b.target_in, b.target_out, b.alignment):
        assert arr.dtype == np.int64
    assert b.source_mask.dtype == b.target_mask.dtype == np.bool_
    assert b.source_mask.all() and b.target_mask.all()
    for arr in (b.source, b.target_in, b.target_out):
        assert arr.min() >= 0 and arr.max() < task.input_vocab_size

    content = b.source[:, :L]
    assert content.max() < V  # content ids never collide with the specials
    np.testing.assert_array_equal(b.target_out[:, :L], content)
    if specials:
        assert (S, T) == (L + 1, L + 1) and task.input_vocab_size == task.output_vocab_size == V + 3
        assert (task.pad_id, task.bos_id, task.eos_id) == (V, V + 1, V + 2)
        assert (b.source[:, L] == task.eos_id).all() and (b.target_out[:, L] == task.eos_id).all()
        assert (b.target_in[:, 0] == task.bos_id).all()
        np.testing.assert_array_equal(b.target_in[:, 1:], content)  # teacher forcing: shifted right
    else:
        assert (S, T) == (L, L) and task.input_vocab_size == task.output_vocab_size == V
        assert task.pad_id is None and task.bos_id is None and task.eos_id is None
        np.testing.assert_array_equal(b.source, b.target_out)
        np.testing.assert_array_equal(b.target_in, b.target_out)
    # Output t copies source t (and <eos> is aligned to the source <eos>).
    np.testing.assert_array_equal(b.alignment, np.broadcast_to(np.arange(T), (batch_size, T)))
    np.testing.assert_array_equal(np.take_along_axis(b.source, b.alignment, axis=1), b.target_out)

    srt = np.sort(content, axis=1)
    if mode == "permutation":
        np.testing.assert_array_equal(srt, np.broadcast_to(np.arange(V), (batch_size, V)))
    elif mode == "subset":
        assert (np.diff(srt, axis=1) > 0).all()  # distinct tokens


@given(st.integers(1, 15), st.integers(2, 10), seeds)
def test_copy_permutation_batches_share_one_bag_of_words(L, batch_size, seed):
    """The paper's point: every permutation input has the identical bag of words."""
    task = CopyTask(L, L, "permutation")
    counts = np.stack([np.bincount(row, minlength=task.input_vocab_size) for row in
                       task.sample(rng_of(seed), batch_size).source])
    assert (counts == counts[0]).all()
    np.testing.assert_array_equal(counts[0, :L], np.ones(L))


def test_copy_subset_bags_of_words_differ_and_positions_are_uniform():
    """Subsets: each token appears with probability L/V, uniformly over positions."""
    L, V, n = 4, 10, 20_000
    task = CopyTask(L, V, "subset", specials=False)
    src = task.sample(rng_of(1), n).source
    # Relative standard error of each count is about 1/sqrt(n L / V) ~ 1.6% (anywhere) and
    # 3.2% (first position); a 15% tolerance cannot be missed by chance but catches a biased draw.
    anywhere = np.bincount(src.ravel(), minlength=V) / n
    np.testing.assert_allclose(anywhere, L / V, rtol=0.15)
    first = np.bincount(src[:, 0], minlength=V) / n
    np.testing.assert_allclose(first, 1 / V, rtol=0.15)
    assert len({tuple(np.sort(r)) for r in src[:50]}) > 1


def test_copy_replacement_allows_repeats_and_large_lengths():
    task = CopyTask(30, 3, "replacement")
    src = task.sample(rng_of(2), 5).source[:, :30]
    assert src.max() < 3 and (np.diff(np.sort(src, axis=1), axis=1) == 0).any()


@pytest.mark.parametrize("mode", ["permutation", "subset", "replacement"])
def test_copy_reproducible_and_seed_sensitive(mode):
    task = CopyTask(10, 10 if mode == "permutation" else 14, mode)
    a = task.sample(rng_of(7), 16)
    assert_batches_equal(a, task.sample(rng_of(7), 16))
    assert not np.array_equal(a.source, task.sample(rng_of(8), 16).source)
    # Successive calls on one generator are fresh samples.
    rng = rng_of(7)
    assert not np.array_equal(task.sample(rng, 16).source, task.sample(rng, 16).source)


def test_copy_does_not_touch_global_random_state():
    for mode, V in (("permutation", 6), ("subset", 9), ("replacement", 4)):
        assert_global_state_untouched(lambda: CopyTask(6, V, mode).sample(rng_of(0), 4))


@pytest.mark.parametrize("args, kwargs, exc, words", [
    ((5, 6, "permutation"), {}, ValueError, ["vocab", "length"]),
    ((5, 4, "permutation"), {}, ValueError, ["vocab", "length"]),
    ((7, 5, "subset"), {}, ValueError, ["length", "vocab"]),
    ((3, 5, "shuffle"), {}, ValueError, ["mode"]),
    ((0, 5, "subset"), {}, ValueError, ["length"]),
    ((3, 0, "replacement"), {}, ValueError, ["vocab"]),
    ((3.0, 5, "subset"), {}, TypeError, ["length"]),
    ((True, 5, "subset"), {}, TypeError, ["length"]),
    ((3, "5", "subset"), {}, TypeError, ["vocab"]),
    ((3, 5, "subset"), {"specials": 1}, TypeError, ["specials"]),
])
def test_copy_bad_configurations(args, kwargs, exc, words):
    with pytest.raises(exc) as info:
        CopyTask(*args, **kwargs)
    for w in words:
        assert w in str(info.value)


def test_copy_bad_sample_arguments():
    task = CopyTask(3, 5, "subset")
    with pytest.raises(TypeError, match="rng"):
        task.sample(np.random.RandomState(0), 2)
    with pytest.raises(TypeError, match="rng"):
        task.sample(0, 2)
    with pytest.raises(ValueError, match="batch_size"):
        task.sample(rng_of(0), 0)
    with pytest.raises(TypeError, match="batch_size"):
        task.sample(rng_of(0), 2.5)
    assert task.sample(rng_of(0), np.int64(3)).source.shape[0] == 3


# ==================================================================================================
# Keyword classification
# ==================================================================================================

@st.composite
def keyword_configs(draw):
    n_classes = draw(st.integers(2, 4))
    kpc = draw(st.integers(1, 3))
    vocab = n_classes * kpc + draw(st.integers(1, 20))
    kps = draw(st.integers(1, 3))
    noise = draw(probs)
    length = kps + (noise > 0) + draw(st.integers(0, 10))
    min_length = draw(st.one_of(st.none(), st.integers(kps + (noise > 0), length)))
    return dict(vocab=vocab, length=length, n_classes=n_classes, keywords_per_class=kpc,
                keyword_strength=draw(probs), zipf_exponent=draw(st.sampled_from([0.0, 0.5, 1.0, 2.0])),
                min_length=min_length, keywords_per_sequence=kps, noise=noise)


@given(keyword_configs(), st.integers(1, 8), seeds, st.booleans())
def test_keyword_batch_structure(config, batch_size, seed, random_keywords):
    task = KeywordClassificationTask(**config, rng=rng_of(seed + 1) if random_keywords else None)
    b = task.sample(rng_of(seed), batch_size)
    assert isinstance(b, ClassificationBatch)
    Lmax, C = config["length"], config["n_classes"]
    assert b.tokens.shape == b.mask.shape == b.salient.shape == (batch_size, Lmax)
    assert b.labels.shape == (batch_size,)
    assert b.tokens.dtype == b.labels.dtype == np.int64
    assert b.mask.dtype == b.salient.dtype == np.bool_
    assert task.input_vocab_size == config["vocab"] + 1 and task.output_vocab_size == C
    assert task.pad_id == config["vocab"] and task.source_length == Lmax and task.target_length == 1

    lengths = b.mask.sum(axis=1)
    assert_prefix_mask(b.mask, lengths)
    assert (lengths >= task.min_length).all() and (lengths <= Lmax).all()
    assert (b.tokens[~b.mask] == task.pad_id).all()
    assert (b.tokens[b.mask] < config["vocab"]).all() and (b.tokens >= 0).all()
    assert ((b.labels >= 0) & (b.labels < C)).all()

    # Keywords: a C x K table of distinct word ids; keyword_class inverts it.
    kw = task.keywords
    assert kw.shape == (C, config["keywords_per_class"]) and np.unique(kw).size == kw.size
    np.testing.assert_array_equal(task.keyword_class[kw], np.broadcast_to(np.arange(C)[:, None], kw.shape))
    assert np.isclose(task.filler_probs.sum(), 1.0) and (np.diff(task.filler_probs) <= 0).all()

    # Salient positions are real and carry a keyword of the gold label; each row has 0 or K of them.
    assert not (b.salient & ~b.mask).any()
    tok_class = np.where(b.mask, task.keyword_class[np.minimum(b.tokens, config["vocab"] - 1)], -1)
    rows, cols = np.nonzero(b.salient)
    np.testing.assert_array_equal(tok_class[rows, cols], b.labels[rows])
    n_sal = b.salient.sum(axis=1)
    assert np.isin(n_sal, [0, config["keywords_per_sequence"]]).all()
    if config["keyword_strength"] == 1.0:
        assert (n_sal == config["keywords_per_sequence"]).all()
    if config["keyword_strength"] == 0.0:
        assert (n_sal == 0).all()
    # Every keyword occurrence was planted: gold ones are salient, at most one other (the noise).
    misleading = (tok_class >= 0) & ~b.salient
    assert (misleading.sum(axis=1) <= (1 if config["noise"] > 0 else 0)).all()
    assert (tok_class[misleading] != np.broadcast_to(b.labels[:, None], tok_class.shape)[misleading]).all()


def bag_of_words_predict(task, batch):
    """Majority rule: the class whose keywords occur most often (ties -> lowest class id)."""
    cls = np.where(batch.mask, task.keyword_class[np.minimum(batch.tokens, task.vocab - 1)], -1)
    votes = (cls[:, :, None] == np.arange(task.n_classes)).sum(axis=1)
    return votes.argmax(axis=1)


@pytest.mark.parametrize("strength, noise", [(0.7, 0.1), (0.9, 0.0), (0.5, 0.3), (0.0, 0.0)])
def test_keyword_bag_of_words_accuracy_matches_the_planting_probabilities(strength, noise):
    """Two classes, one keyword per sequence: the majority rule is right when the gold keyword is
    there alone, a coin flip (argmax tie -> class 0) when none or both are, wrong when only the
    misleading one is."""
    n = 8000
    task = KeywordClassificationTask(vocab=50, length=12, min_length=4, keyword_strength=strength,
                                     noise=noise, rng=rng_of(3))
    b = task.sample(rng_of(4), n)
    acc = (bag_of_words_predict(task, b) == b.labels).mean()
    s, q = strength, noise
    expected = s * (1 - q) + 0.5 * s * q + 0.5 * (1 - s) * (1 - q)
    assert abs(acc - expected) < 4 * np.sqrt(0.25 / n)  # four standard errors
    if strength - noise >= 0.5:
        assert acc > 0.5 + 0.15  # clearly above chance


def test_keyword_filler_follows_zipf():
    s = 1.0
    task = KeywordClassificationTask(vocab=30, length=20, zipf_exponent=s, keyword_strength=0.0)
    b = task.sample(rng_of(5), 5000)
    counts = np.bincount(b.tokens[b.mask], minlength=task.vocab)[task.filler_ids]
    assert (task.keyword_class[b.tokens[b.mask]] < 0).all()  # strength 0: filler only
    freq = counts / counts.sum()
    # 100k tokens: each of the first few frequencies is known to well under 5% relative error.
    np.testing.assert_allclose(freq[:4], task.filler_probs[:4], rtol=0.05)
    np.testing.assert_allclose(task.filler_probs[0] / task.filler_probs[1], 2.0 ** s)


def test_keyword_variable_lengths_cover_the_range():
    task = KeywordClassificationTask(vocab=20, length=9, min_length=3)
    lengths = task.sample(rng_of(6), 2000).mask.sum(axis=1)
    assert set(lengths.tolist()) == set(range(3, 10))
    full = KeywordClassificationTask(vocab=20, length=9).sample(rng_of(6), 50)
    assert full.mask.all()


def test_keyword_reproducible_seed_sensitive_and_pure():
    task = KeywordClassificationTask(vocab=40, length=10, min_length=5, noise=0.2, rng=rng_of(9))
    a = task.sample(rng_of(1), 32)
    assert_batches_equal(a, task.sample(rng_of(1), 32))
    assert not np.array_equal(a.tokens, task.sample(rng_of(2), 32).tokens)
    np.testing.assert_array_equal(
        task.keywords, KeywordClassificationTask(vocab=40, length=10, min_length=5, noise=0.2,
                                                 rng=rng_of(9)).keywords)
    assert_global_state_untouched(lambda: KeywordClassificationTask(
        vocab=40, length=10, noise=0.2, rng=rng_of(9)).sample(rng_of(1), 8))


@pytest.mark.parametrize("kwargs, exc, word", [
    (dict(vocab=4, length=5, n_classes=2, keywords_per_class=2), ValueError, "vocab"),
    (dict(vocab=20, length=5, n_classes=1), ValueError, "n_classes"),
    (dict(vocab=20, length=5, keywords_per_class=0), ValueError, "keywords_per_class"),
    (dict(vocab=20, length=5, keyword_strength=1.5), ValueError, "keyword_strength"),
    (dict(vocab=20, length=5, keyword_strength=float("nan")), ValueError, "keyword_strength"),
    (dict(vocab=20, length=5, noise=-0.1), ValueError, "noise"),
    (dict(vocab=20, length=5, zipf_exponent=-1.0), ValueError, "zipf_exponent"),
    (dict(vocab=20, length=5, zipf_exponent="1"), TypeError, "zipf_exponent"),
    (dict(vocab=20, length=5, min_length=6), ValueError, "min_length"),
    (dict(vocab=20, length=5, min_length=0), ValueError, "min_length"),
    (dict(vocab=20, length=5, min_length=2, keywords_per_sequence=3), ValueError, "min_length"),
    (dict(vocab=20, length=2, keywords_per_sequence=2, noise=0.1), ValueError, "keywords_per_sequence"),
    (dict(vocab=20, length=0), ValueError, "length"),
    (dict(vocab=20, length=5, rng=0), TypeError, "rng"),
])
def test_keyword_bad_configurations(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        KeywordClassificationTask(**kwargs)


# ==================================================================================================
# Translation
# ==================================================================================================

@st.composite
def translation_configs(draw):
    tgt_vocab = draw(st.integers(2, 15))
    max_fertility = draw(st.integers(1, 3))
    p_untranslated = draw(probs)
    p_one_to_many = 0.0 if max_fertility == 1 else draw(probs.filter(lambda p: p <= 1 - p_untranslated))
    length = draw(st.integers(1, 8))
    return dict(src_vocab=draw(st.integers(1, 15)), tgt_vocab=tgt_vocab, length=length,
                min_length=draw(st.one_of(st.none(), st.integers(1, length))),
                p_untranslated=p_untranslated, p_one_to_many=p_one_to_many,
                max_fertility=max_fertility, n_function_words=draw(st.integers(0, tgt_vocab - 1)),
                p_function_word=draw(probs), reorder_window=draw(st.integers(1, 3)),
                p_reorder=draw(probs))


def check_translation_batch(task, b):
    """Every structural promise of TranslationTask.sample, checked example by example."""
    B = b.source.shape[0]
    S, T = task.source_length, task.target_length
    assert b.source.shape == b.source_mask.shape == (B, S)
    assert b.target_in.shape == b.target_out.shape == b.target_mask.shape == b.alignment.shape == (B, T)
    for arr in (b.source, b.target_in, b.target_out, b.alignment):
        assert arr.dtype == np.int64
    n_src = b.source_mask.sum(axis=1) - 1          # words, without <eos>
    n_tgt = b.target_mask.sum(axis=1) - 1
    assert_prefix_mask(b.source_mask, n_src + 1)
    assert_prefix_mask(b.target_mask, n_tgt + 1)
    assert (n_src >= task.min_length).all() and (n_src <= task.length).all()
    rows = np.arange(B)
    assert (b.source[rows, n_src] == task.source_eos_id).all()
    assert (b.source[~b.source_mask] == task.source_pad_id).all()
    assert (b.target_out[rows, n_tgt] == task.eos_id).all()
    assert (b.target_out[~b.target_mask] == task.pad_id).all()
    assert (b.target_in[~b.target_mask] == task.pad_id).all()
    assert (b.target_in[:, 0] == task.bos_id).all()
    shifted = b.target_mask[:, 1:]
    np.testing.assert_array_equal(b.target_in[:, 1:][shifted], b.target_out[:, :-1][shifted])
    assert (b.alignment[rows, n_tgt] == n_src).all()          # <eos> -> source <eos>
    assert (b.alignment[~b.target_mask] == -1).all()

    w = task.reorder_window
    for i in range(B):
        src = b.source[i, :n_src[i]]
        assert (src >= 0).all() and (src < task.src_vocab).all()
        tgt, al = b.target_out[i, :n_tgt[i]], b.alignment[i, :n_tgt[i]]
        assert (tgt >= 0).all() and (tgt < task.tgt_vocab).all()
        fw = al == -1
        assert (tgt[fw] < task.n_function_words).all()        # unaligned words are function words
        assert (tgt[~fw] >= task.n_function_words).all()
        assert (al < n_src[i]).all()
        # Each aligned word is a translation of its source word; together, in lexicon order, the
        # words aligned to source position s are exactly the translations of src[s].
        for s in range(n_src[i]):
            np.testing.assert_array_equal(tgt[al == s], task.lexicon_table[src[s], :task.fertility[src[s]]])
        # Reordering is local: source windows are visited in order.
        assert (np.diff(al[~fw] // w) >= 0).all()
        if task.p_reorder == 0 or w == 1:
            assert (np.diff(al[~fw]) >= 0).all()
        if not task._function_words_on:
            assert not fw.any()


@given(translation_configs(), st.integers(1, 6), seeds)
def test_translation_batch_structure(config, batch_size, seed):
    task = TranslationTask(**config, rng=rng_of(seed + 1))
    assert task.input_vocab_size == config["src_vocab"] + 3
    assert task.output_vocab_size == config["tgt_vocab"] + 3
    assert task.source_length == config["length"] + 1
    # Lexicon invariants.
    assert task.fertility.shape == (config["src_vocab"],)
    assert (task.fertility >= 0).all() and (task.fertility <= config["max_fertility"]).all()
    filled = np.arange(task.lexicon_table.shape[1]) < task.fertility[:, None]
    assert (task.lexicon_table[~filled] == -1).all()
    assert (task.lexicon_table[filled] >= config["n_function_words"]).all()
    assert (task.lexicon_table[filled] < config["tgt_vocab"]).all()
    assert task.lexicon == {i: tuple(task.lexicon_table[i, :f]) for i, f in enumerate(task.fertility)}
    check_translation_batch(task, task.sample(rng_of(seed), batch_size))


def test_translation_lexicon_statistics():
    task = TranslationTask(4000, 10_000, 5, rng=rng_of(11), p_untranslated=0.1, p_one_to_many=0.2,
                           max_fertility=3)
    f = task.fertility
    # 4000 draws: standard errors ~0.5% and ~0.6%; 2.5% tolerances are five of them.
    assert abs((f == 0).mean() - 0.1) < 0.025
    assert abs((f >= 2).mean() - 0.2) < 0.025
    assert set(np.unique(f[f >= 2]).tolist()) == {2, 3}
    # Enough target words: every translation is a different word.
    used = task.lexicon_table[task.lexicon_table >= 0]
    assert np.unique(used).size == used.size
    # Too few target words: all of them are used, as evenly as possible.
    small = TranslationTask(50, 12, 3, rng=rng_of(12), n_function_words=2, p_untranslated=0.0,
                            p_one_to_many=0.0)
    counts = np.bincount(small.lexicon_table.ravel(), minlength=12)[2:]
    assert counts.max() - counts.min() <= 1 and counts.sum() == 50


def test_translation_adjacent_swaps_with_window_two():
    task = TranslationTask(20, 30, 6, rng=rng_of(0), p_untranslated=0.0, p_one_to_many=0.0,
                           n_function_words=0, reorder_window=2, p_reorder=1.0)
    b = task.sample(rng_of(1), 4)
    np.testing.assert_array_equal(b.alignment[:, :7], np.broadcast_to([1, 0, 3, 2, 5, 4, 6], (4, 7)))
    check_translation_batch(task, b)
    # A window cut by the end of a short sentence reverses only its real words.
    short = TranslationTask(20, 30, 5, rng=rng_of(0), min_length=1, p_untranslated=0.0,
                            p_one_to_many=0.0, n_function_words=0, reorder_window=4, p_reorder=1.0)
    b = short.sample(rng_of(2), 64)
    n = b.source_mask.sum(axis=1) - 1
    for i in range(64):
        expected = np.r_[np.arange(min(n[i], 4))[::-1], np.arange(4, n[i])[::-1]]
        np.testing.assert_array_equal(b.alignment[i, :n[i]], expected)


def test_translation_function_words_and_reorder_rates():
    task = TranslationTask(20, 30, 8, rng=rng_of(0), p_untranslated=0.0, p_one_to_many=0.0,
                           n_function_words=3, p_function_word=1.0, p_reorder=0.0)
    b = task.sample(rng_of(3), 10)
    check_translation_batch(task, b)
    n_tgt = b.target_mask.sum(axis=1) - 1
    assert ((b.alignment == -1) & b.target_mask).sum() == 10 * 8  # one before every source word
    np.testing.assert_array_equal(b.alignment[:, 1:2 * 8:2], np.broadcast_to(np.arange(8), (10, 8)))
    assert (n_tgt == 16).all()
    # p_reorder: the fraction of swapped pairs (window 2, one-to-one) estimates it.
    p = 0.3
    swap = TranslationTask(20, 30, 8, rng=rng_of(0), p_untranslated=0.0, p_one_to_many=0.0,
                           n_function_words=0, p_reorder=p)
    al = swap.sample(rng_of(4), 2000).alignment[:, :8]
    frac = (al[:, 0::2] > al[:, 1::2]).mean()
    assert abs(frac - p) < 4 * np.sqrt(p * (1 - p) / 8000)


def test_translation_reproducible_seed_sensitive_and_pure():
    def make(seed):
        return TranslationTask(30, 25, 7, rng=rng_of(seed), min_length=2)
    t1, t2 = make(5), make(5)
    np.testing.assert_array_equal(t1.lexicon_table, t2.lexicon_table)
    assert not np.array_equal(t1.lexicon_table, make(6).lexicon_table)
    a = t1.sample(rng_of(1), 16)
    assert_batches_equal(a, t2.sample(rng_of(1), 16))
    assert not np.array_equal(a.source, t1.sample(rng_of(2), 16).source)
    assert_global_state_untouched(lambda: make(5).sample(rng_of(1), 8))


@pytest.mark.parametrize("kwargs, exc, word", [
    (dict(src_vocab=0, tgt_vocab=5, length=3), ValueError, "src_vocab"),
    (dict(src_vocab=5, tgt_vocab=5, length=0), ValueError, "length"),
    (dict(src_vocab=5, tgt_vocab=3, length=3, n_function_words=3), ValueError, "n_function_words"),
    (dict(src_vocab=5, tgt_vocab=5, length=3, p_untranslated=0.7, p_one_to_many=0.5), ValueError,
     "p_untranslated"),
    (dict(src_vocab=5, tgt_vocab=5, length=3, max_fertility=1), ValueError, "max_fertility"),
    (dict(src_vocab=5, tgt_vocab=5, length=3, reorder_window=0), ValueError, "reorder_window"),
    (dict(src_vocab=5, tgt_vocab=5, length=3, p_reorder=2.0), ValueError, "p_reorder"),
    (dict(src_vocab=5, tgt_vocab=5, length=3, min_length=4), ValueError, "min_length"),
    (dict(src_vocab=5, tgt_vocab=5, length=3, p_function_word=None), TypeError, "p_function_word"),
])
def test_translation_bad_configurations(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        TranslationTask(**kwargs, rng=rng_of(0))


def test_translation_needs_a_generator():
    with pytest.raises(TypeError, match="rng"):
        TranslationTask(5, 5, 3, rng=np.random.RandomState(0))
    with pytest.raises(TypeError):
        TranslationTask(5, 5, 3)  # the lexicon must come from an explicit generator
