"""Streamed training records: the files of a dataset, this process's share of them, read lazily.

A dataset is one file or a glob of shards (jsonl, jsonl.gz, csv, tsv, parquet; .gz works for the
text formats), or a hub dataset streamed with `datasets`. Each process reads only its own files
(shard i goes to process i mod P), and each grain worker a slice of those; nothing is read
ahead of what the pipeline asks for, so host memory does not grow with the data.

`RecordSource` is a grain IterDataset of checked records {"texts": [...], "label": float|None}:
a record missing a column, with an empty text or a label that is not a finite number, and a file
that cannot be read or decoded, is a `DataError` naming the file, line (or row) and column; with
`skip_bad_records` such records are skipped instead, and each record carries the ones skipped
before it (the pipeline counts and logs them). The iterator's state (epoch, file, records
consumed in that file) is a small JSON dict, so grain checkpoints it with the model.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import gzip
import hashlib
import io
import json
import math
import os
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grain
import numpy as np

if TYPE_CHECKING:  # the config module loads flaxenc (jax, torch); grain's worker processes need none of it
    from flaxenc_train.config import DatasetConfig

# Records each process read from each file, for tests and the "records read" log line.
RECORDS_READ: Counter = Counter()

_TEXT_FORMATS = ("jsonl", "json", "csv", "tsv")


class DataError(ValueError):
    """A training record or file that cannot be used; the message names the file, line and column."""


def stream_format(spec: DatasetConfig, path: str) -> str:
    """jsonl, csv, tsv, parquet or hub for one file (a trailing .gz is looked through)."""
    if is_hub(spec):
        return "hub"
    fmt = spec.format.lower()
    if fmt:
        return {"json": "jsonl"}.get(fmt, fmt)
    name = path.lower().removesuffix(".gz")
    for suffix, kind in ((".jsonl", "jsonl"), (".json", "jsonl"), (".csv", "csv"), (".tsv", "tsv"), (".txt", "tsv"), (".parquet", "parquet")):
        if name.endswith(suffix):
            return kind
    raise DataError(f"{path}: cannot tell the format from the extension; set format (jsonl, csv, tsv, parquet)")


def is_hub(spec: DatasetConfig) -> bool:
    """A hub dataset name: format hub, or a path that names no file and has no glob or extension."""
    if spec.format.lower() == "hub":
        return True
    if spec.format or glob.has_magic(spec.path) or os.path.exists(spec.path):
        return False
    return not Path(spec.path).suffix


def shard_files(spec: DatasetConfig) -> list[str]:
    """The dataset's files, sorted: every process sees the same list. A hub dataset is one stream, its
    name, which each process reads a part of (`RecordSource`)."""
    if is_hub(spec):
        return [spec.path]
    files = sorted(glob.glob(spec.path)) if glob.has_magic(spec.path) else [spec.path]
    files = [f for f in files if os.path.isfile(f)]
    if not files:
        what = "no file matches" if glob.has_magic(spec.path) else "no such data file"
        raise FileNotFoundError(f"{spec.path}: {what}")
    return files


def process_files(files: list[str], process_index: int, process_count: int, where: str) -> list[str]:
    """This process's files: shard i to process i mod P, so no record is read by two processes."""
    if len(files) < process_count:
        raise DataError(
            f"{where}: {len(files)} file(s) for {process_count} processes; each process reads its own files, so split "
            f"the data into at least {process_count} shards (e.g. {Path(files[0]).name.split('.')[0]}-00000-of-0000{process_count}.jsonl.gz)"
        )
    return files[process_index::process_count]


def data_fingerprint(spec: DatasetConfig) -> str:
    """What a resumed run compares: the files' names and sizes and a sha256 of each one's first and last MiB
    (hashing all of a large corpus would take minutes); a hub dataset by its name."""
    if is_hub(spec):
        return f"hub:{spec.path}:{spec.name}:{spec.split}"
    digest = hashlib.sha256()
    for path in shard_files(spec):
        size = os.path.getsize(path)
        digest.update(f"{Path(path).name}\x1f{size}\x1f".encode())
        with open(path, "rb") as f:
            digest.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(size - (1 << 20))
                digest.update(f.read())
    return f"sha256:{digest.hexdigest()}"


def count_records(spec: DatasetConfig, files: list[str], process_index: int = 0) -> int:
    """Records in `files` (parquet: from its metadata; text formats: a streamed pass, memory flat); of a hub
    dataset, all its records for process 0 (a streamed pass) and none for the others, whose counts are summed."""
    if is_hub(spec):
        return 0 if process_index else sum(1 for _ in _read_hub(SourceSpec.of(spec), ()))
    total = 0
    for path in files:
        fmt = stream_format(spec, path)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(path).metadata.num_rows
            continue
        with _open_binary(path) as f:
            lines = sum(1 for line in f if line.strip())
        total += lines - (1 if fmt in ("csv", "tsv") and spec.header else 0)
    return total


# -- reading one file ----------------------------------------------------------------------------


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _read_jsonl(path: str) -> Iterator[tuple[str, Any]]:
    with _open_binary(path) as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}, line {number}"
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                yield where, DataError(f"{where}: not UTF-8 text (byte 0x{raw[error.start:error.start + 1].hex()})")
                continue
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                yield where, DataError(f"{where}: not valid JSON ({error.msg}); fix or remove that record")
                continue
            if not isinstance(record, dict):
                yield where, DataError(f"{where}: expected a JSON object of columns, got {type(record).__name__}")
                continue
            yield where, record


def _read_delimited(path: str, tsv: bool, header: bool) -> Iterator[tuple[str, Any]]:
    # As train/data.py: tsv with quoting off (STS-B and MRPC hold unbalanced quotes), utf-8-sig
    # for MRPC's BOM, extra trailing columns dropped.
    options = dict(delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else {}
    with _open_binary(path) as raw:
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""), **options)
        names = None
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as error:
                raise DataError(f"{path}, near line {reader.line_num + 1}: not UTF-8 text ({error.reason})") from None
            except csv.Error as error:
                raise DataError(f"{path}, line {reader.line_num}: not readable as {'tsv' if tsv else 'csv'} ({error})") from None
            if not row:
                continue
            if names is None:
                names = row if header else [str(i) for i in range(len(row))]
                if header:
                    continue
            where = f"{path}, line {reader.line_num}"
            yield where, {name: row[i] for i, name in enumerate(names) if i < len(row)}


def _read_parquet(path: str, columns: list[str]) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    present = [c for c in columns if c in parquet.schema_arrow.names]
    number = 0
    for batch in parquet.iter_batches(batch_size=1024, columns=present):
        for record in batch.to_pylist():
            yield f"{path}, row {number}", record
            number += 1


def _read_hub(spec: SourceSpec, parts: Sequence[tuple[int, int]]) -> Iterator[tuple[str, Any]]:
    """A hub dataset's split, streamed with `datasets`; each (rank, world) of `parts` (process, then
    grain worker) keeps its share: whole shards where they divide evenly, else every world-th record."""
    import datasets
    from datasets.distributed import split_dataset_by_node

    stream = datasets.load_dataset(spec.path, spec.name, split=spec.split, streaming=True)
    for rank, world in parts:
        if world > 1:
            stream = split_dataset_by_node(stream, rank=rank, world_size=world)
    for number, record in enumerate(stream, 1):
        yield f"{spec.path} ({spec.split}), record {number}", record


def read_file(spec: DatasetConfig, path: str, columns: list[str], parts: Sequence[tuple[int, int]] = ()) -> Iterator[tuple[str, Any]]:
    """(where, raw record or DataError) for each record of one file, or of this part of a hub dataset;
    file-level damage raises DataError."""
    fmt = stream_format(spec, path)
    try:
        if fmt == "hub":
            yield from _read_hub(spec, parts)
        elif fmt == "jsonl":
            yield from _read_jsonl(path)
        elif fmt in ("csv", "tsv"):
            yield from _read_delimited(path, fmt == "tsv", spec.header)
        else:
            yield from _read_parquet(path, columns)
    except (OSError, EOFError, zlib.error) as error:  # a truncated or damaged gzip, an unreadable file
        raise DataError(f"{path}: cannot be read or decoded ({type(error).__name__}: {error}); check or replace that shard") from None
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 (pyarrow raises many kinds)
        raise DataError(f"{path}: not a readable {fmt} file ({type(error).__name__}: {str(error)[:200]})") from None


def check_record(where: str, raw: Any, spec: DatasetConfig, label_column: str | None) -> dict:
    """{"texts", "label"} of a raw record, or a DataError naming `where` and the column."""
    if isinstance(raw, DataError):
        raise raw
    texts = []
    for column in spec.text_columns:
        if column not in raw:
            shown = ", ".join(map(repr, raw)) or "none"
            raise DataError(f"{where}: no column {column!r} (the record has {shown})")
        value = raw[column]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise DataError(f"{where}: no text in column {column!r}")
        value = value if isinstance(value, str) else str(value)
        if not value.strip():
            raise DataError(f"{where}: empty text in column {column!r}")
        texts.append(value)
    label = None
    if label_column is not None:
        if label_column not in raw:
            raise DataError(f"{where}: no label column {label_column!r} (the record has {', '.join(map(repr, raw))})")
        try:
            label = float(raw[label_column])
        except (TypeError, ValueError):
            label = math.nan
        if not math.isfinite(label):
            raise DataError(f"{where}: label {raw[label_column]!r} in column {label_column!r} is not a finite number")
        label /= spec.label_scale
    return {"texts": texts, "label": label}


# -- the grain source ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """What reading a dataset's records needs of its DatasetConfig: sent to grain's worker processes
    in its place, so that a worker imports this module and grain, not the config (which loads flaxenc)."""

    path: str
    format: str
    header: bool
    text_columns: Sequence[str]
    label_scale: float
    name: str | None = None
    split: str = "train"

    @classmethod
    def of(cls, spec) -> SourceSpec:
        return cls(spec.path, spec.format, spec.header, tuple(spec.text_columns), spec.label_scale, spec.name, spec.split)


class RecordSource(grain.IterDataset):
    """Checked records of this process's files, epoch after epoch (file order reshuffled each epoch)."""

    def __init__(self, spec: DatasetConfig, files: list[str], label_column: str | None, seed: int, shuffle: bool, skip_bad: bool,
                 process: tuple[int, int] = (0, 1)):
        """process: (index, count), for a hub dataset, which every process streams its part of."""
        super().__init__()
        self.spec, self.files, self.label_column = SourceSpec.of(spec), list(files), label_column
        self.seed, self.shuffle, self.skip_bad = seed, shuffle, skip_bad
        self.hub = is_hub(spec)
        self.parts = [process] if self.hub else []

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """grain's worker processes: worker w of W reads files w, w + W, ... of this process's (of a hub
        dataset, its part of this process's stream)."""
        if self.hub:
            self.parts = [*self.parts, (sl.start or 0, sl.step or 1)]
            return
        sliced = self.files[sl]
        if not sliced:
            raise DataError(f"{self.spec.path}: fewer files ({len(self.files)}) on this process than data.workers; lower workers or split the data")
        self.files = sliced

    def __iter__(self) -> _RecordIterator:
        return _RecordIterator(self)

    def __str__(self) -> str:
        return f"RecordSource({self.spec.path})"


class _RecordIterator(grain.DatasetIterator):
    def __init__(self, source: RecordSource):
        super().__init__()
        self._source = source
        self._state = {"epoch": 0, "file": 0, "record": 0}
        self._records: Iterator | None = None

    def _order(self, epoch: int) -> list[str]:
        files = self._source.files
        if not self._source.shuffle:
            return files
        return [files[i] for i in np.random.default_rng([self._source.seed, epoch]).permutation(len(files))]

    def _open(self) -> None:
        path = self._order(self._state["epoch"])[self._state["file"]]
        columns = [*self._source.spec.text_columns, *([self._source.label_column] if self._source.label_column else [])]
        self._records = read_file(self._source.spec, path, columns, self._source.parts)
        for _ in range(self._state["record"]):  # a restored position: skip what was consumed
            next(self._records)

    def __next__(self) -> dict:
        skipped, wraps = [], 0
        while True:
            if self._records is None:
                self._open()
            try:
                where, raw = next(self._records)
            except StopIteration:
                self._records = None
                state = self._state
                state["file"], state["record"] = state["file"] + 1, 0
                if state["file"] == len(self._source.files):
                    state["epoch"], state["file"] = state["epoch"] + 1, 0
                    wraps += 1
                    if wraps == 2:  # a whole pass over the files without one usable record
                        raise DataError(f"{self._source.spec.path}: no usable record in {', '.join(self._source.files)}") from None
                continue
            self._state["record"] += 1
            RECORDS_READ[where.rsplit(", ", 1)[0]] += 1
            try:
                record = check_record(where, raw, self._source.spec, self._source.label_column)
            except DataError as error:
                if not self._source.skip_bad:
                    raise
                skipped.append(str(error))
                continue
            record["skipped"] = skipped
            return record

    def get_state(self) -> dict:
        return dict(self._state)

    def set_state(self, state: dict) -> None:
        self._state = dict(state)
        self._records = None
