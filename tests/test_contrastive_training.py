"""20 steps of CachedMultipleNegativesRankingLoss with prompts and mined hard-negative columns:
flaxenc's TrainStep against ST's SentenceTransformerTrainer (what fit() runs, with fit()'s AdamW and
WarmupLinear schedule) on the same batches; losses to 1e-5 relative, parameters to 1e-4.

The data: STS-B (sentence1, sentence2) pairs with two hard negatives each, mined by
flaxenc.util.mine_hard_negatives with the model itself. Prompts per column (ST's `prompts`
training argument): "search query: " for anchors, "passage: " for the rest; the model's Pooling has
include_prompt=False, so the prompt tokens are left out of the mean (each column's prompt_length).
ST's data collator prepends the prompts and tokenizes; a wrapper around ST's loss records each
step's token ids, masks and prompt lengths, and flaxenc trains on exactly those.
"""

from __future__ import annotations

import numpy as np
import torch
from conftest import build_st_model, read_stsb
from test_training import compare

import flaxenc
from flaxenc import losses, optim
from flaxenc.encoder import sequence_buckets
from flaxenc.train_step import TrainStep, init_train_state, params_to_model
from flaxenc.util import mine_hard_negatives

STEPS, BATCH, MINI_BATCH = 20, 8, 3
PROMPTS = {"anchor": "search query: ", "positive": "passage: ", "negative_1": "passage: ", "negative_2": "passage: "}


class RecordingLoss(torch.nn.Module):
    """ST's loss, unchanged, plus a record of each step's columns (ids, mask, prompt length) and loss."""

    def __init__(self, loss):
        super().__init__()
        self.loss = loss
        self.model = loss.model
        self.steps = []

    def forward(self, features, labels):
        columns = []
        for f in features:
            rows = f["input_ids"].shape[0]
            prompt_length = f.get("prompt_length", 0)
            prompt_length = np.broadcast_to(np.asarray(prompt_length, np.int32).reshape(-1), (rows,)).copy()
            columns.append(
                {
                    "input_ids": f["input_ids"].numpy().copy(),
                    "attention_mask": f["attention_mask"].numpy().copy(),
                    "prompt_length": prompt_length,
                }
            )
        value = self.loss(features, labels)
        self.steps.append((columns, value.item()))
        return value


def st_train(st_model, st_loss, dataset, tmp_path, lr, warmup_steps, weight_decay):
    """ST's trainer with the optimizer and schedule fit() builds (torch AdamW, fit()'s no-decay names, WarmupLinear)."""
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers import get_linear_schedule_with_warmup

    recording = RecordingLoss(st_loss)
    no_decay = ["bias", "LayerNorm.bias", "LayerNorm.weight"]
    named = list(st_model.named_parameters())
    groups = [
        {"params": [p for n, p in named if not any(nd in n for nd in no_decay)], "weight_decay": weight_decay},
        {"params": [p for n, p in named if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps, STEPS)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "st_output"),
        per_device_train_batch_size=BATCH,
        num_train_epochs=1,
        max_grad_norm=1.0,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        prompts=PROMPTS,
    )
    trainer = SentenceTransformerTrainer(
        model=st_model, args=args, train_dataset=dataset, loss=recording, optimizers=(optimizer, scheduler)
    )
    trainer.train()
    trained = tmp_path / "st_trained"
    st_model.save(str(trained))
    return recording.steps, trained


def to_batch(columns, max_seq_length):
    """A recorded ST step as a flaxenc batch: every column padded to the sequence bucket of the longest."""
    length = max(c["input_ids"].shape[1] for c in columns)
    bucket = next(b for b in sequence_buckets(max_seq_length) if b >= length)

    def pad(x):
        return np.pad(x, ((0, 0), (0, bucket - x.shape[1]))).astype(np.int32)

    return {
        "columns": [
            {
                "input_ids": pad(c["input_ids"]),
                "attention_mask": pad(c["attention_mask"]),
                "prompt_length": c["prompt_length"],
            }
            for c in columns
        ]
    }


def test_cached_mnrl_with_prompts_and_hard_negatives_matches_st(tmp_path, bert_tokenizer_path):
    import datasets
    from sentence_transformers.sentence_transformer import losses as st_losses

    max_seq_length = 48
    folder, st_model = build_st_model(
        tmp_path / "model",
        bert_tokenizer_path,
        include_prompt=False,
        max_seq_length=max_seq_length,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    first, second, _ = read_stsb("train")
    encoder = flaxenc.SentenceEncoder.from_pretrained(folder)
    mined = mine_hard_negatives(
        {"anchor": first[:300], "positive": second[:300]}, encoder, num_negatives=2, output_format="n-tuple"
    )
    assert list(mined) == ["anchor", "positive", "negative_1", "negative_2"]
    dataset = datasets.Dataset.from_dict({key: value[: STEPS * BATCH] for key, value in mined.items()})

    lr, warmup, decay = 5e-5, 5, 0.01
    st_loss = st_losses.CachedMultipleNegativesRankingLoss(st_model, mini_batch_size=MINI_BATCH)
    steps, trained = st_train(st_model, st_loss, dataset, tmp_path, lr, warmup, decay)
    assert len(steps) == STEPS
    prompt_lengths = [int(c["prompt_length"][0]) for c in steps[0][0]]
    print("prompt lengths per column:", prompt_lengths)
    assert min(prompt_lengths) > 0  # the collator applied the prompts and reported their length

    schedule = optim.learning_rate_schedule("warmuplinear", lr, warmup, STEPS)
    tx = optim.adamw(schedule, weight_decay=decay, max_grad_norm=1.0)
    graphdef, state = init_train_state(encoder.model, tx)
    train_step = TrainStep(
        graphdef,
        losses.CachedMultipleNegativesRankingLoss(mini_batch_size=MINI_BATCH),
        tx,
        learning_rate_fn=schedule,
        dropout=False,
    )
    state = train_step.place_state(state)
    history = []
    for columns, _ in steps:
        state, metrics = train_step(state, to_batch(columns, max_seq_length))
        history.append(float(metrics["loss"]))
    # compare() reads the ST loss of each step from the third item of each recorded step
    recorded = [(columns, None, value) for columns, value in steps]
    compare(tmp_path, recorded, trained, np.array(history), params_to_model(graphdef, state), folder)
