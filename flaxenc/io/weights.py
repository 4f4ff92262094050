"""Reading and writing tensor files: safetensors with numpy, pytorch_model.bin through torch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

SAFETENSORS = "model.safetensors"
PYTORCH_BIN = "pytorch_model.bin"


def find_weights(folder: str | os.PathLike) -> Path:
    """The weights file of a folder: model.safetensors first, else pytorch_model.bin."""
    folder = Path(folder)
    for name in (SAFETENSORS, PYTORCH_BIN):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: no {SAFETENSORS} or {PYTORCH_BIN} in this folder")


def read_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a weights file as numpy arrays, by PyTorch key."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            return safetensors.numpy.load_file(path)
        except (safetensors.SafetensorError, ValueError, OSError) as error:
            raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    if path.suffix == ".bin":
        return _read_torch_bin(path)
    raise ValueError(f"{path}: unknown weights format; expected .safetensors or .bin")


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"{path} is a PyTorch pickle, and reading it needs torch, which is not installed. "
            "Install torch, or convert the folder to model.safetensors."
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a broken pickle
        raise ValueError(f"{path}: not a readable PyTorch weights file ({error})") from None
    return {key: value.float().numpy() if value.is_floating_point() else value.numpy() for key, value in state.items()}


def write_safetensors(tensors: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Writes contiguous fp32 arrays with PyTorch metadata, as transformers' save_pretrained."""
    arrays = {key: np.ascontiguousarray(value) for key, value in tensors.items()}
    safetensors.numpy.save_file(arrays, str(path), metadata={"format": "pt"})
