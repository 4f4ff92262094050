"""ST's BaseEvaluator: the name prefix, the CSV rows, encoding each distinct text once."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence

import numpy as np

from flaxenc.evaluation.similarity import _similarity_name


def prefix_name_to_metrics(metrics: Mapping[str, float], name: str) -> dict[str, float]:
    """{f"{name}_{key}": float(value)}, or the keys unchanged when name is empty."""
    # ST base/evaluation/evaluator.py BaseEvaluator.prefix_name_to_metrics
    return {(f"{name}_{key}" if name else key): float(value) for key, value in metrics.items()}


def _prefixed(name: str, key: str | None) -> str | None:
    if key is None or not name or key.startswith(name + "_"):
        return key
    return f"{name}_{key}"


def _append_csv_row(output_path: str, file_name: str, header: Sequence[str], row: Sequence) -> None:
    """csv.writer rows in output_path/file_name, the header first when the file is new (ST's CSV files)."""
    os.makedirs(output_path, exist_ok=True)
    path = os.path.join(output_path, file_name)
    is_new = not os.path.isfile(path)
    with open(path, newline="", mode="a", encoding="utf-8") as f:
        writer = csv.writer(f)
        if is_new:
            writer.writerow(header)
        writer.writerow(row)


class _Evaluator:
    """ST's BaseEvaluator: greater_is_better, primary_metric; encoding and the model's default similarity."""

    greater_is_better = True
    batch_size: int
    show_progress_bar: bool
    truncate_dim: int | None

    def _embed(self, encoder, columns: Sequence[Sequence[str]], role=None, prompt=None, prompt_name=None):
        """One float32 [len(column), D] array per column of texts, each distinct text encoded once.

        role "query" / "document" applies the encoder's saved prompt of that name when no prompt is given,
        as ST's encode_query / encode_document; truncate_dim keeps the first dimensions, as ST's encode.
        """
        kwargs = {"prompt": prompt, "prompt_name": prompt_name, "show_progress_bar": self.show_progress_bar or None}
        kwargs = {key: value for key, value in kwargs.items() if value is not None}  # plain encoders need none
        if role and prompt is None and prompt_name is None and (getattr(encoder, "prompts", None) or {}).get(role):
            kwargs["prompt_name"] = role
        unique = list(dict.fromkeys(text for column in columns for text in column))
        embeddings = np.asarray(encoder.encode(unique, batch_size=self.batch_size, convert_to_numpy=True, **kwargs))
        embeddings = embeddings[:, : self.truncate_dim] if self.truncate_dim else embeddings
        row = {text: i for i, text in enumerate(unique)}
        return [embeddings[[row[text] for text in column]].reshape(len(column), -1) for column in columns]

    def _resolve_similarity_fn_names(self, encoder) -> list[str]:
        # ST fixes the model's similarity_fn_name (default cosine) on the first call when none was given
        if not self.similarity_fn_names:
            self.similarity_fn_names = [_similarity_name(getattr(encoder, "similarity_fn_name", None) or "cosine")]
        return self.similarity_fn_names
