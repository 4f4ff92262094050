"""Training from Python, as ST users do: `Trainer(model, args, train_dataset, loss, evaluator).train()`.

The trainer runs flaxenc-train's loop (train/loop.py) on a config it writes, so a script needs no
YAML and no hand-written step loop, and every run is one flaxenc-train could rerun: the starting
model is saved to output_dir/initial_model, each in-memory dataset to output_dir/data/<name>.parquet,
and the arguments become the run's config.yaml. Resuming, checkpoints, logs, the model card and
every check of a flaxenc-train run come with it.

Defaults follow ST's fit() (the reference recipes' trainer), not SentenceTransformerTrainer's
(lr 5e-5, no weight decay, batch 8, 3 epochs): see the README's migration table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flaxenc import losses
from flaxenc.encoder import SentenceEncoder
from flaxenc_train.config import (
    CheckpointConfig,
    ConfigError,
    DataConfig,
    DatasetConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
    validate,
)
from flaxenc_train.loop import Run, Summary
from flaxenc_train.output import MARKER_NAME, check_output_dir

# ST's trainer takes the label from a column with one of these names; every other column is a text.
LABEL_COLUMNS = ("label", "labels", "score", "scores")
# transformers' lr_scheduler_type names, as ST's trainer takes them, and flaxenc's (ST fit()'s) equivalents.
HF_SCHEDULERS = {
    "linear": "warmuplinear",
    "cosine": "warmupcosine",
    "constant": "constantlr",
    "constant_with_warmup": "warmupconstant",
    "cosine_with_restarts": "warmupcosinewithhardrestarts",
}


@dataclasses.dataclass(frozen=True)
class TrainingArguments:
    """ST's SentenceTransformerTrainingArguments, by their names where flaxenc has the option."""

    output_dir: str
    num_train_epochs: int = 1
    # Optimizer steps to stop after (0: all epochs); a dict of datasets needs it (they are streamed).
    max_steps: int = 0
    # The global batch (all devices and processes), where ST's per_device_train_batch_size is per GPU.
    batch_size: int = 32
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    # transformers' names (linear, cosine, constant, ...) or ST fit()'s (warmuplinear, ...).
    lr_scheduler_type: str = "warmuplinear"
    warmup_steps: int | None = None
    warmup_ratio: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    gradient_accumulation_steps: int = 1
    seed: int = 42
    # Evaluate every N steps (0: at each epoch's end) and checkpoint every N steps (0: at the end).
    eval_steps: int = 0
    save_steps: int = 500
    save_total_limit: int = 2
    logging_steps: int = 10
    # "no_duplicates" (ST's NoDuplicatesBatchSampler: the data is streamed) or
    # "batch_sampler"; None: no duplicates for losses with in-batch negatives where the data is streamed
    # (a dict of datasets), and ST's default batches for one in-memory dataset.
    batch_sampler: str | None = None
    # Which dataset a batch comes from with a dict of datasets: "proportional" or "round_robin", as ST.
    multi_dataset_batch_sampler: str = "proportional"
    dropout: bool = True
    packing: bool = True
    resume: bool = True


class Trainer:
    """ST's SentenceTransformerTrainer for a SentenceEncoder: model, arguments, data, loss(es), evaluator.

    train_dataset: a datasets.Dataset, or a dict name -> Dataset (ST's multi-dataset training).
    Text columns are every column but the label (`label` or `score`), in order, as ST's trainer.
    loss: a flaxenc loss (flaxenc.losses), or a dict name -> loss matching the datasets; default CoSENTLoss (as ST).
    evaluator: any flaxenc evaluator; it runs every `eval_steps` and at the end of each epoch.
    """

    def __init__(self, model: SentenceEncoder, args: TrainingArguments, train_dataset, loss=None, evaluator=None):
        self.model, self.args, self.evaluator = model, args, evaluator
        self.datasets = dict(train_dataset) if isinstance(train_dataset, Mapping) else {"train": train_dataset}
        self.losses = loss if isinstance(loss, Mapping) else dict.fromkeys(self.datasets, loss or losses.CoSENTLoss())
        missing = sorted(set(self.datasets) - set(self.losses))
        if missing:
            raise ValueError(f"loss: no loss for dataset(s) {missing}; the dict has {sorted(self.losses)}")
        self.output_dir = Path(args.output_dir)

    def config(self) -> TrainConfig:
        """The flaxenc-train config of this training (the files it names are written by `train`)."""
        args = self.args
        specs = tuple(self._dataset_config(name, dataset) for name, dataset in self.datasets.items())
        scheduler = HF_SCHEDULERS.get(args.lr_scheduler_type, args.lr_scheduler_type)
        no_duplicates = None if args.batch_sampler is None else args.batch_sampler == "no_duplicates"
        config = TrainConfig(
            model=ModelConfig(name_or_path=str(self.output_dir / "initial_model"), dtype=str(self.model.dtype)),
            data=DataConfig(
                train=specs[0] if len(specs) == 1 else specs,
                packing=args.packing,
                sampler=args.multi_dataset_batch_sampler,
                no_duplicates=no_duplicates,
                # Duplicate-free batches come from the streamed pipeline.
                streaming=True if no_duplicates else None,
            ),
            loss=_loss_config(next(iter(self.losses.values()))),
            optimizer=_optimizer(args, scheduler),
            checkpoint=CheckpointConfig(every_steps=args.save_steps, keep=args.save_total_limit),
            output_dir=str(self.output_dir),
            batch_size=args.batch_size,
            epochs=args.num_train_epochs,
            max_steps=args.max_steps,
            seed=args.seed,
            dropout=args.dropout,
            log_every=args.logging_steps,
            resume=args.resume,
        )
        config = dataclasses.replace(config, evaluation=dataclasses.replace(config.evaluation, every_steps=args.eval_steps))
        validate(config)
        return config

    def _dataset_config(self, name: str, dataset) -> DatasetConfig:
        labels = [column for column in dataset.column_names if column in LABEL_COLUMNS]
        texts = tuple(column for column in dataset.column_names if column not in LABEL_COLUMNS)
        if len(labels) > 1:
            raise ValueError(f"train_dataset {name!r}: one label column at most, found {labels}")
        loss = self.losses[name]
        own_loss = _loss_config(loss) if len(self.datasets) > 1 else None
        return DatasetConfig(
            path=str(self.output_dir / "data" / f"{name}.parquet"),
            text_columns=texts,
            label_column=labels[0] if labels else None,
            loss=own_loss,
        )

    def train(self) -> Summary:
        """Writes the starting model and the datasets (unless resuming a run that has them), then trains."""
        config = self.config()
        check_output_dir(self.output_dir)  # refused before anything is written, as flaxenc-train does
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / MARKER_NAME).touch()
        initial = self.output_dir / "initial_model"
        if not (initial / "modules.json").is_file():
            self.model.save(initial)
        for name, dataset in self.datasets.items():
            path = self.output_dir / "data" / f"{name}.parquet"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                dataset.to_parquet(str(path))
        self.run = Run(config, evaluator=self.evaluator)  # its batches, steps and schedule, for inspection
        summary = self.run.train()
        self.model.model = SentenceEncoder.from_pretrained(summary.final_model).model
        return summary


def _optimizer(args: TrainingArguments, scheduler: str):
    from flaxenc.optim import OptimizerConfig

    try:
        return OptimizerConfig(
            learning_rate=args.learning_rate, weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
            scheduler=scheduler, warmup_steps=args.warmup_steps, warmup_ratio=args.warmup_ratio,
            adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_epsilon=args.adam_epsilon,
            accumulation_steps=args.gradient_accumulation_steps,
        )
    except ValueError as error:
        raise ConfigError(f"TrainingArguments: {error}") from None


def _loss_config(loss: Any) -> LossConfig:
    """A loss object as the config that rebuilds it (its name and the arguments that differ from the defaults)."""
    if not isinstance(loss, losses.Loss):
        raise TypeError(f"loss: expected a flaxenc loss (flaxenc.losses), got {type(loss).__name__}")
    args = {}
    for item in dataclasses.fields(loss):
        value = getattr(loss, item.name)
        default = item.default if item.default is not dataclasses.MISSING else None
        if value == default:
            continue
        if isinstance(value, losses.Loss):  # MatryoshkaLoss's inner loss
            inner = _loss_config(value)
            value = {"name": inner.name, **inner.args}
        elif not isinstance(value, (str, int, float, bool, tuple, list, type(None))):
            raise TypeError(
                f"loss: {type(loss).__name__}.{item.name} is a {type(value).__name__}; the trainer writes the run's "
                "config, so give it by name or path (a guide model: its folder)"
            )
        args[item.name] = list(value) if isinstance(value, tuple) else value
    built = losses.get_loss(loss.name, **args)
    if built != loss:
        raise ValueError(f"loss: {loss!r} cannot be written as a config (rebuilt: {built!r})")
    return LossConfig(name=loss.name, args=args)
