"""`flaxenc-encode MODEL INPUT... --output DIR`: embed a corpus into shards of N sentences each.

The inputs (jsonl, jsonl.gz, parquet, csv/tsv or txt, in the order given) are read streamed, one
record at a time; the text is `--column` (txt: each line). Records are numbered across the inputs
and cut into shards of `--shard-size`; shard i is written as DIR/embeddings-{i:05d}.npy (and
.parquet with `--parquet`: the text and its embedding). Every local device encodes (encode()'s
data-parallel batches); after `jax.distributed.initialize()` (`--distributed`, or done by the
caller) process p of P takes shards p, p + P, ... Each shard file is written to a temporary name
and renamed, so a file that exists is complete: a rerun into the same folder skips those shards
and resumes at the first missing one. DIR/manifest.json records the settings; a rerun with other
settings is an error rather than a mix. With `--precision int8/uint8` the buckets come from the
first `--calibration-size` sentences and are saved as DIR/ranges.npy for every shard to share.

Exit status 0 done, 2 a user error (a missing column, a non-string text, an unreadable file: the
message names the file and line or row).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import socket
import sys
import traceback
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from flaxenc_train.sources import DataError

SHARD_PREFIX = "embeddings"
DEFAULT_SHARD_SIZE = 10_000
FORMATS = ("jsonl", "csv", "tsv", "parquet", "txt")


# -- reading ---------------------------------------------------------------------------------------


def input_format(path: str) -> str:
    """jsonl, csv, tsv, parquet or txt from the extension (a trailing .gz is looked through)."""
    name = path.lower().removesuffix(".gz")
    for suffix, kind in ((".jsonl", "jsonl"), (".json", "jsonl"), (".csv", "csv"), (".tsv", "tsv"), (".parquet", "parquet"), (".txt", "txt")):
        if name.endswith(suffix):
            return kind
    raise DataError(f"{path}: cannot tell the format from the extension; use .jsonl(.gz), .csv, .tsv, .parquet or .txt")


def _read_lines(path: str) -> Iterator[tuple[str, str | DataError]]:
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}, line {number}"
            try:
                yield where, raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as error:
                yield where, DataError(f"{where}: not UTF-8 text (byte 0x{raw[error.start:error.start + 1].hex()})")


def read_texts(paths: list[str], column: str) -> Iterator[str]:
    """Each record's text, file after file; a bad record or file is a DataError naming it."""
    from flaxenc_train import sources
    from flaxenc_train.config import DatasetConfig

    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such input file")
        fmt = input_format(path)
        if fmt == "txt":
            records = _read_lines(path)
        else:
            spec = DatasetConfig(path=path, format=fmt, header=True, text_columns=(column,), label_column=None)
            records = sources.read_file(spec, path, [column])
        try:
            for where, record in records:
                if isinstance(record, DataError):
                    raise record
                if fmt == "txt":
                    yield record
                    continue
                if column not in record:
                    raise DataError(f"{where}: no column {column!r} (the record has {', '.join(map(repr, record)) or 'none'})")
                text = record[column]
                if not isinstance(text, str):
                    raise DataError(f"{where}: column {column!r} holds {type(text).__name__} {text!r:.60}, not a string")
                yield text
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as error:  # txt: a damaged gzip, an unreadable file
            raise DataError(f"{path}: cannot be read or decoded ({type(error).__name__}: {error})") from None


def shards_of(texts: Iterator[str], shard_size: int) -> Iterator[list[str]]:
    shard: list[str] = []
    for text in texts:
        shard.append(text)
        if len(shard) == shard_size:
            yield shard
            shard = []
    if shard:
        yield shard


# -- writing ---------------------------------------------------------------------------------------


def shard_paths(output: Path, index: int, parquet: bool) -> list[Path]:
    """The files of shard `index`; the .npy last, as it is written last."""
    name = f"{SHARD_PREFIX}-{index:05d}"
    return [*([output / f"{name}.parquet"] if parquet else []), output / f"{name}.npy"]


def _atomic_write(path: Path, write, owned: bool = False) -> None:
    """write(file) into a temporary file beside `path`, then rename it: `path` is complete or absent.

    owned: only this process writes `path` (a shard), so temporary files of it are a killed run's
    and are removed (manifest.json and ranges.npy are written by every process, identically).
    """
    if owned:
        for stale in glob.glob(str(path.parent / f".{path.name}.tmp-*")):
            os.remove(stale)
    temporary = path.parent / f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}"
    with open(temporary, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def write_shard(paths: list[Path], texts: list[str], embeddings: np.ndarray) -> None:
    for path in paths:
        if path.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            vectors = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), embeddings.shape[1])
            table = pa.table({"text": pa.array(texts, pa.string()), "embedding": vectors})
            _atomic_write(path, lambda f, table=table: pq.write_table(table, f), owned=True)
        else:
            _atomic_write(path, lambda f: np.save(f, embeddings), owned=True)


def _write_json(path: Path, value: dict) -> None:
    _atomic_write(path, lambda f: f.write(json.dumps(value, indent=2, sort_keys=True).encode()))


def check_manifest(output: Path, settings: dict) -> None:
    """Writes DIR/manifest.json, or checks that a previous run's matches `settings`."""
    path = output / "manifest.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        changed = sorted(key for key in set(previous) | set(settings) if previous.get(key) != settings.get(key))
        if changed:
            shown = "; ".join(f"{key}: {previous.get(key)!r} then, {settings.get(key)!r} now" for key in changed)
            raise DataError(f"{output} holds shards of a run with other settings ({shown}); use a new output folder")
        return
    _write_json(path, settings)


# -- the program ---------------------------------------------------------------------------------


def encode_corpus(
    model: str,
    inputs: list[str],
    output: str | os.PathLike,
    column: str = "text",
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int = 32,
    max_seq_length: int | None = None,
    prompt_name: str | None = None,
    prompt: str | None = None,
    precision: str = "float32",
    normalize_embeddings: bool = False,
    truncate_dim: int | None = None,
    parquet: bool = False,
    calibration_size: int = 1000,
    dtype: str = "float32",
    progress: bool = True,
) -> dict:
    """Embeds the inputs into DIR's shards (see the module docstring); returns counts of this process's work."""
    import jax
    from tqdm.auto import tqdm

    from flaxenc import SentenceEncoder
    from flaxenc.quantization import check_precision, quantization_ranges

    check_precision(precision)
    if shard_size < 1:
        raise ValueError(f"--shard-size must be positive, got {shard_size}")
    inputs = [str(Path(p).resolve()) for p in inputs]
    model = str(Path(model).resolve()) if Path(model).exists() else str(model)  # a folder, or a hub id
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    encoder = SentenceEncoder.from_pretrained(model, dtype=dtype)
    if max_seq_length is not None:
        encoder.max_seq_length = max_seq_length
    if prompt is None and prompt_name is not None and prompt_name not in encoder.prompts:
        raise ValueError(f"--prompt-name {prompt_name!r} is not one of the model's prompts {sorted(encoder.prompts)}")
    options = dict(
        batch_size=batch_size, prompt_name=prompt_name, prompt=prompt, normalize_embeddings=normalize_embeddings,
        truncate_dim=truncate_dim,
    )
    settings = {
        "model": model, "inputs": inputs, "column": column, "shard_size": shard_size, "precision": precision,
        "max_seq_length": encoder.max_seq_length, "prompt_name": prompt_name, "prompt": prompt,
        "normalize_embeddings": normalize_embeddings, "truncate_dim": truncate_dim, "dtype": str(dtype),
        "parquet": parquet,
    }
    check_manifest(output, settings)

    ranges = None
    if precision in ("int8", "uint8"):  # one set of buckets for every shard, from the corpus's head
        ranges_path = output / "ranges.npy"
        if ranges_path.is_file():
            ranges = np.load(ranges_path)
        else:
            head = [text for _, text in zip(range(calibration_size), read_texts(inputs, column))]
            ranges = quantization_ranges(encoder.encode(head, **options), precision)
            _atomic_write(ranges_path, lambda f: np.save(f, ranges))

    process, processes = jax.process_index(), jax.process_count()
    done = {"written": 0, "skipped": 0, "sentences": 0}
    with tqdm(unit=" sentences", disable=not progress or process != 0, desc="flaxenc-encode") as bar:
        for index, texts in enumerate(shards_of(read_texts(inputs, column), shard_size)):
            if index % processes != process:
                continue
            paths = shard_paths(output, index, parquet)
            if all(path.is_file() for path in paths):
                done["skipped"] += 1
            else:
                embeddings = encoder.encode(texts, precision=precision, ranges=ranges, **options)
                write_shard(paths, texts, embeddings)
                done["written"] += 1
                done["sentences"] += len(texts)
            bar.update(len(texts))
            bar.set_postfix(written=done["written"], skipped=done["skipped"])
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flaxenc-encode",
        description="Embed a corpus (jsonl, jsonl.gz, parquet, csv, tsv or txt) into .npy shards of N sentences, "
        "on every local device and every process; rerun into the same folder to resume.",
    )
    parser.add_argument("model", help="ST model folder or hub id")
    parser.add_argument("inputs", nargs="+", help="input files, read in this order")
    parser.add_argument("--output", "-o", required=True, help="output folder (shards, manifest.json)")
    parser.add_argument("--column", default="text", help="the text field of jsonl/parquet/csv/tsv records (default: text)")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="sentences per shard")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=None, help="default: the model's")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--prompt-name", default=None, help="one of the model's prompts (e.g. query, document)")
    group.add_argument("--prompt", default=None, help="a prompt prepended to every text")
    parser.add_argument("--precision", default="float32", choices=("float32", "int8", "uint8", "binary", "ubinary"))
    parser.add_argument("--calibration-size", type=int, default=1000, help="int8/uint8: sentences whose ranges set the buckets")
    parser.add_argument("--normalize", action="store_true", help="unit-length embeddings")
    parser.add_argument("--truncate-dim", type=int, default=None, help="keep the first dimensions")
    parser.add_argument("--parquet", action="store_true", help="also write each shard as parquet (text, embedding)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
    parser.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() first (multi-host)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error too")
    args = parser.parse_args(argv)
    if args.distributed:
        import jax

        jax.distributed.initialize()
    try:
        done = encode_corpus(
            args.model, args.inputs, args.output, column=args.column, shard_size=args.shard_size,
            batch_size=args.batch_size, max_seq_length=args.max_seq_length, prompt_name=args.prompt_name,
            prompt=args.prompt, precision=args.precision, normalize_embeddings=args.normalize,
            truncate_dim=args.truncate_dim, parquet=args.parquet, calibration_size=args.calibration_size,
            dtype=args.dtype, progress=not args.no_progress,
        )
    except (ValueError, OSError) as error:  # DataError is a ValueError
        if args.debug:
            traceback.print_exc()
        print(f"flaxenc-encode: error: {str(error).strip() or type(error).__name__}", file=sys.stderr)
        return 2
    print(f"flaxenc-encode: {done['written']} shard(s) written ({done['sentences']} sentences), {done['skipped']} already complete")
    return 0


if __name__ == "__main__":
    sys.exit(main())
