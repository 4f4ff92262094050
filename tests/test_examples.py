"""examples/: ST's example scripts ported to flaxenc give ST's numbers on the shared data.

Each example runs as a user would run it (its main() with command-line arguments), and ST's own code
runs the same task on the same inputs through its public API: semantic search, paraphrase mining
and clustering with all-MiniLM-L6-v2 (the same hits, pairs and communities, scores within 1e-5);
the two training scripts on a tiny random BERT with dropout off, against ST's
SentenceTransformerTrainer (the trainer ST's scripts use) given the same batches in the same order:
final parameters within 1e-4 and the test evaluator's metrics within 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import build_st_model, minilm_folder, read_stsb
from test_train_program import read_weights

from bench.data import SPLITS
from bench.data import read_stsb as stsb_rows

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")
# examples/ and bench/ import from the repo root, which conftest puts on sys.path (they are not installed).


@pytest.fixture(scope="module")
def st_minilm():
    from sentence_transformers import SentenceTransformer

    read_stsb("test")  # skips without the shared data
    return SentenceTransformer(str(minilm_folder()), device="cpu")


def test_semantic_search(st_minilm):
    from sentence_transformers import util

    from examples import semantic_search
    from examples.common import unique

    hits = semantic_search.main(["--model", str(minilm_folder()), "--corpus-size", "500", "--queries", "8"])
    rows = stsb_rows("test")
    corpus = unique(second for _, second, _ in rows)[:500]
    queries = [first for first, _, _ in rows[:8]]
    expected = util.semantic_search(
        st_minilm.encode_query(queries, convert_to_tensor=True), st_minilm.encode_document(corpus, convert_to_tensor=True), top_k=5
    )
    assert [[h["corpus_id"] for h in q] for q in hits] == [[h["corpus_id"] for h in q] for q in expected]
    scores = np.array([[h["score"] for h in q] for q in hits]) - np.array([[h["score"] for h in q] for q in expected])
    assert np.abs(scores).max() <= 1e-5


def test_paraphrase_mining(st_minilm):
    from sentence_transformers import util

    from examples import paraphrase_mining
    from examples.common import unique

    pairs = paraphrase_mining.main(["--model", str(minilm_folder()), "--sentences", "400"])
    sentences = unique(text for first, second, _ in stsb_rows("dev") for text in (first, second))[:400]
    expected = util.paraphrase_mining(st_minilm, sentences)
    assert len(pairs) == len(expected) > 100
    # The pairs in order, where scores are not tied within float noise (ST's order of near-ties is torch's).
    top = 100
    assert [(i, j) for _, i, j in pairs[:top]] == [(i, j) for _, i, j in expected[:top]]
    assert np.abs(np.array([s for s, _, _ in pairs]) - np.array([s for s, _, _ in expected])).max() <= 1e-5


def test_clustering(st_minilm):
    from sentence_transformers import util

    from examples import clustering
    from examples.common import unique

    clusters = clustering.main(["--model", str(minilm_folder()), "--sentences", "1200"])
    corpus = unique(text for split in SPLITS for first, second, _ in stsb_rows(split) for text in (first, second))[:1200]
    embeddings = st_minilm.encode(corpus, batch_size=64, convert_to_tensor=True)
    expected = util.community_detection(embeddings, min_community_size=3, threshold=0.75)
    assert len(clusters) >= 3
    assert [sorted(c) for c in clusters] == [sorted(c) for c in expected]
    assert [c[0] for c in clusters] == [c[0] for c in expected]  # the same centres


def st_trainer_fit(folder, rows: dict, loss_name: str, output, batch_size: int, epochs: int = 1):
    """ST's SentenceTransformerTrainer with the examples' arguments (warmup_steps 0.1: a ratio in transformers 5), on
    `rows` in the order given, dropout off."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    from bench.stsb_e2e import sequential_batches

    torch.manual_seed(0)
    model = SentenceTransformer(str(folder), device="cpu")
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output), num_train_epochs=epochs, per_device_train_batch_size=batch_size, learning_rate=5e-5,
        weight_decay=0.0, lr_scheduler_type="linear", warmup_steps=0.1, save_strategy="no", report_to=[],
        use_cpu=True, seed=42, disable_tqdm=True,
    )
    loss = getattr(losses, loss_name)(model)
    with sequential_batches():
        SentenceTransformerTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_dict(rows), loss=loss).train()
    model.save(str(output / "final"))
    return model, output / "final"


def compare_training(result, initial_folder, st_model, st_folder, prefix: str):
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    from examples.training_stsbenchmark import stsb

    actual, expected = read_weights(Path(result["summary"].final_model)), read_weights(st_folder)
    assert actual.keys() == expected.keys()
    diff = max(float(np.abs(actual[k] - expected[k]).max()) for k in expected)
    initial = read_weights(Path(initial_folder))
    moved = max(float(np.abs(expected[k] - initial[k]).max()) for k in expected)
    print(f"parameters: max abs diff {diff:.2e}, largest change in training {moved:.2e}")
    assert diff <= 1e-4 and moved > 10 * diff  # and training did move them
    test = stsb("test", 200)
    st_metrics = EmbeddingSimilarityEvaluator(
        test["sentence1"], test["sentence2"], test["score"], main_similarity="cosine", name="sts-test"
    )(st_model)
    for key in (f"{prefix}_pearson_cosine", f"{prefix}_spearman_cosine"):
        print(key, result["test"][key], st_metrics[key])
        assert abs(result["test"][key] - st_metrics[key]) <= 1e-4


def _epoch_rows(run, output, columns):
    """The training rows (the Trainer wrote them to output/data/train.parquet) in the order of the first epoch."""
    table = datasets.Dataset.from_parquet(str(output / "data" / "train.parquet"))
    order = run.batches.batch_iterator.epoch_order(0)
    return {name: [table[name][int(i)] for i in order] for name in columns}


def test_training_stsbenchmark(tmp_path, bert_tokenizer_path):
    from examples import training_stsbenchmark

    folder, _ = build_st_model(tmp_path / "tiny", bert_tokenizer_path)
    result = training_stsbenchmark.main([
        "--model", str(folder), "--epochs", "1", "--train-pairs", "96", "--batch-size", "8", "--dev-pairs", "32",
        "--test-pairs", "200", "--no-dropout", "--output", str(tmp_path / "flaxenc"),
    ])
    assert result["summary"].steps == 12
    rows = _epoch_rows(result["run"], tmp_path / "flaxenc", ("sentence1", "sentence2", "score"))
    st_model, st_folder = st_trainer_fit(folder, rows, "CosineSimilarityLoss", tmp_path / "st", batch_size=8)
    compare_training(result, folder, st_model, st_folder, "sts-test")


def test_training_mnrl(tmp_path, bert_tokenizer_path):
    from examples import training_mnrl

    folder, _ = build_st_model(tmp_path / "tiny", bert_tokenizer_path)
    result = training_mnrl.main([
        "--model", str(folder), "--train-pairs", "96", "--batch-size", "16", "--dev-pairs", "32",
        "--test-pairs", "200", "--no-dropout", "--output", str(tmp_path / "flaxenc"),
    ])
    assert result["summary"].steps == 6
    rows = _epoch_rows(result["run"], tmp_path / "flaxenc", ("anchor", "positive"))
    st_model, st_folder = st_trainer_fit(folder, rows, "MultipleNegativesRankingLoss", tmp_path / "st", batch_size=16)
    compare_training(result, folder, st_model, st_folder, "sts-test")
