"""ST's applications/paraphrase-mining/paraphrase_mining.py in flaxenc: the most similar pairs in a list.

ST mines a handful of sentences; here the distinct sentences of STS-B dev (the first --sentences of them).

    python -m examples.paraphrase_mining [--sentences 1000] [--show 10]
"""

from __future__ import annotations

import sys

from bench.data import read_stsb
from examples.common import load, parser, unique
from flaxenc import util


def main(argv: list[str] | None = None) -> list[list]:
    args = _arguments().parse_args(argv)
    encoder = load(args.model)
    sentences = unique(text for first, second, _ in read_stsb("dev") for text in (first, second))[: args.sentences]
    # [score, i, j] with i < j, best first; each sentence's top_k candidates are scored on device.
    paraphrases = util.paraphrase_mining(encoder, sentences)
    for score, i, j in paraphrases[: args.show]:
        print(f"{sentences[i]} \t\t {sentences[j]} \t\t Score: {score:.4f}")
    return paraphrases


def _arguments():
    result = parser(__doc__.split("\n\n")[0])
    result.add_argument("--sentences", type=int, default=1000)
    result.add_argument("--show", type=int, default=10)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
