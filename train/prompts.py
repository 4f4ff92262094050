"""Prompts at training time: ST's `prompts` training argument, resolved per dataset and column.

`data.prompts` takes ST's four forms (SentenceTransformerTrainingArguments.prompts): one string for
every column of every dataset; {column: prompt}; {dataset_name: prompt}; {dataset_name: {column:
prompt}}. A dataset's name is its `dataset_name` (ST's DatasetDict key). The input pipelines
prepend a column's prompt to its texts before tokenizing (ST's data collator does, through
model.preprocess(prompt=...)) and give every column of the batch a `prompt_length` [B]: the
prompt's tokens (0 for a column without a prompt), which pooling leaves out where the model's
Pooling has include_prompt=False (flaxenc.train_step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from flaxenc_train.config import ConfigError, DatasetConfig, TrainConfig


def _datasets(config: TrainConfig) -> tuple[DatasetConfig, ...]:
    train = config.data.train
    return train if isinstance(train, tuple) else (train,)


def _is_multi_dataset(config: TrainConfig) -> bool:
    """ST adds a dataset_name to each batch only for a DatasetDict: here, datasets that are named."""
    return any(spec.dataset_name for spec in _datasets(config))


def check_prompts(config: TrainConfig) -> None:
    """Every prompt a string, every key a text column or a dataset_name: else a ConfigError naming it."""
    prompts = config.data.prompts
    if prompts is None or isinstance(prompts, str):
        return
    specs = _datasets(config)
    names = [spec.dataset_name for spec in specs if spec.dataset_name]
    if len(set(names)) != len(names):
        raise ConfigError(f"data.train: dataset_name must differ between datasets, got {names}")
    columns = {column for spec in specs for column in spec.text_columns}
    nested = any(isinstance(value, dict) for value in prompts.values())
    if nested and not _is_multi_dataset(config):
        # ST's BaseDataCollator._resolve_prompts raises for nested prompts without dataset names.
        raise ConfigError(
            "data.prompts: a mapping of dataset names to {column: prompt} needs named datasets; set "
            f"data.train.dataset_name (the keys are {list(prompts)})"
        )
    for key, value in prompts.items():
        where = f"data.prompts.{key}"
        if isinstance(value, dict):
            if key not in names:
                raise ConfigError(f"{where}: no dataset is named {key!r} (dataset_name: {names})")
            spec = specs[[s.dataset_name for s in specs].index(key)]
            for column, prompt in value.items():
                if column not in spec.text_columns:
                    raise ConfigError(f"{where}.{column}: not a text column of dataset {key!r} ({list(spec.text_columns)})")
                if not isinstance(prompt, str):
                    raise ConfigError(f"{where}.{column}: a prompt must be a string, got {prompt!r}")
        elif not isinstance(value, str):
            raise ConfigError(f"{where}: a prompt must be a string or a {{column: prompt}} mapping, got {value!r}")
        elif key not in columns and key not in names:
            raise ConfigError(f"{where}: {key!r} is neither a text column {sorted(columns)} nor a dataset_name {names}")


def column_prompts(config: TrainConfig, spec: DatasetConfig) -> tuple[str | None, ...]:
    """The prompt of each of `spec`'s text columns (None: no prompt), as ST's data collator resolves them
    (sentence_transformers/base/data_collator.py, _resolve_prompts and _get_prompt_for_column)."""
    prompts = config.data.prompts
    if isinstance(prompts, dict) and prompts:
        if spec.dataset_name and spec.dataset_name in prompts:
            prompts = prompts[spec.dataset_name]
        elif any(isinstance(value, dict) for value in prompts.values()):
            prompts = {}  # nested prompts that do not name this dataset: none
    if isinstance(prompts, str):
        return tuple(prompts for _ in spec.text_columns)
    prompts = prompts or {}
    return tuple(prompts.get(column) for column in spec.text_columns)


def prompt_token_count(tokenize: Callable[[list[str]], list[list[int]]], special_ids: Sequence[int], prompt: str) -> int:
    """The prompt's tokens without a trailing special token (ST's Transformer._get_prompt_length)."""
    ids = tokenize([prompt])[0]
    return len(ids) - 1 if ids and ids[-1] in special_ids else len(ids)


def prompt_lengths(encoder, prompts: Sequence[str | None]) -> tuple[int, ...] | None:
    """Each column's prompt length in tokens (0 without a prompt); None when no column has a prompt."""
    if not any(prompts):
        return None
    special = set(encoder.tokenizer.all_special_ids)
    return tuple(prompt_token_count(encoder.tokenize, special, prompt) if prompt else 0 for prompt in prompts)


def with_prompts(texts: Sequence[str], prompt: str | None) -> list[str]:
    """The texts with the prompt prepended (ST's preprocess: prompt + text)."""
    return list(texts) if not prompt else [prompt + text for text in texts]
