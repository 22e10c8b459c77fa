"""Tests for miniattn.train: metrics, evaluation, seeding, checkpoints, bit-identical resumption and
divergence handling, with small stand-in models and tasks defined here."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from miniattn import io
from miniattn.batch import ClassificationBatch, Seq2SeqBatch
from miniattn.gradcheck import check_model
from miniattn.layers import log_softmax, masked_softmax
from miniattn.models.base import ForwardResult
from miniattn.optim import SGD, Adam
from miniattn.train import (CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, History, ProgressEvent,
                            TrainingDiverged, attention_accuracy, evaluate, load_checkpoint,
                            salient_attention_accuracy, seed_streams, token_accuracy, train)

# --------------------------------------------------------------------------------------------------
# Stand-ins
# --------------------------------------------------------------------------------------------------


class ToyTask:
    """Label = first token mod n_classes; the first token is the salient one. Random lengths."""

    def __init__(self, vocab: int = 5, length: int = 4, n_classes: int = 3):
        self.vocab, self.length, self.n_classes = vocab, length, n_classes
        self.input_vocab_size, self.output_vocab_size = vocab, n_classes

    def sample(self, rng, batch_size):
        tokens = rng.integers(0, self.vocab, size=(batch_size, self.length))
        lengths = rng.integers(1, self.length + 1, size=batch_size)
        mask = np.arange(self.length) < lengths[:, None]
        tokens = np.where(mask, tokens, 0)
        salient = np.zeros_like(mask)
        salient[:, 0] = True
        return ClassificationBatch(tokens, mask, tokens[:, 0] % self.n_classes, salient)


class SoftmaxRegression:
    """A stand-in classifier with position attention: α = softmax_S(u) over unmasked positions,
    h = Σ_s α_s onehot(x_s), logits = h W + b, mean cross-entropy."""

    def __init__(self, vocab, n_classes, length, rng, scale=0.5):
        self.vocab = vocab
        self.params = {"W": rng.normal(0.0, scale, (vocab, n_classes)), "b": np.zeros(n_classes),
                       "u": rng.normal(0.0, scale, length)}

    def config(self):
        return {"vocab": self.vocab}

    def _forward(self, batch):
        onehot = (batch.tokens[..., None] == np.arange(self.vocab)).astype(np.float64)  # (B, S, V)
        scores = np.broadcast_to(self.params["u"], batch.tokens.shape)
        alpha = masked_softmax(scores, batch.mask)                                     # (B, S)
        h = np.einsum("bs,bsv->bv", alpha, onehot)
        logp = log_softmax(h @ self.params["W"] + self.params["b"])
        return onehot, alpha, h, logp

    def forward(self, batch):
        _, alpha, _, logp = self._forward(batch)
        return ForwardResult(logp[:, None, :], alpha[:, None, :])

    def loss_and_grads(self, batch):
        onehot, alpha, h, logp = self._forward(batch)
        B = len(batch.labels)
        loss = -np.mean(logp[np.arange(B), batch.labels])
        dlogits = np.exp(logp)
        dlogits[np.arange(B), batch.labels] -= 1.0
        dlogits /= B
        dh = dlogits @ self.params["W"].T
        dalpha = np.einsum("bv,bsv->bs", dh, onehot)
        dscores = alpha * (dalpha - np.sum(alpha * dalpha, axis=-1, keepdims=True))
        return float(loss), {"W": h.T @ dlogits, "b": dlogits.sum(0), "u": dscores.sum(0)}


class Diverging(SoftmaxRegression):
    """Returns a NaN loss (or a NaN/inf gradient) at its ``at``-th call of loss_and_grads."""

    def __init__(self, *args, at, where="loss", **kwargs):
        super().__init__(*args, **kwargs)
        self.at, self.where, self.calls = at, where, 0

    def loss_and_grads(self, batch):
        loss, grads = super().loss_and_grads(batch)
        self.calls += 1
        if self.calls == self.at:
            if self.where == "loss":
                loss = np.nan
            elif self.where == "grad":
                grads["W"][0, 0] = np.inf
            elif self.where == "param":
                grads["u"][:] = np.finfo(np.float64).max  # finite, but lr * grad overflows
        return loss, grads


class Interrupt(Exception):
    pass


def make(seed=0, model_cls=SoftmaxRegression, opt="adam", lr=None, **model_kwargs):
    task = ToyTask()
    model = model_cls(task.vocab, task.n_classes, task.length, np.random.default_rng(seed), **model_kwargs)
    if opt == "adam":
        optimizer = Adam(model.params, lr=0.05 if lr is None else lr)
    else:
        optimizer = SGD(model.params, lr=0.5 if lr is None else lr, momentum=0.5)
    return model, task, optimizer


def interrupt_at(step):
    def hook(event: ProgressEvent):
        if event.step == step:
            raise KeyboardInterrupt
    return hook


def assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k  # bit-identical


def test_stand_in_model_gradients_are_correct():
    model, task, _ = make(3)
    report = check_model(model, task.sample(np.random.default_rng(1), 6))
    assert report.passed, report.errors


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------

@st.composite
def outputs(draw, heads=False):
    B = draw(st.integers(1, 4))
    T = draw(st.integers(1, 4))
    S = draw(st.integers(1, 5))
    C = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    H = draw(st.integers(1, 3))
    shape = (H, B, T, S) if heads else (B, T, S)
    # Few distinct values, so ties (where argmax takes the first maximum) are common.
    attention = rng.integers(0, 3, size=shape).astype(np.float64)
    log_probs = rng.integers(-3, 1, size=(B, T, C)).astype(np.float64)
    gold = rng.integers(0, C, size=(B, T))
    alignment = rng.integers(-1, S, size=(B, T))
    mask = rng.random((B, T)) < 0.7
    return attention, log_probs, gold, alignment, mask


@given(outputs())
def test_token_accuracy_matches_elementwise_definition(data):
    _, log_probs, gold, _, mask = data
    B, T, _ = log_probs.shape
    hits = [log_probs[b, t].argmax() == gold[b, t] for b in range(B) for t in range(T) if mask[b, t]]
    got = token_accuracy(log_probs, gold, mask)
    if hits:
        assert got == sum(hits) / len(hits)
    else:
        assert np.isnan(got)
    all_hits = [log_probs[b, t].argmax() == gold[b, t] for b in range(B) for t in range(T)]
    assert token_accuracy(log_probs, gold) == sum(all_hits) / len(all_hits)


@given(outputs())
def test_attention_accuracy_matches_elementwise_definition(data):
    attention, _, _, alignment, mask = data
    B, T, _ = attention.shape
    rows = [(b, t) for b in range(B) for t in range(T) if mask[b, t] and alignment[b, t] >= 0]
    got = attention_accuracy(attention, alignment, mask)
    if rows:
        assert got == sum(attention[b, t].argmax() == alignment[b, t] for b, t in rows) / len(rows)
    else:
        assert np.isnan(got)


@given(outputs(heads=True))
def test_attention_accuracy_per_head_is_the_single_head_accuracy_of_each_head(data):
    attention, _, _, alignment, mask = data
    per_head = attention_accuracy(attention, alignment, mask)
    assert per_head.shape == (attention.shape[0],)
    expected = [attention_accuracy(a, alignment, mask) for a in attention]
    np.testing.assert_array_equal(per_head, expected)


@given(outputs(heads=True), st.booleans())
def test_salient_attention_accuracy_matches_definition(data, multi):
    attention, _, _, _, _ = data
    attention = attention[:, :, :1] if multi else attention[0, :, :1]   # (H,B,1,S) or (B,1,S)
    B, S = attention.shape[-3], attention.shape[-1]
    salient = np.random.default_rng(B * 7 + S).random((B, S)) < 0.4
    got = salient_attention_accuracy(attention, salient)
    heads = attention if multi else attention[None]
    expected = []
    for a in heads:
        rows = [b for b in range(B) if salient[b].any()]
        expected.append(sum(salient[b, a[b, 0].argmax()] for b in rows) / len(rows) if rows else np.nan)
    np.testing.assert_array_equal(np.atleast_1d(got), expected)


def test_metric_argument_errors():
    att = np.full((2, 3, 4), 0.25)
    with pytest.raises(ValueError, match="alignment must lie in \\[-1, 4\\)"):
        attention_accuracy(att, np.full((2, 3), 4), None)
    with pytest.raises(ValueError, match="alignment must have shape"):
        attention_accuracy(att, np.zeros((3, 2), dtype=int))
    with pytest.raises(TypeError, match="alignment must be an integer"):
        attention_accuracy(att, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="attention must have shape"):
        attention_accuracy(att[0], np.zeros((2, 3), dtype=int))
    with pytest.raises(ValueError, match="mask must have shape"):
        attention_accuracy(att, np.zeros((2, 3), dtype=int), np.ones((3, 2), bool))
    with pytest.raises(ValueError, match="gold must have shape"):
        token_accuracy(np.zeros((2, 3, 4)), np.zeros((2, 4), dtype=int))
    with pytest.raises(ValueError, match="log_probs must have shape"):
        token_accuracy(np.zeros((2, 3)), np.zeros((2, 3), dtype=int))
    with pytest.raises(TypeError, match="salient must be a boolean"):
        salient_attention_accuracy(np.full((2, 1, 4), 0.25), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="salient must have shape"):
        salient_attention_accuracy(np.full((2, 1, 4), 0.25), np.zeros((4, 2), bool))


class FixedSeq2Seq:
    """Returns given log-probabilities and attention, whatever the batch."""

    def __init__(self, log_probs, attention):
        self.result = ForwardResult(log_probs, attention)
        self.params = {}

    def forward(self, batch):
        return self.result


@given(outputs(heads=True), st.booleans())
def test_evaluate_seq2seq(data, with_alignment):
    attention, log_probs, gold, alignment, mask = data
    mask[0, 0] = True  # at least one counted output
    log_probs = log_softmax(log_probs)
    batch = Seq2SeqBatch(np.zeros((len(gold), attention.shape[-1]), int), np.ones(attention.shape[1:3:2], bool),
                         gold, gold, mask, alignment if with_alignment else None)
    record = evaluate(FixedSeq2Seq(log_probs, attention), batch)
    B, T, _ = log_probs.shape
    terms = [log_probs[b, t, gold[b, t]] for b in range(B) for t in range(T) if mask[b, t]]
    np.testing.assert_allclose(record["loss"], -np.mean(terms), rtol=1e-12)
    assert record["token_accuracy"] == token_accuracy(log_probs, gold, mask)
    if with_alignment:
        expect_mean = attention_accuracy(attention.mean(axis=0), alignment, mask)
        expect_heads = attention_accuracy(attention, alignment, mask)
        assert record["attention_accuracy"] == (None if np.isnan(expect_mean) else expect_mean)
        assert record["attention_accuracy_per_head"] == [None if np.isnan(x) else x for x in expect_heads]
    else:
        assert record["attention_accuracy"] is None and "attention_accuracy_per_head" not in record
    json.dumps(record, allow_nan=False)  # plain JSON


def test_evaluate_classifier_and_metrics_fn():
    model, task, _ = make()
    batch = task.sample(np.random.default_rng(0), 16)
    record = evaluate(model, batch, lambda m, b: {"mean_u": np.mean(m.params["u"]), "n": np.int64(len(b.labels))})
    result = model.forward(batch)
    assert record["attention_accuracy"] == salient_attention_accuracy(result.attention, batch.salient)
    assert record["loss"] == pytest.approx(model.loss_and_grads(batch)[0], rel=1e-12)
    assert record["mean_u"] == float(np.mean(model.params["u"])) and record["n"] == 16
    with pytest.raises(ValueError, match="built-in"):
        evaluate(model, batch, lambda m, b: {"loss": 0.0})
    with pytest.raises(TypeError, match="mapping"):
        evaluate(model, batch, lambda m, b: [1])
    with pytest.raises(TypeError, match="batch"):
        evaluate(model, (batch.tokens,))


# --------------------------------------------------------------------------------------------------
# Training: determinism, files, resumption
# --------------------------------------------------------------------------------------------------

KW = dict(steps=20, batch_size=8, eval_every=4, eval_size=32, checkpoint_every=5)


def test_same_seed_gives_bit_identical_history_and_params():
    state = np.random.get_state()
    runs = []
    for _ in range(2):
        model, task, opt = make(seed=1)
        runs.append((train(model, task, opt, seed=5, **KW), model.params))
    assert runs[0][0] == runs[1][0]
    assert_same_params(runs[0][1], runs[1][1])
    # A different data seed gives a different trajectory from the same initialisation.
    model, task, opt = make(seed=1)
    other = train(model, task, opt, seed=6, **KW)
    assert other.train_loss != runs[0][0].train_loss
    # The global NumPy random state is never touched.
    after = np.random.get_state()
    assert all(np.array_equal(x, y) for x, y in zip(state, after))


def test_training_learns_the_toy_task():
    model, task, opt = make(seed=2)
    history = train(model, task, opt, seed=0, steps=60, batch_size=32, eval_every=20, eval_size=256)
    acc = history.metric("token_accuracy")
    assert history.eval_steps().tolist() == [0, 20, 40, 60]
    assert acc[-1] > acc[0] and acc[-1] > 0.9
    loss = history.metric("loss")
    assert loss[-1] < loss[0]


def test_history_bookkeeping():
    model, task, opt = make()
    history = train(model, task, opt, seed=0, steps=10, batch_size=4, eval_every=3, eval_size=8)
    assert history.steps_done == 10 and len(history.train_loss) == 10
    assert history.eval_steps().tolist() == [0, 3, 6, 9, 10]
    assert history.evals[0]["train_loss"] is None
    assert history.evals[1]["train_loss"] == pytest.approx(np.mean(history.train_loss[0:3]))
    assert history.evals[-1]["train_loss"] == pytest.approx(history.train_loss[9])
    assert np.isnan(history.metric("train_loss")[0])
    assert history.last is history.evals[-1]
    assert History.from_dict(json.loads(json.dumps(history.to_dict()))) == history
    with pytest.raises(KeyError, match="no evaluation record"):
        history.metric("nope")


@pytest.mark.parametrize("opt", ["adam", "sgd"])
@pytest.mark.parametrize("stop", [1, 5, 10, 13, 19, 20])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, opt, stop):
    model, task, optimizer = make(seed=3, opt=opt)
    full = train(model, task, optimizer, seed=9, out_dir=tmp_path / "full", **KW)

    model2, task2, optimizer2 = make(seed=3, opt=opt)
    with pytest.raises(KeyboardInterrupt):
        train(model2, task2, optimizer2, seed=9, out_dir=tmp_path / "cut", progress=interrupt_at(stop), **KW)
    if stop >= 5:
        assert load_checkpoint(tmp_path / "cut" / CHECKPOINT_NAME).step == stop - stop % 5
    # A new process would rebuild the model from its seed and call train() again.
    model3, task3, optimizer3 = make(seed=3, opt=opt)
    resumed = train(model3, task3, optimizer3, seed=9, out_dir=tmp_path / "cut", **KW)

    assert resumed == full
    assert_same_params(model3.params, model.params)
    assert (tmp_path / "cut" / METRICS_NAME).read_bytes() == (tmp_path / "full" / METRICS_NAME).read_bytes()
    a = io.load_npz(tmp_path / "full" / CHECKPOINT_NAME)
    b = io.load_npz(tmp_path / "cut" / CHECKPOINT_NAME)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].tobytes() == b[k].tobytes(), k


def test_finished_run_is_reused_and_can_be_extended(tmp_path):
    KW = {**globals()["KW"], "eval_every": 5}  # divides 10, so the extension logs nothing extra
    model, task, opt = make(seed=4)
    direct = train(model, task, opt, seed=1, out_dir=tmp_path / "direct", **KW)
    # 10 steps, then the same run asked for 20: the second call continues from step 10.
    m1, t1, o1 = make(seed=4)
    train(m1, t1, o1, seed=1, out_dir=tmp_path / "ext", **{**KW, "steps": 10})
    m2, t2, o2 = make(seed=4)
    extended = train(m2, t2, o2, seed=1, out_dir=tmp_path / "ext", **KW)
    assert extended == direct
    assert_same_params(m2.params, model.params)
    # Asking again does no work: the checkpoint is loaded and its history returned.
    m3, t3, o3 = make(seed=99)
    calls = []
    again = train(m3, t3, o3, seed=1, out_dir=tmp_path / "ext", progress=calls.append, **KW)
    assert again == direct and calls == []
    assert_same_params(m3.params, model.params)
    m4, t4, o4 = make(seed=4)
    with pytest.raises(ValueError, match="beyond steps=10"):
        train(m4, t4, o4, seed=1, out_dir=tmp_path / "ext", **{**KW, "steps": 10})


@pytest.mark.parametrize("change", [{"seed": 2}, {"batch_size": 9}, {"eval_size": 31}, {"lr": 0.1},
                                    {"opt": "sgd"}])
def test_resuming_a_different_run_is_an_error(tmp_path, change):
    model, task, opt = make(seed=0)
    train(model, task, opt, seed=1, out_dir=tmp_path, **{**KW, "steps": 5})
    model, task, opt = make(seed=0, opt=change.get("opt", "adam"))
    if "lr" in change:
        opt = Adam(model.params, lr=change["lr"])
    kw = {**KW, **{k: v for k, v in change.items() if k in KW}}
    with pytest.raises(ValueError, match="different run"):
        train(model, task, opt, seed=change.get("seed", 1), out_dir=tmp_path, **kw)
    # resume=False starts over and gives exactly a fresh run.
    fresh = train(model, task, opt, seed=change.get("seed", 1), out_dir=tmp_path, resume=False, **kw)
    m, t, o = make(seed=0, opt=change.get("opt", "adam"))
    if "lr" in change:
        o = Adam(m.params, lr=change["lr"])
    assert fresh == train(m, t, o, seed=change.get("seed", 1), **kw)


def test_output_files(tmp_path):
    model, task, opt = make()
    history = train(model, task, opt, seed=0, out_dir=tmp_path / "run", config={"note": "hello"}, **KW)
    meta = io.read_json(tmp_path / "run" / CONFIG_NAME)
    assert meta["seed"] == 0 and meta["config"]["run"] == {"note": "hello"}
    assert meta["config"]["train"]["steps"] == 20 and meta["config"]["model"]["vocab"] == 5
    assert meta["config"]["optimizer"]["name"] == "Adam" and meta["config"]["optimizer"]["lr"] == 0.05
    assert {"versions", "platform", "git", "timestamp_utc"} <= set(meta)
    assert io.read_jsonl(tmp_path / "run" / METRICS_NAME) == history.evals
    ck = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)
    assert ck.step == 20 and ck.history == history
    assert_same_params(ck.params, model.params)
    assert ck.rng_state["bit_generator"] == "PCG64"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME]


def test_zero_steps_evaluates_the_initial_model(tmp_path):
    model, task, opt = make()
    before = {k: v.copy() for k, v in model.params.items()}
    history = train(model, task, opt, seed=0, steps=0, batch_size=4, out_dir=tmp_path)
    assert history.eval_steps().tolist() == [0] and history.train_loss == []
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME).step == 0
    assert_same_params(model.params, before)


def test_seed_streams_do_not_depend_on_prior_spawns():
    ss = np.random.SeedSequence(11)
    first = [s.generate_state(2).tolist() for s in seed_streams(ss)]
    ss.spawn(3)  # advances the parent's spawn counter
    assert [s.generate_state(2).tolist() for s in seed_streams(ss)] == first
    assert [s.generate_state(2).tolist() for s in seed_streams(11)] == first
    a, b = seed_streams(11)
    assert a.generate_state(4).tolist() != b.generate_state(4).tolist()


# --------------------------------------------------------------------------------------------------
# Divergence
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where, opt, lr", [("loss", "adam", None), ("grad", "adam", None), ("param", "sgd", 4.0)])
@pytest.mark.parametrize("at", [3, 12])
def test_divergence_stops_training_and_keeps_last_finite_checkpoint(tmp_path, where, opt, lr, at):
    model, task, optimizer = make(model_cls=Diverging, at=at, where=where, opt=opt, lr=lr)
    with pytest.raises(TrainingDiverged, match=f"step {at}") as info:
        train(model, task, optimizer, seed=0, out_dir=tmp_path, **KW)
    assert isinstance(info.value, ValueError) and info.value.step == at
    path = tmp_path / CHECKPOINT_NAME
    if at < KW["checkpoint_every"]:
        assert not path.exists()
    else:
        ck = load_checkpoint(path)
        assert ck.step == at - at % KW["checkpoint_every"]
        assert all(np.all(np.isfinite(v)) for v in ck.params.values())
        # The checkpoint is exactly the state of a clean run at that step.
        clean, ctask, copt = make(opt=opt, lr=lr)
        train(clean, ctask, copt, seed=0, **{**KW, "steps": ck.step})
        assert_same_params(ck.params, clean.params)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_nonfinite_heldout_loss_is_divergence():
    class Broken(SoftmaxRegression):
        def forward(self, batch):
            result = super().forward(batch)
            return result._replace(log_probs=np.full_like(result.log_probs, -np.inf))

    model, task, opt = make(model_cls=Broken)
    with pytest.raises(TrainingDiverged, match="step 0.*held-out"):
        train(model, task, opt, seed=0, steps=3, batch_size=4)


# --------------------------------------------------------------------------------------------------
# Progress and arguments
# --------------------------------------------------------------------------------------------------

def test_progress_events_and_quiet_default(capsys):
    model, task, opt = make()
    events = []
    train(model, task, opt, seed=0, progress=events.append, **KW)
    assert [e.step for e in events] == list(range(21))
    assert events[0].train_loss is None and events[0].record["step"] == 0
    assert [e.step for e in events if e.record is not None] == [0, 4, 8, 12, 16, 20]
    assert events[-1].eta == 0.0 and all(e.steps == 20 for e in events)
    # progress=None: stderr is not a terminal under pytest, so nothing is printed at all.
    model, task, opt = make()
    train(model, task, opt, seed=0, **KW)
    assert capsys.readouterr() == ("", "")
    model, task, opt = make()
    train(model, task, opt, seed=0, progress=True, **KW)
    captured = capsys.readouterr()
    assert captured.out == "" and "step 20/20" in captured.err and "ETA" in captured.err


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"steps": -1}, ValueError, "steps must be >= 0"),
    ({"steps": 2.0}, TypeError, "steps must be an int"),
    ({"batch_size": 0}, ValueError, "batch_size must be >= 1"),
    ({"batch_size": True}, TypeError, "batch_size must be an int"),
    ({"eval_every": 0}, ValueError, "eval_every"),
    ({"eval_size": 0}, ValueError, "eval_size"),
    ({"checkpoint_every": 0}, ValueError, "checkpoint_every"),
    ({"seed": -1}, ValueError, "seed must be a non-negative"),
    ({"seed": 1.5}, TypeError, "seed must be"),
    ({"progress": "yes"}, TypeError, "progress must be"),
    ({"config": [1]}, TypeError, "config must be a mapping"),
])
def test_train_argument_errors(kwargs, exc, match):
    model, task, opt = make()
    base = {"steps": 2, "batch_size": 4, "seed": 0}
    with pytest.raises(exc, match=match):
        train(model, task, opt, **{**base, **kwargs})


def test_train_rejects_mismatched_objects():
    model, task, _ = make()
    with pytest.raises(ValueError, match="model.params"):
        train(model, task, Adam(dict(model.params)), steps=1, batch_size=2, seed=0)
    with pytest.raises(TypeError, match="task must have a sample"):
        train(model, object(), Adam(model.params), steps=1, batch_size=2, seed=0)
    with pytest.raises(TypeError, match="model must have"):
        train(object(), task, Adam(model.params), steps=1, batch_size=2, seed=0)
    with pytest.raises(TypeError, match="optimizer must have"):
        train(model, task, object(), steps=1, batch_size=2, seed=0)


def test_load_checkpoint_rejects_other_files(tmp_path):
    io.atomic_save_npz(tmp_path / "x.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="not a miniattn checkpoint"):
        load_checkpoint(tmp_path / "x.npz")


# --------------------------------------------------------------------------------------------------
# With the real models and tasks
# --------------------------------------------------------------------------------------------------

def test_real_multihead_seq2seq_resumes_bit_identically(tmp_path):
    from miniattn.models.seq2seq import Seq2SeqAttention
    from miniattn.tasks.copy import CopyTask

    def build():
        task = CopyTask(4, 6, "subset")
        model = Seq2SeqAttention(task.input_vocab_size, task.output_vocab_size, task.source_length,
                                 task.target_length, dim=8, heads=2, rng=np.random.default_rng(0))
        return model, task, Adam(model.params, lr=0.01)

    kw = dict(steps=8, batch_size=8, eval_every=2, eval_size=16, checkpoint_every=3)
    model, task, opt = build()
    full = train(model, task, opt, seed=4, out_dir=tmp_path / "full", **kw)
    heads = full.metric("attention_accuracy_per_head")
    assert heads.shape == (5, 2) and np.all((heads >= 0) & (heads <= 1))
    assert full.metric("attention_accuracy").shape == (5,)
    m2, t2, o2 = build()
    with pytest.raises(KeyboardInterrupt):
        train(m2, t2, o2, seed=4, out_dir=tmp_path / "cut", progress=interrupt_at(5), **kw)
    m3, t3, o3 = build()
    assert train(m3, t3, o3, seed=4, out_dir=tmp_path / "cut", **kw) == full
    assert_same_params(m3.params, model.params)


def test_progress_rate_counts_only_this_process_steps():
    """After a resume at step 100, 10 more steps in 2 s are 5 steps/s, not 55."""
    import io as _io

    from miniattn.history import History
    from miniattn.progress import ProgressEvent, StderrProgress

    out = _io.StringIO()
    show = StderrProgress(out)
    show(ProgressEvent(100, 200, None, None, History(), 0.0, None))
    show.last_draw = -float("inf")
    show(ProgressEvent(110, 200, 1.0, None, History(), 2.0, 18.0))
    assert "5.0 steps/s" in out.getvalue() and "55.0" not in out.getvalue()


def _diverge_in_a_worker(step):
    raise TrainingDiverged(step, "the training loss is nan")


def test_training_diverged_survives_pickling_and_a_process_pool():
    """A sweep's worker process raises TrainingDiverged to its parent: it must unpickle intact (the
    default exception pickling passes only the message, which this constructor cannot take)."""
    import concurrent.futures as cf
    import pickle

    exc = pickle.loads(pickle.dumps(TrainingDiverged(7, "the training loss is nan")))
    assert isinstance(exc, TrainingDiverged) and exc.step == 7 and exc.what == "the training loss is nan"
    assert str(exc) == str(TrainingDiverged(7, "the training loss is nan"))
    with cf.ProcessPoolExecutor(max_workers=1) as pool:
        with pytest.raises(TrainingDiverged) as info:
            pool.submit(_diverge_in_a_worker, 3).result()
    assert info.value.step == 3 and "step 3" in str(info.value)
