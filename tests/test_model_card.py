"""Model cards: the README.md that SentenceEncoder.save and flaxenc-train write in ST's card format.

The architecture block must equal what PyTorch ST prints for the saved folder, ST must load the folder
with the card in place, and a training run's card must state the run's config and results.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import textwrap

import numpy as np
import pytest
import torch
import yaml
from conftest import SENTENCES, build_st_model
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import losses as st_losses
from test_train_program import QUICKSTART, tiny_overrides

import flaxenc
from flaxenc import losses
from flaxenc.io.st_names import architecture_text, st_loss_config
from flaxenc_train.config import load_config
from flaxenc_train.loop import train

# --------------------------------------------------------------------------- reading a card back


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def section(card: str, heading: str) -> str:
    """The text under `heading` up to the next heading of the same or a higher level (outside code blocks)."""
    lines = card.splitlines()
    start = lines.index(heading) + 1
    level, in_code = len(heading.split(" ")[0]), False
    for end in range(start, len(lines)):
        in_code ^= lines[end].lstrip().startswith("```")
        hashes = lines[end].split(" ")[0]
        if not in_code and hashes and set(hashes) == {"#"} and len(hashes) <= level:
            return "\n".join(lines[start:end])
    return "\n".join(lines[start:])


def code_blocks(text: str, language: str = "") -> list[str]:
    blocks = re.findall(rf"^ *```{language}\n(.*?)\n *```", text, re.DOTALL | re.MULTILINE)
    return [textwrap.dedent(block) for block in blocks]


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table in `text`, as rows of {header: cell} with the bold markers removed."""
    found, lines = [], text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("|") and index + 1 < len(lines) and lines[index + 1].startswith("|:"):
            header = [cell.strip() for cell in line.strip("|").split("|")]
            rows = []
            for row in lines[index + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(header, (cell.strip().strip("*") for cell in row.strip("|").split("|")))))
            found.append(rows)
    return found


def bullet_values(text: str) -> dict[str, str]:
    return dict(re.findall(r"^- `(\w+)`: (.*)$", text, re.MULTILINE))


# --------------------------------------------------------------------------- save(): architecture and loading

STACKS = {
    "mean": {},
    "roberta-max-dense-dropout": {  # recipe 2's stack
        "arch": "roberta",
        "pooling_mode": "max",
        "heads": (("dense", 8, torch.nn.ReLU(), True), ("dropout", 0.5)),
    },
    "normalize": {"heads": (("normalize",),)},
    "layernorm": {"heads": (("layernorm",),)},
    "cls+mean-dense-identity": {"pooling_mode": ("cls", "mean"), "heads": (("dense", 8, None, False),)},
}


@pytest.mark.parametrize("stack", list(STACKS))
def test_saved_card_prints_st_architecture_and_st_loads_it(tmp_path, request, stack):
    kwargs = dict(STACKS[stack])
    roberta = kwargs.get("arch") == "roberta"
    tokenizer = request.getfixturevalue("roberta_tokenizer_path" if roberta else "bert_tokenizer_path")
    source, _ = build_st_model(tmp_path / "reference", tokenizer, **kwargs)
    encoder = flaxenc.SentenceEncoder.from_pretrained(source)
    folder = tmp_path / "saved"
    encoder.save(folder)

    card = (folder / "README.md").read_text(encoding="utf-8")
    st_model = SentenceTransformer(str(folder), device="cpu")
    st_model.eval()
    assert architecture_text(encoder.model) == str(st_model)
    assert code_blocks(section(card, "### Full Model Architecture")) == [str(st_model)]
    assert st_model._model_card_text == card  # ST read the card and loaded the folder with it in place

    meta = front_matter(card)
    assert meta["library_name"] == "sentence-transformers" and meta["pipeline_tag"] == "sentence-similarity"
    assert {"sentence-transformers", "sentence-similarity", "feature-extraction", "flaxenc"} <= set(meta["tags"])
    description = section(card, "### Model Description")
    assert f"- **Maximum Sequence Length:** {st_model.max_seq_length} tokens" in description
    assert f"- **Output Dimensionality:** {st_model.get_embedding_dimension()} dimensions" in description
    assert "- **Similarity Function:** Cosine Similarity" in description

    expected = st_model.encode(SENTENCES, batch_size=4, convert_to_numpy=True)
    actual = flaxenc.SentenceEncoder.from_pretrained(folder).encode(SENTENCES, batch_size=4)
    assert float(np.abs(actual - expected).max()) <= 1e-5


def test_saved_minilm_card(tmp_path, minilm_path):
    """all-MiniLM-L6-v2, read from its legacy-layout folder: the card describes it as ST does."""
    encoder = flaxenc.SentenceEncoder.from_pretrained(minilm_path)
    encoder.save(tmp_path / "saved")
    card = (tmp_path / "saved" / "README.md").read_text(encoding="utf-8")
    st_model = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    assert code_blocks(section(card, "### Full Model Architecture")) == [str(st_model)]
    assert "Normalize(" in str(st_model)
    description = section(card, "### Model Description")
    assert "- **Maximum Sequence Length:** 256 tokens" in description and st_model.max_seq_length == 256
    assert "- **Output Dimensionality:** 384 dimensions" in description


def test_card_usage_snippets_run_and_base_model_is_the_hub_id(tmp_path, bert_tokenizer_path, capsys):
    source, _ = build_st_model(tmp_path / "reference", bert_tokenizer_path)
    # A folder in the Hugging Face cache layout names the hub model it came from.
    cached = tmp_path / "hub" / "models--someone--tiny-bert" / "snapshots" / "0123abc"
    shutil.copytree(source, cached)
    encoder = flaxenc.SentenceEncoder.from_pretrained(cached)
    folder = tmp_path / "saved"
    encoder.save(folder)
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert front_matter(card)["base_model"] == "someone/tiny-bert"
    assert "# SentenceTransformer based on someone/tiny-bert" in card

    st_code, flaxenc_code = code_blocks(section(card, "## Usage"), "python")
    assert f'SentenceTransformer("{folder}")' in st_code and f'from_pretrained("{folder}")' in flaxenc_code
    for code in (st_code, flaxenc_code):
        capsys.readouterr()
        exec(code, {})  # noqa: S102 (the card's own snippet, run as a reader would)
        shape, similarities_shape = capsys.readouterr().out.splitlines()
        assert shape == "(3, 32)" and "3, 3" in similarities_shape  # as the comments in the snippets say
    assert "# [3, 32]" in st_code and "# (3, 32)" in flaxenc_code


def test_loss_configs_are_st_get_config_dict(tmp_path, bert_tokenizer_path):
    _, st_model = build_st_model(tmp_path, bert_tokenizer_path)
    cases = [
        (losses.CosineSimilarityLoss(), st_losses.CosineSimilarityLoss(st_model)),
        (
            losses.CosineSimilarityLoss(loss_fct="l1"),
            st_losses.CosineSimilarityLoss(st_model, loss_fct=torch.nn.L1Loss()),
        ),
        (
            losses.ContrastiveLoss(distance_metric="euclidean", margin=0.2, size_average=True),
            st_losses.ContrastiveLoss(
                st_model, st_losses.SiameseDistanceMetric.EUCLIDEAN, margin=0.2, size_average=True
            ),
        ),
        (losses.OnlineContrastiveLoss(), st_losses.OnlineContrastiveLoss(st_model)),
        (
            losses.MultipleNegativesRankingLoss(scale=10.0),
            st_losses.MultipleNegativesRankingLoss(st_model, scale=10.0, gather_across_devices=True),
        ),
        (losses.CoSENTLoss(), st_losses.CoSENTLoss(st_model)),
        (losses.AnglELoss(), st_losses.AnglELoss(st_model)),
        (
            losses.TripletLoss(distance_metric="cosine", triplet_margin=1.0),
            st_losses.TripletLoss(st_model, st_losses.TripletDistanceMetric.COSINE, triplet_margin=1.0),
        ),
        (losses.MSELoss(), st_losses.MSELoss(st_model)),
        (
            losses.MatryoshkaLoss(losses.CoSENTLoss(), (16, 32)),
            st_losses.MatryoshkaLoss(st_model, st_losses.CoSENTLoss(st_model), [16, 32]),
        ),
    ]
    for ours, theirs in cases:
        name, config = st_loss_config(ours)
        assert name == type(theirs).__name__
        # JSON, as the card prints it: tuples and lists alike
        assert json.dumps(config, sort_keys=True) == json.dumps(theirs.get_config_dict(), sort_keys=True), name


# --------------------------------------------------------------------------- flaxenc-train: the training card


def test_training_run_card_states_the_config_and_results(tmp_path, bert_tokenizer_path):
    output = tmp_path / "run"
    test_data = "{path: data/quickstart_dev.csv, text_columns: [sentence1, sentence2], label_column: score, limit: 40}"
    overrides = tiny_overrides(
        output,
        "data.train.limit=44",
        "epochs=2",
        "log_every=2",
        "evaluation.every_steps=4",
        "evaluation.data.limit=40",
        f"evaluation.test_data={test_data}",
        "optimizer.learning_rate=5e-3",
    )
    config = load_config(QUICKSTART, overrides)
    summary = train(config, progress=False)
    saved = json.loads((output / "summary.json").read_text())
    assert saved["steps"] == summary.steps
    steps_per_epoch = math.ceil(44 / config.batch_size)  # 6: the last batch is short
    assert summary.steps == 2 * steps_per_epoch
    warmup = math.ceil(config.optimizer.warmup_ratio * summary.steps)
    card = (output / "final" / "README.md").read_text(encoding="utf-8")

    meta = front_matter(card)
    assert "loss:CosineSimilarityLoss" in meta["tags"] and "dataset_size:44" in meta["tags"]
    assert meta["metrics"] == ["pearson_cosine", "spearman_cosine"]

    dataset = section(card, "### Training Dataset")
    assert f"* Dataset: `{config.data.train.path}`" in dataset
    assert "* Size: 44 training samples" in dataset
    assert "* Columns: <code>sentence1</code>, <code>sentence2</code>, and <code>score</code>" in dataset
    assert "* Loss: [<code>CosineSimilarityLoss</code>]" in dataset
    loss_config = {
        "loss_fct": "torch.nn.modules.loss.MSELoss",
        "cos_score_transformation": "torch.nn.modules.linear.Identity",
    }
    assert json.loads(code_blocks(dataset, "json")[0]) == loss_config

    values = bullet_values(section(card, "### Training Hyperparameters"))
    assert int(values["batch_size"]) == config.batch_size == 8
    assert int(values["steps_per_epoch"]) == steps_per_epoch
    assert int(values["epochs"]) == config.epochs
    assert int(values["total_steps"]) == summary.steps
    assert float(values["learning_rate"]) == config.optimizer.learning_rate == 5e-3
    assert values["scheduler"] == config.optimizer.scheduler == "warmuplinear"
    assert int(values["warmup_steps"]) == warmup == 2
    assert float(values["weight_decay"]) == config.optimizer.weight_decay
    assert float(values["max_grad_norm"]) == config.optimizer.max_grad_norm
    assert values["optimizer"].startswith("AdamW")
    assert int(values["evaluation_steps"]) == 4 and int(values["seed"]) == config.seed

    classic = section(card, "### Training (sentence-transformers 2.x format)")
    assert f"`train.data.BatchIterator` of length {steps_per_epoch} with parameters:" in classic
    assert "{'batch_size': 8, 'shuffle': True, 'drop_last': False}" in classic
    assert "`sentence_transformers.sentence_transformer.losses.cosine_similarity.CosineSimilarityLoss`" in classic
    assert str(loss_config) in classic
    fit = json.loads(code_blocks(classic)[-1])
    assert fit == {
        "epochs": 2,
        "evaluation_steps": 4,
        "evaluator": "flaxenc.evaluation.EmbeddingSimilarityEvaluator",
        "max_grad_norm": config.optimizer.max_grad_norm,
        "optimizer_class": "flaxenc.optim.adamw",
        "optimizer_params": {"lr": 5e-3},
        "scheduler": "warmuplinear",
        "steps_per_epoch": steps_per_epoch,
        "warmup_steps": warmup,
        "weight_decay": config.optimizer.weight_decay,
    }

    # Evaluation: the last validation score and the test score, as summary.json has them (rounded as ST's card).
    evaluation = section(card, "## Evaluation")
    assert "* Dataset: `quickstart_dev` (validation)" in evaluation
    assert "* Dataset: `quickstart_dev` (test)" in evaluation
    validation_table, test_table = tables(evaluation)
    for table, results in ((validation_table, saved["eval"]), (test_table, saved["test"])):
        assert {row["Metric"]: float(row["Value"]) for row in table} == {
            key.removeprefix("quickstart_dev_"): round(value, 4) for key, value in results.items()
        }
    assert "| **spearman_cosine** |" in evaluation  # the primary metric in bold, as ST's card

    # Training logs: one row per logged step; the evaluations as metrics.jsonl has them; the saved step in bold.
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    logs_text = section(card, "### Training Logs")
    (logs,) = tables(logs_text)
    metric = saved["primary_metric"]
    assert [int(row["Step"]) for row in logs] == sorted({r["step"] for r in records})
    for record in records:
        row = next(row for row in logs if int(row["Step"]) == record["step"])
        if record["kind"] == "eval":
            assert float(row[metric]) == round(record[metric], 4)
        else:
            assert float(row["Training Loss"]) == round(record["loss"], 4)
    assert f"| **{summary.steps}** " in logs_text and "* The bold row denotes the saved checkpoint." in logs_text

    versions = section(card, "### Framework Versions")
    for name in ("Python", "flaxenc", "JAX", "Flax", "Optax", "Transformers", "Tokenizers"):
        assert f"- {name}: " in versions

    # best/ holds an earlier step: its card gives that step's validation score and no test score.
    assert summary.best_model != summary.final_model, "pick settings where the best step is not the last"
    best_card = (output / "best" / "README.md").read_text(encoding="utf-8")
    best_eval = next(r for r in records if r["kind"] == "eval" and r["step"] == summary.best_step)
    best_evaluation = section(best_card, "## Evaluation")
    assert f"* Model at step {summary.best_step} " in best_evaluation and "(test)" not in best_evaluation
    (best_table,) = tables(best_evaluation)
    best_value = next(row for row in best_table if row["Metric"] == "spearman_cosine")["Value"]
    assert float(best_value) == round(best_eval[metric], 4)
    assert f"| **{summary.best_step}** " in section(best_card, "### Training Logs")

    # ST loads final/ and best/ with their cards in place; the embeddings are flaxenc's.
    for folder in (output / "final", output / "best"):
        st_model = SentenceTransformer(str(folder), device="cpu")
        st_model.eval()
        folder_card = (folder / "README.md").read_text(encoding="utf-8")
        assert st_model._model_card_text == folder_card
        assert code_blocks(section(folder_card, "### Full Model Architecture")) == [str(st_model)]
        expected = st_model.encode(SENTENCES, batch_size=4, convert_to_numpy=True)
        actual = flaxenc.SentenceEncoder.from_pretrained(folder).encode(SENTENCES, batch_size=4)
        assert float(np.abs(actual - expected).max()) <= 1e-5
