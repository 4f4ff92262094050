"""The statistics ST takes from scipy and scikit-learn, copied in numpy so flaxenc needs neither."""

from __future__ import annotations

import numpy as np


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


def ndcg(relevance, scores, k: int | None = None) -> float:
    """sklearn.metrics.ndcg_score([relevance], [scores], k=k): nDCG of one ranking, tied scores averaged."""
    # sklearn metrics/_ranking.py _dcg_sample_scores, _tie_averaged_dcg and _ndcg_sample_scores (ignore_ties=False)
    relevance, scores = np.asarray(relevance), np.asarray(scores)
    discount = 1 / (np.log(np.arange(relevance.shape[0]) + 2) / np.log(2))
    if k is not None:
        discount[k:] = 0
    _, inverse, counts = np.unique(-scores, return_inverse=True, return_counts=True)
    ranked = np.zeros(len(counts))
    np.add.at(ranked, inverse, relevance)
    ranked /= counts
    discount_cumsum = np.cumsum(discount)
    groups = np.cumsum(counts) - 1
    discount_sums = np.empty(len(counts))
    discount_sums[0] = discount_cumsum[groups[0]]
    discount_sums[1:] = np.diff(discount_cumsum[groups])
    gain = (ranked * discount_sums).sum()
    ideal = discount.dot(relevance[np.argsort(relevance)[::-1]])  # the ranking by relevance itself
    return 0.0 if ideal == 0 else float(gain / ideal)
