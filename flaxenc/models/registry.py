"""The registry of encoder families: config.json's model_type -> config, Flax module and key table.

A family is one file in flaxenc/models/ (its config dataclass, its NNX modules, its PyTorch key
table) plus one entry in FAMILIES. The loader, the saver, model cards and the training program
ask this registry, never a family by name.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from flax import nnx

from flaxenc.key_tables import Rule
from flaxenc.models import bert, distilbert, modernbert, mpnet
from flaxenc.models.config import EncoderConfig, HFConfig
from flaxenc.models.roberta import RobertaModel


@dataclasses.dataclass(frozen=True)
class EncoderFamily:
    """What flaxenc needs to know of one encoder family."""

    name: str
    # The family's frozen config dataclass: AUTO_CLASSES (model_type -> transformers class,
    # which ST prints), from_dict(values, source), to_dict(), max_sequence_length.
    config: type[HFConfig]
    # The NNX encoder: module(config, dtype=, with_pooler=, rngs=), called as
    # (input_ids, attention_mask, token_type_ids, dropout_key, segment_ids=, positions=) -> [B, T, H].
    module: type[nnx.Module]
    # transformers' state dict <-> the module's parameters.
    rules: tuple[Rule, ...]
    # Task checkpoints (XForMaskedLM, ...) nest the encoder under this prefix, as AutoModel strips it.
    checkpoint_prefix: str
    # Non-parameter buffers some checkpoints carry, skipped on load.
    buffers: re.Pattern | None = None
    # model_types (of config.AUTO_CLASSES) this entry builds; all of them when empty.
    model_types: tuple[str, ...] = ()

    def handles(self, model_type: str) -> bool:
        return model_type in (self.model_types or tuple(self.config.AUTO_CLASSES))

    def auto_class(self, model_type: str) -> str:
        """The class transformers' AutoModel builds for model_type (ST's Transformer repr names it)."""
        return self.config.AUTO_CLASSES[model_type]


FAMILIES: tuple[EncoderFamily, ...] = (
    EncoderFamily("bert", EncoderConfig, bert.BertModel, bert.RULES, "bert", bert.BUFFERS, model_types=("bert",)),
    EncoderFamily(
        "roberta", EncoderConfig, RobertaModel, bert.RULES, "roberta", bert.BUFFERS,
        model_types=("roberta", "xlm-roberta", "camembert"),
    ),
    EncoderFamily("mpnet", mpnet.MPNetConfig, mpnet.MPNetModel, mpnet.RULES, "mpnet", mpnet.BUFFERS),
    EncoderFamily(
        "distilbert", distilbert.DistilBertConfig, distilbert.DistilBertModel, distilbert.RULES, "distilbert",
        distilbert.BUFFERS,
    ),
    EncoderFamily("modernbert", modernbert.ModernBertConfig, modernbert.ModernBertModel, modernbert.RULES, "model"),
)


def supported_model_types() -> list[str]:
    return sorted(t for family in FAMILIES for t in (family.model_types or family.config.AUTO_CLASSES))


def family_for(model_type: str, source: str = "config.json") -> EncoderFamily:
    """The family that builds model_type; a ValueError naming the supported ones otherwise."""
    for family in FAMILIES:
        if family.handles(model_type):
            return family
    raise ValueError(f"{source}: model_type {model_type!r} is not supported; flaxenc builds {supported_model_types()}")


def config_from_dict(values: dict[str, Any], source: str = "config.json") -> HFConfig:
    """The config dataclass of config.json's family."""
    return family_for(values.get("model_type"), source).config.from_dict(values, source)


def family_of(config: HFConfig) -> EncoderFamily:
    return family_for(config.model_type)


def build_encoder(config: HFConfig, *, dtype, with_pooler: bool = False, rngs: nnx.Rngs) -> nnx.Module:
    """A new encoder of `config`'s family."""
    return family_of(config).module(config, dtype=dtype, with_pooler=with_pooler, rngs=rngs)
