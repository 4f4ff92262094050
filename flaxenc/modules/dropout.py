"""Dropout as a pure function of a PRNG key; no key means inference (identity)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


# Random words drawn per call of threefry. XLA's CPU threefry costs about 3x more per word above
# ~1M words, so larger draws are made in chunks of this size, one after another (lax.map).
CHUNK_WORDS = 1 << 20


def random_words(key: jax.Array, n: int) -> jax.Array:
    """n random uint32 words: one draw, or chunks of CHUNK_WORDS from split keys."""
    if n <= CHUNK_WORDS:
        return jax.random.bits(key, (n,), jnp.uint32)
    chunks = jax.random.split(key, -(-n // CHUNK_WORDS))
    return jax.lax.map(lambda k: jax.random.bits(k, (CHUNK_WORDS,), jnp.uint32), chunks).reshape(-1)[:n]


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """True with probability 1 - rate (to 2**-16), from 16 random bits per element.

    Two elements share one 32-bit word: threefry's cost is per word, and on CPU it was a tenth of
    a training step when every element drew its own float (jax.random.bernoulli).
    """
    size = math.prod(shape)
    words = random_words(key, (size + 1) // 2)
    bits = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(-1)[:size].reshape(shape)
    return bits >= jnp.uint16(min(round(rate * 65536), 65535))


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Zeroes each element with probability `rate` and scales the rest by 1 / (1 - rate)."""
    if key is None or rate == 0.0:
        return x
    if rate >= 1.0:
        return jnp.zeros_like(x)
    return jnp.where(keep_mask(key, rate, x.shape), x / (1.0 - rate), jnp.zeros_like(x))


class Dropout(nnx.Module):
    """ST's Dropout module on the sentence embedding (sentence_transformers/.../dropout.py)."""

    def __init__(self, dropout: float = 0.2):
        self.rate = float(dropout)

    def __call__(self, embedding: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        return dropout(embedding, self.rate, dropout_key)
