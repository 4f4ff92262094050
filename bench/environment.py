"""What the benchmark ran on: hardware, library versions, devices, and the peak FLOP/s table for MFU."""

from __future__ import annotations

import gc
import importlib.metadata
import os
import platform
import time

import jax

PACKAGES = ("flaxenc", "jax", "jaxlib", "flax", "optax", "torch", "sentence-transformers", "transformers")

# Dense bf16 tensor-core peaks (FLOP/s) by device name, most specific first.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("A100", 312e12),
)


def torch_device():
    """Where ST runs: the GPU when torch sees one, else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def release_device_memory() -> None:
    """Frees what the last setting left (JAX arrays in reference cycles, torch's cached blocks)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict:
    import torch

    device = torch_device()
    return {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
        "torch_device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        # glibc.malloc.hugetlb=1: host memory in transparent huge pages, for both sides (train/huge_pages.py)
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
    }


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(wall seconds, CPU seconds the whole machine has run, CPU seconds of this process); None off Linux."""
    try:
        with open("/proc/stat", encoding="utf-8") as f:
            ticks = [int(value) for value in f.readline().split()[1:]]
    except OSError:
        return None
    idle = ticks[3] + ticks[4]  # idle, iowait
    own = os.times()
    return time.monotonic(), (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"), own.user + own.system


def others_cpu_share(start, end) -> float | None:
    """The share of all cores that other processes kept busy between two cpu_snapshot()s.

    Other processes skew the figures, torch's most: its OpenMP threads wait for each other.
    """
    if start is None or end is None:
        return None
    wall, machine, own = (b - a for a, b in zip(start, end))
    return max(0.0, machine - own) / (wall * os.cpu_count())


def versions() -> dict:
    found = {}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def peak_bf16_flops() -> float | None:
    """The first device's dense bf16 peak, or None off the GPUs in the table."""
    if not on_gpu():
        return None
    kind = jax.devices()[0].device_kind
    return next((peak for name, peak in PEAK_BF16_FLOPS if name in kind), None)


def precision_notes() -> dict:
    half = "float16 (model.half())" if torch_device().type == "cuda" else "bfloat16 (model.bfloat16())"
    return {
        "float32": "float32 matmuls at full precision on both sides: flaxenc under "
        "jax.default_matmul_precision('highest') (JAX's default would allow TF32 on GPU), "
        "torch at its default (TF32 off)",
        "bfloat16": "flaxenc dtype='bfloat16' (bf16 compute, fp32 parameters and pooling, JAX default "
        f"precision); ST encode: {half}, as ST's docs suggest; ST training: torch.autocast(bfloat16), "
        "as the transformers Trainer's bf16=True",
    }
