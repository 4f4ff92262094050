"""Dropout as a pure function of a PRNG key; no key means inference (identity)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx


def random_words(key: jax.Array, n: int) -> jax.Array:
    """n random uint32 words drawn from `key`.

    On CPU from XLA's own Threefry (RngBitGenerator), which is faster there than jax.random.bits
    (README "Decisions" has the figures). XLA does not split that draw over devices (each
    draws all n words and keeps its part), so the result is the same on any mesh; GPUs and TPUs keep
    jax.random.bits, whose draw is split over the devices.
    """
    if jax.default_backend() != "cpu":
        return jax.random.bits(key, (n,), jnp.uint32)
    # State: a 64-bit Threefry key from `key`, then a 64-bit counter starting at 0.
    state = jnp.concatenate([jax.random.bits(key, (2,), jnp.uint32), jnp.zeros(2, jnp.uint32)])
    return jax.lax.rng_bit_generator(state, (n,), jnp.uint32, algorithm=jax.lax.RandomAlgorithm.RNG_THREE_FRY)[1]


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

    ST_CONFIG_KEYS: ClassVar[frozenset[str]] = frozenset({"dropout"})

    def __init__(self, dropout: float = 0.2):
        self.rate = float(dropout)

    def __call__(self, embedding: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        return dropout(embedding, self.rate, dropout_key)

    @classmethod
    def from_st_config(cls, config: dict[str, Any], dim: int, dtype=None, rngs=None) -> Dropout:
        return cls(config.get("dropout", 0.2))  # ST's Dropout default

    def st_config(self) -> dict[str, Any]:
        return {"dropout": self.rate}

    def st_repr_config(self) -> dict[str, Any]:
        return self.st_config()
