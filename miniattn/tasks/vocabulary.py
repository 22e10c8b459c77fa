"""Tokens and vocabularies of real text: a whitespace tokenizer and :class:`Vocabulary`.

Vocabulary ids: the four specials come first, so that the source and the target vocabulary of a
parallel corpus share them::

    0 <pad>    1 <unk>    2 <bos>    3 <eos>    4.. words, most frequent first (ties alphabetical)
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from miniattn._validate import int_array
from miniattn.tasks import _check_int

__all__ = ["RESERVED_TOKENS", "PAD_ID", "UNK_ID", "BOS_ID", "EOS_ID", "tokenize", "Vocabulary"]

#: The special tokens, in id order.
RESERVED_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

_VOCAB_FORMAT = "miniattn-vocabulary"
_VOCAB_VERSION = 1


def tokenize(text: str, lowercase: bool = False) -> list[str]:
    """Split ``text`` on runs of whitespace (spaces, tabs, newlines, ...).

    Parameters
    ----------
    text : str
    lowercase : bool, default False
        Lower-case the text first (``str.lower``).

    Returns
    -------
    list of str
        The non-empty tokens, in order.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return (text.lower() if lowercase else text).split()


def _token_list(name: str, tokens) -> list[str]:
    """``tokens`` as a list of str; a bare str is refused (it would be read character by character)."""
    if isinstance(tokens, str):
        raise TypeError(f"{name} must be a sequence of token strings, not a str: tokenize it first")
    tokens = list(tokens)
    for tok in tokens:
        if not isinstance(tok, str):
            raise TypeError(f"{name} must contain only str tokens, got {type(tok).__name__} {tok!r}")
    return tokens


class Vocabulary:
    """A bijection between tokens and ids, with ``<pad>``, ``<unk>``, ``<bos>``, ``<eos>`` at 0..3.

    Parameters
    ----------
    words : iterable of str
        The ordinary tokens, in id order (ids 4, 5, ...). They must be distinct, non-empty and
        different from the special tokens.

    Attributes
    ----------
    pad_id, unk_id, bos_id, eos_id : int
        0, 1, 2, 3.
    tokens : tuple of str
        Every token in id order, specials included (``tokens[i]`` is the token of id i).
    """

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, words: Iterable[str]):
        words = _token_list("words", words)
        seen: dict[str, int] = {tok: i for i, tok in enumerate(RESERVED_TOKENS)}
        for tok in words:
            if tok == "":
                raise ValueError("words must not contain the empty string")
            if tok in seen:
                what = "a special token" if tok in RESERVED_TOKENS else "a duplicate"
                raise ValueError(f"words must be distinct non-special tokens; {tok!r} is {what}")
            seen[tok] = len(seen)
        self._index = seen
        self.tokens = tuple(RESERVED_TOKENS) + tuple(words)

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], min_count: int = 1,
              max_size: int | None = None) -> "Vocabulary":
        """Build a vocabulary from tokenized texts.

        Parameters
        ----------
        token_lists : iterable of sequences of str
            E.g. ``[tokenize(line) for line in lines]``.
        min_count : int >= 1, default 1
            Tokens seen fewer times become ``<unk>``.
        max_size : int >= 0 or None
            Keep at most this many ordinary words (the most frequent), besides the 4 specials.

        Returns
        -------
        Vocabulary
            Words ordered by decreasing count, ties broken alphabetically (deterministic). Tokens
            that spell a special token are not added again (they encode to that special id).
        """
        min_count = _check_int("min_count", min_count, 1)
        if max_size is not None:
            max_size = _check_int("max_size", max_size, 0)
        counts: Counter[str] = Counter()
        for i, toks in enumerate(token_lists):
            counts.update(_token_list(f"token_lists[{i}]", toks))
        kept = sorted((tok for tok, c in counts.items() if c >= min_count and tok not in RESERVED_TOKENS
                       and tok != ""), key=lambda tok: (-counts[tok], tok))
        return cls(kept if max_size is None else kept[:max_size])

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token) -> bool:
        return token in self._index

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self.tokens == other.tokens

    def __hash__(self) -> int:
        return hash(self.tokens)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens: {', '.join(self.tokens[:8])}{', ...' if len(self) > 8 else ''})"

    @property
    def words(self) -> tuple[str, ...]:
        """The ordinary tokens (ids 4..), without the specials."""
        return self.tokens[len(RESERVED_TOKENS):]

    def token_to_id(self, token: str) -> int:
        """The id of ``token``; ``unk_id`` if it is not in the vocabulary."""
        if not isinstance(token, str):
            raise TypeError(f"token must be a str, got {type(token).__name__}")
        return self._index.get(token, UNK_ID)

    def id_to_token(self, idx: int) -> str:
        """The token of id ``idx`` in ``[0, len(self))``."""
        return self.tokens[_check_int("idx", idx, 0, len(self) - 1)]

    def encode(self, tokens: Sequence[str], add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
        """Map tokens to ids (unknown tokens to ``unk_id``).

        Parameters
        ----------
        tokens : sequence of str (length n)
        add_bos, add_eos : bool
            Prepend ``<bos>`` / append ``<eos>``.

        Returns
        -------
        ids : int64 array, shape (n + add_bos + add_eos,)
        """
        tokens = _token_list("tokens", tokens)
        ids = [self._index.get(tok, UNK_ID) for tok in tokens]
        return np.array(([BOS_ID] if add_bos else []) + ids + ([EOS_ID] if add_eos else []),
                        dtype=np.int64)

    def decode(self, ids, strip_specials: bool = False) -> list[str]:
        """Map ids back to tokens.

        Parameters
        ----------
        ids : int array-like, shape (n,), values in ``[0, len(self))``
        strip_specials : bool, default False
            Drop ``<pad>``, ``<bos>`` and ``<eos>`` (``<unk>`` is kept: it stands for a word).

        Returns
        -------
        list of str
        """
        ids = int_array("ids", np.asarray(ids, dtype=np.int64) if isinstance(ids, list) else ids,
                        upper=len(self), ndim=1, allow_empty=True)
        toks = [self.tokens[i] for i in ids.tolist()]
        if strip_specials:
            drop = {RESERVED_TOKENS[PAD_ID], RESERVED_TOKENS[BOS_ID], RESERVED_TOKENS[EOS_ID]}
            toks = [t for t in toks if t not in drop]
        return toks

    def save(self, path) -> None:
        """Write the vocabulary as JSON (``{"format", "version", "tokens"}``), atomically.

        The file is written to a temporary name in the same directory and renamed, so an interrupted
        save never leaves a half-written vocabulary behind.
        """
        from miniattn.io import atomic_write_text

        payload = {"format": _VOCAB_FORMAT, "version": _VOCAB_VERSION, "tokens": list(self.tokens)}
        atomic_write_text(path, json.dumps(payload, ensure_ascii=False, indent=0) + "\n")

    @classmethod
    def load(cls, path) -> "Vocabulary":
        """Read a vocabulary written by :meth:`save`; a malformed file is a ``ValueError`` naming it."""
        path = Path(path)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not a JSON vocabulary file ({exc})") from exc
        if not isinstance(payload, dict) or payload.get("format") != _VOCAB_FORMAT:
            raise ValueError(f"{path}: not a miniattn vocabulary (expected \"format\": {_VOCAB_FORMAT!r})")
        if payload.get("version") != _VOCAB_VERSION:
            raise ValueError(f"{path}: unsupported vocabulary version {payload.get('version')!r}, "
                             f"expected {_VOCAB_VERSION}")
        tokens = payload.get("tokens")
        if not isinstance(tokens, list) or tuple(tokens[:len(RESERVED_TOKENS)]) != RESERVED_TOKENS:
            raise ValueError(f"{path}: \"tokens\" must be a list starting with {list(RESERVED_TOKENS)}")
        try:
            return cls(tokens[len(RESERVED_TOKENS):])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from exc


