"""Semantic search, paraphrase mining and community detection on device, as ST's util/retrieval.py.

`semantic_search` splits the corpus over every device of a one-axis mesh and streams it from the host
`corpus_chunk_size` rows at a time: each device scores all queries (`query_chunk_size` at a time)
against its shard of the chunk and keeps its top k; the devices' candidates are all-gathered and
merged into a running top k that stays on device. Memory is bounded by the chunk, so a corpus larger
than one device's memory (or all devices') works; the embeddings may stay in host memory.

Results are ST's: one list per query of {"corpus_id", "score"}, best first; paraphrase mining returns
[score, i, j] triplets and community detection lists of indices, as ST. Ties may order differently
(here the lower corpus id wins). Score functions: `cos_sim` (default), `dot_score`, or any jax
function (queries [Q, D], corpus [C, D]) -> scores [Q, C].
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from flaxenc import sharding


def _normalize(x: jax.Array) -> jax.Array:
    # ST util/tensor.py normalize_embeddings: torch.nn.functional.normalize, eps 1e-12
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def cos_sim(a: jax.Array, b: jax.Array) -> jax.Array:
    """Cosine similarity of every row of a [N, D] with every row of b [M, D]: [N, M] (ST util.cos_sim)."""
    return _normalize(a) @ _normalize(b).T


def dot_score(a: jax.Array, b: jax.Array) -> jax.Array:
    """Dot product of every row of a [N, D] with every row of b [M, D]: [N, M] (ST util.dot_score)."""
    return a @ b.T


def euclidean_sim(a: jax.Array, b: jax.Array) -> jax.Array:
    """Negative euclidean distance of every row of a with every row of b: [N, M] (ST util.euclidean_sim)."""
    squared = jnp.sum(a * a, -1)[:, None] - 2 * (a @ b.T) + jnp.sum(b * b, -1)[None, :]
    return -jnp.sqrt(jnp.maximum(squared, 0))


def manhattan_sim(a: jax.Array, b: jax.Array) -> jax.Array:
    """Negative manhattan distance of every row of a with every row of b: [N, M] (ST util.manhattan_sim)."""
    return -jnp.sum(jnp.abs(a[:, None, :] - b[None, :, :]), axis=-1)


# ST's similarity names (a model's similarity_fn_name) -> score functions.
SCORE_FUNCTIONS: dict[str, Callable] = {
    "cosine": cos_sim,
    "dot": dot_score,
    "euclidean": euclidean_sim,
    "manhattan": manhattan_sim,
}


def _score_function(score_function) -> Callable:
    if isinstance(score_function, str):
        name = "dot" if score_function == "dot_product" else score_function
        if name not in SCORE_FUNCTIONS:
            raise ValueError(f"unknown score function {score_function!r}; expected one of {sorted(SCORE_FUNCTIONS)}")
        return SCORE_FUNCTIONS[name]
    if not callable(score_function):
        raise TypeError(f"score_function must be a name or a function of (queries, corpus), not {score_function!r}")
    return score_function


def _as_2d(embeddings) -> np.ndarray | jax.Array:
    """A [N, D] float32 array, host (numpy) or device (jax) as given; torch tensors become numpy."""
    if not isinstance(embeddings, jax.Array):
        embeddings = np.asarray(embeddings.detach().cpu() if hasattr(embeddings, "detach") else embeddings)
        embeddings = embeddings.astype(np.float32, copy=False)
    else:
        embeddings = embeddings.astype(jnp.float32)
    return embeddings[None] if embeddings.ndim == 1 else embeddings


@functools.lru_cache(maxsize=64)
def _search_step(mesh, k: int, query_chunk_size: int, score_function: Callable):
    """A jitted (best_scores, best_indices, queries, chunk, offset, size) -> merged (best_scores, best_indices).

    queries [Qp, D] and best [Qp, k] are replicated; chunk [C, D] is split over the mesh's data axis.
    """
    cosine = score_function is cos_sim
    score = dot_score if score_function in (cos_sim, dot_score) else score_function

    def local(queries, chunk, offset, size):
        rows = chunk.shape[0]  # this device's shard of the chunk
        index = offset + jax.lax.axis_index(sharding.DATA_AXIS) * rows + jnp.arange(rows, dtype=jnp.int32)
        chunk = _normalize(chunk) if cosine else chunk  # ST normalizes each corpus chunk once for cos_sim
        kept = min(k, rows)

        def one_query_chunk(query_chunk):
            scores = score(query_chunk, chunk).astype(jnp.float32)  # [q, rows]
            scores = jnp.where(index[None, :] < size, scores, -jnp.inf)
            top_scores, top = jax.lax.top_k(scores, kept)
            return top_scores, index[top]

        chunks = queries.reshape(-1, query_chunk_size, queries.shape[-1])
        top_scores, top_indices = jax.lax.map(one_query_chunk, chunks)  # [n, q, kept]
        top_scores, top_indices = top_scores.reshape(queries.shape[0], kept), top_indices.reshape(queries.shape[0], kept)
        # every device's candidates, in device (= corpus) order: [Qp, devices * kept]
        gather = functools.partial(jax.lax.all_gather, axis_name=sharding.DATA_AXIS, axis=1, tiled=True)
        return gather(top_scores), gather(top_indices)

    data, whole = PartitionSpec(sharding.DATA_AXIS), PartitionSpec()
    candidates = jax.shard_map(
        local, mesh=mesh, in_specs=(whole, data, whole, whole), out_specs=(whole, whole), check_vma=False
    )

    @jax.jit
    def step(best_scores, best_indices, queries, chunk, offset, size):
        queries = _normalize(queries) if cosine else queries
        chunk_scores, chunk_indices = candidates(queries, chunk, offset, size)
        scores = jnp.concatenate([best_scores, chunk_scores], axis=1)  # earlier (lower) ids first: they win ties
        indices = jnp.concatenate([best_indices, chunk_indices], axis=1)
        best_scores, picked = jax.lax.top_k(scores, k)
        return best_scores, jnp.take_along_axis(indices, picked, axis=1)

    return step


def search_top_k(
    query_embeddings,
    corpus_embeddings,
    top_k: int,
    query_chunk_size: int = 100,
    corpus_chunk_size: int = 500000,
    score_function: Callable | str = cos_sim,
    devices: Sequence[jax.Device] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, indices), each [Q, min(top_k, N)], best first: the corpus split over `devices`, in chunks.

    Embeddings may be numpy (they stay on the host; each corpus chunk is sent when it is scored) or jax
    arrays. Ties go to the lower corpus index.
    """
    queries, corpus = _as_2d(query_embeddings), _as_2d(corpus_embeddings)
    score_function = _score_function(score_function)
    n_queries, size = queries.shape[0], corpus.shape[0]
    k = min(top_k, size)
    if n_queries == 0 or k <= 0:
        return np.zeros((n_queries, max(k, 0)), np.float32), np.zeros((n_queries, max(k, 0)), np.int64)
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"queries have dimension {queries.shape[1]}, the corpus {corpus.shape[1]}")
    mesh = sharding.data_mesh(devices)
    # Every chunk one shape (a multiple of the device count), so one program serves all chunks.
    chunk_rows = -(-min(corpus_chunk_size, size) // mesh.size) * mesh.size
    query_chunk_size = max(1, min(query_chunk_size, n_queries))
    padded_queries = -(-n_queries // query_chunk_size) * query_chunk_size
    whole = NamedSharding(mesh, PartitionSpec())
    xp = jnp if isinstance(queries, jax.Array) else np
    queries = jax.device_put(xp.pad(queries, ((0, padded_queries - n_queries), (0, 0))), whole)
    best_scores = jax.device_put(np.full((padded_queries, k), -np.inf, np.float32), whole)
    best_indices = jax.device_put(np.full((padded_queries, k), -1, np.int32), whole)
    step = _search_step(mesh, k, query_chunk_size, score_function)
    xp = jnp if isinstance(corpus, jax.Array) else np
    for start in range(0, size, chunk_rows):
        chunk = corpus[start : start + chunk_rows]
        chunk = xp.pad(chunk, ((0, chunk_rows - chunk.shape[0]), (0, 0))) if chunk.shape[0] < chunk_rows else chunk
        chunk = jax.device_put(chunk, sharding.batch_sharding(mesh))
        best_scores, best_indices = step(best_scores, best_indices, queries, chunk, np.int32(start), np.int32(size))
    return np.asarray(best_scores)[:n_queries], np.asarray(best_indices)[:n_queries].astype(np.int64)


def semantic_search(
    query_embeddings,
    corpus_embeddings,
    query_chunk_size: int = 100,
    corpus_chunk_size: int = 500000,
    top_k: int = 10,
    score_function: Callable | str = cos_sim,
    devices: Sequence[jax.Device] | None = None,
) -> list[list[dict[str, int | float]]]:
    """ST's util.semantic_search on device: for each query, the top_k corpus entries by score.

    Returns one list per query of {"corpus_id": int, "score": float}, sorted by decreasing score
    (ST's output). The corpus is split over `devices` (default: all local devices) and scanned
    `corpus_chunk_size` rows at a time; queries are scored `query_chunk_size` at a time.
    """
    # ST util/retrieval.py semantic_search
    scores, indices = search_top_k(
        query_embeddings, corpus_embeddings, top_k, query_chunk_size, corpus_chunk_size, score_function, devices
    )
    return [
        [{"corpus_id": corpus_id, "score": score} for corpus_id, score in zip(row_ids, row_scores) if corpus_id >= 0]
        for row_ids, row_scores in zip(indices.tolist(), scores.tolist())
    ]


def paraphrase_mining_embeddings(
    embeddings,
    query_chunk_size: int = 5000,
    corpus_chunk_size: int = 100000,
    max_pairs: int = 500000,
    top_k: int = 100,
    score_function: Callable | str = cos_sim,
    devices: Sequence[jax.Device] | None = None,
) -> list[list[float | int]]:
    """The most similar pairs among `embeddings`: [score, i, j] with i < j, highest score first (ST's).

    Each embedding's top_k neighbours (itself excluded) are searched on device; at most max_pairs
    pairs are kept, by ST's heap.
    """
    # ST util/retrieval.py paraphrase_mining_embeddings
    embeddings = _as_2d(embeddings)
    scores, indices = search_top_k(
        embeddings, embeddings, top_k + 1, query_chunk_size, corpus_chunk_size, score_function, devices
    )
    pairs: list[tuple[float, int, int]] = []  # min-heap of (score, i, j), at most max_pairs
    queued = set()
    min_score = float("-inf")
    for i, (row_ids, row_scores) in enumerate(zip(indices.tolist(), scores.tolist())):
        neighbours = [(j, score) for j, score in zip(row_ids, row_scores) if i != j][:top_k]
        for j, score in neighbours:
            if score <= min_score:
                continue
            pair = (i, j) if i < j else (j, i)
            if pair in queued:
                continue
            queued.add(pair)
            if len(pairs) < max_pairs:
                heapq.heappush(pairs, (score, *pair))
            else:
                evicted = heapq.heappushpop(pairs, (score, *pair))
                queued.discard(evicted[1:])
                min_score = evicted[0]
    return sorted(([score, i, j] for score, i, j in pairs), key=lambda pair: pair[0], reverse=True)


def paraphrase_mining(
    model,
    sentences: list[str],
    show_progress_bar: bool = False,
    batch_size: int = 32,
    query_chunk_size: int = 5000,
    corpus_chunk_size: int = 100000,
    max_pairs: int = 500000,
    top_k: int = 100,
    score_function: Callable | str = cos_sim,
    truncate_dim: int | None = None,
    prompt_name: str | None = None,
    prompt: str | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> list[list[float | int]]:
    """Embeds `sentences` with `model` (a SentenceEncoder) and mines paraphrase pairs: [score, i, j] (ST's)."""
    # ST util/retrieval.py paraphrase_mining
    kwargs = {"show_progress_bar": show_progress_bar} if show_progress_bar else {}
    embeddings = model.encode(
        sentences, batch_size=batch_size, convert_to_numpy=True, prompt_name=prompt_name, prompt=prompt, **kwargs
    )
    embeddings = np.asarray(embeddings)[:, :truncate_dim] if truncate_dim else np.asarray(embeddings)
    return paraphrase_mining_embeddings(
        embeddings, query_chunk_size, corpus_chunk_size, max_pairs, top_k, score_function, devices
    )


@jax.jit
def _community_counts(rows: jax.Array, embeddings: jax.Array, threshold) -> jax.Array:
    """How many embeddings each row scores >= threshold with: [B]."""
    return jnp.sum(rows @ embeddings.T >= threshold, axis=1)


@functools.partial(jax.jit, static_argnames="k")
def _community_members(rows: jax.Array, embeddings: jax.Array, k: int) -> jax.Array:
    """Each row's k best-scored embeddings, best first: [B, k]."""
    return jax.lax.top_k(rows @ embeddings.T, k)[1]


def community_detection(
    embeddings,
    threshold: float = 0.75,
    min_community_size: int = 10,
    batch_size: int = 1024,
    show_progress_bar: bool = False,
    devices: Sequence[jax.Device] | None = None,
) -> list[list[int]]:
    """ST's util.community_detection: groups whose cosine similarity to a central point is >= threshold.

    Returns communities of at least min_community_size indices, largest first, each starting with its
    centre; overlapping communities are dropped as ST drops them. Scores are computed on device, the
    rows of each batch split over `devices`.
    """
    # ST util/retrieval.py community_detection
    del show_progress_bar
    embeddings = _as_2d(embeddings)
    size = embeddings.shape[0]
    if size == 0 or size < min_community_size:
        return []
    mesh = sharding.data_mesh(devices)
    normalized = jax.device_put(_normalize(jnp.asarray(embeddings)), sharding.replicated(mesh))
    threshold = np.float32(threshold)  # ST: torch.tensor(threshold), float32
    batch_size = -(-min(batch_size, size) // mesh.size) * mesh.size
    extracted = []
    for start in range(0, size, batch_size):
        rows = normalized[start : start + batch_size]
        n_rows = rows.shape[0]
        rows = jax.device_put(jnp.pad(rows, ((0, batch_size - n_rows), (0, 0))), sharding.batch_sharding(mesh))
        counts = np.asarray(_community_counts(rows, normalized, threshold))[:n_rows]
        centres = np.flatnonzero(counts >= min_community_size)
        if len(centres) == 0:
            continue
        k = min(size, 1 << int(counts[centres].max() - 1).bit_length())  # a power of two: few compiles
        top = np.asarray(_community_members(rows, normalized, k))
        for centre in centres:
            extracted.append((start + int(centre), top[centre, : counts[centre]].astype(np.uint32)))

    extracted = sorted(extracted, key=lambda community: len(community[1]), reverse=True)  # largest first
    unique_communities = []
    used = np.zeros(size, dtype=bool)
    for centre, community in extracted:
        if used[centre]:
            continue
        non_overlapped = community[~used[community]]
        if len(non_overlapped) >= min_community_size:
            unique = [centre] + non_overlapped[non_overlapped != centre].tolist()
            unique_communities.append(unique)
            used[unique] = True
    return sorted(unique_communities, key=len, reverse=True)


__all__ = [
    "SCORE_FUNCTIONS",
    "community_detection",
    "cos_sim",
    "dot_score",
    "euclidean_sim",
    "manhattan_sim",
    "paraphrase_mining",
    "paraphrase_mining_embeddings",
    "search_top_k",
    "semantic_search",
]
