"""ST's applications/semantic-search/semantic_search.py in flaxenc: the corpus entries closest to each query.

ST embeds a small corpus and a few queries and takes each query's top 5 by cosine similarity; here the
corpus is the distinct second sentences of STS-B test and the queries are its first sentences, so each
query's gold paraphrase is in the corpus.

    python -m examples.semantic_search [--corpus-size 1000] [--queries 5] [--top-k 5]
"""

from __future__ import annotations

import sys

from bench.data import read_stsb
from examples.common import load, parser, unique
from flaxenc import util


def main(argv: list[str] | None = None) -> list[list[dict]]:
    args = _arguments().parse_args(argv)
    encoder = load(args.model)
    rows = read_stsb("test")
    corpus = unique(second for _, second, _ in rows)[: args.corpus_size]
    queries = [first for first, _, _ in rows[: args.queries]]

    corpus_embeddings = encoder.encode_document(corpus, convert_to_tensor=True)
    query_embeddings = encoder.encode_query(queries, convert_to_tensor=True)
    # Cosine similarity and top k on device (ST's example does the same with model.similarity + torch.topk).
    hits = util.semantic_search(query_embeddings, corpus_embeddings, top_k=args.top_k)
    for query, query_hits in zip(queries, hits):
        print("\nQuery:", query)
        print(f"Top {args.top_k} most similar sentences in corpus:")
        for hit in query_hits:
            print(corpus[hit["corpus_id"]], f"(Score: {hit['score']:.4f})")
    return hits


def _arguments():
    result = parser(__doc__.split("\n\n")[0])
    result.add_argument("--corpus-size", type=int, default=1000)
    result.add_argument("--queries", type=int, default=5)
    result.add_argument("--top-k", type=int, default=5)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
