"""Semantic search: flaxenc.util.semantic_search against ST's util.semantic_search on the same embeddings.

`python -m bench.search` (or `python -m bench --only search`) searches 1k random queries over 100k
random corpus embeddings (dim 384, float32 numpy on the host, cosine, top 10) with each library's
default chunk sizes, and prints queries/s, the ratio and how many hits agree. Each side runs once to
warm up (jit compiles), then `repeats` timed runs, the two sides alternating; the fastest counts.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def measure_search(
    queries: int = 1000, corpus: int = 100_000, dim: int = 384, top_k: int = 10, repeats: int = 2, seed: int = 0
) -> dict:
    """Figures of one setting: per side the best seconds and queries/s; the ratio flaxenc / ST (queries/s)."""
    import torch
    from sentence_transformers import util as st_util

    from flaxenc import util

    rng = np.random.default_rng(seed)
    query_embeddings = rng.standard_normal((queries, dim), dtype=np.float32)
    corpus_embeddings = rng.standard_normal((corpus, dim), dtype=np.float32)
    sides = {
        "flaxenc": lambda q, c: util.semantic_search(q, c, top_k=top_k),
        "st": lambda q, c: st_util.semantic_search(torch.from_numpy(q), torch.from_numpy(c), top_k=top_k),
    }
    figures: dict = {}
    for name, search in sides.items():  # warm-up: compiles (flaxenc), allocator (torch)
        start = time.perf_counter()
        search(query_embeddings, corpus_embeddings)
        figures[name] = {"first_call_s": time.perf_counter() - start, "seconds": float("inf")}
    hits = {}
    for _ in range(repeats):  # alternating, so both sides see the same machine load
        for name, search in sides.items():
            start = time.perf_counter()
            hits[name] = search(query_embeddings, corpus_embeddings)
            figures[name]["seconds"] = min(figures[name]["seconds"], time.perf_counter() - start)
    for name in sides:
        figures[name]["per_s"] = queries / figures[name]["seconds"]
    same = sum(
        [h["corpus_id"] for h in mine] == [h["corpus_id"] for h in theirs] for mine, theirs in zip(hits["flaxenc"], hits["st"])
    )
    return {
        "queries": queries, "corpus": corpus, "dim": dim, "top_k": top_k, **figures,
        "ratio": figures["flaxenc"]["per_s"] / figures["st"]["per_s"], "same_hits": same / queries,
    }  # fmt: skip


def search_lines(cells: list[dict]) -> str:
    """The report's lines for the search section."""
    lines = []
    for cell in cells:
        if "error" in cell:
            lines.append(f"  {cell['label']}: {cell['error']}")
            continue
        lines.append(
            f"semantic_search, {cell['queries']:,} queries over {cell['corpus']:,} x {cell['dim']} (top {cell['top_k']}): "
            f"flaxenc {cell['flaxenc']['seconds']:.2f} s ({cell['flaxenc']['per_s']:,.0f} queries/s, first call "
            f"{cell['flaxenc']['first_call_s']:.2f} s), ST {cell['st']['seconds']:.2f} s ({cell['st']['per_s']:,.0f} "
            f"queries/s); flaxenc/ST {cell['ratio']:.2f}; identical hits for {100 * cell['same_hits']:.1f}% of queries"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--corpus", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    cell = measure_search(args.queries, args.corpus, args.dim, args.top_k, args.repeats)
    print(search_lines([cell]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(cell, f, indent=1)


if __name__ == "__main__":
    main()
