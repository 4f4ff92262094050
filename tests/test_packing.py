"""Sequence packing: the layout it builds, and embeddings and training equal to padded batches and to ST."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SENTENCES, build_st_model

import flaxenc
from flaxenc import losses, optim
from flaxenc.encoder import sequence_buckets
from flaxenc.packing import first_fit, pack, pack_batch, pack_length, packed_rows
from flaxenc.sentence_model import flat_params
from flaxenc.train_step import TrainStep, embed_columns, init_train_state, params_to_model


def padded_column(rng, lengths, width, vocab=1000):
    ids = np.zeros((len(lengths), width), np.int32)
    mask = np.zeros((len(lengths), width), np.int32)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(5, vocab, n)
        mask[row, :n] = 1
    return ids, mask


def test_pack_layout():
    rng = np.random.default_rng(0)
    lengths = [rng.integers(0, 40, 16), rng.integers(1, 40, 16)]  # an empty sentence too
    lengths[0][3] = 40
    columns = [padded_column(rng, n, 48) for n in lengths]
    packed, token_index = pack([c[0] for c in columns], [c[1] for c in columns], length=64, row_multiple=4)

    rows, width = packed["input_ids"].shape
    assert width == 64 and rows % 4 == 0
    real_tokens = sum(int(n.sum()) for n in lengths)
    assert int((packed["segment_ids"] > 0).sum()) == real_tokens  # every token placed once
    flat = {k: v.reshape(-1) for k, v in packed.items()}
    seen = set()
    for (ids, _mask), index, ns in zip(columns, token_index, lengths):
        for row, n in enumerate(ns):
            slots = index[row, :n]
            assert np.array_equal(flat["input_ids"][slots], ids[row, :n])
            assert np.array_equal(flat["positions"][slots], np.arange(n))
            if n:  # one segment, contiguous, in one packed row
                assert len(set(flat["segment_ids"][slots])) == 1 and flat["segment_ids"][slots[0]] > 0
                assert np.array_equal(slots, np.arange(slots[0], slots[0] + n)) and slots[0] // 64 == slots[-1] // 64
                key = (int(slots[0]) // 64, int(flat["segment_ids"][slots[0]]))
                assert key not in seen
                seen.add(key)
    used_rows = len({row for row, _ in seen})
    assert rows == packed_rows(used_rows, 4)
    assert used_rows <= 2 * -(-real_tokens // 64)  # first fit wastes less than half a row on average

    with pytest.raises(ValueError, match="longer than the pack length 32"):
        pack([c[0] for c in columns], [c[1] for c in columns], length=32)


def first_fit_by_sentence(lengths, length):
    """First fit decreasing as its definition reads: each sentence, longest first, into the first row it fits."""
    row, offset, used = np.zeros(len(lengths), np.int64), np.zeros(len(lengths), np.int64), []
    for sentence in np.argsort(-lengths, kind="stable"):
        n = int(lengths[sentence])
        target = next((r for r, taken in enumerate(used) if taken + n <= length), len(used))
        used += [0] * (target == len(used))
        row[sentence], offset[sentence], used[target] = target, used[target], used[target] + n
    return row, offset


def test_first_fit_places_sentences_as_the_definition_does():
    """first_fit places runs of equal lengths at once; every sentence lands where the definition puts it."""
    rng = np.random.default_rng(0)
    for case in range(2000):
        length = int(rng.choice([16, 32, 64, 128]))
        lengths = rng.integers(0 if case % 7 == 0 else 1, length + 1, int(rng.integers(0, 200)))
        if case % 3 == 0:  # many equal lengths
            lengths = np.minimum(lengths, rng.integers(1, length + 1))
        expected, actual = first_fit_by_sentence(lengths, length), first_fit(lengths, length)
        np.testing.assert_array_equal(actual[0], expected[0])
        np.testing.assert_array_equal(actual[1], expected[1])


def test_row_counts_and_lengths():
    assert [packed_rows(n) for n in (1, 2, 3, 5, 9, 17, 33, 40, 41)] == [1, 2, 3, 5, 10, 20, 40, 40, 48]
    assert packed_rows(5, multiple=8) == 8 and packed_rows(9, multiple=3) == 12
    buckets = sequence_buckets(256)
    assert pack_length(20, buckets) == 64 and pack_length(70, buckets) == 80
    assert pack_length(20, buckets, minimum=128) == 128
    assert pack_length(20, sequence_buckets(48)) == 48  # never beyond the largest bucket
    with pytest.raises(ValueError, match="300 tokens, more than the largest bucket 256"):
        pack_length(300, buckets)


def st_style_batch(tokenizer, column_texts, max_seq_length):
    """Columns tokenized and right-padded to one sequence bucket, as flaxenc-train's batches."""
    columns = []
    for texts in column_texts:
        encoded = tokenizer(texts, truncation=True, max_length=max_seq_length)["input_ids"]
        columns.append(encoded)
    longest = max(len(ids) for column in columns for ids in column)
    width = next(b for b in sequence_buckets(max_seq_length) if b >= longest)
    batch_columns = []
    for column in columns:
        ids = np.full((len(column), width), tokenizer.pad_token_id, np.int32)
        mask = np.zeros((len(column), width), np.int32)
        for row, tokens in enumerate(column):
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        batch_columns.append({"input_ids": ids, "attention_mask": mask})
    return {"columns": batch_columns}


@pytest.mark.parametrize(
    "arch, mode", [("bert", "mean"), ("bert", ("cls", "max", "weightedmean", "lasttoken")), ("roberta", "max")]
)
def test_packed_embeddings_match_st(tmp_path, bert_tokenizer_path, roberta_tokenizer_path, arch, mode):
    tokenizer_path = bert_tokenizer_path if arch == "bert" else roberta_tokenizer_path
    folder, st_model = build_st_model(tmp_path, tokenizer_path, arch=arch, pooling_mode=mode, max_seq_length=32)
    encoder = flaxenc.SentenceEncoder.from_pretrained(folder)
    half = len(SENTENCES) // 2
    batch = st_style_batch(encoder.tokenizer, [SENTENCES[:half], SENTENCES[half : 2 * half]], 32)
    packed = pack_batch(batch, sequence_buckets(32), pad_id=encoder.tokenizer.pad_token_id)
    assert packed["packed"]["input_ids"].size < sum(c["input_ids"].size for c in batch["columns"])

    padded = np.concatenate([np.asarray(e) for e in embed_columns(encoder.model, batch["columns"])])
    actual = np.concatenate(
        [np.asarray(e) for e in embed_columns(encoder.model, packed["columns"], packed=packed["packed"])]
    )
    expected = st_model.encode(SENTENCES[: 2 * half], batch_size=4, convert_to_numpy=True)
    assert np.abs(actual - padded).max() <= 1e-6
    assert np.abs(actual - expected).max() <= 1e-5


def test_packed_training_matches_padded(tmp_path, bert_tokenizer_path):
    """Six steps of the jitted step on packed and on padded batches: the same losses and parameters."""
    folder, _ = build_st_model(
        tmp_path, bert_tokenizer_path, heads=(("dense", 8, torch.nn.Tanh(), True),), max_seq_length=32
    )
    results = {}
    for packing in (False, True):
        encoder = flaxenc.SentenceEncoder.from_pretrained(folder)
        schedule = optim.learning_rate_schedule("warmuplinear", 1e-3, 2, 6)
        tx = optim.adamw(schedule, weight_decay=0.01, max_grad_norm=1.0)
        graphdef, state = init_train_state(encoder.model, tx)
        step = TrainStep(graphdef, losses.CosineSimilarityLoss(), tx, dropout=False)
        state = step.place_state(state)
        history = []
        for i in range(6):
            order = np.random.default_rng(i).permutation(len(SENTENCES))
            texts = [[SENTENCES[j] for j in order], [SENTENCES[j] for j in order[::-1]]]
            batch = st_style_batch(encoder.tokenizer, texts, 32)
            batch["labels"] = np.random.default_rng(100 + i).random(8).astype(np.float32)
            if packing:
                batch = pack_batch(batch, sequence_buckets(32), pad_id=encoder.tokenizer.pad_token_id)
            state, metrics = step(state, batch)
            history.append(float(metrics["loss"]))
        results[packing] = (np.array(history), flat_params(params_to_model(graphdef, state)))
    (padded_losses, padded), (packed_losses, packed) = results[False], results[True]
    assert np.abs(packed_losses - padded_losses).max() <= 1e-6 * np.abs(padded_losses).max()
    assert max(float(np.abs(packed[k] - padded[k]).max()) for k in padded) <= 1e-6
