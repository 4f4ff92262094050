"""EmbeddingSimilarityEvaluator: Pearson and Spearman of gold scores against embedding similarities."""

from __future__ import annotations

from collections.abc import Sequence

from flaxenc.evaluation.base import _append_csv_row, _Evaluator, _prefixed, prefix_name_to_metrics
from flaxenc.evaluation.metrics import pearson, spearman
from flaxenc.evaluation.similarity import PAIRWISE_SIMILARITY, SIMILARITY_FN_NAMES, _as_float_array, _similarity_name


def embedding_similarity_metrics(
    embeddings1, embeddings2, scores, similarity_fns: Sequence[str] = SIMILARITY_FN_NAMES
) -> dict[str, float]:
    """Pearson and Spearman of gold scores against each similarity: {"pearson_cosine", "spearman_cosine", ...}.

    Distances enter as negative distances (ST's pairwise_*_sim), so all correlations are positive for a good model.
    """
    # ST evaluation/embedding_similarity.py
    embeddings1, embeddings2 = _as_float_array(embeddings1), _as_float_array(embeddings2)
    metrics = {}
    for name in map(_similarity_name, similarity_fns):
        similarities = PAIRWISE_SIMILARITY[name](embeddings1, embeddings2)
        metrics[f"pearson_{name}"] = pearson(scores, similarities)
        metrics[f"spearman_{name}"] = spearman(scores, similarities)
    return metrics


class EmbeddingSimilarityEvaluator(_Evaluator):
    """Spearman and Pearson correlation of gold scores with embedding similarities (ST's class of that name)."""

    # ST evaluation/embedding_similarity.py; arguments in ST's order, without `precision`

    def __init__(
        self,
        sentences1: Sequence[str],
        sentences2: Sequence[str],
        scores: Sequence[float],
        batch_size: int = 16,
        main_similarity: str | None = None,
        similarity_fn_names: Sequence[str] | None = None,
        name: str = "",
        show_progress_bar: bool = False,
        write_csv: bool = True,
        truncate_dim: int | None = None,
    ):
        if not len(sentences1) == len(sentences2) == len(scores):
            raise ValueError("sentences1, sentences2 and scores must have the same length")
        self.sentences1, self.sentences2, self.scores = list(sentences1), list(sentences2), list(scores)
        self.batch_size, self.show_progress_bar, self.truncate_dim = batch_size, show_progress_bar, truncate_dim
        self.name, self.write_csv = name, write_csv
        self.main_similarity = _similarity_name(main_similarity) if main_similarity else None
        self.similarity_fn_names = [_similarity_name(n) for n in similarity_fn_names or []]
        if not self.similarity_fn_names and self.main_similarity:
            self.similarity_fn_names = [self.main_similarity]
        self.csv_file = "similarity_evaluation" + ("_" + name if name else "") + "_results.csv"

    @property
    def csv_headers(self) -> list[str]:
        return ["epoch", "steps"] + [f"{fn}_{m}" for fn in self.similarity_fn_names for m in ("pearson", "spearman")]

    @property
    def primary_metric(self) -> str | None:
        if self.main_similarity:
            key = f"spearman_{self.main_similarity}"
        elif len(self.similarity_fn_names) > 1:
            key = "spearman_max"
        else:
            key = f"spearman_{self.similarity_fn_names[0]}" if self.similarity_fn_names else None
        return _prefixed(self.name, key)

    def __call__(self, encoder, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        embeddings1, embeddings2 = self._embed(encoder, [self.sentences1, self.sentences2])
        names = self._resolve_similarity_fn_names(encoder)
        metrics = embedding_similarity_metrics(embeddings1, embeddings2, self.scores, names)
        if output_path is not None and self.write_csv:
            row = [metrics[f"{m}_{fn}"] for fn in names for m in ("pearson", "spearman")]
            _append_csv_row(output_path, self.csv_file, self.csv_headers, [epoch, steps, *row])
        if len(names) > 1:
            metrics["pearson_max"] = max(metrics[f"pearson_{fn}"] for fn in names)
            metrics["spearman_max"] = max(metrics[f"spearman_{fn}"] for fn in names)
        return prefix_name_to_metrics(metrics, self.name)
