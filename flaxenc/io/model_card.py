"""Model cards (README.md) in sentence-transformers' format: facts in, markdown out.

The layout follows ST 6's card (sentence_transformers/sentence_transformer/model_card_template.md):
YAML front matter, model description, "Full Model Architecture" as `str(SentenceTransformer(folder))`
prints it, usage, evaluation, training details, framework versions. A training card also carries the
"Training" block of ST 2.x cards (DataLoader, Loss, parameters of the fit()-method). ST's names for
flaxenc's modules and losses come from flaxenc/io/st_names.py.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from flaxenc import losses

# ST's model_card.py get_model_specific_metadata names.
SIMILARITY_NAMES = {
    "cosine": "Cosine Similarity",
    "dot": "Dot Product",
    "euclidean": "Euclidean Distance",
    "manhattan": "Manhattan Distance",
}
# The description ST's evaluators give their section of the card.
EVALUATOR_DESCRIPTIONS = {
    "EmbeddingSimilarityEvaluator": "Semantic Similarity",
    "BinaryClassificationEvaluator": "Binary Classification",
    "TripletEvaluator": "Triplet",
    "InformationRetrievalEvaluator": "Information Retrieval",
    "ParaphraseMiningEvaluator": "Paraphrase Mining",
    "MSEEvaluator": "Knowledge Distillation",
    "RerankingEvaluator": "Reranking",
    "TranslationEvaluator": "Translation",
    "SequentialEvaluator": "Sequential",
}
TAGS = ("sentence-transformers", "sentence-similarity", "feature-extraction", "dense", "flaxenc")
_ST_DOCS = "https://sbert.net/docs/package_reference/sentence_transformer"

# ----------------------------------------------------------------------------- facts


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What any saved folder's card says."""

    # str(SentenceTransformer(folder)), from flaxenc.io.st_names.architecture_text().
    architecture: str
    max_seq_length: int
    embedding_dimension: int
    similarity_fn_name: str = "cosine"
    # A hub id, when the model was loaded from the hub.
    base_model: str | None = None
    # The folder, as the usage snippets load it.
    path: str = "path/to/model"
    # Library name -> version, from framework_versions().
    versions: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """One evaluator call: its metrics as the evaluator returned them (keys prefixed with its name)."""

    evaluator: str  # the class name, as ST's: EmbeddingSimilarityEvaluator
    name: str  # the evaluator's name (its data)
    metrics: Mapping[str, float]
    primary_metric: str | None
    step: int
    epoch: float
    split: str = "validation"  # or "test"


@dataclasses.dataclass(frozen=True)
class TrainingCard:
    """What a training run adds to the card; field names follow the run config's."""

    train_path: str
    train_rows: int
    columns: tuple[str, ...]  # text columns in the loss's order, then the label column
    loss: str  # ST's class name, e.g. CosineSimilarityLoss
    loss_config: Mapping[str, Any]  # ST's get_config_dict() of that loss (flaxenc.io.st_names.st_loss_config)
    batch_size: int
    steps_per_epoch: int  # the "DataLoader" length: batches an epoch
    epochs: int
    total_steps: int  # optimizer steps of the run
    learning_rate: float
    scheduler: str
    warmup_steps: int
    weight_decay: float
    max_grad_norm: float
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    accumulation_steps: int = 1
    seed: int = 42
    dropout: bool = True
    dtype: str = "float32"
    shuffle: bool = True
    drop_last: bool = False
    evaluator: str | None = None  # the evaluator's class name
    evaluation_steps: int = 0
    evaluations: tuple[EvaluationResult, ...] = ()
    # Rows of the training-logs table: {"Epoch", "Step", "Training Loss", <primary metric>}.
    training_logs: tuple[Mapping[str, Any], ...] = ()
    # The step whose model this folder holds (bold in the logs).
    saved_step: int | None = None
    # Prompts prepended at training time (ST's `prompts` training argument), or None.
    prompts: Any = None


def framework_versions() -> dict[str, str]:
    """The versions a card lists, as ST's get_versions() does for its own stack."""
    import flax
    import jax
    import optax
    import tokenizers
    import transformers

    from flaxenc import __version__

    return {
        "Python": platform.python_version(),
        "flaxenc": __version__,
        "JAX": jax.__version__,
        "Flax": flax.__version__,
        "Optax": optax.__version__,
        "Transformers": transformers.__version__,
        "Tokenizers": tokenizers.__version__,
    }


# ----------------------------------------------------------------------------- rendering

# ST 6's model_card_template.md, the parts that apply to a flaxenc folder; {{ }} are literal braces.
_CARD = """\
{front_matter}

# {title}

This is a [sentence-transformers](https://www.SBERT.net) model{origin}, {verb} with flaxenc (JAX/Flax). It maps \
sentences & paragraphs to a {dimension}-dimensional dense vector space and can be used for semantic textual \
similarity, semantic search, paraphrase mining, text classification, clustering, and more.

## Model Details

### Model Description
- **Model Type:** Sentence Transformer
{base_model_line}
- **Maximum Sequence Length:** {max_seq_length} tokens
- **Output Dimensionality:** {dimension} dimensions
- **Similarity Function:** {similarity}{dataset_line}

### Model Sources

- **Documentation:** [Sentence Transformers Documentation](https://sbert.net)
- **Repository:** [Sentence Transformers on GitHub](https://github.com/huggingface/sentence-transformers)

### Full Model Architecture

```
{architecture}
```

## Usage

### Direct Usage (Sentence Transformers)

First install the Sentence Transformers library:

```bash
pip install -U sentence-transformers
```
Then you can load this model and run inference.
```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer({path})
# Run inference
{sentences}
embeddings = model.encode(sentences)
print(embeddings.shape)
# [3, {dimension}]

# Get the similarity scores for the embeddings
similarities = model.similarity(embeddings, embeddings)
print(similarities.shape)
# [3, 3]
```

### Direct Usage (flaxenc)

The same embeddings in JAX/Flax:
```python
import flaxenc
from flaxenc.evaluation import SIMILARITY_MATRIX

encoder = flaxenc.SentenceEncoder.from_pretrained({path})
{sentences}
embeddings = encoder.encode(sentences)
print(embeddings.shape)
# (3, {dimension})

# The model's similarity function ({similarity_fn_name})
similarities = SIMILARITY_MATRIX["{similarity_fn_name}"](embeddings, embeddings)
print(similarities.shape)
# (3, 3)
```
{training}
{versions_heading} Framework Versions
{versions}

## Citation

### BibTeX

#### Sentence Transformers
```bibtex
@inproceedings{{reimers-2019-sentence-bert,
    title = "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks",
    author = "Reimers, Nils and Gurevych, Iryna",
    booktitle = "Proceedings of the 2019 Conference on Empirical Methods in Natural Language Processing",
    month = "11",
    year = "2019",
    publisher = "Association for Computational Linguistics",
    url = "https://arxiv.org/abs/1908.10084",
}}
```
"""
_USAGE_SENTENCES = """\
sentences = [
    'The weather is lovely today.',
    "It's so sunny outside!",
    'He drove to the stadium.',
]"""

_EVALUATION = """
#### {description}

* Dataset: `{name}` ({split})
* Model at step {step} (epoch {epoch})
* Evaluated with [<code>{evaluator}</code>]({docs}), numbers as ST computes them

{table}
"""

# ST 6's "Training Details", then the "Training" block of ST 2.x cards (DataLoader, Loss, fit() parameters).
_TRAINING = """
## Training Details

### Training Dataset

#### {dataset_name}

* Dataset: `{path}`
* Size: {rows:,} training samples
* Columns: {columns}
* Loss: [<code>{loss}</code>]({loss_docs}) with these parameters:
{loss_json}

### Training Hyperparameters

{hyperparameters}

### Training (sentence-transformers 2.x format)

The model was trained with the parameters:

**DataLoader**:

`train.data.BatchIterator` of length {steps_per_epoch} with parameters:
```
{loader}
```

**Loss**:

`sentence_transformers.sentence_transformer.losses.{loss_file}.{loss}` with parameters:
  ```
  {loss_config}
  ```

Parameters of the fit()-Method:
```
{fit_parameters}
```
{logs}"""


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value  # ST's format_log


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A left-aligned markdown table, columns as wide as their widest cell (transformers' make_markdown_table)."""
    keys = list(rows[0])
    cells = [[str(row.get(key, "-")) for key in keys] for row in rows]
    widths = [max(len(key), *(len(row[i]) for row in cells)) for i, key in enumerate(keys)]

    def line(values):
        return "".join(f"| {value:<{width}} " for value, width in zip(values, widths)) + "|"

    return "\n".join([line(keys), "".join(f"|:{'-' * width}-" for width in widths) + "|", *map(line, cells)])


def _bold(row: Mapping[str, Any]) -> dict[str, str]:
    return {key: f"**{_round(value)}**" for key, value in row.items()}


def _strip_name(result: EvaluationResult) -> tuple[dict[str, Any], str | None]:
    """Metrics without the evaluator's name prefix, and the primary metric likewise (as ST's card)."""
    prefix = f"{result.name}_" if result.name else ""
    if not prefix or not all(key.startswith(prefix) for key in result.metrics):
        return dict(result.metrics), result.primary_metric
    metrics = {key[len(prefix) :]: value for key, value in result.metrics.items()}
    primary = result.primary_metric
    return metrics, primary[len(prefix) :] if primary and primary.startswith(prefix) else primary


def _front_matter(model: ModelFacts, training: TrainingCard | None) -> str:
    data: dict[str, Any] = {"tags": list(TAGS)}
    if training:
        data["tags"] += [f"dataset_size:{training.train_rows}", f"loss:{training.loss}"]
    if model.base_model:
        data["base_model"] = model.base_model
    data.update({"pipeline_tag": "sentence-similarity", "library_name": "sentence-transformers"})
    metrics = [key for result in (training.evaluations if training else ()) for key in _strip_name(result)[0]]
    if metrics:
        data["metrics"] = list(dict.fromkeys(metrics))
    return "---\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True) + "---"


def _evaluation(result: EvaluationResult) -> str:
    metrics, primary = _strip_name(result)
    rows = [
        _bold({"Metric": key, "Value": value}) if key == primary else {"Metric": key, "Value": _round(value)}
        for key, value in metrics.items()
    ]
    return _EVALUATION.format(
        description=EVALUATOR_DESCRIPTIONS.get(result.evaluator, result.evaluator),
        name=result.name,
        split=result.split,
        step=result.step,
        epoch=_round(result.epoch),
        evaluator=result.evaluator,
        docs=f"{_ST_DOCS}/evaluation.html#sentence_transformers.sentence_transformer.evaluation.{result.evaluator}",
        table=markdown_table(rows),
    )


def _training_logs(training: TrainingCard) -> str:
    if not training.training_logs:
        return ""
    rows = [_bold(row) if row.get("Step") == training.saved_step else row for row in training.training_logs]
    table = markdown_table([{key: _round(value) for key, value in row.items()} for row in rows])
    if len(rows) > 100:  # as ST's card
        table = f"<details><summary>Click to expand</summary>\n\n{table}\n</details>"
    if any(row.get("Step") == training.saved_step for row in training.training_logs):
        table += "\n* The bold row denotes the saved checkpoint."
    return f"\n### Training Logs\n\n{table}\n"


def _training(training: TrainingCard) -> str:
    hyperparameters = {
        "batch_size": training.batch_size,
        "steps_per_epoch": training.steps_per_epoch,
        "epochs": training.epochs,
        "total_steps": training.total_steps,
        "learning_rate": training.learning_rate,
        "scheduler": training.scheduler,
        "warmup_steps": training.warmup_steps,
        "weight_decay": training.weight_decay,
        "max_grad_norm": training.max_grad_norm,
        "optimizer": "AdamW (flaxenc.optim.adamw: torch.optim.AdamW's update, no decay on biases and LayerNorms)",
        "adam_beta1": training.adam_beta1,
        "adam_beta2": training.adam_beta2,
        "adam_epsilon": training.adam_epsilon,
        "accumulation_steps": training.accumulation_steps,
        "evaluation_steps": training.evaluation_steps,
        "seed": training.seed,
        "dropout": training.dropout,
        "dtype": training.dtype,
    }
    if training.prompts:
        hyperparameters["prompts"] = training.prompts
    fit_parameters = {
        "epochs": training.epochs,
        "evaluation_steps": training.evaluation_steps,
        "evaluator": f"flaxenc.evaluation.{training.evaluator}" if training.evaluator else "NoneType",
        "max_grad_norm": training.max_grad_norm,
        "optimizer_class": "flaxenc.optim.adamw",
        "optimizer_params": {"lr": training.learning_rate},
        "scheduler": training.scheduler,
        "steps_per_epoch": training.steps_per_epoch,
        "warmup_steps": training.warmup_steps,
        "weight_decay": training.weight_decay,
    }
    columns = [f"<code>{column}</code>" for column in training.columns]
    return _TRAINING.format(
        dataset_name=training.train_path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1],
        path=training.train_path,
        rows=training.train_rows,
        columns=" and ".join(columns) if len(columns) <= 2 else ", ".join(columns[:-1]) + ", and " + columns[-1],
        loss=training.loss,
        loss_docs=f"{_ST_DOCS}/losses.html#{training.loss.lower()}",
        loss_json=textwrap.indent(f"```json\n{json.dumps(training.loss_config, indent=4)}\n```", "  "),
        hyperparameters="\n".join(f"- `{key}`: {value}" for key, value in hyperparameters.items()),
        steps_per_epoch=training.steps_per_epoch,
        loader={"batch_size": training.batch_size, "shuffle": training.shuffle, "drop_last": training.drop_last},
        # ST's loss files are named as flaxenc's loss keys: losses/cosine_similarity.py, ...
        loss_file={cls.__name__: name for name, cls in {**losses.LOSSES, "softmax": losses.SoftmaxLoss}.items()}[training.loss],
        loss_config=dict(training.loss_config),
        fit_parameters=json.dumps(fit_parameters, indent=4, sort_keys=True),
        logs=_training_logs(training),
    )


def render_model_card(model: ModelFacts, training: TrainingCard | None = None) -> str:
    """The README.md of a saved folder: ST's card layout; `training` adds evaluation and training sections."""
    base, link = model.base_model, f"https://huggingface.co/{model.base_model}"
    unknown_base = "<!-- - **Base model:** [Unknown](https://huggingface.co/unknown) -->"  # as ST's card
    name = model.similarity_fn_name
    sections, dataset_line = "", ""
    if training and training.evaluations:
        sections += "\n## Evaluation\n\n### Metrics\n" + "".join(map(_evaluation, training.evaluations))
    if training:
        sections += _training(training)
        dataset_line = f"\n- **Training Dataset:** `{training.train_path}` ({training.train_rows:,} rows)"
    return _CARD.format(
        front_matter=_front_matter(model, training),
        title=f"SentenceTransformer based on {base}" if base else "SentenceTransformer",
        origin=f" finetuned from [{base}]({link})" if base else "",
        verb="trained" if training else "saved",
        base_model_line=f"- **Base model:** [{base}]({link})" if base else unknown_base,
        max_seq_length=model.max_seq_length,
        dimension=model.embedding_dimension,
        similarity=SIMILARITY_NAMES.get(name, name.replace("_", " ").title()),
        dataset_line=dataset_line,
        architecture=model.architecture,
        path=json.dumps(model.path),
        sentences=_USAGE_SENTENCES,
        similarity_fn_name=name,
        training=sections,
        versions_heading="###" if training else "##",  # under Training Details, as ST's card
        versions="\n".join(f"- {library}: {version}" for library, version in model.versions.items()),
    )
