"""ST's applications/clustering/fast_clustering.py in flaxenc: community detection over embeddings.

ST clusters 50k Quora questions (communities of at least 25 at cosine >= 0.75); here the distinct
sentences of all STS-B splits, whose paraphrase pairs form small communities (at least 3 by default).

    python -m examples.clustering [--sentences 2000] [--min-community-size 3] [--threshold 0.75]
"""

from __future__ import annotations

import sys

from bench.data import SPLITS, read_stsb
from examples.common import load, parser, unique
from flaxenc import util


def main(argv: list[str] | None = None) -> list[list[int]]:
    args = _arguments().parse_args(argv)
    encoder = load(args.model)
    corpus = unique(text for split in SPLITS for first, second, _ in read_stsb(split) for text in (first, second))
    corpus = corpus[: args.sentences]
    embeddings = encoder.encode(corpus, batch_size=64, show_progress_bar=True, convert_to_tensor=True)
    # Each community starts with its centre; communities are sorted by size, largest first.
    clusters = util.community_detection(embeddings, min_community_size=args.min_community_size, threshold=args.threshold)
    for i, cluster in enumerate(clusters):
        print(f"\nCluster {i + 1}, #{len(cluster)} Elements ")
        for sentence_id in cluster[:3]:
            print("\t", corpus[sentence_id])
        print("\t", "...")
    return clusters


def _arguments():
    result = parser(__doc__.split("\n\n")[0])
    result.add_argument("--sentences", type=int, default=2000)
    result.add_argument("--min-community-size", type=int, default=3)
    result.add_argument("--threshold", type=float, default=0.75)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
