"""Synthetic corpora of the real corpora's shape, for benchmarks of β^px and E3 at the paper's size.

Two generators, both deterministic functions of a seed (``numpy.random.SeedSequence``) and both
writing files the loaders of :mod:`miniattn.tasks` read:

* :func:`parallel_corpus` — a Multi30k-shaped parallel corpus (default 29,000 pairs, ~12 words a
  sentence, Zipf vocabularies of 10-19k word types per side). Every source word has a small set of
  translations (1-3 target words, drawn from the target's Zipf law, so a target word is the
  translation of several source words: the lexicon is many-to-many); a sentence is translated word
  by word (each word picks one of its translations; a share of words is left untranslated, target
  function words are inserted), then neighbouring target words are swapped (local reordering).
  Files: ``parallel.src``, ``parallel.tgt`` (line-aligned, whitespace tokens), ``lexicon.tsv``.
* :func:`review_corpus` — an IMDB-shaped sentiment corpus (default 25,000 reviews of ~230 words, a
  Zipf vocabulary, a few hundred polar words per class planted at a low rate). File:
  ``reviews.tsv`` (``label<TAB>text``).

Zipf law: word of rank r (1-based) has probability ∝ r^(−a) (``zipf`` = a, default 1.05).

Command line::

    python -m benchmarks.synthetic_corpus --pairs 29000 --out DIR [--reviews 25000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

__all__ = ["zipf_probabilities", "make_lexicon", "parallel_corpus", "review_corpus", "write_parallel",
           "write_reviews", "main"]


def _positive_int(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _seed(seed) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0 or a SeedSequence, got {seed!r}")
    return np.random.SeedSequence(int(seed))


def zipf_probabilities(n: int, a: float = 1.05) -> np.ndarray:
    """``p[r − 1] = r^(−a) / Σ_k k^(−a)`` for ranks r = 1..n (float64 (n,))."""
    n = _positive_int("n", n)
    if not (np.isfinite(a) and a > 0):
        raise ValueError(f"a (the Zipf exponent) must be a finite number > 0, got {a}")
    w = np.arange(1, n + 1, dtype=np.float64) ** -float(a)
    return w / w.sum()


def _lengths(rng: np.random.Generator, n: int, mean: float, low: int, high: int, sigma: float) -> np.ndarray:
    """Log-normal sentence lengths with the given mean, clipped to [low, high]."""
    mu = np.log(mean) - sigma ** 2 / 2
    return np.clip(np.rint(rng.lognormal(mu, sigma, n)), low, high).astype(np.int64)


def make_lexicon(rng: np.random.Generator, n_src: int, n_tgt: int, max_translations: int = 3,
                 zipf: float = 1.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A many-to-many lexicon: each source word gets 1..max_translations target words.

    Source word i's translations are drawn from the target Zipf law shifted towards the target rank
    of i (frequent words translate to frequent words), so frequent target words are translations of
    many source words. Returns ``(offsets (n_src + 1,), targets (K,), probs (K,))``: the
    translations of i are ``targets[offsets[i]:offsets[i + 1]]`` with probabilities ``probs[...]``
    (summing to 1 per source word).
    """
    counts = rng.integers(1, max_translations + 1, n_src)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    owner = np.repeat(np.arange(n_src), counts)
    # Target rank ≈ the source rank scaled to the target vocabulary, times a log-normal jitter.
    centre = (owner + 1) * (n_tgt / n_src)
    ranks = np.maximum(np.rint(centre * rng.lognormal(0.0, 0.8, owner.size)), 1).astype(np.int64) - 1
    # A share of translations (and those past the last rank) are drawn from the whole Zipf law
    # instead: shared, ambiguous targets.
    shared = (rng.random(owner.size) < 0.25) | (ranks >= n_tgt)
    ranks[shared] = rng.choice(n_tgt, size=int(shared.sum()), p=zipf_probabilities(n_tgt, zipf))
    raw = rng.dirichlet(np.ones(max_translations), n_src)[:, :max_translations]
    weights = raw[owner, np.arange(owner.size) - offsets[owner]]
    sums = np.bincount(owner, weights=weights, minlength=n_src)
    return offsets, ranks, weights / sums[owner]


def parallel_corpus(pairs: int = 29000, *, src_vocab: int = 19000, tgt_vocab: int = 16000,
                    mean_length: float = 12.0, zipf: float = 1.05, untranslated: float = 0.1,
                    function_words: int = 30, insert_rate: float = 0.15, swap_rate: float = 0.2,
                    seed=0) -> dict:
    """A synthetic parallel corpus (ids, not yet strings).

    Parameters
    ----------
    pairs : int >= 1
    src_vocab, tgt_vocab : int >= 1
        Word types per side (the target's first ``function_words`` ranks are its function words).
    mean_length : float, mean source length in words (log-normal, clipped to [3, 40])
    zipf : float > 0, the Zipf exponent of the source words
    untranslated : float in [0, 1), share of source words with no target word
    function_words : int >= 1; insert_rate : float >= 0, target function words per source word
    swap_rate : float in [0, 1], chance that a target position is swapped with its right neighbour
    seed : int or SeedSequence

    Returns
    -------
    dict with ``source`` / ``target`` (lists of int arrays), ``lexicon`` (offsets, targets, probs),
    ``src_vocab``, ``tgt_vocab``.
    """
    pairs = _positive_int("pairs", pairs)
    src_vocab, tgt_vocab = _positive_int("src_vocab", src_vocab), _positive_int("tgt_vocab", tgt_vocab)
    function_words = _positive_int("function_words", function_words)
    if function_words >= tgt_vocab:
        raise ValueError(f"function_words must be < tgt_vocab={tgt_vocab}, got {function_words}")
    lex_seq, len_seq, word_seq, tr_seq = _seed(seed).spawn(4)
    offsets, lex_targets, lex_probs = make_lexicon(np.random.default_rng(lex_seq), src_vocab,
                                                   tgt_vocab - function_words, zipf=zipf)
    lex_targets = lex_targets + function_words
    lengths = _lengths(np.random.default_rng(len_seq), pairs, mean_length, 3, 40, 0.35)
    total = int(lengths.sum())
    words = np.random.default_rng(word_seq).choice(src_vocab, size=total, p=zipf_probabilities(src_vocab, zipf))
    rng = np.random.default_rng(tr_seq)
    # Translation of every token at once: pick a translation by inverse CDF within its lexicon row.
    cdf = np.cumsum(lex_probs)
    u = rng.random(total)
    pick = np.searchsorted(cdf, cdf[offsets[words]] - lex_probs[offsets[words]] + u * (
        cdf[offsets[words + 1] - 1] - cdf[offsets[words]] + lex_probs[offsets[words]]), side="right")
    pick = np.clip(pick, offsets[words], offsets[words + 1] - 1)
    translated = lex_targets[pick]
    keep = rng.random(total) >= untranslated
    sentence = np.repeat(np.arange(pairs), lengths)
    # Inserted function words: Poisson per sentence, placed at random positions (sorted keys).
    n_insert = rng.poisson(insert_rate * lengths)
    ins_sentence = np.repeat(np.arange(pairs), n_insert)
    ins_words = rng.choice(function_words, size=ins_sentence.size, p=zipf_probabilities(function_words, 1.0))
    position = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    ins_position = rng.random(ins_sentence.size) * np.repeat(lengths, n_insert)
    tgt_sentence = np.concatenate([sentence[keep], ins_sentence])
    tgt_key = np.concatenate([position[keep].astype(np.float64), ins_position])
    tgt_words = np.concatenate([translated[keep], ins_words])
    order = np.lexsort((tgt_key, tgt_sentence))
    tgt_sentence, tgt_words = tgt_sentence[order], tgt_words[order]
    # Local reordering: swap position j with j + 1 (same sentence) where a coin says so and the pair
    # is not already part of a swap.
    same = tgt_sentence[:-1] == tgt_sentence[1:]
    swap = same & (rng.random(same.size) < swap_rate)
    swap[1:] &= ~swap[:-1]
    j = np.flatnonzero(swap)
    tgt_words[j], tgt_words[j + 1] = tgt_words[j + 1].copy(), tgt_words[j].copy()
    tgt_lengths = np.bincount(tgt_sentence, minlength=pairs)
    # An empty target (every word untranslated) gets one function word.
    empty = np.flatnonzero(tgt_lengths == 0)
    source = np.split(words, np.cumsum(lengths)[:-1])
    target = np.split(tgt_words, np.cumsum(tgt_lengths)[:-1])
    for i in empty:   # rare (≈ untranslated^length): a handful of sentences at most
        target[i] = np.array([0])
    return {"source": source, "target": target, "lexicon": (offsets, lex_targets, lex_probs),
            "src_vocab": src_vocab, "tgt_vocab": tgt_vocab}


def review_corpus(reviews: int = 25000, *, vocab: int = 30000, mean_length: float = 230.0, zipf: float = 1.05,
                  polar_words: int = 300, polar_rate: float = 0.03, noise: float = 0.3, seed=0) -> dict:
    """A synthetic two-class review corpus (ids).

    Each review has a label in {0, 1}; its words are drawn from the Zipf law, except that a share
    ``polar_rate`` of its tokens are polar words: of its own class with probability 1 − ``noise``,
    of the other class otherwise. The polar words of each class are ``polar_words`` types spread
    over ranks 50 .. vocab / 3, drawn uniformly when planted and never otherwise.

    Returns
    -------
    dict with ``labels`` (int (N,)), ``tokens`` (list of int arrays), ``polar`` ((2, polar_words) ids),
    ``vocab``.
    """
    reviews, vocab = _positive_int("reviews", reviews), _positive_int("vocab", vocab)
    polar_words = _positive_int("polar_words", polar_words)
    if 2 * polar_words > vocab // 3 - 50:
        raise ValueError(f"polar_words must be <= (vocab / 3 − 50) / 2 = {(vocab // 3 - 50) // 2}, got {polar_words}")
    pol_seq, lab_seq, len_seq, word_seq = _seed(seed).spawn(4)
    polar = np.random.default_rng(pol_seq).choice(np.arange(50, vocab // 3), 2 * polar_words,
                                                  replace=False).reshape(2, polar_words)
    labels = np.random.default_rng(lab_seq).integers(0, 2, reviews)
    lengths = _lengths(np.random.default_rng(len_seq), reviews, mean_length, 10, 2500, 0.7)
    total = int(lengths.sum())
    rng = np.random.default_rng(word_seq)
    # Polar words occur only as planted (their Zipf mass goes to the other words).
    p = zipf_probabilities(vocab, zipf)
    p[polar.ravel()] = 0.0
    tokens = rng.choice(vocab, size=total, p=p / p.sum())
    owner_label = np.repeat(labels, lengths)
    is_polar = rng.random(total) < polar_rate
    cls = np.where(rng.random(total) < noise, 1 - owner_label, owner_label)
    tokens[is_polar] = polar[cls[is_polar], rng.integers(0, polar_words, int(is_polar.sum()))]
    return {"labels": labels, "tokens": np.split(tokens, np.cumsum(lengths)[:-1]), "polar": polar,
            "vocab": vocab}


def _lines(prefix: str, seqs) -> str:
    return "".join(" ".join(f"{prefix}{w}" for w in s.tolist()) + "\n" for s in seqs)


def write_parallel(corpus: dict, out: Path) -> dict[str, Path]:
    """Write ``parallel.src``, ``parallel.tgt`` and ``lexicon.tsv`` (source word, target word, p)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"source": out / "parallel.src", "target": out / "parallel.tgt", "lexicon": out / "lexicon.tsv"}
    paths["source"].write_text(_lines("s", corpus["source"]), encoding="utf-8")
    paths["target"].write_text(_lines("t", corpus["target"]), encoding="utf-8")
    offsets, targets, probs = corpus["lexicon"]
    owner = np.repeat(np.arange(offsets.size - 1), np.diff(offsets))
    paths["lexicon"].write_text("".join(f"s{i}\tt{t}\t{p:.4f}\n" for i, t, p in
                                        zip(owner.tolist(), targets.tolist(), probs.tolist())), encoding="utf-8")
    return paths


def write_reviews(corpus: dict, out: Path) -> Path:
    """Write ``reviews.tsv`` (``pos``/``neg`` TAB text)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "reviews.tsv"
    names = np.array(["neg", "pos"])
    path.write_text("".join(f"{names[y]}\t" + " ".join(f"w{w}" for w in s.tolist()) + "\n"
                            for y, s in zip(corpus["labels"].tolist(), corpus["tokens"])), encoding="utf-8")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.synthetic_corpus", description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=29000, help="parallel pairs (default 29000; 0: none)")
    parser.add_argument("--reviews", type=int, default=0, help="reviews of the sentiment corpus (default 0: none)")
    parser.add_argument("--src-vocab", type=int, default=19000)
    parser.add_argument("--tgt-vocab", type=int, default=16000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    try:
        written = {}
        if args.pairs:
            corpus = parallel_corpus(args.pairs, src_vocab=args.src_vocab, tgt_vocab=args.tgt_vocab, seed=args.seed)
            written.update({k: str(v) for k, v in write_parallel(corpus, Path(args.out)).items()})
        if args.reviews:
            written["reviews"] = str(write_reviews(review_corpus(args.reviews, seed=args.seed), Path(args.out)))
    except (ValueError, OSError) as exc:
        print(f"synthetic_corpus: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(written, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
