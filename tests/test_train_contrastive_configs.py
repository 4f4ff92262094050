"""flaxenc-train runs, offline, the two contrastive configs of issue 15 as shipped in configs/:
CachedMultipleNegativesRankingLoss on pairs with hard negatives mined by
flaxenc.util.mine_hard_negatives (configs/cached_mnrl_hard_negatives.yaml, any number of negative
columns), and GISTEmbedLoss with a guide model given by path (configs/gist_guide.yaml). The configs
are loaded from configs/ with overrides only for the tiny random BERT and guide, the data file, the
batch size and the evaluation's size; STS-B pairs from the shared data.
"""

from __future__ import annotations

import json

import pytest
from conftest import REPO, build_st_model, read_stsb

import flaxenc
from bench import make_mined
from flaxenc_train.config import load_config
from flaxenc_train.loop import train

STEPS, BATCH = 6, 16


@pytest.fixture(scope="module")
def mined(tmp_path_factory, bert_tokenizer_path):
    """(model folder, guide folder, a jsonl of (anchor, positive, negative_1, negative_2) rows)."""
    root = tmp_path_factory.mktemp("contrastive_configs")
    folder, _ = build_st_model(root / "model", bert_tokenizer_path)
    guide, _ = build_st_model(root / "guide", bert_tokenizer_path, seed=1, hidden_size=16)
    read_stsb("train")  # skips without the data
    path = root / "mined.jsonl"
    # The README's command (bench/make_mined.py: flaxenc.util.mine_hard_negatives on STS-B pairs), with the tiny model.
    make_mined.main([str(path), "--model", str(folder), "--pairs", "200"])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) >= STEPS * BATCH and list(rows[0]) == ["anchor", "positive", "negative_1", "negative_2"]
    return folder, guide, path


CONFIGS = {"cached_mnrl_hard_negatives": "cached_mnrl_hard_negatives.yaml", "gist": "gist_guide.yaml"}


@pytest.mark.parametrize("setup", list(CONFIGS))
def test_flaxenc_train_contrastive_config(mined, tmp_path, setup):
    folder, guide, data = mined
    overrides = [
        f"model.name_or_path={folder}",
        f"data.train.path={data}",
        f"batch_size={BATCH}",
        f"max_steps={STEPS}",
        "optimizer.learning_rate=1e-4",
        "evaluation.every_steps=0",
        "evaluation.data.limit=64",
        "evaluation.test_data.limit=64",
        f"output_dir={tmp_path / 'output'}",
    ]
    if setup == "gist":
        overrides.append(f"loss.args.guide={guide}")
    else:
        overrides.append("loss.args.mini_batch_size=4")
    config = load_config(REPO / "configs" / CONFIGS[setup], overrides)
    # What the shipped configs say: the mined columns (GISTEmbedLoss takes 3), the loss.
    negatives = ("negative_1",) if setup == "gist" else ("negative_1", "negative_2")
    assert config.data.train.text_columns == ("anchor", "positive", *negatives)
    assert config.loss.name == {"gist": "gist", "cached_mnrl_hard_negatives": "cached_multiple_negatives_ranking"}[setup]
    result = train(config, progress=False)
    assert result.steps == STEPS
    metrics = [json.loads(line) for line in (tmp_path / "output" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    print(setup, "losses:", losses, "dev:", result.eval, "test:", result.test)
    assert losses and all(value == value for value in losses)  # finite, no NaN
    assert "sts-dev_spearman_cosine" in result.eval and "sts-test_spearman_cosine" in result.test
    trained = flaxenc.SentenceEncoder.from_pretrained(result.final_model)
    assert trained.encode(["a sentence"]).shape == (1, 32)
