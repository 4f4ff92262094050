"""flaxenc-encode (train/encode.py): shards equal encode(), across 2 processes x 4 fake devices,
resumed after a SIGKILL, from every input format; bad input names the file and row.

The corpus is 2,000 STS-B sentences (not 20k: this keeps the test to seconds on a small CPU) in
two jsonl.gz files, cut into 8 shards of 250; the model a tiny random BERT.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, build_st_model

import flaxenc
from bench.data import stsb_sentences
from flaxenc.quantization import quantization_ranges, quantize_embeddings
from flaxenc_train.encode import main

WORKER = Path(__file__).with_name("encode_worker.py")
CORPUS_SIZE, SHARD_SIZE = 2000, 250
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def model(tmp_path_factory, bert_tokenizer_path) -> Path:
    folder, _ = build_st_model(tmp_path_factory.mktemp("model"), bert_tokenizer_path, max_seq_length=64)
    return folder


@pytest.fixture(scope="module")
def encoder(model):
    return flaxenc.SentenceEncoder.from_pretrained(model)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[list[str], list[str]]:
    """(the two jsonl.gz files, their sentences in order)."""
    if (REPO.parent / "shared" / "data").is_dir() or os.environ.get("FLAXENC_DATA"):
        sentences = stsb_sentences(CORPUS_SIZE)
    else:
        pytest.skip("STS-B not found (FLAXENC_DATA)")
    folder = tmp_path_factory.mktemp("corpus")
    files = []
    for part in range(2):
        path = folder / f"part-{part}.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as f:
            for i, text in enumerate(sentences[part * 1000 : (part + 1) * 1000]):
                f.write(json.dumps({"id": i, "text": text}) + "\n")
        files.append(str(path))
    return files, sentences


def start_workers(output: Path, model: Path, files: list[str], processes: int, pause: float = 0.0, *extra: str):
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    arguments = [str(model), *files, "--output", str(output), "--shard-size", str(SHARD_SIZE), "--batch-size", "16",
                 "--no-progress", "--parquet", *extra]
    return [
        subprocess.Popen([sys.executable, str(WORKER), str(i), str(processes), str(port), str(pause), *arguments],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(processes)
    ]


def finish(workers) -> list[str]:
    outputs = []
    for worker in workers:
        output, _ = worker.communicate(timeout=600)
        assert worker.returncode == 0, output[-4000:]
        outputs.append(output)
    return outputs


def read_shards(output: Path) -> list[np.ndarray]:
    return [np.load(path) for path in sorted(output.glob("embeddings-*.npy"))]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, model, corpus) -> Path:
    output = tmp_path_factory.mktemp("two_processes") / "out"
    finish(start_workers(output, model, corpus[0], processes=2))
    return output


def test_two_processes_equal_encode(two_process_run, encoder, corpus):
    shards = read_shards(two_process_run)
    assert len(shards) == CORPUS_SIZE // SHARD_SIZE
    assert all(len(shard) == SHARD_SIZE for shard in shards)
    expected = encoder.encode(corpus[1], batch_size=16)
    diff = float(np.abs(np.concatenate(shards) - expected).max())
    print(f"2 processes x 4 devices vs encode(): max abs diff {diff:.2e}")
    assert diff <= TOLERANCE, f"max abs diff {diff:.2e}"
    import pyarrow.parquet as pq

    table = pq.read_table(two_process_run / "embeddings-00003.parquet")
    assert table.column("text").to_pylist() == corpus[1][3 * SHARD_SIZE : 4 * SHARD_SIZE]
    np.testing.assert_array_equal(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)), shards[3])
    assert json.loads((two_process_run / "manifest.json").read_text())["shard_size"] == SHARD_SIZE


def test_resume_after_sigkill(tmp_path, two_process_run, model, corpus):
    """Killed once its first shard is written, the rerun keeps that shard and writes the rest,
    equal to the uninterrupted run's (both one shard at a time on 4 devices)."""
    output = tmp_path / "out"
    (worker,) = start_workers(output, model, corpus[0], 1, 3.0)
    first = output / "embeddings-00000.npy"
    deadline = time.monotonic() + 300
    while not first.exists() and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.exists(), worker.communicate()[0][-4000:] if worker.poll() is not None else "no shard in 300 s"
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    written = sorted(p.name for p in output.glob("embeddings-*.npy"))
    assert written == ["embeddings-00000.npy"], written
    stamp = first.stat().st_mtime_ns, first.stat().st_ino
    (log,) = finish(start_workers(output, model, corpus[0], 1))
    assert f"{CORPUS_SIZE // SHARD_SIZE - 1} shard(s) written ({CORPUS_SIZE - SHARD_SIZE} sentences), 1 already complete" in log
    assert (first.stat().st_mtime_ns, first.stat().st_ino) == stamp  # not rewritten
    assert not list(output.glob(".*.tmp-*"))  # a temporary file the kill left is removed
    for resumed, uninterrupted in zip(read_shards(output), read_shards(two_process_run), strict=True):
        np.testing.assert_array_equal(resumed, uninterrupted)


# -- formats, precision, errors (in this process, 1 device) ----------------------------------------

TEXTS = [f"sentence {i} about topic {i % 7} with {'many ' * (i % 5)}words" for i in range(37)] + ["", "naïve café"]


def write_inputs(folder: Path) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    paths = {fmt: folder / f"corpus.{fmt}" for fmt in ("jsonl", "csv", "tsv", "parquet", "txt")}
    paths["jsonl"].write_text("".join(json.dumps({"sentence": t, "n": i}) + "\n" for i, t in enumerate(TEXTS)), encoding="utf-8")
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["n", "sentence"], *([i, t] for i, t in enumerate(TEXTS))])
    paths["tsv"].write_text("n\tsentence\n" + "".join(f"{i}\t{t}\n" for i, t in enumerate(TEXTS)), encoding="utf-8")
    pq.write_table(pa.table({"n": list(range(len(TEXTS))), "sentence": TEXTS}), paths["parquet"])
    paths["txt"].write_text("".join(t + "\n" for t in TEXTS), encoding="utf-8")
    return paths


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv", "parquet", "txt"])
def test_every_format_equals_encode(tmp_path, model, encoder, fmt, capsys):
    path = write_inputs(tmp_path / "in")[fmt]
    rc = main([str(model), str(path), "-o", str(tmp_path / "out"), "--column", "sentence", "--shard-size", "16", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    shards = read_shards(tmp_path / "out")
    assert [len(s) for s in shards] == [16, 16, 7]
    assert float(np.abs(np.concatenate(shards) - encoder.encode(TEXTS)).max()) <= TOLERANCE


def test_prompt_precision_and_options(tmp_path, model, encoder, capsys):
    path = write_inputs(tmp_path / "in")["jsonl"]
    base = [str(model), str(path), "--column", "sentence", "--shard-size", "16", "--no-progress"]
    options = {"prompt": "query: ", "normalize_embeddings": True, "truncate_dim": 24}
    floats = encoder.encode(TEXTS, **options)
    for precision in ("ubinary", "int8"):
        out = tmp_path / precision
        assert main([*base, "-o", str(out), "--precision", precision, "--prompt", "query: ", "--normalize",
                     "--truncate-dim", "24", "--calibration-size", "20"]) == 0, capsys.readouterr().err
        ranges = quantization_ranges(floats[:20], precision) if precision == "int8" else None
        if ranges is not None:
            np.testing.assert_allclose(np.load(out / "ranges.npy"), ranges, atol=TOLERANCE)
        np.testing.assert_array_equal(np.concatenate(read_shards(out)), quantize_embeddings(floats, precision, ranges))
    # a rerun with other settings into the same folder is refused
    assert main([*base, "-o", str(tmp_path / "int8"), "--precision", "uint8"]) == 2
    assert "other settings" in capsys.readouterr().err
    # max_seq_length: 8 tokens
    assert main([*base, "-o", str(tmp_path / "short"), "--max-seq-length", "8"]) == 0
    encoder.max_seq_length, longest = 8, encoder.max_seq_length
    try:
        expected = encoder.encode(TEXTS)
    finally:
        encoder.max_seq_length = longest
    assert float(np.abs(np.concatenate(read_shards(tmp_path / "short")) - expected).max()) <= TOLERANCE


def _error(capsys, model, path: Path, *extra: str) -> str:
    rc = main([str(model), str(path), "-o", str(path.parent / f"out-{path.name}"), "--column", "sentence", "--no-progress", *extra])
    assert rc == 2
    return capsys.readouterr().err


def test_bad_inputs_name_file_and_row(tmp_path, model, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"sentence": "a"}\n{"sentence": "b"}\n{"text": "c"}\n')
    assert f"{missing}, line 3: no column 'sentence'" in _error(capsys, model, missing)

    not_string = tmp_path / "number.jsonl"
    not_string.write_text('{"sentence": "a"}\n{"sentence": 5}\n')
    assert f"{not_string}, line 2: column 'sentence' holds int 5, not a string" in _error(capsys, model, not_string)

    table = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"sentence": ["a", None, "c"]}), table)
    assert f"{table}, row 1: column 'sentence' holds NoneType" in _error(capsys, model, table)

    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"sentence": "a"}\n{"sentence": \n')
    assert f"{bad_json}, line 2: not valid JSON" in _error(capsys, model, bad_json)

    not_gzip = tmp_path / "broken.jsonl.gz"
    not_gzip.write_bytes(b"this is not gzip data\n")
    assert f"{not_gzip}: cannot be read or decoded" in _error(capsys, model, not_gzip)

    broken_txt = tmp_path / "broken.txt.gz"
    broken_txt.write_bytes(b"this is not gzip data\n")
    assert f"{broken_txt}: cannot be read or decoded" in _error(capsys, model, broken_txt)

    latin = tmp_path / "latin.txt"
    latin.write_bytes("fine\ncaf\xe9\n".encode("latin-1"))
    assert f"{latin}, line 2: not UTF-8" in _error(capsys, model, latin)

    absent = tmp_path / "absent.jsonl"
    assert f"{absent}: no such input file" in _error(capsys, model, absent)

    unknown = tmp_path / "corpus.xml"
    unknown.write_text("<a/>")
    assert f"{unknown}: cannot tell the format" in _error(capsys, model, unknown)


def test_corpus_bench_runs(model):
    """bench/corpus.py's measurement on the tiny model: figures present, the same embeddings as ST."""
    from bench.corpus import measure_corpus_encode

    result = measure_corpus_encode(model, TEXTS, batch_size=8, shard_size=16, repeats=1)
    assert result["flaxenc"]["per_s"] > 0 and result["st"]["per_s"] > 0 and result["ratio"] > 0
    assert result["max_abs_diff"] <= 1e-5
