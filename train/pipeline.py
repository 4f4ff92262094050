"""The streamed input pipeline: datasets -> tokenized rows -> global batches (one dataset or mixed) -> device.

Per dataset, a grain pipeline reads this process's records (train/sources.py), shuffles them in
windows, tokenizes them in chunks with the fast tokenizer, in grain worker processes when
`data.workers` > 0. The main process then builds each step's local batch: it picks the dataset
(policy `one`: by weight, round robin or in proportion to size, the same on every process, from
(seed, step) alone), takes rows without a text already in the global batch (ST's
NoDuplicatesBatchSampler: a row that would repeat a text waits for a later batch), agrees the
batch's shape with the other processes (train/exchange.py) and pads or packs its rows. A grain
thread prefetches those batches while the device trains.

The whole state (per dataset: the grain iterator's position, the rows set aside; the step) is a
JSON dict that grain's orbax handler saves with each checkpoint, per process: a resumed run
continues with exactly the batches the interrupted run would have had.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
from array import array
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from flaxenc.packing import pack, pack_length
from flaxenc_train.chunks import fewer_collections, row_chunks
from flaxenc_train.config import DatasetConfig
from flaxenc_train.exchange import HostExchange
from flaxenc_train.sources import DataError, count_records, is_hub, process_files, shard_files

logger = logging.getLogger(__name__)
_MAX_DEFERRED = 16  # rows set aside per batch row before no_duplicates gives up


class _Rows:
    """One row at a time from a chunk iterator; state: the chunk iterator before the current chunk, rows taken."""

    def __init__(self, chunks: grain.IterDataset, workers: int = 0, saved_without_count: int | None = None):
        """workers: the grain workers reading this dataset; saved_without_count: their number in a state saved
        before states recorded it (data.workers, then per dataset)."""
        self.workers = workers
        self._legacy_workers = workers if saved_without_count is None else saved_without_count
        self._iterator = iter(chunks)
        self._before = self._iterator.get_state()
        self._chunk: dict | None = None
        self._taken = 0
        self.skipped, self.first_skipped = 0, ""

    def next(self) -> dict:
        while self._chunk is None or self._taken == len(self._chunk["rows"]):
            self._before = self._iterator.get_state()
            self._chunk, self._taken = next(self._iterator), 0
            if self._chunk["skipped"]:
                self.skipped += len(self._chunk["skipped"])
                self.first_skipped = self.first_skipped or self._chunk["skipped"][0]
        self._taken += 1
        return self._chunk["rows"][self._taken - 1]

    def get_state(self) -> dict:
        return {"chunks": self._before, "taken": self._taken, "skipped": self.skipped, "first_skipped": self.first_skipped,
                "workers": self.workers}

    def set_state(self, state: dict) -> None:
        saved = state.get("workers", self._legacy_workers)
        if saved != self.workers:  # the record order depends on it
            raise DataError(
                f"the checkpoint's input position was taken with {saved} grain worker(s) on this dataset and this run "
                f"gives it {self.workers} (data.workers is now split over a mixture's datasets by weight; README, "
                "Decisions): resume with the data.workers and flaxenc that wrote it, or start the run afresh"
            )
        self._iterator.set_state(state["chunks"])
        self._before, self._chunk, self._taken = state["chunks"], None, 0
        if state["taken"]:
            self._chunk = next(self._iterator)
            self._taken = state["taken"]
        self.skipped, self.first_skipped = state["skipped"], state["first_skipped"]

    def close(self) -> None:
        close = getattr(self._iterator, "close", None)
        if close:
            close()


@dataclasses.dataclass(frozen=True)
class BatchShape:
    """How local rows become the arrays of a step: padded to a bucket, or packed into shared rows."""

    buckets: tuple[int, ...]
    pad_id: int
    packing: bool
    row_multiple: int  # local devices: each gets whole rows


def choose_dataset(sampler: str, weights: np.ndarray, seed: int, step: int) -> int:
    """The dataset of global batch `step` under policy `one`: a function of (seed, step) alone, so
    every process picks the same one and a resumed run the same as before."""
    if sampler == "round_robin":  # ST's RoundRobinBatchSampler: datasets in turn
        return step % len(weights)
    # weighted (the all-* recipe) and proportional (ST's ProportionalBatchSampler: weights = sizes)
    return int(np.random.default_rng([seed, 0x5EED, step]).choice(len(weights), p=weights / weights.sum()))


class GlobalBatches:
    """Each step's local batch: (dataset index, batch dict, (bad records skipped so far, the first's message))."""

    def __init__(
        self, streams: list[_Rows], weights: Sequence[float], *, policy: str, sampler: str, seed: int,
        local_batch: int, shape: BatchShape, no_duplicates: bool, exchange: HostExchange, labels: Sequence[bool],
    ):
        self.streams, self.weights = streams, np.asarray(weights, np.float64)
        self.policy, self.sampler, self.seed = policy, sampler, seed
        self.local_batch, self.shape, self.no_duplicates = local_batch, shape, no_duplicates
        self.exchange, self.labels = exchange, list(labels)  # per dataset: whether its batches carry labels
        self.step = 0
        self.pending: list[list[dict]] = [[] for _ in streams]  # rows set aside: they repeated a text of their batch

    # -- taking rows -----------------------------------------------------------------------

    def _source_for_row(self, step: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 0x4D1C, step, self.exchange.index])

    def _take(self, step: int, dataset: int) -> list[dict]:
        """local_batch rows; with no_duplicates none shares a text with another row of the global batch."""
        seen = set(self.exchange.chain_wait(step, "texts") or ()) if self.no_duplicates else set()
        mixed_draws = self._source_for_row(step) if self.policy == "mixed" else None
        p = self.weights / self.weights.sum()
        rows, scanned = [], [0] * len(self.streams)
        deferred: list[list[dict]] = [[] for _ in self.streams]
        while len(rows) < self.local_batch:
            d = dataset if mixed_draws is None else int(mixed_draws.choice(len(p), p=p))
            pending = self.pending[d]
            if scanned[d] < len(pending):  # set-aside rows first, in their order, as ST's sampler does
                row = pending[scanned[d]]
                scanned[d] += 1
            else:
                row = self.streams[d].next()
            if self.no_duplicates:
                # As ST's sampler: a row is compared with the batch, not with itself (anchor == positive is kept).
                if not seen.isdisjoint(row["keys"]):
                    deferred[d].append(row)
                    if len(deferred[d]) > _MAX_DEFERRED * self.local_batch:  # a stream that keeps repeating the batch's texts
                        raise DataError(
                            f"no_duplicates: {len(deferred[d])} rows in a row repeat a text of the batch being built; the "
                            f"data has too few distinct texts for batches of {self.local_batch} rows per process. Lower "
                            "batch_size, or set data.no_duplicates=false"
                        )
                    continue
                seen.update(row["keys"])
            rows.append(row)
        for d in range(len(self.streams)):
            self.pending[d] = deferred[d] + self.pending[d][scanned[d]:]
        if self.no_duplicates and self.exchange.passes_on:
            self.exchange.chain_pass(step, "texts", list(seen))
        return rows

    # -- arrays ----------------------------------------------------------------------------

    def _arrays(self, step: int, rows: list[dict], labels: bool) -> dict:
        shape, columns = self.shape, len(rows[0]["ids"])
        column_ids = [[row["ids"][c] for row in rows] for c in range(columns)]
        column_lengths = [np.fromiter(map(len, ids), np.int64, len(rows)) for ids in column_ids]
        longest = max(int(lengths.max()) for lengths in column_lengths)
        longest = max(self.exchange.gather(step, "longest", longest))  # one bucket for the global batch
        fitting = [b for b in shape.buckets if b >= longest]
        if not fitting:
            raise DataError(f"a text has {longest} tokens, more than the largest bucket {shape.buckets[-1]}")
        length = fitting[0]
        prompted = any("prompt_length" in row for row in rows)  # prompts (per row: policy mixed mixes datasets)
        batch_columns = []
        for c, (ids_lists, lengths) in enumerate(zip(column_ids, column_lengths)):
            tokens = np.frombuffer(b"".join(ids_lists), np.intc)  # the rows' array("i")s (train/chunks.py)
            mask = np.arange(length) < lengths[:, None]
            ids = np.full((len(rows), length), shape.pad_id, np.int32)
            ids[mask] = tokens  # row by row, left to right: each row's tokens, then its padding
            batch_columns.append({"input_ids": ids, "attention_mask": mask.astype(np.int32)})
            if prompted:
                prompt_lengths = [row.get("prompt_length", [0] * columns)[c] for row in rows]
                batch_columns[-1]["prompt_length"] = np.asarray(prompt_lengths, np.int32)
        batch: dict[str, Any] = {"columns": batch_columns}
        if labels:
            batch["labels"] = np.asarray([row["label"] for row in rows], np.float32)
        if shape.packing:
            batch = self._packed(step, batch, longest)
        return batch

    def _packed(self, step: int, batch: dict, longest: int) -> dict:
        """Packs this process's sentences; all processes use one row length and row count, and each
        token_index points into the global packed rows (this process's start at index * rows)."""
        columns = batch["columns"]
        length = pack_length(longest, self.shape.buckets)
        packed, token_index = pack(
            [c["input_ids"] for c in columns], [c["attention_mask"] for c in columns], length, self.shape.row_multiple, self.shape.pad_id
        )
        local_rows = packed["input_ids"].shape[0]
        rows = max(self.exchange.gather(step, "rows", local_rows))
        if rows > local_rows:
            packed = {key: np.pad(value, ((0, rows - local_rows), (0, 0))) for key, value in packed.items()}
            packed["input_ids"][local_rows:] = self.shape.pad_id
        offset = self.exchange.index * rows * length
        if offset:  # padding keeps slot 0
            token_index = [np.where(column["attention_mask"] == 1, index + offset, 0).astype(np.int32) for column, index in zip(columns, token_index)]
        columns = [{**column, "token_index": index} for column, index in zip(columns, token_index)]
        return {**batch, "columns": columns, "packed": packed}

    # -- iterator --------------------------------------------------------------------------

    def __iter__(self):
        return self

    def __next__(self) -> tuple[int, dict, tuple[int, str]]:
        step = self.step
        dataset = choose_dataset(self.sampler, self.weights, self.seed, step) if self.policy == "one" else -1
        rows = self._take(step, max(dataset, 0))
        batch = self._arrays(step, rows, self.labels[max(dataset, 0)])
        self.step += 1
        return dataset, batch, self.skipped_report()

    def skipped_report(self) -> tuple[int, str]:
        return sum(s.skipped for s in self.streams), next((s.first_skipped for s in self.streams if s.first_skipped), "")

    def get_state(self) -> dict:
        return {
            "step": self.step,
            "streams": [stream.get_state() for stream in self.streams],
            # A string: grain's prefetch thread deep-copies the state at every batch, and a copy of a
            # string is free where one of hundreds of rows of token ids is not.
            "pending": json.dumps([[_saved_row(row) for row in rows] for rows in self.pending], separators=(",", ":")),
            "process_count": self.exchange.count,
        }

    def set_state(self, state: dict) -> None:
        self.step = state["step"]
        pending = state["pending"]
        set_aside = json.loads(pending) if isinstance(pending, str) else pending
        self.pending = [[_restored_row(row) for row in rows] for rows in set_aside]
        for stream, saved in zip(self.streams, state["streams"]):
            stream.set_state(saved)

    def close(self) -> None:
        for stream in self.streams:
            stream.close()


def _saved_row(row: dict) -> dict:
    """A row as the state's JSON holds it: each text's ids as the base64 of its C ints (half the time of lists)."""
    return {**row, "ids": [base64.b64encode(ids).decode() for ids in row["ids"]]}


def _restored_row(row: dict) -> dict:
    """The row of _saved_row (or of a state that saved ids as lists)."""
    return {**row, "ids": [array("i", base64.b64decode(ids) if isinstance(ids, str) else ids) for ids in row["ids"]]}


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    policy: str = "one"
    sampler: str = "weighted"
    no_duplicates: bool = False
    shuffle: bool = True
    shuffle_window: int = 1024
    skip_bad_records: bool = False
    workers: int = 0
    prefetch: int = 2


def mixture_weights(specs: Sequence[DatasetConfig], sampler: str, sizes: Sequence[int] | None = None) -> list[float]:
    """The datasets' weights, checked: every weight > 0 (a weight 0 or below, or all summing to 0, is an error)."""
    if sampler == "proportional":
        weights = [float(n) for n in sizes]
        empty = [spec.path for spec, n in zip(specs, weights) if n <= 0]
        if empty:
            raise DataError(f"{empty[0]}: no records, so no proportional weight")
        return weights
    weights = [float(spec.weight) for spec in specs]
    if sum(weights) <= 0:
        raise DataError(f"data.train: the mixture's weights sum to {sum(weights):g}; give each dataset a weight > 0")
    for index, (spec, weight) in enumerate(zip(specs, weights)):
        if weight <= 0:
            raise DataError(f"data.train[{index}] ({spec.path}): weight {weight:g}; weights must be > 0 (remove the dataset instead)")
    return weights


def worker_shares(weights: Sequence[float], workers: int) -> list[int]:
    """`data.workers` split over the datasets by weight (D'Hondt: each next worker to the dataset with the most
    weight per worker it would have). A dataset given none is read and tokenized in the training process:
    a mixture of D datasets starts `workers` processes, not D x workers."""
    shares = [0] * len(weights)
    for _ in range(workers):
        shares[max(range(len(weights)), key=lambda d: weights[d] / (shares[d] + 1))] += 1
    return shares


def build_pipeline(
    specs: Sequence[DatasetConfig], label_columns: Sequence[str | None], tokenizer, max_length: int, *,
    global_batch: int, shape: BatchShape, options: PipelineOptions, seed: int, process_index: int, process_count: int,
    prompts: Sequence[tuple | None] | None = None,
) -> tuple[grain.DatasetIterator, list[tuple[list[str], tuple[int, int]]]]:
    """The prefetching, checkpointable iterator of (dataset, local batch, skipped) and each dataset's (files,
    stride) on this process (sources.process_files).

    prompts: per dataset, None or (each column's prompt or None, each column's prompt length).
    """
    fewer_collections()
    prompts = list(prompts) if prompts is not None else [None] * len(specs)
    exchange = HostExchange(process_index, process_count)
    files = [shard_files(spec) for spec in specs]
    # A hub dataset is one stream that every process reads its part of (datasets' split_dataset_by_node).
    local = [(f, (0, 1)) if is_hub(spec) else process_files(f, process_index, process_count) for f, spec in zip(files, specs)]
    sizes = None
    if options.sampler == "proportional":
        mine = [count_records(spec, f, process_index, stride) for spec, (f, stride) in zip(specs, local)]
        sizes = np.sum(exchange.gather(-1, "sizes", mine), axis=0).tolist()
    weights = mixture_weights(specs, options.sampler, sizes)
    workers = worker_shares(weights, options.workers)
    local_batch = global_batch // process_count
    streams = [
        _Rows(row_chunks(
            spec, f, label, tokenizer, max_length, seed=seed + 1000 * i, shuffle=options.shuffle,
            shuffle_window=options.shuffle_window, skip_bad=options.skip_bad_records,
            with_keys=options.no_duplicates, workers=workers[i], prompts=dataset_prompts,
            process=(process_index, process_count), stride=stride, buffer_rows=2 * local_batch,
        ), workers[i], saved_without_count=options.workers)
        for i, (spec, (f, stride), label, dataset_prompts) in enumerate(zip(specs, local, label_columns, prompts))
    ]
    batches = GlobalBatches(
        streams, weights, policy=options.policy, sampler=options.sampler, seed=seed,
        local_batch=local_batch, shape=shape, no_duplicates=options.no_duplicates,
        exchange=exchange, labels=[label is not None for label in label_columns],
    )
    return grain.experimental.ThreadPrefetchDatasetIterator(batches, options.prefetch), local
