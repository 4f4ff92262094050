"""Dropout as a pure function of a PRNG key; no key means inference (identity)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Zeroes each element with probability `rate` and scales the rest by 1 / (1 - rate)."""
    if key is None or rate == 0.0:
        return x
    if rate >= 1.0:
        return jnp.zeros_like(x)
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class Dropout(nnx.Module):
    """ST's Dropout module on the sentence embedding (sentence_transformers/.../dropout.py)."""

    def __init__(self, dropout: float = 0.2):
        self.rate = float(dropout)

    def __call__(self, embedding: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        return dropout(embedding, self.rate, dropout_key)
