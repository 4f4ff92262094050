"""ModernBERT encoder in Flax NNX, numerically equal to transformers' ModernBertModel.

Pre-norm blocks (the first without its attention norm), rotary positions instead of a position
table, a GeGLU feed-forward, optional biases (none by default), and layers that alternate between
global attention and local attention over a window of +-local_attention/2 tokens, each kind with
its own rotary base.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxenc.key_tables import Rule, embedding, layer_norm, linear
from flaxenc.models.bert import _ACTIVATIONS, _split_key, attention_mask_4d
from flaxenc.models.config import HIDDEN_ACTS, HFConfig
from flaxenc.modules.dropout import dropout
from flaxenc.modules.layer_norm import LayerNorm

GLOBAL, LOCAL = "full_attention", "sliding_attention"


@dataclasses.dataclass(frozen=True)
class ModernBertConfig(HFConfig):
    """The shape of a ModernBERT encoder; field names follow `config.json` (transformers 5)."""

    AUTO_CLASSES: ClassVar[dict[str, str]] = {"modernbert": "ModernBertModel"}

    model_type: str = "modernbert"
    vocab_size: int = 50368
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    # GeGLU's activation, one of HIDDEN_ACTS.
    hidden_activation: str = "gelu"
    # Rotary positions need no table; this bounds the sequence length.
    max_position_embeddings: int = 8192
    norm_eps: float = 1e-5
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    pad_token_id: int = 50283
    # Local layers attend within +-local_attention // 2 tokens.
    local_attention: int = 128
    # GLOBAL or LOCAL per layer (config.json's layer_types, or every global_attn_every_n_layers-th global).
    layer_types: tuple[str, ...] = ()
    # Rotary bases of global and local layers.
    global_rope_theta: float = 160_000.0
    local_rope_theta: float = 10_000.0
    embedding_dropout: float = 0.0
    attention_dropout: float = 0.0
    mlp_dropout: float = 0.0

    def __post_init__(self):
        if self.hidden_activation not in HIDDEN_ACTS:
            raise ValueError(f"hidden_activation {self.hidden_activation!r} is not supported; use one of {HIDDEN_ACTS}")
        if not self.layer_types:
            # transformers' default: global_attn_every_n_layers = 3.
            object.__setattr__(self, "layer_types", tuple(LOCAL if i % 3 else GLOBAL for i in range(self.num_hidden_layers)))
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if len(self.layer_types) != self.num_hidden_layers or set(self.layer_types) - {GLOBAL, LOCAL}:
            raise ValueError(f"layer_types {list(self.layer_types)} is not {self.num_hidden_layers} of {GLOBAL!r}, {LOCAL!r}")
        self._check_heads()

    @classmethod
    def _field_values(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Reads both config.json layouts: transformers 4 (global_attn_every_n_layers,
        global_rope_theta, local_rope_theta) and 5 (layer_types, rope_parameters)."""
        fields = super()._field_values(values)
        if "layer_types" not in values and "num_hidden_layers" in values:
            every = values.get("global_attn_every_n_layers", 3)
            fields["layer_types"] = tuple(LOCAL if i % every else GLOBAL for i in range(values["num_hidden_layers"]))
        rope = values.get("rope_parameters") or {}
        for kind, field in ((GLOBAL, "global_rope_theta"), (LOCAL, "local_rope_theta")):
            parameters = rope.get(kind) or {}
            if parameters.get("rope_type", "default") != "default":
                raise ValueError(f"rope_parameters[{kind!r}]: rope_type {parameters['rope_type']!r} is not supported, only 'default'")
            if "rope_theta" in parameters:
                fields[field] = parameters["rope_theta"]
        return fields

    def to_dict(self) -> dict[str, Any]:
        values = super().to_dict()
        values["layer_types"] = list(self.layer_types)
        values["rope_parameters"] = {
            GLOBAL: {"rope_type": "default", "rope_theta": self.global_rope_theta},
            LOCAL: {"rope_type": "default", "rope_theta": self.local_rope_theta},
        }
        return values

    @property
    def max_sequence_length(self) -> int:
        return self.max_position_embeddings


# transformers' ModernBertModel state dict -> ModernBertModel below. The bias rules apply only where
# the config has biases (attention_bias, mlp_bias, norm_bias); layer 0 has no attention norm.
RULES: tuple[Rule, ...] = (
    *embedding("embeddings.tok_embeddings", "embeddings.word_embeddings"),
    *layer_norm("embeddings.norm", "embeddings.norm"),
    *layer_norm("layers.{i}.attn_norm", "layers.{i}.attention_norm"),
    *linear("layers.{i}.attn.Wqkv", "layers.{i}.attention.qkv"),
    *linear("layers.{i}.attn.Wo", "layers.{i}.attention.output"),
    *layer_norm("layers.{i}.mlp_norm", "layers.{i}.mlp_norm"),
    *linear("layers.{i}.mlp.Wi", "layers.{i}.mlp.input"),
    *linear("layers.{i}.mlp.Wo", "layers.{i}.mlp.output"),
    *layer_norm("final_norm", "final_norm"),
)


def rotary_inverse_frequencies(head_dim: int, theta: float) -> np.ndarray:
    """1 / theta^(2i / d), in float32 as transformers computes it."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    return (np.float32(1.0) / (np.float32(theta) ** exponents)).astype(np.float32)


def rotary_cos_sin(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin [B, T, D] of each position's angles, the half frequencies repeated (transformers' layout)."""
    angles = positions[..., None].astype(jnp.float32) * jnp.asarray(rotary_inverse_frequencies(head_dim, theta))
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, T, N, D] rotated in float32 (transformers' apply_rotary_pos_emb), returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return (x32 * cos[:, :, None] + rotated * sin[:, :, None]).astype(x.dtype)


def local_window(length: int, half_width: int) -> jax.Array:
    """[1, 1, T, T]: True where |query - key| <= half_width (transformers' sliding_window_bidirectional_overlay).

    Row indices stand for positions: a packed sentence's tokens are contiguous, so the window
    stays the same inside it (and the segment mask keeps it inside the sentence).
    """
    index = jnp.arange(length)
    return (jnp.abs(index[:, None] - index[None, :]) <= half_width)[None, None]


class Embeddings(nnx.Module):
    def __init__(self, config: ModernBertConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.dropout_rate = config.embedding_dropout
        self.word_embeddings = nnx.Embed(config.vocab_size, config.hidden_size, dtype=dtype, rngs=rngs)
        self.norm = LayerNorm(config.hidden_size, config.norm_eps, use_bias=config.norm_bias)

    def __call__(self, input_ids, dropout_key=None) -> jax.Array:
        return dropout(self.norm(self.word_embeddings(input_ids)), self.dropout_rate, dropout_key)  # [B, T, H]


class Attention(nnx.Module):
    """Fused q/k/v projection, rotary q and k, attention (global or local), output projection."""

    def __init__(self, config: ModernBertConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        H = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.dropout_rate = config.attention_dropout
        self.qkv = nnx.Linear(H, 3 * H, use_bias=config.attention_bias, dtype=dtype, rngs=rngs)
        self.output = nnx.Linear(H, H, use_bias=config.attention_bias, dtype=dtype, rngs=rngs)

    def __call__(self, x, mask, cos, sin, dropout_key=None) -> jax.Array:
        """x [B, T, H]; mask [B, 1, 1 or T, S]; cos, sin [B, T, D]."""
        B, T = x.shape[:2]
        q, k, v = jnp.moveaxis(self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim), 2, 0)  # each [B, T, N, D]
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        attention_key, output_key = _split_key(dropout_key, 2)
        if attention_key is None or self.dropout_rate == 0.0:
            context = jax.nn.dot_product_attention(q, k, v, mask=mask)
        else:
            scores = jnp.einsum("btnd,bsnd->bnts", q, k).astype(jnp.float32) / np.sqrt(self.head_dim)
            scores = scores + jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)
            probs = dropout(jax.nn.softmax(scores, axis=-1).astype(v.dtype), self.dropout_rate, attention_key)
            context = jnp.einsum("bnts,bsnd->btnd", probs, v)
        out = self.output(context.reshape(B, T, -1))
        return dropout(out, self.dropout_rate, output_key)


class FeedForward(nnx.Module):
    """GeGLU: act(x W_in) * (x W_gate), then W_out (ModernBertMLP; W_in and W_gate are one matrix)."""

    def __init__(self, config: ModernBertConfig, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.hidden_activation = config.hidden_activation
        self.dropout_rate = config.mlp_dropout
        hidden, intermediate = config.hidden_size, config.intermediate_size
        self.input = nnx.Linear(hidden, 2 * intermediate, use_bias=config.mlp_bias, dtype=dtype, rngs=rngs)
        self.output = nnx.Linear(intermediate, hidden, use_bias=config.mlp_bias, dtype=dtype, rngs=rngs)

    def __call__(self, x, dropout_key=None) -> jax.Array:
        values, gate = jnp.split(self.input(x), 2, axis=-1)  # [B, T, I] each
        h = dropout(_ACTIVATIONS[self.hidden_activation](values) * gate, self.dropout_rate, dropout_key)
        return self.output(h)


class Layer(nnx.Module):
    """x + attention(norm(x)), then x + mlp(norm(x)); layer 0 has no attention norm."""

    def __init__(self, config: ModernBertConfig, index: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.attention_type = config.layer_types[index]
        norm = lambda: LayerNorm(config.hidden_size, config.norm_eps, use_bias=config.norm_bias)  # noqa: E731
        self.attention_norm = norm() if index > 0 else None
        self.attention = Attention(config, dtype=dtype, rngs=rngs)
        self.mlp_norm = norm()
        self.mlp = FeedForward(config, dtype=dtype, rngs=rngs)

    def __call__(self, x, mask, cos, sin, dropout_key=None) -> jax.Array:
        attention_key, mlp_key = _split_key(dropout_key, 2)
        normed = x if self.attention_norm is None else self.attention_norm(x)
        x = x + self.attention(normed, mask, cos, sin, attention_key)
        return x + self.mlp(self.mlp_norm(x), mlp_key)


class ModernBertModel(nnx.Module):
    """input ids [B, T] and mask [B, T] (or packed rows: segment_ids, positions) -> token embeddings [B, T, H]."""

    def __init__(self, config: ModernBertConfig, *, dtype: jnp.dtype = jnp.float32, with_pooler: bool = False, rngs: nnx.Rngs):
        del with_pooler  # ModernBERT has no pooler
        self.config = config
        self.dtype = dtype
        self.embeddings = Embeddings(config, dtype=dtype, rngs=rngs)
        self.layers = nnx.List([Layer(config, i, dtype=dtype, rngs=rngs) for i in range(config.num_hidden_layers)])
        self.final_norm = LayerNorm(config.hidden_size, config.norm_eps, use_bias=config.norm_bias)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None,
        token_type_ids: jax.Array | None = None,
        dropout_key: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
    ) -> jax.Array:
        del token_type_ids  # ModernBERT has no token types
        config = self.config
        T = input_ids.shape[1]
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(T), input_ids.shape)  # transformers: 0..T-1, pads included
        masks = {GLOBAL: attention_mask_4d(attention_mask, segment_ids)}
        masks[LOCAL] = masks[GLOBAL] & local_window(T, config.local_attention // 2)
        rotary = {
            GLOBAL: rotary_cos_sin(positions, config.head_dim, config.global_rope_theta),
            LOCAL: rotary_cos_sin(positions, config.head_dim, config.local_rope_theta),
        }
        keys = _split_key(dropout_key, len(self.layers) + 1)
        x = self.embeddings(input_ids, keys[0])
        for layer, key in zip(self.layers, keys[1:]):
            x = layer(x, masks[layer.attention_type], *rotary[layer.attention_type], key)
        return self.final_norm(x)
