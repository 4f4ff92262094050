"""sentence-transformers' evaluators: pure metric functions on numpy embeddings, and thin evaluator classes.

The numbers are ST 6.3's (sentence_transformers/sentence_transformer/evaluation/); each function names the
file it copies. One concept a module:

- `similarity`: the similarity functions (pairwise and matrix), in float32 numpy as ST's in float32 torch;
- `metrics`: the statistics ST takes from scipy and scikit-learn (Pearson, Spearman, average precision,
  MCC, nDCG), copied in numpy so flaxenc needs neither;
- `base`: ST's BaseEvaluator (name prefixes, CSV rows, encoding);
- one module per evaluator: its pure metric function of float32 numpy embeddings, where it has one
  (`embedding_similarity_metrics`, `binary_classification_metrics`, `triplet_metrics`,
  `information_retrieval_metrics`, ...), returning a dict keyed as ST's evaluator keys its metrics
  (before the evaluator's name is prefixed), and the evaluator class holding the data, constructed as
  ST's, called as `evaluator(encoder, output_path, epoch, steps) -> dict[str, float]`.

The encoder is anything with `encode(texts, batch_size=..., convert_to_numpy=True)`: a flaxenc
SentenceEncoder or an ST model. Evaluators write ST's CSV files and expose ST's `primary_metric` and
`greater_is_better`.
"""

from __future__ import annotations

from flaxenc.evaluation.base import prefix_name_to_metrics
from flaxenc.evaluation.binary_classification import (
    BINARY_METRIC_NAMES,
    BinaryClassificationEvaluator,
    binary_classification_metrics,
    find_best_acc_and_threshold,
    find_best_f1_and_threshold,
)
from flaxenc.evaluation.embedding_similarity import EmbeddingSimilarityEvaluator, embedding_similarity_metrics
from flaxenc.evaluation.information_retrieval import (
    InformationRetrievalEvaluator,
    information_retrieval_metrics,
    retrieval_metrics_from_hits,
)
from flaxenc.evaluation.metrics import average_precision, matthews_corrcoef, ndcg, pearson, spearman
from flaxenc.evaluation.mse import MSEEvaluator, mse_metric
from flaxenc.evaluation.paraphrase_mining import ParaphraseMiningEvaluator, paraphrase_mining_metrics
from flaxenc.evaluation.reranking import RerankingEvaluator, reranking_metrics
from flaxenc.evaluation.sequential import SequentialEvaluator
from flaxenc.evaluation.similarity import (
    PAIRWISE_SIMILARITY,
    SIMILARITY_FN_NAMES,
    SIMILARITY_MATRIX,
)
from flaxenc.evaluation.translation import TranslationEvaluator, translation_metrics
from flaxenc.evaluation.triplet import TripletEvaluator, triplet_metrics

EVALUATORS: dict[str, type] = {
    "embedding_similarity": EmbeddingSimilarityEvaluator,
    "binary_classification": BinaryClassificationEvaluator,
    "triplet": TripletEvaluator,
    "information_retrieval": InformationRetrievalEvaluator,
    "paraphrase_mining": ParaphraseMiningEvaluator,
    "mse": MSEEvaluator,
    "reranking": RerankingEvaluator,
    "translation": TranslationEvaluator,
    "sequential": SequentialEvaluator,
}

__all__ = [
    "BINARY_METRIC_NAMES",
    "EVALUATORS",
    "PAIRWISE_SIMILARITY",
    "SIMILARITY_FN_NAMES",
    "SIMILARITY_MATRIX",
    "BinaryClassificationEvaluator",
    "EmbeddingSimilarityEvaluator",
    "InformationRetrievalEvaluator",
    "MSEEvaluator",
    "ParaphraseMiningEvaluator",
    "RerankingEvaluator",
    "SequentialEvaluator",
    "TranslationEvaluator",
    "TripletEvaluator",
    "average_precision",
    "binary_classification_metrics",
    "embedding_similarity_metrics",
    "find_best_acc_and_threshold",
    "find_best_f1_and_threshold",
    "information_retrieval_metrics",
    "matthews_corrcoef",
    "mse_metric",
    "ndcg",
    "paraphrase_mining_metrics",
    "pearson",
    "prefix_name_to_metrics",
    "reranking_metrics",
    "retrieval_metrics_from_hits",
    "spearman",
    "translation_metrics",
    "triplet_metrics",
]
