"""TranslationEvaluator: how often a source sentence's most similar target is its own translation, and back."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flaxenc.evaluation.base import _append_csv_row, _Evaluator, _prefixed, prefix_name_to_metrics
from flaxenc.evaluation.similarity import SIMILARITY_MATRIX

_ROWS_AT_ONCE = 4096  # similarity rows in memory at once


def _best_match(embeddings1: np.ndarray, embeddings2: np.ndarray) -> np.ndarray:
    """For each row of embeddings1 the index of its most cosine-similar row of embeddings2 (the first of ties)."""
    cosine = SIMILARITY_MATRIX["cosine"]
    return np.concatenate(
        [np.argmax(cosine(embeddings1[start : start + _ROWS_AT_ONCE], embeddings2), axis=1)
         for start in range(0, len(embeddings1), _ROWS_AT_ONCE)]
    ) if len(embeddings1) else np.zeros(0, np.int64)  # fmt: skip


def translation_metrics(source_embeddings, target_embeddings, source_sentences, target_sentences) -> dict[str, float]:
    """src2trg_accuracy, trg2src_accuracy and their mean; a match counts when its text equals the gold text."""
    # ST evaluation/translation.py: cosine similarity in float32, argmax, matches compared by text
    source, target = np.asarray(source_embeddings, np.float32), np.asarray(target_embeddings, np.float32)
    src2trg, trg2src = _best_match(source, target), _best_match(target, source)
    correct_src2trg = sum(target_sentences[i] == target_sentences[j] for i, j in enumerate(src2trg))
    correct_trg2src = sum(source_sentences[i] == source_sentences[j] for i, j in enumerate(trg2src))
    src2trg_accuracy, trg2src_accuracy = correct_src2trg / len(target), correct_trg2src / len(target)
    return {
        "src2trg_accuracy": src2trg_accuracy,
        "trg2src_accuracy": trg2src_accuracy,
        "mean_accuracy": (src2trg_accuracy + trg2src_accuracy) / 2,
    }


class TranslationEvaluator(_Evaluator):
    """Accuracy of matching each source to its translation by cosine similarity, both ways (ST's class)."""

    # ST evaluation/translation.py; arguments in ST's order

    csv_headers = ["epoch", "steps", "src2trg", "trg2src"]

    def __init__(
        self,
        source_sentences: Sequence[str],
        target_sentences: Sequence[str],
        show_progress_bar: bool = False,
        batch_size: int = 16,
        name: str = "",
        print_wrong_matches: bool = False,
        write_csv: bool = True,
        truncate_dim: int | None = None,
    ):
        if len(source_sentences) != len(target_sentences):
            raise ValueError("source_sentences and target_sentences must have the same length")
        self.source_sentences, self.target_sentences = list(source_sentences), list(target_sentences)
        self.batch_size, self.show_progress_bar, self.truncate_dim = batch_size, show_progress_bar, truncate_dim
        self.name, self.write_csv, self.print_wrong_matches = name, write_csv, print_wrong_matches
        self.csv_file = "translation_evaluation" + ("_" + name if name else "") + "_results.csv"

    @property
    def primary_metric(self) -> str:
        return _prefixed(self.name, "mean_accuracy")

    def __call__(self, encoder, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        source, target = self._embed(encoder, [self.source_sentences, self.target_sentences])
        metrics = translation_metrics(source, target, self.source_sentences, self.target_sentences)
        if self.print_wrong_matches:
            for i, j in enumerate(_best_match(source, target)):
                if self.target_sentences[i] != self.target_sentences[j]:
                    print(f"Incorrect: source {i} is most similar to target {j} instead of target {i}")
        if output_path is not None and self.write_csv:
            row = [metrics["src2trg_accuracy"], metrics["trg2src_accuracy"]]
            _append_csv_row(output_path, self.csv_file, self.csv_headers, [epoch, steps, *row])
        return prefix_name_to_metrics(metrics, self.name)
