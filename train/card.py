"""A run's model card facts: its config, data, loss and results as a flaxenc.io.TrainingCard."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flaxenc.io.model_card import EvaluationResult, TrainingCard
from flaxenc.io.st_names import st_loss_config
from flaxenc_train.config import TrainConfig

_RECORD_KEYS = ("kind", "step", "epoch")


def evaluation_result(evaluator, metrics: Mapping[str, float], step: int, epoch: float, split: str) -> EvaluationResult:
    """One evaluator call as the card shows it."""
    return EvaluationResult(
        evaluator=type(evaluator).__name__,
        name=evaluator.name,
        metrics=dict(metrics),
        primary_metric=evaluator.primary_metric,
        step=step,
        epoch=epoch,
        split=split,
    )


def evaluation_at(records: Sequence[Mapping[str, Any]], step: int) -> dict[str, float] | None:
    """The evaluator's metrics logged at `step` (metrics.jsonl records), or None."""
    for record in reversed(records):
        if record["kind"] == "eval" and record["step"] == step:
            return {key: value for key, value in record.items() if key not in _RECORD_KEYS}
    return None


def training_logs(records: Sequence[Mapping[str, Any]], metric: str | None) -> tuple[dict[str, Any], ...]:
    """One row per logged step: epoch, step, training loss and the evaluator's primary metric (as ST's card)."""
    rows: dict[int, dict[str, Any]] = {}
    for record in records:
        row = rows.setdefault(record["step"], {"Epoch": record["epoch"], "Step": record["step"], "Training Loss": "-"})
        if metric:
            row.setdefault(metric, "-")
        if record["kind"] == "train":
            row["Training Loss"] = record["loss"]
        elif metric in record:
            row[metric] = record[metric]
    return tuple(rows[step] for step in sorted(rows))


def training_card(
    config: TrainConfig,
    *,
    loss,
    rows: int,
    steps_per_epoch: int,
    total_steps: int,
    warmup_steps: int,
    drop_last: bool,
    evaluator=None,
    evaluations: Sequence[EvaluationResult] = (),
    records: Sequence[Mapping[str, Any]] = (),
    saved_step: int | None = None,
) -> TrainingCard:
    """The card of the model a run saved at `saved_step`."""
    # A mixture's card names every dataset's files and the first dataset's columns and loss.
    specs = config.data.train if isinstance(config.data.train, tuple) else (config.data.train,)
    spec, optimizer = specs[0], config.optimizer
    loss_name, loss_config = st_loss_config(loss)
    columns = tuple(spec.text_columns) + ((spec.label_column,) if loss.takes_labels and spec.label_column else ())
    return TrainingCard(
        train_path=", ".join(s.path for s in specs),
        train_rows=rows,
        columns=columns,
        loss=loss_name,
        loss_config=loss_config,
        batch_size=config.batch_size,
        steps_per_epoch=steps_per_epoch,
        epochs=config.epochs,
        total_steps=total_steps,
        learning_rate=optimizer.learning_rate,
        scheduler=optimizer.scheduler,
        warmup_steps=warmup_steps,
        weight_decay=optimizer.weight_decay,
        max_grad_norm=optimizer.max_grad_norm,
        adam_beta1=optimizer.adam_beta1,
        adam_beta2=optimizer.adam_beta2,
        adam_epsilon=optimizer.adam_epsilon,
        accumulation_steps=optimizer.accumulation_steps,
        seed=config.seed,
        dropout=config.dropout,
        dtype=config.model.dtype,
        shuffle=config.data.shuffle,
        drop_last=drop_last,
        evaluator=type(evaluator).__name__ if evaluator else None,
        evaluation_steps=config.evaluation.every_steps if evaluator else 0,
        evaluations=tuple(evaluations),
        training_logs=training_logs(records, evaluator.primary_metric if evaluator else None),
        saved_step=saved_step,
        prompts=config.data.prompts,
    )
