"""Sentence-embedding modules that follow the transformer: pooling and heads."""

from flaxenc.modules.dense import ACTIVATIONS, Dense
from flaxenc.modules.dropout import Dropout, dropout
from flaxenc.modules.layer_norm import EmbeddingLayerNorm, LayerNorm, layer_norm
from flaxenc.modules.normalize import Normalize, l2_normalize
from flaxenc.modules.pooling import POOLING_MODES, Pooling, pool
from flaxenc.modules.registry import HEAD_KINDS, HeadKind, head_kind, kind_of

__all__ = [
    "ACTIVATIONS",
    "Dense",
    "Dropout",
    "HEAD_KINDS",
    "HeadKind",
    "EmbeddingLayerNorm",
    "LayerNorm",
    "Normalize",
    "POOLING_MODES",
    "Pooling",
    "dropout",
    "head_kind",
    "kind_of",
    "l2_normalize",
    "layer_norm",
    "pool",
]
