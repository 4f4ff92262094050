"""The module stack of a sentence encoder: transformer -> pooling -> heads (Dense, Dropout, ...)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxenc.modules import Pooling


class SentenceModel(nnx.Module):
    """Token ids [B, T] and mask [B, T] -> sentence embeddings [B, D] in fp32."""

    def __init__(self, transformer: nnx.Module, pooling: Pooling, heads: list[nnx.Module]):
        """transformer: an encoder of any family (flaxenc.models.FAMILIES)."""
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
        transformer_key, head_keys = self._keys(dropout_key)
        tokens = self.transformer(input_ids, attention_mask, token_type_ids, transformer_key)  # [B, T, H]
        return self._pool_and_heads(tokens, attention_mask, prompt_length, head_keys)

    def embed_packed(
        self,
        packed: dict,
        token_index: jax.Array,
        attention_mask: jax.Array,
        dropout_key: jax.Array | None = None,
        prompt_length: jax.Array | int | None = None,
    ) -> jax.Array:
        """Sentence embeddings [B, D] of sentences packed into rows (flaxenc.packing.pack).

        The encoder runs on the packed rows; token_index [B, T] gathers each sentence's token
        embeddings back into the padded layout of attention_mask [B, T] for pooling.
        """
        transformer_key, head_keys = self._keys(dropout_key)
        rows = self.transformer(
            packed["input_ids"], None, None, transformer_key, segment_ids=packed["segment_ids"], positions=packed["positions"]
        )  # [R, L, H]
        tokens = rows.reshape(-1, rows.shape[-1])[token_index]  # [B, T, H]
        return self._pool_and_heads(tokens, attention_mask, prompt_length, head_keys)

    def _keys(self, dropout_key):
        if dropout_key is None:
            return None, [None] * len(self.heads)
        keys = jax.random.split(dropout_key, 1 + len(self.heads))
        return keys[0], list(keys[1:])

    def _pool_and_heads(self, tokens, attention_mask, prompt_length, head_keys) -> jax.Array:
        x = self.pooling(tokens, attention_mask, prompt_length)
        for head, key in zip(self.heads, head_keys):
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
