"""The copy task: reproduce the source sequence.

The paper's central negative result lives here. When every source is a *permutation* of the same
V = L tokens, every input has the identical bag of words, so co-occurrence statistics carry no
information about which output goes with which input word, the knowledge to translate individual
words (KTIW) cannot form while attention is uniform, and attention gets no signal to move. Drawing L
*distinct* tokens out of a larger vocabulary V > L (``subset``) breaks that symmetry: each output
word then co-occurs with its own input word more often than with the others.

Token ids (``specials=True``, the convention of the paper's seq2seq code)::

    0 .. V-1     content tokens
    V            <pad>  (pad_id; never produced here — every copy sequence has the full length)
    V + 1        <bos>  (bos_id)
    V + 2        <eos>  (eos_id)

so ``input_vocab_size == output_vocab_size == V + 3``, and with content tokens ``x_1 .. x_L``::

    source     = x_1 .. x_L <eos>           (S = L + 1)
    target_in  = <bos> x_1 .. x_L           (T = L + 1)
    target_out = x_1 .. x_L <eos>
    alignment  = 0 1 .. L-1 L               (output t copies source t; <eos> is aligned to the
                                             source <eos>)

With ``specials=False`` (the free-parameter copy model) there are no special ids at all: source,
target_in and target_out are exactly the L content tokens (ids 0..V-1, so both vocabulary sizes are
V), target_in is unused by that model, every mask is True and the alignment is the identity.
"""

from __future__ import annotations

import numpy as np

from miniattn._validate import flag, integer
from miniattn.batch import Seq2SeqBatch
from miniattn.tasks import _check_generator

__all__ = ["CopyTask", "COPY_MODES"]

#: The ways of drawing the L content tokens of one sequence.
COPY_MODES = ("permutation", "subset", "replacement")


class CopyTask:
    """Copy L tokens drawn from a vocabulary of V tokens.

    Parameters
    ----------
    length : int >= 1
        L, the number of content tokens per sequence.
    vocab : int >= 1
        V, the number of content token ids (0..V-1).
    mode : {"permutation", "subset", "replacement"}
        * ``"permutation"`` — a uniformly random ordering of all V tokens; requires V == L, so every
          source has the same bag of words.
        * ``"subset"`` — L distinct tokens drawn uniformly from the V, in uniformly random order;
          requires V >= L (V == L gives the permutation distribution).
        * ``"replacement"`` — L i.i.d. uniform tokens; any V.
    specials : bool, default True
        Append <eos> / prepend <bos> as described in the module docstring. False gives the bare
        content tokens used by the free-parameter copy model.

    Attributes
    ----------
    input_vocab_size, output_vocab_size : int
        V + 3 with specials, V without.
    source_length, target_length : int
        L + 1 with specials, L without.
    pad_id, bos_id, eos_id : int or None
        V, V + 1, V + 2 with specials; None without. ``source_pad_id`` and ``source_eos_id`` are the
        same ids (copy shares one vocabulary between source and target).

    Raises
    ------
    ValueError
        If ``mode`` is unknown, if ``mode="permutation"`` and V != L, or if ``mode="subset"`` and
        L > V (there are not L distinct tokens to draw).
    """

    def __init__(self, length: int, vocab: int, mode: str, specials: bool = True):
        self.length = integer("length", length, 1)
        self.vocab = integer("vocab", vocab, 1)
        if not isinstance(mode, str):
            raise TypeError(f"mode must be one of {COPY_MODES}, got {type(mode).__name__} {mode!r}")
        if mode not in COPY_MODES:
            raise ValueError(f"mode must be one of {COPY_MODES}, got {mode!r}")
        if mode == "permutation" and self.vocab != self.length:
            raise ValueError(f"mode='permutation' orders all tokens, so it needs vocab == length; "
                             f"got length={self.length}, vocab={self.vocab} "
                             f"(use mode='subset' for vocab > length)")
        if mode == "subset" and self.length > self.vocab:
            raise ValueError(f"mode='subset' draws length distinct tokens, so it needs "
                             f"length <= vocab; got length={self.length}, vocab={self.vocab} "
                             f"(use mode='replacement' for i.i.d. tokens)")
        self.mode = mode
        self.specials = flag("specials", specials)

        V, L = self.vocab, self.length
        if self.specials:
            self.pad_id, self.bos_id, self.eos_id = V, V + 1, V + 2
            self.input_vocab_size = self.output_vocab_size = V + 3
            self.source_length = self.target_length = L + 1
        else:
            self.pad_id = self.bos_id = self.eos_id = None
            self.input_vocab_size = self.output_vocab_size = V
            self.source_length = self.target_length = L
        self.source_pad_id, self.source_eos_id = self.pad_id, self.eos_id

    def __repr__(self) -> str:
        return (f"CopyTask(length={self.length}, vocab={self.vocab}, mode={self.mode!r}, "
                f"specials={self.specials})")

    def sample_content(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        """Draw the content tokens of ``batch_size`` sequences.

        Parameters
        ----------
        rng : numpy.random.Generator
        batch_size : int >= 1

        Returns
        -------
        tokens : int64 array, shape (B, L), values in [0, V)
        """
        rng = _check_generator(rng)
        B = integer("batch_size", batch_size, 1)
        V, L = self.vocab, self.length
        if self.mode == "replacement":
            return rng.integers(0, V, size=(B, L), dtype=np.int64)
        # All B permutations at once: `permuted` shuffles every row independently. The first L
        # entries of a uniform permutation of V are a uniform ordered L-subset, so subsets cost
        # O(B V) with no rejection and no loop over the batch.
        perms = rng.permuted(np.broadcast_to(np.arange(V, dtype=np.int64), (B, V)), axis=1)
        return perms[:, :L] if self.mode == "subset" else perms

    def sample(self, rng: np.random.Generator, batch_size: int) -> Seq2SeqBatch:
        """Draw a fresh batch of copy sequences.

        Parameters
        ----------
        rng : numpy.random.Generator
        batch_size : int >= 1

        Returns
        -------
        Seq2SeqBatch
            ``source (B, S)``, ``source_mask (B, S)`` (all True), ``target_in (B, T)``,
            ``target_out (B, T)``, ``target_mask (B, T)`` (all True), ``alignment (B, T)`` with
            ``alignment[:, t] = t``; int64 ids, bool masks; S = T = L + 1 with specials, L without.
        """
        content = self.sample_content(rng, batch_size)
        B, L = content.shape
        if self.specials:
            eos = np.full((B, 1), self.eos_id, dtype=np.int64)
            bos = np.full((B, 1), self.bos_id, dtype=np.int64)
            source = np.concatenate([content, eos], axis=1)
            target_in = np.concatenate([bos, content], axis=1)
            target_out = source.copy()  # x_1..x_L <eos>: the same ids, a separate array
        else:
            source = content
            target_out = content.copy()
            target_in = content.copy()
        S, T = source.shape[1], target_out.shape[1]
        # Output t copies source t; with specials the final <eos> is aligned to the source <eos>.
        alignment = np.broadcast_to(np.arange(T, dtype=np.int64), (B, T)).copy()
        return Seq2SeqBatch(
            source=source,
            source_mask=np.ones((B, S), dtype=bool),
            target_in=target_in,
            target_out=target_out,
            target_mask=np.ones((B, T), dtype=bool),
            alignment=alignment,
        )
