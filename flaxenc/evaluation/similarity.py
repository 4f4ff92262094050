"""Similarity functions in float32 numpy, as ST's util/similarity.py computes them in float32 torch."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SIMILARITY_FN_NAMES = ("cosine", "dot", "euclidean", "manhattan")

# ----------------------------------------------------------------------------- similarities (float32)


def _normalize(x: np.ndarray) -> np.ndarray:
    # ST util/tensor.py normalize_embeddings: torch.nn.functional.normalize, eps 1e-12
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# ST util/similarity.py pairwise_*: row i of a against row i of b; distances are negated into similarities.
PAIRWISE_SIMILARITY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "cosine": lambda a, b: np.sum(_normalize(a) * _normalize(b), axis=-1),
    "dot": lambda a, b: np.sum(a * b, axis=-1),
    "euclidean": lambda a, b: -np.linalg.norm(a - b, axis=-1),
    "manhattan": lambda a, b: -np.sum(np.abs(a - b), axis=-1),
}


def _euclidean_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = np.sum(a * a, -1)[:, None] - 2 * (a @ b.T) + np.sum(b * b, -1)[None, :]
    return -np.sqrt(np.maximum(squared, 0))


# ST util/similarity.py cos_sim, dot_score, euclidean_sim, manhattan_sim: every row of a against every row of b.
SIMILARITY_MATRIX: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "cosine": lambda a, b: _normalize(a) @ _normalize(b).T,
    "dot": lambda a, b: a @ b.T,
    "euclidean": _euclidean_matrix,
    "manhattan": lambda a, b: np.stack([-np.sum(np.abs(row - b), axis=-1) for row in a]).reshape(len(a), len(b)),
}


def _similarity_name(name) -> str:
    """'cosine', 'dot', 'euclidean' or 'manhattan'; also accepts ST's SimilarityFunction enum."""
    name = getattr(name, "value", name)
    name = "dot" if name == "dot_product" else name
    if name not in SIMILARITY_FN_NAMES:
        raise ValueError(f"unknown similarity function {name!r}; expected one of {SIMILARITY_FN_NAMES}")
    return name


def _as_float_array(embeddings) -> np.ndarray:
    # ST util/tensor.py _convert_to_float_tensor: float64 stays, anything narrower computes in float32
    embeddings = np.asarray(embeddings)
    return embeddings if embeddings.dtype == np.float64 else embeddings.astype(np.float32)
