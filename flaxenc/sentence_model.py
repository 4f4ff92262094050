"""The module stack of a sentence encoder: transformer -> pooling -> heads (Dense, Dropout, ...)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxenc.models import BertModel
from flaxenc.modules import Pooling


class SentenceModel(nnx.Module):
    """Token ids [B, T] and mask [B, T] -> sentence embeddings [B, D] in fp32."""

    def __init__(self, transformer: BertModel, pooling: Pooling, heads: list[nnx.Module]):
        self.transformer = transformer
        self.pooling = pooling
        self.heads = nnx.List(heads)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array | None = None,
        prompt_length: jax.Array | int | None = None,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        keys = [None] * (1 + len(self.heads)) if dropout_key is None else jax.random.split(dropout_key, 1 + len(self.heads))
        tokens = self.transformer(input_ids, attention_mask, token_type_ids, keys[0])  # [B, T, H]
        x = self.pooling(tokens, attention_mask, prompt_length)
        for head, key in zip(self.heads, keys[1:]):
            x = head(x, key)
        return x.astype(jnp.float32)

    @property
    def embedding_dimension(self) -> int:
        dim = self.pooling.output_dimension
        for head in self.heads:
            dim = getattr(head, "out_features", dim)
        return dim


def flat_params(module: nnx.Module) -> dict[str, np.ndarray]:
    """Parameters by dotted path ("layers.0.attention.query.kernel")."""
    state = nnx.state(module, nnx.Param)
    return {".".join(map(str, path)): np.asarray(var[...]) for path, var in nnx.to_flat_state(state)}


def abstract_params(module_factory) -> tuple[nnx.GraphDef, nnx.State, dict[str, tuple[int, ...]]]:
    """Builds a module without allocating it; returns graphdef, abstract state and path -> shape."""
    graphdef, state = nnx.split(nnx.eval_shape(module_factory))
    shapes = {".".join(map(str, path)): tuple(var.shape) for path, var in nnx.to_flat_state(state)}
    return graphdef, state, shapes


def merge_params(graphdef: nnx.GraphDef, state: nnx.State, params: dict[str, np.ndarray]) -> nnx.Module:
    """The module with every abstract leaf replaced by the array at its dotted path."""
    leaves = [(path, var.replace(jnp.asarray(params[".".join(map(str, path))]))) for path, var in nnx.to_flat_state(state)]
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))
