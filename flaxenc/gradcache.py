"""GradCache (Gao et al. 2021) inside the jitted step: the global batch embedded in mini-batches.

`cached_embed_columns` gives the same embeddings as `train_step.embed_columns`, computed
mini_batch_size rows per device at a time in a `lax.scan` whose body is under `jax.checkpoint`.
Differentiated, it is GradCache: the forward scan keeps only the embeddings (no activations);
the loss and its gradient with respect to every embedding of the global batch are computed
once; then the backward scan re-runs each mini-batch's forward pass and pulls its slice of that
gradient back to the parameters, accumulating the parameter gradient in the scan's carry. Peak
memory is the embeddings plus one mini-batch's activations, not the global batch's.

ST's CachedMultipleNegativesRankingLoss does the same with three explicit passes and a backward
hook (sentence_transformers/base/losses/gradcache.py); here jax.checkpoint + scan derive them.

Chunks follow the mesh: each device embeds its own rows, mini_batch_size of them per step of the
scan, so every device works on every step and no rows move between devices.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flaxenc import sharding
from flaxenc.sentence_model import SentenceModel


def _constrain(x: jax.Array, mesh: Mesh | None, spec: PartitionSpec) -> jax.Array:
    if mesh is None or mesh.size == 1:
        return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def chunk_layout(rows: int, shards: int, mini_batch_size: int) -> tuple[int, int]:
    """(chunks, rows per device per chunk): rows split evenly over `shards` devices, each device's
    rows in chunks of at most mini_batch_size (the last padded)."""
    if rows % shards:
        raise ValueError(f"{rows} rows do not split evenly over {shards} devices")
    if mini_batch_size < 1:
        raise ValueError(f"mini_batch_size must be positive, got {mini_batch_size}")
    per_device = rows // shards
    size = min(mini_batch_size, per_device)
    return -(-per_device // size), size


def _to_chunks(x: jax.Array, shards: int, chunks: int, size: int, fill: jax.Array) -> jax.Array:
    """[C, B, ...] -> [C * chunks, shards * size, ...]: chunk k of column c holds rows k*size..(k+1)*size
    of every device's block of B / shards rows; `fill` [...] pads each block to chunks * size rows."""
    columns, rows = x.shape[:2]
    per_device = rows // shards
    x = x.reshape(columns, shards, per_device, *x.shape[2:])
    padding = chunks * size - per_device
    if padding:
        pad_rows = jnp.broadcast_to(fill, (columns, shards, padding, *x.shape[3:])).astype(x.dtype)
        x = jnp.concatenate([x, pad_rows], axis=2)
    x = x.reshape(columns, shards, chunks, size, *x.shape[3:])
    x = jnp.moveaxis(x, 2, 1)  # [C, chunks, shards, size, ...]
    return x.reshape(columns * chunks, shards * size, *x.shape[4:])


def _from_chunks(y: jax.Array, columns: int, shards: int, chunks: int, size: int, rows: int) -> jax.Array:
    """Inverse of _to_chunks for outputs [C * chunks, shards * size, D] -> [C, B, D], padding dropped."""
    y = y.reshape(columns, chunks, shards, size, *y.shape[2:])
    y = jnp.moveaxis(y, 1, 2).reshape(columns, shards, chunks * size, *y.shape[4:])
    return y[:, :, : rows // shards].reshape(columns, rows, *y.shape[3:])


def cached_embed_columns(
    model: SentenceModel,
    columns: Sequence[dict],
    mini_batch_size: int,
    dropout_key: jax.Array | None = None,
    mesh: Mesh | None = None,
) -> list[jax.Array]:
    """Each column's [B, D] embeddings, mini_batch_size rows per device at a time (see the module doc).

    columns: {"input_ids", "attention_mask"} [B, T] each (and optionally "prompt_length" [B]: the
    prompt tokens that pooling leaves out where the model's Pooling has include_prompt=False).
    With a dropout key, chunk k of the scan drops out with fold_in(dropout_key, k); the backward
    pass re-runs it with the same key, hence the same masks.
    """
    shards = 1 if mesh is None else mesh.shape[sharding.DATA_AXIS]
    rows = columns[0]["attention_mask"].shape[0]
    length = max(column["attention_mask"].shape[1] for column in columns)
    chunks, size = chunk_layout(rows, shards, mini_batch_size)

    def stacked(key):
        return jnp.stack([jnp.pad(c[key], ((0, 0), (0, length - c[key].shape[1]))) for c in columns])

    # Padding rows hold one attended token (an all-zero mask would make max pooling -inf); their
    # embeddings are dropped, so their gradient is zero.
    one_token = jnp.zeros(length, jnp.int32).at[0].set(1)
    spec = PartitionSpec(None, sharding.DATA_AXIS)
    xs = {
        "input_ids": _to_chunks(stacked("input_ids"), shards, chunks, size, jnp.zeros(length, jnp.int32)),
        "attention_mask": _to_chunks(stacked("attention_mask"), shards, chunks, size, one_token),
    }
    if "prompt_length" in columns[0]:
        prompt_lengths = jnp.stack([jnp.asarray(c["prompt_length"]).reshape(rows) for c in columns])
        xs["prompt_length"] = _to_chunks(prompt_lengths, shards, chunks, size, jnp.zeros((), jnp.int32))
    xs = {name: _constrain(x, mesh, spec) for name, x in xs.items()}
    if dropout_key is not None:
        xs["dropout_key"] = jax.random.key_data(jax.random.split(dropout_key, len(columns) * chunks))

    graphdef, params = nnx.split(model)

    @jax.checkpoint
    def embed_chunk(params, chunk):
        chunk_model = nnx.merge(graphdef, params)
        key = jax.random.wrap_key_data(chunk["dropout_key"]) if "dropout_key" in chunk else None
        prompt_length = chunk["prompt_length"][:, None] if "prompt_length" in chunk else None
        return chunk_model(
            chunk["input_ids"], chunk["attention_mask"], prompt_length=prompt_length, dropout_key=key
        )  # [shards * size, D]

    def body(carry, chunk):
        return carry, _constrain(embed_chunk(params, chunk), mesh, PartitionSpec(sharding.DATA_AXIS))

    _, embeddings = jax.lax.scan(body, None, xs)  # [C * chunks, shards * size, D]
    embeddings = _constrain(embeddings, mesh, spec)
    return list(_from_chunks(embeddings, len(columns), shards, chunks, size, rows))


__all__ = ["cached_embed_columns", "chunk_layout"]
