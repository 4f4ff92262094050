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


def first_fit(lengths: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, offset) of each sentence: first fit, longest first (ties keep their order).

    Equal lengths are placed together: under first fit, k sentences of one length fill the open rows
    in row order (each row takes as many as its free tokens hold) and then new rows, so a whole run
    of equal lengths is a few numpy operations. A training batch has a few dozen distinct lengths,
    so this is a loop over lengths, not over sentences, with first fit's placement exactly.
    """
    row, offset = np.zeros(len(lengths), np.int64), np.zeros(len(lengths), np.int64)
    order = np.argsort(-lengths, kind="stable")
    ordered = lengths[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(order) else np.zeros(0, np.int64)
    used = np.zeros(0, np.int64)  # tokens taken in each row
    for first, last in zip(starts, [*starts[1:], len(order)]):
        n, items = int(ordered[first]), order[first:last]
        if n == 0:  # an empty sentence fits anywhere: the first row (or a new one)
            if not len(used):
                used = np.zeros(1, np.int64)
            row[items], offset[items] = 0, used[0]
            continue
        capacity = (length - used) // n  # sentences of this length each open row still takes
        filled = np.cumsum(capacity)
        existing = min(len(items), int(filled[-1]) if len(filled) else 0)
        j = np.arange(existing)
        target = np.searchsorted(filled, j, side="right")
        row[items[:existing]] = target
        offset[items[:existing]] = used[target] + (j - (filled - capacity)[target]) * n
        used = used + np.minimum(capacity, np.maximum(0, existing - (filled - capacity))) * n
        rest = len(items) - existing
        if rest:
            per_row = length // n
            j = np.arange(rest)
            row[items[existing:]] = len(used) + j // per_row
            offset[items[existing:]] = (j % per_row) * n
            counts = np.full(-(-rest // per_row), per_row)
            counts[-1] = rest - per_row * (len(counts) - 1)
            used = np.concatenate([used, counts * n])
    return row, offset


def next_fit(lengths: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, offset) of sentences taken in order, each row filled with the longest run that fits.

    For sentences sorted longest first, as encode() batches them, this is next-fit decreasing:
    within a sorted batch lengths are close, and it fills rows nearly as well as first fit at a
    cost per row rather than per sentence.
    """
    ends = np.cumsum(lengths)  # token count up to and including each sentence
    row = np.zeros(len(lengths), np.int64)
    first, rows = 0, 0
    while first < len(lengths):
        before = ends[first] - lengths[first]
        last = max(first + 1, int(np.searchsorted(ends, before + length, side="right")))
        row[first:last] = rows
        first, rows = last, rows + 1
    starts = ends - lengths
    offset = starts - starts[np.r_[0, np.flatnonzero(np.diff(row)) + 1]][row]
    return row, offset


def write_rows(
    ids: np.ndarray, lengths: np.ndarray, row: np.ndarray, offset: np.ndarray, rows: int, length: int, pad_id: int = 0
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Lays sentences out in packed rows, in numpy without a loop over sentences or tokens.

    ids: the sentences' tokens one after another; lengths, row, offset: per sentence. Returns the
    rows {"input_ids", "segment_ids" (0: empty, k: the row's k-th sentence by offset), "positions"}
    each [rows, length], and each sentence's first slot in the rows flattened (rows * length).
    """
    if len(lengths) and int(lengths.max()) > length:
        raise ValueError(f"a sentence is longer than the pack length {length}")
    first_slot = row * length + offset
    sentence_of_token = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(len(ids)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    slots = first_slot[sentence_of_token] + position
    by_slot = np.argsort(first_slot, kind="stable")
    segment = np.empty(len(lengths), np.int32)  # 1 + the sentence's rank by offset within its row
    rank = np.arange(len(lengths)) - np.searchsorted(row[by_slot], row[by_slot], side="left")
    segment[by_slot] = rank + 1
    packed = {
        "input_ids": np.full(rows * length, pad_id, np.int32),
        "segment_ids": np.zeros(rows * length, np.int32),
        "positions": np.zeros(rows * length, np.int32),
    }
    packed["input_ids"][slots] = ids
    packed["segment_ids"][slots] = segment[sentence_of_token]
    packed["positions"][slots] = position
    return {key: value.reshape(rows, length) for key, value in packed.items()}, first_slot


def token_index(first_slot: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """[B, width] int32: where each token of each sentence sits in the packed rows; padding points at slot 0."""
    positions = np.arange(width, dtype=np.int32)
    return np.where(positions < lengths[:, None], first_slot.astype(np.int32)[:, None] + positions, 0).astype(np.int32, copy=False)


def pack(
    input_ids: Sequence[np.ndarray], attention_masks: Sequence[np.ndarray], length: int, row_multiple: int = 1, pad_id: int = 0
) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """Packs the right-padded sentences of every column into rows of `length` tokens (first fit).

    input_ids, attention_masks: one [B, T] array per column. Returns the packed rows
    {"input_ids", "segment_ids" (0: empty, k: the row's k-th sentence), "positions" (0, 1, ...
    within each sentence)}, each [R, length], and per column a token_index [B, T]: where each
    token sits in the packed rows flattened (R * length); padding points at slot 0.
    """
    lengths = np.concatenate([mask.sum(axis=1).astype(np.int64) for mask in attention_masks])
    ids = np.concatenate([column[mask.astype(bool)] for column, mask in zip(input_ids, attention_masks)])
    if len(lengths) and int(lengths.max()) > length:
        raise ValueError(f"a sentence is longer than the pack length {length}")
    row, offset = first_fit(lengths, length)
    rows = packed_rows(int(row.max(initial=-1)) + 1, row_multiple)
    packed, first_slot = write_rows(ids, lengths, row, offset, rows, length, pad_id)
    bounds = np.cumsum([0, *(len(mask) for mask in attention_masks)])
    token_indices = [
        token_index(first_slot[a:b], lengths[a:b], mask.shape[1]) for a, b, mask in zip(bounds, bounds[1:], attention_masks)
    ]
    return packed, token_indices


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


__all__ = ["PACK_LENGTH", "first_fit", "next_fit", "pack", "pack_batch", "pack_length", "packed_rows", "token_index", "write_rows"]
