"""Prompts at training time through flaxenc-train (`data.prompts`, ST's `prompts` training argument).

The parity test: 20 steps of CachedMultipleNegativesRankingLoss with prompts per column and two
mined hard-negative columns, run by flaxenc-train (train.loop.train on a config; the table input and
the streamed pipeline) and by ST's SentenceTransformerTrainer on the same rows in the same order
(no shuffling: ST's batch sampler made sequential as bench/stsb_e2e.py does), dropout off, fit()'s
AdamW and WarmupLinear schedule. The model's Pooling has include_prompt=False, so each column's
prompt tokens are left out of the mean. Losses to 1e-5 relative, parameters to 1e-4.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import build_st_model, read_stsb
from test_contrastive_training import RecordingLoss
from test_training import compare

import flaxenc
from flaxenc.util import mine_hard_negatives
from flaxenc_train.chunks import TokenizeChunk
from flaxenc_train.config import ConfigError, load_config
from flaxenc_train.loop import train
from flaxenc_train.prompts import check_prompts, column_prompts, prompt_lengths

STEPS, BATCH, MINI_BATCH, MAX_SEQ_LENGTH = 20, 8, 3, 48
COLUMNS = ["anchor", "positive", "negative_1", "negative_2"]
PROMPTS = {"anchor": "search query: ", "positive": "passage: ", "negative_1": "passage: ", "negative_2": "passage: "}
LR, WARMUP, DECAY = 5e-5, 5, 0.01


def config_of(overrides: list[str]):
    return load_config(None, overrides)


# ----------------------------------------------------------------------------- resolving prompts (ST's four forms)


def test_column_prompts_resolve_as_st_collator():
    one = config_of(["data.train.text_columns=[q, d]", "data.prompts='query: '"])
    assert column_prompts(one, one.data.train) == ("query: ", "query: ")
    per_column = config_of(["data.train.text_columns=[q, d]", "data.prompts={q: 'query: '}"])
    assert column_prompts(per_column, per_column.data.train) == ("query: ", None)
    mixture = [
        "data.train=[{path: a.jsonl, text_columns: [q, d], dataset_name: nq}, {path: b.jsonl, text_columns: [q, d], dataset_name: nli}]"
    ]
    per_dataset = config_of([*mixture, "data.prompts={nq: 'query: '}"])
    nq, nli = per_dataset.data.train
    assert column_prompts(per_dataset, nq) == ("query: ", "query: ")
    assert column_prompts(per_dataset, nli) == (None, None)  # a flat mapping not naming nli: its columns' prompts (none)
    nested = config_of([*mixture, "data.prompts={nq: {q: 'query: ', d: 'doc: '}}"])
    check_prompts(nested)
    assert column_prompts(nested, nested.data.train[0]) == ("query: ", "doc: ")
    assert column_prompts(nested, nested.data.train[1]) == (None, None)  # nested, not named: no prompts (ST)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.prompts={nq: {q: 'x'}}"], "needs named datasets"),  # ST's collator raises here too
        (["data.prompts={anchr: 'x'}"], "'anchr' is neither a text column"),
        (["data.prompts={sentence1: 3}"], "must be a string"),
    ],
)
def test_bad_prompts_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_prompts(config_of(overrides))


def test_streamed_rows_get_prompts_and_keep_text_keys(mined):
    encoder = flaxenc.SentenceEncoder.from_pretrained(mined[0])
    prompts = ("query: ", None)
    lengths = prompt_lengths(encoder, prompts)
    assert lengths == (encoder._prompt_length("query: "), 0)
    chunk = TokenizeChunk(encoder.tokenizer, 32, True, (prompts, lengths))
    plain = TokenizeChunk(encoder.tokenizer, 32, True)
    records = {"texts": [["a cat"], ["a dog"]], "labels": None, "skipped": []}
    row, plain_row = chunk(records)["rows"][0], plain(records)["rows"][0]
    assert list(row["ids"][0]) == encoder.tokenize(["query: a cat"])[0] and row["ids"][1] == plain_row["ids"][1]
    assert row["keys"] == plain_row["keys"]  # no_duplicates compares the texts, as ST's sampler does
    assert row["prompt_length"] == list(lengths) and "prompt_length" not in plain_row


# ----------------------------------------------------------------------------- parity with ST's trainer


@pytest.fixture(scope="module")
def mined(tmp_path_factory, bert_tokenizer_path):
    """(initial model folder, jsonl of STEPS * BATCH mined (anchor, positive, negative_1, negative_2) rows)."""
    root = tmp_path_factory.mktemp("train_prompts")
    folder, _ = build_st_model(
        root / "model", bert_tokenizer_path, include_prompt=False, max_seq_length=MAX_SEQ_LENGTH,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    first, second, _ = read_stsb("train")
    encoder = flaxenc.SentenceEncoder.from_pretrained(folder)
    rows = mine_hard_negatives({"anchor": first[:300], "positive": second[:300]}, encoder, num_negatives=2, output_format="n-tuple")
    assert list(rows) == COLUMNS
    path = root / "mined.jsonl"
    with open(path, "w") as f:
        for values in list(zip(*rows.values()))[: STEPS * BATCH]:
            f.write(json.dumps(dict(zip(rows, values))) + "\n")
    return folder, path


@pytest.fixture(scope="module")
def st_run(mined, tmp_path_factory):
    """ST's trainer on the mined rows in file order: (recorded steps, trained folder)."""
    import datasets
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer import losses as st_losses
    from transformers import get_linear_schedule_with_warmup

    from bench.stsb_e2e import sequential_batches

    folder, path = mined
    root = tmp_path_factory.mktemp("st_prompts")
    torch.manual_seed(0)
    st_model = SentenceTransformer(str(folder), device="cpu")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    dataset = datasets.Dataset.from_dict({c: [r[c] for r in records] for c in COLUMNS})
    recording = RecordingLoss(st_losses.CachedMultipleNegativesRankingLoss(st_model, mini_batch_size=MINI_BATCH))
    no_decay = ["bias", "LayerNorm.bias", "LayerNorm.weight"]  # fit()'s list; the same set as Trainer's for BERT
    named = list(st_model.named_parameters())
    groups = [
        {"params": [p for n, p in named if not any(nd in n for nd in no_decay)], "weight_decay": DECAY},
        {"params": [p for n, p in named if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=LR)
    scheduler = get_linear_schedule_with_warmup(optimizer, WARMUP, STEPS)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(root / "st_output"), per_device_train_batch_size=BATCH, num_train_epochs=1, max_grad_norm=1.0,
        save_strategy="no", report_to="none", disable_tqdm=True, prompts=PROMPTS,
    )  # fmt: skip
    with sequential_batches():
        trainer = SentenceTransformerTrainer(
            model=st_model, args=args, train_dataset=dataset, loss=recording, optimizers=(optimizer, scheduler)
        )
        trainer.train()
    trained = root / "st_trained"
    st_model.save(str(trained))
    return recording.steps, trained


@pytest.mark.parametrize("streaming", [False, True], ids=["table", "streamed"])
def test_flaxenc_train_cached_mnrl_with_prompts_matches_st_trainer(mined, st_run, tmp_path, streaming):
    folder, path = mined
    steps, st_trained = st_run
    assert len(steps) == STEPS
    config = load_config(
        None,
        [
            f"model.name_or_path={folder}",
            f"data.train={{path: {path}, text_columns: {COLUMNS}, label_column: null}}",
            f"data.prompts={json.dumps(PROMPTS)}",
            "data.shuffle=false",
            f"data.streaming={str(streaming).lower()}",
            f"loss={{name: cached_multiple_negatives_ranking, args: {{mini_batch_size: {MINI_BATCH}}}}}",
            f"optimizer={{learning_rate: {LR}, weight_decay: {DECAY}, warmup_steps: {WARMUP}, max_grad_norm: 1.0}}",
            f"batch_size={BATCH}",
            f"max_steps={STEPS}",
            "dropout=false",
            "log_every=1",
            "checkpoint.every_steps=0",
            "seed=0",
            f"output_dir={tmp_path / 'run'}",
        ],
    )
    summary = train(config, progress=False)
    assert summary.steps == STEPS

    # The collator's prompt lengths (per column, one per batch) are flaxenc's.
    encoder = flaxenc.SentenceEncoder.from_pretrained(folder)
    expected_lengths = prompt_lengths(encoder, [PROMPTS[c] for c in COLUMNS])
    assert tuple(int(c["prompt_length"][0]) for c in steps[0][0]) == expected_lengths
    assert min(expected_lengths) > 0

    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    flax_losses = np.array([m["loss"] for m in metrics if "loss" in m])
    assert len(flax_losses) == STEPS
    card = (tmp_path / "run" / "final" / "README.md").read_text()
    assert "- `prompts`: {'anchor': 'search query: '" in card  # the card lists the prompts, as ST's does
    trained = flaxenc.SentenceEncoder.from_pretrained(summary.final_model).model
    compare(tmp_path, [(None, None, value) for _, value in steps], st_trained, flax_losses, trained, folder)


def test_streamed_mixture_prompts_per_dataset(mined, tmp_path):
    """{dataset_name: {column: prompt}} in a streamed mixture (policy mixed: rows of both datasets in a
    batch): rows of the named dataset carry its prompt and prompt_length, the others none."""
    from flaxenc_train.inputs import StreamInput
    from flaxenc_train.loop import build_loss

    folder, path = mined
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for name, part in (("nq", records[::2]), ("other", records[1::2])):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            for record in part:
                f.write(json.dumps({"anchor": record["anchor"], "positive": record["positive"]}) + "\n")
    datasets_yaml = ", ".join(
        f"{{path: {tmp_path / name}.jsonl, text_columns: [anchor, positive], label_column: null, dataset_name: {name}}}"
        for name in ("nq", "other")
    )
    config = load_config(
        None,
        [
            f"data.train=[{datasets_yaml}]",
            "data.prompts={nq: {anchor: 'query: '}}",
            "data.policy=mixed",
            "data.no_duplicates=false",
            "loss.name=multiple_negatives_ranking",
            "batch_size=8",
            "max_steps=4",
            f"output_dir={tmp_path / 'run'}",
        ],
    )
    encoder = flaxenc.SentenceEncoder.from_pretrained(folder)
    prompt_ids = encoder.tokenize(["query: "])[0][1:-1]  # without [CLS] and [SEP]
    loss = build_loss(config.loss)
    stream = StreamInput(config, encoder, [loss], [0, 0], False, 1)
    seen = set()
    try:
        batches = stream.batches(0)
        for _ in range(4):
            _, _, batch = next(batches)
            anchors, positives = batch["columns"]
            assert not positives["prompt_length"].any()  # no prompt for the positive column
            for ids, length in zip(anchors["input_ids"], anchors["prompt_length"]):
                seen.add(int(length))
                starts_with_prompt = list(ids[1 : 1 + len(prompt_ids)]) == prompt_ids
                assert starts_with_prompt == (length > 0)
    finally:
        stream.close()
    assert seen == {0, len(prompt_ids) + 1}  # [CLS] + the prompt's tokens, and rows of the unnamed-prompt dataset
