"""RerankingEvaluator: rank each query's positives and negatives by similarity; MAP, MRR@k and nDCG@k."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from flaxenc.evaluation.base import _append_csv_row, _Evaluator, _prefixed, prefix_name_to_metrics
from flaxenc.evaluation.metrics import average_precision, ndcg
from flaxenc.evaluation.similarity import SIMILARITY_MATRIX, _as_float_array, _similarity_name


def reranking_metrics(
    query_embeddings,
    document_embeddings: Sequence,
    n_positives: Sequence[int],
    at_k: int = 10,
    similarity: str | Callable = "cosine",
) -> dict[str, float]:
    """Mean AP, MRR@at_k and nDCG@at_k: {"map", "mrr@k", "ndcg@k"}.

    query_embeddings [Q, D]; document_embeddings[q] [n_q, D], the query's positives first
    (n_positives[q] of them), then its negatives. similarity: a name, or fn(query [1, D], docs [n, D]) -> [1, n].
    """
    # ST evaluation/reranking.py compute_metrics_batched; nDCG and AP as sklearn's ndcg_score, average_precision_score
    similarity = SIMILARITY_MATRIX[_similarity_name(similarity)] if not callable(similarity) else similarity
    query_embeddings = _as_float_array(query_embeddings)
    mrr_scores, ndcg_scores, ap_scores = [], [], []
    for query, documents, positives in zip(query_embeddings, document_embeddings, n_positives):
        scores = np.asarray(similarity(query[None], _as_float_array(documents))).reshape(-1)
        is_relevant = np.arange(len(scores)) < positives
        order = np.argsort(-scores, kind="stable")[:at_k]
        hits = np.flatnonzero(is_relevant[order])
        mrr_scores.append(1 / (hits[0] + 1) if len(hits) else 0)
        scores = scores.astype(np.float64)  # ST hands sklearn the scores as Python floats
        ndcg_scores.append(ndcg(is_relevant.astype(np.int64), scores, k=at_k))
        ap_scores.append(average_precision(is_relevant.astype(np.int64), scores))
    return {"map": np.mean(ap_scores), f"mrr@{at_k}": np.mean(mrr_scores), f"ndcg@{at_k}": np.mean(ndcg_scores)}


class RerankingEvaluator(_Evaluator):
    """MAP, MRR@k and nDCG@k of ranking each query's positive and negative documents (ST's class).

    samples: a list of {"query": str, "positive": list of str (or one str), "negative": list of str (or one
    str)}; samples without positives or without negatives are dropped, as ST. Queries are encoded with the
    encoder's "query" prompt and documents with its "document" prompt, when it has them.
    """

    # ST evaluation/reranking.py; arguments in ST's order (use_batched_encoding only changes ST's memory use)

    def __init__(
        self,
        samples: Sequence[Mapping] | Mapping[str, Mapping],
        at_k: int = 10,
        name: str = "",
        write_csv: bool = True,
        similarity_fct: str | Callable | None = None,
        batch_size: int = 64,
        show_progress_bar: bool = False,
        use_batched_encoding: bool = True,
        truncate_dim: int | None = None,
        mrr_at_k: int | None = None,
    ):
        self.at_k = mrr_at_k if mrr_at_k is not None else at_k
        samples = list(samples.values()) if isinstance(samples, Mapping) else samples
        samples = [
            {
                **sample,
                "positive": [sample["positive"]] if isinstance(sample["positive"], str) else list(sample["positive"]),
                "negative": [sample["negative"]] if isinstance(sample["negative"], str) else list(sample["negative"]),
            }
            for sample in samples
        ]
        self.samples = [sample for sample in samples if sample["positive"] and sample["negative"]]
        self.similarity_fct, self.use_batched_encoding = similarity_fct, use_batched_encoding
        self.batch_size, self.show_progress_bar, self.truncate_dim = batch_size, show_progress_bar, truncate_dim
        self.name, self.write_csv = name, write_csv
        self.csv_file = "RerankingEvaluator" + ("_" + name if name else "") + f"_results_@{self.at_k}.csv"
        self.csv_headers = ["epoch", "steps", "MAP", f"MRR@{self.at_k}", f"NDCG@{self.at_k}"]

    @property
    def primary_metric(self) -> str:
        return _prefixed(self.name, f"ndcg@{self.at_k}")

    def __call__(self, encoder, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        (queries,) = self._embed(encoder, [[sample["query"] for sample in self.samples]], role="query")
        (documents,) = self._embed(
            encoder, [[text for s in self.samples for text in s["positive"] + s["negative"]]], role="document"
        )
        sizes = [len(sample["positive"]) + len(sample["negative"]) for sample in self.samples]
        per_query = np.split(documents, np.cumsum(sizes)[:-1]) if sizes else []
        similarity = self.similarity_fct or getattr(encoder, "similarity_fn_name", None) or "cosine"
        n_positives = [len(sample["positive"]) for sample in self.samples]
        metrics = reranking_metrics(queries, per_query, n_positives, self.at_k, similarity)
        if output_path is not None and self.write_csv:
            row = [metrics["map"], metrics[f"mrr@{self.at_k}"], metrics[f"ndcg@{self.at_k}"]]
            _append_csv_row(output_path, self.csv_file, self.csv_headers, [epoch, steps, *row])
        return prefix_name_to_metrics(metrics, self.name)
