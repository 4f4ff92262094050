"""ParaphraseMiningEvaluator: mine the most similar pairs of a set of sentences, scored against gold duplicates."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from flaxenc.evaluation.base import _append_csv_row, _Evaluator, _prefixed, prefix_name_to_metrics
from flaxenc.evaluation.similarity import _similarity_name


def paraphrase_mining_metrics(
    pairs: Sequence[Sequence], ids: Sequence, duplicates: Mapping, total_duplicates: int
) -> dict[str, float]:
    """Average precision, and the best F1 with its precision, recall and threshold, of mined pairs.

    pairs: [score, i, j] best first (flaxenc.util.paraphrase_mining); ids[i] the id of sentence i;
    duplicates[id1][id2] true for gold pairs; total_duplicates the number of gold pairs.
    """
    # ST evaluation/paraphrase_mining.py __call__
    def is_duplicate(id1, id2) -> bool:
        return bool(duplicates.get(id1, {}).get(id2, False) or duplicates.get(id2, {}).get(id1, False))

    n_extract = n_correct = previous_correct = 0
    threshold = best_f1 = best_recall = best_precision = average_precision = 0
    for index, (score, i, j) in enumerate(pairs):
        n_extract += 1
        n_correct += is_duplicate(ids[i], ids[j])
        if index + 1 < len(pairs) and pairs[index + 1][0] == score:
            continue  # a threshold cannot split equal scores
        if n_correct > previous_correct:
            precision = n_correct / n_extract
            recall = n_correct / total_duplicates if total_duplicates > 0 else 0.0
            f1 = 2 * precision * recall / (precision + recall)
            average_precision += precision * (n_correct - previous_correct)
            if f1 > best_f1:
                best_f1, best_precision, best_recall = f1, precision, recall
                threshold = (pairs[index][0] + pairs[min(index + 1, len(pairs) - 1)][0]) / 2
        previous_correct = n_correct
    average_precision = average_precision / total_duplicates if total_duplicates > 0 else 0
    return {
        "average_precision": average_precision,
        "f1": best_f1,
        "precision": best_precision,
        "recall": best_recall,
        "threshold": threshold,
    }


def add_transitive_closure(graph):
    """If a~b and b~c then a~c, for every connected group of duplicates (ST's static method; changes graph)."""
    # ST ParaphraseMiningEvaluator.add_transitive_closure
    nodes_visited = set()
    for a in list(graph.keys()):
        if a in nodes_visited:
            continue
        connected = {a}
        queue = [node for node, is_duplicate in graph[a].items() if is_duplicate]
        while queue:
            node = queue.pop(0)
            if node not in connected:
                connected.add(node)
                queue.extend(n for n, is_duplicate in graph[node].items() if is_duplicate)
        connected = list(connected)
        for i in range(len(connected) - 1):
            for j in range(i + 1, len(connected)):
                graph[connected[i]][connected[j]] = True
                graph[connected[j]][connected[i]] = True
                nodes_visited.update((connected[i], connected[j]))
    return graph


class ParaphraseMiningEvaluator(_Evaluator):
    """Paraphrase mining (flaxenc.util.paraphrase_mining, on device) scored against gold duplicate pairs (ST's class).

    The score function is the encoder's similarity (its similarity_fn_name, cosine by default), as ST's.
    """

    # ST evaluation/paraphrase_mining.py; arguments in ST's order

    add_transitive_closure = staticmethod(add_transitive_closure)

    def __init__(
        self,
        sentences_map: Mapping[str, str],
        duplicates_list: Sequence[tuple[str, str]] | None = None,
        duplicates_dict: Mapping[str, Mapping[str, bool]] | None = None,
        add_transitive_closure: bool = False,
        query_chunk_size: int = 5000,
        corpus_chunk_size: int = 100000,
        max_pairs: int = 500000,
        top_k: int = 100,
        show_progress_bar: bool = False,
        batch_size: int = 16,
        name: str = "",
        write_csv: bool = True,
        truncate_dim: int | None = None,
    ):
        self.ids, self.sentences = list(sentences_map), list(sentences_map.values())
        self.name, self.write_csv = name, write_csv
        self.batch_size, self.show_progress_bar, self.truncate_dim = batch_size, show_progress_bar, truncate_dim
        self.query_chunk_size, self.corpus_chunk_size = query_chunk_size, corpus_chunk_size
        self.max_pairs, self.top_k = max_pairs, top_k
        self._add_transitive_closure = add_transitive_closure
        self.duplicates = duplicates_dict if duplicates_dict is not None else defaultdict(lambda: defaultdict(bool))
        for id1, id2 in duplicates_list or ():
            if id1 in sentences_map and id2 in sentences_map:
                self.duplicates[id1][id2] = True
                self.duplicates[id2][id1] = True
        if add_transitive_closure:
            self.duplicates = self.add_transitive_closure(self.duplicates)
        positive_key_pairs = set()
        for key1 in self.duplicates:
            for key2 in self.duplicates[key1]:
                if key1 in sentences_map and key2 in sentences_map and self._is_duplicate(key1, key2):
                    positive_key_pairs.add(tuple(sorted([key1, key2])))
        self.total_num_duplicates = len(positive_key_pairs)
        self.csv_file = "paraphrase_mining_evaluation" + ("_" + name if name else "") + "_results.csv"
        self.csv_headers = ["epoch", "steps", "precision", "recall", "f1", "threshold", "average_precision"]

    def _is_duplicate(self, id1, id2) -> bool:
        return bool(self.duplicates.get(id1, {}).get(id2, False) or self.duplicates.get(id2, {}).get(id1, False))

    @property
    def primary_metric(self) -> str:
        return _prefixed(self.name, "average_precision")

    def __call__(self, encoder, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        from flaxenc.search import SCORE_FUNCTIONS, paraphrase_mining_embeddings

        (embeddings,) = self._embed(encoder, [self.sentences])
        score_function = SCORE_FUNCTIONS[_similarity_name(getattr(encoder, "similarity_fn_name", None) or "cosine")]
        pairs = paraphrase_mining_embeddings(
            embeddings, self.query_chunk_size, self.corpus_chunk_size, self.max_pairs, self.top_k, score_function
        )
        metrics = paraphrase_mining_metrics(pairs, self.ids, self.duplicates, self.total_num_duplicates)
        if output_path is not None and self.write_csv:
            row = [metrics[key] for key in self.csv_headers[2:]]
            _append_csv_row(output_path, self.csv_file, self.csv_headers, [epoch, steps, *row])
        return prefix_name_to_metrics(metrics, self.name)
