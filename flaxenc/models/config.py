"""Encoder configuration, read from and written to a Hugging Face `config.json`."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

# model_type in config.json -> the architecture flaxenc builds for it.
# XLM-RoBERTa and CamemBERT are RoBERTa with another vocabulary.
ARCHITECTURES = {
    "bert": "bert",
    "roberta": "roberta",
    "xlm-roberta": "roberta",
    "camembert": "roberta",
}

HIDDEN_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish", "tanh")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """The shape of a BERT or RoBERTa encoder; field names follow `config.json`."""

    # "bert" or "roberta" (or a RoBERTa variant listed in ARCHITECTURES).
    model_type: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    # Feed-forward activation, one of HIDDEN_ACTS.
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    # RoBERTa numbers positions from pad_token_id + 1.
    pad_token_id: int = 0
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1

    def __post_init__(self):
        if self.model_type not in ARCHITECTURES:
            raise ValueError(
                f"model_type {self.model_type!r} is not supported; flaxenc builds {sorted(ARCHITECTURES)}"
            )
        if self.hidden_act not in HIDDEN_ACTS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; use one of {HIDDEN_ACTS}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}"
            )

    @property
    def architecture(self) -> str:
        return ARCHITECTURES[self.model_type]

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config.json") -> EncoderConfig:
        model_type = values.get("model_type")
        if model_type not in ARCHITECTURES:
            raise ValueError(
                f"{source}: model_type {model_type!r} is not supported; flaxenc builds {sorted(ARCHITECTURES)}"
            )
        position_type = values.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"{source}: position_embedding_type {position_type!r} is not supported, only 'absolute'")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in values.items() if k in names})
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> EncoderConfig:
        with open(path, encoding="utf-8") as f:
            try:
                values = json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not valid JSON ({error})") from None
        return cls.from_dict(values, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The fields as `config.json` holds them, with the architecture transformers builds."""
        values = dataclasses.asdict(self)
        values["architectures"] = ["RobertaModel" if self.architecture == "roberta" else "BertModel"]
        values["position_embedding_type"] = "absolute"
        return values
