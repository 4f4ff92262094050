"""RoBERTa: BERT with positions numbered from pad_token_id + 1 that skip pads."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flaxenc.models.bert import BertModel


def roberta_position_ids(input_ids: jax.Array, pad_token_id: int) -> jax.Array:
    """transformers' create_position_ids_from_input_ids: pads keep pad_token_id, tokens count up after it."""
    is_token = (input_ids != pad_token_id).astype(jnp.int32)
    return jnp.cumsum(is_token, axis=1) * is_token + pad_token_id


class RobertaModel(BertModel):
    """Packed rows start each sentence at config.position_offset (pad_token_id + 1)."""

    def position_ids(self, input_ids: jax.Array) -> jax.Array:
        return roberta_position_ids(input_ids, self.config.pad_token_id)
