"""DistilBERT encoder in Flax NNX, numerically equal to transformers' DistilBertModel.

BERT's post-LN block without token types and without dropout on the attention output; its
config.json names the shape differently (dim, n_layers, n_heads, hidden_dim), and its LayerNorms
use eps 1e-12 whatever the config says.
"""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from flaxenc.key_tables import Rule, embedding, layer_norm, linear
from flaxenc.models.bert import Layer, _split_key, attention_mask_4d, bert_position_ids
from flaxenc.models.config import HIDDEN_ACTS, HFConfig
from flaxenc.modules.dropout import dropout
from flaxenc.modules.layer_norm import LayerNorm

# transformers' DistilBERT builds every LayerNorm with eps=1e-12.
LAYER_NORM_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class DistilBertConfig(HFConfig):
    """The shape of a DistilBERT encoder; field names follow `config.json`."""

    AUTO_CLASSES: ClassVar[dict[str, str]] = {"distilbert": "DistilBertModel"}

    model_type: str = "distilbert"
    vocab_size: int = 30522
    dim: int = 768
    n_layers: int = 6
    n_heads: int = 12
    hidden_dim: int = 3072
    # Feed-forward activation, one of HIDDEN_ACTS.
    activation: str = "gelu"
    max_position_embeddings: int = 512
    # Only how the position table was initialised; the weights hold the table either way.
    sinusoidal_pos_embds: bool = False
    pad_token_id: int = 0
    # Dropout on the embeddings and the feed-forward output.
    dropout: float = 0.1
    attention_dropout: float = 0.1

    def __post_init__(self):
        if self.activation not in HIDDEN_ACTS:
            raise ValueError(f"activation {self.activation!r} is not supported; use one of {HIDDEN_ACTS}")
        self._check_heads()

    # The names BERT's Layer (and the rest of flaxenc) reads.
    hidden_size = property(lambda self: self.dim)
    num_hidden_layers = property(lambda self: self.n_layers)
    num_attention_heads = property(lambda self: self.n_heads)
    intermediate_size = property(lambda self: self.hidden_dim)
    hidden_act = property(lambda self: self.activation)
    hidden_dropout_prob = property(lambda self: self.dropout)
    attention_probs_dropout_prob = property(lambda self: self.attention_dropout)
    layer_norm_eps = property(lambda self: LAYER_NORM_EPS)


# transformers' DistilBertModel state dict -> DistilBertModel below (BERT's layer names).
RULES: tuple[Rule, ...] = (
    *embedding("embeddings.word_embeddings", "embeddings.word_embeddings"),
    *embedding("embeddings.position_embeddings", "embeddings.position_embeddings"),
    *layer_norm("embeddings.LayerNorm", "embeddings.layer_norm"),
    *linear("transformer.layer.{i}.attention.q_lin", "layers.{i}.attention.query"),
    *linear("transformer.layer.{i}.attention.k_lin", "layers.{i}.attention.key"),
    *linear("transformer.layer.{i}.attention.v_lin", "layers.{i}.attention.value"),
    *linear("transformer.layer.{i}.attention.out_lin", "layers.{i}.attention.output"),
    *layer_norm("transformer.layer.{i}.sa_layer_norm", "layers.{i}.attention.layer_norm"),
    *linear("transformer.layer.{i}.ffn.lin1", "layers.{i}.intermediate"),
    *linear("transformer.layer.{i}.ffn.lin2", "layers.{i}.output"),
    *layer_norm("transformer.layer.{i}.output_layer_norm", "layers.{i}.layer_norm"),
)
BUFFERS = re.compile(r"embeddings\.position_ids$")


class Embeddings(nnx.Module):
    def __init__(self, config: DistilBertConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.dropout_rate = config.dropout
        self.word_embeddings = nnx.Embed(config.vocab_size, config.dim, dtype=dtype, rngs=rngs)
        self.position_embeddings = nnx.Embed(config.max_position_embeddings, config.dim, dtype=dtype, rngs=rngs)
        self.layer_norm = LayerNorm(config.dim, LAYER_NORM_EPS)

    def __call__(self, input_ids, position_ids, dropout_key=None) -> jax.Array:
        x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        return dropout(self.layer_norm(x), self.dropout_rate, dropout_key)  # [B, T, H]


class DistilBertModel(nnx.Module):
    """input ids [B, T] and mask [B, T] (or packed rows: segment_ids, positions) -> token embeddings [B, T, H]."""

    def __init__(self, config: DistilBertConfig, *, dtype: jnp.dtype = jnp.float32, with_pooler: bool = False, rngs: nnx.Rngs):
        del with_pooler  # DistilBERT has no pooler
        self.config = config
        self.dtype = dtype
        self.embeddings = Embeddings(config, dtype=dtype, rngs=rngs)
        self.layers = nnx.List(
            [Layer(config, dtype=dtype, rngs=rngs, attention_output_dropout=False) for _ in range(config.n_layers)]
        )

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None,
        token_type_ids: jax.Array | None = None,
        dropout_key: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
    ) -> jax.Array:
        del token_type_ids  # DistilBERT has no token types
        position_ids = bert_position_ids(input_ids) if positions is None else positions
        mask = attention_mask_4d(attention_mask, segment_ids)
        keys = _split_key(dropout_key, len(self.layers) + 1)
        x = self.embeddings(input_ids, position_ids, keys[0])
        for layer, key in zip(self.layers, keys[1:]):
            x = layer(x, mask, key)
        return x
