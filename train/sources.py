"""Streamed training records: the files of a dataset, this process's share of them, read lazily.

A dataset is one file or a glob of shards (jsonl, jsonl.gz, csv, tsv, parquet; .gz works for the
text formats), or a hub dataset streamed with `datasets`. Each process reads only its own files
(shard i goes to process i mod P), and each grain worker a slice of those; nothing is read
ahead of what the pipeline asks for, so host memory does not grow with the data.

`FileReader` reads one file's records a block at a time (jsonl: each line parsed by json's own
parser, the block handed line by line to json.loads where anything is unusual, so both give the
same records and errors); `check_block` checks a block column by column, and record by record
where a column is not all non-blank strings. A record missing a column, with an empty text or a
label that is not a finite number, and a file that cannot be read or decoded, is a `DataError`
naming the file, line (or row) and column; with `skip_bad_records` such records are skipped
instead and their messages returned (the pipeline counts and logs them). train/record_chunks.py
turns these into the grain source of a dataset.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import glob
import gzip
import hashlib
import io
import itertools
import json
import math
import os
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    name, which each process reads a part of (`FileReader`)."""
    if is_hub(spec):
        return [spec.path]
    files = sorted(glob.glob(spec.path)) if glob.has_magic(spec.path) else [spec.path]
    files = [f for f in files if os.path.isfile(f)]
    if not files:
        what = "no file matches" if glob.has_magic(spec.path) else "no such data file"
        raise FileNotFoundError(f"{spec.path}: {what}")
    return files


def process_files(files: list[str], process_index: int, process_count: int) -> tuple[list[str], tuple[int, int]]:
    """This process's files and its (offset, step) over their records, so that no record is read by two
    processes: with at least P files, shard i goes to process i mod P, whole; with fewer, every process
    reads every file and keeps records p, p + P, ... (jsonl: lines; the others' lines are skipped, not parsed)."""
    if len(files) >= process_count:
        return files[process_index::process_count], (0, 1)
    return list(files), (process_index, process_count)


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


def count_records(spec: DatasetConfig, files: list[str], process_index: int = 0, stride: tuple[int, int] = (0, 1)) -> int:
    """Records in `files`, of each the records (jsonl: lines) offset, offset + step, ... of `stride` (parquet: from
    its metadata; text formats: a streamed pass, memory flat); of a hub dataset, all its records for process 0
    (a streamed pass) and none for the others, whose counts are summed."""
    if is_hub(spec):
        return 0 if process_index else sum(1 for _ in _read_hub(SourceSpec.of(spec), ()))
    offset, step = stride
    total = 0
    for path in files:
        fmt = stream_format(spec, path)
        if fmt == "parquet":
            import pyarrow.parquet as pq

            total += len(range(offset, pq.ParquetFile(path).metadata.num_rows, step))
            continue
        with _open_binary(path) as f:
            if fmt == "jsonl":  # strided by lines, blank ones included (FileReader)
                total += sum(1 for line in itertools.islice(f, offset, None, step) if line.strip())
                continue
            records = sum(1 for line in f if line.strip()) - (1 if spec.header else 0)
        total += len(range(offset, records, step))
    return total


# -- reading one file ----------------------------------------------------------------------------


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


_JSON_SPACE = " \t\n\r"  # the whitespace JSON allows around a value (str.strip's would take more)
_scan_json = json.JSONDecoder().scan_once  # (value, end) of the JSON value at a string's index


def _jsonl_record(path: str, number: int, raw: bytes) -> Any:
    """One line's record, a DataError naming the line, or None for a blank line."""
    where = f"{path}, line {number}"
    try:
        text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as error:
        return DataError(f"{where}: not UTF-8 text (byte 0x{raw[error.start:error.start + 1].hex()})")
    if not text.strip():
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        return DataError(f"{where}: not valid JSON ({error.msg}); fix or remove that record")
    if not isinstance(record, dict):
        return DataError(f"{where}: expected a JSON object of columns, got {type(record).__name__}")
    return record


def _read_jsonl(path: str) -> Iterator[tuple[str, Any]]:
    with _open_binary(path) as f:
        for number, raw in enumerate(f, start=1):
            record = _jsonl_record(path, number, raw)
            if record is not None:
                yield f"{path}, line {number}", record


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


@contextlib.contextmanager
def _file_errors(path: str, fmt: str):
    """File-level damage as a DataError naming the file."""
    try:
        yield
    except (OSError, EOFError, zlib.error) as error:  # a truncated or damaged gzip, an unreadable file
        raise DataError(f"{path}: cannot be read or decoded ({type(error).__name__}: {error}); check or replace that shard") from None
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 (pyarrow raises many kinds)
        raise DataError(f"{path}: not a readable {fmt} file ({type(error).__name__}: {str(error)[:200]})") from None


def _records(spec, path: str, fmt: str, columns: list[str], parts: Sequence[tuple[int, int]]) -> Iterator[tuple[str, Any]]:
    if fmt == "hub":
        return _read_hub(spec, parts)
    if fmt == "jsonl":
        return _read_jsonl(path)
    if fmt in ("csv", "tsv"):
        return _read_delimited(path, fmt == "tsv", spec.header)
    return _read_parquet(path, columns)


def read_file(spec: DatasetConfig, path: str, columns: list[str], parts: Sequence[tuple[int, int]] = ()) -> Iterator[tuple[str, Any]]:
    """(where, raw record or DataError) for each record of one file, or of this part of a hub dataset;
    file-level damage raises DataError."""
    fmt = stream_format(spec, path)
    with _file_errors(path, fmt):
        yield from _records(spec, path, fmt, columns, parts)


@dataclasses.dataclass
class Block:
    """Raw records read together (dicts, or DataErrors for records that could not be parsed); where(i)
    names the i-th for an error message."""

    raws: list
    where: Callable[[int], str]


class FileReader:
    """One file's records (or this part of a hub dataset's), `read(n)` at a time, from `position`: the
    records consumed before (jsonl: lines, so that a restored position skips lines without parsing them).
    stride (offset, step): only records (jsonl: lines) offset, offset + step, ... are this reader's, and
    `position` counts those."""

    def __init__(self, spec, path: str, columns: list[str], parts: Sequence[tuple[int, int]], position: int,
                 stride: tuple[int, int] = (0, 1)):
        self.path, self.format, self.position, self.stride = path, stream_format(spec, path), position, stride
        offset, step = stride
        with _file_errors(path, self.format):
            self._source = _open_binary(path) if self.format == "jsonl" else _records(spec, path, self.format, columns, parts)
            self._items = itertools.islice(self._source, offset + position * step, None, step)

    def read(self, n: int) -> Block:
        """The next n records (jsonl: n lines, blank ones dropped); an empty block at the end of the file."""
        with _file_errors(self.path, self.format):
            items = list(itertools.islice(self._items, n))
        if self.format != "jsonl":
            self.position += len(items)
            return Block([raw for _, raw in items], lambda i: items[i][0])
        offset, step = self.stride
        numbers = range(offset + self.position * step + 1, offset + (self.position + len(items)) * step + 1, step)  # 1-based
        self.position += len(items)
        try:  # the usual block: a JSON object on each line, UTF-8, no blank line
            texts = [line.decode().rstrip(_JSON_SPACE) for line in items]
            parsed = [_scan_json(text, 0) for text in texts]  # json.loads' own parser, without its per-call wrapping
            if all(end == len(text) and type(raw) is dict for (raw, end), text in zip(parsed, texts)):
                return Block([raw for raw, _ in parsed], lambda i: f"{self.path}, line {numbers[i]}")
        except (UnicodeDecodeError, json.JSONDecodeError, StopIteration):  # StopIteration: no JSON value at the start
            pass
        numbered = [(number, record) for number, line in zip(numbers, items) if (record := _jsonl_record(self.path, number, line)) is not None]
        return Block([record for _, record in numbered], lambda i: f"{self.path}, line {numbered[i][0]}")

    def close(self) -> None:
        close = getattr(self._source, "close", None)
        if close:
            close()


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


def check_block(block: Block, spec, label_column: str | None, skip_bad: bool) -> tuple[list[list[str]], list[float] | None, list[str]]:
    """A block's usable records as text columns and labels (None without a label column), and the messages
    of the bad records skipped; a bad record is a DataError naming it, unless skip_bad."""
    try:  # the usual block, checked column by column: every text a non-blank string, every label a finite number
        texts = [[raw[column] for raw in block.raws] for column in spec.text_columns]
        labels = None if label_column is None else [float(raw[label_column]) for raw in block.raws]
        if all(set(map(type, column)) <= {str} and all(map(str.strip, column)) for column in texts) and (
            labels is None or all(map(math.isfinite, labels))
        ):
            return texts, None if labels is None else [label / spec.label_scale for label in labels], []
    except (KeyError, TypeError, ValueError):
        pass
    texts, labels, skipped = [[] for _ in spec.text_columns], [], []
    for i, raw in enumerate(block.raws):  # record by record, for the message naming the first bad one
        try:
            record = check_record(block.where(i), raw, spec, label_column)
        except DataError as error:
            if not skip_bad:
                raise
            skipped.append(str(error))
            continue
        for column, text in zip(texts, record["texts"]):
            column.append(text)
        labels.append(record["label"])
    return texts, None if label_column is None else labels, skipped


# -- what the grain source needs of a dataset's config ------------------------------------------


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
