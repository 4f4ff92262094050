"""Benchmark text: STS-B unique sentences to encode and scored pairs to train on; MRPC pairs for recipe 2."""

from __future__ import annotations

import os
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "dev", "test")
NOT_FOUND = "set FLAXENC_DATA or place the data sets at ../shared/data (see its README)"


def find_data_folder() -> Path | None:
    """$FLAXENC_DATA, else ../shared/data beside the repo; None where neither holds STS-B."""
    for candidate in (os.environ.get("FLAXENC_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "stsb" / "sts-train.csv").is_file():
            return Path(candidate)
    return None


def data_folder() -> Path:
    """The data folder (find_data_folder), or FileNotFoundError saying where it is looked for."""
    folder = find_data_folder()
    if folder is None:
        raise FileNotFoundError(f"STS-B not found: {NOT_FOUND}")
    return folder


def stsb_path(split: str) -> Path:
    return data_folder() / "stsb" / f"sts-{split}.csv"


def read_stsb(split: str) -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, score 0..5) rows; tab-separated, no quoting, some rows carry extra columns."""
    rows = []
    with open(stsb_path(split), encoding="utf-8") as f:
        for line in f:
            columns = line.rstrip("\n").split("\t")
            rows.append((columns[5], columns[6], float(columns[4])))
    return rows


def read_mrpc(split: str) -> list[tuple[str, str, int]]:
    """(sentence1, sentence2, paraphrase label 0/1) rows of msr_paraphrase_{split}.txt (UTF-8 with a BOM)."""
    rows = []
    with open(data_folder() / "mrpc" / f"msr_paraphrase_{split}.txt", encoding="utf-8-sig") as f:
        for line in f:
            columns = line.rstrip("\n").split("\t")
            if len(columns) >= 5 and columns[0] in ("0", "1"):  # skips a header row where there is one
                rows.append((columns[3], columns[4], int(columns[0])))
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
    rows = [(first, second, float(label)) for first, second, label in read_mrpc("train")]
    random.Random(seed).shuffle(rows)
    return rows
