"""Layer normalisation with PyTorch's numerics (biased variance, eps inside the root)."""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from flaxenc.key_tables import Rule
from flaxenc.key_tables import layer_norm as layer_norm_rules


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array | float, eps: float) -> jax.Array:
    """Normalises the last axis in fp32 and returns x's dtype, as torch.nn.LayerNorm under autocast."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(axis=-1, keepdims=True)
    centered = x32 - mean
    variance = jnp.mean(centered * centered, axis=-1, keepdims=True)
    y = centered * jax.lax.rsqrt(variance + eps) * scale + bias  # torch multiplies by rstd too
    return y.astype(x.dtype)


class LayerNorm(nnx.Module):
    """torch.nn.LayerNorm over the last axis; `scale` is torch's `weight`; `use_bias=False` as
    torch's `bias=False` (ModernBERT)."""

    def __init__(self, dim: int, eps: float = 1e-5, use_bias: bool = True):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        bias = 0.0 if self.bias is None else self.bias[...]
        return layer_norm(x, self.scale[...], bias, self.eps)


# ST's LayerNorm module weights -> EmbeddingLayerNorm below.
RULES: tuple[Rule, ...] = tuple(layer_norm_rules("norm", "norm"))


class EmbeddingLayerNorm(nnx.Module):
    """ST's LayerNorm module: torch.nn.LayerNorm (eps 1e-5) on the sentence embedding."""

    ST_CONFIG_KEYS: ClassVar[frozenset[str]] = frozenset({"dimension"})

    def __init__(self, dimension: int):
        self.dimension = dimension
        self.norm = LayerNorm(dimension)

    def __call__(self, embedding: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        return self.norm(embedding)

    @classmethod
    def from_st_config(cls, config: dict[str, Any], dim: int, dtype=None, rngs=None) -> EmbeddingLayerNorm:
        return cls(config.get("dimension", dim))

    def st_config(self) -> dict[str, Any]:
        return {"dimension": self.dimension}

    def st_repr_config(self) -> dict[str, Any]:
        return self.st_config()
