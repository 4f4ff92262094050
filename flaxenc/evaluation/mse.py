"""MSEEvaluator: mean squared error (x100) between a teacher's embeddings of sources and the model's of targets."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flaxenc.evaluation.base import _append_csv_row, _Evaluator, _prefixed, prefix_name_to_metrics


class MSEEvaluator(_Evaluator):
    """-100 * mean((teacher(source) - model(target))^2), for knowledge distillation (ST's class).

    The teacher (a SentenceEncoder or anything with ST's encode) embeds the sources once, at construction.
    """

    # ST evaluation/mse.py; arguments in ST's order

    csv_headers = ["epoch", "steps", "MSE"]

    def __init__(
        self,
        source_sentences: Sequence[str],
        target_sentences: Sequence[str],
        teacher_model=None,
        show_progress_bar: bool = False,
        batch_size: int = 32,
        name: str = "",
        write_csv: bool = True,
        truncate_dim: int | None = None,
    ):
        if len(source_sentences) != len(target_sentences):
            raise ValueError(
                f"source_sentences ({len(source_sentences)}) and target_sentences ({len(target_sentences)}) "
                "must have the same length."
            )
        if teacher_model is None:
            raise ValueError("MSEEvaluator needs a teacher_model to embed the source sentences")
        self.target_sentences = list(target_sentences)
        self.batch_size, self.show_progress_bar, self.truncate_dim = batch_size, show_progress_bar, truncate_dim
        self.name, self.write_csv = name, write_csv
        self.csv_file = "mse_evaluation_" + name + "_results.csv"  # ST: the underscore even without a name
        (self.source_embeddings,) = self._embed(teacher_model, [list(source_sentences)])

    @property
    def primary_metric(self) -> str:
        return _prefixed(self.name, "negative_mse")

    def __call__(self, encoder, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        (target_embeddings,) = self._embed(encoder, [self.target_sentences])
        mse = mse_metric(self.source_embeddings, target_embeddings)
        if output_path is not None and self.write_csv:
            _append_csv_row(output_path, self.csv_file, self.csv_headers, [epoch, steps, mse])
        return prefix_name_to_metrics({"negative_mse": -mse}, self.name)


def mse_metric(source_embeddings, target_embeddings) -> float:
    """100 * mean squared difference, in float32 as ST's MSEEvaluator (numpy mean, times 100, .item())."""
    source, target = np.asarray(source_embeddings, np.float32), np.asarray(target_embeddings, np.float32)
    return (((source - target) ** 2).mean() * 100).item()
