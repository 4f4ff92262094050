"""L2 normalisation of embeddings."""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps) along the last axis, as torch.nn.functional.normalize.

    The norm's gradient at a zero vector is 0, as torch's, not NaN as jnp.linalg.norm's.
    """
    squared = jnp.sum(x * x, axis=-1, keepdims=True)
    nonzero = squared > 0
    norm = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, squared, 1.0)), 0.0)
    return x / jnp.maximum(norm, eps)


class Normalize(nnx.Module):
    """ST's Normalize module (sentence_transformers/base/modules/normalize.py)."""

    ST_CONFIG_KEYS: ClassVar[frozenset[str]] = frozenset({"module_input_name", "module_output_name"})

    def __call__(self, embedding: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        return l2_normalize(embedding)

    @classmethod
    def from_st_config(cls, config: dict[str, Any], dim: int, dtype=None, rngs=None) -> Normalize:
        return cls()

    def st_config(self) -> dict[str, Any]:
        return {}

    def st_repr_config(self) -> dict[str, Any]:
        return {"module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"}
