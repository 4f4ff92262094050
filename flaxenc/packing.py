"""Sequence packing: the sentences of a batch (training or encode) share rows instead of each padding its own.

A padded batch computes on rows x longest tokens, much of them padding on short sentence pairs.
Packing places whole
sentences one after another in rows of `length` tokens (first fit, longest first) and the
encoder attends only within a sentence (a block-diagonal mask from segment ids) with positions
restarting at each sentence, so every sentence's token embeddings equal the padded run's up to
float rounding.
A gather (token_index) then lays the token embeddings out as the padded batch again, and pooling
and the heads run unchanged. Host-side, in numpy, on the input pipeline's thread.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Rows at least this long: short sentences fill them several at a time, and the attention over
# a row (length^2) stays small next to the feed-forward layers (64 was faster than 128 on CPU,
# for the same number of token positions).
PACK_LENGTH = 64


def packed_rows(n: int, multiple: int = 1) -> int:
    """Rows to allocate for n: n rounded up on a grid of 4 steps per doubling (so few programs
    compile, with at most 25% of empty rows), and to a multiple of `multiple` (the devices)."""
    step = max(1, (1 << max(0, n.bit_length() - 1)) // 4)
    rows = max(1, -(-n // step) * step)
    return -(-rows // multiple) * multiple


def pack_length(longest: int, buckets: Sequence[int], minimum: int = PACK_LENGTH) -> int:
    """Row length: the bucket of the longest sentence, and at least `minimum` (capped at the largest bucket)."""
    fitting = [b for b in buckets if b >= longest]
    if not fitting:
        raise ValueError(f"a sentence has {longest} tokens, more than the largest bucket {max(buckets)}")
    at_least = [b for b in fitting if b >= minimum]
    return at_least[0] if at_least else fitting[-1]


def pack(
    input_ids: Sequence[np.ndarray], attention_masks: Sequence[np.ndarray], length: int, row_multiple: int = 1, pad_id: int = 0
) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """Packs the right-padded sentences of every column into rows of `length` tokens.

    input_ids, attention_masks: one [B, T] array per column. Returns the packed rows
    {"input_ids", "segment_ids" (0: empty, k: the row's k-th sentence), "positions" (0, 1, ...
    within each sentence)}, each [R, length], and per column a token_index [B, T]: where each
    token sits in the packed rows flattened (R * length); padding points at slot 0.
    """
    lengths = [mask.sum(axis=1).astype(np.int64) for mask in attention_masks]
    sentences = [(int(n), column, row) for column, ls in enumerate(lengths) for row, n in enumerate(ls)]
    if max((n for n, _, _ in sentences), default=0) > length:
        raise ValueError(f"a sentence is longer than the pack length {length}")
    sentences.sort(key=lambda s: -s[0])  # stable: ties keep column, row order

    used: list[int] = []  # tokens taken in each row
    placed = []  # (column, row, packed row, offset, n)
    for n, column, row in sentences:
        target = next((r for r, taken in enumerate(used) if taken + n <= length), len(used))
        if target == len(used):
            used.append(0)
        placed.append((column, row, target, used[target], n))
        used[target] += n

    rows = packed_rows(len(used), row_multiple)
    packed_ids = np.full((rows, length), pad_id, np.int32)
    segment_ids = np.zeros((rows, length), np.int32)
    positions = np.zeros((rows, length), np.int32)
    segments_in_row = np.zeros(rows, np.int32)
    token_index = [np.zeros(mask.shape, np.int32) for mask in attention_masks]
    for column, row, target, offset, n in placed:
        segments_in_row[target] += 1
        span = slice(offset, offset + n)
        packed_ids[target, span] = input_ids[column][row, :n]
        segment_ids[target, span] = segments_in_row[target]
        positions[target, span] = np.arange(n)
        token_index[column][row, :n] = target * length + np.arange(offset, offset + n)
    return {"input_ids": packed_ids, "segment_ids": segment_ids, "positions": positions}, token_index


def pack_batch(batch: dict, buckets: Sequence[int], row_multiple: int = 1, pad_id: int = 0, minimum: int = PACK_LENGTH) -> dict:
    """A training batch ({"columns": [{"input_ids", "attention_mask"}, ...], ...}) with its
    sentences packed: adds batch["packed"] and a "token_index" to every column (whose
    attention_mask pooling still reads)."""
    columns = batch["columns"]
    longest = max(int(column["attention_mask"].sum(axis=1).max(initial=0)) for column in columns)
    length = pack_length(longest, buckets, minimum)
    packed, token_index = pack(
        [c["input_ids"] for c in columns], [c["attention_mask"] for c in columns], length, row_multiple, pad_id
    )
    columns = [{**column, "token_index": index} for column, index in zip(columns, token_index)]
    return {**batch, "columns": columns, "packed": packed}


__all__ = ["PACK_LENGTH", "pack", "pack_batch", "pack_length", "packed_rows"]
