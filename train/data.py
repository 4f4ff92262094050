"""The host input pipeline: a table of examples -> token ids (once, cached) -> bucketed numpy batches.

load_table reads a local csv/tsv/json/jsonl/parquet file or a hub dataset into a `datasets.Dataset`
of text columns (+ "label"); tokenize_table turns it into flat int32 id arrays; BatchIterator pads
deterministic, resumable, per-process batches on a background thread while the device trains.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import queue
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import datasets
import numpy as np

from flaxenc.packing import pack_batch
from flaxenc_train.config import DatasetConfig

_FORMATS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _file_format(spec: DatasetConfig) -> str:
    """csv, tsv, json, parquet or hub; jsonl reads with the json builder."""
    fmt = spec.format.lower()
    if fmt:
        if fmt not in ("csv", "tsv", "json", "jsonl", "parquet", "hub"):
            raise ValueError(f"{spec.path}: unknown format {spec.format!r} (csv, tsv, json, jsonl, parquet or hub)")
        return "json" if fmt == "jsonl" else fmt
    suffix = Path(spec.path).suffix.lower()
    if suffix in _FORMATS:
        return _FORMATS[suffix]
    if os.path.isfile(spec.path):
        raise ValueError(f"{spec.path}: cannot tell the format from the extension; set format (csv, tsv, ...)")
    return "hub"  # not a file and no file extension: a hub name like "sentence-transformers/stsb"


def _read_delimited(path: str, tsv: bool, header: bool) -> datasets.Dataset:
    # Read with Python, not load_dataset("csv"): pandas rejects rows longer than the first one
    # (STS-B has lines with two extra trailing columns), and tsv must be read with quoting off
    # (STS-B and MRPC sentences contain unbalanced quote characters). utf-8-sig drops MRPC's BOM.
    options = dict(delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else {}
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = [row for row in csv.reader(f, **options) if row]  # blank lines carry no example
    except UnicodeDecodeError as error:
        raise ValueError(_not_utf8(path, error)) from None
    except csv.Error as error:
        raise ValueError(f"{path}: not a readable {'tsv' if tsv else 'csv'} file ({error}); check the format and quoting") from None
    if not rows:
        raise ValueError(f"{path}: the file is empty")
    names = rows.pop(0) if header else [str(i) for i in range(len(rows[0]))]
    for line, row in enumerate(rows, start=2 if header else 1):
        if len(row) < len(names):
            raise ValueError(f"{path}, line {line}: {len(row)} columns, expected {len(names)} ({', '.join(names)})")
    # Extra trailing columns past the header's (or first row's) width are dropped.
    return datasets.Dataset.from_dict({name: [row[i] for row in rows] for i, name in enumerate(names)})


def _not_utf8(path: str, error: UnicodeDecodeError) -> str:
    """A one-line message naming the file, the first line that is not UTF-8 and how to convert it."""
    line = None
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as found:
                line, error = number, found
                break
    where = f"{path}, line {line}" if line else path
    byte = error.object[error.start : error.start + 1].hex()
    return (
        f"{where}: not UTF-8 text (byte 0x{byte}); data files must be UTF-8: convert it, e.g. "
        f"`iconv -f latin1 -t utf-8 {Path(path).name} > {Path(path).stem}.utf8{Path(path).suffix}`"
    )


def _json_problem(path: str) -> str:
    """Where a json/jsonl file stops parsing: its first bad line (jsonl) or position (json)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        return _not_utf8(path, error)
    stripped = text.lstrip()
    if stripped.startswith("[") or (stripped.startswith("{") and "\n{" not in stripped):
        try:
            json.loads(text)
        except json.JSONDecodeError as error:
            return f"{path}, line {error.lineno}: not valid JSON ({error.msg}); fix or remove that record"
    for line, raw in enumerate(text.splitlines(), start=1):
        if raw.strip():
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as error:
                return f"{path}, line {line}: not valid JSON ({error.msg}); fix or remove that record (a truncated write?)"
            if not isinstance(record, dict):
                return f"{path}, line {line}: expected a JSON object of columns, got {type(record).__name__}"
    return ""


def _load_file(path: str, fmt: str) -> datasets.Dataset:
    """datasets' json or parquet reader; its errors become one line naming the file (and line)."""
    verbosity, bars = datasets.logging.get_verbosity(), datasets.utils.are_progress_bars_disabled()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its reader logs the failure itself
    datasets.utils.disable_progress_bars()
    try:
        return datasets.load_dataset(fmt, data_files=path, split="train")
    except Exception as error:  # noqa: BLE001 (datasets and pyarrow raise many kinds)
        problem = _json_problem(path) if fmt == "json" else ""
        if not problem:
            reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
            problem = f"{path}: not a readable {fmt} file ({reason}); check that it is a complete {fmt} file"
        raise ValueError(problem) from None
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not bars:
            datasets.utils.enable_progress_bars()


def file_sha256(path: str) -> str:
    """A sha256 of a file's bytes: the data fingerprint a resumed run is compared by."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_hub(spec: DatasetConfig) -> datasets.Dataset:
    try:
        return datasets.load_dataset(spec.path, spec.name, split=spec.split)
    except Exception as error:
        variables = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
        offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in variables)
        raise ValueError(
            f"{spec.path!r} is not a local file, and loading it from the Hugging Face hub failed"
            f"{' (offline mode: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)' if offline else ''}: the hub could not "
            f"be reached, or has no such dataset, name or split ({type(error).__name__}: {str(error)[:300]}). "
            "Download it while online, or point `path` at a local csv, tsv, json, jsonl or parquet file."
        ) from error


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def load_table(spec: DatasetConfig) -> datasets.Dataset:
    """The examples of `spec` as a Dataset: its text columns (str), plus "label" (float32 / label_scale)."""
    fmt = _file_format(spec)
    if fmt != "hub" and not os.path.isfile(spec.path):
        raise FileNotFoundError(f"{spec.path}: no such data file")
    if fmt == "hub":
        table = _load_hub(spec)
    elif fmt in ("csv", "tsv"):
        table = _read_delimited(spec.path, fmt == "tsv", spec.header)
    else:
        table = _load_file(spec.path, fmt)
    where = f"{spec.path}" + (f" ({spec.name}, {spec.split})" if fmt == "hub" else "")
    if len(set(spec.text_columns)) != len(spec.text_columns) or not spec.text_columns:
        raise ValueError(f"{where}: text_columns must name one or more distinct columns, got {spec.text_columns}")
    wanted = [*spec.text_columns, *([spec.label_column] if spec.label_column is not None else [])]
    for column in wanted:
        if column not in table.column_names:
            hint = " (is it tab-separated? set format: tsv)" if fmt == "csv" and len(table.column_names) == 1 else ""
            existing = ", ".join(map(repr, table.column_names))
            raise ValueError(f"{where}: no column {column!r}; the columns are {existing}{hint}")
    if spec.limit > 0:
        table = table.select(range(min(spec.limit, len(table))))
    if len(table) == 0:
        raise ValueError(f"{where}: the table has no rows")

    columns = {}
    for column in spec.text_columns:
        values = table[column][:]  # a list; iterating a datasets Column row by row is slow
        for row, value in enumerate(values):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                raise ValueError(f"{where}: row {row} has no text in column {column!r}")
        columns[column] = [value if isinstance(value, str) else str(value) for value in values]
    features = {column: datasets.Value("string") for column in columns}
    if spec.label_column is not None:
        values = table[spec.label_column][:]
        try:
            labels = np.asarray(values, dtype=np.float64)  # parses csv/tsv strings too; None -> nan
        except (TypeError, ValueError):
            labels = np.asarray([_number(value) for value in values])
        bad = np.flatnonzero(~np.isfinite(labels))
        if len(bad):
            row = int(bad[0])
            kind = "an infinite" if np.isinf(labels[row]) else "no numeric"
            raise ValueError(f"{where}: row {row} has {kind} label in {spec.label_column!r}: {values[row]!r}")
        columns["label"] = (labels / spec.label_scale).astype(np.float32)
        features["label"] = datasets.Value("float32")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def check_label_range(table: datasets.Dataset, spec: DatasetConfig, label_range, loss_name: str) -> None:
    """Labels (after label_scale) outside what the loss expects: a ValueError naming the row and label_scale."""
    if label_range is None or "label" not in table.column_names:
        return
    labels = np.asarray(table["label"][:], np.float64)
    if isinstance(label_range, (set, frozenset)):
        outside = ~np.isin(labels, sorted(label_range))
        expected = " or ".join(f"{value:g}" for value in sorted(label_range))
    else:
        low, high = label_range
        tolerance = 1e-6 * max(1.0, abs(low), abs(high))  # labels are float32 after scaling
        outside = (labels < low - tolerance) | (labels > high + tolerance)
        expected = f"in {low:g}..{high:g}"
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        scaled = f" (after label_scale {spec.label_scale:g})" if spec.label_scale != 1 else ""
        raise ValueError(
            f"{spec.path}: row {row} has label {labels[row]:g}{scaled} in {spec.label_column!r}; loss {loss_name!r} "
            f"expects labels {expected} ({int(outside.sum())} rows are outside). Scale the labels with "
            f"data.train.label_scale (e.g. 5.0 maps STS-B's 0..5 scores onto 0..1) or choose another loss"
        )


@dataclasses.dataclass(frozen=True)
class TokenizedTable:
    """Token ids of every row, one flat int32 array + offsets per text column (row i is ids[o[i]:o[i+1]])."""

    columns: tuple[str, ...]
    ids: tuple[np.ndarray, ...]  # per column: int32 [total tokens]
    offsets: tuple[np.ndarray, ...]  # per column: int64 [n + 1]
    labels: np.ndarray | None  # float32 [n]

    def __len__(self) -> int:
        return len(self.offsets[0]) - 1

    def lengths(self, column: int) -> np.ndarray:
        return np.diff(self.offsets[column])

    def row(self, column: int, index: int) -> np.ndarray:
        return self.ids[column][self.offsets[column][index] : self.offsets[column][index + 1]]


def _text_fingerprint(table: datasets.Dataset, text_columns: Sequence[str]) -> str:
    """A hash of the text columns' contents (hashing is much cheaper than tokenizing)."""
    digest = hashlib.sha256(repr(tuple(text_columns)).encode())
    for column in text_columns:
        for start in range(0, len(table), 10_000):
            texts = table[column][start : start + 10_000]
            digest.update(f"{len(texts)}\x1e".encode() + "\x1f".join(texts).encode())
    return digest.hexdigest()


def tokenize_table(
    table: datasets.Dataset,
    tokenize: Callable[[list[str]], list[list[int]]],
    text_columns: Sequence[str],
    cache_dir: str | os.PathLike | None = None,
    cache_key: str = "",
    write_cache: bool = True,
) -> TokenizedTable:
    """Token ids of `text_columns`, tokenized once; with cache_dir, saved there and reused on reruns.

    cache_key names the tokenizer (its name or a hash of it, plus max_seq_length): the cache file is
    keyed by it and by a hash of the texts, so another tokenizer or other data never reads a stale file.
    write_cache=False only reads the cache; `save_tokens(tokens, token_cache_path(...))` writes it later.
    """
    text_columns = tuple(text_columns)
    labels = np.asarray(table["label"][:], np.float32) if "label" in table.column_names else None
    path = None
    if cache_dir is not None:
        path = token_cache_path(table, text_columns, cache_dir, cache_key)
        if path.is_file():
            with np.load(path) as cached:
                ids = tuple(cached[f"ids{i}"] for i in range(len(text_columns)))
                offsets = tuple(cached[f"offsets{i}"] for i in range(len(text_columns)))
            return TokenizedTable(text_columns, ids, offsets, labels)

    def tokenize_batch(*texts):
        return {f"{column}.ids": tokenize(list(column_texts)) for column, column_texts in zip(text_columns, texts)}

    features = datasets.Features({f"{c}.ids": datasets.List(datasets.Value("int32")) for c in text_columns})
    mapped = table.map(
        tokenize_batch, batched=True, input_columns=list(text_columns), remove_columns=table.column_names,
        features=features, keep_in_memory=True, new_fingerprint=uuid.uuid4().hex, desc="Tokenizing",
    )  # in memory, never in datasets' own cache: the npz above is the cache, keyed by content
    ids, offsets = [], []
    for column in text_columns:
        lists = mapped.data.column(f"{column}.ids").combine_chunks()  # a pyarrow ListArray: no per-row Python
        ids.append(np.asarray(lists.flatten(), dtype=np.int32))
        offsets.append(np.concatenate([[0], np.cumsum(np.asarray(lists.value_lengths(), dtype=np.int64))]))
    result = TokenizedTable(text_columns, tuple(ids), tuple(offsets), labels)
    if path is not None and write_cache:
        save_tokens(result, path)
    return result


def token_cache_path(
    table: datasets.Dataset, text_columns: Sequence[str], cache_dir: str | os.PathLike, cache_key: str
) -> Path:
    """The cache file of these texts under this tokenizer (cache_key)."""
    if not cache_key:
        raise ValueError("tokenize_table: a cache_dir needs a cache_key naming the tokenizer and max_seq_length")
    key = hashlib.sha256(f"{cache_key}\x1f{_text_fingerprint(table, tuple(text_columns))}".encode()).hexdigest()[:24]
    return Path(cache_dir) / f"tokens-{key}.npz"


def save_tokens(tokens: TokenizedTable, path: Path) -> None:
    """Writes the token cache file, then renames it into place: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp.npz")
    arrays = {f"ids{i}": a for i, a in enumerate(tokens.ids)} | {f"offsets{i}": o for i, o in enumerate(tokens.offsets)}
    np.savez(partial, **arrays)
    os.replace(partial, path)


class BatchIterator:
    """Deterministic, resumable, padded batches of a TokenizedTable, filled on a background thread.

    batch_size is the global batch; process p of process_count yields rows [p*b/P, (p+1)*b/P) of
    each global batch, padded to the global batch's bucket so every process builds the same shape.
    Without drop_last the epoch's last batch keeps its real size (rows copied to fill it would
    change the loss), which costs one more compiled program, and with several processes or
    devices its size must still split evenly over them: set drop_last when it does not.
    packing: each batch's sentences also packed into shared rows (flaxenc.packing.pack_batch),
    a multiple of row_multiple (the device count of all processes) of them. Every process holds
    the table, so each packs the whole global batch alike and keeps its share of the packed rows;
    its sentences' token_index points into the global rows, wherever they were placed.
    """

    def __init__(
        self,
        data: TokenizedTable,
        batch_size: int,
        buckets: tuple[int, ...],
        pad_id: int,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = False,
        process_index: int = 0,
        process_count: int = 1,
        prefetch: int = 2,
        packing: bool = False,
        row_multiple: int = 1,
        prompt_lengths: Sequence[int] | None = None,
    ):
        if batch_size < 1 or batch_size % process_count:
            raise ValueError(f"batch_size {batch_size} must be a positive multiple of process_count {process_count}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
        self.data, self.batch_size, self.buckets = data, batch_size, tuple(sorted(buckets))
        self.pad_id, self.seed, self.shuffle, self.drop_last = pad_id, seed, shuffle, drop_last
        self.process_index, self.process_count, self.prefetch = process_index, process_count, prefetch
        self.packing, self.row_multiple = packing, row_multiple
        # per column: the prompt's tokens at the start of each row (train/prompts.py); None: no prompts
        self.prompt_lengths = None if prompt_lengths is None else tuple(prompt_lengths)
        n = len(data)
        self.steps_per_epoch = n // batch_size if drop_last else -(-n // batch_size)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{n} rows make no batch of {batch_size} with drop_last; lower batch_size")
        self._column_lengths = [data.lengths(c) for c in range(len(data.columns))]  # per column [n]
        self._lengths = np.max(self._column_lengths, axis=0)  # [n]: a row's longest column sets its bucket

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The rows of `epoch` in order, a permutation fixed by (seed, epoch): a resumed run sees the same batches."""
        n = len(self.data)
        return np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def make_batch(self, rows: np.ndarray) -> dict:
        """This process's part of the global batch of `rows`, padded to the global batch's bucket."""
        longest = int(self._lengths[rows].max())
        if longest > self.buckets[-1]:
            raise ValueError(f"a row has {longest} tokens, more than the largest bucket {self.buckets[-1]}")
        length = next(b for b in self.buckets if b >= longest)
        count, index, processes = len(rows), self.process_index, self.process_count
        mine = slice(index * count // processes, (index + 1) * count // processes)
        local = rows if self.packing else rows[mine]
        positions = np.arange(length)
        columns = []
        for column in range(len(self.data.columns)):
            starts, lengths = self.data.offsets[column][local], self._column_lengths[column][local]
            mask = positions[None, :] < lengths[:, None]  # [b, T]: real tokens left, pads right
            flat = self.data.ids[column]
            gather = np.minimum(starts[:, None] + positions[None, :], max(len(flat) - 1, 0))
            input_ids = np.where(mask, flat[gather] if len(flat) else 0, self.pad_id).astype(np.int32)
            columns.append({"input_ids": input_ids, "attention_mask": mask.astype(np.int32)})
            if self.prompt_lengths is not None:
                columns[-1]["prompt_length"] = np.full(len(local), self.prompt_lengths[column], np.int32)
        batch = {"columns": columns}
        if self.data.labels is not None:
            batch["labels"] = self.data.labels[local]
        if self.packing:
            batch = pack_batch(batch, self.buckets, self.row_multiple, self.pad_id)
            packed_rows = len(batch["packed"]["input_ids"])
            share = slice(index * packed_rows // processes, (index + 1) * packed_rows // processes)
            batch = {
                **{key: value[mine] for key, value in batch.items() if key == "labels"},
                "columns": [{key: value[mine] for key, value in column.items()} for column in batch["columns"]],
                "packed": {key: value[share] for key, value in batch["packed"].items()},
            }
        return batch

    def _generate(self, start_epoch: int, start_step: int) -> Iterator[tuple[int, int, dict]]:
        epoch, first = start_epoch, start_step
        while True:
            order = self.epoch_order(epoch)
            for step in range(first, self.steps_per_epoch):
                yield epoch, step, self.make_batch(order[step * self.batch_size : (step + 1) * self.batch_size])
            epoch, first = epoch + 1, 0

    def batches(self, start_epoch: int = 0, start_step: int = 0) -> Iterator[tuple[int, int, dict]]:
        """(epoch, step_in_epoch, batch) forever from that position; close() it (or break) to stop the thread."""
        if not 0 <= start_step < self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} is not in [0, {self.steps_per_epoch})")
        if self.prefetch <= 0:
            return self._generate(start_epoch, start_step)
        return self._prefetched(start_epoch, start_step)

    def _prefetched(self, start_epoch: int, start_step: int) -> Iterator[tuple[int, int, dict]]:
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():  # time out now and then to notice the consumer has gone
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        def fill():
            try:
                for item in self._generate(start_epoch, start_step):
                    if not put((item, None)):
                        return
            except BaseException as error:  # handed to the consumer, raised there
                put((None, error))

        thread = threading.Thread(target=fill, name="BatchIterator-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                item, error = ready.get()
                if error is not None:
                    raise error
                yield item
        finally:  # generator closed, broken out of, or an error: stop the thread and wait for it
            stop.set()
            thread.join()
