"""The run's training input, as the loop sees it: one table in memory, or streamed datasets.

Both give `batches(start_micro_step)`: (step in epoch, loss index, this process's batch) from that
micro-step on. A table (`TableInput`) is read, tokenized and cached once and ordered by a
permutation of (seed, epoch) (train/data.py); its position is a function of the step. Streamed
datasets (`StreamInput`, train/pipeline.py) carry their position in a grain iterator, which
the checkpoints save (`checkpoint_item`).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import datasets
import jax

from flaxenc.encoder import SentenceEncoder, sequence_buckets
from flaxenc_train.config import ConfigError, DatasetConfig, TrainConfig
from flaxenc_train.data import (
    BatchIterator,
    check_label_range,
    file_sha256,
    load_table,
    save_tokens,
    token_cache_path,
    tokenize_table,
)
from flaxenc_train.exchange import HostExchange
from flaxenc_train.pipeline import BatchShape, PipelineOptions, build_pipeline, mixture_weights
from flaxenc_train.prompts import check_prompts, column_prompts, prompt_lengths, with_prompts
from flaxenc_train.sources import count_records, data_fingerprint

logger = logging.getLogger(__name__)


def datasets_of(config: TrainConfig) -> tuple[DatasetConfig, ...]:
    train = config.data.train
    return train if isinstance(train, tuple) else (train,)


def is_streamed(config: TrainConfig) -> bool:
    """data.streaming, or by default: a list of datasets, a glob of shards or a .gz file."""
    if config.data.streaming is not None:
        return config.data.streaming
    train = config.data.train
    return isinstance(train, tuple) or glob.has_magic(train.path) or train.path.endswith(".gz")


def loss_key(config: TrainConfig, spec: DatasetConfig) -> str:
    """The loss a dataset trains with (its own, else the run's), as a comparable key."""
    loss = spec.loss or config.loss
    return json.dumps(dataclasses.asdict(loss), sort_keys=True, default=str)


class StreamInput:
    """Streamed, per-process sharded, mixed datasets; the position lives in `checkpoint_item`."""

    def __init__(self, config: TrainConfig, encoder: SentenceEncoder, losses: Sequence, loss_index: Sequence[int],
                 no_duplicates: bool, devices: int):
        self.config, self.specs = config, datasets_of(config)
        self.loss_index = list(loss_index)
        self._check(config, losses, devices)
        self.no_duplicates = no_duplicates
        self.drop_last = True
        self.rows = None  # unknown: records are read as the run goes
        self.skipped = (0, "")
        processes = jax.process_count()
        shape = BatchShape(
            sequence_buckets(encoder.max_seq_length), encoder.tokenizer.pad_token_id or 0, config.data.packing,
            jax.local_device_count() if config.devices == 0 else devices,
        )
        data = config.data
        options = PipelineOptions(
            policy=data.policy, sampler=data.sampler, no_duplicates=no_duplicates, shuffle=data.shuffle,
            shuffle_window=data.shuffle_window, skip_bad_records=data.skip_bad_records, workers=data.workers,
            prefetch=data.prefetch,
        )
        labels = [spec.label_column if loss.takes_labels else None for spec, loss in zip(self.specs, (losses[i] for i in loss_index))]
        prompts = [column_prompts(config, spec) for spec in self.specs]
        self.iterator, self.files = build_pipeline(
            self.specs, labels, encoder.tokenizer, encoder.max_seq_length, global_batch=config.batch_size, shape=shape,
            options=options, seed=config.seed, process_index=jax.process_index(), process_count=processes,
            prompts=[(p, prompt_lengths(encoder, p)) if any(p) else None for p in prompts],
        )
        if config.max_steps:
            self.steps_per_epoch = max(1, config.max_steps * config.optimizer.accumulation_steps)
        else:  # one dataset: an epoch is its records over the batch, counted (each process its own files)
            self.rows = self._count_records(processes)
            self.steps_per_epoch = max(1, self.rows // config.batch_size)

    def _count_records(self, processes: int) -> int:
        """The dataset's records over all processes (parquet from metadata; text formats with one pass; a hub
        dataset with one pass on process 0)."""
        (spec,), ((files, stride),) = self.specs, self.files
        mine = count_records(spec, files, jax.process_index(), stride)
        logger.info("%s: %d records in this process's %d file(s)", spec.path, mine, len(files))
        return int(sum(HostExchange(jax.process_index(), processes, namespace="flaxenc-count").gather(-1, "records", mine)))

    def _check(self, config: TrainConfig, losses: Sequence, devices: int) -> None:
        check_prompts(config)
        if not config.max_steps and len(self.specs) > 1:
            raise ConfigError("max_steps: a mixture of streamed datasets has no epoch length; set max_steps")
        processes = jax.process_count()
        if config.batch_size % (processes * max(1, devices // processes)):
            raise ConfigError(f"batch_size: {config.batch_size} does not split evenly over {devices} devices of {processes} process(es)")
        if config.data.sampler != "proportional":
            mixture_weights(self.specs, config.data.sampler)  # a weight <= 0: an error now, before anything is read
        for index, spec in enumerate(self.specs):
            loss = losses[self.loss_index[index]]
            if loss.takes_labels and spec.label_column is None:
                raise ConfigError(f"data.train[{index}].label_column: its loss needs labels")
        if config.data.policy == "mixed":
            if len(set(self.loss_index)) > 1:
                raise ConfigError("data.policy: mixed batches hold rows of several datasets, so they need one loss; use policy one")
            if len({len(spec.text_columns) for spec in self.specs}) > 1:
                raise ConfigError("data.policy: mixed batches need the same number of text columns in every dataset")

    def fingerprint(self) -> str:
        return ";".join(data_fingerprint(spec) for spec in self.specs)

    @property
    def checkpoint_item(self):
        return self.iterator

    def batches(self, start_micro_step: int) -> Iterator[tuple[int, int, dict]]:
        """(step in epoch, loss index, batch) from the iterator's position (restored from a checkpoint, or the start)."""
        for micro in range(start_micro_step, 1 << 62):
            dataset, batch, self.skipped = next(self.iterator)
            yield micro, self.loss_index[max(dataset, 0)], batch

    def close(self) -> None:
        self.iterator.close()


class TableInput:
    """One table read into memory, tokenized once (cached in output_dir/cache), batched by BatchIterator."""

    def __init__(self, config: TrainConfig, encoder: SentenceEncoder, loss, devices: int, cache_dir: Path):
        spec = config.data.train
        if loss.takes_labels and spec.label_column is None:
            raise ConfigError(f"data.train.label_column: loss {config.loss.name!r} needs labels")
        check_prompts(config)
        table = load_table(spec if loss.takes_labels else dataclasses.replace(spec, label_column=None))
        check_label_range(table, spec, loss.label_range, config.loss.name)
        prompts = column_prompts(config, spec)
        if any(prompts):  # prepended before tokenizing; the token cache is keyed by the prompted texts
            columns = {name: table[name][:] for name in table.column_names}
            columns.update({name: with_prompts(columns[name], p) for name, p in zip(spec.text_columns, prompts)})
            table = datasets.Dataset.from_dict(columns, features=table.features)
        cache_key = _tokenizer_key(encoder)
        # Read the token cache only: nothing is written before every check has passed (write_cache()).
        self.data = tokenize_table(table, encoder.tokenize, spec.text_columns, cache_dir, cache_key, write_cache=False)
        self._token_cache = token_cache_path(table, spec.text_columns, cache_dir, cache_key)
        self.spec, self.rows, self.skipped, self.checkpoint_item = spec, len(self.data), (0, ""), None
        remainder = len(self.data) % config.batch_size
        # A short last batch must still split evenly over the devices; otherwise drop it.
        drop_last = config.data.drop_last or (remainder % devices != 0)
        if config.batch_size % devices:
            raise ConfigError(f"batch_size: {config.batch_size} does not split evenly over {devices} devices")
        self.batch_iterator = BatchIterator(
            self.data, config.batch_size, sequence_buckets(encoder.max_seq_length), encoder.tokenizer.pad_token_id or 0,
            config.seed, shuffle=config.data.shuffle, drop_last=drop_last, process_index=jax.process_index(),
            process_count=jax.process_count(), packing=config.data.packing, row_multiple=devices,
            prompt_lengths=prompt_lengths(encoder, prompts),
        )
        self.steps_per_epoch, self.drop_last = self.batch_iterator.steps_per_epoch, self.batch_iterator.drop_last
        self._open = None

    def fingerprint(self) -> str:
        """A sha256 of a local file's bytes, else the hub name."""
        if os.path.isfile(self.spec.path):
            return f"sha256:{file_sha256(self.spec.path)}"
        return f"hub:{self.spec.path}"

    def write_cache(self) -> None:
        if not self._token_cache.is_file():
            save_tokens(self.data, self._token_cache)

    def batches(self, start_micro_step: int) -> Iterator[tuple[int, int, dict]]:
        self._open = self.batch_iterator.batches(*divmod(start_micro_step, self.steps_per_epoch))
        for _, in_epoch, batch in self._open:
            yield in_epoch, 0, batch

    def close(self) -> None:
        if self._open is not None:
            self._open.close()


def _tokenizer_key(encoder: SentenceEncoder) -> str:
    """Names the tokenization exactly: the tokenizer's full definition and the truncation length."""
    definition = encoder.tokenizer.backend_tokenizer.to_str()
    return hashlib.sha256(f"{definition}\x1f{encoder.max_seq_length}".encode()).hexdigest()
