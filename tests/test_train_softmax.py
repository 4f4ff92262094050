"""SoftmaxLoss through flaxenc-train (`loss.name: softmax`), against ST's trainer.

flaxenc-train creates the classifier with the train state and trains it beside the model; ST's
SentenceTransformerTrainer trains its SoftmaxLoss from the same starting classifier on the same
batches (no shuffling, dropout off, AdamW with weight decay on the classifier's weight and not its
bias, as ST's trainer groups the loss's parameters; WarmupLinear). Losses to 1e-5 relative, model
parameters to 1e-4, and the saved classifier (final/softmax_classifier.safetensors, ST's key names)
equal to ST's trained classifier.
"""

from __future__ import annotations

import csv
import json
import shutil

import jax
import numpy as np
import pytest
import torch
from conftest import build_st_model, read_stsb
from test_contrastive_training import RecordingLoss
from test_training import compare

import flaxenc
from flaxenc import losses
from flaxenc_train.config import ConfigError, load_config
from flaxenc_train.loop import Run, train
from flaxenc_train.loss_params import CLASSIFIER_FILE, read_classifier

STEPS, BATCH, NUM_LABELS, DIM = 6, 8, 3, 32
LR, WARMUP, DECAY, SEED = 1e-4, 2, 0.01, 0


@pytest.fixture(scope="module")
def nli_like(tmp_path_factory, bert_tokenizer_path):
    """(model folder, csv of STS-B pairs labelled 0..2 by score // 2)."""
    root = tmp_path_factory.mktemp("train_softmax")
    folder, _ = build_st_model(
        root / "model", bert_tokenizer_path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    first, second, scores = read_stsb("train")
    path = root / "pairs.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence1", "sentence2", "label"])
        for a, b, score in list(zip(first, second, scores))[: STEPS * BATCH]:
            writer.writerow([a, b, min(int(score) // 2, NUM_LABELS - 1)])
    return folder, path


def overrides(folder, path, output_dir, *extra):
    return [
        f"model.name_or_path={folder}",
        f"data.train={{path: {path}, text_columns: [sentence1, sentence2], label_column: label}}",
        "data.shuffle=false",
        f"loss={{name: softmax, args: {{num_labels: {NUM_LABELS}}}}}",
        f"optimizer={{learning_rate: {LR}, weight_decay: {DECAY}, warmup_steps: {WARMUP}, max_grad_norm: 1.0}}",
        f"batch_size={BATCH}",
        "dropout=false",
        "log_every=1",
        "checkpoint.every_steps=0",
        f"seed={SEED}",
        f"output_dir={output_dir}",
        *extra,
    ]


def st_softmax_run(folder, path, work_dir, classifier):
    """ST's trainer with SoftmaxLoss from `classifier`, rows in file order: (recorded steps, trained folder, loss)."""
    import datasets
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer import losses as st_losses
    from transformers import get_linear_schedule_with_warmup

    from bench.stsb_e2e import sequential_batches

    st_model = SentenceTransformer(str(folder), device="cpu")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    dataset = datasets.Dataset.from_dict(
        {
            "sentence1": [r["sentence1"] for r in rows],
            "sentence2": [r["sentence2"] for r in rows],
            "label": [int(r["label"]) for r in rows],
        }
    )
    st_loss = st_losses.SoftmaxLoss(st_model, embedding_dimension=DIM, num_labels=NUM_LABELS)
    with torch.no_grad():
        st_loss.classifier.weight.copy_(torch.tensor(np.asarray(classifier["weight"])))
        st_loss.classifier.bias.copy_(torch.tensor(np.asarray(classifier["bias"])))
    recording = RecordingLoss(st_loss)
    no_decay = ["bias", "LayerNorm.bias", "LayerNorm.weight"]
    named = list(recording.named_parameters())
    assert any(name.endswith("classifier.weight") for name, _ in named)
    groups = [
        {"params": [p for n, p in named if not any(nd in n for nd in no_decay)], "weight_decay": DECAY},
        {"params": [p for n, p in named if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=LR)
    scheduler = get_linear_schedule_with_warmup(optimizer, WARMUP, STEPS)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work_dir / "st_output"), per_device_train_batch_size=BATCH, num_train_epochs=1, max_grad_norm=1.0,
        save_strategy="no", report_to="none", disable_tqdm=True,
    )  # fmt: skip
    with sequential_batches():
        trainer = SentenceTransformerTrainer(
            model=st_model, args=args, train_dataset=dataset, loss=recording, optimizers=(optimizer, scheduler)
        )
        trainer.train()
    trained = work_dir / "st_trained"
    st_model.save(str(trained))
    return recording.steps, trained, st_loss


def test_flaxenc_train_softmax_matches_st_trainer(nli_like, tmp_path):
    from sentence_transformers import SentenceTransformer

    folder, path = nli_like
    config = load_config(None, overrides(folder, path, tmp_path / "run"))
    summary = train(config, progress=False)
    assert summary.steps == STEPS

    # The classifier flaxenc-train started from: init_train_state's, from the run's seed.
    start = losses.SoftmaxLoss(DIM, NUM_LABELS).init_params(DIM, jax.random.fold_in(jax.random.key(SEED), 2**20))
    steps, st_trained, st_loss = st_softmax_run(folder, path, tmp_path, start)
    assert len(steps) == STEPS

    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    flax_losses = np.array([m["loss"] for m in metrics if "loss" in m])
    final = tmp_path / "run" / "final"
    compare(tmp_path, [(None, None, value) for _, value in steps], st_trained, flax_losses,
            flaxenc.SentenceEncoder.from_pretrained(final).model, folder)  # fmt: skip

    classifier = read_classifier(final)
    expected = {"weight": st_loss.classifier.weight.detach().numpy(), "bias": st_loss.classifier.bias.detach().numpy()}
    assert {k: v.shape for k, v in classifier.items()} == {"weight": (NUM_LABELS, 3 * DIM), "bias": (NUM_LABELS,)}
    diff = max(float(np.abs(classifier[k] - expected[k]).max()) for k in expected)
    moved = max(float(np.abs(expected[k] - np.asarray(start[k])).max()) for k in expected)
    print(f"classifier: max abs diff {diff:.2e}; largest change in training {moved:.2e}")
    assert diff <= 1e-4 and moved > 10 * diff

    # The file loads into ST's SoftmaxLoss by its own key names; ST loads the folder as a model.
    from safetensors.torch import load_file
    from sentence_transformers.sentence_transformer import losses as st_losses

    st_model = SentenceTransformer(str(final), device="cpu")
    reloaded = st_losses.SoftmaxLoss(st_model, embedding_dimension=DIM, num_labels=NUM_LABELS)
    missing, unexpected = reloaded.load_state_dict(load_file(str(final / CLASSIFIER_FILE)), strict=False)
    assert not unexpected and all(not name.startswith("classifier.") for name in missing)
    sentences = ["A man plays a guitar.", "Two dogs run."]
    embeddings = flaxenc.SentenceEncoder.from_pretrained(final).encode(sentences)
    assert np.abs(embeddings - st_model.encode(sentences)).max() <= 1e-5

    # Resuming restores the classifier with the model: a rerun after final/ is lost saves the same file.
    shutil.rmtree(final)
    (tmp_path / "run" / "summary.json").unlink()
    train(config, progress=False)
    resumed = read_classifier(final)
    assert all(np.array_equal(resumed[k], classifier[k]) for k in classifier)


def test_softmax_labels_outside_num_labels_are_refused(nli_like, tmp_path):
    folder, path = nli_like
    config = load_config(None, overrides(folder, path, tmp_path / "run", "loss.args.num_labels=2"))
    with pytest.raises(ValueError, match=r"row \d+ has label 2 in 'label'; loss 'softmax' expects labels 0 or 1"):
        Run(config, progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["loss.args={}"], "softmax needs num_labels"),
        (["loss.args.embedding_dimension=16"], "embedding_dimension 16 differs from the model's 32"),
        (["loss.args.scale=2"], r"unknown argument\(s\) \['scale'\] for loss 'softmax'"),
    ],
)
def test_softmax_config_errors(nli_like, tmp_path, extra, message):
    folder, path = nli_like
    with pytest.raises(ConfigError, match=message):
        Run(load_config(None, overrides(folder, path, tmp_path / "run", *extra)), progress=False)


def test_softmax_must_be_the_runs_only_loss(nli_like, tmp_path):
    folder, path = nli_like
    spec = f"path: {path}, text_columns: [sentence1, sentence2], label_column: label"
    config = load_config(
        None,
        overrides(folder, path, tmp_path / "run")
        + [f"data.train=[{{{spec}}}, {{{spec}, loss: {{name: cosine_similarity}}}}]", f"max_steps={STEPS}"],
    )
    with pytest.raises(ConfigError, match="softmax keeps its classifier in the train state"):
        Run(config, progress=False)
