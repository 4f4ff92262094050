"""flaxenc: sentence-transformers in JAX/Flax."""

__version__ = "0.1.0"

from flaxenc.encoder import SentenceEncoder
from flaxenc.models import BertModel, EncoderConfig, RobertaModel
from flaxenc.modules import Dense, Dropout, EmbeddingLayerNorm, LayerNorm, Normalize, Pooling, pool
from flaxenc.sentence_model import SentenceModel

__all__ = [
    "BertModel",
    "Dense",
    "Dropout",
    "EmbeddingLayerNorm",
    "EncoderConfig",
    "LayerNorm",
    "Normalize",
    "Pooling",
    "RobertaModel",
    "SentenceEncoder",
    "SentenceModel",
    "pool",
]
