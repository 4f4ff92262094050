"""Writes a toy mixture for configs/all_minilm_mixture.yaml: 3 datasets of (anchor, positive) pairs, 2 jsonl.gz shards each.

    python -m bench.make_mixture FOLDER [--pairs 3000]

The pairs are STS-B's sentence pairs (from ../shared/data) with the dataset's name prefixed,
or numbered synthetic sentences when STS-B is not found.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

NAMES = ("reddit", "s2orc", "stackexchange")


def pairs(count: int) -> list[tuple[str, str]]:
    try:
        from bench.data import read_stsb

        rows = [(a, b) for a, b, _ in read_stsb("train")]
    except FileNotFoundError:
        rows = [(f"sentence {i} about topic {i % 97}", f"another sentence {i} on {i % 89}") for i in range(5000)]
    return [rows[i % len(rows)] for i in range(count)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--pairs", type=int, default=3000, help="pairs per dataset")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        rows = pairs(args.pairs)
        for shard in range(2):
            with gzip.open(folder / f"{name}-{shard:05d}-of-00002.jsonl.gz", "wt", encoding="utf-8") as f:
                for anchor, positive in rows[shard::2]:
                    f.write(json.dumps({"anchor": f"[{name}] {anchor}", "positive": positive}) + "\n")
    print(f"{len(NAMES)} datasets of {args.pairs} pairs in {folder}")


if __name__ == "__main__":
    main()
