"""Encode throughput: flaxenc's SentenceEncoder.encode against ST's encode, in sentences/s."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import flaxenc
from bench.environment import torch_device
from bench.timing import matmul_precision, timed


def load_st(folder: Path, dtype: str):
    """ST's model on the torch device; half precision as ST's docs do it (model.half() / model.bfloat16())."""
    from sentence_transformers import SentenceTransformer

    device = torch_device()
    model = SentenceTransformer(str(folder), device=str(device))
    if dtype == "bfloat16":
        model = model.half() if device.type == "cuda" else model.bfloat16()
    return model


def measure_encode(folder: Path, sentences: list[str], dtype: str, batch_size: int, repeats: int) -> dict:
    """One warm-up call per side (flaxenc compiles there), then the best of `repeats` timed calls.

    The two sides alternate, so a change in machine load hits both.
    """
    with matmul_precision(dtype):
        encoder = flaxenc.SentenceEncoder.from_pretrained(folder, dtype=dtype)
        st_model = load_st(folder, dtype)
        runs = {
            "flaxenc": lambda: encoder.encode(sentences, batch_size=batch_size),
            "st": lambda: st_model.encode(sentences, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False),
        }
        first_call, embeddings = {}, {}
        for side, run in runs.items():
            first_call[side], embeddings[side] = timed(run)
        passes = {side: [] for side in runs}
        for _ in range(repeats):
            for side, run in runs.items():
                passes[side].append(timed(run)[0])

    result = {"sentences": len(sentences)}
    for side in runs:
        steady = min(passes[side])
        result[side] = {
            "per_s": len(sentences) / steady,
            "steady_s": steady,
            "first_call_s": first_call[side],
            "passes_s": passes[side],
        }
    result["flaxenc"]["compiles"] = encoder.num_compiles
    result["ratio"] = result["flaxenc"]["per_s"] / result["st"]["per_s"]
    # Both sides embed the same sentences with the same weights: a check that they computed the same thing.
    result["max_abs_diff"] = float(np.abs(embeddings["flaxenc"] - np.asarray(embeddings["st"], np.float32)).max())
    return result
