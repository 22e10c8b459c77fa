"""Synthetic translation with a ground-truth word alignment.

A random bilingual lexicon is drawn once, at construction, from a ``numpy.random.Generator``. Every
source word has a *fertility* f — the number of target words it translates to:

* f = 0 with probability ``p_untranslated`` (the word is dropped: it has no translation);
* f uniform on 2..max_fertility with probability ``p_one_to_many``;
* f = 1 otherwise (one-to-one).

Target words of the lexicon are drawn from the non-function target words, as evenly as possible
(every target word is used once before any is used twice). A target sentence is generated from a
uniform random source sentence by

1. local reordering: the source positions are cut into windows of ``reorder_window`` consecutive
   positions, and each window is reversed with probability ``p_reorder`` (window 2: a swap of
   adjacent words);
2. walking the reordered source: before each source word a *function word* (a target word with no
   source, aligned to -1) is emitted with probability ``p_function_word``, then the word's f
   translations, each aligned to the word's original source position.

Token ids, on each side the convention of :mod:`miniattn.tasks.copy` (content first, then specials)::

    source: 0..src_vocab-1 words, src_vocab <pad>, src_vocab+1 <bos> (reserved, unused), src_vocab+2 <eos>
    target: 0..n_function_words-1 function words, n_function_words..tgt_vocab-1 lexicon words,
            tgt_vocab <pad>, tgt_vocab+1 <bos>, tgt_vocab+2 <eos>

``pad_id``, ``bos_id``, ``eos_id`` are the *target* (decoder) ids; ``source_pad_id`` and
``source_eos_id`` the source ones (they coincide when src_vocab == tgt_vocab). As in copy, the
source ends with <eos>, the target output ends with <eos>, and the target <eos> is aligned to the
source <eos>.
"""

from __future__ import annotations

import numpy as np

from miniattn._validate import integer, real
from miniattn.batch import Seq2SeqBatch
from miniattn.tasks import _check_generator

__all__ = ["TranslationTask"]


class TranslationTask:
    """Translate random source sentences through a random lexicon, with local reordering.

    Parameters
    ----------
    src_vocab : int >= 1
        Number of source word ids.
    tgt_vocab : int
        Number of target word ids, function words included; must exceed ``n_function_words``.
    length : int >= 1
        Maximum source sentence length (content words, without <eos>).
    rng : numpy.random.Generator
        Draws the lexicon (keyword-only, required: the lexicon *is* the task).
    min_length : int in [1, length] or None, default None
        Source lengths are uniform on ``[min_length, length]``; None = always ``length``.
    p_untranslated : float in [0, 1], default 0.1
        Probability that a source word has no translation.
    p_one_to_many : float in [0, 1], default 0.2
        Probability that a source word has 2..max_fertility translations
        (``p_untranslated + p_one_to_many <= 1``).
    max_fertility : int >= 1, default 2
        Largest number of target words one source word translates to (must be >= 2 if
        ``p_one_to_many > 0``).
    n_function_words : int >= 0, default 2
        Number of target function words (ids 0..n_function_words-1).
    p_function_word : float in [0, 1], default 0.1
        Probability of emitting a function word before each source word.
    reorder_window : int >= 1, default 2
        Window size of the local reordering (1 disables it).
    p_reorder : float in [0, 1], default 0.3
        Probability that a window is reversed.

    Attributes
    ----------
    fertility : int array (src_vocab,)
        Number of translations of each source word.
    lexicon_table : int array (src_vocab, F)
        ``lexicon_table[i, :fertility[i]]`` are the translations of source word i; -1 elsewhere.
        F = max(1, fertility.max()).
    lexicon : dict[int, tuple[int, ...]]
        The same as a dict (source word -> its translations, empty tuple if untranslated).
    function_words : int array (n_function_words,)
    input_vocab_size = src_vocab + 3, output_vocab_size = tgt_vocab + 3
    source_length = length + 1
    target_length = length * (F + 1 if function words are on else F) + 1 (the longest possible
        target: every word at maximal fertility, a function word before each, then <eos>)
    pad_id, bos_id, eos_id : target ids; source_pad_id, source_eos_id : source ids.
    """

    def __init__(self, src_vocab: int, tgt_vocab: int, length: int, *, rng: np.random.Generator,
                 min_length: int | None = None, p_untranslated: float = 0.1,
                 p_one_to_many: float = 0.2, max_fertility: int = 2, n_function_words: int = 2,
                 p_function_word: float = 0.1, reorder_window: int = 2, p_reorder: float = 0.3):
        rng = _check_generator(rng)
        self.src_vocab = integer("src_vocab", src_vocab, 1)
        self.tgt_vocab = integer("tgt_vocab", tgt_vocab, 1)
        self.length = integer("length", length, 1)
        self.min_length = self.length if min_length is None else integer(
            "min_length", min_length, 1, self.length)
        self.p_untranslated = real("p_untranslated", p_untranslated, low=0.0, high=1.0)
        self.p_one_to_many = real("p_one_to_many", p_one_to_many, low=0.0, high=1.0)
        if self.p_untranslated + self.p_one_to_many > 1.0:
            raise ValueError(f"p_untranslated + p_one_to_many must be <= 1, got "
                             f"{self.p_untranslated} + {self.p_one_to_many}")
        self.max_fertility = integer("max_fertility", max_fertility, 1)
        if self.max_fertility < 2 and self.p_one_to_many > 0:
            raise ValueError(f"max_fertility must be >= 2 when p_one_to_many > 0, "
                             f"got max_fertility={self.max_fertility}, p_one_to_many={self.p_one_to_many}")
        self.n_function_words = integer("n_function_words", n_function_words, 0)
        if self.n_function_words >= self.tgt_vocab:
            # Both named: with the default n_function_words=2 the caller only passed tgt_vocab.
            raise ValueError(f"tgt_vocab must exceed n_function_words (at least one target word must be a "
                             f"lexicon word), got tgt_vocab={self.tgt_vocab}, "
                             f"n_function_words={self.n_function_words}")
        self.p_function_word = real("p_function_word", p_function_word, low=0.0, high=1.0)
        self.reorder_window = integer("reorder_window", reorder_window, 1)
        self.p_reorder = real("p_reorder", p_reorder, low=0.0, high=1.0)
        self._function_words_on = self.n_function_words > 0 and self.p_function_word > 0

        # ---- the lexicon -------------------------------------------------------------------------
        Vs = self.src_vocab
        u = rng.random(Vs)
        many = rng.integers(2, max(self.max_fertility, 2) + 1, size=Vs)
        fertility = np.where(u < self.p_untranslated, 0,
                             np.where(u < self.p_untranslated + self.p_one_to_many, many, 1))
        self.fertility = fertility.astype(np.int64)
        F = max(1, int(self.fertility.max()))
        n_lex = self.tgt_vocab - self.n_function_words
        total = int(self.fertility.sum())
        # Fresh permutations of the lexicon words, concatenated: distinct translations while they
        # last, then every word reused equally often.
        n_tiles = max(1, -(-total // n_lex))
        pool = rng.permuted(np.broadcast_to(np.arange(n_lex, dtype=np.int64), (n_tiles, n_lex)),
                            axis=1).reshape(-1)[:total] + self.n_function_words
        table = np.full((Vs, F), -1, dtype=np.int64)
        table[np.arange(F) < self.fertility[:, None]] = pool  # row-major: word i gets its f_i words
        self.lexicon_table = table
        self.function_words = np.arange(self.n_function_words, dtype=np.int64)

        # ---- ids and sizes -----------------------------------------------------------------------
        self.source_pad_id, self.source_bos_id, self.source_eos_id = Vs, Vs + 1, Vs + 2
        self.pad_id, self.bos_id, self.eos_id = self.tgt_vocab, self.tgt_vocab + 1, self.tgt_vocab + 2
        self.input_vocab_size = Vs + 3
        self.output_vocab_size = self.tgt_vocab + 3
        self.source_length = self.length + 1
        self._slots = F + (1 if self._function_words_on else 0)
        self.target_length = self.length * self._slots + 1

    @property
    def lexicon(self) -> dict[int, tuple[int, ...]]:
        """Source word id -> tuple of its target word ids (empty if the word is untranslated)."""
        return {i: tuple(int(t) for t in row[:f])
                for i, (row, f) in enumerate(zip(self.lexicon_table, self.fertility))}

    def __repr__(self) -> str:
        return (f"TranslationTask(src_vocab={self.src_vocab}, tgt_vocab={self.tgt_vocab}, "
                f"length={self.length}, min_length={self.min_length}, "
                f"p_untranslated={self.p_untranslated}, p_one_to_many={self.p_one_to_many}, "
                f"max_fertility={self.max_fertility}, n_function_words={self.n_function_words}, "
                f"p_function_word={self.p_function_word}, reorder_window={self.reorder_window}, "
                f"p_reorder={self.p_reorder})")

    def sample(self, rng: np.random.Generator, batch_size: int) -> Seq2SeqBatch:
        """Draw a fresh batch of sentence pairs.

        Parameters
        ----------
        rng : numpy.random.Generator
        batch_size : int >= 1

        Returns
        -------
        Seq2SeqBatch
            ``source (B, S)``: n source words, <eos>, then <pad>; ``source_mask`` True on the first
            n + 1 positions. ``target_out (B, T)``: m target words, <eos>, then <pad>;
            ``target_in``: <bos> followed by target_out shifted right (pad beyond the mask);
            ``target_mask`` True on the first m + 1 positions. ``alignment (B, T)``: original source
            position of each translated word, -1 for function words and padding, n (the source
            <eos>) for the target <eos>. S = ``source_length``, T = ``target_length``; int64 ids.
        """
        rng = _check_generator(rng)
        B = integer("batch_size", batch_size, 1)
        L, w = self.length, self.reorder_window
        F = self.lexicon_table.shape[1]
        rows = np.arange(B)

        words = rng.integers(0, self.src_vocab, size=(B, L), dtype=np.int64)
        lengths = rng.integers(self.min_length, L + 1, size=B)
        real = np.arange(L) < lengths[:, None]                                    # (B, L)

        # Local reordering as one argsort: position s of window s // w gets the key
        # s // w * w + (s % w, or w - 1 - s % w if its window is flipped); padding sorts last.
        pos = np.arange(L)
        flip = rng.random((B, -(-L // w))) < self.p_reorder
        inner = np.where(flip[:, pos // w], w - 1 - pos % w, pos % w)
        key = np.where(real, (pos // w) * w + inner, L * w + pos)
        order = np.argsort(key, axis=1, kind="stable")          # order[b, r]: source position emitted r-th
        reordered = np.take_along_axis(words, order, axis=1)    # real words stay a prefix of length n

        # A grid of output slots per emitted source word — [function word?, translation 1..F] —
        # flattened in emission order; the active slots are then packed to the left.
        fert = self.fertility[reordered]                                          # (B, L)
        trans_tok = self.lexicon_table[reordered]                                 # (B, L, F)
        trans_act = real[:, :, None] & (np.arange(F) < fert[:, :, None])
        trans_align = np.broadcast_to(order[:, :, None], (B, L, F))
        if self._function_words_on:
            fw_tok = rng.integers(0, self.n_function_words, size=(B, L, 1), dtype=np.int64)
            fw_act = real[:, :, None] & (rng.random((B, L, 1)) < self.p_function_word)
            slot_tok = np.concatenate([fw_tok, trans_tok], axis=2)
            slot_act = np.concatenate([fw_act, trans_act], axis=2)
            slot_align = np.concatenate([np.full((B, L, 1), -1, dtype=np.int64), trans_align], axis=2)
        else:
            slot_tok, slot_act, slot_align = trans_tok, trans_act, trans_align
        slot_tok = slot_tok.reshape(B, -1)
        slot_act = slot_act.reshape(B, -1)
        slot_align = slot_align.reshape(B, -1)
        pack = np.argsort(~slot_act, axis=1, kind="stable")     # stable: keeps the emission order
        n_out = slot_act.sum(axis=1)                                              # (B,)
        Tw = slot_tok.shape[1]                                   # == target_length - 1
        T = Tw + 1
        col = np.arange(T)
        in_words = col[:Tw] < n_out[:, None]

        target_out = np.full((B, T), self.pad_id, dtype=np.int64)
        target_out[:, :Tw] = np.where(in_words, np.take_along_axis(slot_tok, pack, axis=1), self.pad_id)
        target_out[rows, n_out] = self.eos_id
        target_mask = col <= n_out[:, None]
        target_in = np.empty((B, T), dtype=np.int64)
        target_in[:, 0] = self.bos_id
        target_in[:, 1:] = target_out[:, :-1]
        target_in = np.where(target_mask, target_in, self.pad_id)

        alignment = np.full((B, T), -1, dtype=np.int64)
        alignment[:, :Tw] = np.where(in_words, np.take_along_axis(slot_align, pack, axis=1), -1)
        alignment[rows, n_out] = lengths  # target <eos> -> source <eos>

        source = np.full((B, L + 1), self.source_pad_id, dtype=np.int64)
        source[:, :L] = np.where(real, words, self.source_pad_id)
        source[rows, lengths] = self.source_eos_id
        source_mask = np.arange(L + 1) <= lengths[:, None]
        return Seq2SeqBatch(source=source, source_mask=source_mask, target_in=target_in,
                            target_out=target_out, target_mask=target_mask, alignment=alignment)
