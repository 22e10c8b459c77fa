"""Tests of the seed-batched free copy model (miniattn.models.free_copy_seeds).

The batched model must be K unbatched models side by side: per seed, the loss and every gradient
are compared with ``FreeAttentionCopyModel.loss_and_grads`` for exact (bit) equality in float64 — the
batched code issues the same BLAS calls and reductions per seed (module docstring), so nothing less
is accepted — and K seeds trained together must end bit-identical to K ``miniattn.train.train`` runs.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from miniattn.gradcheck import check_vjp
from miniattn.models.free_copy import FreeAttentionCopyModel
from miniattn.models.free_copy_seeds import (FreeAttentionCopySeeds, SeedAdam, make_seed_optimizer,
                                             stack_batches, train_seeds)
from miniattn.optim import SGD, Adam, make_optimizer
from miniattn.tasks import CopyTask
from miniattn.train import TrainingDiverged, train


def copy_task(L, V):
    return CopyTask(L, V, "permutation" if V == L else "subset", specials=False)


def masked(batch, rng, V):
    """Random source/target masks (one source kept per example, one target counted), padding ids out of range."""
    B, L = batch.source.shape
    sm = rng.random((B, L)) < 0.7
    sm[np.arange(B), rng.integers(0, L, B)] = True
    tm = rng.random((B, L)) < 0.7
    tm[0, 0] = True
    return batch._replace(source=np.where(sm, batch.source, V + 7), source_mask=sm,
                          target_out=np.where(tm, batch.target_out, V + 3), target_mask=tm)


@st.composite
def seeds_and_batches(draw, max_length=4, max_batch=4):
    L = draw(st.integers(1, max_length))
    V = draw(st.integers(L, L + 3))
    B = draw(st.integers(1, max_batch))
    K = draw(st.integers(1, 4))
    factorised = draw(st.booleans())
    dim = draw(st.integers(1, 4)) if factorised else None
    uniform = draw(st.booleans())
    scale = draw(st.sampled_from([0.1, 1.0, 3.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    models = [FreeAttentionCopyModel(L, V, factorised=factorised, dim=dim, uniform=uniform, init_scale=scale,
                                     rng=rng) for _ in range(K)]
    for m in models:
        m.params["b"][:] = rng.normal(size=V)          # a nonzero bias exercises its gradient
    # Per seed: unmasked (shared softmax path) or masked, so that mixed stacks are drawn too.
    mask_seed = draw(st.lists(st.booleans(), min_size=K, max_size=K))
    arbitrary_targets = draw(st.booleans())
    batches = []
    for k in range(K):
        batch = copy_task(L, V).sample(rng, B)
        if mask_seed[k]:
            batch = masked(batch, rng, V)
        if arbitrary_targets:
            batch = batch._replace(target_out=np.where(batch.target_mask, rng.integers(0, V, (B, L)),
                                                       batch.target_out))
        batches.append(batch)
    return models, batches, rng


def assert_matches_unbatched(models, batches):
    seeds = FreeAttentionCopySeeds.from_models(models)
    losses, grads = seeds.loss_and_grads(stack_batches(batches))
    assert losses.shape == (len(models),)
    assert set(grads) == set(seeds.params)
    for k, (model, batch) in enumerate(zip(models, batches)):
        loss, ref = model.loss_and_grads(batch)
        assert losses[k] == loss, (k, losses[k], loss)
        for name, g in ref.items():
            assert grads[name].shape == seeds.params[name].shape
            np.testing.assert_array_equal(grads[name][k], g, err_msg=f"seed {k}, {name}")
    out = seeds.forward(stack_batches(batches))
    for k, (model, batch) in enumerate(zip(models, batches)):
        ref = model.forward(batch)
        np.testing.assert_array_equal(out.log_probs[k], ref.log_probs)
        np.testing.assert_array_equal(out.attention[k], ref.attention)


@given(data=seeds_and_batches())
def test_per_seed_loss_and_gradients_are_bit_identical_to_the_unbatched_model(data):
    models, batches, _ = data
    assert_matches_unbatched(models, batches)


@pytest.mark.parametrize("factorised", [False, True])
@pytest.mark.parametrize("L,V", [(20, 20), (20, 40)])
def test_bit_identical_at_sweep_size(L, V, factorised):
    # B = 128: the BLAS calls of the sweeps' shapes (and the (V, B·T) x (B·T, d) product).
    rng = np.random.default_rng(7)
    models = [FreeAttentionCopyModel(L, V, factorised=factorised, rng=np.random.default_rng(k)) for k in range(3)]
    batches = [copy_task(L, V).sample(rng, 128) for _ in range(3)]
    batches[1] = masked(batches[1], rng, V)
    assert_matches_unbatched(models, batches)


@given(data=seeds_and_batches(max_length=3, max_batch=3))
def test_gradcheck_with_a_random_upstream_over_seeds(data):
    # The Jacobian of losses (K,) w.r.t. the stack: ⟨c, losses⟩ differentiated along every entry,
    # with a random upstream c over the seeds (so a seed's gradient landing in another seed fails).
    models, batches, rng = data
    seeds = FreeAttentionCopySeeds.from_models(models)
    batch = stack_batches(batches)
    names = list(seeds.params)

    def func(**values):
        for name in names:
            seeds.params[name][...] = values[name]
        return seeds.loss_and_grads(batch)[0]

    def vjp(upstream, **values):
        for name in names:
            seeds.params[name][...] = values[name]
        _, grads = seeds.loss_and_grads(batch)
        return {name: upstream.reshape((-1,) + (1,) * (grads[name].ndim - 1)) * grads[name] for name in names}

    report = check_vjp(func, vjp, {name: seeds.params[name].copy() for name in names}, rng=rng)
    assert report.passed, str(report)
    for name, err in report.errors.items():
        assert err < 1e-7 or report.max_abs_diff[name] < 1e-10, str(report)


def test_constructor_and_conversions_round_trip():
    rngs = [np.random.default_rng(s) for s in (3, 4)]
    seeds = FreeAttentionCopySeeds(5, 7, rngs=rngs, factorised=True, dim=3, init_scale=0.5)
    refs = [FreeAttentionCopyModel(5, 7, factorised=True, dim=3, init_scale=0.5, rng=np.random.default_rng(s))
            for s in (3, 4)]
    assert seeds.seeds == 2 and seeds.params["Wo"].shape == (2, 7, 3) and seeds.params["b"].shape == (2, 7)
    back = seeds.to_models()
    for model, ref in zip(back, refs):
        assert model.config() == ref.config()
        for name in ref.params:
            np.testing.assert_array_equal(model.params[name], ref.params[name])
    back[0].params["E"][...] = 0.0                      # copies: the stack does not follow
    assert np.any(seeds.params["E"][0] != 0)
    again = FreeAttentionCopySeeds.from_models(refs)
    for name in seeds.params:
        np.testing.assert_array_equal(again.params[name], seeds.params[name])
    mixed = FreeAttentionCopySeeds.from_models([FreeAttentionCopyModel(2, 2, init_scale=s, rng=np.random.default_rng(0))
                                                for s in (0.1, 2.0)])
    assert [m.init_scale for m in mixed.to_models()] == [0.1, 2.0]


@pytest.mark.parametrize("kind,optimizer,lr", [("plain", "sgd", 5.0), ("factorised", "adam", 1e-2),
                                               ("uniform", "sgd", 2.0)])
def test_training_k_seeds_together_gives_each_seed_its_train_trajectory(kind, optimizer, lr):
    L, V, B, steps = 6, 8, 16, 20
    kwargs = {"factorised": kind == "factorised", "uniform": kind == "uniform"}
    seeds = [np.random.SeedSequence(11, spawn_key=(k,)) for k in range(3)] + [5]
    task = copy_task(L, V)
    models = [FreeAttentionCopyModel(L, V, rng=np.random.default_rng(100 + k), **kwargs) for k in range(len(seeds))]
    batched = FreeAttentionCopySeeds.from_models(models)
    losses = train_seeds(batched, task, make_seed_optimizer(optimizer, batched.params, lr=lr), steps=steps,
                         batch_size=B, seeds=seeds)
    assert losses.shape == (steps, len(seeds))
    for k, (model, seed) in enumerate(zip(models, seeds)):
        history = train(model, task, make_optimizer(optimizer, model.params, lr=lr), steps=steps, batch_size=B,
                        seed=seed, eval_every=steps, eval_size=8, progress=False)
        np.testing.assert_array_equal(losses[:, k], history.train_loss, err_msg=f"seed {k}")
        for name, p in model.params.items():
            np.testing.assert_array_equal(batched.params[name][k], p, err_msg=f"seed {k}, {name}")
    assert np.all(losses[-1] < losses[0])               # it did train


def test_seed_adam_takes_the_overflow_safe_step_per_seed():
    # Seed 1 gets huge gradients (the guarded path of Adam), seeds 0 and 2 ordinary ones: each must
    # follow its own separate Adam exactly, and the guard of seed 1 must not reach the others.
    rng = np.random.default_rng(0)
    stacked = {"w": rng.normal(size=(3, 4, 2)), "u": rng.normal(size=(3, 5))}
    singles = [{k: v[i].copy() for k, v in stacked.items()} for i in range(3)]
    batched = SeedAdam(stacked, lr=0.1)
    separate = [Adam(p, lr=0.1) for p in singles]
    for step in range(6):
        grads = {k: rng.normal(size=v.shape) for k, v in stacked.items()}
        if step in (1, 2):
            grads["w"][1] *= 1e200
        batched.step(grads)
        for i, opt in enumerate(separate):
            opt.step({k: g[i] for k, g in grads.items()})
        for i in range(3):
            for k in stacked:
                np.testing.assert_array_equal(stacked[k][i], singles[i][k], err_msg=f"step {step}, seed {i}, {k}")
    assert batched._large["w"].tolist() == [separate[i]._large["w"] for i in range(3)]
    restored = SeedAdam({k: v.copy() for k, v in stacked.items()}, lr=0.1)
    restored.load_state_dict(batched.state_dict())
    assert restored._large["w"].tolist() == batched._large["w"].tolist()


def test_sgd_on_the_stack_is_per_seed_sgd():
    rng = np.random.default_rng(1)
    stacked = {"a": rng.normal(size=(2, 3))}
    singles = [{"a": stacked["a"][i].copy()} for i in range(2)]
    opt, refs = make_seed_optimizer("sgd", stacked, lr=0.3, momentum=0.9), [SGD(p, lr=0.3, momentum=0.9) for p in singles]
    for _ in range(4):
        g = rng.normal(size=(2, 3))
        opt.step({"a": g})
        for i, ref in enumerate(refs):
            ref.step({"a": g[i]})
    for i in range(2):
        np.testing.assert_array_equal(stacked["a"][i], singles[i]["a"])


def one_line_error(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_bad_inputs_give_one_line_errors():
    rng = np.random.default_rng(0)
    seeds = FreeAttentionCopySeeds(4, 5, rngs=[np.random.default_rng(i) for i in range(2)])
    task = copy_task(4, 5)
    good = stack_batches([task.sample(rng, 3) for _ in range(2)])
    with pytest.raises(ValueError) as e:          # K = 3 batch for a K = 2 model
        seeds.loss_and_grads(stack_batches([task.sample(rng, 3) for _ in range(3)]))
    one_line_error(e, "batch.source", "K=2")
    with pytest.raises(ValueError) as e:          # no seed axis
        seeds.loss_and_grads(task.sample(rng, 3))
    one_line_error(e, "batch.source", "3 dimensions")
    with pytest.raises(ValueError) as e:          # wrong L
        seeds.loss_and_grads(stack_batches([copy_task(3, 5).sample(rng, 3) for _ in range(2)]))
    one_line_error(e, "L=4")
    with pytest.raises(ValueError) as e:
        seeds.loss_and_grads(good._replace(target_out=good.target_out[:, :2]))
    one_line_error(e, "batch.target_out", "shape")
    with pytest.raises(ValueError) as e:          # seed 1 counts no target
        mask = good.target_mask.copy()
        mask[1] = False
        seeds.loss_and_grads(good._replace(target_mask=mask))
    one_line_error(e, "target_mask", "seeds [1]")
    with pytest.raises(ValueError) as e:
        seeds.loss_and_grads(good._replace(source=np.where(good.source == 0, 5, good.source)))
    one_line_error(e, "batch.source", "[0, 5)")
    with pytest.raises(ValueError) as e:          # a stack replaced by a wrong shape
        seeds.params["A"] = np.zeros((3, 4, 4))
        seeds.loss_and_grads(good)
    one_line_error(e, "params['A']", "(2, 4, 4)")
    with pytest.raises(ValueError) as e:
        stack_batches([task.sample(rng, 3), task.sample(rng, 4)])
    one_line_error(e, "source")
    with pytest.raises(TypeError) as e:
        stack_batches(task.sample(rng, 3))
    one_line_error(e, "sequence of Seq2SeqBatch")
    with pytest.raises(ValueError) as e:
        FreeAttentionCopySeeds.from_models([FreeAttentionCopyModel(4, 5, rng=rng),
                                            FreeAttentionCopyModel(4, 6, rng=rng)])
    one_line_error(e, "models[1].vocab")
    with pytest.raises(TypeError) as e:
        FreeAttentionCopySeeds(4, 5, rngs=rng)
    one_line_error(e, "rngs")
    fresh = FreeAttentionCopySeeds(4, 5, rngs=[np.random.default_rng(i) for i in range(2)])
    opt = make_seed_optimizer("sgd", fresh.params, lr=1.0)
    with pytest.raises(ValueError) as e:
        train_seeds(fresh, task, opt, steps=1, batch_size=2, seeds=[0, 1, 2])
    one_line_error(e, "K=2", "got 3")
    with pytest.raises(ValueError) as e:          # a gradient stack with the wrong K
        opt.step({k: np.zeros((3,) + v.shape[1:]) for k, v in fresh.params.items()})
    one_line_error(e, "grads")
    with pytest.raises(ValueError) as e:
        make_seed_optimizer("adam", {"a": np.zeros((2, 3)), "b": np.zeros((3,))})
    one_line_error(e, "leading seed axis")


def test_a_diverging_seed_is_named():
    # Seed 1 sits at the edge of float64 (M = 1.7e308): a huge step overflows its parameters only.
    task = copy_task(3, 3)
    seeds = FreeAttentionCopySeeds(3, 3, rngs=[np.random.default_rng(i) for i in range(2)])
    seeds.params["M"][1] = 1.7e308
    with pytest.raises(TrainingDiverged) as e:
        train_seeds(seeds, task, make_seed_optimizer("sgd", seeds.params, lr=1e308), steps=2, batch_size=2,
                    seeds=[0, 1])
    assert e.value.step in (1, 2)          # (which step overflows first depends on the gradient's sign)
    one_line_error(e, "seeds [1]", "after the update")


def test_benchmark_checks_equivalence_and_formats_its_table():
    # benchmarks/seed_batching.py: the equivalence it asserts before timing, at a tiny shape.
    from benchmarks import summarize
    from benchmarks.seed_batching import METHODS, Cell, check_equivalence, format_table
    assert check_equivalence(4, 8, K=2, steps=2) == {"grads_identical": True, "train_identical": True}
    cell = Cell(4, 2, 3, {m: summarize([1.0, 2.0, 3.0]) for m in METHODS})
    table = format_table([cell], {(4, 1): {"grads_identical": True, "train_identical": True}}, "header")
    assert "| 4 | 2 | 3 | 2.00 [1.50, 2.50]" in table and "**1.00**" in table
