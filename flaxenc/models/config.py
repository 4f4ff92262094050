"""Encoder configurations, read from and written to a Hugging Face `config.json`.

`HFConfig` is what every family's frozen config dataclass shares: fields named as in
`config.json`, `from_dict` (unknown keys ignored, a bad value one error naming the file) and
`to_dict`. `EncoderConfig` is the BERT / RoBERTa one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, ClassVar

HIDDEN_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish", "tanh")


class HFConfig:
    """Shared reading and writing of a family's config dataclass (subclasses are frozen dataclasses)."""

    # model_type in config.json -> the class transformers' AutoModel builds for it (ST prints it).
    AUTO_CLASSES: ClassVar[dict[str, str]] = {}

    model_type: str

    @classmethod
    def _check_values(cls, values: dict[str, Any], source: str) -> None:
        """Refuses config.json settings the family does not implement (a hook for subclasses)."""

    @classmethod
    def _field_values(cls, values: dict[str, Any]) -> dict[str, Any]:
        """The dataclass fields' values from config.json (a hook for renamed or derived fields)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return {k: v for k, v in values.items() if k in names}

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config.json"):
        model_type = values.get("model_type")
        if model_type not in cls.AUTO_CLASSES:
            raise ValueError(f"{source}: model_type {model_type!r} is not one of {sorted(cls.AUTO_CLASSES)}")
        cls._check_values(values, source)
        try:
            return cls(**cls._field_values(values))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {error}") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike):
        with open(path, encoding="utf-8") as f:
            try:
                values = json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not valid JSON ({error})") from None
        return cls.from_dict(values, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The fields as `config.json` holds them, with the architecture transformers builds."""
        values = dataclasses.asdict(self)
        values["architectures"] = [self.AUTO_CLASSES[self.model_type]]
        return values

    def _check_heads(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def position_offset(self) -> int:
        """The position id of a sentence's first token (RoBERTa and MPNet count from after the padding index)."""
        return 0

    @property
    def max_sequence_length(self) -> int:
        """The longest input the position table holds."""
        return self.max_position_embeddings - self.position_offset


@dataclasses.dataclass(frozen=True)
class EncoderConfig(HFConfig):
    """The shape of a BERT or RoBERTa encoder; field names follow `config.json`."""

    # XLM-RoBERTa and CamemBERT are RoBERTa with another vocabulary.
    AUTO_CLASSES: ClassVar[dict[str, str]] = {
        "bert": "BertModel",
        "roberta": "RobertaModel",
        "xlm-roberta": "XLMRobertaModel",
        "camembert": "CamembertModel",
    }

    # "bert" or "roberta" (or a RoBERTa variant of AUTO_CLASSES).
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
        if self.model_type not in self.AUTO_CLASSES:
            raise ValueError(f"model_type {self.model_type!r} is not one of {sorted(self.AUTO_CLASSES)}")
        if self.hidden_act not in HIDDEN_ACTS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; use one of {HIDDEN_ACTS}")
        self._check_heads()

    @classmethod
    def _check_values(cls, values: dict[str, Any], source: str) -> None:
        position_type = values.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"{source}: position_embedding_type {position_type!r} is not supported, only 'absolute'")

    @property
    def architecture(self) -> str:
        """"bert" or "roberta": the encoder flaxenc builds."""
        return "bert" if self.model_type == "bert" else "roberta"

    @property
    def position_offset(self) -> int:
        # transformers' RobertaEmbeddings: positions start at padding_idx + 1.
        return 0 if self.architecture == "bert" else self.pad_token_id + 1

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "position_embedding_type": "absolute"}
