"""L2 normalisation of embeddings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps) along the last axis, as torch.nn.functional.normalize."""
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.maximum(norm, eps)


class Normalize(nnx.Module):
    """ST's Normalize module (sentence_transformers/base/modules/normalize.py)."""

    def __call__(self, embedding: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        return l2_normalize(embedding)
