"""Layer normalisation with PyTorch's numerics (biased variance, eps inside the root)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """Normalises the last axis in fp32 and returns x's dtype, as torch.nn.LayerNorm under autocast."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(axis=-1, keepdims=True)
    centered = x32 - mean
    variance = jnp.mean(centered * centered, axis=-1, keepdims=True)
    y = centered * jax.lax.rsqrt(variance + eps) * scale + bias  # torch multiplies by rstd too
    return y.astype(x.dtype)


class LayerNorm(nnx.Module):
    """torch.nn.LayerNorm over the last axis; `scale` is torch's `weight`."""

    def __init__(self, dim: int, eps: float = 1e-5):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return layer_norm(x, self.scale[...], self.bias[...], self.eps)


class EmbeddingLayerNorm(nnx.Module):
    """ST's LayerNorm module: torch.nn.LayerNorm (eps 1e-5) on the sentence embedding."""

    def __init__(self, dimension: int):
        self.dimension = dimension
        self.norm = LayerNorm(dimension)

    def __call__(self, embedding: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        return self.norm(embedding)
