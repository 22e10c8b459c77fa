"""Keyword classification: Zipf-distributed filler text with planted label words.

This is the synthetic stand-in for sentiment classification in the paper's stage-1/stage-2 story.
Each class owns a few *keywords*. A sequence of class c is filler text drawn from a Zipf
distribution over the non-keyword words, in which — with probability ``keyword_strength`` — a few of
class c's keywords are planted at random positions; with probability ``noise`` one keyword of another
(uniformly chosen) class is planted as well, to mislead. A bag-of-words model learns the task from
co-occurrence alone (keyword of class c → label c), which is exactly the KTIW that the paper says
must come before attention can move to the keywords.

Token ids::

    0 .. vocab-1   words; the keywords are n_classes * keywords_per_class of them, the rest is filler
    vocab          <pad> (pad_id)

Keywords never occur as filler, so a planted keyword is the only way a keyword enters a sequence and
``salient`` (True exactly at the planted gold-label keywords) is the complete ground truth of where
the label evidence is. Misleading keywords are *not* marked salient.

Filler distribution: with the filler words in increasing id order ``f_0 < f_1 < ...``,
``P(f_r) ∝ (r + 1) ** (-zipf_exponent)`` (exponent 0 is uniform; 1 is classic Zipf).
"""

from __future__ import annotations

import numpy as np

from miniattn._validate import integer, real
from miniattn.batch import ClassificationBatch
from miniattn.tasks import _check_generator

__all__ = ["KeywordClassificationTask"]


class KeywordClassificationTask:
    """Classify Zipf filler sequences by the keywords planted in them.

    Parameters
    ----------
    vocab : int
        Number of word ids (keywords + filler); must exceed ``n_classes * keywords_per_class``.
    length : int >= 1
        Maximum sequence length; batches have exactly this width (``source_length``).
    n_classes : int >= 2, default 2
    keywords_per_class : int >= 1, default 2
        How many distinct keywords each class owns.
    keyword_strength : float in [0, 1], default 0.9
        Probability that a sequence contains its label's keywords. With probability
        ``1 - keyword_strength`` it contains none, and its label cannot be recovered from the text.
    zipf_exponent : float >= 0, default 1.0
        Exponent s of the filler distribution ``P(rank r) ∝ (r + 1) ** -s``.
    min_length : int in [1, length] or None, default None
        Sequence lengths are uniform on ``[min_length, length]``; None means every sequence has the
        full ``length`` (no padding).
    keywords_per_sequence : int >= 1, default 1
        How many gold keywords are planted (each drawn uniformly, with repetition, from the label's
        keywords; always at distinct positions) when a sequence gets its keywords.
    noise : float in [0, 1], default 0.0
        Probability that one misleading keyword, of a uniformly chosen other class, is planted too.
    rng : numpy.random.Generator or None, default None
        Chooses which word ids are keywords (uniformly without replacement). None takes the
        ``n_classes * keywords_per_class`` highest ids, class-major: the labelling of ids does not
        change any statistic, since keywords never occur as filler.

    Attributes
    ----------
    keywords : int array (n_classes, keywords_per_class)
        ``keywords[c]`` are the label words of class c.
    keyword_class : int array (vocab,)
        Class owning each word id, -1 for filler words.
    filler_ids : int array (n_filler,), filler_probs : float array (n_filler,)
        The filler words in Zipf rank order and their probabilities.
    input_vocab_size = vocab + 1, output_vocab_size = n_classes, source_length = length,
    target_length = 1, pad_id = vocab, bos_id = eos_id = None.

    Notes
    -----
    The Bayes-optimal accuracy for two classes with ``noise = 0`` is
    ``keyword_strength + (1 - keyword_strength) / 2``.
    """

    def __init__(self, vocab: int, length: int, n_classes: int = 2, keywords_per_class: int = 2,
                 keyword_strength: float = 0.9, zipf_exponent: float = 1.0,
                 min_length: int | None = None, keywords_per_sequence: int = 1,
                 noise: float = 0.0, rng: np.random.Generator | None = None):
        self.vocab = integer("vocab", vocab, 2)
        self.length = integer("length", length, 1)
        self.n_classes = integer("n_classes", n_classes, 2)
        self.keywords_per_class = integer("keywords_per_class", keywords_per_class, 1)
        n_keywords = self.n_classes * self.keywords_per_class
        if n_keywords >= self.vocab:
            raise ValueError(f"vocab must exceed n_classes * keywords_per_class = {n_keywords} "
                             f"(at least one filler word is needed), got vocab={self.vocab}")
        self.keyword_strength = real("keyword_strength", keyword_strength, low=0.0, high=1.0)
        self.noise = real("noise", noise, low=0.0, high=1.0)
        self.zipf_exponent = real("zipf_exponent", zipf_exponent, low=0.0)
        self.min_length = self.length if min_length is None else integer(
            "min_length", min_length, 1, self.length)
        self.keywords_per_sequence = integer("keywords_per_sequence", keywords_per_sequence, 1)
        # Planted words go to distinct positions, so even the shortest sequence must hold them all.
        needed = self.keywords_per_sequence + (1 if self.noise > 0 else 0)
        if needed > self.min_length:
            raise ValueError(f"min_length (or length when min_length is None) must be at least "
                             f"keywords_per_sequence{' + 1 (noise > 0)' if self.noise > 0 else ''}"
                             f" = {needed}, got {self.min_length}")

        if rng is None:
            chosen = np.arange(self.vocab - n_keywords, self.vocab, dtype=np.int64)
        else:
            chosen = _check_generator(rng).choice(self.vocab, size=n_keywords, replace=False)
            chosen = chosen.astype(np.int64)
        self.keywords = chosen.reshape(self.n_classes, self.keywords_per_class)
        self.keyword_class = np.full(self.vocab, -1, dtype=np.int64)
        self.keyword_class[self.keywords] = np.arange(self.n_classes)[:, None]
        self.filler_ids = np.flatnonzero(self.keyword_class < 0).astype(np.int64)
        weights = np.arange(1, self.filler_ids.size + 1, dtype=np.float64) ** -self.zipf_exponent
        self.filler_probs = weights / weights.sum()

        self.pad_id = self.vocab
        self.bos_id = self.eos_id = None
        self.input_vocab_size = self.vocab + 1
        self.output_vocab_size = self.n_classes
        self.source_length = self.length
        self.target_length = 1

    def __repr__(self) -> str:
        return (f"KeywordClassificationTask(vocab={self.vocab}, length={self.length}, "
                f"n_classes={self.n_classes}, keywords_per_class={self.keywords_per_class}, "
                f"keyword_strength={self.keyword_strength}, zipf_exponent={self.zipf_exponent}, "
                f"min_length={self.min_length}, keywords_per_sequence={self.keywords_per_sequence}, "
                f"noise={self.noise})")

    def sample(self, rng: np.random.Generator, batch_size: int) -> ClassificationBatch:
        """Draw a fresh batch.

        Parameters
        ----------
        rng : numpy.random.Generator
        batch_size : int >= 1

        Returns
        -------
        ClassificationBatch
            ``tokens (B, length)`` int64 (pad_id where ``mask`` is False), ``mask (B, length)`` bool
            with True on a prefix of each row (its length), ``labels (B,)`` int64 uniform over the
            classes, ``salient (B, length)`` bool, True at the planted gold-label keywords.
        """
        rng = _check_generator(rng)
        B = integer("batch_size", batch_size, 1)
        Lmax, C, K = self.length, self.n_classes, self.keywords_per_sequence
        rows = np.arange(B)[:, None]

        labels = rng.integers(0, C, size=B, dtype=np.int64)
        lengths = rng.integers(self.min_length, Lmax + 1, size=B)
        mask = np.arange(Lmax) < lengths[:, None]
        filler = self.filler_ids[rng.choice(self.filler_ids.size, size=(B, Lmax), p=self.filler_probs)]
        tokens = np.where(mask, filler, self.pad_id).astype(np.int64)

        # Distinct random positions inside each row's length, for the whole batch at once: sort
        # uniform keys, with the padded positions pushed past every real one.
        keys = np.where(mask, rng.random((B, Lmax)), 2.0)
        positions = np.argsort(keys, axis=1, kind="stable")

        gold_pos = positions[:, :K]                                       # (B, K)
        planted = rng.random(B) < self.keyword_strength                   # (B,)
        gold_words = self.keywords[labels[:, None],
                                   rng.integers(0, self.keywords_per_class, size=(B, K))]
        tokens[rows, gold_pos] = np.where(planted[:, None], gold_words, tokens[rows, gold_pos])
        salient = np.zeros((B, Lmax), dtype=bool)
        salient[rows, gold_pos] = planted[:, None]

        if self.noise > 0:
            # Shifting the label by 1..C-1 (mod C) picks a uniformly random *other* class.
            other = (labels + rng.integers(1, C, size=B)) % C
            wrong_words = self.keywords[other, rng.integers(0, self.keywords_per_class, size=B)]
            noisy = rng.random(B) < self.noise
            wrong_pos = positions[:, K]
            r = rows[:, 0]
            tokens[r, wrong_pos] = np.where(noisy, wrong_words, tokens[r, wrong_pos])

        return ClassificationBatch(tokens=tokens, mask=mask, labels=labels, salient=salient)
