"""Embedding quantization (int8, uint8, binary, ubinary), in numpy, bit for bit as sentence-transformers.

Copies sentence_transformers/util/quantization.py (`quantize_embeddings`, `_get_quantization_ranges`):
int8/uint8 map each dimension's [min, max] (of `ranges`, else of `calibration_embeddings`, else of
the embeddings themselves) onto 256 buckets by floor; binary/ubinary pack `x > 0` into bits, 8
dimensions a byte (binary offsets the bytes by -128 into int8).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not supported; use one of {PRECISIONS}")
    return precision


def quantization_ranges(embeddings: np.ndarray, precision: str, calibration_embeddings: np.ndarray | None = None) -> np.ndarray:
    """[2, D]: per-dimension min and max of `calibration_embeddings`, else of `embeddings` (ST's
    `_get_quantization_ranges`; a single embedding cannot calibrate)."""
    if calibration_embeddings is None:
        if embeddings.ndim == 1 or embeddings.shape[0] == 1:
            raise ValueError(
                f"cannot compute {precision} quantization ranges from a single embedding; pass `ranges` or "
                "`calibration_embeddings` from a representative set of embeddings"
            )
        if embeddings.shape[0] < 100:
            warnings.warn(
                f"{precision} quantization ranges computed from only {len(embeddings)} embeddings; pass `ranges` or "
                "`calibration_embeddings` from a larger representative set",
                stacklevel=3,
            )
        calibration_embeddings = embeddings
    calibration_embeddings = np.asarray(calibration_embeddings)
    return np.vstack((np.min(calibration_embeddings, axis=0), np.max(calibration_embeddings, axis=0)))


def quantize_embeddings(
    embeddings: np.ndarray | Sequence[np.ndarray],
    precision: str,
    ranges: np.ndarray | None = None,
    calibration_embeddings: np.ndarray | None = None,
) -> np.ndarray | list[np.ndarray]:
    """Embeddings [..., D] in `precision`: float32, int8 / uint8 [..., D], binary / ubinary [..., ceil(D / 8)].

    `ranges` ([2, D] min and max per dimension) or `calibration_embeddings` set the int8/uint8
    buckets; without either they come from `embeddings` (at least 2 rows). A list of [T_i, D]
    matrices (token embeddings) is quantized with one set of buckets for all.
    """
    check_precision(precision)
    if isinstance(embeddings, (list, tuple)):
        if not embeddings:
            return []
        embeddings = [np.asarray(e) for e in embeddings]
        if embeddings[0].ndim == 2:  # multi-vector: calibrate once over every matrix, as ST
            if precision.endswith("int8") and ranges is None:
                data = np.concatenate(embeddings, axis=0) if calibration_embeddings is None else calibration_embeddings
                if len(data):
                    ranges = quantization_ranges(data, precision, calibration_embeddings)
            return [quantize_embeddings(m, precision, ranges, calibration_embeddings) for m in embeddings]
        embeddings = np.array(embeddings)
    embeddings = np.asarray(embeddings)
    if embeddings.dtype in (np.uint8, np.int8):
        raise ValueError("embeddings to quantize must be floats, not int8 or uint8")

    if embeddings.ndim == 2 and embeddings.shape[0] == 0:
        dim = embeddings.shape[1]
        if precision.endswith("int8"):
            return np.zeros((0, dim), np.int8 if precision == "int8" else np.uint8)
        if precision.endswith("binary"):
            return np.zeros((0, (dim + 7) // 8), np.int8 if precision == "binary" else np.uint8)

    if precision == "float32":
        return embeddings.astype(np.float32)
    if precision.endswith("int8"):
        if ranges is None:
            ranges = quantization_ranges(embeddings, precision, calibration_embeddings)
        ranges = np.asarray(ranges).astype(np.float32, copy=False)
        starts = ranges[0, :]
        steps = (ranges[1, :] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        buckets = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
        return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)
    bits = np.packbits(embeddings > 0, axis=-1)
    # ST: (packbits - 128).astype(int8); the uint8 subtraction wraps, so 0 -> -128 and 255 -> 127
    return (bits - 128).astype(np.int8) if precision == "binary" else bits


__all__ = ["PRECISIONS", "quantization_ranges", "quantize_embeddings"]
