"""Transformer encoders, one file per family, and the registry that maps config.json onto them."""

from flaxenc.models.bert import BertModel
from flaxenc.models.config import EncoderConfig, HFConfig
from flaxenc.models.distilbert import DistilBertConfig, DistilBertModel
from flaxenc.models.modernbert import ModernBertConfig, ModernBertModel
from flaxenc.models.mpnet import MPNetConfig, MPNetModel
from flaxenc.models.registry import (
    FAMILIES,
    EncoderFamily,
    build_encoder,
    config_from_dict,
    family_for,
    family_of,
    supported_model_types,
)
from flaxenc.models.roberta import RobertaModel

__all__ = [
    "FAMILIES",
    "BertModel",
    "DistilBertConfig",
    "DistilBertModel",
    "EncoderConfig",
    "EncoderFamily",
    "HFConfig",
    "MPNetConfig",
    "ModernBertConfig",
    "ModernBertModel",
    "MPNetModel",
    "RobertaModel",
    "build_encoder",
    "config_from_dict",
    "family_for",
    "family_of",
    "supported_model_types",
]
