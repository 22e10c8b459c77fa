"""Tests for analysis.probes: probe_all on stand-in and real models, and the agreement table."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from analysis.agreement import agreement, kendall_tau
from analysis.cooccurrence import beta_px_for_batch
from analysis.probes import PAIRS, Probes, agreement_table, probe_all
from miniattn.batch import ClassificationBatch, Seq2SeqBatch
from miniattn.layers import masked_softmax
from miniattn.models.base import ForwardResult
from miniattn.optim import Adam
from miniattn.tasks import CopyTask, KeywordClassificationTask
from miniattn.train import train


class StandIn:
    """A model with the probe interface whose outputs are known functions of the batch.

    Scores are the source ids (so α, β and Δ rank source positions like the ids), optionally shifted
    per head, which lets the tests predict every value.
    """

    def __init__(self, heads: int = 1, classification: bool = False):
        self.heads = heads
        self.classification = classification

    def _parts(self, batch):
        if self.classification:
            return batch.tokens, batch.mask, np.ones((batch.tokens.shape[0], 1), bool)
        return batch.source, batch.source_mask, batch.target_mask

    def _scores(self, batch):
        source, source_mask, target_mask = self._parts(batch)
        T = target_mask.shape[1]
        return np.broadcast_to(source[:, None, :].astype(float), (source.shape[0], T, source.shape[1]))

    def forward(self, batch):
        source, source_mask, _ = self._parts(batch)
        scores = self._scores(batch)
        if self.heads == 1:
            att = masked_softmax(scores, source_mask[:, None, :])
        else:
            shifts = np.arange(self.heads, dtype=float)[:, None, None, None]
            att = masked_softmax(scores[None] * (1 + shifts), source_mask[None, :, None, :])
        return ForwardResult(np.zeros(scores.shape[:2] + (3,)), att)

    def ktiw_probe(self, batch):
        return 2.0 * self._scores(batch) - 1.0

    def saliency(self, batch):
        return np.exp(0.1 * self._scores(batch))


@st.composite
def ragged_seq2seq(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    B, S, T = draw(st.integers(1, 5)), draw(st.integers(1, 8)), draw(st.integers(1, 6))
    source = rng.integers(0, 10, size=(B, S))
    source_mask = np.arange(S)[None, :] < rng.integers(1, S + 1, size=(B, 1))
    target_mask = rng.random((B, T)) < 0.7
    target = rng.integers(0, 10, size=(B, T))
    return Seq2SeqBatch(source, source_mask, target, target, target_mask, None)


# ------------------------------------------------------------------------------------------------
# probe_all
# ------------------------------------------------------------------------------------------------

@given(ragged_seq2seq(), st.integers(1, 3))
def test_probe_all_aligns_and_masks(batch, heads):
    model = StandIn(heads=heads)
    probes = probe_all(model, batch)
    B, S = batch.source.shape
    T = batch.target_mask.shape[1]
    expected_mask = batch.target_mask[:, :, None] & batch.source_mask[:, None, :]
    np.testing.assert_array_equal(probes.mask, expected_mask)
    for name in ("alpha", "beta", "delta"):
        value = getattr(probes, name)
        assert value.shape == (B, T, S) and value.dtype == np.float64
        assert np.isnan(value[~expected_mask]).all() and not np.isnan(value[expected_mask]).any()
    np.testing.assert_array_equal(probes.beta[expected_mask], model.ktiw_probe(batch)[expected_mask])
    np.testing.assert_array_equal(probes.delta[expected_mask], model.saliency(batch)[expected_mask])
    attention = model.forward(batch).attention
    if heads == 1:
        assert probes.alpha_heads is None
        np.testing.assert_array_equal(probes.alpha[expected_mask], attention[expected_mask])
    else:
        assert probes.alpha_heads.shape == (heads, B, T, S)
        np.testing.assert_allclose(probes.alpha[expected_mask], attention.mean(axis=0)[expected_mask], rtol=1e-12)
    # Attention rows (head-averaged) still sum to one over the valid sources of counted outputs.
    np.testing.assert_allclose(np.nansum(probes.alpha, axis=-1)[batch.target_mask], 1.0, rtol=1e-12)


def test_probe_all_on_a_classification_batch_has_one_output_position():
    batch = ClassificationBatch(np.array([[3, 1, 2, 0], [5, 4, 0, 0]]),
                                np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool), np.array([1, 0]))
    probes = probe_all(StandIn(classification=True), batch)
    assert probes.alpha.shape == (2, 1, 4)
    np.testing.assert_array_equal(probes.mask[:, 0], batch.mask)
    assert np.nanargmax(probes.alpha[0, 0]) == 0 and np.nanargmax(probes.beta[1, 0]) == 0


def test_probe_all_rejects_models_without_the_interface_or_with_wrong_shapes():
    batch = CopyTask(3, 4, "subset", specials=False).sample(np.random.default_rng(0), 2)

    class NoSaliency:
        forward = StandIn.forward
        ktiw_probe = StandIn.ktiw_probe

    with pytest.raises(TypeError, match="saliency"):
        probe_all(NoSaliency(), batch)

    class WrongBeta(StandIn):
        def ktiw_probe(self, batch):
            return np.zeros((2, 3, 2))

    with pytest.raises(ValueError, match="ktiw_probe"):
        probe_all(WrongBeta(), batch)

    class IntegerSaliency(StandIn):
        def saliency(self, batch):
            return np.zeros((2, 3, 3), dtype=int)

    with pytest.raises(TypeError, match="saliency"):
        probe_all(IntegerSaliency(), batch)

    class WrongHeads(StandIn):
        def forward(self, batch):
            return ForwardResult(None, np.zeros((2, 2, 3, 4)))

    with pytest.raises(ValueError, match="attention"):
        probe_all(WrongHeads(), batch)
    with pytest.raises(TypeError, match="batch"):
        probe_all(StandIn(), {"source": batch.source})


def _real_models():
    # Imported here so that the stand-in tests above do not depend on the model modules.
    classifier = pytest.importorskip("miniattn.models.classifier")
    seq2seq = pytest.importorskip("miniattn.models.seq2seq")
    free_copy = pytest.importorskip("miniattn.models.free_copy")
    return classifier.AttentionClassifier, seq2seq.Seq2SeqAttention, free_copy.FreeAttentionCopyModel


def test_probe_all_with_the_real_models():
    AttentionClassifier, Seq2SeqAttention, FreeAttentionCopyModel = _real_models()
    rng = np.random.default_rng(np.random.SeedSequence(30))
    # Classifier with padding.
    task = KeywordClassificationTask(vocab=30, length=10, min_length=4)
    batch = task.sample(rng, 8)
    model = AttentionClassifier(task.input_vocab_size, task.output_vocab_size, dim=6, rng=rng)
    probes = probe_all(model, batch)
    assert probes.alpha.shape == (8, 1, 10) and probes.alpha_heads is None
    np.testing.assert_array_equal(probes.mask[:, 0], batch.mask)
    np.testing.assert_allclose(probes.alpha[probes.mask], model.forward(batch).attention[probes.mask])
    np.testing.assert_allclose(probes.beta[probes.mask], model.ktiw_probe(batch)[probes.mask])

    # Multi-head seq2seq with a ragged target mask.
    copy = CopyTask(4, 7, "subset")
    batch = copy.sample(rng, 3)
    batch = batch._replace(target_mask=batch.target_mask & (np.arange(5)[None, :] < np.array([[5], [3], [1]])))
    model = Seq2SeqAttention(copy.input_vocab_size, copy.output_vocab_size, copy.source_length,
                             copy.target_length, dim=6, heads=3, rng=rng)
    probes = probe_all(model, batch)
    assert probes.alpha_heads.shape == (3, 3, 5, 5)
    np.testing.assert_allclose(probes.alpha[probes.mask], model.forward(batch).attention.mean(0)[probes.mask])
    np.testing.assert_allclose(probes.delta[probes.mask], model.saliency(batch)[probes.mask])
    assert np.isnan(probes.beta[1, 3:]).all()

    # The free-parameter copy model and its uniform twin.
    batch = CopyTask(5, 8, "subset", specials=False).sample(rng, 4)
    for uniform in (False, True):
        probes = probe_all(FreeAttentionCopyModel(5, 8, uniform=uniform, rng=rng), batch)
        assert probes.mask.all() and probes.alpha.shape == (4, 5, 5)
        if uniform:
            np.testing.assert_allclose(probes.alpha, 0.2)


def _ragged(batch, rng, *, source=True):
    """``batch`` with ragged source masks (if ``source``) and a ragged target mask, each row keeping one."""
    S, T = batch.source.shape[1], batch.target_mask.shape[1]
    B = batch.source.shape[0]
    target_mask = batch.target_mask & (np.arange(T)[None, :] < rng.integers(1, T + 1, size=(B, 1)))
    source_mask = batch.source_mask
    if source:
        source_mask = source_mask & (np.arange(S)[None, :] < rng.integers(1, S + 1, size=(B, 1)))
    return batch._replace(source_mask=source_mask, target_mask=target_mask)


def _toy_batch(rng, vocab, length, ragged):
    tokens = rng.integers(0, vocab, size=(6, length))
    mask = np.ones((6, length), bool)
    if ragged:
        mask = np.arange(length)[None, :] < rng.integers(1, length + 1, size=(6, 1))
        tokens[~mask] = vocab + 3                      # padding ids outside the vocabulary
    return ClassificationBatch(tokens, mask, rng.integers(0, 2, size=6))


def _gated_toy(rng):
    from miniattn.models.toy import GatedToyClassifier
    return GatedToyClassifier(0.0, vocab=4, init_scale=0.5, rng=rng), _toy_batch(rng, 4, 2, ragged=False)


def _softmax_toy(rng):
    from miniattn.models.toy import SoftmaxGatedToyClassifier
    return SoftmaxGatedToyClassifier(vocab=5, init_scale=0.5, rng=rng), _toy_batch(rng, 5, 7, ragged=True)


def _classifier(rng):
    AttentionClassifier = _real_models()[0]
    task = KeywordClassificationTask(vocab=30, length=10, min_length=3)
    return AttentionClassifier(task.input_vocab_size, task.output_vocab_size, dim=6, rng=rng), task.sample(rng, 8)


def _seq2seq(heads):
    def build(rng):
        Seq2SeqAttention = _real_models()[1]
        copy = CopyTask(4, 7, "subset")
        model = Seq2SeqAttention(copy.input_vocab_size, copy.output_vocab_size, copy.source_length,
                                 copy.target_length, dim=6, heads=heads, rng=rng)
        return model, _ragged(copy.sample(rng, 5), rng)
    return build


def _free_copy(rng):
    FreeAttentionCopyModel = _real_models()[2]
    return FreeAttentionCopyModel(5, 8, rng=rng), _ragged(CopyTask(5, 8, "subset", specials=False).sample(rng, 5), rng)


@pytest.mark.parametrize("build", [_gated_toy, _softmax_toy, _classifier, _seq2seq(1), _seq2seq(2), _free_copy],
                         ids=["GatedToyClassifier", "SoftmaxGatedToyClassifier", "AttentionClassifier",
                              "Seq2SeqAttention-1head", "Seq2SeqAttention-2heads", "FreeAttentionCopyModel"])
def test_probes_are_nan_exactly_outside_the_mask_for_every_model(build):
    """The one contract of probe_all: α, β, Δ NaN exactly where the mask is False, finite elsewhere."""
    rng = np.random.default_rng(np.random.SeedSequence(37))
    model, batch = build(rng)
    probes = probe_all(model, batch)
    assert probes.mask.any()
    for name in ("alpha", "beta", "delta"):
        value = getattr(probes, name)
        assert value.shape == probes.mask.shape and value.dtype == np.float64, name
        np.testing.assert_array_equal(np.isnan(value), ~probes.mask, err_msg=name)
        assert np.isfinite(value[probes.mask]).all(), name
    if probes.alpha_heads is not None:
        np.testing.assert_array_equal(np.isnan(probes.alpha_heads), np.broadcast_to(~probes.mask,
                                                                                    probes.alpha_heads.shape))


def test_probe_all_refuses_nan_at_a_valid_triple():
    batch = CopyTask(3, 4, "subset", specials=False).sample(np.random.default_rng(0), 2)

    class NanBeta(StandIn):
        def ktiw_probe(self, batch):
            beta = super().ktiw_probe(batch).copy()
            beta[0, 0, 0] = np.nan
            return beta

    with pytest.raises(ValueError, match="ktiw_probe returned NaN at 1 valid"):
        probe_all(NanBeta(), batch)


# ------------------------------------------------------------------------------------------------
# agreement_table
# ------------------------------------------------------------------------------------------------

def _random_probes(rng, B, T, S, mask=None):
    mask = np.ones((B, T, S), bool) if mask is None else mask
    parts = [np.where(mask, rng.normal(size=(B, T, S)), np.nan) for _ in range(3)]
    return Probes(*parts, mask)


def test_agreement_table_identical_rankings_agree_perfectly():
    rng = np.random.default_rng(np.random.SeedSequence(31))
    B, T, S = 300, 2, 40                                  # n = 40 -> k = 2 -> chance 0.05
    score = rng.normal(size=(B, T, S))
    normal = Probes(score, 5 * score, np.exp(score), np.ones((B, T, S), bool))
    uniform = Probes(score, score + 1, score, np.ones((B, T, S), bool))
    table = agreement_table(normal, uniform, 0.5 * score, rng, n_boot=300)
    for row in PAIRS:
        assert table[row]["A"].mean == 1.0 and table[row]["tau"].mean == pytest.approx(1.0)
        assert table[row]["n_items"] == B * T
        assert table[row]["chance"] == pytest.approx(0.05)
        a_hat = table[row]["A_hat"]
        assert a_hat.low <= a_hat.mean <= a_hat.high
        assert abs(a_hat.mean - 0.05) < 0.03
    assert table["A_hat"] is table["alpha_vs_beta_uf"]["A_hat"]


def test_agreement_table_rows_use_the_right_quantities():
    rng = np.random.default_rng(np.random.SeedSequence(32))
    B, T, S = 50, 3, 12
    normal, uniform = _random_probes(rng, B, T, S), _random_probes(rng, B, T, S)
    beta_px = rng.normal(size=(B, T, S))
    table = agreement_table(normal, uniform, beta_px, rng, n_boot=100)
    assert table["alpha_vs_beta_uf"]["A"].mean == pytest.approx(agreement(normal.alpha, uniform.beta))
    assert table["beta_uf_vs_beta_px"]["A"].mean == pytest.approx(agreement(uniform.beta, beta_px))
    assert table["delta_vs_beta_uf"]["A"].mean == pytest.approx(agreement(normal.delta, uniform.beta))
    assert table["delta_vs_beta_uf"]["tau"].mean == pytest.approx(kendall_tau(normal.delta, uniform.beta))


def test_agreement_table_masks_and_groups():
    rng = np.random.default_rng(np.random.SeedSequence(33))
    B, T, S = 40, 2, 9
    mask = np.ones((B, T, S), bool)
    mask[:, 1, :] = False                                 # one output position not counted
    mask[::2, :, 5:] = False                              # short sources
    normal, uniform = _random_probes(rng, B, T, S, mask), _random_probes(rng, B, T, S)
    table = agreement_table(normal, uniform, rng.normal(size=(B, T, S)), rng, n_boot=100,
                            groups=np.arange(B) % 4)
    assert table["alpha_vs_beta_uf"]["n_items"] == B
    assert table["alpha_vs_beta_uf"]["chance"] == pytest.approx(np.mean([1 / 5, 1 / 9]))
    with pytest.raises(ValueError, match="groups"):
        agreement_table(normal, uniform, np.zeros((B, T, S)), rng, groups=np.arange(3))
    with pytest.raises(ValueError, match="beta_px"):
        agreement_table(normal, uniform, np.zeros((B, T, S + 1)), rng)
    with pytest.raises(TypeError, match="probes_uniform"):
        agreement_table(normal, (1, 2), np.zeros((B, T, S)), rng)
    with pytest.raises(TypeError, match="rng"):
        agreement_table(normal, uniform, np.zeros((B, T, S)), 3)


@pytest.mark.slow
def test_trained_classifier_attention_agrees_with_the_uniform_twins_ktiw_far_above_chance():
    """E3 in miniature: on keyword classification A(α, β^uf), A(β^uf, β^px), A(Δ, β^uf) ≫ Â."""
    AttentionClassifier = _real_models()[0]
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(34).spawn(4)]
    task = KeywordClassificationTask(vocab=200, length=20, keywords_per_class=4, min_length=10,
                                     keyword_strength=0.9, noise=0.1)
    evaluate, fit = task.sample(streams[0], 500), task.sample(streams[1], 5000)
    models = {}
    for uniform in (False, True):
        model = AttentionClassifier(task.input_vocab_size, task.output_vocab_size, dim=16, uniform=uniform,
                                    rng=np.random.default_rng(np.random.SeedSequence(35)))
        # The same seed gives both twins the same batches.
        train(model, task, Adam(model.params, lr=1e-2), steps=300, batch_size=64, seed=36, eval_every=300,
              eval_batch=evaluate, progress=False)
        models[uniform] = model
    beta_px = beta_px_for_batch(fit, evaluate, task.input_vocab_size, task.output_vocab_size)
    table = agreement_table(probe_all(models[False], evaluate), probe_all(models[True], evaluate), beta_px,
                            streams[2], n_boot=500)
    for row in PAIRS:
        # The claim is about the top position; Kendall τ over all positions is dominated by the
        # ordering of the many filler words, which carries no signal, so it is not asserted on.
        assert table[row]["A"].low > 3 * table[row]["A_hat"].high, row
