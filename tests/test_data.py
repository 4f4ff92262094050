"""The training input pipeline (train/data.py) on the real STS-B and MRPC files and the MiniLM tokenizer."""

from __future__ import annotations

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import collections  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from conftest import data_folder, read_stsb  # noqa: E402

from flaxenc import SentenceEncoder  # noqa: E402
from flaxenc.encoder import sequence_buckets  # noqa: E402
from flaxenc_train.config import DatasetConfig  # noqa: E402
from flaxenc_train.data import BatchIterator, TokenizedTable, load_table, tokenize_table  # noqa: E402


def _data(*parts: str) -> str:
    folder = data_folder()
    if folder is None:
        pytest.skip("data not found: set FLAXENC_DATA or place it at ../shared/data")
    return str(folder.joinpath(*parts))


def _stsb_spec(split: str = "train", **overrides) -> DatasetConfig:
    return DatasetConfig(
        path=_data("stsb", f"sts-{split}.csv"), format="tsv", header=False,
        text_columns=("5", "6"), label_column="4", label_scale=5.0, **overrides,
    )


@pytest.fixture(scope="module")
def encoder(minilm_path):
    return SentenceEncoder.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def stsb_dev(encoder):
    """STS-B dev (1500 rows), tokenized with MiniLM's tokenizer."""
    table = load_table(_stsb_spec("dev"))
    return table, tokenize_table(table, encoder.tokenize, ("5", "6"))


def _iterator(tokens: TokenizedTable, encoder, batch_size=64, **options) -> BatchIterator:
    return BatchIterator(
        tokens, batch_size, sequence_buckets(encoder.max_seq_length), encoder.tokenizer.pad_token_id, seed=7, **options
    )


def _take(iterator: BatchIterator, count: int, **start) -> list:
    batches = iterator.batches(**start)
    taken = [next(batches) for _ in range(count)]
    batches.close()
    return taken


def _assert_same_batches(left: list, right: list) -> None:
    assert len(left) == len(right)
    for (epoch_a, step_a, a), (epoch_b, step_b, b) in zip(left, right):
        assert (epoch_a, step_a) == (epoch_b, step_b)
        np.testing.assert_array_equal(a["labels"], b["labels"])
        for column_a, column_b in zip(a["columns"], b["columns"]):
            np.testing.assert_array_equal(column_a["input_ids"], column_b["input_ids"])
            np.testing.assert_array_equal(column_a["attention_mask"], column_b["attention_mask"])


# -- load_table ------------------------------------------------------------------------------


def test_stsb_train_loads_with_ragged_lines():
    table = load_table(_stsb_spec())
    first, second, scores = read_stsb("train")
    assert len(table) == 5749 and table.column_names == ["5", "6", "label"]
    assert table["5"][:] == first and table["6"][:] == second  # quotes kept, the 9-column lines trimmed
    assert table.features["label"].dtype == "float32"
    labels = np.asarray(table["label"][:], np.float32)
    assert labels.min() >= 0.0 and labels.max() <= 1.0
    np.testing.assert_array_equal(labels, (np.asarray(scores) / 5.0).astype(np.float32))


def test_mrpc_train_loads_with_bom_and_quotes():
    path = _data("mrpc", "msr_paraphrase_train.txt")
    spec = DatasetConfig(path=path, header=False, text_columns=("3", "4"), label_column="0")
    table = load_table(spec)  # .txt reads as tsv; the file starts with a byte-order mark and has no header
    assert len(table) == 4076
    assert set(np.unique(table["label"][:]).tolist()) == {0.0, 1.0}
    assert table[0]["3"] == (
        'Amrozi accused his brother, whom he called "the witness", of deliberately distorting his evidence.'
    )
    assert table[0]["label"] == 1.0


@pytest.fixture
def small_frame() -> pd.DataFrame:
    first, second, scores = read_stsb("dev")
    return pd.DataFrame({"sentence1": first[:40], "sentence2": second[:40], "score": scores[:40]})


@pytest.mark.parametrize("suffix", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_file_formats_load_the_same_rows(tmp_path, small_frame, suffix):
    path = tmp_path / f"small.{suffix}"
    if suffix == "csv":
        small_frame.to_csv(path, index=False)
    elif suffix == "tsv":
        small_frame.to_csv(path, index=False, sep="\t", quoting=3)  # csv.QUOTE_NONE
    elif suffix == "json":
        path.write_text(json.dumps(small_frame.to_dict(orient="records")))
    elif suffix == "jsonl":
        small_frame.to_json(path, orient="records", lines=True)
    else:
        small_frame.to_parquet(path)
    table = load_table(DatasetConfig(path=str(path), label_scale=5.0, limit=30))
    assert table.column_names == ["sentence1", "sentence2", "label"]
    assert table["sentence1"][:] == small_frame["sentence1"][:30].tolist()
    assert table["sentence2"][:] == small_frame["sentence2"][:30].tolist()
    np.testing.assert_allclose(table["label"][:], small_frame["score"][:30] / 5.0, rtol=1e-6)


def test_missing_column_names_it_the_file_and_the_columns(tmp_path, small_frame):
    path = tmp_path / "pairs.csv"
    small_frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"pairs\.csv.*'sentence_2'.*'sentence1', 'sentence2', 'score'"):
        load_table(DatasetConfig(path=str(path), text_columns=("sentence1", "sentence_2")))
    with pytest.raises(ValueError, match=r"no column 'gold'"):
        load_table(DatasetConfig(path=str(path), label_column="gold"))
    with pytest.raises(ValueError, match="set format: tsv"):  # STS-B read as csv: one column
        load_table(DatasetConfig(path=_data("stsb", "sts-dev.csv"), header=False))


def test_empty_and_bad_tables_are_errors_naming_the_file(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty\.tsv.*empty"):
        load_table(DatasetConfig(path=str(empty)))
    header_only = tmp_path / "header_only.csv"
    header_only.write_text("sentence1,sentence2,score\n")
    with pytest.raises(ValueError, match=r"header_only\.csv.*no rows"):
        load_table(DatasetConfig(path=str(header_only)))
    short = tmp_path / "short.tsv"
    short.write_text("sentence1\tsentence2\tscore\na\tb\t1\nc\td\n")
    with pytest.raises(ValueError, match=r"short\.tsv, line 3: 2 columns, expected 3"):
        load_table(DatasetConfig(path=str(short)))
    no_label = tmp_path / "no_label.jsonl"
    no_label.write_text(
        '{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "c", "sentence2": "d", "score": null}\n'
    )
    with pytest.raises(ValueError, match=r"no_label\.jsonl: row 1 has no numeric label"):
        load_table(DatasetConfig(path=str(no_label)))
    no_text = tmp_path / "no_text.jsonl"
    no_text.write_text('{"sentence1": "a", "sentence2": null, "score": 1}\n')
    with pytest.raises(ValueError, match=r"no_text\.jsonl: row 0 has no text in column 'sentence2'"):
        load_table(DatasetConfig(path=str(no_text)))
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        load_table(DatasetConfig(path=str(tmp_path / "missing.csv")))


def test_hub_name_offline_is_a_clear_error():
    with pytest.raises(ValueError, match=r"not a local file.*hub.*local csv"):
        load_table(DatasetConfig(path="sentence-transformers/stsb", split="validation"))


# -- tokenize_table --------------------------------------------------------------------------


def test_tokenization_is_cached_on_disk(tmp_path, encoder):
    table = load_table(_stsb_spec("test", limit=200))
    calls = []

    def counting_tokenize(texts):
        calls.append(len(texts))
        return encoder.tokenize(texts)

    first = tokenize_table(table, counting_tokenize, ("5", "6"), cache_dir=tmp_path, cache_key="minilm-256")
    assert sum(calls) == 400
    again = tokenize_table(table, counting_tokenize, ("5", "6"), cache_dir=tmp_path, cache_key="minilm-256")
    assert sum(calls) == 400, "the second call tokenized again instead of reading the cache"
    for column in range(2):
        np.testing.assert_array_equal(first.ids[column], again.ids[column])
        np.testing.assert_array_equal(first.offsets[column], again.offsets[column])
    np.testing.assert_array_equal(first.labels, again.labels)
    assert first.row(1, 17).tolist() == encoder.tokenize([table[17]["6"]])[0]
    other_key = "sentence-transformers/all-MiniLM-L6-v2@128"
    tokenize_table(table, counting_tokenize, ("5", "6"), cache_dir=tmp_path, cache_key=other_key)
    assert sum(calls) == 800, "another cache_key must not reuse the cache"
    tokenize_table(table.select(range(100)), counting_tokenize, ("5", "6"), cache_dir=tmp_path, cache_key="minilm-256")
    assert sum(calls) == 1000, "other texts must not reuse the cache"


# -- BatchIterator ---------------------------------------------------------------------------


def test_order_is_deterministic_per_seed_and_epoch(stsb_dev, encoder):
    _, tokens = stsb_dev
    iterator = _iterator(tokens, encoder)
    np.testing.assert_array_equal(iterator.epoch_order(3), _iterator(tokens, encoder).epoch_order(3))
    assert not np.array_equal(iterator.epoch_order(0), iterator.epoch_order(1))
    assert sorted(iterator.epoch_order(0)) == list(range(1500))
    np.testing.assert_array_equal(_iterator(tokens, encoder, shuffle=False).epoch_order(5), np.arange(1500))
    _assert_same_batches(_take(iterator, 5), _take(_iterator(tokens, encoder), 5))


def test_resuming_yields_the_uninterrupted_batches(stsb_dev, encoder):
    _, tokens = stsb_dev
    iterator = _iterator(tokens, encoder, batch_size=128)  # 1500 rows: 12 steps, the last of 92 rows
    assert iterator.steps_per_epoch == 12
    uninterrupted = _take(iterator, 30)
    assert [(e, s) for e, s, _ in uninterrupted[10:15]] == [(0, 10), (0, 11), (1, 0), (1, 1), (1, 2)]
    _assert_same_batches(_take(iterator, 20, start_epoch=0, start_step=10), uninterrupted[10:])
    _assert_same_batches(_take(iterator, 3, start_epoch=2, start_step=3), uninterrupted[27:30])
    _assert_same_batches(_take(_iterator(tokens, encoder, batch_size=128, prefetch=0), 30), uninterrupted)
    with pytest.raises(ValueError, match="start_step"):
        iterator.batches(start_step=12)


def test_batches_cover_each_row_once_with_bucketed_shapes_masks_and_aligned_labels(stsb_dev, encoder):
    table, tokens = stsb_dev
    buckets = sequence_buckets(encoder.max_seq_length)
    pad_id = encoder.tokenizer.pad_token_id
    iterator = _iterator(tokens, encoder, batch_size=64)  # 1500 = 23 * 64 + 28
    assert iterator.steps_per_epoch == 24
    seen = collections.Counter()
    for epoch, step, batch in _take(iterator, 24, start_epoch=4):
        rows = iterator.epoch_order(4)[step * 64 : (step + 1) * 64]
        assert epoch == 4 and len(batch["labels"]) == len(rows) == (64 if step < 23 else 28)
        ids = [column["input_ids"] for column in batch["columns"]]
        masks = [column["attention_mask"] for column in batch["columns"]]
        longest = max(int(mask.sum(axis=1).max()) for mask in masks)
        length = ids[0].shape[1]
        assert length in buckets and length == min(b for b in buckets if b >= longest)
        assert batch["labels"].dtype == np.float32
        for column in range(2):
            assert ids[column].shape == masks[column].shape == (len(rows), length)
            assert ids[column].dtype == masks[column].dtype == np.int32
            real = masks[column].sum(axis=1)
            assert (masks[column] == (np.arange(length)[None, :] < real[:, None])).all(), "mask must be 1s then 0s"
            assert (ids[column][masks[column] == 0] == pad_id).all()
        for i in range(len(rows)):
            pair = tuple(tuple(ids[c][i, : masks[c][i].sum()].tolist()) for c in range(2))
            seen[(pair, float(batch["labels"][i]))] += 1
        for i in (0, len(rows) // 2, len(rows) - 1):  # ids and labels belong to the same table row
            row = table[int(rows[i])]
            assert ids[0][i, : masks[0][i].sum()].tolist() == encoder.tokenize([row["5"]])[0]
            assert ids[1][i, : masks[1][i].sum()].tolist() == encoder.tokenize([row["6"]])[0]
            assert batch["labels"][i] == np.float32(row["label"])
    expected = collections.Counter(
        ((tuple(tokens.row(0, i).tolist()), tuple(tokens.row(1, i).tolist())), float(tokens.labels[i]))
        for i in range(1500)
    )
    assert seen == expected, "every row exactly once per epoch"


def test_drop_last_and_no_labels(stsb_dev, encoder):
    _, tokens = stsb_dev
    iterator = _iterator(tokens, encoder, batch_size=64, drop_last=True)
    assert iterator.steps_per_epoch == 23
    assert all(len(batch["labels"]) == 64 for _, _, batch in _take(iterator, 30))
    unlabeled = TokenizedTable(tokens.columns[:1], tokens.ids[:1], tokens.offsets[:1], None)
    (_, _, batch), = _take(_iterator(unlabeled, encoder), 1)
    assert "labels" not in batch and len(batch["columns"]) == 1


def test_two_processes_split_the_global_batch(stsb_dev, encoder):
    _, tokens = stsb_dev
    single = _take(_iterator(tokens, encoder, batch_size=64), 26)  # through the 28-row last batch
    parts = [_take(_iterator(tokens, encoder, batch_size=64, process_index=p, process_count=2), 26) for p in (0, 1)]
    for (epoch, step, whole), (e0, s0, part0), (e1, s1, part1) in zip(single, *parts):
        assert (epoch, step) == (e0, s0) == (e1, s1)
        assert len(part0["labels"]) == len(part1["labels"]) == len(whole["labels"]) // 2
        np.testing.assert_array_equal(np.concatenate([part0["labels"], part1["labels"]]), whole["labels"])
        for column, column0, column1 in zip(whole["columns"], part0["columns"], part1["columns"]):
            for key in ("input_ids", "attention_mask"):
                assert column0[key].shape[1] == column1[key].shape[1] == column[key].shape[1]
                np.testing.assert_array_equal(np.concatenate([column0[key], column1[key]]), column[key])
    with pytest.raises(ValueError, match="multiple of process_count"):
        _iterator(tokens, encoder, batch_size=63, process_count=2)


def _prefetch_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "BatchIterator-prefetch"]


def test_prefetch_thread_stops_when_the_consumer_stops(stsb_dev, encoder):
    _, tokens = stsb_dev
    iterator = _iterator(tokens, encoder, batch_size=16, prefetch=2)
    batches = iterator.batches()
    next(batches)
    assert len(_prefetch_threads()) == 1
    batches.close()
    assert _prefetch_threads() == []
    for _, step, _ in iterator.batches():
        if step == 3:
            break  # the generator is dropped here and closes
    assert _prefetch_threads() == []


def test_prefetch_thread_errors_reach_the_consumer(stsb_dev, encoder):
    _, tokens = stsb_dev
    iterator = _iterator(tokens, encoder, batch_size=16, prefetch=2)
    original = iterator.make_batch
    made = []

    def failing(rows):
        made.append(len(rows))
        if len(made) == 4:
            raise RuntimeError("broken batch")
        return original(rows)

    iterator.make_batch = failing
    received = []
    with pytest.raises(RuntimeError, match="broken batch"):
        for _, step, _ in iterator.batches():
            received.append(step)
    assert received == [0, 1, 2]
    assert _prefetch_threads() == []
    too_long = BatchIterator(tokens, 16, (16, 32), 0, seed=0)  # rows longer than the largest bucket
    with pytest.raises(ValueError, match="largest bucket 32"):
        for _ in too_long.batches():
            pass


def test_packed_batches_hold_the_padded_batches_tokens(stsb_dev, encoder):
    """data.packing: every sentence's ids sit in the packed rows where its token_index points."""
    _, tokens = stsb_dev
    padded = _take(_iterator(tokens, encoder, batch_size=32), 3)
    packed = _take(_iterator(tokens, encoder, batch_size=32, packing=True, row_multiple=4), 3)
    for (_, _, plain), (_, _, batch) in zip(padded, packed):
        rows = batch["packed"]["input_ids"]
        assert rows.shape[0] % 4 == 0 and rows.size < sum(c["input_ids"].size for c in plain["columns"])
        assert np.array_equal(batch["labels"], plain["labels"])
        for before, after in zip(plain["columns"], batch["columns"]):
            real = before["attention_mask"] == 1
            assert np.array_equal(after["attention_mask"], before["attention_mask"])
            assert np.array_equal(rows.reshape(-1)[after["token_index"][real]], before["input_ids"][real])
    # Two processes (multi-process packing, new in issue 14): each keeps its share of the global
    # batch's packed rows, and its sentences' token_index points into the global rows.
    parts = [_take(_iterator(tokens, encoder, batch_size=32, packing=True, row_multiple=4, process_index=p, process_count=2), 3)
             for p in (0, 1)]
    for (_, _, whole), (_, _, part0), (_, _, part1) in zip(packed, *parts):
        for key in ("input_ids", "segment_ids", "positions"):
            np.testing.assert_array_equal(np.concatenate([part0["packed"][key], part1["packed"][key]]), whole["packed"][key])
        for column, column0, column1 in zip(whole["columns"], part0["columns"], part1["columns"]):
            np.testing.assert_array_equal(np.concatenate([column0["token_index"], column1["token_index"]]), column["token_index"])
