"""The Python trainer (train/trainer.py): ST's SentenceTransformerTrainer shape, flaxenc-train's loop.

A Trainer run ends with the parameters of the flaxenc-train run its arguments describe (so with
ST's fit(), which tests/test_train_recipes.py compares that loop with); a dict of datasets trains
each with its own loss; the evaluator object runs; losses that cannot be written as a config and
mismatched loss dicts are errors naming them.
"""

from __future__ import annotations

import csv
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import build_st_model, read_stsb
from test_train_program import QUICKSTART, read_weights, tiny_overrides

import flaxenc
from flaxenc import evaluation, losses
from flaxenc_train.config import ConfigError, load_config
from flaxenc_train.loop import Run, train
from flaxenc_train.trainer import Trainer, TrainingArguments

ROWS, STEPS = 96, 12


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, bert_tokenizer_path):
    folder, _ = build_st_model(tmp_path_factory.mktemp("trainer") / "model", bert_tokenizer_path)
    first, second, scores = read_stsb("train")
    return folder, {"sentence1": first[:ROWS], "sentence2": second[:ROWS], "score": [s / 5 for s in scores[:ROWS]]}


def test_trainer_equals_the_flaxenc_train_run_of_its_arguments(tmp_path, tiny):
    folder, rows = tiny
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"), batch_size=8, learning_rate=1e-3, lr_scheduler_type="linear",
        warmup_ratio=0.1, logging_steps=1, save_steps=0, dropout=False,
    )
    model = flaxenc.SentenceEncoder.from_pretrained(folder)
    summary = Trainer(model, args, datasets.Dataset.from_dict(rows), losses.CosineSimilarityLoss()).train()
    assert summary.steps == STEPS

    table = tmp_path / "pairs.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence1", "sentence2", "score"])
        writer.writerows(zip(*rows.values()))
    overrides = [
        f"output_dir={tmp_path / 'program'}", f"model.name_or_path={folder}", f"data.train.path={table}",
        "optimizer.learning_rate=1e-3", "optimizer.warmup_ratio=0.1", "evaluation.evaluator=", "checkpoint.every_steps=0",
        "batch_size=8", "epochs=1", "dropout=false", "log_every=1",
    ]
    program = train(load_config(QUICKSTART, overrides), progress=False)
    expected, actual = read_weights(Path(program.final_model)), read_weights(Path(summary.final_model))
    assert max(float(np.abs(expected[k] - actual[k]).max()) for k in expected) == 0.0
    assert summary.final_loss == program.final_loss
    # The trained parameters are the model's now, as after ST's trainer.
    np.testing.assert_allclose(
        model.encode(rows["sentence1"][:4]), flaxenc.SentenceEncoder.from_pretrained(summary.final_model).encode(rows["sentence1"][:4]),
        atol=1e-6,
    )


def test_a_dict_of_datasets_with_their_losses_and_an_evaluator(tmp_path, tiny):
    folder, rows = tiny
    pairs = datasets.Dataset.from_dict({"anchor": rows["sentence1"], "positive": rows["sentence2"]})
    scored = datasets.Dataset.from_dict(rows)
    evaluator = evaluation.EmbeddingSimilarityEvaluator(rows["sentence1"][:32], rows["sentence2"][:32], rows["score"][:32], name="dev")
    args = TrainingArguments(output_dir=str(tmp_path / "run"), batch_size=8, max_steps=6, save_steps=3, eval_steps=3, dropout=False)
    model = flaxenc.SentenceEncoder.from_pretrained(folder)
    trainer = Trainer(
        model, args, {"pairs": pairs, "scored": scored},
        {"pairs": losses.MultipleNegativesRankingLoss(), "scored": losses.CoSENTLoss()}, evaluator=evaluator,
    )
    summary = trainer.train()
    assert summary.steps == 6 and summary.primary_metric == "dev_spearman_cosine"
    again = evaluator(flaxenc.SentenceEncoder.from_pretrained(summary.final_model))
    assert summary.eval["dev_spearman_cosine"] == pytest.approx(again["dev_spearman_cosine"], abs=1e-6)
    assert (tmp_path / "run" / "config.yaml").is_file() and (tmp_path / "run" / "final" / "README.md").is_file()


def test_bad_losses_are_named(tmp_path, tiny):
    folder, rows = tiny
    model = flaxenc.SentenceEncoder.from_pretrained(folder)
    data = {"a": datasets.Dataset.from_dict(rows), "b": datasets.Dataset.from_dict(rows)}
    with pytest.raises(ValueError, match=r"no loss for dataset\(s\) \['b'\]"):
        Trainer(model, TrainingArguments(str(tmp_path / "x")), data, {"a": losses.CoSENTLoss()})
    guided = losses.GISTEmbedLoss(guide=model.model)
    with pytest.raises(TypeError, match="GISTEmbedLoss.guide is a SentenceModel; .* give it by name or path"):
        Trainer(model, TrainingArguments(str(tmp_path / "y")), data["a"], guided).config()


def test_duplicate_free_batches_stream_the_data(tmp_path, tiny):
    """ST's NO_DUPLICATES sampler is the streamed pipeline's: the Trainer streams its dataset for it, one
    epoch being the records over the batch; an in-memory table asked for it is an error, not ignored; a
    streamed mixture without max_steps has no epoch length."""
    folder, rows = tiny
    model = flaxenc.SentenceEncoder.from_pretrained(folder)
    args = TrainingArguments(str(tmp_path / "trainer"), batch_size=8, num_train_epochs=2, batch_sampler="no_duplicates", dropout=False)
    pairs = datasets.Dataset.from_dict({"anchor": rows["sentence1"], "positive": rows["sentence2"]})
    trainer = Trainer(model, args, pairs, losses.MultipleNegativesRankingLoss())
    summary = trainer.train()
    assert trainer.run.streamed and trainer.run.batches.no_duplicates
    assert summary.steps == 2 * ROWS // 8 and trainer.run.batches.rows == ROWS

    config = load_config(QUICKSTART, tiny_overrides(tmp_path / "program", "data.no_duplicates=true", "data.streaming=false"))
    with pytest.raises(ConfigError, match="data.no_duplicates: true needs streamed input"):
        Run(config, progress=False)
    mixture = {"a": pairs, "b": pairs}
    with pytest.raises(ConfigError, match="max_steps: a mixture of streamed datasets has no epoch length"):
        Trainer(model, TrainingArguments(str(tmp_path / "mixture")), mixture, losses.MultipleNegativesRankingLoss()).train()
