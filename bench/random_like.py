"""Gives an ST folder whose encoder weights are missing random ones of the shapes its config.json names.

    python -m bench.random_like FOLDER

For speed figures on a machine the real weights cannot reach (all-MiniLM-L6-v2's 87 MB
model.safetensors exceeds what travels to a lent GPU): the tokenizer, config and ST modules stay
the real ones, so sentence lengths, shapes and work per step are the model's; only the values differ.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def fill_random_weights(folder: Path, seed: int = 0) -> Path:
    """Writes FOLDER/model.safetensors: transformers' initialization of FOLDER/config.json's model."""
    import torch
    import transformers

    if (folder / "model.safetensors").exists():
        raise FileExistsError(f"{folder / 'model.safetensors'} exists; random_like fills only a folder without weights")
    torch.manual_seed(seed)
    model = transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(str(folder)))
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder / "model.safetensors"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    print(fill_random_weights(parser.parse_args(argv).folder))


if __name__ == "__main__":
    main()
