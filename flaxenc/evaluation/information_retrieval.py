"""InformationRetrievalEvaluator: accuracy, precision, recall, nDCG, MRR and MAP at k of retrieving a corpus."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from flaxenc.evaluation.base import _Evaluator, _prefixed, prefix_name_to_metrics
from flaxenc.evaluation.similarity import SIMILARITY_MATRIX, _as_float_array, _similarity_name


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
