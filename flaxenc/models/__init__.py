"""Transformer encoders."""

from flaxenc.models.bert import BertModel
from flaxenc.models.config import EncoderConfig
from flaxenc.models.roberta import RobertaModel


def encoder_class(config: EncoderConfig) -> type[BertModel]:
    """The Flax module that implements `config.model_type`."""
    return RobertaModel if config.architecture == "roberta" else BertModel


__all__ = ["BertModel", "EncoderConfig", "RobertaModel", "encoder_class"]
