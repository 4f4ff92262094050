"""Does the streamed pipeline keep the device busy? all-MiniLM-L6-v2's recipe at batch 1024.

    python -m bench.device_idle [--steps 30] [--settings float32:0,float32:4,bfloat16:4] [--profile] [--json PATH]

Each setting (compute dtype : grain worker processes) builds flaxenc-train's Run from
configs/all_minilm_mixture.yaml (MultipleNegativesRankingLoss, batch 1024, policy one, no
duplicates, packing) on a mixture of 3 datasets of STS-B-like pairs, 8 jsonl.gz shards each, and
steps it as the training loop does (metrics left on the device):

  warm-up   `steps` steps from the pipeline's start: compiles every batch shape they hold;
  streamed  the pipeline rewound to its start (grain's iterator state), the same `steps` steps, timed;
  in memory the same batches, held on the host beforehand, stepped again: the device-bound time.

The device's idle share caused by the input is 1 - in-memory time / streamed time. With --profile,
both timed passes run again under jax.profiler and the share of the pass's wall time in which the
GPU ran a kernel is read off the trace (a Perfetto trace, its device tracks), for both.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

import jax

from bench.models import minilm_folder
from bench.pipeline import _pairs_stsb, _write

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "all_minilm_mixture.yaml"
DATASETS = ("reddit", "s2orc", "stackexchange")


def write_mixture(folder: Path, pairs: int) -> None:
    """3 datasets of unique STS-B-like pairs (weights 0.5/0.3/0.2 in the config), 8 shards each (a file per worker)."""
    rows = _pairs_stsb(pairs)
    for d, name in enumerate(DATASETS):
        mine = [(f"{name}: {a}", f"{b} ({i})") for i, (a, b) in enumerate(rows[d::3])]
        for shard in range(8):
            _write(folder / f"{name}-{shard}.jsonl.gz", mine[shard::8])


def build_run(data: Path, output: Path, dtype: str, workers: int, steps: int):
    from flaxenc_train.config import load_config
    from flaxenc_train.loop import Run

    os.environ["FLAXENC_MIXTURE"] = str(data)
    overrides = [f"model.name_or_path={minilm_folder()}", "model.modules=[]", f"model.dtype={dtype}",
                 f"data.workers={workers}", f"max_steps={3 * steps}", f"output_dir={output}"]
    return Run(load_config(CONFIG, overrides), progress=False)


def _steps(run, batches) -> tuple[float, float]:
    """Steps `run` over `batches` as the loop does; (wall seconds until the last step is done, seconds in next())."""
    waiting = 0.0
    start = time.perf_counter()
    iterator = iter(batches)
    while True:
        before = time.perf_counter()
        item = next(iterator, None)
        waiting += time.perf_counter() - before
        if item is None:
            break
        _, loss_index, batch = item
        run.state, _ = run.step_fns[loss_index](run.state, batch)
    jax.block_until_ready(run.state)
    return time.perf_counter() - start, waiting


def _take(run, count: int, keep: list | None = None):
    """`count` (step, loss index, batch) from the run's pipeline where it stands (StreamInput.batches),
    each also added to `keep`."""
    for item in itertools.islice(run.batches.batches(0), count):
        if keep is not None:
            keep.append(item)
        yield item


def busy_share(trace_dir: Path) -> float | str:
    """The share of the traced wall time (first to last device event) in which some GPU kernel ran
    (else what the trace holds, to say why not)."""
    paths = glob.glob(str(trace_dir / "**" / "perfetto_trace.json.gz"), recursive=True)
    if not paths:
        return f"no perfetto trace under {trace_dir}: {sorted(glob.glob(str(trace_dir / '**'), recursive=True))[:20]}"
    with gzip.open(paths[0], "rt") as f:
        events = json.load(f)["traceEvents"]
    gpu = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
           and "/device:GPU" in str(e.get("args", {}).get("name", ""))}
    spans = sorted((e["ts"], e["ts"] + e.get("dur", 0)) for e in events if e.get("ph") == "X" and e.get("pid") in gpu)
    if not spans:
        names = {str(e.get("args", {}).get("name")) for e in events if e.get("name") == "process_name"}
        return f"no GPU kernels in the trace; its processes: {sorted(names)}"
    busy, end = 0.0, spans[0][0]
    for a, b in spans:  # the union of the kernels' intervals
        if b > end:
            busy += b - max(a, end)
            end = b
    return busy / (end - spans[0][0])


def measure(data: Path, dtype: str, workers: int, steps: int, profile: bool) -> dict:
    with tempfile.TemporaryDirectory() as output:
        run = build_run(data, Path(output) / "run", dtype, workers, steps)
        pipeline = run.batches.iterator
        origin = pipeline.get_state()
        started = time.perf_counter()
        _steps(run, _take(run, steps))
        warm_s = time.perf_counter() - started
        pipeline.set_state(origin)
        held: list = []
        streamed_s, waiting_s = _steps(run, _take(run, steps, held))
        memory_s, _ = _steps(run, held)
        figures = {
            "dtype": dtype, "workers": workers, "steps": steps, "batch": run.config.batch_size, "warm_up_s": round(warm_s, 1),
            "streamed_step_ms": round(1e3 * streamed_s / steps, 2), "in_memory_step_ms": round(1e3 * memory_s / steps, 2),
            "streamed_pairs_s": round(steps * run.config.batch_size / streamed_s),
            "in_memory_pairs_s": round(steps * run.config.batch_size / memory_s),
            "waiting_on_input_share": round(waiting_s / streamed_s, 3),
            "device_idle_share": round(max(0.0, 1 - memory_s / streamed_s), 3),
        }
        if profile:
            for name, batches in (("streamed", None), ("in_memory", held)):
                trace = Path(output) / f"trace-{name}"
                if batches is None:
                    pipeline.set_state(origin)
                    batches = _take(run, steps)
                with jax.profiler.trace(str(trace), create_perfetto_trace=True):
                    _steps(run, batches)
                share = busy_share(trace)
                figures[f"profile_{name}_busy_share"] = share if isinstance(share, str) else round(share, 3)
        run.batches.close()
        return figures


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--settings", default="float32:0,float32:4,bfloat16:4", help="dtype:workers, comma-separated")
    parser.add_argument("--profile", action="store_true", help="also read the GPU's busy share off a jax.profiler trace")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    results = {"device": str(jax.devices()[0].device_kind), "cores": len(os.sched_getaffinity(0)), "settings": []}
    with tempfile.TemporaryDirectory() as data:
        write_mixture(Path(data), args.steps * 1024 * 3)  # no dataset runs out within the steps, whatever the draw
        for setting in args.settings.split(","):
            dtype, workers = setting.split(":")
            figures = measure(Path(data), dtype, int(workers), args.steps, args.profile)
            print(figures, flush=True)
            results["settings"].append(figures)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
