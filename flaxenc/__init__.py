"""flaxenc: sentence-transformers in JAX/Flax."""

__version__ = "0.1.0"

from flaxenc import evaluation, gradcache, losses, optim, quantization, similarity, util
from flaxenc.encoder import SentenceEncoder
from flaxenc.models import BertModel, DistilBertModel, EncoderConfig, ModernBertModel, MPNetModel, RobertaModel
from flaxenc.modules import Dense, Dropout, EmbeddingLayerNorm, LayerNorm, Normalize, Pooling, pool
from flaxenc.optim import OptimizerConfig, adamw, learning_rate_schedule
from flaxenc.quantization import quantize_embeddings
from flaxenc.sentence_model import SentenceModel
from flaxenc.train_step import TrainState, TrainStep, embed_columns, init_train_state

__all__ = [
    "BertModel",
    "Dense",
    "DistilBertModel",
    "Dropout",
    "EmbeddingLayerNorm",
    "EncoderConfig",
    "LayerNorm",
    "MPNetModel",
    "ModernBertModel",
    "Normalize",
    "Pooling",
    "RobertaModel",
    "SentenceEncoder",
    "OptimizerConfig",
    "SentenceModel",
    "TrainState",
    "TrainStep",
    "adamw",
    "embed_columns",
    "evaluation",
    "gradcache",
    "init_train_state",
    "learning_rate_schedule",
    "losses",
    "optim",
    "pool",
    "quantize_embeddings",
    "quantization",
    "similarity",
    "util",
]
