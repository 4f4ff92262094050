"""Similarity functions of embeddings, jitted: cosine, dot, euclidean, manhattan (matrix and pairwise).

Semantics of sentence_transformers/util/similarity.py (`SimilarityFunction`): cosine normalizes each
row by max(||x||, 1e-12) (torch.nn.functional.normalize); euclidean and manhattan are negative
distances, so a higher score is always more similar. A 1-D input to a matrix function is one row.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Rows of `a` whose distances to all of `b` are computed at once: [rows, M, D] stays small.
_DISTANCE_ROWS = 16


def _normalize(x: jax.Array) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@jax.jit
def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """[N, M]: cos(a[i], b[j]) (ST's cos_sim)."""
    return _normalize(a) @ _normalize(b).T


@jax.jit
def dot_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """[N, M]: a[i] . b[j] (ST's dot_score)."""
    return a @ b.T


def _distances(a: jax.Array, b: jax.Array, distance: Callable[[jax.Array], jax.Array]) -> jax.Array:
    # From the differences, as torch.cdist does for p=1 (for p=2 torch switches to the |a|^2 - 2ab + |b|^2
    # expansion past 25 rows, which loses precision near 0: ~3e-4 for equal vectors; this does not).
    return jax.lax.map(lambda row: distance(row[None, :] - b), a, batch_size=_DISTANCE_ROWS)


@jax.jit
def euclidean_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """[N, M]: -||a[i] - b[j]||_2 (ST's euclidean_sim)."""
    return -_distances(a, b, lambda d: jnp.sqrt(jnp.sum(d * d, axis=-1)))


@jax.jit
def manhattan_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """[N, M]: -||a[i] - b[j]||_1 (ST's manhattan_sim)."""
    return -_distances(a, b, lambda d: jnp.sum(jnp.abs(d), axis=-1))


@jax.jit
def pairwise_cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """[N]: cos(a[i], b[i]) (ST's pairwise_cos_sim)."""
    return jnp.sum(_normalize(a) * _normalize(b), axis=-1)


@jax.jit
def pairwise_dot_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """[N]: a[i] . b[i] (ST's pairwise_dot_score)."""
    return jnp.sum(a * b, axis=-1)


@jax.jit
def pairwise_euclidean_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """[N]: -||a[i] - b[i]||_2 (ST's pairwise_euclidean_sim)."""
    return -jnp.linalg.norm(a - b, axis=-1)


@jax.jit
def pairwise_manhattan_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
    """[N]: -||a[i] - b[i]||_1 (ST's pairwise_manhattan_sim)."""
    return -jnp.sum(jnp.abs(a - b), axis=-1)


# similarity_fn_name (config_sentence_transformers.json) -> (matrix function, pairwise function).
SIMILARITY_FUNCTIONS: dict[str, tuple[Callable, Callable]] = {
    "cosine": (cosine_similarity, pairwise_cosine_similarity),
    "dot": (dot_similarity, pairwise_dot_similarity),
    "euclidean": (euclidean_similarity, pairwise_euclidean_similarity),
    "manhattan": (manhattan_similarity, pairwise_manhattan_similarity),
}
# ST's SimilarityFunction aliases.
_ALIASES = {"dot_product": "dot", "cos_sim": "cosine"}


def similarity_name(name) -> str:
    """A registered name for `name` (a string or an enum with a .value, as ST's SimilarityFunction)."""
    name = getattr(name, "value", name)
    name = _ALIASES.get(name, name)
    if name not in SIMILARITY_FUNCTIONS:
        raise ValueError(f"similarity function {name!r} is not supported; use one of {sorted(SIMILARITY_FUNCTIONS)}")
    return name


def _as_array(x) -> jax.Array:
    """float32 array of embeddings (numpy, jax, a list of vectors, or a torch tensor)."""
    if hasattr(x, "detach"):  # torch
        x = x.detach().cpu().float().numpy()
    elif isinstance(x, (list, tuple)):
        x = np.stack([np.asarray(v) for v in x]) if x else np.zeros((0, 0), np.float32)
    return jnp.asarray(x, dtype=jnp.float32)


def similarity(a, b, name: str = "cosine") -> jax.Array:
    """[N, M] scores of every a[i] against every b[j]; a 1-D input counts as one row."""
    a, b = (x[None, :] if x.ndim == 1 else x for x in (_as_array(a), _as_array(b)))
    return SIMILARITY_FUNCTIONS[similarity_name(name)][0](a, b)


def similarity_pairwise(a, b, name: str = "cosine") -> jax.Array:
    """[N] scores of a[i] against b[i]."""
    return SIMILARITY_FUNCTIONS[similarity_name(name)][1](_as_array(a), _as_array(b))


__all__ = [
    "SIMILARITY_FUNCTIONS",
    "cosine_similarity",
    "dot_similarity",
    "euclidean_similarity",
    "manhattan_similarity",
    "pairwise_cosine_similarity",
    "pairwise_dot_similarity",
    "pairwise_euclidean_similarity",
    "pairwise_manhattan_similarity",
    "similarity",
    "similarity_name",
    "similarity_pairwise",
]
