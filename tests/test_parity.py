"""Embedding parity with PyTorch sentence-transformers on tiny random BERT and RoBERTa models.

Each test builds the reference in PyTorch (transformers + ST modules, saved by ST 6), loads the
same folder in flaxenc and compares embeddings: fp32, max abs diff <= 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SENTENCES, build_st_model

import flaxenc

TOLERANCE = 1e-5


def assert_same_embeddings(st_model, folder, sentences=SENTENCES, **encode_kwargs):
    expected = st_model.encode(sentences, batch_size=4, convert_to_numpy=True, **encode_kwargs)
    encoder = flaxenc.SentenceEncoder.from_pretrained(folder)
    actual = encoder.encode(sentences, batch_size=4, **encode_kwargs)
    assert actual.shape == expected.shape
    assert actual.dtype == np.float32
    max_diff = float(np.abs(actual - expected).max())
    assert max_diff <= TOLERANCE, f"max abs diff {max_diff:.2e} > {TOLERANCE}"
    return encoder, actual


POOLING_CASES = [
    "cls",
    "max",
    "mean",
    "mean_sqrt_len_tokens",
    "weightedmean",
    "lasttoken",
    ("cls", "max", "mean"),
    ("lasttoken", "mean", "weightedmean", "mean_sqrt_len_tokens"),
]


@pytest.mark.parametrize("mode", POOLING_CASES, ids=lambda m: "+".join(m) if isinstance(m, tuple) else m)
def test_bert_pooling_modes(tmp_path, bert_tokenizer_path, mode):
    folder, st_model = build_st_model(tmp_path, bert_tokenizer_path, pooling_mode=mode)
    encoder, embeddings = assert_same_embeddings(st_model, folder)
    modes = mode if isinstance(mode, tuple) else (mode,)
    assert embeddings.shape[1] == 32 * len(modes)
    # ST's order, not the config's, decides nothing here: flaxenc keeps the order the folder names.
    assert encoder.model.pooling.modes == modes


@pytest.mark.parametrize("mode", ["cls", "max", "mean", "weightedmean", "lasttoken"])
def test_roberta_pooling_modes(tmp_path, roberta_tokenizer_path, mode):
    folder, st_model = build_st_model(tmp_path, roberta_tokenizer_path, arch="roberta", pooling_mode=mode)
    assert_same_embeddings(st_model, folder)


@pytest.mark.parametrize("mode", ["mean", "cls", "weightedmean", ("max", "mean")])
def test_prompt_excluded_from_pooling(tmp_path, bert_tokenizer_path, mode):
    """include_prompt=False drops the prompt's tokens from pooling, as ST does."""
    folder, st_model = build_st_model(tmp_path, bert_tokenizer_path, pooling_mode=mode, include_prompt=False)
    _, excluded = assert_same_embeddings(st_model, folder, prompt="query: ")
    _, included = assert_same_embeddings(st_model, folder)
    assert np.abs(excluded - included).max() > 1e-3  # the prompt really changed something


ACTIVATIONS = {
    "Tanh": torch.nn.Tanh(),
    "ReLU": torch.nn.ReLU(),
    "Identity": torch.nn.Identity(),
    "GELU": torch.nn.GELU(),
    "Sigmoid": torch.nn.Sigmoid(),
    "SiLU": torch.nn.SiLU(),
}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_dense_activations(tmp_path, bert_tokenizer_path, name, bias):
    heads = (("dense", 24, ACTIVATIONS[name], bias),)
    folder, st_model = build_st_model(tmp_path, bert_tokenizer_path, heads=heads)
    encoder, embeddings = assert_same_embeddings(st_model, folder)
    assert embeddings.shape == (len(SENTENCES), 24)
    assert encoder.model.heads[0].activation_function.endswith(name)


def test_dropout_normalize_layernorm_heads(tmp_path, bert_tokenizer_path):
    """Dropout is the identity at inference; Normalize and ST's LayerNorm module match."""
    heads = (("dense", 16, torch.nn.Tanh(), True), ("dropout", 0.5), ("layernorm",), ("normalize",))
    folder, st_model = build_st_model(tmp_path, bert_tokenizer_path, pooling_mode="max", heads=heads)
    _, embeddings = assert_same_embeddings(st_model, folder)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)


def test_hidden_act_relu_and_gelu_new(tmp_path, bert_tokenizer_path):
    for act in ("relu", "gelu_new"):
        folder, st_model = build_st_model(tmp_path / act, bert_tokenizer_path, hidden_act=act)
        assert_same_embeddings(st_model, folder)


def test_bert_recipe_shape(tmp_path, bert_tokenizer_path):
    """Reference recipe 1: xtremedistil-l6-h256 shape, mean pooling, Dense 256->32 Tanh, 16 tokens."""
    shape = dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=8, intermediate_size=1024)
    folder, st_model = build_st_model(
        tmp_path,
        bert_tokenizer_path,
        pooling_mode="mean",
        heads=(("dense", 32, torch.nn.Tanh(), True),),
        max_seq_length=16,
        **shape,
    )
    encoder, embeddings = assert_same_embeddings(st_model, folder)
    assert embeddings.shape == (len(SENTENCES), 32)
    assert encoder.max_seq_length == 16
    assert {length for _, _, length in encoder.compiled_shapes} == {16}


def test_roberta_recipe_shape_long_positions(tmp_path, roberta_tokenizer_path):
    """Reference recipe 2: RoBERTa, max pooling, Dense 768->153 ReLU, Dropout(0.5), 1280 tokens.

    Two layers instead of twelve; max_position_embeddings 1282 so positions past 514 are used.
    """
    shape = dict(
        hidden_size=768, num_hidden_layers=2, num_attention_heads=12, intermediate_size=3072, max_position_embeddings=1282
    )
    heads = (("dense", 153, torch.nn.ReLU(), True), ("dropout", 0.5))
    folder, st_model = build_st_model(
        tmp_path, roberta_tokenizer_path, arch="roberta", pooling_mode="max", heads=heads, max_seq_length=1280, **shape
    )
    long_text = " ".join(f"sentence number {i} about topic {i % 7}" for i in range(400))
    sentences = [long_text, long_text[:3000], "short one", SENTENCES[2]]
    encoder, embeddings = assert_same_embeddings(st_model, folder, sentences=sentences)
    assert embeddings.shape == (4, 153)
    assert encoder.max_seq_length == 1280
    assert {length for _, _, length in encoder.compiled_shapes} == {1280}


def test_plain_transformers_folder_gets_mean_pooling(tmp_path, bert_tokenizer_path):
    """A folder with config.json and weights but no modules.json: encoder + mean pooling, as ST."""
    from sentence_transformers import SentenceTransformer

    build_st_model(tmp_path, bert_tokenizer_path)
    hf_folder = tmp_path / "hf"
    st_model = SentenceTransformer(str(hf_folder), device="cpu")
    encoder, _ = assert_same_embeddings(st_model, hf_folder)
    assert encoder.model.pooling.modes == ("mean",)


def test_task_model_checkpoint_drops_heads(tmp_path, bert_tokenizer_path):
    """A BertForMaskedLM checkpoint (bert.* keys plus cls.* head) loads its encoder, as AutoModel does."""
    import transformers
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
    )
    folder = tmp_path / "mlm"
    transformers.BertForMaskedLM(config).save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(bert_tokenizer_path)).save_pretrained(str(folder))
    st_model = SentenceTransformer(str(folder), device="cpu")
    assert_same_embeddings(st_model, folder)


def test_bf16_close_to_fp32(tmp_path, bert_tokenizer_path):
    folder, _ = build_st_model(tmp_path, bert_tokenizer_path, heads=(("dense", 24, torch.nn.Tanh(), True),))
    fp32 = flaxenc.SentenceEncoder.from_pretrained(folder).encode(SENTENCES)
    bf16 = flaxenc.SentenceEncoder.from_pretrained(folder, dtype="bfloat16").encode(SENTENCES)
    assert bf16.dtype == np.float32
    cosine = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cosine.min() >= 0.999, cosine


@pytest.mark.parametrize("tokenizer", ["bert", "roberta"])
def test_tokenize_equals_the_transformers_tokenizer(tmp_path, tokenizer, bert_tokenizer_path, roberta_tokenizer_path):
    """encode() tokenizes with the Rust tokenizer alone: the ids of the transformers call ST makes."""
    from transformers import AutoTokenizer

    path = bert_tokenizer_path if tokenizer == "bert" else roberta_tokenizer_path
    folder, _ = build_st_model(tmp_path, path, arch=tokenizer, max_seq_length=12)
    encoder = flaxenc.SentenceEncoder.from_pretrained(folder)
    texts = [*SENTENCES, "x " * 40, "UPPER case Words"]
    reference = AutoTokenizer.from_pretrained(str(path))(texts, truncation=True, max_length=12)["input_ids"]
    assert encoder.tokenize(texts) == reference
