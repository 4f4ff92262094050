"""Timing helpers shared by the encode and training benchmarks."""

from __future__ import annotations

import contextlib
import time

import jax


def timed(fn, *args):
    """(seconds, result) of fn(*args) by the wall clock."""
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def matmul_precision(dtype: str):
    """fp32 runs use full-precision matmuls, as torch does by default; bf16 runs keep JAX's default."""
    return jax.default_matmul_precision("highest") if dtype == "float32" else contextlib.nullcontext()
