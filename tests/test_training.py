"""Training parity: flaxenc's jitted step against PyTorch ST's own fit() loop.

ST trains a tiny random model with `SentenceTransformer.fit` (its Trainer, torch AdamW with ST's
no-decay groups, WarmupLinear, gradient clipping), dropout off. A thin wrapper around ST's loss
records the token batches fit() feeds it and the loss of each step; flaxenc then trains the same
initial weights on the same batches. Losses must agree to 1e-5 relative, parameters to 1e-4.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from conftest import build_st_model, read_mrpc, read_stsb

import flaxenc
from flaxenc import losses, optim
from flaxenc.encoder import sequence_buckets
from flaxenc.packing import pack_batch
from flaxenc.sentence_model import flat_params
from flaxenc.train_step import TrainStep, init_train_state, params_to_model

STEPS, BATCH = 20, 8


class RecordingLoss(torch.nn.Module):
    """ST's loss, unchanged, plus a record of each step's token ids, mask, labels and loss."""

    def __init__(self, loss):
        super().__init__()
        self.loss = loss
        self.model = loss.model
        self.steps = []

    def forward(self, features, labels):
        columns = [{key: f[key].numpy().copy() for key in ("input_ids", "attention_mask")} for f in features]
        value = self.loss(features, labels)
        self.steps.append((columns, labels.numpy().astype(np.float32), value.item()))
        return value


def st_fit(st_model, st_loss, rows, tmp_path, monkeypatch, lr, warmup_steps, weight_decay):
    """Runs ST's fit() on (text1, text2, label) rows; returns the recorded steps and the trained folder."""
    from sentence_transformers import InputExample
    from torch.utils.data import DataLoader

    monkeypatch.chdir(tmp_path)  # fit() writes checkpoints/ into the working directory
    examples = [InputExample(texts=[a, b], label=label) for a, b, label in rows]
    recording = RecordingLoss(st_loss)
    st_model.fit(
        train_objectives=[(DataLoader(examples, batch_size=BATCH, shuffle=True), recording)],
        epochs=1,
        scheduler="WarmupLinear",
        warmup_steps=warmup_steps,
        optimizer_params={"lr": lr},
        weight_decay=weight_decay,
        max_grad_norm=1.0,
        show_progress_bar=False,
    )
    trained = tmp_path / "st_trained"
    st_model.save(str(trained))
    return recording.steps, trained


def to_batch(step, max_seq_length, packing=False):
    """A recorded ST batch as a flaxenc batch, padded to flaxenc's sequence bucket (and packed)."""
    columns, labels, _ = step
    length = max(c["input_ids"].shape[1] for c in columns)
    bucket = next(b for b in sequence_buckets(max_seq_length) if b >= length)

    def pad(x):
        return np.pad(x, ((0, 0), (0, bucket - x.shape[1]))).astype(np.int32)

    batch = {
        "columns": [{"input_ids": pad(c["input_ids"]), "attention_mask": pad(c["attention_mask"])} for c in columns],
        "labels": labels,
    }
    return pack_batch(batch, sequence_buckets(max_seq_length)) if packing else batch


def flaxenc_fit(folder, loss, steps, max_seq_length, lr, warmup_steps, weight_decay, packing=False):
    encoder = flaxenc.SentenceEncoder.from_pretrained(folder)
    schedule = optim.learning_rate_schedule("warmuplinear", lr, warmup_steps, len(steps))
    tx = optim.adamw(schedule, weight_decay=weight_decay, max_grad_norm=1.0)
    graphdef, state = init_train_state(encoder.model, tx)
    train_step = TrainStep(graphdef, loss, tx, learning_rate_fn=schedule, dropout=False)
    state = train_step.place_state(state)
    history = []
    for step in steps:
        state, metrics = train_step(state, to_batch(step, max_seq_length, packing))
        history.append(float(metrics["loss"]))
    return np.array(history), params_to_model(graphdef, state), train_step


def compare(tmp_path, steps, st_trained, flax_losses, flax_model, initial_folder):
    st_losses = np.array([loss for _, _, loss in steps])
    relative = np.abs(flax_losses - st_losses) / np.abs(st_losses)
    print(f"losses: max relative diff {relative.max():.2e} over {len(steps)} steps")
    assert relative.max() <= 1e-5

    expected = flat_params(flaxenc.SentenceEncoder.from_pretrained(st_trained).model)
    initial = flat_params(flaxenc.SentenceEncoder.from_pretrained(initial_folder).model)
    actual = flat_params(flax_model)
    assert expected.keys() == actual.keys()
    diffs = {k: float(np.abs(actual[k] - expected[k]).max()) for k in expected}
    param_diff = max(diffs.values())
    print("largest parameter differences:", sorted(diffs.items(), key=lambda kv: -kv[1])[:3])
    moved = max(float(np.abs(expected[k] - initial[k]).max()) for k in expected)
    print(f"parameters: max abs diff {param_diff:.2e}; largest change in training {moved:.2e}")
    assert param_diff <= 1e-4
    # Training really moved the parameters. (Adam turns float noise in a near-zero gradient, such as
    # a ReLU unit at its kink, into a step of up to lr: one Dense bias differs by ~1e-5 in recipe 2.)
    assert moved > 10 * param_diff


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_cosine_similarity_recipe_matches_st_fit(tmp_path, bert_tokenizer_path, monkeypatch, packing):
    """Recipe 1's shape in small: BERT, mean pooling, Dense Tanh, 16 tokens, CosineSimilarityLoss."""
    from sentence_transformers import losses as st_losses

    folder, st_model = build_st_model(
        tmp_path / "model",
        bert_tokenizer_path,
        heads=(("dense", 8, torch.nn.Tanh(), True),),
        max_seq_length=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    first, second, scores = read_stsb("train")
    rows = [(a, b, s / 5.0) for a, b, s in zip(first, second, scores)][: STEPS * BATCH]
    lr, warmup, decay = 2e-5, 5, 0.01  # recipe 1: lr 2e-5, weight decay 0.01
    steps, trained = st_fit(st_model, st_losses.CosineSimilarityLoss(st_model), rows, tmp_path, monkeypatch, lr, warmup, decay)
    assert len(steps) == STEPS
    loss = losses.CosineSimilarityLoss()
    flax_losses, flax_model, train_step = flaxenc_fit(folder, loss, steps, 16, lr, warmup, decay, packing)
    compare(tmp_path, steps, trained, flax_losses, flax_model, folder)
    if not packing:
        assert train_step.num_compiles == 1  # one bucket (16 tokens), one program


def test_contrastive_recipe_matches_st_fit(tmp_path, roberta_tokenizer_path, monkeypatch):
    """Recipe 2's shape in small: RoBERTa, max pooling, Dense ReLU, Dropout, ContrastiveLoss on MRPC,
    with the sentences packed as flaxenc-train does (RoBERTa's positions restart in each)."""
    from sentence_transformers import losses as st_losses

    folder, st_model = build_st_model(
        tmp_path / "model",
        roberta_tokenizer_path,
        arch="roberta",
        pooling_mode="max",
        heads=(("dense", 16, torch.nn.ReLU(), True), ("dropout", 0.0)),
        max_seq_length=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=130,
    )
    rows = [(a, b, float(label)) for a, b, label in zip(*read_mrpc("train"))][: STEPS * BATCH]
    lr, warmup, decay = 1e-4, 5, 1e-4  # recipe 2: lr 1e-4, weight decay 1e-4
    # The recipe's ContrastiveLoss: euclidean distance (ST 6's default is cosine), margin 0.2.
    euclidean = st_losses.SiameseDistanceMetric.EUCLIDEAN
    st_loss = st_losses.ContrastiveLoss(st_model, distance_metric=euclidean, margin=0.2, size_average=True)
    steps, trained = st_fit(st_model, st_loss, rows, tmp_path, monkeypatch, lr, warmup, decay)
    loss = losses.ContrastiveLoss(distance_metric="euclidean", margin=0.2, size_average=True)
    flax_losses, flax_model, _ = flaxenc_fit(folder, loss, steps, 64, lr, warmup, decay, packing=True)
    compare(tmp_path, steps, trained, flax_losses, flax_model, folder)


def test_step_compiles_once_per_bucket(tmp_path, bert_tokenizer_path):
    """Alternating two sequence buckets for six steps compiles exactly two programs."""
    folder, _ = build_st_model(tmp_path, bert_tokenizer_path)
    encoder = flaxenc.SentenceEncoder.from_pretrained(folder)
    tx = optim.adamw(1e-4)
    graphdef, state = init_train_state(encoder.model, tx)
    train_step = TrainStep(graphdef, losses.CosineSimilarityLoss(), tx)
    state = train_step.place_state(state)
    rng = np.random.default_rng(0)
    for step in range(6):
        length = (16, 32)[step % 2]
        ids = rng.integers(1000, 2000, size=(4, length)).astype(np.int32)
        column = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        batch = {"columns": [column, column], "labels": rng.random(4).astype(np.float32)}
        state, metrics = train_step(state, batch)
        assert np.isfinite(float(metrics["loss"]))
    assert int(state.step) == 6
    assert train_step.num_compiles == 2


def test_bf16_compute_trains_close_to_fp32(tmp_path, bert_tokenizer_path):
    """dtype="bfloat16": bf16 matmuls, fp32 parameters and optimizer state, losses near fp32's."""
    import jax.numpy as jnp

    folder, _ = build_st_model(tmp_path, bert_tokenizer_path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    first, second, scores = read_stsb("train")
    runs = {}
    for dtype in ("float32", "bfloat16"):
        encoder = flaxenc.SentenceEncoder.from_pretrained(folder, dtype=dtype)
        tx = optim.adamw(1e-4)
        graphdef, state = init_train_state(encoder.model, tx)
        train_step = TrainStep(graphdef, losses.CosineSimilarityLoss(), tx, dropout=False)
        state = train_step.place_state(state)
        history = []
        for step in range(3):
            rows = slice(step * BATCH, (step + 1) * BATCH)
            columns = []
            for texts in (first[rows], second[rows]):
                ids = np.zeros((BATCH, 32), np.int32)
                for row, tokens in enumerate(encoder.tokenize(texts)):
                    ids[row, : len(tokens)] = tokens
                columns.append({"input_ids": ids, "attention_mask": (ids != 0).astype(np.int32)})
            labels = np.asarray(scores[rows], np.float32) / 5
            state, metrics = train_step(state, {"columns": columns, "labels": labels})
            history.append(float(metrics["loss"]))
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
        runs[dtype] = np.array(history)
    relative = np.abs(runs["bfloat16"] - runs["float32"]) / runs["float32"]
    print(f"bf16 vs fp32 training losses: max relative diff {relative.max():.2e}")
    assert relative.max() <= 0.05


def test_matryoshka_random_dims_step_equals_st(tmp_path, bert_tokenizer_path):
    """A loss that needs_key gets TrainStep's per-step key: with n_dims_per_step, each step's loss is
    ST's MatryoshkaLoss over the dims that step's key chose (ST draws them with random.sample), on
    the parameters of that step."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import losses as st_losses

    from flaxenc.train_step import step_keys

    folder, st_model = build_st_model(tmp_path, bert_tokenizer_path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    dims, weights = (32, 16, 8), (1.0, 2.0, 3.0)
    loss = losses.MatryoshkaLoss(losses.CoSENTLoss(), dims, weights, n_dims_per_step=2)
    assert loss.needs_key and not losses.CoSENTLoss().needs_key
    encoder = flaxenc.SentenceEncoder.from_pretrained(folder)
    tx = optim.adamw(1e-3)
    graphdef, state = init_train_state(encoder.model, tx, seed=3)
    train_step = TrainStep(graphdef, loss, tx, dropout=False)
    state = train_step.place_state(state)
    first, second, scores = read_stsb("train")
    chosen_sets = set()
    for step in range(4):
        encoder.model = params_to_model(graphdef, state)
        encoder.save(tmp_path / f"step{step}")
        st_model = SentenceTransformer(str(tmp_path / f"step{step}"), device="cpu")
        rows = slice(step * BATCH, (step + 1) * BATCH)
        features = [st_model.tokenize(texts) for texts in (first[rows], second[rows])]
        labels = np.asarray(scores[rows], np.float32) / 5
        chosen = np.asarray(loss.chosen_dims(step_keys(state.rng, state.step)[1]))
        assert chosen.sum() == 2
        chosen_sets.add(tuple(chosen.tolist()))
        reference = st_losses.MatryoshkaLoss(
            st_model,
            st_losses.CoSENTLoss(st_model),
            [d for d, keep in zip(dims, chosen) if keep],
            [w for w, keep in zip(weights, chosen) if keep],
        )
        with torch.no_grad():
            expected = reference(features, torch.tensor(labels)).item()
        columns = [{key: f[key].numpy() for key in ("input_ids", "attention_mask")} for f in features]
        state, metrics = train_step(state, to_batch((columns, labels, None), 32))
        assert abs(float(metrics["loss"]) - expected) <= 1e-5 * max(1.0, abs(expected)), (step, float(metrics["loss"]), expected)
    assert len(chosen_sets) > 1, "every step drew the same dims"
