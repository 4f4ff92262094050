"""ST's Pooling: token embeddings [B, T, D] and a mask [B, T] -> sentence embedding [B, k * D].

Semantics follow sentence_transformers/sentence_transformer/modules/pooling.py (`_forward_padded`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

# The order ST concatenates combined modes in (Pooling.POOLING_MODES).
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")

# Legacy config keys (sentence_bert < 5.4) in the order ST reads them.
LEGACY_MODE_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def check_modes(modes: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Pooling modes as a tuple, each one checked."""
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    if not modes:
        raise ValueError(f"pooling_mode is empty; use one or more of {POOLING_MODES}")
    for mode in modes:
        if mode not in POOLING_MODES:
            raise ValueError(f"pooling mode {mode!r} is not supported; use one or more of {POOLING_MODES}")
    return modes


def exclude_prompt(attention_mask: jax.Array, prompt_length: int) -> jax.Array:
    """Zeroes the first `prompt_length` positions; flaxenc pads on the right, as ST's BERT/RoBERTa."""
    positions = jnp.arange(attention_mask.shape[1])[None, :]
    return jnp.where(positions < prompt_length, 0, attention_mask)


def pool(
    token_embeddings: jax.Array,
    attention_mask: jax.Array,
    modes: tuple[str, ...] = ("mean",),
    prompt_length: int | None = None,
) -> jax.Array:
    """Pools token embeddings [B, T, D] in fp32 and concatenates the modes in the given order."""
    x = token_embeddings.astype(jnp.float32)  # ST accumulates half precision in fp32
    original_mask = attention_mask
    if prompt_length is not None:
        attention_mask = exclude_prompt(attention_mask, prompt_length)
    mask = attention_mask.astype(jnp.float32)[..., None]  # [B, T, 1]
    seq_len = x.shape[1]
    outputs = []
    for mode in modes:
        if mode == "cls":
            first = jnp.argmax(attention_mask, axis=1)  # first unmasked token
            outputs.append(jnp.take_along_axis(x, first[:, None, None], axis=1)[:, 0])
        elif mode == "max":
            outputs.append(jnp.where(mask > 0, x, -jnp.inf).max(axis=1))
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            count = jnp.maximum(mask.sum(axis=1), 1e-9)  # ST clamps the token count at 1e-9
            denominator = count if mode == "mean" else jnp.sqrt(count)
            outputs.append((x * mask).sum(axis=1) / denominator)
        elif mode == "weightedmean":
            # Position weights 1..T counted from the first real token of the unexcluded mask.
            pad_lengths = jnp.argmax(original_mask, axis=1)
            weights = jnp.arange(1, seq_len + 1, dtype=jnp.float32)[None, :, None] - pad_lengths[:, None, None]
            weighted_mask = mask * weights
            outputs.append((x * weighted_mask).sum(axis=1) / jnp.maximum(weighted_mask.sum(axis=1), 1e-9))
        elif mode == "lasttoken":
            flipped = attention_mask[:, ::-1]
            from_end = jnp.argmax(flipped, axis=1)
            from_end = jnp.where(flipped.max(axis=1) == 0, seq_len - 1, from_end)
            last = seq_len - from_end - 1
            outputs.append(jnp.take_along_axis(x * mask, last[:, None, None], axis=1)[:, 0])
        else:
            raise ValueError(f"pooling mode {mode!r} is not supported; use one or more of {POOLING_MODES}")
    return jnp.concatenate(outputs, axis=-1)


class Pooling(nnx.Module):
    """Holds the pooling config; no parameters."""

    def __init__(
        self,
        embedding_dimension: int,
        pooling_mode: str | tuple[str, ...] = "mean",
        include_prompt: bool = True,
    ):
        self.embedding_dimension = embedding_dimension
        self.modes = check_modes(pooling_mode)
        self.include_prompt = include_prompt

    @property
    def output_dimension(self) -> int:
        return len(self.modes) * self.embedding_dimension

    def __call__(
        self, token_embeddings: jax.Array, attention_mask: jax.Array, prompt_length: int | None = None
    ) -> jax.Array:
        if self.include_prompt:
            prompt_length = None
        return pool(token_embeddings, attention_mask, self.modes, prompt_length)
