"""flaxenc.evaluation against sentence-transformers' evaluators, on STS-B / MRPC and the real all-MiniLM-L6-v2.

Three levels:
- the statistics and threshold searches against scipy / scikit-learn / ST's static methods on tie-heavy arrays;
- both evaluators fed the SAME embeddings (a real SentenceTransformer whose one module serves ST's MiniLM
  embeddings from a table): the metric math,
  metric names, primary metric and CSV files must agree to ~1e-7;
- ST's evaluator on ST's embeddings against flaxenc's evaluator on flaxenc's encoder (embeddings ~3e-7 apart).
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from conftest import read_mrpc, read_stsb
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import InputModule

import flaxenc
from flaxenc import evaluation

ALL_FNS = ["cosine", "dot", "euclidean", "manhattan"]
N_STS_PAIRS, N_MRPC_PAIRS = 500, 300


class EmbeddingLookup(InputModule):
    """An ST input module that maps each sentence to its row of a fixed table of embeddings."""

    def __init__(self, embeddings: dict[str, np.ndarray]):
        super().__init__()
        self.rows = {text: row for row, text in enumerate(embeddings)}
        self.table = torch.from_numpy(np.stack(list(embeddings.values())))

    def preprocess(self, inputs, prompt=None, **kwargs):
        return {"row": torch.tensor([self.rows[text] for text in inputs])}

    def forward(self, features, **kwargs):
        return {**features, "sentence_embedding": self.table[features["row"]]}

    def get_embedding_dimension(self) -> int:
        return self.table.shape[1]

    def save(self, *args, **kwargs):
        raise NotImplementedError("a test module")


def embedding_table(embeddings: dict[str, np.ndarray]) -> SentenceTransformer:
    """A real SentenceTransformer that serves fixed embeddings, so ST's evaluators and flaxenc's see the same."""
    return SentenceTransformer(modules=[EmbeddingLookup(embeddings)], device="cpu")


# ----------------------------------------------------------------------------- data and models (once per module)


@pytest.fixture(scope="module")
def data():
    """STS-B dev pairs, MRPC test pairs, and triplets and a small retrieval set built from the STS-B pairs."""
    first, second, scores = read_stsb("dev")
    first, second, scores = first[:N_STS_PAIRS], second[:N_STS_PAIRS], [s / 5 for s in scores[:N_STS_PAIRS]]
    rng = np.random.default_rng(0)

    # triplets: (s1, s2) of a similar pair, and a random other sentence of the set as the negative
    pool = list(dict.fromkeys(first + second))
    similar = [i for i, score in enumerate(scores) if score >= 0.7]
    negatives = [pool[j] for j in rng.integers(0, len(pool), len(similar))]
    keep = [k for k, i in enumerate(similar) if negatives[k] not in (first[i], second[i])]
    triplets = ([first[similar[k]] for k in keep], [second[similar[k]] for k in keep], [negatives[k] for k in keep])

    # retrieval: queries are s1 of pairs scored >= 4, the corpus every distinct s2 plus s1 of dissimilar pairs
    corpus_id = {}
    for i, text in enumerate(second + [first[i] for i, score in enumerate(scores) if score < 0.4]):
        corpus_id.setdefault(text, f"doc{len(corpus_id):04d}" if i < len(second) else f"distractor{i:04d}")
    corpus = {cid: text for text, cid in corpus_id.items()}
    queries = {f"q{i:03d}": first[i] for i, score in enumerate(scores) if score >= 0.8}
    relevant = {qid: {corpus_id[second[int(qid[1:])]]} for qid in queries}
    relevant["q_unanswerable"] = set()  # skipped: no relevant documents
    queries["q_unanswerable"] = "A query without relevant documents."
    some = sorted(relevant)[:6]
    relevant[some[0]].add("missing-doc")  # a relevant id outside the corpus still counts in recall
    relevant[some[1]] |= {corpus_id[second[int(some[2][1:])]], corpus_id[second[int(some[3][1:])]]}

    return types.SimpleNamespace(
        sts=(first, second, scores),
        mrpc=[column[:N_MRPC_PAIRS] for column in read_mrpc("test")],
        triplets=triplets,
        ir=(queries, corpus, relevant),
    )


@pytest.fixture(scope="module")
def st_model(minilm_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path), device="cpu")


@pytest.fixture(scope="module")
def encoder(minilm_path):
    return flaxenc.SentenceEncoder.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def st_table(st_model, data):
    """ST's MiniLM embeddings of every sentence of the module, encoded once."""
    texts = list(dict.fromkeys([*data.sts[0], *data.sts[1], *data.mrpc[0], *data.mrpc[1]]))
    return embedding_table(dict(zip(texts, st_model.encode(texts, batch_size=64, convert_to_numpy=True))))


# ----------------------------------------------------------------------------- evaluator cases (same arguments to both)


def _ir_score_functions(module, names):
    if module is evaluation:
        return names
    from sentence_transformers.util import cos_sim, dot_score

    return {"cosine": cos_sim, "dot": dot_score}


IR_KS = dict(mrr_at_k=[5, 10], ndcg_at_k=[3, 10], accuracy_at_k=[1, 50], precision_recall_at_k=[2, 7], map_at_k=[10])

CASES = {
    "similarity_all": lambda m, d: m.EmbeddingSimilarityEvaluator(*d.sts, similarity_fn_names=ALL_FNS, name="sts-dev"),
    "similarity_default": lambda m, d: m.EmbeddingSimilarityEvaluator(*d.sts),
    "similarity_main": lambda m, d: m.EmbeddingSimilarityEvaluator(
        *d.sts, main_similarity="manhattan", similarity_fn_names=["cosine", "manhattan"], name="x"
    ),
    "binary_all": lambda m, d: m.BinaryClassificationEvaluator(*d.mrpc, similarity_fn_names=ALL_FNS, name="mrpc"),
    "binary_default": lambda m, d: m.BinaryClassificationEvaluator(*d.mrpc),
    "triplet_all": lambda m, d: m.TripletEvaluator(*d.triplets, similarity_fn_names=ALL_FNS, name="sts-triplets"),
    "triplet_margins": lambda m, d: m.TripletEvaluator(
        *d.triplets,
        main_similarity_function="euclidean",
        similarity_fn_names=ALL_FNS,
        margin={"cosine": 0.3, "euclidean": 0.1, "manhattan": 2.5},
    ),
    "triplet_float_margin": lambda m, d: m.TripletEvaluator(*d.triplets, margin=0.45),
    "ir_default": lambda m, d: m.InformationRetrievalEvaluator(*d.ir, name="sts-ir"),
    "ir_cosine_dot_chunked": lambda m, d: m.InformationRetrievalEvaluator(
        *d.ir, score_functions=_ir_score_functions(m, ["cosine", "dot"]), corpus_chunk_size=100, **IR_KS
    ),
}
# Evaluated on the real models too (each encodes its sentences: keep the list short)
REAL_MODEL_CASES = ["similarity_all", "binary_all", "triplet_margins", "ir_cosine_dot_chunked"]


def st_evaluation():
    from sentence_transformers.sentence_transformer import evaluation as st_evaluation_module

    return st_evaluation_module


def run(evaluator, model, folder):
    """Two calls (epoch 0 and 1) writing CSV rows; returns the metrics of the second and the CSV file's text."""
    evaluator(model, output_path=str(folder), epoch=0, steps=5)
    metrics = evaluator(model, output_path=str(folder), epoch=1, steps=-1)
    with open(folder / evaluator.csv_file, newline="", encoding="utf-8") as f:
        return metrics, f.read()


@pytest.fixture(scope="module", params=list(CASES))
def reference(request, data, st_table, tmp_path_factory):
    """ST's evaluator run on the table of ST embeddings: (case, metrics, primary metric, CSV text)."""
    case = request.param
    evaluator = CASES[case](st_evaluation(), data)
    metrics, csv_text = run(evaluator, st_table, tmp_path_factory.mktemp(f"st_{case}"))
    return case, metrics, evaluator.primary_metric, evaluator.csv_file, csv_text


# ----------------------------------------------------------------------------- comparisons


def max_difference(expected: dict, actual: dict) -> float:
    assert list(actual) == list(expected), f"metric names differ:\nST      {list(expected)}\nflaxenc {list(actual)}"
    return max(abs(actual[key] - expected[key]) for key in expected)


def far_apart(expected: dict, actual: dict, atol: float, threshold_rtol: float) -> dict:
    """Metrics further apart than atol; thresholds are scores, compared relative to their size (float32 ulps)."""
    def tolerance(key):
        return atol + (threshold_rtol * abs(expected[key]) if "threshold" in key else 0.0)

    return {key: (expected[key], actual[key]) for key in expected if abs(actual[key] - expected[key]) > tolerance(key)}


def assert_same_csv(expected: str, actual: str, atol: float):
    expected_lines, actual_lines = expected.splitlines(keepends=True), actual.splitlines(keepends=True)
    assert len(actual_lines) == len(expected_lines) == 3  # header and two rows
    assert actual_lines[0] == expected_lines[0], "CSV header differs"
    for expected_line, actual_line in zip(expected_lines[1:], actual_lines[1:]):
        assert actual_line[len(actual_line.rstrip("\r\n")) :] == expected_line[len(expected_line.rstrip("\r\n")) :]
        expected_row, actual_row = expected_line.rstrip("\r\n").split(","), actual_line.rstrip("\r\n").split(",")
        assert actual_row[:2] == expected_row[:2]  # epoch, steps
        np.testing.assert_allclose(np.float64(actual_row[2:]), np.float64(expected_row[2:]), rtol=2.5e-7, atol=atol)


def test_same_embeddings_give_st_numbers(reference, data, st_table, tmp_path):
    case, expected, primary_metric, csv_file, csv_text = reference
    evaluator = CASES[case](evaluation, data)
    actual, actual_csv = run(evaluator, st_table, tmp_path)
    difference = max_difference(expected, actual)
    print(f"{case}: same embeddings, {len(expected)} metrics, max |flaxenc - ST| {difference:.1e}")
    # similarities differ from torch's float32 sums by an ulp at most: ~1e-9 in correlations, an ulp in thresholds
    assert not far_apart(expected, actual, atol=1e-7, threshold_rtol=2.5e-7), far_apart(expected, actual, 1e-7, 2.5e-7)
    # metrics of counts and ranks are exactly ST's
    for key in expected:
        if not any(part in key for part in ("pearson", "spearman", "threshold", "_ap", "mcc")):
            assert actual[key] == expected[key], key
    assert evaluator.primary_metric == primary_metric and primary_metric in actual
    assert evaluator.csv_file == csv_file
    assert_same_csv(csv_text, actual_csv, atol=1e-7)
    assert evaluator.greater_is_better is True


@pytest.mark.parametrize("case", REAL_MODEL_CASES)
def test_flaxenc_encoder_gives_st_numbers(case, data, st_model, st_table, encoder, tmp_path):
    st_evaluator = CASES[case](st_evaluation(), data)
    # the first case runs ST's evaluator on the real SentenceTransformer, its own encode calls included
    expected = st_evaluator(st_model if case == REAL_MODEL_CASES[0] else st_table)
    evaluator = CASES[case](evaluation, data)
    actual = evaluator(encoder)
    difference = max_difference(expected, actual)
    largest = max(expected, key=lambda key: abs(actual[key] - expected[key]))
    print(f"{case}: flaxenc encoder vs ST, {len(expected)} metrics, max |flaxenc - ST| {difference:.1e} ({largest})")
    assert not far_apart(expected, actual, atol=1e-5, threshold_rtol=1e-6), far_apart(expected, actual, 1e-5, 1e-6)
    discrete = [key for key in expected if not any(part in key for part in ("pearson", "threshold"))]
    mismatched = {key: (expected[key], actual[key]) for key in discrete if actual[key] != expected[key]}
    print(f"{case}: rank/count-based metrics differing from ST: {mismatched or 'none'}")
    assert all("spearman" in key or "_ap" in key for key in mismatched), mismatched  # only ties moved by ~1e-7 noise
    assert evaluator.primary_metric == st_evaluator.primary_metric


# ----------------------------------------------------------------------------- the pieces, on tie-heavy arrays


def test_threshold_search_matches_st_with_ties():
    from sentence_transformers.sentence_transformer.evaluation import BinaryClassificationEvaluator as ST

    rng = np.random.default_rng(1)
    for trial in range(30):
        n = int(rng.integers(1, 300))
        scores = np.round(rng.normal(size=n), int(rng.integers(0, 3))).astype(np.float32)  # many ties
        labels = rng.integers(0, 2, n) if trial % 10 else np.full(n, trial % 2)  # some all-0 / all-1
        for high_score_more_similar in (True, False):
            expected = ST.find_best_acc_and_threshold(scores, labels, high_score_more_similar)
            actual = evaluation.find_best_acc_and_threshold(scores, labels, high_score_more_similar)
            assert actual == expected and type(actual[1]) is type(expected[1]), (trial, expected, actual)
            expected = ST.find_best_f1_and_threshold(scores, labels, high_score_more_similar)
            actual = evaluation.find_best_f1_and_threshold(scores, labels, high_score_more_similar)
            assert actual == expected, (trial, expected, actual)
    # a midpoint that rounds onto the next score stays at the current one
    close = np.array([1.0, np.nextafter(np.float32(1.0), np.float32(2.0))], np.float32)
    assert evaluation.find_best_acc_and_threshold(close, [0, 1], True) == ST.find_best_acc_and_threshold(
        close, [0, 1], True
    )


def test_statistics_match_scipy_and_sklearn():
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import average_precision_score, matthews_corrcoef

    rng = np.random.default_rng(2)
    for _trial in range(20):
        n = int(rng.integers(3, 400))
        gold = list(np.round(rng.uniform(0, 5, n), 1))  # a list of floats, as ST passes its scores
        scores = np.round(rng.normal(size=n), 2).astype(np.float32)
        assert evaluation.pearson(gold, scores) == pearsonr(gold, scores)[0]
        assert evaluation.spearman(gold, scores) == spearmanr(gold, scores)[0]
        labels = rng.integers(0, 2, n)
        assert evaluation.average_precision(labels, scores) == average_precision_score(labels, scores)
        predicted = scores >= np.float32(rng.normal())
        assert evaluation.matthews_corrcoef(labels, predicted) == matthews_corrcoef(labels, predicted)
    assert evaluation.matthews_corrcoef([1, 1, 0], [1, 1, 1]) == 0.0


def test_retrieval_ties_rank_by_corpus_id_as_st():
    """Integer embeddings give exactly equal scores; ST ranks ties by ascending corpus id, across chunks."""
    rng = np.random.default_rng(3)
    corpus = {f"d{number:03d}": f"doc {i}" for i, number in enumerate(rng.permutation(1000)[:60])}
    queries = {f"q{i}": f"query {i}" for i in range(15)}
    vectors = {text: rng.integers(0, 2, 4).astype(np.float32) for text in [*corpus.values(), *queries.values()]}
    ids = list(corpus)
    relevant = {qid: {str(cid) for cid in rng.choice(ids, int(rng.integers(1, 6)), replace=False)} for qid in queries}
    table = embedding_table(vectors)
    table.similarity_fn_name = "dot"
    table.similarity = lambda a, b: a @ b.T
    ks = dict(mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1, 3], precision_recall_at_k=[1, 5], map_at_k=[20])
    st_evaluator = st_evaluation().InformationRetrievalEvaluator(queries, corpus, relevant, corpus_chunk_size=7, **ks)
    expected = st_evaluator(table)
    for chunk_size in (7, 50000):
        actual = evaluation.InformationRetrievalEvaluator(queries, corpus, relevant, corpus_chunk_size=chunk_size, **ks)
        assert actual(table) == expected


def test_registry_and_prefixes():
    names = {"embedding_similarity", "binary_classification", "triplet", "information_retrieval"}
    names |= {"paraphrase_mining", "mse", "reranking", "translation", "sequential"}  # tests/test_evaluators.py
    assert set(evaluation.EVALUATORS) == names
    assert all(cls.greater_is_better for cls in evaluation.EVALUATORS.values())
    assert evaluation.prefix_name_to_metrics({"a": np.float32(0.5)}, "dev") == {"dev_a": 0.5}
    assert evaluation.prefix_name_to_metrics({"a": 1}, "") == {"a": 1.0}
    with pytest.raises(ValueError, match="unknown similarity"):
        evaluation.EmbeddingSimilarityEvaluator(["a"], ["b"], [1.0], similarity_fn_names=["jaccard"])


def test_query_and_document_prompts_as_st():
    """Triplet anchors and IR queries get the encoder's "query" prompt, the other texts its "document" prompt,
    unless a prompt is given (ST's encode_query / encode_document); plain encode() gets no prompt."""
    calls = []

    class PromptedEncoder:
        prompts = {"query": "query: ", "document": "passage: "}

        def encode(self, texts, batch_size, convert_to_numpy, prompt_name=None, prompt=None):
            calls.append((prompt_name, prompt))
            return np.arange(3 * len(texts), dtype=np.float32).reshape(len(texts), 3) ** 0.5

    evaluation.TripletEvaluator(["a"], ["b"], ["c"])(PromptedEncoder())
    ir = evaluation.InformationRetrievalEvaluator({"q": "a"}, {"d": "b"}, {"q": {"d"}}, corpus_prompt="doc: ")
    ir(PromptedEncoder())
    evaluation.EmbeddingSimilarityEvaluator(["a", "b", "c"], ["d", "e", "f"], [0.1, 0.5, 0.2])(PromptedEncoder())
    assert calls == [("query", None), ("document", None), ("query", None), (None, "doc: "), (None, None)]
