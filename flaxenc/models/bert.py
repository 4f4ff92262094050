"""BERT encoder in Flax NNX, numerically equal to transformers' BertModel (post-LN)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from flax import nnx

from flaxenc.key_tables import Rule, embedding, layer_norm, linear
from flaxenc.models.config import EncoderConfig
from flaxenc.modules.dropout import dropout
from flaxenc.modules.layer_norm import LayerNorm

# transformers' BertModel / RobertaModel state dict -> BertModel below.
RULES: tuple[Rule, ...] = (
    *embedding("embeddings.word_embeddings", "embeddings.word_embeddings"),
    *embedding("embeddings.position_embeddings", "embeddings.position_embeddings"),
    *embedding("embeddings.token_type_embeddings", "embeddings.token_type_embeddings"),
    *layer_norm("embeddings.LayerNorm", "embeddings.layer_norm"),
    *linear("encoder.layer.{i}.attention.self.query", "layers.{i}.attention.query"),
    *linear("encoder.layer.{i}.attention.self.key", "layers.{i}.attention.key"),
    *linear("encoder.layer.{i}.attention.self.value", "layers.{i}.attention.value"),
    *linear("encoder.layer.{i}.attention.output.dense", "layers.{i}.attention.output"),
    *layer_norm("encoder.layer.{i}.attention.output.LayerNorm", "layers.{i}.attention.layer_norm"),
    *linear("encoder.layer.{i}.intermediate.dense", "layers.{i}.intermediate"),
    *linear("encoder.layer.{i}.output.dense", "layers.{i}.output"),
    *layer_norm("encoder.layer.{i}.output.LayerNorm", "layers.{i}.layer_norm"),
    *linear("pooler.dense", "pooler.dense"),
)
# Non-parameter buffers transformers keeps in some checkpoints.
BUFFERS = re.compile(r"embeddings\.(position_ids|token_type_ids)$")


def _gelu_erf(x: jax.Array) -> jax.Array:
    """Exact GELU in torch's form, x/2 (1 + erf(x/sqrt 2)); XLA's erf is cheaper than jax.nn.gelu's erfc."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(0.7071067811865476, x.dtype)))


# config.json `hidden_act` -> function, as transformers' ACT2FN.
_ACTIVATIONS = {
    "gelu": _gelu_erf,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def _split_key(key: jax.Array | None, n: int) -> list[jax.Array | None]:
    return [None] * n if key is None else list(jax.random.split(key, n))


def bert_position_ids(input_ids: jax.Array) -> jax.Array:
    """0, 1, 2, ... on every row, pads included."""
    return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)


def attention_mask_4d(attention_mask: jax.Array | None, segment_ids: jax.Array | None) -> jax.Array:
    """Which keys each query sees, [B, 1, 1 or T, S]: the real tokens of its row, or (packed rows)
    the tokens of its own sentence."""
    if segment_ids is None:
        return attention_mask.astype(bool)[:, None, None, :]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (same & (segment_ids[:, None, :] > 0))[:, None]


class Embeddings(nnx.Module):
    def __init__(self, config: EncoderConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        H = config.hidden_size
        self.dropout_rate = config.hidden_dropout_prob
        self.word_embeddings = nnx.Embed(config.vocab_size, H, dtype=dtype, rngs=rngs)
        self.position_embeddings = nnx.Embed(config.max_position_embeddings, H, dtype=dtype, rngs=rngs)
        self.token_type_embeddings = nnx.Embed(config.type_vocab_size, H, dtype=dtype, rngs=rngs)
        self.layer_norm = LayerNorm(H, config.layer_norm_eps)

    def __call__(self, input_ids, position_ids, token_type_ids, dropout_key=None) -> jax.Array:
        # Summed in transformers' order: (word + token type) + position.
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(position_ids)
        return dropout(self.layer_norm(x), self.dropout_rate, dropout_key)  # [B, T, H]


class Attention(nnx.Module):
    """Self-attention, output projection, residual and LayerNorm (BertAttention).

    output_dropout: dropout on the projection before the residual (BERT has it, DistilBERT not).
    """

    def __init__(self, config: EncoderConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs, output_dropout: bool = True):
        H = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.dropout_rate = config.hidden_dropout_prob if output_dropout else 0.0
        self.attention_dropout_rate = config.attention_probs_dropout_prob
        self.query = nnx.Linear(H, H, dtype=dtype, rngs=rngs)
        self.key = nnx.Linear(H, H, dtype=dtype, rngs=rngs)
        self.value = nnx.Linear(H, H, dtype=dtype, rngs=rngs)
        self.output = nnx.Linear(H, H, dtype=dtype, rngs=rngs)
        self.layer_norm = LayerNorm(H, config.layer_norm_eps)

    def _heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:2], self.num_heads, self.head_dim)  # [B, T, N, D]

    def __call__(self, x, mask, dropout_key=None, bias=None) -> jax.Array:
        """x [B, T, H]; mask [B, 1, 1 or T, S], True where a query may attend to a key; bias
        [1 or B, N, T, S] added to the scores (MPNet's relative positions) or None."""
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        attention_key, output_key = _split_key(dropout_key, 2)
        if attention_key is None or self.attention_dropout_rate == 0.0:
            # Fused kernel (cuDNN flash attention on GPU where it applies).
            bias = None if bias is None else bias.astype(q.dtype)
            context = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask)
        else:
            # Dropout on the attention probabilities needs them written out.
            scores = jnp.einsum("btnd,bsnd->bnts", q, k) / jnp.sqrt(self.head_dim).astype(q.dtype)
            scores = scores.astype(jnp.float32)
            if bias is not None:
                scores = scores + bias.astype(jnp.float32)
            # An additive mask, as transformers': its backward passes the gradient through unmasked.
            scores = scores + jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
            probs = dropout(probs, self.attention_dropout_rate, attention_key)
            context = jnp.einsum("bnts,bsnd->btnd", probs, v)
        context = context.reshape(*x.shape[:2], -1)  # [B, T, H]
        out = dropout(self.output(context), self.dropout_rate, output_key)
        return self.layer_norm(out + x)


class Layer(nnx.Module):
    """One post-LN transformer block: attention, then feed-forward with residual and LayerNorm.

    MPNet's and DistilBERT's blocks are this one too (their configs name the same fields).
    """

    def __init__(self, config: EncoderConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs, attention_output_dropout: bool = True):
        self.dropout_rate = config.hidden_dropout_prob
        self.hidden_act = config.hidden_act
        self.attention = Attention(config, dtype=dtype, rngs=rngs, output_dropout=attention_output_dropout)
        self.intermediate = nnx.Linear(config.hidden_size, config.intermediate_size, dtype=dtype, rngs=rngs)
        self.output = nnx.Linear(config.intermediate_size, config.hidden_size, dtype=dtype, rngs=rngs)
        self.layer_norm = LayerNorm(config.hidden_size, config.layer_norm_eps)

    def __call__(self, x, mask, dropout_key=None, bias=None) -> jax.Array:
        attention_key, ffn_key = _split_key(dropout_key, 2)
        x = self.attention(x, mask, attention_key, bias)
        h = _ACTIVATIONS[self.hidden_act](self.intermediate(x))  # [B, T, I]
        h = dropout(self.output(h), self.dropout_rate, ffn_key)
        return self.layer_norm(h + x)


class Pooler(nnx.Module):
    """BERT's [CLS] pooler; loaded and saved so checkpoints round-trip, unused by sentence pooling."""

    def __init__(self, config: EncoderConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.dense = nnx.Linear(config.hidden_size, config.hidden_size, dtype=dtype, rngs=rngs)

    def __call__(self, hidden: jax.Array) -> jax.Array:
        return jnp.tanh(self.dense(hidden[:, 0]))


class BertModel(nnx.Module):
    """input ids [B, T] and mask [B, T] -> token embeddings [B, T, H].

    Packed rows (flaxenc.packing) pass segment_ids and positions [B, T] instead of a mask; every
    family's encoder takes these arguments.
    """

    def __init__(
        self,
        config: EncoderConfig,
        *,
        dtype: jnp.dtype = jnp.float32,
        with_pooler: bool = False,
        rngs: nnx.Rngs,
    ):
        self.config = config
        self.dtype = dtype
        self.embeddings = Embeddings(config, dtype=dtype, rngs=rngs)
        self.layers = nnx.List([Layer(config, dtype=dtype, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.pooler = Pooler(config, dtype=dtype, rngs=rngs) if with_pooler else None

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None,
        token_type_ids: jax.Array | None = None,
        dropout_key: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
    ) -> jax.Array:
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if positions is None:
            position_ids = self.position_ids(input_ids)
        else:
            position_ids = positions + self.config.position_offset
        mask = attention_mask_4d(attention_mask, segment_ids)
        keys = _split_key(dropout_key, len(self.layers) + 1)
        x = self.embeddings(input_ids, position_ids, token_type_ids, keys[0])
        for layer, key in zip(self.layers, keys[1:]):
            x = layer(x, mask, key)
        return x

    def position_ids(self, input_ids: jax.Array) -> jax.Array:
        """The position ids of right-padded rows."""
        return bert_position_ids(input_ids)
