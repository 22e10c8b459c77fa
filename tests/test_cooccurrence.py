"""Tests for analysis.cooccurrence and analysis.bag_of_words: counts, β^px (closed form and regression), stage 2."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from analysis.agreement import agreement, kendall_tau
from analysis.bag_of_words import (bag_of_words_features, bag_of_words_loss, batch_arrays, beta_px_regression,
                                   fit_bag_of_words, target_counts)
from analysis.cooccurrence import (beta_px_closed_form, beta_px_for_batch, cooccurrence_counts, copy_ktiw_signal,
                                   predicted_score_gradient, stage2_prediction)
from miniattn.batch import ClassificationBatch, Seq2SeqBatch
from miniattn.gradcheck import check_vjp, numerical_vjp
from miniattn.layers import log_softmax, masked_softmax
from miniattn.tasks import CopyTask, KeywordClassificationTask


@st.composite
def padded_data(draw):
    """Random sources/targets with repeated ids, ragged masks, out-of-range ids in the padding."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    B, S, T = draw(st.integers(1, 6)), draw(st.integers(1, 7)), draw(st.integers(1, 5))
    n_in, n_out = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    sources = rng.integers(0, n_in, size=(B, S))
    targets = rng.integers(0, n_out, size=(B, T))
    source_mask = np.arange(S)[None, :] < rng.integers(1, S + 1, size=(B, 1))
    target_mask = rng.random((B, T)) < 0.7
    sources[~source_mask] = n_in + 7     # padding ids are never looked at
    targets[~target_mask] = n_out + 3
    return sources, source_mask, targets, target_mask, n_in, n_out


# ------------------------------------------------------------------------------------------------
# Counts and features
# ------------------------------------------------------------------------------------------------

@given(padded_data())
def test_counts_match_the_definition(data):
    sources, source_mask, targets, target_mask, n_in, n_out = data
    C = cooccurrence_counts(sources, source_mask, targets, target_mask, n_in, n_out)
    expected = np.zeros((n_in, n_out), dtype=np.int64)
    for b in range(sources.shape[0]):                       # the definition, pair by pair
        words = set(sources[b][source_mask[b]].tolist())
        for t in np.flatnonzero(target_mask[b]):
            for i in words:
                expected[i, targets[b, t]] += 1
    np.testing.assert_array_equal(C, expected)
    assert C.dtype == np.int64


@given(padded_data())
def test_bags_and_target_counts(data):
    sources, source_mask, targets, target_mask, n_in, n_out = data
    bags = bag_of_words_features(sources, source_mask, n_in)
    np.testing.assert_allclose(bags.sum(axis=1), 1.0, rtol=1e-12)
    for b in range(sources.shape[0]):
        words = sources[b][source_mask[b]]
        np.testing.assert_allclose(bags[b], np.bincount(words, minlength=n_in) / words.size, rtol=1e-12)
    Y = target_counts(targets, target_mask, n_out)
    np.testing.assert_array_equal(Y.sum(axis=1), target_mask.sum(axis=1))


def test_batch_arrays_for_both_batch_types():
    s2s = CopyTask(4, 6, "subset", specials=False).sample(np.random.default_rng(0), 3)
    assert all(x is y for x, y in zip(batch_arrays(s2s), (s2s.source, s2s.source_mask, s2s.target_out,
                                                           s2s.target_mask)))
    cls = ClassificationBatch(np.array([[0, 1], [1, 1]]), np.ones((2, 2), bool), np.array([1, 0]))
    sources, source_mask, targets, target_mask = batch_arrays(cls)
    np.testing.assert_array_equal(targets, [[1], [0]])
    assert target_mask.shape == (2, 1) and target_mask.all()
    with pytest.raises(TypeError, match="batch"):
        batch_arrays((1, 2))


# ------------------------------------------------------------------------------------------------
# Closed form on copy batches
# ------------------------------------------------------------------------------------------------

@given(st.integers(0, 2**32 - 1), st.integers(1, 12), st.integers(1, 40),
       st.sampled_from([0.0, 0.5, 1.0]))
def test_closed_form_is_constant_for_permutations(seed, L, B, smoothing):
    batch = CopyTask(L, L, "permutation", specials=False).sample(np.random.default_rng(seed), B)
    arrays = batch_arrays(batch)
    C = cooccurrence_counts(*arrays, L, L)
    beta = beta_px_closed_form(C, *arrays, smoothing=smoothing)
    assert beta.shape == (B, L, L)
    # Every source holds every word once: C[i, o] = B for all i, o, so P(o | i) = 1/L everywhere.
    np.testing.assert_allclose(beta, np.log(1.0 / L), rtol=1e-12)


@given(st.integers(0, 2**32 - 1), st.integers(2, 8), st.integers(1, 6), st.integers(1, 30))
def test_closed_form_unsmoothed_is_largest_at_the_aligned_position_for_subsets(seed, L, extra, B):
    V = L + extra
    batch = CopyTask(L, V, "subset", specials=False).sample(np.random.default_rng(seed), B)
    arrays = batch_arrays(batch)
    beta = beta_px_closed_form(cooccurrence_counts(*arrays, V, V), *arrays, smoothing=0.0)
    diagonal = np.diagonal(beta, axis1=1, axis2=2)
    # C[i, i] = n_i and Σ_o C[i, o] = L n_i, so the aligned word gives exactly 1/L; any other word
    # gives n_io / (L n_i) <= 1/L (a word co-occurs with o at most as often as it occurs).
    np.testing.assert_allclose(diagonal, np.log(1.0 / L), rtol=1e-12)
    assert np.all(beta <= diagonal[:, :, None] + 1e-12)


def test_closed_form_argmax_is_the_aligned_position_for_subsets():
    rng = np.random.default_rng(np.random.SeedSequence(10))
    task = CopyTask(10, 15, "subset", specials=False)
    fit, evaluate = task.sample(rng, 512), task.sample(rng, 64)
    C = cooccurrence_counts(*batch_arrays(fit), 15, 15)
    beta = beta_px_closed_form(C, *batch_arrays(evaluate))
    np.testing.assert_array_equal(beta.argmax(axis=-1), np.broadcast_to(np.arange(10), (64, 10)))
    np.testing.assert_array_equal(stage2_prediction(beta)[:, np.arange(10), np.arange(10)], 0)
    assert agreement(beta, np.eye(10)[None].repeat(64, axis=0)) == 1.0


def test_closed_form_masks_smoothing_and_unseen_words():
    sources = np.array([[0, 1, 9], [1, 1, 1]])
    source_mask = np.array([[True, True, False], [True, True, True]])
    targets = np.array([[0, 1], [1, 0]])
    target_mask = np.array([[True, True], [True, False]])
    C = cooccurrence_counts(sources, source_mask, targets, target_mask, 3, 2)
    np.testing.assert_array_equal(C, [[1, 1], [1, 2], [0, 0]])
    beta = beta_px_closed_form(C, sources, source_mask, targets, target_mask, smoothing=1.0)
    assert np.isnan(beta[0, :, 2]).all() and np.isnan(beta[1, 1]).all()
    assert beta[0, 0, 0] == pytest.approx(np.log(2 / 4))          # (C[0,0] + 1) / (2 + 2)
    assert beta[1, 0, 0] == pytest.approx(np.log(3 / 5))          # (C[1,1] + 1) / (3 + 2)
    # Unsmoothed: an unseen pair is -inf, an unseen word NaN, and neither raises a warning.
    table_check = beta_px_closed_form(np.array([[0, 3], [0, 0]]), np.array([[0, 1]]), np.ones((1, 2), bool),
                                      np.array([[0]]), np.ones((1, 1), bool), smoothing=0.0)
    assert table_check[0, 0, 0] == -np.inf and np.isnan(table_check[0, 0, 1])


# ------------------------------------------------------------------------------------------------
# Bag-of-words regression
# ------------------------------------------------------------------------------------------------

@given(padded_data(), st.integers(0, 2**32 - 1), st.sampled_from([0.0, 0.3]))
def test_bag_of_words_gradient_check(data, seed, l2):
    sources, source_mask, targets, target_mask, n_in, n_out = data
    if not target_mask.any():
        target_mask = target_mask.copy()
        target_mask[0, 0] = True
        targets = targets.copy()
        targets[0, 0] = 0
    rng = np.random.default_rng(seed)
    bags = bag_of_words_features(sources, source_mask, n_in)
    counts = target_counts(targets, target_mask, n_out)
    inputs = {"weight": rng.normal(size=(n_in, n_out)), "bias": rng.normal(size=n_out)}

    def func(weight, bias):
        return bag_of_words_loss(weight, bias, bags, counts, l2)[0]

    def vjp(upstream, weight, bias):
        grads = bag_of_words_loss(weight, bias, bags, counts, l2)[1]
        return {"weight": upstream * grads.weight, "bias": upstream * grads.bias}

    report = check_vjp(func, vjp, inputs, rng=rng)   # random scalar upstream
    assert report.passed, str(report)
    assert report.max_error < 1e-7


def test_bag_of_words_loss_is_the_mean_cross_entropy():
    rng = np.random.default_rng(11)
    sources = rng.integers(0, 5, size=(4, 3))
    targets = rng.integers(0, 3, size=(4, 2))
    mask_s, mask_t = np.ones((4, 3), bool), np.ones((4, 2), bool)
    W, b = rng.normal(size=(5, 3)), rng.normal(size=3)
    bags = bag_of_words_features(sources, mask_s, 5)
    loss, _ = bag_of_words_loss(W, b, bags, target_counts(targets, mask_t, 3), l2=0.0)
    log_p = log_softmax(bags @ W + b)
    assert loss == pytest.approx(-np.mean(np.take_along_axis(log_p, targets, axis=1)), rel=1e-12)


def test_fit_converges_to_a_stationary_point():
    rng = np.random.default_rng(np.random.SeedSequence(12))
    batch = CopyTask(5, 8, "subset", specials=False).sample(rng, 128)
    model = fit_bag_of_words(*batch_arrays(batch), 8, 8, l2=1e-2)
    assert model.converged and model.grad_norm < 1e-6
    assert model.weight.shape == (8, 8) and model.bias.shape == (8,)
    # Deterministic: started from zero, no randomness.
    again = fit_bag_of_words(*batch_arrays(batch), 8, 8, l2=1e-2)
    np.testing.assert_array_equal(model.weight, again.weight)
    # Perturbing the solution does not lower the objective (convex problem, minimum reached).
    bags = bag_of_words_features(batch.source, batch.source_mask, 8)
    counts = target_counts(batch.target_out, batch.target_mask, 8)
    for _ in range(3):
        loss = bag_of_words_loss(model.weight + 1e-3 * rng.normal(size=(8, 8)), model.bias, bags, counts, 1e-2)[0]
        assert loss >= model.loss - 1e-12


def test_regression_is_constant_for_permutations_and_agrees_with_closed_form_on_subsets():
    rng = np.random.default_rng(np.random.SeedSequence(13))
    perm = CopyTask(6, 6, "permutation", specials=False).sample(rng, 64)
    beta = beta_px_for_batch(perm, perm, 6, 6, method="regression")
    np.testing.assert_allclose(beta, np.log(1 / 6), rtol=1e-9)

    task = CopyTask(8, 14, "subset", specials=False)
    fit, evaluate = task.sample(rng, 512), task.sample(rng, 64)
    regression = beta_px_for_batch(fit, evaluate, 14, 14, method="regression")
    closed = beta_px_for_batch(fit, evaluate, 14, 14, method="closed_form")
    assert regression.shape == closed.shape == (64, 8, 8)
    assert agreement(regression, closed) == 1.0 and agreement(closed, regression) == 1.0
    np.testing.assert_array_equal(regression.argmax(axis=-1), np.broadcast_to(np.arange(8), (64, 8)))
    assert kendall_tau(regression, closed) > 0.3


def test_classification_beta_px_points_at_the_keywords():
    rng = np.random.default_rng(np.random.SeedSequence(14))
    task = KeywordClassificationTask(vocab=30, length=12, n_classes=2, keywords_per_class=2,
                                     keyword_strength=0.9, min_length=6)
    fit, evaluate = task.sample(rng, 1000), task.sample(rng, 200)
    n_in, n_out = task.input_vocab_size, task.output_vocab_size
    has_keyword = evaluate.salient.any(axis=1)
    for method in ("regression", "closed_form"):
        beta = beta_px_for_batch(fit, evaluate, n_in, n_out, method=method, l2=1e-3)
        assert beta.shape == (200, 1, 12)
        assert np.isnan(beta[:, 0][~evaluate.mask]).all()
        top = stage2_prediction(beta)[:, 0] == 0
        hit = np.any(top & evaluate.salient, axis=1)
        assert hit[has_keyword].mean() > 0.95, method


def test_fit_rejects_bad_input():
    sources, mask = np.array([[0, 1]]), np.ones((1, 2), bool)
    targets, tmask = np.array([[0]]), np.ones((1, 1), bool)
    with pytest.raises(ValueError, match="l2"):
        fit_bag_of_words(sources, mask, targets, tmask, 2, 2, l2=0.0)
    with pytest.raises(ValueError, match=r"sources .*\[0, 2\)"):
        fit_bag_of_words(np.array([[0, 5]]), mask, targets, tmask, 2, 2)
    with pytest.raises(ValueError, match=r"sources .*\[0, 2\)"):
        cooccurrence_counts(np.array([[0, -1]]), mask, targets, tmask, 2, 2)
    with pytest.raises(TypeError, match="source_mask"):
        cooccurrence_counts(sources, np.ones((1, 2)), targets, tmask, 2, 2)
    with pytest.raises(ValueError, match="target_mask"):
        cooccurrence_counts(sources, mask, targets, np.ones((1, 2), bool), 2, 2)
    with pytest.raises(TypeError, match="sources"):
        cooccurrence_counts(sources.astype(float), mask, targets, tmask, 2, 2)
    with pytest.raises(ValueError, match="no source token"):
        cooccurrence_counts(sources, np.zeros((1, 2), bool), targets, tmask, 2, 2)
    with pytest.raises(ValueError, match="n_in"):
        cooccurrence_counts(sources, mask, targets, tmask, 0, 2)
    with pytest.raises(ValueError, match="C must be non-negative"):
        beta_px_closed_form(-np.ones((2, 2)), sources, mask, targets, tmask)
    with pytest.raises(ValueError, match="smoothing"):
        beta_px_closed_form(np.ones((2, 2)), sources, mask, targets, tmask, smoothing=-1.0)
    with pytest.raises(ValueError, match="method"):
        beta_px_for_batch(CopyTask(2, 2, "permutation", specials=False).sample(np.random.default_rng(0), 2),
                          None, 2, 2, method="lstm")


# ------------------------------------------------------------------------------------------------
# Stage 2
# ------------------------------------------------------------------------------------------------

@given(st.integers(0, 2**32 - 1), st.integers(1, 9))
def test_stage2_ranks_follow_beta(seed, S):
    rng = np.random.default_rng(seed)
    beta = rng.integers(0, 3, size=(3, 4, S)).astype(float)      # many ties
    mask = rng.random((3, 4, S)) < 0.8
    ranks = stage2_prediction(beta, mask)
    for item_beta, item_mask, item_ranks in zip(beta.reshape(-1, S), mask.reshape(-1, S), ranks.reshape(-1, S)):
        idx = np.flatnonzero(item_mask)
        order = idx[np.argsort(-item_beta[idx], kind="stable")]   # ties: first index first
        np.testing.assert_array_equal(item_ranks[order], np.arange(idx.size))
        assert (item_ranks[~item_mask] == -1).all()


@given(st.integers(0, 2**32 - 1), st.integers(1, 9))
def test_predicted_score_gradient_sums_to_zero(seed, S):
    rng = np.random.default_rng(seed)
    beta = rng.normal(size=(5, S))
    beta[rng.random(beta.shape) < 0.2] = np.nan
    grad = predicted_score_gradient(beta)
    np.testing.assert_allclose(grad.sum(axis=-1), 0.0, atol=1e-12)
    assert (grad[np.isnan(beta)] == 0).all()
    # The score gradient orders the valid positions of an item exactly like β.
    valid = ~np.isnan(beta)
    pairs = valid[:, :, None] & valid[:, None, :]
    beta_order = np.sign(beta[:, :, None] - beta[:, None, :])
    grad_order = np.sign(grad[:, :, None] - grad[:, None, :])
    np.testing.assert_array_equal(grad_order[pairs], beta_order[pairs])


def test_predicted_score_gradient_is_the_first_order_attention_gradient():
    """On the free-parameter copy model, (β − mean β)/S is −∂loss/∂score at uniform α to first order in M."""
    rng = np.random.default_rng(np.random.SeedSequence(15))
    L, V = 6, 9
    x = rng.permutation(V)[:L]                          # one subset-copy example
    bias = rng.normal(size=V)
    M0 = rng.normal(size=(V, V))
    errors = []
    for eps in (1e-2, 1e-3):
        M = eps * M0

        def loss(scores):
            alpha = masked_softmax(scores, None)                      # (T, S)
            logits = alpha @ M[:, x].T + bias                         # z_t = Σ_s α_ts M[:, x_s] + b
            return -np.sum(log_softmax(logits)[np.arange(L), x])

        exact = -numerical_vjp(loss, {"scores": np.zeros((L, L))}, np.float64(1.0))["scores"]
        beta = log_softmax(M[:, x].T + bias)[:, x].T                  # β[t, s] = log p(y_t | x_s alone)
        predicted = predicted_score_gradient(beta)
        errors.append(np.linalg.norm(predicted - exact) / np.linalg.norm(exact))
    assert errors[1] < 0.05
    assert errors[1] < errors[0] / 5                                 # O(eps) error


# ------------------------------------------------------------------------------------------------
# KTIW drive of the copy task
# ------------------------------------------------------------------------------------------------

@given(st.integers(1, 50), st.integers(0, 40))
def test_copy_ktiw_signal_is_minus_the_reduced_loss_gradient(L, extra):
    V = L + extra

    def reduced_loss(delta, alpha_d=1.0 / L):
        alpha_o = (1 - alpha_d) / (L - 1) if L > 1 else 0.0
        return -delta * alpha_d + np.log(np.exp(delta * alpha_d) + (L - 1) * np.exp(delta * alpha_o) + (V - L))

    h = 1e-5
    numeric = -(reduced_loss(h) - reduced_loss(-h)) / (2 * h)
    assert copy_ktiw_signal(L, V) == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    if extra == 0:
        assert copy_ktiw_signal(L, V) == 0.0
    else:
        assert copy_ktiw_signal(L, V) > 0.0


def test_copy_ktiw_signal_rejects_impossible_configurations():
    with pytest.raises(ValueError, match="V must be >= L"):
        copy_ktiw_signal(40, 39)
    with pytest.raises(ValueError, match="L"):
        copy_ktiw_signal(0, 5)
    with pytest.raises(TypeError, match="V"):
        copy_ktiw_signal(4, 5.0)


def test_beta_px_on_seq2seq_batches_with_specials():
    rng = np.random.default_rng(np.random.SeedSequence(16))
    task = CopyTask(6, 10, "subset", specials=True)
    fit, evaluate = task.sample(rng, 400), task.sample(rng, 16)
    beta = beta_px_for_batch(fit, evaluate, task.input_vocab_size, task.output_vocab_size, method="closed_form")
    assert beta.shape == (16, 7, 7)
    # Content outputs are best predicted by their own source word (the <eos> output is in every
    # example, so every word predicts it equally).
    np.testing.assert_array_equal(beta[:, :6, :].argmax(axis=-1), np.broadcast_to(np.arange(6), (16, 6)))
    assert isinstance(evaluate, Seq2SeqBatch)


# ------------------------------------------------------------------------------------------------
# The paper's embedding bag of words (the scalable β^px)
# ------------------------------------------------------------------------------------------------

from analysis import bag_of_words as BOW  # noqa: E402
from analysis.cooccurrence import beta_px_from_fit, fit_beta_px  # noqa: E402


def _with_a_counted_output(targets, target_mask):
    if not target_mask.any():
        target_mask, targets = target_mask.copy(), targets.copy()
        target_mask[0, 0], targets[0, 0] = True, 0
    return targets, target_mask


@given(padded_data(), st.integers(0, 2**32 - 1), st.integers(1, 4))
def test_embedding_bag_forward_backward_gradient_check(data, seed, dim):
    sources, source_mask, targets, target_mask, n_in, n_out = data
    rng = np.random.default_rng(seed)
    params = BOW.init_embedding_bag(n_in, n_out, dim, rng, dtype=np.float64)

    def func(embedding, weight, bias):
        return BOW.embedding_bag_forward({"embedding": embedding, "weight": weight, "bias": bias},
                                         sources, source_mask)[0]

    def vjp(upstream, embedding, weight, bias):
        _, cache = BOW.embedding_bag_forward({"embedding": embedding, "weight": weight, "bias": bias},
                                             sources, source_mask)
        return BOW.embedding_bag_backward(upstream, cache)

    report = check_vjp(func, vjp, params, rng=rng)     # random (B, n_out) upstream
    assert report.passed, str(report)
    assert report.max_error < 1e-7


@given(padded_data(), st.integers(0, 2**32 - 1), st.integers(1, 4))
def test_embedding_bag_loss_gradient_check(data, seed, dim):
    sources, source_mask, targets, target_mask, n_in, n_out = data
    targets, target_mask = _with_a_counted_output(targets, target_mask)
    rng = np.random.default_rng(seed)
    params = BOW.init_embedding_bag(n_in, n_out, dim, rng, dtype=np.float64)

    def func(**p):
        return BOW.embedding_bag_loss(p, sources, source_mask, targets, target_mask)[0]

    def vjp(upstream, **p):
        grads = BOW.embedding_bag_loss(p, sources, source_mask, targets, target_mask)[1]
        return {k: upstream * g for k, g in grads.items()}

    report = check_vjp(func, vjp, params, rng=rng)     # random scalar upstream
    assert report.passed, str(report)
    assert report.max_error < 1e-7


def test_embedding_bag_loss_is_the_mean_cross_entropy_over_every_counted_target():
    rng = np.random.default_rng(21)
    sources = rng.integers(0, 6, size=(5, 4))
    source_mask = np.arange(4)[None, :] < np.array([[1], [2], [4], [3], [4]])
    targets = rng.integers(0, 3, size=(5, 3))
    target_mask = rng.random((5, 3)) < 0.7
    target_mask[0, 0] = True
    params = BOW.init_embedding_bag(6, 3, 2, rng, dtype=np.float64)
    loss, _ = BOW.embedding_bag_loss(params, sources, source_mask, targets, target_mask)
    terms = []
    for b in range(5):                                   # the definition, token by token
        h = params["embedding"][sources[b][source_mask[b]]].mean(axis=0)
        log_p = log_softmax(h @ params["weight"] + params["bias"])
        terms += [log_p[targets[b, t]] for t in np.flatnonzero(target_mask[b])]
    assert loss == pytest.approx(-np.mean(terms), rel=1e-12)


def _lexicon_task(rng):
    """A subset copy task: the KTIW is the identity lexicon, β^px must peak at the aligned position."""
    task = CopyTask(6, 40, "subset", specials=False)
    return task, task.sample(rng, 3000), task.sample(rng, 100)


def test_fit_embedding_bag_learns_the_lexicon_and_keeps_the_best_epoch():
    rng = np.random.default_rng(np.random.SeedSequence(22))
    task, fit, evaluate = _lexicon_task(rng)
    model = BOW.fit_embedding_bag(*batch_arrays(fit), 40, 40, dim=16, lr=1e-2, batch_size=64, max_epochs=8,
                                  seed=np.random.SeedSequence(5))
    assert model.val_loss.shape == (model.epochs + 1,) and model.train_loss.shape == (model.epochs,)
    assert model.best_epoch == int(np.argmin(model.val_loss)) and model.best_epoch >= 1
    assert model.val_loss[model.best_epoch] < model.val_loss[0] - 1.0
    assert model.n_train + model.n_val == 3000 and model.n_val == 300
    assert model.params["embedding"].dtype == np.float32
    # The returned parameters are those of the best epoch: their validation loss is the recorded one.
    data = BOW._check_data(*batch_arrays(fit), 40, 40)
    keep = np.arange(3000)
    perm = np.random.default_rng(np.random.SeedSequence(5).spawn(3)[0]).permutation(keep)
    assert BOW._mean_loss(model.params, data, np.sort(perm[:300])) == pytest.approx(
        model.val_loss[model.best_epoch], rel=1e-5)
    beta = BOW.beta_px_embedding(model, *batch_arrays(evaluate))
    assert beta.shape == (100, 6, 6)
    np.testing.assert_array_equal(np.nanargmax(beta, axis=-1), np.broadcast_to(np.arange(6), (100, 6)))
    # Seeded by a SeedSequence: the same seed gives the same model, another seed another one.
    again = BOW.fit_embedding_bag(*batch_arrays(fit), 40, 40, dim=16, lr=1e-2, batch_size=64, max_epochs=2,
                                  seed=np.random.SeedSequence(5))
    first2 = BOW.fit_embedding_bag(*batch_arrays(fit), 40, 40, dim=16, lr=1e-2, batch_size=64, max_epochs=2,
                                   seed=np.random.SeedSequence(5))
    other = BOW.fit_embedding_bag(*batch_arrays(fit), 40, 40, dim=16, lr=1e-2, batch_size=64, max_epochs=2,
                                  seed=np.random.SeedSequence(6))
    np.testing.assert_array_equal(again.params["weight"], first2.params["weight"])
    assert not np.array_equal(again.params["weight"], other.params["weight"])


def test_fit_embedding_bag_stops_after_patience_epochs_without_improvement():
    rng = np.random.default_rng(np.random.SeedSequence(23))
    # Outputs independent of the sources: the validation loss soon stops improving.
    sources = rng.integers(0, 50, size=(400, 5))
    targets = rng.integers(0, 4, size=(400, 1))
    model = BOW.fit_embedding_bag(sources, np.ones((400, 5), bool), targets, np.ones((400, 1), bool), 50, 4,
                                  dim=8, lr=0.05, batch_size=32, max_epochs=40, patience=2, seed=3)
    assert model.epochs < 40
    assert model.epochs - model.best_epoch == 2
    assert np.all(model.val_loss[model.best_epoch + 1:] >= model.val_loss[model.best_epoch])


def test_beta_px_is_computed_chunk_by_chunk(monkeypatch):
    rng = np.random.default_rng(np.random.SeedSequence(24))
    task, fit, evaluate = _lexicon_task(rng)
    model = BOW.fit_embedding_bag(*batch_arrays(fit), 40, 40, dim=8, max_epochs=1, seed=1, dtype=np.float64)
    E, W, c = model.params["embedding"], model.params["weight"], model.params["bias"]
    full = log_softmax(E @ W + c)
    s, sm, t, tm = batch_arrays(evaluate)
    expected = np.where(sm[:, None, :] & tm[:, :, None], full[s[:, None, :], t[:, :, None]], np.nan)
    calls = []
    original = BOW.log_softmax_precise

    def counting(z, *a, **k):
        calls.append(z.shape)
        return original(z, *a, **k)

    monkeypatch.setattr(BOW, "CHUNK_ELEMENTS", 3 * 40)      # 3 distinct words per chunk
    monkeypatch.setattr(BOW, "log_softmax_precise", counting)
    got = BOW.beta_px_embedding(model, s, sm, t, tm)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert calls and max(shape[0] for shape in calls) <= 3
    assert len(calls) == -(-np.unique(s[sm]).size // 3)


def test_fit_embedding_bag_rejects_bad_input():
    s, m = np.array([[0, 1], [1, 0]]), np.ones((2, 2), bool)
    t, tm = np.array([[0], [1]]), np.ones((2, 1), bool)
    with pytest.raises(ValueError, match="validation"):
        BOW.fit_embedding_bag(s, m, t, tm, 2, 2, validation=1.0)
    with pytest.raises(ValueError, match="dtype"):
        BOW.fit_embedding_bag(s, m, t, tm, 2, 2, dtype=np.int64)
    with pytest.raises(TypeError, match="seed"):
        BOW.fit_embedding_bag(s, m, t, tm, 2, 2, seed=1.5)
    with pytest.raises(ValueError, match="at least 2 examples"):
        BOW.fit_embedding_bag(s[:1], m[:1], t[:1], tm[:1], 2, 2)
    with pytest.raises(ValueError, match="params"):
        BOW.embedding_bag_forward({"embedding": np.zeros((2, 3))}, s, m)
    with pytest.raises(ValueError, match="no source token"):
        BOW.embedding_bag_forward(BOW.init_embedding_bag(2, 2, 3, np.random.default_rng(0)), s, np.zeros((2, 2), bool))


# ------------------------------------------------------------------------------------------------
# Unseen words get the unconditional prediction; method selection
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["regression", "embedding", "counts"])
def test_unseen_words_get_the_unconditional_prediction(method):
    rng = np.random.default_rng(np.random.SeedSequence(25))
    task = CopyTask(4, 12, "subset", specials=False)
    fit = task.sample(rng, 600)
    # Word 11 never occurs in the fitted sources.
    keep = ~np.any((fit.source == 11) & fit.source_mask, axis=1)
    fit = Seq2SeqBatch(*(np.asarray(getattr(fit, f))[keep] for f in Seq2SeqBatch._fields))
    evaluate = task.sample(rng, 200)
    fitted = fit_beta_px(fit, 12, 12, method, embedding={"dim": 8, "lr": 1e-2, "max_epochs": 10, "seed": 2})
    assert not fitted.seen[11] and fitted.seen[:11].all()
    beta = beta_px_from_fit(fitted, evaluate)
    s, sm, t, tm = batch_arrays(evaluate)
    pairs = (s[:, None, :] == 11) & sm[:, None, :] & tm[:, :, None]
    assert pairs.any()
    np.testing.assert_allclose(beta[pairs], np.broadcast_to(fitted.log_marginal[t][:, :, None], beta.shape)[pairs],
                               rtol=1e-12)
    # The unconditional prediction is a distribution over the outputs close to their frequencies.
    assert np.exp(fitted.log_marginal).sum() == pytest.approx(1.0, rel=1e-6)
    freq = np.bincount(fit.target_out[fit.target_mask], minlength=12) / fit.target_mask.sum()
    np.testing.assert_allclose(np.exp(fitted.log_marginal), freq, atol=0.05)
    # Seen words keep their own prediction (the aligned position still ranks first elsewhere).
    other = ~pairs & sm[:, None, :] & tm[:, :, None]
    assert np.all(np.isfinite(beta[other]))


def test_regression_unseen_words_without_the_fix_would_get_the_bias_alone():
    """What the fix changes: an unseen word's row of W stays 0, so the exact regression alone says
    log softmax(b) — the prediction for an *empty* bag, not the model's unconditional prediction."""
    rng = np.random.default_rng(np.random.SeedSequence(26))
    task = KeywordClassificationTask(vocab=20, length=8, n_classes=2, keywords_per_class=2,
                                     keyword_strength=0.9, min_length=4)
    fit, evaluate = task.sample(rng, 400), task.sample(rng, 100)
    n_in, n_out = task.input_vocab_size, task.output_vocab_size
    fitted = fit_beta_px(fit, n_in, n_out, "regression")
    plain = beta_px_regression(fitted.model, *batch_arrays(evaluate))
    fixed = beta_px_from_fit(fitted, evaluate)
    seen = fitted.seen[evaluate.tokens][:, None, :] & evaluate.mask[:, None, :]
    np.testing.assert_array_equal(plain[seen], fixed[seen])
    expected = BOW.mean_prediction(lambda s, m: BOW.regression_log_probs(fitted.model, s, m),
                                   *batch_arrays(fit), n_out)
    np.testing.assert_allclose(fitted.log_marginal, expected)
    assert not np.allclose(expected, log_softmax(fitted.model.bias), atol=1e-3)


def test_mean_prediction_is_the_token_weighted_average():
    rng = np.random.default_rng(27)
    sources = rng.integers(0, 5, size=(6, 3))
    source_mask = np.ones((6, 3), bool)
    targets = rng.integers(0, 4, size=(6, 2))
    target_mask = np.array([[1, 1], [1, 0], [0, 0], [1, 1], [0, 1], [1, 0]], bool)
    params = BOW.init_embedding_bag(5, 4, 3, rng, dtype=np.float64)

    def log_probs(s, m):
        return log_softmax(BOW.embedding_bag_forward(params, s, m)[0])

    p = np.exp(log_probs(sources, source_mask))
    n = target_mask.sum(axis=1)
    np.testing.assert_allclose(BOW.mean_prediction(log_probs, sources, source_mask, targets, target_mask, 4),
                               np.log(n @ p / n.sum()), rtol=1e-12)


def test_beta_px_for_batch_methods():
    rng = np.random.default_rng(np.random.SeedSequence(28))
    task, fit, evaluate = _lexicon_task(rng)
    counts = beta_px_for_batch(fit, evaluate, 40, 40, method="counts")
    np.testing.assert_array_equal(counts, beta_px_for_batch(fit, evaluate, 40, 40, method="closed_form"))
    emb = beta_px_for_batch(fit, evaluate, 40, 40, method="embedding",
                            embedding={"dim": 16, "lr": 1e-2, "max_epochs": 4, "seed": 0})
    assert agreement(emb, counts) == 1.0
    with pytest.raises(ValueError, match="method must be one of"):
        beta_px_for_batch(fit, evaluate, 40, 40, method="bag")


def test_precise_log_softmax_keeps_confident_words_apart():
    """Without log1p, every margin above ≈ 37 gives log p = 0.0 exactly: confident words would tie."""
    z = np.array([[0.0, 40.0], [0.0, 50.0], [3.0, -1.0], [2.0, 2.0]])
    precise = BOW.log_softmax_precise(z)
    plain = log_softmax(z)
    assert plain[0, 1] == plain[1, 1] == 0.0                       # the tie the precise version avoids
    np.testing.assert_allclose(precise[:2, 1], -np.exp([-40.0, -50.0]), rtol=1e-12)
    assert precise[0, 1] < precise[1, 1] < 0.0
    np.testing.assert_allclose(precise, plain, rtol=1e-12, atol=1e-15)
    rng = np.random.default_rng(29)
    x = rng.normal(size=(6, 5)) * 3
    np.testing.assert_allclose(BOW.log_softmax_precise(x), log_softmax(x), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.exp(BOW.log_softmax_precise(x)).sum(axis=-1), 1.0, rtol=1e-12)
