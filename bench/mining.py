"""Hard-negative mining: flaxenc.util.mine_hard_negatives against ST's util.mine_hard_negatives.

`python -m bench.mining` mines negatives for STS-B train (sentence1, sentence2) pairs with
all-MiniLM-L6-v2 on both sides (same options, ST's default triplet output, 3 negatives) and prints
the best wall time of each, encoding included, and whether the outputs agree. Each side runs once
to warm up (jit compiles, torch allocator) on a small slice, then `--repeats` timed runs, the two
sides alternating.
"""

from __future__ import annotations

import argparse
import json
import time

from bench import data as shared_data
from bench.models import minilm_folder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000, help="STS-B train pairs (2 sentences each)")
    parser.add_argument("--num-negatives", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    import datasets
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives as st_mine

    import flaxenc
    from flaxenc.util import mine_hard_negatives

    rows = shared_data.read_stsb("train")[: args.pairs]
    pairs = {"anchor": [r[0] for r in rows], "positive": [r[1] for r in rows]}
    warm = {key: value[:64] for key, value in pairs.items()}
    st_model = SentenceTransformer(str(minilm_folder()), device="cpu")
    encoder = flaxenc.SentenceEncoder.from_pretrained(minilm_folder())
    sides = {
        "flaxenc": lambda data: mine_hard_negatives(data, encoder, num_negatives=args.num_negatives),
        "st": lambda data: st_mine(
            datasets.Dataset.from_dict(data), st_model, num_negatives=args.num_negatives, verbose=False
        ).to_dict(),
    }
    times, outputs = {name: float("inf") for name in sides}, {}
    for run in sides.values():
        run(warm)
    for _ in range(args.repeats):  # alternating, so both sides see the same machine load
        for name, run in sides.items():
            start = time.perf_counter()
            outputs[name] = run(pairs)
            times[name] = min(times[name], time.perf_counter() - start)
    same = outputs["flaxenc"] == outputs["st"]
    sentences = 2 * args.pairs
    print(
        f"mine_hard_negatives, {sentences} sentences: flaxenc {times['flaxenc']:.1f} s, ST {times['st']:.1f} s, "
        f"ST / flaxenc {times['st'] / times['flaxenc']:.2f}; outputs identical: {same}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"sentences": sentences, "seconds": times, "identical": same}, f, indent=1)


if __name__ == "__main__":
    main()
