"""sentence-transformers' evaluators: pure metric functions on numpy embeddings, and thin evaluator classes.

The numbers are ST 6.2's (sentence_transformers/sentence_transformer/evaluation/); each function names the
file it copies. Two layers:

- pure functions of float32 numpy embeddings, no model: `embedding_similarity_metrics`,
  `binary_classification_metrics`, `triplet_metrics`, `information_retrieval_metrics`, each returning
  a dict keyed as ST's evaluator keys its metrics (before the evaluator's name is prefixed);
- evaluator classes holding the data, constructed as ST's, called as `evaluator(encoder, output_path,
  epoch, steps) -> dict[str, float]`. The encoder is anything with
  `encode(texts, batch_size=..., convert_to_numpy=True)`: a flaxenc SentenceEncoder or an ST model.
  They write ST's CSV files and expose ST's `primary_metric` and `greater_is_better`.

Similarities are computed in float32 numpy, as ST computes them in float32 torch. The statistics that ST
takes from scipy and scikit-learn (Pearson, Spearman, average precision, MCC) are copied here in numpy,
so flaxenc needs neither.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

SIMILARITY_FN_NAMES = ("cosine", "dot", "euclidean", "manhattan")

# ----------------------------------------------------------------------------- similarities (float32)


def _normalize(x: np.ndarray) -> np.ndarray:
    # ST util/tensor.py normalize_embeddings: torch.nn.functional.normalize, eps 1e-12
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# ST util/similarity.py pairwise_*: row i of a against row i of b; distances are negated into similarities.
PAIRWISE_SIMILARITY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "cosine": lambda a, b: np.sum(_normalize(a) * _normalize(b), axis=-1),
    "dot": lambda a, b: np.sum(a * b, axis=-1),
    "euclidean": lambda a, b: -np.linalg.norm(a - b, axis=-1),
    "manhattan": lambda a, b: -np.sum(np.abs(a - b), axis=-1),
}


def _euclidean_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = np.sum(a * a, -1)[:, None] - 2 * (a @ b.T) + np.sum(b * b, -1)[None, :]
    return -np.sqrt(np.maximum(squared, 0))


# ST util/similarity.py cos_sim, dot_score, euclidean_sim, manhattan_sim: every row of a against every row of b.
SIMILARITY_MATRIX: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "cosine": lambda a, b: _normalize(a) @ _normalize(b).T,
    "dot": lambda a, b: a @ b.T,
    "euclidean": _euclidean_matrix,
    "manhattan": lambda a, b: np.stack([-np.sum(np.abs(row - b), axis=-1) for row in a]).reshape(len(a), len(b)),
}


def _similarity_name(name) -> str:
    """'cosine', 'dot', 'euclidean' or 'manhattan'; also accepts ST's SimilarityFunction enum."""
    name = getattr(name, "value", name)
    name = "dot" if name == "dot_product" else name
    if name not in SIMILARITY_FN_NAMES:
        raise ValueError(f"unknown similarity function {name!r}; expected one of {SIMILARITY_FN_NAMES}")
    return name


def _as_float_array(embeddings) -> np.ndarray:
    # ST util/tensor.py _convert_to_float_tensor: float64 stays, anything narrower computes in float32
    embeddings = np.asarray(embeddings)
    return embeddings if embeddings.dtype == np.float64 else embeddings.astype(np.float32)


# ----------------------------------------------------------------------------- statistics (scipy, sklearn)


def pearson(x, y) -> float:
    """scipy.stats.pearsonr(x, y).statistic, by scipy's steps (mean-centred, max-scaled norms)."""
    dtype = np.result_type(np.asarray(x).dtype, np.asarray(y).dtype, np.float16)
    dtype = np.float64 if not np.issubdtype(dtype, np.floating) else dtype
    centred = []
    for values in (np.asarray(x, dtype), np.asarray(y, dtype)):
        values = values - values.mean()
        largest = np.max(np.abs(values))
        centred.append(values / (largest * np.linalg.norm(values / largest, axis=-1)))
    return float(np.clip(np.dot(*centred), -1.0, 1.0))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    # scipy.stats.rankdata(method="average"): tied values share the mean of their 1-based ranks
    sorter = np.argsort(values, kind="mergesort")
    inverse = np.empty(sorter.size, np.intp)
    inverse[sorter] = np.arange(sorter.size)
    ordered = values[sorter]
    first_of_group = np.r_[True, ordered[1:] != ordered[:-1]]
    dense = np.cumsum(first_of_group)[inverse]
    starts = np.r_[np.flatnonzero(first_of_group), len(first_of_group)]
    return 0.5 * (starts[dense] + starts[dense - 1] + 1)


def spearman(x, y) -> float:
    """scipy.stats.spearmanr(x, y).statistic: the correlation of the average ranks, by scipy's np.corrcoef call."""
    ranks = np.column_stack([_average_ranks(np.asarray(x, np.float64)), _average_ranks(np.asarray(y, np.float64))])
    return float(np.corrcoef(ranks, rowvar=False)[1, 0])


def average_precision(labels, scores) -> float:
    """sklearn.metrics.average_precision_score for 0/1 labels: the step integral of the PR curve."""
    # sklearn metrics/_ranking.py: precision_recall_curve (drop_intermediate=False) and its step sum
    scores = np.asarray(scores)
    order = np.argsort(-scores, kind="stable")
    ordered_scores, positives = scores[order], (np.asarray(labels)[order] == 1).astype(np.float64)
    ends = np.r_[np.flatnonzero(ordered_scores[1:] != ordered_scores[:-1]), len(scores) - 1]
    true_positives = np.cumsum(positives)[ends]
    precision = true_positives / (1 + ends)
    recall = true_positives / true_positives[-1] if true_positives[-1] else np.ones_like(true_positives)
    precision, recall = np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0]
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def matthews_corrcoef(labels, predicted) -> float:
    """sklearn.metrics.matthews_corrcoef for binary labels, by sklearn's covariance formula."""
    labels, predicted = np.asarray(labels).astype(bool), np.asarray(predicted).astype(bool)
    n = float(len(labels))
    true_sums = np.array([np.sum(~labels), np.sum(labels)], np.float64)
    predicted_sums = np.array([np.sum(~predicted), np.sum(predicted)], np.float64)
    correct = float(np.sum(labels == predicted))
    covariance = correct * n - np.dot(true_sums, predicted_sums)
    variance_product = (n**2 - np.dot(predicted_sums, predicted_sums)) * (n**2 - np.dot(true_sums, true_sums))
    return 0.0 if variance_product == 0 else float(covariance / np.sqrt(variance_product))


# ----------------------------------------------------------------------------- embedding similarity


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


# ----------------------------------------------------------------------------- binary classification


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


# ----------------------------------------------------------------------------- triplets


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


# ----------------------------------------------------------------------------- information retrieval


def _top_k(scores: np.ndarray, tie_keys: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k best scores, ordered by score descending, then tie key ascending."""
    k = min(k, scores.shape[1])
    candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    kth_best = np.take_along_axis(scores, candidates, 1).min(1, keepdims=True)
    for row in np.flatnonzero((scores >= kth_best).sum(1) > k):  # ties at the cut: keep the lowest tie keys
        tied = np.flatnonzero(scores[row] >= kth_best[row])
        candidates[row] = tied[np.lexsort((tie_keys[row, tied], -scores[row, tied]))[:k]]
    order = np.lexsort((np.take_along_axis(tie_keys, candidates, 1), -np.take_along_axis(scores, candidates, 1)))
    return np.take_along_axis(candidates, order, 1)


def _ranked_hits(query_embeddings, corpus_embeddings, corpus_ids, similarity, k: int, chunk_size: int) -> np.ndarray:
    """[Q, min(k, N)] corpus indices, best first; equal scores rank by ascending corpus id, as ST."""
    # ST information_retrieval.py compute_all_metrics: top-k per corpus chunk, merged under (-score, corpus_id)
    id_ranks = np.empty(len(corpus_ids), np.int64)
    id_ranks[sorted(range(len(corpus_ids)), key=corpus_ids.__getitem__)] = np.arange(len(corpus_ids))
    n_queries = len(query_embeddings)
    best_scores = np.zeros((n_queries, 0), np.float32)
    best_indices = np.zeros((n_queries, 0), np.int64)
    for start in range(0, len(corpus_embeddings), chunk_size):
        chunk = np.asarray(similarity(query_embeddings, corpus_embeddings[start : start + chunk_size]))
        indices = np.broadcast_to(np.arange(start, start + chunk.shape[1]), chunk.shape)
        scores = np.concatenate([best_scores, chunk], axis=1)
        indices = np.concatenate([best_indices, indices], axis=1)
        keep = _top_k(scores, id_ranks[indices], k)
        best_scores, best_indices = np.take_along_axis(scores, keep, 1), np.take_along_axis(indices, keep, 1)
    return best_indices


def _sum_in_order(values: np.ndarray) -> np.ndarray:
    """Sums along the last axis left to right, as ST's Python loops add (numpy's pairwise sum rounds differently)."""
    return np.cumsum(values, axis=-1)[..., -1] if values.shape[-1] else np.sum(values, axis=-1)


def _dcg(relevances: np.ndarray) -> np.ndarray:
    # ST InformationRetrievalEvaluator.compute_dcg_at_k: log2 discount, +2 as ranks start at 0
    return _sum_in_order(relevances / np.log2(np.arange(relevances.shape[-1]) + 2))


def retrieval_metrics_from_hits(
    is_relevant: np.ndarray,
    n_relevant: np.ndarray,
    mrr_at_k: Sequence[int] = (10,),
    ndcg_at_k: Sequence[int] = (10,),
    accuracy_at_k: Sequence[int] = (1, 3, 5, 10),
    precision_recall_at_k: Sequence[int] = (1, 3, 5, 10),
    map_at_k: Sequence[int] = (100,),
) -> dict[str, float]:
    """ST's IR metrics from a [Q, K] 0/1 matrix (is the hit at rank r relevant) and each query's relevant count.

    Keys "accuracy@1", ..., "precision@k", "recall@k", "ndcg@k", "mrr@k", "map@k" in ST's order.
    """
    # ST InformationRetrievalEvaluator.compute_metrics (binary relevance)
    is_relevant, n_relevant = np.asarray(is_relevant, np.float64), np.asarray(n_relevant)
    n_queries = len(is_relevant)
    metrics = {}
    for k in accuracy_at_k:  # at least one relevant document in the top k
        metrics[f"accuracy@{k}"] = float(np.sum(is_relevant[:, :k].any(1)) / n_queries)
    for k in precision_recall_at_k:
        metrics[f"precision@{k}"] = float(np.mean(is_relevant[:, :k].sum(1) / k))
    for k in precision_recall_at_k:
        metrics[f"recall@{k}"] = float(np.mean(is_relevant[:, :k].sum(1) / n_relevant))
    for k in ndcg_at_k:  # ideal ranking: every relevant document first
        ideal = _dcg((np.arange(k) < n_relevant[:, None]).astype(np.float64))
        metrics[f"ndcg@{k}"] = float(np.mean(_dcg(is_relevant[:, :k]) / ideal))
    for k in mrr_at_k:
        top = is_relevant[:, :k]
        first = np.argmax(top, axis=1)
        metrics[f"mrr@{k}"] = float(_sum_in_order(np.where(top.any(1), 1.0 / (first + 1), 0.0)) / n_queries)
    for k in map_at_k:  # precision at each relevant hit, over min(k, number relevant)
        top = is_relevant[:, :k]
        precision_at_hits = np.cumsum(top, axis=1) / np.arange(1, top.shape[1] + 1) * top
        metrics[f"map@{k}"] = float(np.mean(_sum_in_order(precision_at_hits) / np.minimum(k, n_relevant)))
    return metrics


def information_retrieval_metrics(
    query_embeddings,
    corpus_embeddings,
    relevant_docs: Mapping[str, set],
    query_ids: Sequence,
    corpus_ids: Sequence,
    mrr_at_k: Sequence[int] = (10,),
    ndcg_at_k: Sequence[int] = (10,),
    accuracy_at_k: Sequence[int] = (1, 3, 5, 10),
    precision_recall_at_k: Sequence[int] = (1, 3, 5, 10),
    map_at_k: Sequence[int] = (100,),
    score_functions: Sequence[str] | Mapping[str, Callable] = ("cosine", "dot"),
    corpus_chunk_size: int = 50000,
) -> dict[str, float]:
    """Retrieval metrics per score function: {"cosine_accuracy@1", ..., "cosine_map@100", "dot_accuracy@1", ...}.

    query_embeddings [Q, D] row i is query_ids[i]; corpus_embeddings [N, D] row j is corpus_ids[j];
    relevant_docs maps a query id to its set of relevant corpus ids. score_functions: names of
    SIMILARITY_MATRIX, or a mapping of name -> fn(queries [Q, D], corpus [C, D]) -> scores [Q, C].
    """
    # ST evaluation/information_retrieval.py
    query_embeddings, corpus_embeddings = _as_float_array(query_embeddings), _as_float_array(corpus_embeddings)
    if not isinstance(score_functions, Mapping):
        names = [_similarity_name(name) for name in score_functions]
        score_functions = {name: SIMILARITY_MATRIX[name] for name in names}
    ks = dict(
        mrr_at_k=mrr_at_k,
        ndcg_at_k=ndcg_at_k,
        accuracy_at_k=accuracy_at_k,
        precision_recall_at_k=precision_recall_at_k,
        map_at_k=map_at_k,
    )
    max_k = max(max(k) for k in ks.values())
    corpus_ids = list(corpus_ids)
    n_relevant = np.array([len(relevant_docs[query_id]) for query_id in query_ids])
    metrics = {}
    for name, similarity in score_functions.items():
        hits = _ranked_hits(query_embeddings, corpus_embeddings, corpus_ids, similarity, max_k, corpus_chunk_size)
        is_relevant = [
            [corpus_ids[j] in relevant_docs[query_id] for j in row] for query_id, row in zip(query_ids, hits)
        ]
        is_relevant = np.array(is_relevant, bool).reshape(len(query_ids), hits.shape[1])
        for key, value in retrieval_metrics_from_hits(is_relevant, n_relevant, **ks).items():
            metrics[f"{name}_{key}"] = value
    return metrics


# ----------------------------------------------------------------------------- evaluators


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


class InformationRetrievalEvaluator(_Evaluator):
    """Accuracy@k, precision@k, recall@k, nDCG@k, MRR@k and MAP@k of retrieving the corpus for each query (ST's class).

    Queries without relevant documents are skipped. Score functions default to the encoder's similarity
    (ST 6.2; ST before 5.x used cosine and dot); equal scores rank by ascending corpus id.
    """

    # ST evaluation/information_retrieval.py; arguments in ST's order, without write_predictions

    def __init__(
        self,
        queries: Mapping[str, str],
        corpus: Mapping[str, str],
        relevant_docs: Mapping[str, set],
        corpus_chunk_size: int = 50000,
        mrr_at_k: Sequence[int] = (10,),
        ndcg_at_k: Sequence[int] = (10,),
        accuracy_at_k: Sequence[int] = (1, 3, 5, 10),
        precision_recall_at_k: Sequence[int] = (1, 3, 5, 10),
        map_at_k: Sequence[int] = (100,),
        show_progress_bar: bool = False,
        batch_size: int = 32,
        name: str = "",
        write_csv: bool = True,
        truncate_dim: int | None = None,
        score_functions: Sequence[str] | Mapping[str, Callable] | None = None,
        main_score_function: str | None = None,
        query_prompt: str | None = None,
        query_prompt_name: str | None = None,
        corpus_prompt: str | None = None,
        corpus_prompt_name: str | None = None,
    ):
        self.queries_ids = [qid for qid in queries if len(relevant_docs.get(qid, ())) > 0]
        self.queries = [queries[qid] for qid in self.queries_ids]
        self.corpus_ids = list(corpus)
        self.corpus = [corpus[cid] for cid in self.corpus_ids]
        self.relevant_docs = relevant_docs
        self.k_values = dict(
            mrr_at_k=list(mrr_at_k),
            ndcg_at_k=list(ndcg_at_k),
            accuracy_at_k=list(accuracy_at_k),
            precision_recall_at_k=list(precision_recall_at_k),
            map_at_k=list(map_at_k),
        )
        self.corpus_chunk_size, self.name, self.write_csv = corpus_chunk_size, name, write_csv
        self.batch_size, self.show_progress_bar, self.truncate_dim = batch_size, show_progress_bar, truncate_dim
        self.score_functions = score_functions
        self.main_score_function = _similarity_name(main_score_function) if main_score_function else None
        self.query_prompt, self.query_prompt_name = query_prompt, query_prompt_name
        self.corpus_prompt, self.corpus_prompt_name = corpus_prompt, corpus_prompt_name
        self.score_function_names = sorted(score_functions) if score_functions else []
        self._primary_score_function = self.main_score_function
        self.csv_file = "Information-Retrieval_evaluation" + ("_" + name if name else "") + "_results.csv"

    def _csv_columns(self) -> list[tuple[str, str]]:
        """(CSV header, metric key) pairs in ST's column order."""
        k = self.k_values
        columns = []
        for fn in self.score_function_names:
            columns += [(f"{fn}-Accuracy@{i}", f"{fn}_accuracy@{i}") for i in k["accuracy_at_k"]]
            for i in k["precision_recall_at_k"]:
                columns += [(f"{fn}-Precision@{i}", f"{fn}_precision@{i}"), (f"{fn}-Recall@{i}", f"{fn}_recall@{i}")]
            columns += [(f"{fn}-MRR@{i}", f"{fn}_mrr@{i}") for i in k["mrr_at_k"]]
            columns += [(f"{fn}-NDCG@{i}", f"{fn}_ndcg@{i}") for i in k["ndcg_at_k"]]
            columns += [(f"{fn}-MAP@{i}", f"{fn}_map@{i}") for i in k["map_at_k"]]
        return columns

    @property
    def csv_headers(self) -> list[str]:
        return ["epoch", "steps"] + [header for header, _ in self._csv_columns()]

    @property
    def primary_metric(self) -> str | None:
        if self._primary_score_function is None:
            return None
        return _prefixed(self.name, f"{self._primary_score_function}_ndcg@{max(self.k_values['ndcg_at_k'])}")

    def __call__(self, encoder, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        # without score_functions, the encoder's similarity, re-read on every call as ST does
        model_similarity = getattr(encoder, "similarity_fn_name", None) or "cosine"
        score_functions = self.score_functions or [_similarity_name(model_similarity)]
        names = sorted(score_functions)
        if names != self.score_function_names:
            self.score_function_names, self._primary_score_function = names, self.main_score_function
        (query_embeddings,) = self._embed(
            encoder, [self.queries], role="query", prompt=self.query_prompt, prompt_name=self.query_prompt_name
        )
        (corpus_embeddings,) = self._embed(
            encoder, [self.corpus], role="document", prompt=self.corpus_prompt, prompt_name=self.corpus_prompt_name
        )
        metrics = information_retrieval_metrics(
            query_embeddings,
            corpus_embeddings,
            self.relevant_docs,
            self.queries_ids,
            self.corpus_ids,
            score_functions=score_functions,
            corpus_chunk_size=self.corpus_chunk_size,
            **self.k_values,
        )
        if output_path is not None and self.write_csv:  # ST writes this file by hand: str() values, "\n" lines
            os.makedirs(output_path, exist_ok=True)
            path = os.path.join(output_path, self.csv_file)
            is_new = not os.path.isfile(path)
            with open(path, mode="a", encoding="utf-8") as f:
                if is_new:
                    f.write(",".join(self.csv_headers) + "\n")
                f.write(",".join(map(str, [epoch, steps] + [metrics[key] for _, key in self._csv_columns()])) + "\n")
        if self._primary_score_function is None:  # the best nDCG@max(k) on the first call, as ST
            ndcg = f"ndcg@{max(self.k_values['ndcg_at_k'])}"
            self._primary_score_function = max(names, key=lambda fn: metrics[f"{fn}_{ndcg}"])
        return prefix_name_to_metrics(metrics, self.name)


EVALUATORS: dict[str, type] = {
    "embedding_similarity": EmbeddingSimilarityEvaluator,
    "binary_classification": BinaryClassificationEvaluator,
    "triplet": TripletEvaluator,
    "information_retrieval": InformationRetrievalEvaluator,
}

__all__ = [
    "EVALUATORS",
    "BinaryClassificationEvaluator",
    "EmbeddingSimilarityEvaluator",
    "InformationRetrievalEvaluator",
    "TripletEvaluator",
    "average_precision",
    "binary_classification_metrics",
    "embedding_similarity_metrics",
    "find_best_acc_and_threshold",
    "find_best_f1_and_threshold",
    "information_retrieval_metrics",
    "matthews_corrcoef",
    "pearson",
    "prefix_name_to_metrics",
    "retrieval_metrics_from_hits",
    "spearman",
    "triplet_metrics",
]
