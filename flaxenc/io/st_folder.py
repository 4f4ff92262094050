"""Reading and writing sentence-transformers (ST) model folders.

Reads the legacy layout (`sentence_transformers.models.Pooling`, `pooling_mode_mean_tokens`,
`max_seq_length` in sentence_bert_config.json), the v5.4+ layout
(`sentence_transformers.sentence_transformer.modules.pooling.Pooling`, `pooling_mode: "mean"`) and
plain Hugging Face model folders (encoder + mean pooling, as ST builds them). Writes the layout
ST 6 writes, plus `max_seq_length`/`do_lower_case` in sentence_bert_config.json, which every
ST release reads, and a model card (README.md, flaxenc/io/model_card.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
from flax import nnx
from tokenizers.normalizers import Lowercase
from tokenizers.normalizers import Sequence as NormalizerSequence
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from flaxenc.io.model_card import ModelFacts, TrainingCard, framework_versions, render_model_card
from flaxenc.io.st_names import architecture_text
from flaxenc.io.weights import SAFETENSORS, find_weights, read_tensors, write_safetensors
from flaxenc.key_tables import flax_to_torch, normalize_hf_keys, torch_to_flax
from flaxenc.models import config_from_dict, family_of
from flaxenc.modules import HEAD_KINDS, Pooling, head_kind, kind_of
from flaxenc.modules.pooling import LEGACY_MODE_KEYS
from flaxenc.sentence_model import SentenceModel, abstract_params, flat_params, merge_params

logger = logging.getLogger(__name__)

# The class ST saves for each module kind, in its 6.x layout (heads: flaxenc.modules.HEAD_KINDS).
MODULE_TYPES = {
    "Transformer": "sentence_transformers.base.modules.transformer.Transformer",
    "Pooling": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
    **{kind.name: kind.st_type for kind in HEAD_KINDS},
}
# Any of these makes a tokenizer folder: the fast tokenizer, or the files transformers converts from.
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")


@dataclasses.dataclass
class STFolder:
    """What an ST folder holds, as flaxenc objects."""

    model: SentenceModel
    tokenizer: PreTrainedTokenizerBase
    max_seq_length: int
    do_lower_case: bool = False
    # config.json as read, so keys flaxenc does not model survive a save.
    transformer_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    # config_sentence_transformers.json as read (prompts, similarity function).
    st_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The hub id the folder came from (its model card's base_model), when known.
    base_model: str | None = None


def hub_model_id(folder: Path) -> str | None:
    """'org/name' for a folder in the Hugging Face cache (.../models--org--name/snapshots/<hash>)."""
    for part in reversed(Path(folder).resolve().parts):
        if part.startswith("models--"):
            return part[len("models--") :].replace("--", "/")
    return None


def _read_json(path: Path) -> dict[str, Any] | list[Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


# The config keys flaxenc reads for each module kind (ST's `config_keys`, and the legacy ones). Any
# other key set to a true value asks for something flaxenc does not compute (an error); one set
# to false, null or empty changes nothing, as ST's loaders treat an unset flag.
KNOWN_CONFIG_KEYS = {
    "Transformer": {
        "max_seq_length", "do_lower_case", "transformer_task", "modality_config", "module_output_name",
        "unpad_inputs", "model_args", "tokenizer_args", "processing_kwargs",
    },
    "Pooling": {"embedding_dimension", "word_embedding_dimension", "pooling_mode", "include_prompt", *LEGACY_MODE_KEYS},
    **{kind.name: set(kind.module.ST_CONFIG_KEYS) for kind in HEAD_KINDS},
}


def _check_config_keys(kind: str, config: dict[str, Any], source: Path) -> None:
    """An error naming every key of a module config that is set and that flaxenc does not implement."""
    unknown = sorted(key for key, value in config.items() if key not in KNOWN_CONFIG_KEYS[kind] and value)
    if unknown:
        settings = ", ".join(f"{key}={config[key]!r}" for key in unknown)
        raise ValueError(
            f"{source}: {kind} option(s) {settings} are not implemented by flaxenc; loading without them would "
            f"compute other embeddings. flaxenc reads {sorted(KNOWN_CONFIG_KEYS[kind])}"
        )


def _module_kind(type_name: str, source: Path) -> str:
    """'Pooling' for both sentence_transformers.models.Pooling and ...modules.pooling.Pooling."""
    kind = type_name.rsplit(".", 1)[-1]
    if not type_name.startswith("sentence_transformers.") or kind not in MODULE_TYPES:
        raise ValueError(
            f"{source}: module type {type_name!r} is not supported; flaxenc reads the ST modules "
            f"{sorted(MODULE_TYPES)}"
        )
    return kind


def resolve_folder(name_or_path: str | os.PathLike, cache_folder: str | None = None) -> Path:
    """A local folder as is; otherwise a hub id downloaded with huggingface_hub."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path}: is a file; from_pretrained takes a model folder or a hub id")
    name = str(name_or_path)
    if isinstance(name_or_path, os.PathLike) or name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"{name}: no such model folder")
    repo_id = name if "/" in name else f"sentence-transformers/{name}"  # ST's shorthand for its own models
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=repo_id, cache_dir=cache_folder))
    except Exception as error:  # offline, unknown repo, bad id: all end here
        reason = str(error).strip().rstrip(".")
        raise OSError(
            f"{name} is not a local folder, and downloading {repo_id} from the Hugging Face hub failed "
            f"({type(error).__name__}: {reason}). Offline (or with HF_HUB_OFFLINE=1), pass the path of a "
            "local sentence-transformers or transformers model folder."
        ) from None


def load_st_folder(folder: str | os.PathLike, dtype: jnp.dtype = jnp.float32) -> STFolder:
    """Reads an ST folder, or a plain transformers folder (encoder + mean pooling, as ST does)."""
    folder = Path(folder)
    modules_json = folder / "modules.json"
    if not modules_json.is_file():
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder}: neither modules.json (ST folder) nor config.json (transformers folder)")
        logger.info("%s has no modules.json: building transformer + mean pooling, as ST does", folder)
        entries = [{"type": MODULE_TYPES["Transformer"], "path": ""}]
    else:
        entries = _read_json(modules_json)
        if not isinstance(entries, list) or not all(isinstance(e, dict) and "type" in e for e in entries):
            raise ValueError(f"{modules_json}: expected a list of {{'type': ..., 'path': ...}} entries")
        entries = sorted(entries, key=lambda e: e.get("idx", 0))
    kinds = [_module_kind(entry["type"], modules_json) for entry in entries]
    for entry, kind in zip(entries[1:], kinds[1:]):
        _check_module_folder(folder, entry, kind, modules_json)
    if kinds[0] != "Transformer":
        raise ValueError(f"{modules_json}: the first module must be a Transformer, not {entries[0]['type']!r}")
    if len(kinds) > 1 and kinds[1] != "Pooling":
        raise ValueError(f"{modules_json}: the second module must be Pooling, not {entries[1]['type']!r}")
    if "Transformer" in kinds[1:] or "Pooling" in kinds[2:]:
        raise ValueError(f"{modules_json}: flaxenc reads one Transformer followed by one Pooling and heads")

    loaded = _load_transformer(folder / entries[0].get("path", ""), dtype)
    transformer, tokenizer, max_seq_length, do_lower_case, transformer_config = loaded
    hidden = transformer.config.hidden_size
    if len(entries) > 1:
        pooling = _load_pooling(folder / entries[1].get("path", ""), hidden)
    else:
        pooling = Pooling(hidden, "mean")
    heads = []
    dim = pooling.output_dimension
    for entry, kind in zip(entries[2:], kinds[2:]):
        head = _load_head(kind, folder / entry.get("path", ""), dim, dtype)
        dim = getattr(head, "out_features", dim)
        heads.append(head)

    st_config_path = folder / "config_sentence_transformers.json"
    st_config = _read_json(st_config_path) if st_config_path.is_file() else {}
    return STFolder(
        model=SentenceModel(transformer, pooling, heads),
        tokenizer=tokenizer,
        max_seq_length=max_seq_length,
        do_lower_case=do_lower_case,
        transformer_config=transformer_config,
        st_config=st_config,
        base_model=hub_model_id(folder),
    )


def _check_module_folder(folder: Path, entry: dict, kind: str, modules_json: Path) -> None:
    """A module modules.json lists must have its folder and config.json (ST fails to load it otherwise)."""
    if any(kind == head.name and not head.needs_folder for head in HEAD_KINDS):
        return
    path = folder / entry.get("path", "")
    if not entry.get("path") or not path.is_dir():
        raise FileNotFoundError(
            f"{modules_json} lists a {kind} module at {entry.get('path', '')!r}, but {path} is not a folder; restore "
            "it from the original model, or remove the entry from modules.json"
        )
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: the {kind} module has no config.json; restore it from the original model")


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The folder's fast tokenizer; a folder without tokenizer files is an error, not an empty vocabulary."""
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{folder}: no tokenizer files (one of {', '.join(_TOKENIZER_FILES)}); copy the tokenizer the model was "
            "trained with into the folder"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as error:  # noqa: BLE001 (a damaged tokenizer.json, a missing merges.txt, ...)
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise ValueError(f"{folder}: the tokenizer files cannot be read ({reason})") from None
    if not tokenizer.is_fast:
        raise ValueError(f"{folder}: flaxenc needs a fast tokenizer (tokenizer.json)")
    return tokenizer


def _load_transformer(folder: Path, dtype):
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json for the Transformer module")
    raw_config = _read_json(config_path)
    config = config_from_dict(raw_config, source=str(config_path))
    family = family_of(config)
    sbert_path = folder / "sentence_bert_config.json"
    sbert = _read_json(sbert_path) if sbert_path.is_file() else {}
    _check_config_keys("Transformer", sbert, sbert_path)
    task = sbert.get("transformer_task", "feature-extraction")
    if task != "feature-extraction":
        raise ValueError(f"{sbert_path}: transformer_task {task!r} is not supported, only 'feature-extraction'")

    weights_path = find_weights(folder)
    tensors = read_tensors(weights_path)
    tensors, dropped = normalize_hf_keys(tensors, family.checkpoint_prefix)
    if dropped:
        logger.info("%s: ignoring %d task-head tensors, as AutoModel does: %s", weights_path, len(dropped), dropped[:4])
    with_pooler = "pooler.dense.weight" in tensors
    graphdef, state, shapes = abstract_params(
        lambda: family.module(config, dtype=dtype, with_pooler=with_pooler, rngs=nnx.Rngs(0))
    )
    params = torch_to_flax(family.rules, tensors, shapes, str(weights_path), ignore=family.buffers)
    transformer = merge_params(graphdef, state, params)

    tokenizer = load_tokenizer(folder)
    do_lower_case = bool(sbert.get("do_lower_case", False))
    max_seq_length = sbert.get("max_seq_length")
    if max_seq_length is None:
        # ST reads the tokenizer's model_max_length, capped by the position table.
        max_seq_length = min(tokenizer.model_max_length, config.max_position_embeddings)
    set_tokenizer_options(tokenizer, int(max_seq_length), do_lower_case)
    return transformer, tokenizer, int(max_seq_length), do_lower_case, raw_config


def set_tokenizer_options(tokenizer: PreTrainedTokenizerBase, max_seq_length: int, do_lower_case: bool) -> None:
    """Truncation length and lower-casing, applied to the tokenizer as ST's Transformer does."""
    tokenizer.model_max_length = max_seq_length
    if do_lower_case:
        normalizer = tokenizer.backend_tokenizer.normalizer
        parts = list(normalizer) if isinstance(normalizer, NormalizerSequence) else [normalizer]
        if not any(isinstance(part, Lowercase) for part in parts):
            tokenizer.backend_tokenizer.normalizer = NormalizerSequence(
                [Lowercase()] + [part for part in parts if part is not None]
            )


def _load_pooling(folder: Path, hidden: int) -> Pooling:
    config_path = folder / "config.json"
    config = dict(_read_json(config_path)) if config_path.is_file() else {}
    _check_config_keys("Pooling", config, config_path)
    dim = config.get("embedding_dimension", config.get("word_embedding_dimension", hidden))
    if dim != hidden:
        raise ValueError(f"{config_path}: embedding_dimension {dim} differs from the transformer's hidden size {hidden}")
    modes = config.get("pooling_mode")
    if modes is None:
        # Legacy boolean keys, read as ST's _convert_legacy_pooling_kwargs; none set means mean.
        modes = tuple(mode for key, mode in LEGACY_MODE_KEYS.items() if config.get(key, False)) or ("mean",)
    try:
        return Pooling(dim, modes, include_prompt=bool(config.get("include_prompt", True)))
    except ValueError as error:
        raise ValueError(f"{config_path}: {error}") from None


def _load_head(name: str, folder: Path, dim: int, dtype) -> nnx.Module:
    config_path = folder / "config.json"
    config = dict(_read_json(config_path)) if config_path.is_file() else {}
    _check_config_keys(name, config, config_path)
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, "sentence_embedding") != "sentence_embedding":
            raise ValueError(f"{config_path}: {key} {config[key]!r} is not supported, only 'sentence_embedding'")
    kind = head_kind(name)
    try:
        graphdef, state, shapes = abstract_params(lambda: kind.module.from_st_config(config, dim, dtype, nnx.Rngs(0)))
    except ValueError as error:  # an unknown activation, a missing key, say
        raise ValueError(f"{config_path}: {error}") from None
    if kind.rules is None:
        return nnx.merge(graphdef, state)
    weights_path = find_weights(folder)
    params = torch_to_flax(kind.rules, read_tensors(weights_path), shapes, str(weights_path))
    return merge_params(graphdef, state, params)


def save_st_folder(folder: str | os.PathLike, loaded: STFolder, training: TrainingCard | None = None) -> None:
    """Writes an ST folder that sentence_transformers.SentenceTransformer loads unchanged.

    README.md is its model card; `training` adds the training run's section.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = loaded.model
    modules = [{"idx": 0, "name": "0", "path": "", "type": MODULE_TYPES["Transformer"]}]

    # Transformer: config.json, weights, tokenizer and the ST options at the root.
    transformer = model.transformer
    config = {**loaded.transformer_config, **transformer.config.to_dict()}
    if "architectures" in loaded.transformer_config:
        config["architectures"] = loaded.transformer_config["architectures"]
    _write_json(folder / "config.json", config)
    rules = family_of(transformer.config).rules
    write_safetensors(flax_to_torch(rules, flat_params(transformer)), folder / SAFETENSORS)
    loaded.tokenizer.save_pretrained(str(folder))
    _write_json(
        folder / "sentence_bert_config.json",
        {"max_seq_length": loaded.max_seq_length, "do_lower_case": loaded.do_lower_case},
    )

    pooling = model.pooling
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": MODULE_TYPES["Pooling"]})
    modes = pooling.modes[0] if len(pooling.modes) == 1 else list(pooling.modes)
    _write_json(
        folder / "1_Pooling" / "config.json",
        {
            "embedding_dimension": pooling.embedding_dimension,
            "pooling_mode": modes,
            "include_prompt": pooling.include_prompt,
        },
    )
    for idx, head in enumerate(model.heads, start=2):
        kind = kind_of(head)
        path = f"{idx}_{kind.name}"
        modules.append({"idx": idx, "name": str(idx), "path": path, "type": kind.st_type})
        _write_json(folder / path / "config.json", head.st_config())
        if kind.rules is not None:
            write_safetensors(flax_to_torch(kind.rules, flat_params(head)), folder / path / SAFETENSORS)
    _write_json(folder / "modules.json", modules)

    st_config = dict(loaded.st_config)
    st_config.setdefault("model_type", "SentenceTransformer")
    st_config.setdefault("prompts", {})
    st_config.setdefault("default_prompt_name", None)
    st_config.setdefault("similarity_fn_name", "cosine")
    from flaxenc import __version__

    st_config["__version__"] = {"flaxenc": __version__}
    _write_json(folder / "config_sentence_transformers.json", st_config)
    write_model_card(folder, loaded, training)


def write_model_card(folder: str | os.PathLike, loaded: STFolder, training: TrainingCard | None = None) -> None:
    """(Re)writes the folder's README.md: ST's model card for `loaded`, with `training`'s section if given."""
    facts = ModelFacts(
        architecture=architecture_text(loaded.model),
        max_seq_length=loaded.max_seq_length,
        embedding_dimension=loaded.model.embedding_dimension,
        similarity_fn_name=loaded.st_config.get("similarity_fn_name") or "cosine",
        base_model=loaded.base_model,
        path=str(folder),
        versions=framework_versions(),
    )
    Path(folder, "README.md").write_text(render_model_card(facts, training), encoding="utf-8")


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
