"""MPNet encoder in Flax NNX, numerically equal to transformers' MPNetModel.

BERT's post-LN block with two differences: no token-type embeddings, and a learned bias per
attention head and relative-position bucket, shared by all layers, added to the attention scores.
Positions count from 2 and skip pads, as RoBERTa's with padding index 1.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxenc.key_tables import Rule, embedding, layer_norm, linear
from flaxenc.models.bert import Layer, Pooler, _split_key, attention_mask_4d
from flaxenc.models.config import HIDDEN_ACTS, HFConfig
from flaxenc.models.roberta import roberta_position_ids
from flaxenc.modules.dropout import dropout
from flaxenc.modules.layer_norm import LayerNorm

# transformers' MPNetEmbeddings fixes padding_idx at 1, whatever config.pad_token_id says.
PADDING_INDEX = 1
# transformers' MPNetEncoder.compute_position_bias calls relative_position_bucket with its defaults
# (32 buckets, max distance 128), not config.relative_attention_num_buckets.
NUM_BUCKETS = 32
MAX_DISTANCE = 128


@dataclasses.dataclass(frozen=True)
class MPNetConfig(HFConfig):
    """The shape of an MPNet encoder; field names follow `config.json`."""

    AUTO_CLASSES: ClassVar[dict[str, str]] = {"mpnet": "MPNetModel"}

    model_type: str = "mpnet"
    vocab_size: int = 30527
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    # Feed-forward activation, one of HIDDEN_ACTS.
    hidden_act: str = "gelu"
    max_position_embeddings: int = 514
    layer_norm_eps: float = 1e-12
    # Rows of the relative-attention-bias table.
    relative_attention_num_buckets: int = 32
    pad_token_id: int = 1
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1

    def __post_init__(self):
        if self.hidden_act not in HIDDEN_ACTS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; use one of {HIDDEN_ACTS}")
        if self.relative_attention_num_buckets < NUM_BUCKETS:
            raise ValueError(
                f"relative_attention_num_buckets {self.relative_attention_num_buckets} is below the {NUM_BUCKETS} "
                "buckets transformers' MPNet indexes"
            )
        self._check_heads()

    @property
    def position_offset(self) -> int:
        return PADDING_INDEX + 1


# transformers' MPNetModel state dict -> MPNetModel below (BERT's layer names for the block).
RULES: tuple[Rule, ...] = (
    *embedding("embeddings.word_embeddings", "embeddings.word_embeddings"),
    *embedding("embeddings.position_embeddings", "embeddings.position_embeddings"),
    *layer_norm("embeddings.LayerNorm", "embeddings.layer_norm"),
    *embedding("encoder.relative_attention_bias", "relative_attention_bias"),
    *linear("encoder.layer.{i}.attention.attn.q", "layers.{i}.attention.query"),
    *linear("encoder.layer.{i}.attention.attn.k", "layers.{i}.attention.key"),
    *linear("encoder.layer.{i}.attention.attn.v", "layers.{i}.attention.value"),
    *linear("encoder.layer.{i}.attention.attn.o", "layers.{i}.attention.output"),
    *layer_norm("encoder.layer.{i}.attention.LayerNorm", "layers.{i}.attention.layer_norm"),
    *linear("encoder.layer.{i}.intermediate.dense", "layers.{i}.intermediate"),
    *linear("encoder.layer.{i}.output.dense", "layers.{i}.output"),
    *layer_norm("encoder.layer.{i}.output.LayerNorm", "layers.{i}.layer_norm"),
    *linear("pooler.dense", "pooler.dense"),
)
BUFFERS = re.compile(r"embeddings\.position_ids$")


@functools.lru_cache(maxsize=64)
def relative_position_buckets(length: int) -> np.ndarray:
    """[T, T] bucket of each (query, key) pair, as transformers' MPNetEncoder.relative_position_bucket.

    Computed on the host for the (static) row length, in float32 like torch, so the log-spaced
    buckets break at the same distances (tests/test_families.py compares every distance to 2048).
    """
    relative = np.arange(length)[None, :] - np.arange(length)[:, None]  # key - query
    n = -relative
    half = NUM_BUCKETS // 2
    buckets = (n < 0).astype(np.int32) * half
    n = np.abs(n)
    max_exact = half // 2
    with np.errstate(divide="ignore"):
        scaled = np.log(n.astype(np.float32) / np.float32(max_exact)) / np.float32(math.log(MAX_DISTANCE / max_exact))
    large = max_exact + np.where(n < max_exact, 0, (scaled * np.float32(half - max_exact))).astype(np.int32)
    buckets += np.where(n < max_exact, n, np.minimum(large, half - 1)).astype(np.int32)
    return buckets


class Embeddings(nnx.Module):
    def __init__(self, config: MPNetConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        H = config.hidden_size
        self.dropout_rate = config.hidden_dropout_prob
        self.word_embeddings = nnx.Embed(config.vocab_size, H, dtype=dtype, rngs=rngs)
        self.position_embeddings = nnx.Embed(config.max_position_embeddings, H, dtype=dtype, rngs=rngs)
        self.layer_norm = LayerNorm(H, config.layer_norm_eps)

    def __call__(self, input_ids, position_ids, dropout_key=None) -> jax.Array:
        x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        return dropout(self.layer_norm(x), self.dropout_rate, dropout_key)  # [B, T, H]


class MPNetModel(nnx.Module):
    """input ids [B, T] and mask [B, T] (or packed rows: segment_ids, positions) -> token embeddings [B, T, H]."""

    def __init__(self, config: MPNetConfig, *, dtype: jnp.dtype = jnp.float32, with_pooler: bool = False, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        self.embeddings = Embeddings(config, dtype=dtype, rngs=rngs)
        self.relative_attention_bias = nnx.Embed(
            config.relative_attention_num_buckets, config.num_attention_heads, dtype=jnp.float32, rngs=rngs
        )
        self.layers = nnx.List([Layer(config, dtype=dtype, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.pooler = Pooler(config, dtype=dtype, rngs=rngs) if with_pooler else None

    def position_bias(self, length: int) -> jax.Array:
        """[1, N, T, T] score bias of each head for each (query, key) distance.

        The distance is taken between row indices: a packed sentence's tokens are contiguous, so
        within it the distances equal its own positions' (other sentences are masked out).
        """
        buckets = jnp.asarray(relative_position_buckets(length))
        return self.relative_attention_bias(buckets).transpose(2, 0, 1)[None]

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None,
        token_type_ids: jax.Array | None = None,
        dropout_key: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
    ) -> jax.Array:
        del token_type_ids  # MPNet has no token types
        if positions is None:
            position_ids = roberta_position_ids(input_ids, PADDING_INDEX)
        else:
            position_ids = positions + self.config.position_offset
        mask = attention_mask_4d(attention_mask, segment_ids)
        bias = self.position_bias(input_ids.shape[1])
        keys = _split_key(dropout_key, len(self.layers) + 1)
        x = self.embeddings(input_ids, position_ids, keys[0])
        for layer, key in zip(self.layers, keys[1:]):
            x = layer(x, mask, key, bias)
        return x
