"""TripletEvaluator: how often sim(anchor, positive) > sim(anchor, negative) + margin."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from flaxenc.evaluation.base import _append_csv_row, _Evaluator, _prefixed, prefix_name_to_metrics
from flaxenc.evaluation.similarity import PAIRWISE_SIMILARITY, SIMILARITY_FN_NAMES, _as_float_array, _similarity_name


def _margins(margin: float | Mapping[str, float] | None) -> dict[str, float]:
    # ST evaluation/triplet.py: one margin for all, or a dict completed with 0
    if margin is None:
        return dict.fromkeys(SIMILARITY_FN_NAMES, 0)
    if isinstance(margin, Mapping):
        if unknown := sorted(set(margin) - set(SIMILARITY_FN_NAMES)):
            raise ValueError(f"`margin` got unexpected keys {unknown}, expected keys in {list(SIMILARITY_FN_NAMES)}.")
        return {**dict.fromkeys(SIMILARITY_FN_NAMES, 0), **margin}
    if isinstance(margin, (int, float)):
        return dict.fromkeys(SIMILARITY_FN_NAMES, margin)
    raise ValueError(f"`margin` should be a float or a dictionary with keys in {list(SIMILARITY_FN_NAMES)}.")


def triplet_metrics(
    anchors,
    positives,
    negatives,
    similarity_fns: Sequence[str] = SIMILARITY_FN_NAMES,
    margin: float | Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Fraction of triplets with sim(anchor, positive) > sim(anchor, negative) + margin: {"cosine_accuracy", ...}."""
    # ST evaluation/triplet.py
    anchors, positives, negatives = _as_float_array(anchors), _as_float_array(positives), _as_float_array(negatives)
    margins = _margins(margin)
    metrics = {}
    for name in map(_similarity_name, similarity_fns):
        similarity = PAIRWISE_SIMILARITY[name]
        correct = similarity(anchors, positives) > similarity(anchors, negatives) + margins[name]
        metrics[f"{name}_accuracy"] = float(np.mean(correct, dtype=np.float32))  # torch's float32 .mean().item()
    return metrics


class TripletEvaluator(_Evaluator):
    """Accuracy of sim(anchor, positive) > sim(anchor, negative) + margin (ST's class of that name).

    Anchors are encoded as queries and positives / negatives as documents (the encoder's "query" / "document"
    prompts, when it has them), as ST does.
    """

    # ST evaluation/triplet.py; arguments in ST's order

    def __init__(
        self,
        anchors: Sequence[str],
        positives: Sequence[str],
        negatives: Sequence[str],
        main_similarity_function: str | None = None,
        margin: float | Mapping[str, float] | None = None,
        name: str = "",
        batch_size: int = 16,
        show_progress_bar: bool = False,
        write_csv: bool = True,
        truncate_dim: int | None = None,
        similarity_fn_names: Sequence[str] | None = None,
    ):
        if not len(anchors) == len(positives) == len(negatives):
            raise ValueError("anchors, positives and negatives must have the same length")
        self.anchors, self.positives, self.negatives = list(anchors), list(positives), list(negatives)
        self.batch_size, self.show_progress_bar, self.truncate_dim = batch_size, show_progress_bar, truncate_dim
        self.name, self.write_csv = name, write_csv
        self.main_similarity_function = _similarity_name(main_similarity_function) if main_similarity_function else None
        self.similarity_fn_names = [_similarity_name(n) for n in similarity_fn_names or []]
        if not self.similarity_fn_names and self.main_similarity_function:
            self.similarity_fn_names = [self.main_similarity_function]
        self.margin = _margins(margin)
        self.csv_file = "triplet_evaluation" + ("_" + name if name else "") + "_results.csv"

    @property
    def csv_headers(self) -> list[str]:
        return ["epoch", "steps"] + [f"accuracy_{fn}" for fn in self.similarity_fn_names]

    @property
    def primary_metric(self) -> str | None:
        if self.main_similarity_function:
            key = f"{self.main_similarity_function}_accuracy"
        elif len(self.similarity_fn_names) > 1:
            key = "max_accuracy"
        else:
            key = f"{self.similarity_fn_names[0]}_accuracy" if self.similarity_fn_names else None
        return _prefixed(self.name, key)

    def __call__(self, encoder, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        (anchors,) = self._embed(encoder, [self.anchors], role="query")
        positives, negatives = self._embed(encoder, [self.positives, self.negatives], role="document")
        names = self._resolve_similarity_fn_names(encoder)
        metrics = triplet_metrics(anchors, positives, negatives, names, self.margin)
        if output_path is not None and self.write_csv:
            _append_csv_row(output_path, self.csv_file, self.csv_headers, [epoch, steps, *metrics.values()])
        if len(names) > 1:
            metrics["max_accuracy"] = max(metrics.values())
        return prefix_name_to_metrics(metrics, self.name)
