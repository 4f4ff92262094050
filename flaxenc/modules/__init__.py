"""Sentence-embedding modules that follow the transformer: pooling and heads."""

from flaxenc.modules.dense import ACTIVATIONS, Dense
from flaxenc.modules.dropout import Dropout, dropout
from flaxenc.modules.layer_norm import EmbeddingLayerNorm, LayerNorm, layer_norm
from flaxenc.modules.normalize import Normalize, l2_normalize
from flaxenc.modules.pooling import POOLING_MODES, Pooling, pool

__all__ = [
    "ACTIVATIONS",
    "Dense",
    "Dropout",
    "EmbeddingLayerNorm",
    "LayerNorm",
    "Normalize",
    "POOLING_MODES",
    "Pooling",
    "dropout",
    "l2_normalize",
    "layer_norm",
    "pool",
]
