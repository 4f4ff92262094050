"""flaxenc-train runs, offline, the two contrastive setups of issue 15 from a YAML config (written
here; configs/ is another change's): CachedMultipleNegativesRankingLoss on pairs with hard negatives
mined by flaxenc.util.mine_hard_negatives (any number of negative columns), and GISTEmbedLoss with a
guide model given by path. A tiny random BERT and guide; STS-B pairs from the shared data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import build_st_model, read_stsb

import flaxenc
from flaxenc.util import mine_hard_negatives
from train.config import load_config
from train.loop import train

STEPS, BATCH = 6, 16


@pytest.fixture(scope="module")
def mined(tmp_path_factory, bert_tokenizer_path):
    """(model folder, guide folder, a jsonl of (anchor, positive, negative_1, negative_2) rows)."""
    root = tmp_path_factory.mktemp("contrastive_configs")
    folder, _ = build_st_model(root / "model", bert_tokenizer_path)
    guide, _ = build_st_model(root / "guide", bert_tokenizer_path, seed=1, hidden_size=16)
    first, second, _ = read_stsb("train")
    pairs = {"anchor": first[:200], "positive": second[:200]}
    rows = mine_hard_negatives(
        pairs, flaxenc.SentenceEncoder.from_pretrained(folder), num_negatives=2, output_format="n-tuple"
    )
    path = root / "mined.jsonl"
    with open(path, "w") as f:
        for values in list(zip(*rows.values()))[: STEPS * BATCH]:
            f.write(json.dumps(dict(zip(rows, values))) + "\n")
    return folder, guide, path


def write_config(path: Path, model: Path, data: Path, columns: list[str], loss: dict) -> Path:
    config = {
        "model": {"name_or_path": str(model)},
        "data": {"train": {"path": str(data), "text_columns": columns}},
        "loss": loss,
        "optimizer": {"learning_rate": 1e-4, "scheduler": "warmuplinear", "warmup_steps": 2},
        "output_dir": str(path.parent / "output"),
        "batch_size": BATCH,
        "epochs": 1,
        "seed": 0,
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


@pytest.mark.parametrize("setup", ["cached_mnrl_hard_negatives", "gist"])
def test_flaxenc_train_contrastive_config(mined, tmp_path, setup):
    folder, guide, data = mined
    if setup == "gist":
        columns = ["anchor", "positive", "negative_1"]
        loss = {"name": "gist", "args": {"guide": str(guide), "margin": 0.05}}
    else:
        columns = ["anchor", "positive", "negative_1", "negative_2"]
        loss = {"name": "cached_multiple_negatives_ranking", "args": {"mini_batch_size": 4}}
    config = write_config(tmp_path / f"{setup}.yaml", folder, data, columns, loss)
    result = train(load_config(str(config), []), progress=False)
    assert result.steps == STEPS
    metrics = [json.loads(line) for line in (tmp_path / "output" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    print(setup, "losses:", losses)
    assert losses and all(value == value for value in losses)  # finite, no NaN
    trained = flaxenc.SentenceEncoder.from_pretrained(Path(result.final_model))
    assert trained.encode(["a sentence"]).shape == (1, 32)
