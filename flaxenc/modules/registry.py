"""The registry of head kinds: the modules ST puts after pooling, by ST's type name.

A head kind is one file in flaxenc/modules/ (the NNX module with `ST_CONFIG_KEYS`,
`from_st_config(config, dim, dtype, rngs)`, `st_config()` for its config.json and
`st_repr_config()` for ST's repr, and its weights' key table) plus one entry in HEAD_KINDS.
The loader, the saver, model cards and the training program ask this registry.
"""

from __future__ import annotations

import dataclasses

from flax import nnx

from flaxenc.key_tables import Rule
from flaxenc.modules.dense import RULES as DENSE_RULES
from flaxenc.modules.dense import Dense
from flaxenc.modules.dropout import Dropout
from flaxenc.modules.layer_norm import RULES as LAYER_NORM_RULES
from flaxenc.modules.layer_norm import EmbeddingLayerNorm
from flaxenc.modules.normalize import Normalize


@dataclasses.dataclass(frozen=True)
class HeadKind:
    # ST's class name, the last part of its type in modules.json ("Dense").
    name: str
    # The type ST 6 writes in modules.json.
    st_type: str
    module: type[nnx.Module]
    # The `type` of a module in flaxenc-train's model.modules.
    config_name: str
    # Key table of the folder's weights file; None: no weights.
    rules: tuple[Rule, ...] | None = None
    # False: ST loads the module without a folder of its own (Normalize), so flaxenc does too.
    needs_folder: bool = True


HEAD_KINDS: tuple[HeadKind, ...] = (
    HeadKind("Dense", "sentence_transformers.base.modules.dense.Dense", Dense, "dense", DENSE_RULES),
    HeadKind("Dropout", "sentence_transformers.sentence_transformer.modules.dropout.Dropout", Dropout, "dropout"),
    HeadKind(
        "LayerNorm", "sentence_transformers.sentence_transformer.modules.layer_norm.LayerNorm",
        EmbeddingLayerNorm, "layer_norm", LAYER_NORM_RULES,
    ),
    HeadKind("Normalize", "sentence_transformers.base.modules.normalize.Normalize", Normalize, "normalize", needs_folder=False),
)


def head_kind(name: str) -> HeadKind:
    """The kind named `name` by ST ("Dense") or by flaxenc-train ("dense")."""
    for kind in HEAD_KINDS:
        if name in (kind.name, kind.config_name):
            return kind
    raise KeyError(name)


def kind_of(module: nnx.Module) -> HeadKind:
    for kind in HEAD_KINDS:
        if type(module) is kind.module:
            return kind
    raise TypeError(f"{type(module).__name__} is not a registered head kind")
