"""The speed benchmark (`python -m bench`) runs end to end on a tiny setting and writes its figures.

Figures are checked for presence and sanity only: timings are never asserted.
"""

from __future__ import annotations

import json
import math
import sys

from conftest import REPO, read_stsb

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # bench/ is not an installed package

TINY_RUN = [
    "--models", "tiny", "--sentences", "24", "--dtypes", "float32", "--batch-sizes", "8",
    "--train-batch-sizes", "4", "--steps", "2", "--repeats", "1",
    "--recipe2-size", "tiny", "--recipe2-lengths", "32", "--recipe2-batch-size", "2",
    "--recipe2-mrpc-batch-size", "4",
    "--mfu", "tiny", "--mfu-batch-size", "2",
    "--host-sentences", "200", "--host-batch-sizes", "16", "--first-call-sentences", "8",
]  # fmt: skip


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_bench_writes_every_figure(tmp_path, capsys):
    from bench.cli import main

    read_stsb("train")  # skips the test where STS-B is missing
    path = tmp_path / "bench.json"
    assert main([*TINY_RUN, "--json", str(path)]) == 0
    results = json.loads(path.read_text())

    assert {"hardware", "versions", "precision", "settings", "host_side", "encode", "train", "mfu"} <= results.keys()
    (host,) = results["host_side"]["cells"]
    assert host["sentences"] == 200 and positive(host["host"]["per_s"]) and positive(host["tokenizer"]["per_s"])
    first = results["host_side"]["first_call"]
    assert all(positive(first[side]["first_call_s"]) for side in ("flaxenc_cold", "flaxenc_warm_cache", "st"))
    assert results["hardware"]["cpu_cores"] >= 1 and results["hardware"]["jax_devices"]
    assert {"jax", "flax", "torch", "sentence-transformers", "transformers"} <= results["versions"].keys()

    (encode,) = results["encode"]
    assert (encode["model"], encode["dtype"], encode["batch_size"], encode["sentences"]) == ("tiny", "float32", 8, 24)
    for side in ("flaxenc", "st"):
        assert all(positive(encode[side][key]) for key in ("per_s", "steady_s", "first_call_s")), encode[side]
    assert positive(encode["ratio"]) and encode["flaxenc"]["compiles"] >= 1
    assert encode["max_abs_diff"] < 1e-4  # same weights, same sentences, fp32

    stsb, recipe2, mrpc = results["train"]
    assert (stsb["objective"], stsb["tokens"]) == ("CosineSimilarityLoss", "STS-B")
    assert recipe2["model"] == "recipe2-roberta-tiny" and recipe2["tokens"] == "32 fixed"
    assert (mrpc["model"], mrpc["tokens"], mrpc["batch_size"]) == ("recipe2-roberta-tiny", "MRPC", 4)
    for cell in (stsb, recipe2, mrpc, results["mfu"]):
        assert "error" not in cell, cell["error"]
        assert positive(cell["ratio"])
        for side in ("flaxenc", "st"):
            assert all(positive(cell[side][key]) for key in ("per_s", "step_s", "first_step_s")), cell[side]
    assert positive(recipe2["flops_per_step"]) and positive(recipe2["flaxenc"]["tflops_per_s"])

    mfu = results["mfu"]
    assert positive(mfu["flops_per_step"]) and positive(mfu["xla_flops_per_step"])
    assert mfu["flaxenc"]["mfu"] is None or positive(mfu["flaxenc"]["mfu"])  # None off the GPUs in the table

    printed = capsys.readouterr().out
    assert "flaxenc/ST" in printed and "MFU" in printed


def test_device_busy_share_is_the_union_of_the_gpu_kernels_over_the_traced_span(tmp_path):
    """bench.device_idle reads the GPU's busy share off a Perfetto trace: overlapping kernels count once,
    host events not at all."""
    import gzip
    import json

    from bench.device_idle import busy_share

    events = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
        {"ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 10},
        {"ph": "X", "pid": 1, "tid": 2, "ts": 5, "dur": 10},  # overlaps the first: busy 0-15
        {"ph": "X", "pid": 1, "tid": 1, "ts": 30, "dur": 10},  # idle 15-30, busy 30-40
        {"ph": "X", "pid": 2, "tid": 1, "ts": 0, "dur": 40},  # the host: not the device
    ]
    folder = tmp_path / "plugins" / "profile" / "run"
    folder.mkdir(parents=True)
    with gzip.open(folder / "perfetto_trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    assert busy_share(tmp_path) == 25 / 40
    assert "no perfetto trace" in busy_share(tmp_path / "plugins" / "none")


def test_bench_saves_its_figures_after_each_setting(tmp_path):
    """A run cut short (a time-boxed GPU lease) keeps every setting it finished: run() hands the results
    to `save` after each one."""
    from bench.cli import parse_args, run

    read_stsb("train")
    settings, _ = parse_args(["--only", "encode", "--models", "tiny", "--sentences", "16", "--dtypes", "float32",
                              "--batch-sizes", "4,8", "--repeats", "1"])
    snapshots = []
    results = run(settings, [], lambda results: snapshots.append(json.dumps(results, default=str)))
    assert [len(json.loads(s)["encode"]) for s in snapshots] == [1, 2]
    assert json.loads(snapshots[-1])["encode"] == json.loads(json.dumps(results["encode"], default=str))
