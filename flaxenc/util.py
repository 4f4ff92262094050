"""Retrieval utilities: top-k search on device, and hard-negative mining as ST's util.mine_hard_negatives.

`semantic_search`, `paraphrase_mining(_embeddings)` and `community_detection` (ST's util functions, the
corpus split over the devices) live in flaxenc/search.py and are re-exported here.

The corpus and the queries are embedded by flaxenc (`SentenceEncoder.encode`, normalized); the
top-k search runs on device, jitted, with the queries split over every local device and the
corpus scanned in chunks (a running top-k merged chunk by chunk), so memory stays bounded by
`query_chunk_size x corpus_chunk_size` scores, never queries x corpus. The filtering that follows
(self matches, positives, margins, score bounds, range, sampling) copies ST's
sentence_transformers/util/hard_negatives.py step for step, on the candidates alone, in numpy.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flaxenc import sharding
from flaxenc.search import (
    community_detection,
    cos_sim,
    dot_score,
    paraphrase_mining,
    paraphrase_mining_embeddings,
    semantic_search,
)

OUTPUT_FORMATS = ("triplet", "n-tuple", "labeled-pair", "labeled-list")


@functools.partial(jax.jit, static_argnames=("k", "corpus_chunk_size"))
def _chunked_top_k(queries: jax.Array, corpus: jax.Array, k: int, corpus_chunk_size: int):
    """(scores, indices) [Q, k] of the k largest queries @ corpus.T, the corpus scanned in chunks."""
    size, dim = corpus.shape
    chunks = -(-size // corpus_chunk_size)
    padded = jnp.pad(corpus, ((0, chunks * corpus_chunk_size - size), (0, 0))).reshape(chunks, corpus_chunk_size, dim)
    start_best = (
        jnp.full((queries.shape[0], k), -jnp.inf, jnp.float32),
        jnp.full((queries.shape[0], k), -1, jnp.int32),
    )

    def body(best, chunk_and_offset):
        chunk, offset = chunk_and_offset
        scores = queries @ chunk.T  # [Q, chunk]
        index = offset + jnp.arange(corpus_chunk_size, dtype=jnp.int32)
        scores = jnp.where(index < size, scores, -jnp.inf)
        chunk_scores, chunk_local = jax.lax.top_k(scores, min(k, corpus_chunk_size))
        merged_scores = jnp.concatenate([best[0], chunk_scores], axis=1)
        merged_index = jnp.concatenate([best[1], index[chunk_local]], axis=1)
        top_scores, picked = jax.lax.top_k(merged_scores, k)
        return (top_scores, jnp.take_along_axis(merged_index, picked, axis=1)), None

    offsets = jnp.arange(chunks, dtype=jnp.int32) * corpus_chunk_size
    best, _ = jax.lax.scan(body, start_best, (padded, offsets))
    return best


def top_k_search(
    query_embeddings: np.ndarray,
    corpus_embeddings: np.ndarray,
    k: int,
    query_chunk_size: int = 16384,
    corpus_chunk_size: int = 65536,
    devices: Sequence[jax.Device] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k highest dot-product scores of each query over the corpus, and their corpus indices.

    Returns (scores, indices), each [Q, k], best first; where the corpus has fewer than k entries
    the rest are -inf and -1 (as ST pads). Queries go `query_chunk_size` at a time, split over the
    devices; each device scans the corpus `corpus_chunk_size` rows at a time. Normalized
    embeddings make this cosine similarity.
    """
    queries = np.asarray(query_embeddings, np.float32)
    corpus = np.asarray(corpus_embeddings, np.float32)
    mesh = sharding.data_mesh(devices)
    corpus_chunk_size = max(1, min(corpus_chunk_size, len(corpus)))
    corpus_on_device = jax.device_put(corpus, sharding.replicated(mesh))
    query_chunk_size = -(-min(query_chunk_size, max(1, len(queries))) // mesh.size) * mesh.size
    all_scores, all_indices = [], []
    for start in range(0, len(queries), query_chunk_size):
        chunk = queries[start : start + query_chunk_size]
        rows = len(chunk)
        if rows < query_chunk_size:  # one shape: pad the last chunk
            chunk = np.pad(chunk, ((0, query_chunk_size - rows), (0, 0)))
        chunk = jax.device_put(chunk, sharding.batch_sharding(mesh))
        scores, indices = _chunked_top_k(chunk, corpus_on_device, k, corpus_chunk_size)
        all_scores.append(np.asarray(scores)[:rows])
        all_indices.append(np.asarray(indices)[:rows])
    if not all_scores:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(all_scores), np.concatenate(all_indices).astype(np.int64)


def _column(dataset: Any, name: str) -> list:
    return list(dataset[name])


def _column_names(dataset: Any) -> list[str]:
    if hasattr(dataset, "column_names"):
        return list(dataset.column_names)
    if isinstance(dataset, Mapping):
        return list(dataset)
    raise TypeError("dataset must be a mapping of column name -> list of texts, or a datasets.Dataset")


def _default_prompt(encoder, prompt, prompt_name, names):
    """ST's encode_query / encode_document: the model's "query" (or "document", ...) prompt by default."""
    if prompt is not None or prompt_name is not None:
        return prompt, prompt_name
    return None, next((name for name in names if name in encoder.prompts), None)


def mine_hard_negatives(
    dataset: Any,
    model,
    anchor_column_name: str | None = None,
    positive_column_name: str | None = None,
    corpus: Sequence[str] | None = None,
    range_min: int = 0,
    range_max: int | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    num_negatives: int = 3,
    sampling_strategy: str = "top",
    query_prompt_name: str | None = None,
    query_prompt: str | None = None,
    corpus_prompt_name: str | None = None,
    corpus_prompt: str | None = None,
    include_positives: bool = False,
    output_format: str = "triplet",
    output_scores: bool = False,
    batch_size: int = 32,
    query_chunk_size: int = 16384,
    corpus_chunk_size: int = 65536,
    seed: int | None = None,
) -> dict[str, list]:
    """Hard negatives for (anchor, positive) pairs, as ST's `util.mine_hard_negatives` mines them.

    dataset: a mapping column -> list of texts, or a `datasets.Dataset`; model: a SentenceEncoder.
    The options are ST's (range_min, range_max, max_score, min_score, absolute_margin,
    relative_margin, num_negatives, sampling_strategy "top" or "random", prompts,
    include_positives, output_format "triplet", "n-tuple", "labeled-pair" or "labeled-list",
    output_scores); ST's `faiss_batch_size` is `query_chunk_size` here, and `corpus_chunk_size`
    bounds the corpus rows scored at once. No cross-encoder rescoring. Random sampling draws with
    Python's `random.Random(seed)` (ST draws with the global `random`).

    Returns the output columns as a dict of lists, in ST's column order
    (`datasets.Dataset.from_dict(result)` gives ST's Dataset).
    """
    if sampling_strategy not in ("top", "random"):
        raise ValueError(f"sampling_strategy must be 'top' or 'random', got {sampling_strategy!r}")
    columns = _column_names(dataset)
    if len(columns) == 0 or len(_column(dataset, columns[0])) == 0:
        raise ValueError("The dataset is empty. Please provide a non-empty dataset.")
    if not anchor_column_name or anchor_column_name not in columns:
        anchor_column_name = columns[0]
    if not positive_column_name or positive_column_name not in columns:
        if len(columns) < 2:
            raise ValueError("Dataset must contain at least two columns to select the positive column automatically.")
        positive_column_name = columns[1]
    if include_positives:
        output_format = "n-tuple"  # ST: keeps the ranking order
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(
            f"Invalid output_format: {output_format}. Must be one of {', '.join(map(repr, OUTPUT_FORMATS))}."
        )
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be at least 1, got num_negatives={num_negatives}.")

    queries = [str(q) for q in _column(dataset, anchor_column_name)]
    positives = [str(p) for p in _column(dataset, positive_column_name)]
    max_positives = max(Counter(queries).values())  # ST: rows per anchor (pandas groupby count)
    if range_max is None:
        filtered = absolute_margin is not None or relative_margin is not None or max_score is not None
        range_max = range_min + num_negatives * (10 if filtered else 1) + max_positives
    if range_min < 0:
        raise ValueError(f"range_min must be non-negative, got range_min={range_min}.")
    if range_min >= range_max:
        raise ValueError(
            f"range_min must be smaller than range_max, got range_min={range_min} and range_max={range_max}."
        )
    if num_negatives > range_max - range_min:
        raise ValueError(
            f"Cannot mine {num_negatives} negatives per query: only {range_max - range_min} candidates remain after "
            f"skipping the first range_min={range_min} of range_max={range_max}."
        )

    corpus = positives if corpus is None else [str(c) for c in corpus]
    corpus = list(dict.fromkeys(corpus + positives))  # positives in the corpus, deduplicated
    corpus_index = {text: index for index, text in enumerate(corpus)}
    all_queries = queries
    queries = list(dict.fromkeys(queries))
    query_index = {query: index for index, query in enumerate(queries)}
    n_queries = len(queries)
    query_corpus_indices = [corpus_index.get(query, -1) for query in queries]

    prompt, prompt_name = _default_prompt(model, corpus_prompt, corpus_prompt_name, ("document", "passage", "corpus"))
    corpus_embeddings = model.encode(
        corpus, batch_size=batch_size, normalize_embeddings=True, prompt=prompt, prompt_name=prompt_name
    )
    prompt, prompt_name = _default_prompt(model, query_prompt, query_prompt_name, ("query",))
    query_embeddings = model.encode(
        queries, batch_size=batch_size, normalize_embeddings=True, prompt=prompt, prompt_name=prompt_name
    )

    candidate_count = range_max + max_positives + 1
    scores, indices = top_k_search(
        query_embeddings, corpus_embeddings, min(candidate_count, len(corpus)), query_chunk_size, corpus_chunk_size
    )
    missing = candidate_count - scores.shape[1]
    if missing > 0:
        scores = np.concatenate([scores, np.full((n_queries, missing), -np.inf, np.float32)], axis=1)
        indices = np.concatenate([indices, np.full((n_queries, missing), -1, np.int64)], axis=1)

    # Each unique query's positives (corpus indices), in ST's order; rows are regrouped by query.
    positive_indices: list[list[int]] = [[] for _ in range(n_queries)]
    for query, positive in zip(all_queries, positives):
        row = query_index[query]
        if corpus_index[positive] not in positive_indices[row]:
            positive_indices[row].append(corpus_index[positive])
        if include_positives and query == positive:
            query_corpus_indices[row] = -1
    n_positives = np.array([len(p) for p in positive_indices])
    positives = [corpus[index] for row in positive_indices for index in row]
    all_queries = [queries[row] for row in range(n_queries) for _ in range(n_positives[row])]
    positive_query_rows = np.repeat(np.arange(n_queries), n_positives)
    positive_scores = np.sum(
        query_embeddings[positive_query_rows] * corpus_embeddings[[i for r in positive_indices for i in r]], axis=1
    )

    scores = scores.copy()
    scores[indices == -1] = -np.inf
    scores[indices == np.asarray(query_corpus_indices)[:, None]] = -np.inf
    if not include_positives:
        for row, row_positives in enumerate(positive_indices):
            scores[row, np.isin(indices[row], row_positives)] = -np.inf
    if absolute_margin is not None or relative_margin is not None:
        # the hardest (lowest-scored) positive of each query sets the margin
        starts = np.concatenate([[0], np.cumsum(n_positives)[:-1]])
        hardest_positive = np.minimum.reduceat(positive_scores, starts)[:, None]
        if absolute_margin is not None:
            scores[scores + absolute_margin > hardest_positive] = -np.inf
        if relative_margin is not None:
            scores[scores > hardest_positive - np.abs(hardest_positive) * relative_margin] = -np.inf
    if max_score is not None:
        scores[scores > max_score] = -np.inf
    if min_score is not None:
        scores[(scores < min_score) & (scores != -np.inf)] = -np.inf

    # The range_max best candidates left (a stable sort keeps the search's order among ties), then from range_min.
    order = np.argsort(-scores, axis=1, kind="stable")[:, :range_max]
    negative_scores = np.take_along_axis(scores, order, axis=1)[:, range_min:]
    negative_indices = np.take_along_axis(indices, order, axis=1)[:, range_min:]
    if sampling_strategy == "top":
        negative_scores, negative_indices = negative_scores[:, :num_negatives], negative_indices[:, :num_negatives]
    else:
        rng = random.Random(seed)
        options = np.maximum(negative_scores.shape[1] - np.isinf(negative_scores).sum(1), num_negatives)
        sampled = np.array([rng.sample(range(count), k=num_negatives) for count in options])
        negative_scores = np.take_along_axis(negative_scores, sampled, axis=1)
        negative_indices = np.take_along_axis(negative_indices, sampled, axis=1)
        resort = np.argsort(-negative_scores, axis=1, kind="stable")
        negative_scores = np.take_along_axis(negative_scores, resort, axis=1)
        negative_indices = np.take_along_axis(negative_indices, resort, axis=1)
    return _output(
        output_format, output_scores, anchor_column_name, positive_column_name, queries, all_queries, positives,
        corpus, positive_indices, positive_scores, negative_indices, negative_scores, n_positives,
    )  # fmt: skip


def _output(
    output_format, output_scores, anchor_name, positive_name, queries, all_queries, positives, corpus,
    positive_indices, positive_scores, negative_indices, negative_scores, n_positives,
) -> dict[str, list]:  # fmt: skip
    """The mined rows in ST's output formats (hard_negatives.py, after sampling)."""
    scores = np.repeat(negative_scores, n_positives, axis=0)  # one row per (query, positive)
    indices = np.repeat(negative_indices, n_positives, axis=0)
    keep = scores != -np.inf
    if output_format == "triplet":
        data = {anchor_name: [], positive_name: [], "negative": []}
        if output_scores:
            data["scores"] = []
        for row, column in zip(*np.nonzero(keep)):
            data[anchor_name].append(all_queries[row])
            data[positive_name].append(positives[row])
            data["negative"].append(corpus[indices[row, column]])
            if output_scores:
                data["scores"].append([float(positive_scores[row]), float(scores[row, column])])
        return data
    if output_format == "labeled-pair":
        data = {anchor_name: [], positive_name: [], "score" if output_scores else "label": []}
        target = data["score" if output_scores else "label"]
        position = 0
        for row, query in enumerate(queries):
            for index in positive_indices[row]:
                data[anchor_name].append(query)
                data[positive_name].append(corpus[index])
                target.append(float(positive_scores[position]) if output_scores else 1)
                position += 1
            for index, score in zip(negative_indices[row], negative_scores[row]):
                if score == -np.inf:
                    continue
                data[anchor_name].append(query)
                data[positive_name].append(corpus[index])
                target.append(float(score) if output_scores else 0)
        return data
    if output_format == "n-tuple":
        full = keep.all(axis=1)
        data = {
            anchor_name: [q for q, k in zip(all_queries, full) if k],
            positive_name: [p for p, k in zip(positives, full) if k],
        }
        for column in range(indices.shape[1]):
            data[f"negative_{column + 1}"] = [corpus[i] for i in indices[full, column]]
        if output_scores:
            data["scores"] = np.concatenate([positive_scores[full, None], scores[full]], axis=1).tolist()
        return data
    # labeled-list
    rows = [row for row in range(len(all_queries)) if keep[row].any()]
    data = {
        anchor_name: [all_queries[row] for row in rows],
        positive_name: [[positives[row]] + [corpus[i] for i, k in zip(indices[row], keep[row]) if k] for row in rows],
    }
    if output_scores:
        data["scores"] = [[float(positive_scores[row])] + scores[row][keep[row]].tolist() for row in rows]
    else:
        data["labels"] = [[1] + [0] * int(keep[row].sum()) for row in rows]
    return data


__all__ = [
    "community_detection",
    "cos_sim",
    "dot_score",
    "mine_hard_negatives",
    "paraphrase_mining",
    "paraphrase_mining_embeddings",
    "semantic_search",
    "top_k_search",
]
