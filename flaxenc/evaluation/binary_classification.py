"""BinaryClassificationEvaluator: accuracy, F1, AP and MCC of thresholded similarities for 0/1 pair labels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flaxenc.evaluation.base import _append_csv_row, _Evaluator, _prefixed, prefix_name_to_metrics
from flaxenc.evaluation.metrics import average_precision, matthews_corrcoef
from flaxenc.evaluation.similarity import PAIRWISE_SIMILARITY, SIMILARITY_FN_NAMES, _as_float_array, _similarity_name


def _threshold_after(ordered_scores: np.ndarray, end: int):
    # ST binary_classification.py: midway to the next score group, unless the rounded midpoint reaches it
    if end == len(ordered_scores) - 1:
        return ordered_scores[end]
    score, following = ordered_scores[end], ordered_scores[end + 1]
    middle = (score + following) / 2
    return score if middle == following else middle


def _score_groups(scores: np.ndarray, labels: np.ndarray, high_score_more_similar: bool):
    """Scores and labels sorted most-similar first, and the index of the last row of each run of equal scores."""
    order = np.argsort(-scores if high_score_more_similar else scores, kind="stable")
    ordered = scores[order]
    ends = np.r_[np.flatnonzero(ordered[1:] != ordered[:-1]), len(scores) - 1]
    return ordered, labels[order], ends


def find_best_acc_and_threshold(scores, labels, high_score_more_similar: bool) -> tuple[float, float]:
    """Best accuracy of `score >= threshold` (or <=) over thresholds between score groups, and that threshold."""
    # ST BinaryClassificationEvaluator.find_best_acc_and_threshold (ST >= 5.7)
    scores, labels = np.asarray(scores), np.asarray(labels)
    if len(scores) == 0:
        return 0, -1
    ordered, ordered_labels, ends = _score_groups(scores, labels, high_score_more_similar)
    negatives = np.sum(labels == 0)
    # Start with the threshold that predicts every pair as dissimilar.
    best_accuracy = negatives / len(labels)
    score_dtype = np.result_type(scores.dtype, np.float16)
    threshold = np.nextafter(ordered[0], np.inf if high_score_more_similar else -np.inf, dtype=score_dtype)
    correct = np.cumsum(ordered_labels == 1)[ends] + negatives - np.cumsum(ordered_labels == 0)[ends]
    accuracies = correct / len(labels)
    best = int(np.argmax(accuracies))  # the first of equal accuracies, as ST's strict `>`
    if accuracies[best] > best_accuracy:
        best_accuracy, threshold = accuracies[best], _threshold_after(ordered, ends[best])
    return best_accuracy, threshold


def find_best_f1_and_threshold(scores, labels, high_score_more_similar: bool) -> tuple[float, float, float, float]:
    """Best F1 of `score >= threshold` (or <=) with its precision, recall and threshold."""
    # ST BinaryClassificationEvaluator.find_best_f1_and_threshold (ST >= 5.7)
    scores, labels = np.asarray(scores), np.asarray(labels)
    if len(scores) == 0:
        return 0, 0, 0, 0
    ordered, ordered_labels, ends = _score_groups(scores, labels, high_score_more_similar)
    correct = np.cumsum(ordered_labels == 1)[ends]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = correct / (ends + 1)
        recall = correct / np.sum(labels)
        f1 = np.where(correct > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1))
    if f1[best] <= 0:
        return 0, 0, 0, 0
    return f1[best], precision[best], recall[best], _threshold_after(ordered, ends[best])


BINARY_METRIC_NAMES = ("accuracy", "accuracy_threshold", "f1", "f1_threshold", "precision", "recall", "ap", "mcc")


def binary_classification_metrics(
    embeddings1, embeddings2, labels, similarity_fns: Sequence[str] = SIMILARITY_FN_NAMES
) -> dict[str, float]:
    """Accuracy, F1, precision, recall (at their best thresholds), AP and MCC per similarity: {"cosine_accuracy", ...}.

    Euclidean and Manhattan are scored as positive distances (lower is more similar), so their thresholds are
    distances. Thresholds keep the scores' dtype (numpy float32), as ST's.
    """
    # ST evaluation/binary_classification.py compute_metrics
    embeddings1, embeddings2 = _as_float_array(embeddings1), _as_float_array(embeddings2)
    labels = np.asarray(labels)
    metrics = {}
    for name in map(_similarity_name, similarity_fns):
        similarity_is_score = name in ("cosine", "dot")
        scores = PAIRWISE_SIMILARITY[name](embeddings1, embeddings2)
        scores = scores if similarity_is_score else -scores  # negate back into distances (ST #3702)
        accuracy, accuracy_threshold = find_best_acc_and_threshold(scores, labels, similarity_is_score)
        f1, precision, recall, f1_threshold = find_best_f1_and_threshold(scores, labels, similarity_is_score)
        predicted = scores >= f1_threshold if similarity_is_score else scores <= f1_threshold
        values = {
            "accuracy": accuracy,
            "accuracy_threshold": accuracy_threshold,
            "f1": f1,
            "f1_threshold": f1_threshold,
            "precision": precision,
            "recall": recall,
            "ap": average_precision(labels, scores if similarity_is_score else -scores),
            "mcc": matthews_corrcoef(labels, predicted),
        }
        metrics.update({f"{name}_{key}": value for key, value in values.items()})
    return metrics


class BinaryClassificationEvaluator(_Evaluator):
    """Accuracy, F1, AP and MCC of thresholded embedding similarities for 0/1 pair labels (ST's class)."""

    # ST evaluation/binary_classification.py; arguments in ST's order

    # ST's CSV column order (precision and recall before f1_threshold), unlike its metrics dict
    _CSV_METRICS = ("accuracy", "accuracy_threshold", "f1", "precision", "recall", "f1_threshold", "ap", "mcc")

    def __init__(
        self,
        sentences1: Sequence[str],
        sentences2: Sequence[str],
        labels: Sequence[int],
        name: str = "",
        batch_size: int = 32,
        show_progress_bar: bool = False,
        write_csv: bool = True,
        truncate_dim: int | None = None,
        similarity_fn_names: Sequence[str] | None = None,
    ):
        if not len(sentences1) == len(sentences2) == len(labels):
            raise ValueError("sentences1, sentences2 and labels must have the same length")
        if any(label not in (0, 1) for label in labels):
            raise ValueError("labels must be 0 or 1")
        self.sentences1, self.sentences2, self.labels = list(sentences1), list(sentences2), list(labels)
        self.batch_size, self.show_progress_bar, self.truncate_dim = batch_size, show_progress_bar, truncate_dim
        self.name, self.write_csv = name, write_csv
        self.similarity_fn_names = [_similarity_name(n) for n in similarity_fn_names or []]
        self.csv_file = "binary_classification_evaluation" + ("_" + name if name else "") + "_results.csv"

    @property
    def csv_headers(self) -> list[str]:
        return ["epoch", "steps"] + [f"{fn}_{m}" for fn in self.similarity_fn_names for m in self._CSV_METRICS]

    @property
    def primary_metric(self) -> str | None:
        if len(self.similarity_fn_names) > 1:
            return _prefixed(self.name, "max_ap")
        return _prefixed(self.name, f"{self.similarity_fn_names[0]}_ap" if self.similarity_fn_names else None)

    def __call__(self, encoder, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        embeddings1, embeddings2 = self._embed(encoder, [self.sentences1, self.sentences2])
        names = self._resolve_similarity_fn_names(encoder)
        metrics = binary_classification_metrics(embeddings1, embeddings2, self.labels, names)
        if output_path is not None and self.write_csv:
            row = [metrics[header] for header in self.csv_headers[2:]]
            _append_csv_row(output_path, self.csv_file, self.csv_headers, [epoch, steps, *row])
        if len(names) > 1:
            for metric in BINARY_METRIC_NAMES:
                metrics[f"max_{metric}"] = max(metrics[f"{fn}_{metric}"] for fn in names)
        return prefix_name_to_metrics(metrics, self.name)
