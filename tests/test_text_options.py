"""Tests for miniattn.tasks.text_options: one set of text options for the CLI and the experiments."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from miniattn.tasks import HeldOutSplit, load_classification_file, load_parallel_files, tokenize
from miniattn.tasks.text_options import (TextOptions, add_text_arguments, describe_dataset, parse_text_options,
                                         text_options_from_args)

DATA = Path(__file__).parent / "data"
SENTIMENT, REVIEWS = DATA / "sentiment.tsv", DATA / "reviews.csv"
SRC, TGT = DATA / "parallel.en", DATA / "parallel.de"


def word_counts(path: Path, lowercase: bool) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        for tok in tokenize(line.split("\t", 1)[1], lowercase=lowercase):
            counts[tok] = counts.get(tok, 0) + 1
    return counts


def test_defaults_and_dict_round_trip():
    opts = TextOptions()
    assert opts == (None, False, 1, None, None, "utf-8-sig")
    assert opts.as_dict() == {"header": None, "lowercase": False, "min_count": 1, "max_vocab": None,
                              "max_length": None, "encoding": "utf-8-sig"}
    custom = TextOptions(header=False, lowercase=True, min_count=2, max_vocab=10, max_length=5,
                         encoding="latin-1")
    d = json.loads(json.dumps(custom.as_dict()))
    assert TextOptions(**d) == custom
    assert parse_text_options(" ".join(custom.as_args())) == custom
    assert TextOptions().as_args() == []


@pytest.mark.parametrize("kwargs, field", [
    ({"header": "yes"}, "header (--header/--no-header)"),
    ({"lowercase": 1}, "lowercase (--lowercase)"),
    ({"min_count": 0}, "min_count (--min-count)"),
    ({"min_count": 2.0}, "min_count (--min-count)"),
    ({"min_count": True}, "min_count (--min-count)"),
    ({"max_vocab": 0}, "max_vocab (--max-vocab)"),
    ({"max_length": -1}, "max_length (--max-length)"),
    ({"encoding": "no-such-codec"}, "encoding (--encoding)"),
    ({"encoding": ""}, "encoding (--encoding)"),
])
def test_every_field_is_validated_in_one_line(kwargs, field):
    with pytest.raises(ValueError) as info:
        TextOptions(**kwargs)
    msg = str(info.value)
    assert msg.startswith(field) and "\n" not in msg
    with pytest.raises(ValueError, match=field.split(" ")[0]):
        TextOptions()._replace(**kwargs)
    with pytest.raises(ValueError, match=field.split(" ")[0]):
        TextOptions._make([kwargs.get(f, getattr(TextOptions(), f)) for f in TextOptions._fields])


def test_parse_text_options():
    assert parse_text_options("") == TextOptions()
    assert parse_text_options("--lowercase --min-count 2") == TextOptions(lowercase=True, min_count=2)
    assert parse_text_options("--header --max-vocab 5 --max-length 7 --encoding 'latin-1'") == TextOptions(
        header=True, max_vocab=5, max_length=7, encoding="latin-1")
    assert parse_text_options("--no-header").header is False


@pytest.mark.parametrize("text, named", [
    ("--min-count 0", "--min-count"),
    ("--min-count two", "--min-count"),
    ("--max-vocab", "--max-vocab"),
    ("--bogus", "--bogus"),
    ("--encoding klingon", "--encoding"),
    ("--lowercase 'oops", "oops"),
])
def test_parse_text_options_errors_name_the_option(text, named):
    with pytest.raises(ValueError) as info:
        parse_text_options(text)
    msg = str(info.value)
    assert msg.startswith("text options:") and named in msg and "\n" not in msg


def test_argparse_integration_keeps_not_given_as_none():
    parser = argparse.ArgumentParser()
    add_text_arguments(parser.add_argument_group("text"))
    ns = parser.parse_args([])
    assert all(getattr(ns, f) is None for f in TextOptions._fields)
    assert text_options_from_args(ns) == TextOptions()
    ns = parser.parse_args(["--no-header", "--lowercase", "--max-length", "3"])
    assert text_options_from_args(ns) == TextOptions(header=False, lowercase=True, max_length=3)


def test_options_change_the_vocabulary_as_stated():
    base = TextOptions().load_classification(SENTIMENT)
    assert set(base.vocab.words) == set(word_counts(SENTIMENT, False))
    lower = TextOptions(lowercase=True).load_classification(SENTIMENT)
    counts = word_counts(SENTIMENT, True)
    assert set(lower.vocab.words) == set(counts) and len(lower.vocab) < len(base.vocab)
    frequent = TextOptions(lowercase=True, min_count=2).load_classification(SENTIMENT)
    assert set(frequent.vocab.words) == {w for w, c in counts.items() if c >= 2}
    capped = TextOptions(lowercase=True, max_vocab=5).load_classification(SENTIMENT)
    top = sorted(counts, key=lambda w: (-counts[w], w))[:5]
    assert capped.vocab.words == tuple(top)
    short = TextOptions(max_length=2).load_classification(SENTIMENT)
    assert short.source_length == 2 and short.n_truncated == int((base.lengths > 2).sum()) > 0
    # The options give exactly what the loader gives with the same arguments.
    direct = load_classification_file(SENTIMENT, lowercase=True, min_count=2)
    assert direct.vocab == frequent.vocab and direct.labels.tolist() == frequent.labels.tolist()


def test_parallel_options_apply_to_both_sides():
    opts = TextOptions(lowercase=True, max_vocab=4, max_length=6)
    ds = opts.load_parallel(SRC, TGT)
    ref = load_parallel_files(SRC, TGT, lowercase=True, max_size=4, max_length=6)
    assert ds.src_vocab == ref.src_vocab and ds.tgt_vocab == ref.tgt_vocab and ds.n_dropped == ref.n_dropped
    assert len(ds.src_vocab) == len(ds.tgt_vocab) == 4 + 4
    # header does not apply to parallel files: setting it changes nothing.
    assert TextOptions(header=True, lowercase=True, max_vocab=4, max_length=6).load_parallel(
        SRC, TGT).src_vocab == ds.src_vocab


def test_header_option_and_loader_kwargs():
    assert TextOptions(header=True).load_classification(REVIEWS).header_line == 1
    auto = TextOptions().load_classification(REVIEWS)
    assert auto.header_line == 1 and "auto-detected" in auto.notes[0]
    with pytest.raises(ValueError, match="--header"):
        TextOptions(header=False).load_classification(REVIEWS)
    train = TextOptions(lowercase=True).load_classification(SENTIMENT)
    test = TextOptions(lowercase=True).load_classification(SENTIMENT, vocab=train.vocab,
                                                           labels=train.label_names)
    assert test.vocab is train.vocab
    with pytest.raises(TypeError, match="min_count is set by the TextOptions"):
        TextOptions().load_classification(SENTIMENT, min_count=3)
    with pytest.raises(TypeError, match="field max_vocab"):
        TextOptions().load_parallel(SRC, TGT, max_size=3)


def test_describe_dataset_reports_counts_split_and_decisions():
    ds = TextOptions(lowercase=True, min_count=2).load_classification(SENTIMENT)
    split = HeldOutSplit(ds, 0.2, np.random.default_rng(np.random.SeedSequence(0)))
    lines = describe_dataset(split)
    assert lines[0].startswith(f"examples 30, longest {ds.source_length} tokens; vocabulary {len(ds.vocab)}")
    unk = float(np.mean(np.concatenate([ds.tokens(i) for i in range(len(ds))]) == ds.vocab.unk_id))
    assert f"{unk:.1%} of tokens <unk>" in lines[0] and unk > 0
    assert lines[1] == "classes 2: neg (15), pos (15)"
    assert lines[2] == "held out 6 (0.2), training on 24"
    assert lines[3].startswith("header: none (auto-detected")
    pairs = TextOptions(max_length=3).load_parallel(SRC, TGT)
    lines = describe_dataset(pairs)
    assert lines[0].startswith(f"pairs {len(pairs)} (dropped {pairs.n_dropped}); vocabulary source "
                               f"{len(pairs.src_vocab)}, target {len(pairs.tgt_vocab)}")
    assert lines[1].startswith("held out 0") and lines[2].startswith("max_length: ")
    with pytest.raises(TypeError, match="text dataset"):
        describe_dataset([1, 2])
