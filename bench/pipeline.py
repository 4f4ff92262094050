"""The input pipeline alone, on one host core: pairs/s against the fast tokenizer's own, and host memory.

    python -m bench.pipeline [--pairs 20000] [--repeats 5] [--rss-pairs 10000000] [--workers 0,1,2]
                             [--sections one-core,workers,rss] [--json PATH]

Side by side, pinned to one core (tokenizer threads off), in turn --repeats times (the ratio is the
median of each turn's): the MiniLM fast tokenizer on the pairs
(the Rust tokenizer's encode_batch_fast on both texts, batches of 256, as the pipeline calls it; and
for reference the transformers tokenizer call, which adds a Python conversion per text), then
flaxenc's streamed pipeline on the same pairs written as a jsonl.gz (read, check, shuffle,
tokenize, no-duplicate batching, pack into a batch of 1024 rows). On STS-B-like pairs (STS-B train,
repeated) and on recipe 2's long texts (MRPC pairs joined into ~400-token texts). Then, on all the
machine's cores, the pipeline with each --workers count (grain worker processes read, shuffle and
tokenize; the main process batches and packs), and the main process's part alone on rows
tokenized beforehand: the ceiling that more workers approach. Then RSS while streaming a synthetic mixture of
--rss-pairs pairs in 3 jsonl.gz datasets, against one of a hundredth of that size: memory must not
grow with the data.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"


def _pairs_stsb(n: int) -> list[tuple[str, str]]:
    from bench.data import read_stsb

    rows = [(a, b) for a, b, _ in read_stsb("train")]
    return [(f"{a} ({i // len(rows)})", b) for i, (a, b) in ((i, rows[i % len(rows)]) for i in range(n))]


def _pairs_long(n: int) -> list[tuple[str, str]]:
    from bench.data import read_mrpc

    rows = [(a, b) for a, b, _ in read_mrpc("train")]
    joined = [(" ".join(rows[(i + k) % len(rows)][0] for k in range(12)), " ".join(rows[(i + k) % len(rows)][1] for k in range(12))) for i in range(n)]
    return joined


def _write(path: Path, pairs) -> None:
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:
        for a, b in pairs:
            f.write(json.dumps({"anchor": a, "positive": b}) + "\n")


def _tokenizer():
    from transformers import AutoTokenizer

    from bench.models import minilm_folder

    return AutoTokenizer.from_pretrained(str(minilm_folder()))


def tokenizer_pairs_per_second(tokenizer, pairs, max_length: int) -> float:
    """The Rust tokenizer alone, as the pipeline calls it: both texts, 256 at a time."""
    from flaxenc.encoder import rust_tokenizer

    fast = rust_tokenizer(tokenizer, max_length)
    start = time.perf_counter()
    for i in range(0, len(pairs), 256):
        chunk = pairs[i : i + 256]
        for column in (0, 1):
            [e.ids for e in fast.encode_batch_fast([p[column] for p in chunk])]
    return len(pairs) / (time.perf_counter() - start)


def transformers_pairs_per_second(tokenizer, pairs, max_length: int) -> float:
    """The transformers tokenizer call on the same chunks (what ST's collator calls)."""
    start = time.perf_counter()
    for i in range(0, len(pairs), 256):
        chunk = pairs[i : i + 256]
        for column in (0, 1):
            tokenizer([p[column] for p in chunk], truncation=True, max_length=max_length, padding=False,
                      return_attention_mask=False, return_token_type_ids=False)
    return len(pairs) / (time.perf_counter() - start)


def _pipeline(patterns, tokenizer, max_length: int, batch: int, packing: bool = True, workers: int = 0):
    from flaxenc.encoder import sequence_buckets
    from flaxenc_train.config import DatasetConfig
    from flaxenc_train.pipeline import BatchShape, PipelineOptions, build_pipeline

    specs = [DatasetConfig(path=str(p), text_columns=("anchor", "positive"), label_column=None, weight=w)
             for p, w in zip(patterns, (0.5, 0.3, 0.2))]
    iterator, _ = build_pipeline(
        specs, [None] * len(specs), tokenizer, max_length, global_batch=batch,
        shape=BatchShape(sequence_buckets(max_length), tokenizer.pad_token_id or 0, packing, 1),
        options=PipelineOptions(no_duplicates=True, prefetch=1, workers=workers), seed=0, process_index=0, process_count=1,
    )
    return iterator


def pipeline_pairs_per_second(paths, tokenizer, pairs: int, max_length: int, batch: int = 1024, workers: int = 0) -> float:
    batch = min(batch, pairs // 4)  # the file's distinct texts fill several batches without a repeat
    iterator = _pipeline(paths, tokenizer, max_length, batch, workers=workers)
    next(iterator)  # opens the file, fills the first shuffle window
    steps = max(1, pairs // batch - 1)
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    elapsed = time.perf_counter() - start
    iterator.close()
    return steps * batch / elapsed


def assembly_pairs_per_second(tokenizer, pairs, max_length: int, batch: int = 1024) -> float:
    """The main process's part alone (no-duplicate batching, padding, packing) on rows tokenized beforehand:
    with enough grain workers to read and tokenize, this is the pipeline's ceiling on one host."""
    import grain

    from flaxenc.encoder import sequence_buckets
    from flaxenc_train.chunks import TokenizeChunk
    from flaxenc_train.exchange import HostExchange
    from flaxenc_train.pipeline import BatchShape, GlobalBatches, _Rows

    tokenize = TokenizeChunk(tokenizer, max_length, with_keys=True)
    chunks = [tokenize({"texts": [list(column) for column in zip(*pairs[i : i + 256])], "labels": None, "skipped": []})
              for i in range(0, len(pairs), 256)]
    stream = _Rows(grain.MapDataset.source(chunks).to_iter_dataset())
    batches = GlobalBatches(
        [stream], [1.0], policy="one", sampler="weighted", seed=0, local_batch=batch,
        shape=BatchShape(sequence_buckets(max_length), tokenizer.pad_token_id or 0, True, 1), no_duplicates=True,
        exchange=HostExchange(0, 1), labels=[False],
    )
    steps = len(pairs) // batch - 2  # rows set aside by no_duplicates wait for later batches: leave them room
    next(batches)
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return steps * batch / (time.perf_counter() - start)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def streaming_rss(folder: Path, tokenizer, total_pairs: int, steps: int) -> dict:
    """RSS after `steps` batches of 1024 from a 3-dataset mixture of total_pairs synthetic pairs."""
    patterns = []
    for name, share in zip("abc", (0.5, 0.3, 0.2)):
        path = folder / f"{name}-{total_pairs}.jsonl.gz"
        if not path.exists():
            _write(path, ((f"{name} question {i} on topic {i % 977} with words {i % 31}", f"{name} answer {i} about {i % 541}")
                          for i in range(int(total_pairs * share))))
        patterns.append(path)
    iterator = _pipeline(patterns, tokenizer, 128, 1024)
    before = rss_mb()
    for _ in range(steps):
        next(iterator)
    after = rss_mb()
    iterator.close()
    size = sum(p.stat().st_size for p in patterns) / 1e6
    return {"pairs": total_pairs, "gz_mb": round(size, 1), "steps": steps, "rss_mb_start": round(before), "rss_mb_end": round(after)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--rss-pairs", type=int, default=10_000_000)
    parser.add_argument("--rss-steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5, help="tokenizer and pipeline passes, in turn (one core)")
    parser.add_argument("--workers", default="0,1,2", help="worker counts for the scaling pass on all cores")
    parser.add_argument("--sections", default="one-core,workers,rss", help="which passes to run, of one-core,workers,rss")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    all_cores = os.sched_getaffinity(0)
    tokenizer = _tokenizer()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "one-core" in sections:
            results["cores"] = 1
            os.sched_setaffinity(0, {sorted(all_cores)[0]})  # one host core
            for name, pairs, max_length in (("stsb_like", _pairs_stsb(args.pairs), 128), ("recipe2_long", _pairs_long(args.pairs // 4), 512)):
                path = Path(tmp) / f"{name}.jsonl.gz"
                _write(path, pairs)
                alone, whole = [], []
                for _ in range(args.repeats):  # in turn: the core's speed drifts over a run, and both see the same
                    alone.append(tokenizer_pairs_per_second(tokenizer, pairs, max_length))
                    whole.append(pipeline_pairs_per_second([path], tokenizer, len(pairs), max_length))
                call = transformers_pairs_per_second(tokenizer, pairs, max_length)
                assembly = assembly_pairs_per_second(tokenizer, pairs, max_length, min(1024, len(pairs) // 4))
                results[name] = {"pairs": len(pairs), "tokenizer_pairs_s": round(statistics.median(alone)),
                                 "transformers_call_pairs_s": round(call), "pipeline_pairs_s": round(statistics.median(whole)),
                                 "ratio": round(statistics.median(w / a for w, a in zip(whole, alone)), 3),
                                 "ratios": [round(w / a, 3) for w, a in zip(whole, alone)],
                                 "main_process_assembly_pairs_s": round(assembly)}
                print(name, results[name], flush=True)
            os.sched_setaffinity(0, all_cores)
        if "workers" in sections:
            results["workers"] = worker_scaling(Path(tmp), tokenizer, args.pairs * 2, [int(w) for w in args.workers.split(",")])
        if "rss" in sections:
            folder = Path(os.environ.get("FLAXENC_BENCH_TMP", tmp))
            small = streaming_rss(folder, tokenizer, max(args.rss_pairs // 100, 30_000), args.rss_steps)
            large = streaming_rss(folder, tokenizer, args.rss_pairs, args.rss_steps)
            results["rss"] = {"small": small, "large": large, "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
            print("rss", results["rss"], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def worker_scaling(folder: Path, tokenizer, count: int, workers: list[int]) -> dict:
    """Pairs/s of the pipeline on every core with each count of grain worker processes (one dataset in as
    many shards as the most workers, at least 8: each worker reads its own files); the Rust tokenizer on
    the same pairs, on one core, beside it."""
    pairs, shards = _pairs_stsb(count), max(8, *workers)
    for i in range(shards):
        _write(folder / f"scaling-{i}.jsonl.gz", pairs[i::shards])
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {sorted(cores)[0]})
    results = {"cores": len(cores), "tokenizer_one_core_pairs_s": round(tokenizer_pairs_per_second(tokenizer, pairs, 128))}
    os.sched_setaffinity(0, cores)
    for n in workers:
        results[str(n)] = round(pipeline_pairs_per_second([folder / "scaling-*.jsonl.gz"], tokenizer, len(pairs), 128, workers=n))
        print("workers", n, results[str(n)], flush=True)
    return results

if __name__ == "__main__":
    main()
