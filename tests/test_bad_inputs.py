"""Bad or careless inputs to the training program and the library: each is refused with a message naming
the key or file at fault, exit status 2, no traceback, and no file changed outside the run's folder.

Cases: out-of-range config values, damaged data files and labels out of the loss's range, damaged
model folders, encode() arguments, unusable output folders, a full disk (a real small tmpfs where the
machine allows mounting one, else a failing writer), resumes with a changed config, and two runs on one
folder. Runs use a tiny random BERT (MiniLM's tokenizer) on the quickstart pairs.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, build_st_model
from test_train_program import QUICKSTART, tiny_overrides

from flaxenc import SentenceEncoder
from flaxenc_train.checkpoint import Checkpoints
from flaxenc_train.cli import main
from flaxenc_train.config import DatasetConfig
from flaxenc_train.data import check_label_range, load_table
from flaxenc_train.output import OutputError

QUICK = ("data.train.limit=32", "checkpoint.every_steps=2", "evaluation.evaluator=")
TRAIN_CSV = REPO / "configs" / "data" / "quickstart_train.csv"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def outside(tmp_path, monkeypatch):
    """The working directory, holding a user's own config.yaml: it must stay exactly as it was."""
    folder = tmp_path / "cwd"
    folder.mkdir()
    (folder / "config.yaml").write_text("# the user's own file\n")
    monkeypatch.chdir(folder)
    before = snapshot(folder)
    yield folder
    assert snapshot(folder) == before, "a file outside the run was changed"


def run(capsys, *args: str) -> tuple[int, str]:
    """main() in this process: (exit status, stderr); a user error never prints a traceback."""
    status = main([*args, "--no-progress"])
    error = capsys.readouterr().err
    if status == 2:
        assert "Traceback" not in error, error
        assert "flaxenc-train: error:" in error
    return status, error


def tiny(output: Path, *extra: str) -> list[str]:
    return [QUICKSTART, *tiny_overrides(output, *QUICK, *extra)]


def write_csv(path: Path, rows: list[list], header=("sentence1", "sentence2", "score"), encoding="utf-8") -> Path:
    with open(path, "w", encoding=encoding, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def pairs(n: int = 16, score=lambda i: (i % 5) / 5) -> list[list]:
    return [[f"a sentence number {i}", f"another sentence {i}", score(i)] for i in range(n)]


# -- configs: every field's declared range, checked before anything is read or written ----------


@pytest.mark.parametrize(
    "override, expected",
    [
        ("optimizer.learning_rate=-1e-3", "optimizer.learning_rate: -0.001 is out of range; allowed: > 0"),
        ("optimizer.learning_rate=.inf", "optimizer.learning_rate: inf is out of range"),
        ("optimizer.warmup_steps=-10", "optimizer.warmup_steps: -10 is out of range; allowed: >= 0"),
        ("optimizer.warmup_ratio=1.5", "optimizer.warmup_ratio: 1.5 is out of range; allowed: [0, 1]"),
        ("optimizer.weight_decay=-0.1", "optimizer.weight_decay: -0.1 is out of range"),
        ("optimizer.adam_beta1=1.0", "optimizer.adam_beta1: 1.0 is out of range; allowed: [0, 1)"),
        ("optimizer.adam_epsilon=0", "optimizer.adam_epsilon: 0.0 is out of range; allowed: > 0"),
        ("optimizer.max_grad_norm=-1", "optimizer.max_grad_norm: -1.0 is out of range"),
        ("optimizer.scheduler=linear", "optimizer.scheduler: 'linear' is not one of"),
        ("optimizer.accumulation_steps=0", "optimizer.accumulation_steps: 0 is out of range; allowed: >= 1"),
        ("model.modules=[{type: pooling}, {type: dropout, rate: 1.5}]", "model.modules[1].rate: 1.5 is out of range"),
        ("model.modules=[{type: pooling}, {type: densse}]", "model.modules[1].type: 'densse' is not one of"),
        ("model.dtype=float16", "model.dtype: 'float16' is not one of 'float32', 'bfloat16'"),
        ("model.max_seq_length=0", "model.max_seq_length: 0 is out of range"),
        ("data.train.label_scale=0", "data.train.label_scale: 0.0 is out of range; allowed: > 0"),
        ("data.train.limit=-5", "data.train.limit: -5 is out of range"),
        ("data.train.format=xlsx", "data.train.format: 'xlsx' is not one of"),
        ("batch_size=0", "batch_size: 0 is out of range; allowed: >= 1"),
        ("seed=-1", "seed: -1 is out of range; allowed: >= 0"),
        ("checkpoint.keep=0", "checkpoint.keep: 0 is out of range"),
        ("evaluation.batch_size=0", "evaluation.batch_size: 0 is out of range"),
        ("evaluation.evaluator=ranking", "evaluation.evaluator: 'ranking' is not one of"),
        ("output_dir=", "output_dir: empty"),
    ],
)
def test_out_of_range_config_is_refused_naming_the_key(tmp_path, outside, capsys, override, expected):
    status, error = run(capsys, *tiny(tmp_path / "run"), override)
    assert status == 2
    assert expected in error, error
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["no_such_config.yaml"], "no_such_config.yaml: no such config file"),
        ([QUICKSTART, "batch_size"], "override 'batch_size' is not key=value"),
    ],
)
def test_bad_command_lines(outside, capsys, args, expected):
    status, error = run(capsys, *args)
    assert status == 2 and expected in error, error


def test_invalid_yaml_names_the_file(tmp_path, outside, capsys):
    config = tmp_path / "broken.yaml"
    config.write_text("optimizer: {learning_rate: 1e-4\n")
    status, error = run(capsys, str(config))
    assert status == 2 and "broken.yaml: not valid YAML" in error


# -- data files and labels -----------------------------------------------------------------------


def test_latin1_csv_names_the_file_and_line(tmp_path, outside, capsys):
    rows = pairs()
    rows[3][0] = "un café crème"
    data = write_csv(tmp_path / "latin1.csv", rows, encoding="latin-1")
    status, error = run(capsys, *tiny(tmp_path / "run", f"data.train.path={data}"))
    assert status == 2
    assert f"{data}, line 5: not UTF-8 text (byte 0xe9)" in error and "iconv" in error
    assert not (tmp_path / "run").exists()


def test_truncated_jsonl_line_names_the_file_and_line(tmp_path, outside, capsys):
    data = tmp_path / "pairs.jsonl"
    lines = [json.dumps({"sentence1": a, "sentence2": b, "score": s}) for a, b, s in pairs()]
    lines[6] = lines[6][:20]
    data.write_text("\n".join(lines) + "\n")
    status, error = run(capsys, *tiny(tmp_path / "run", f"data.train.path={data}"))
    assert status == 2
    assert f"{data}, line 7: not valid JSON" in error
    assert len(error.strip().splitlines()) == 1, error  # not datasets' 72-line traceback


def test_truncated_json_array_and_garbage_parquet_name_the_file(tmp_path):
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps([{"sentence1": a, "sentence2": b, "score": s} for a, b, s in pairs()])[:-30])
    with pytest.raises(ValueError, match=rf"{data}, line 1: not valid JSON"):
        load_table(DatasetConfig(path=str(data)))
    parquet = tmp_path / "pairs.parquet"
    parquet.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(ValueError, match=rf"{parquet}: not a readable parquet file"):
        load_table(DatasetConfig(path=str(parquet)))


def test_infinite_label_is_rejected_like_nan(tmp_path, outside, capsys):
    rows = pairs()
    rows[5][2] = "inf"
    data = write_csv(tmp_path / "inf.csv", rows)
    status, error = run(capsys, *tiny(tmp_path / "run", f"data.train.path={data}"))
    assert status == 2
    assert "inf.csv: row 5 has an infinite label in 'score'" in error
    assert "learning rate" not in error


def test_stsb_scores_without_label_scale_are_refused(tmp_path, outside, capsys):
    data = write_csv(tmp_path / "stsb_like.csv", pairs(score=lambda i: i % 6))  # 0..5
    status, error = run(capsys, *tiny(tmp_path / "run", f"data.train.path={data}"))
    assert status == 2
    assert "stsb_like.csv: row 2 has label 2" in error and "-1..1" in error and "label_scale" in error, error
    # With label_scale 5 the same table fits the loss.
    spec = DatasetConfig(path=str(data), label_scale=5.0)
    check_label_range(load_table(spec), spec, (-1.0, 1.0), "cosine_similarity")


def test_contrastive_loss_needs_binary_labels(tmp_path, outside, capsys):
    data = write_csv(tmp_path / "graded.csv", pairs(score=lambda i: 0.5 if i == 4 else i % 2))
    status, error = run(capsys, *tiny(tmp_path / "run", f"data.train.path={data}", "loss.name=contrastive"))
    assert status == 2
    assert "graded.csv: row 4 has label 0.5" in error and "0 or 1" in error, error


# -- model folders -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def st_folder(tmp_path_factory, bert_tokenizer_path) -> Path:
    """A tiny ST folder: BERT, mean pooling, Dense(32 -> 8), Normalize."""
    folder, _ = build_st_model(
        tmp_path_factory.mktemp("st"), bert_tokenizer_path, heads=(("dense", 8, torch.nn.Tanh(), True), ("normalize",))
    )
    return folder


@pytest.fixture
def damaged(st_folder, tmp_path) -> Path:
    return Path(shutil.copytree(st_folder, tmp_path / "model"))


def test_missing_pooling_folder_is_an_error_not_mean_pooling(damaged, tmp_path, outside, capsys):
    shutil.rmtree(damaged / "1_Pooling")
    status, error = run(capsys, *tiny(tmp_path / "run", f"model.name_or_path={damaged}", "model.new_config=null"))
    assert status == 2
    assert f"lists a Pooling module at '1_Pooling', but {damaged / '1_Pooling'} is not a folder" in error, error
    assert not (tmp_path / "run").exists()


def test_missing_head_config_is_named(damaged):
    dense = next(damaged.glob("2_Dense"))
    (dense / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{dense}: the Dense module has no config.json"):
        SentenceEncoder.from_pretrained(damaged)


def test_normalize_without_a_folder_loads(damaged):
    """ST loads Normalize without files: so does flaxenc."""
    normalize = next(damaged.glob("3_Normalize"))
    shutil.rmtree(normalize)
    assert SentenceEncoder.from_pretrained(damaged).encode(["hello"]).shape == (1, 8)


def test_missing_tokenizer_files_are_an_error(damaged):
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (damaged / name).unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match=rf"{damaged}: no tokenizer files"):
        SentenceEncoder.from_pretrained(damaged)


def test_new_tokenizer_folder_without_files_is_a_config_error(tmp_path, outside, capsys):
    empty = tmp_path / "tokenizer"
    empty.mkdir()
    status, error = run(capsys, *tiny(tmp_path / "run", f"model.new_tokenizer={empty}"))
    assert status == 2 and f"model.new_tokenizer: {empty}: no tokenizer files" in error, error


# -- encode() arguments --------------------------------------------------------------------------


def test_encode_arguments(st_folder):
    encoder = SentenceEncoder.from_pretrained(st_folder)
    with pytest.raises(TypeError, match=r"sentences\[1\] is a NoneType"):
        encoder.encode(["a", None])
    with pytest.raises(TypeError, match="not int"):
        encoder.encode(42)
    with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
        encoder.encode(["a"], batch_size=0)
    with pytest.raises(ValueError, match="prompt_name 'no_such_prompt' is not one of"):
        encoder.encode(["a"], prompt_name="no_such_prompt")


# -- the output folder and the filesystem --------------------------------------------------------


def test_output_dir_that_is_a_file(tmp_path, outside, capsys):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    status, error = run(capsys, *tiny(target))
    assert status == 2 and f"output_dir {target}: is a file" in error
    assert target.read_text() == "keep me"


def test_output_dir_of_foreign_files_is_refused(outside, capsys):
    """output_dir=. in a folder of the user's own files: refused, ./config.yaml untouched (the fixture checks)."""
    status, error = run(capsys, *tiny(Path(".")))
    assert status == 2 and "holds files no flaxenc run wrote (config.yaml)" in error, error


def test_output_dir_under_a_read_only_folder(tmp_path, outside, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    parent = tmp_path / "read_only"
    parent.mkdir(mode=0o555)
    status, error = run(capsys, *tiny(parent / "run"))
    assert status == 2 and "is not writable" in error


def test_checkpoint_write_failure_is_one_message(tmp_path, monkeypatch):
    """A failing orbax writer (ENOSPC): one OutputError naming the checkpoint and the space needed."""
    import numpy as np
    import orbax.checkpoint as ocp

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ocp.CheckpointManager, "save", full)
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    with pytest.raises(OutputError, match=r"checkpoints/3: no space left on device: the save needs about 4\.0 MB"):
        checkpoints.save(3, {"w": np.zeros(1_000_000, np.float32)}, {})
    checkpoints.close()


def mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, check=False)
    except OSError:
        return False
    return done.returncode == 0


def test_full_disk_at_a_checkpoint_is_one_message(tmp_path):
    """A real full disk (a 3 MB tmpfs) at the first checkpoint: one line, none of the background threads' flood."""
    disk = tmp_path / "small_disk"
    if not mount_tmpfs(disk, "3m"):
        pytest.skip("cannot mount a tmpfs here (needs root); the failing-writer test covers the message")
    try:
        command = [sys.executable, "-m", "flaxenc_train", *tiny(disk / "run"), "--no-progress"]
        done = subprocess.run(command, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                              text=True, timeout=600, check=False)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith(("INFO", "Tokenizing"))]
    assert len(lines) == 1, done.stderr[-3000:]
    assert "checkpoints/2: no space left on device: the save needs about" in lines[0]


# -- runs: resume, finished runs, final saves, locks ---------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A tiny run, finished (8 steps, a checkpoint every 2)."""
    output = tmp_path_factory.mktemp("finished") / "run"
    assert main([*tiny(output), "--no-progress"]) == 0
    return output


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def changed_data(tmp_path: Path) -> Path:
    """The training file with one score changed: the same rows, other contents."""
    with open(TRAIN_CSV, encoding="utf-8") as f:
        rows = list(csv.reader(f))
    rows[3][2] = "0.123"
    path = tmp_path / "changed.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


@pytest.mark.parametrize(
    "change, key",
    [
        ("loss.name=cosent", "loss.name"),
        ("optimizer.learning_rate=5e-4", "optimizer.learning_rate"),
        ("seed=7", "seed"),
        ("data", "data.train.source"),
    ],
)
def test_resume_with_a_changed_config_is_refused(run_copy, tmp_path, outside, capsys, change, key):
    if change == "data":
        change = f"data.train.path={changed_data(tmp_path)}"
    before = snapshot(run_copy)
    status, error = run(capsys, *tiny(run_copy, change))
    assert status == 2
    assert f"({key}: " in error and "resuming would mix two runs" in error and "another output_dir" in error, error
    assert snapshot(run_copy) == before  # config.yaml and the rest as they were


def test_finished_run_rerun_says_so(run_copy, outside, capsys):
    before = snapshot(run_copy)
    assert main([*tiny(run_copy), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "This run had already finished, nothing to do" in out and "Trained 8 steps" in out
    assert snapshot(run_copy) == before


def test_disk_full_at_the_final_save_keeps_the_previous_final(run_copy, outside, capsys, monkeypatch):
    """A failing writer at final/: one message; the previous final/ whole, no temporary folder left."""
    from flaxenc.io import st_folder

    (run_copy / "summary.json").unlink()  # so the rerun saves final/ again
    final_before = snapshot(run_copy / "final")
    written = []

    def full_disk(tensors, path):
        written.append(path)
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(st_folder, "write_safetensors", full_disk)
    status, error = run(capsys, *tiny(run_copy))
    assert status == 2 and written
    assert f"{run_copy / 'final'}: no space left on device: the save needs about" in error, error
    assert snapshot(run_copy / "final") == final_before
    assert not list(run_copy.glob(".final.*")) and not (run_copy / ".lock").exists()


def test_a_live_lock_refuses_and_a_stale_one_is_taken_over(run_copy, outside, capsys):
    lock = run_copy / ".lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))  # this process: alive
    status, error = run(capsys, *tiny(run_copy))
    assert status == 2 and f"lock file {lock}" in error and "in use by another run" in error, error
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=False)
    lock.write_text(json.dumps({"pid": int(ended.stdout), "host": socket.gethostname()}))  # a process that is gone
    assert main([*tiny(run_copy), "--no-progress"]) == 0
    assert not lock.exists()


def test_two_runs_on_one_folder_then_sigkill_and_resume(tmp_path):
    """A second run on a folder in use is refused naming the lock; after SIGKILL the rerun resumes."""
    output = tmp_path / "run"
    # 120 steps: long enough that the first run is still training while the second one starts up
    args = tiny_overrides(output, "data.train.limit=160", "epochs=6", "checkpoint.every_steps=4", "evaluation.evaluator=")
    command = [sys.executable, "-m", "flaxenc_train", QUICKSTART, *args, "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (output / "checkpoints" / "4").is_dir():
        assert first.poll() is None, first.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    first.send_signal(signal.SIGKILL)
    first.wait()
    first.stderr.close()
    assert first.returncode == -signal.SIGKILL, "the first run finished before it was killed; make it longer"
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"lock file {output / '.lock'}" in second.stderr and "Traceback" not in second.stderr

    assert (output / ".lock").exists()  # left by the killed run: stale
    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads((output / "summary.json").read_text())
    assert summary["resumed_from"] is not None and summary["steps"] == 120
    assert not (output / ".lock").exists()


def test_debug_prints_the_traceback(tmp_path, capsys):
    assert main([*tiny(tmp_path / "run", "seed=-1"), "--debug", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "Traceback" in error and "seed: -1 is out of range" in error
