"""Benchmark text: STS-B unique sentences to encode and scored pairs to train on; MRPC pairs for recipe 2."""

from __future__ import annotations

import os
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "dev", "test")


def data_folder() -> Path:
    """$FLAXENC_DATA, else ../shared/data beside the repo."""
    for candidate in (os.environ.get("FLAXENC_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "stsb" / "sts-train.csv").is_file():
            return Path(candidate)
    raise FileNotFoundError("STS-B not found: set FLAXENC_DATA or place it at ../shared/data (stsb/sts-*.csv)")


def read_stsb(split: str) -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, score 0..5) rows; tab-separated, no quoting, some rows carry extra columns."""
    rows = []
    with open(data_folder() / "stsb" / f"sts-{split}.csv", encoding="utf-8") as f:
        for line in f:
            columns = line.rstrip("\n").split("\t")
            rows.append((columns[5], columns[6], float(columns[4])))
    return rows


def stsb_sentences(limit: int | None = None, seed: int = 0) -> list[str]:
    """The unique sentences of all splits (~15.5k), shuffled with `seed`; the first `limit` of them.

    A random subset keeps the length distribution of the whole set.
    """
    sentences = sorted({text for split in SPLITS for first, second, _ in read_stsb(split) for text in (first, second)})
    random.Random(seed).shuffle(sentences)
    return sentences[:limit]


def stsb_train_pairs(seed: int = 0) -> list[tuple[str, str, float]]:
    """STS-B train as (sentence1, sentence2, score / 5), shuffled with `seed`, as a training epoch sees them."""
    rows = [(first, second, score / 5.0) for first, second, score in read_stsb("train")]
    random.Random(seed).shuffle(rows)
    return rows


def mrpc_train_pairs(seed: int = 0) -> list[tuple[str, str, float]]:
    """MRPC train as (sentence1, sentence2, paraphrase label 0/1), shuffled with `seed` (recipe 2's data)."""
    rows = []
    with open(data_folder() / "mrpc" / "msr_paraphrase_train.txt", encoding="utf-8-sig") as f:
        for line in f:
            columns = line.rstrip("\n").split("\t")
            if len(columns) >= 5 and columns[0] in ("0", "1"):  # skips a header row where there is one
                rows.append((columns[3], columns[4], float(columns[0])))
    random.Random(seed).shuffle(rows)
    return rows
