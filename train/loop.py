"""The training run: config -> model, data, loss, optimizer -> jitted steps, evaluation, checkpoints.

The loop keeps the device busy: batches are padded on a background thread, steps are dispatched
without waiting, and metrics are fetched only every `log_every` steps (a NaN is then traced back to
its step). The data order is a function of (seed, epoch) and dropout keys of (seed, step), so a
run resumed from a checkpoint takes exactly the steps the interrupted run would have taken.

Everything is checked before the output folder is written: the config's ranges, the model, the data,
the labels against the loss, and, when checkpoints exist, that the training-relevant config saved
with them equals this run's. Then the folder is locked for the run, and models are saved atomically.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from flaxenc import losses, optim, sharding
from flaxenc.train_step import TrainStep, init_train_state, params_to_model
from train.card import evaluation_at, evaluation_result, training_card
from train.checkpoint import CheckpointError, Checkpoints, write_json
from train.config import (
    ConfigError,
    LossConfig,
    TrainConfig,
    resume_keys,
    to_dict,
    validate,
)
from train.evaluators import build_evaluator
from train.inputs import StreamInput, TableInput, datasets_of, is_streamed, loss_key
from train.logs import RunLog
from train.model import build_encoder
from train.output import MARKER_NAME, RunLock, atomic_save, check_output_dir, remove_partial_saves

logger = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclasses.dataclass
class Summary:
    output_dir: str
    steps: int
    epochs: float
    seconds: float
    pairs_per_second: float
    final_loss: float | None
    resumed_from: int | None
    final_model: str
    eval: dict[str, float] = dataclasses.field(default_factory=dict)
    best_step: int | None = None
    best_model: str | None = None
    primary_metric: str | None = None
    test: dict[str, float] = dataclasses.field(default_factory=dict)
    test_primary_metric: str | None = None
    # True when the run had finished before: nothing was trained, this is its saved summary.
    already_finished: bool = False

    def __str__(self) -> str:
        lines = [f"This run had already finished, nothing to do; its summary ({self.output_dir}/summary.json):"] * int(
            self.already_finished
        ) + [
            f"Trained {self.steps} steps ({self.epochs:.2f} epochs) in {self.seconds:.1f} s, "
            f"{self.pairs_per_second:.1f} examples/s" + (f", resumed from step {self.resumed_from}" if self.resumed_from else ""),
            f"  final training loss: {self.final_loss:.6g}" if self.final_loss is not None else "  no step taken",
        ]
        if self.primary_metric and self.primary_metric in self.eval:
            lines.append(f"  final {self.primary_metric}: {self.eval[self.primary_metric]:.4f}")
        if self.test_primary_metric in self.test:
            lines.append(f"  test {self.test_primary_metric}: {self.test[self.test_primary_metric]:.4f}")
        lines.append(f"  model: {self.final_model}")
        if self.best_model:
            lines.append(f"  best model (step {self.best_step}): {self.best_model}")
        lines.append(f"  metrics, plot and TensorBoard events: {self.output_dir}")
        return "\n".join(lines)


def build_loss(config: LossConfig) -> losses.Loss:
    try:
        return losses.get_loss(config.name, **config.args)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"loss: {error}") from None


def _mesh(devices: int):
    if devices == 0:
        return sharding.global_data_mesh()
    if devices > jax.local_device_count() or jax.process_count() > 1:
        raise ConfigError(f"devices: {devices} of {jax.local_device_count()} local devices (0 uses all devices of all processes)")
    return sharding.data_mesh(jax.local_devices()[:devices])


def _uses_in_batch_negatives(loss) -> bool:
    """Losses whose other rows are negatives: a repeated text there is a false negative (ST recommends
    NoDuplicatesBatchSampler for them)."""
    inner = getattr(loss, "loss", None)
    return type(loss).__name__ in ("MultipleNegativesRankingLoss",) or (inner is not None and _uses_in_batch_negatives(inner))


class Run:
    """One training run in `config.output_dir`; `Run(config).train()` returns a Summary."""

    def __init__(self, config: TrainConfig, progress: bool = True):
        self.config, self.progress = config, progress
        self.output_dir = Path(config.output_dir)
        self.is_main = jax.process_index() == 0
        self._validate()
        if self.is_main:
            check_output_dir(self.output_dir)  # a file, foreign files, not writable, or in use: refused now
        self.mesh = _mesh(config.devices)
        self.encoder = build_encoder(config.model, config.seed)
        self.loss = build_loss(config.loss)
        # One loss per distinct (dataset) loss config; each dataset trains with its own or the run's.
        self.streamed = is_streamed(config)
        keys = [loss_key(config, spec) for spec in datasets_of(config)]
        distinct = list(dict.fromkeys(keys))
        specs = {loss_key(config, spec): spec.loss or config.loss for spec in datasets_of(config)}
        self.losses = [self.loss if specs[key] == config.loss else build_loss(specs[key]) for key in distinct]
        self.loss_index = [distinct.index(key) for key in keys]
        self.evaluator = build_evaluator(config.evaluation)
        self.test_evaluator = build_evaluator(config.evaluation, config.evaluation.test_data) if config.evaluation.test_data else None
        self._prepare_data()
        self._prepare_optimizer()
        self.run_record = {**resume_keys(config), "data.train.source": self._data_source()}
        self._check_resumable()

    def _validate(self) -> None:
        config = self.config
        validate(config)
        for key in ("batch_size", "epochs", "log_every"):
            if getattr(config, key) < 1:
                raise ConfigError(f"{key}: must be at least 1, got {getattr(config, key)}")
        if config.optimizer.accumulation_steps < 1:
            raise ConfigError(f"optimizer.accumulation_steps: must be at least 1, got {config.optimizer.accumulation_steps}")
        if config.max_steps < 0:
            raise ConfigError(f"max_steps: must be 0 (all epochs) or positive, got {config.max_steps}")

    def _prepare_data(self) -> None:
        """The training input: streamed datasets (a mixture, shards) or one table in memory."""
        config = self.config
        if self.streamed:
            no_duplicates = config.data.no_duplicates
            if no_duplicates is None:
                no_duplicates = any(_uses_in_batch_negatives(loss) for loss in self.losses)
            self.batches = StreamInput(config, self.encoder, self.losses, self.loss_index, no_duplicates, self.mesh.size)
        else:
            if isinstance(config.data.train, tuple):
                raise ConfigError("data.streaming: false reads one table into memory; data.train lists several datasets")
            self.batches = TableInput(config, self.encoder, self.loss, self.mesh.size, self.output_dir / "cache")

    def _prepare_optimizer(self) -> None:
        config, opt = self.config, self.config.optimizer
        self.accumulation = opt.accumulation_steps
        micro_steps = self.batches.steps_per_epoch * config.epochs
        if config.max_steps:
            micro_steps = min(micro_steps, config.max_steps * self.accumulation)
        self.total_steps = micro_steps // self.accumulation
        if self.total_steps < 1:
            raise ConfigError(f"optimizer.accumulation_steps: {self.accumulation} micro-batches exceed the run's {micro_steps}")
        self.total_micro_steps = self.total_steps * self.accumulation
        # transformers' get_warmup_steps: explicit steps, else ceil(ratio * total).
        warmup = opt.warmup_steps if opt.warmup_steps is not None else math.ceil(opt.warmup_ratio * self.total_steps)
        try:
            self.schedule = optim.learning_rate_schedule(opt.scheduler, opt.learning_rate, warmup, self.total_steps)
        except ValueError as error:
            raise ConfigError(f"optimizer.scheduler: {error}") from None
        self.warmup_steps = warmup
        tx = optim.adamw(
            self.schedule, opt.weight_decay, opt.max_grad_norm, opt.adam_beta1, opt.adam_beta2, opt.adam_epsilon, self.accumulation
        )
        self.graphdef, state = init_train_state(self.encoder.model, tx, config.seed)
        # One compiled step per loss (each compiles per batch shape); they share the state.
        self.step_fns = [
            TrainStep(self.graphdef, loss, tx, self.mesh, self.schedule, self.accumulation, config.dropout, config.fsdp)
            for loss in self.losses
        ]
        self.step_fn = self.step_fns[0]
        self.state = self.step_fn.place_state(state)

    # -- resuming ---------------------------------------------------------------------------

    def _data_source(self) -> str:
        """The training data's fingerprint (see TableInput and StreamInput)."""
        return self.batches.fingerprint()

    def _check_resumable(self) -> None:
        """Refuses checkpoints of another run (or resume=false with checkpoints), reading only."""
        directory = self.output_dir / "checkpoints"
        if not directory.is_dir():
            return
        checkpoints = Checkpoints(directory, create=False)
        try:
            step = checkpoints.latest_step()
            if step is None:
                return
            if not self.config.resume:
                raise CheckpointError(
                    f"{checkpoints.directory} holds checkpoints of an earlier run (newest: step {step}) and resume is "
                    "false: set resume=true to continue it, or choose another output_dir"
                )
            saved = checkpoints.position(step).get("run")
        finally:
            checkpoints.close()
        if saved is None:
            logger.warning("%s: written by an older flaxenc without its config; resuming unchecked", directory / str(step))
            return
        changed = sorted(key for key in set(saved) | set(self.run_record) if saved.get(key) != self.run_record.get(key))
        if changed:
            shown = "; ".join(
                f"{key}: {json.dumps(saved.get(key), default=str)} then, {json.dumps(self.run_record.get(key), default=str)} now"
                for key in changed
            )
            raise CheckpointError(
                f"{directory / str(step)}: this run's training config differs from the one its checkpoints were "
                f"written with ({shown}); resuming would mix two runs. To start afresh choose another output_dir (or "
                f"delete {self.output_dir}); to continue the earlier run, rerun it with {self.output_dir / 'config.yaml'}"
            )

    def _finished_summary(self) -> Summary | None:
        """A finished run rerun unchanged: its saved summary, marked as such; None if there is more to do."""
        path = self.output_dir / "summary.json"
        if not path.is_file() or not (self.output_dir / "final").is_dir():
            return None
        checkpoints = Checkpoints(self.output_dir / "checkpoints", create=False)
        try:
            if checkpoints.latest_step() != self.total_steps:
                return None
        finally:
            checkpoints.close()
        saved = json.loads(path.read_text(encoding="utf-8"))
        names = {field.name for field in dataclasses.fields(Summary)}
        return Summary(**{key: value for key, value in saved.items() if key in names} | {"already_finished": True})

    def _position(self, micro_step: int, metric: float | None) -> dict[str, Any]:
        epoch, in_epoch = divmod(micro_step, self.batches.steps_per_epoch)
        return {
            "micro_step": micro_step,
            "epoch": epoch,
            "step_in_epoch": in_epoch,
            "steps_per_epoch": self.batches.steps_per_epoch,
            "batch_size": self.config.batch_size,
            "rows": self.batches.rows,
            "metric": metric,
            "run": self.run_record,  # the training-relevant config and data fingerprint, compared on resume
        }

    def _resume(self, checkpoints: Checkpoints) -> int | None:
        """Restores the newest checkpoint, if resuming; returns its optimizer step."""
        step = checkpoints.latest_step()
        if step is None:
            return None
        self.state, position = checkpoints.restore(step, like=self.state, data=self.batches.checkpoint_item)
        expected = self._position(int(self.state.step), None)
        changed = [key for key in ("micro_step", "steps_per_epoch", "batch_size", "rows") if position.get(key) != expected[key]]
        if changed:
            then = ", ".join(f"{key} {position.get(key)}" for key in changed)
            now = ", ".join(f"{key} {expected[key]}" for key in changed)
            raise CheckpointError(
                f"{checkpoints.directory / str(step)}: the checkpoint was written with {then}; this run has {now}. "
                "The data or batch size changed since: resuming would not continue the same run; use another output_dir"
            )
        self.state = self.step_fn.place_state(self.state)
        return step

    # -- model cards --------------------------------------------------------------------------

    def _card(self, evaluations: list, records: list, saved_step: int):
        """The model card facts of the model saved at `saved_step` (flaxenc.io.TrainingCard)."""
        return training_card(
            self.config,
            loss=self.loss,
            # streamed: the examples trained (the records read are not counted ahead)
            rows=self.batches.rows if self.batches.rows is not None else self.total_micro_steps * self.config.batch_size,
            steps_per_epoch=self.batches.steps_per_epoch,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            drop_last=self.batches.drop_last,
            evaluator=self.evaluator,
            evaluations=evaluations,
            records=records,
            saved_step=saved_step,
        )

    def _evaluations(self, evaluator, metrics: dict | None, step: int, split: str = "validation") -> list:
        """[the card's record of `metrics`], or [] when there are none."""
        epoch = step * self.accumulation / self.batches.steps_per_epoch
        return [evaluation_result(evaluator, metrics, step, epoch, split)] if metrics else []

    # -- the loop -----------------------------------------------------------------------------

    def evaluate(self, step: int, epoch: float) -> dict[str, float]:
        self.encoder.model = params_to_model(self.graphdef, self.state)
        output_path = str(self.output_dir / "eval") if self.is_main else None
        return self.evaluator(self.encoder, output_path=output_path, epoch=int(epoch), steps=step)

    def train(self) -> Summary:
        lock = RunLock(self.output_dir)
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        try:
            if self.is_main:
                (self.output_dir / MARKER_NAME).touch()
                remove_partial_saves(self.output_dir)
            self._check_resumable()  # again, under the lock: another run may have written since __init__
            if (self.output_dir / "checkpoints").is_dir():  # read only: every process returns alike
                finished = self._finished_summary()
                if finished is not None:
                    return finished
            # Every process has now read the folder; only after this does process 0 create checkpoints/.
            # Without the barrier a slower process could see that folder half-made, open a
            # CheckpointManager that process 0 did not, and pair its orbax syncs with the wrong ones.
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("flaxenc: output folder read by every process")
            return self._train()
        finally:
            lock.release()

    def _save_model(self, folder: Path, card) -> None:
        """The ST folder, written whole or not at all; its model card names the folder it ends in."""
        needed = sum(getattr(leaf, "nbytes", 0) for leaf in jax.tree.leaves(self.state.params)) + (1 << 20)
        atomic_save(self.encoder.save, folder, needed)
        self.encoder.write_model_card(folder, card)

    def _train(self) -> Summary:
        config = self.config
        if self.is_main:
            if hasattr(self.batches, "write_cache"):
                self.batches.write_cache()
            (self.output_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")
        checkpoints = Checkpoints(self.output_dir / "checkpoints", config.checkpoint.keep)
        resumed = self._resume(checkpoints)
        start = resumed or 0
        log = RunLog(self.output_dir, start) if self.is_main else None
        primary = self.evaluator.primary_metric if self.evaluator else None
        per_epoch = self.batches.steps_per_epoch
        examples_per_step = config.batch_size * self.accumulation
        logger.info(
            "%s examples, %d steps a epoch, %d optimizer steps (warmup %d), %d devices",
            self.batches.rows or "streamed", per_epoch, self.total_steps, self.warmup_steps, self.mesh.size,
        )

        pending: list[tuple[int, dict]] = []  # (optimizer step, metrics on device) not yet fetched
        reported_skips = [0]
        last_good = resumed
        last_loss, eval_result = None, {}
        window_start, window_steps = time.perf_counter(), 0
        started, steps_done = time.perf_counter(), 0
        bar = tqdm(total=self.total_steps, initial=start, desc="Training", unit="step", disable=not self.progress or not self.is_main)

        def flush(step: int) -> None:
            """Fetches pending metrics; stops at the first non-finite loss; logs the window's mean."""
            nonlocal last_loss, window_start, window_steps
            fetched = jax.device_get([metrics for _, metrics in pending])
            for (at, _), metrics in zip(pending, fetched):
                if not math.isfinite(float(metrics["loss"])):
                    where = f"step {last_good} in {checkpoints.directory}" if last_good else "none was written"
                    raise TrainingDiverged(
                        f"the training loss is {float(metrics['loss'])} at optimizer step {at} (epoch "
                        f"{(at * self.accumulation) / per_epoch:.2f}); stopping. The last good checkpoint: {where}. "
                        "Lower the learning rate, or check the data and labels."
                    )
            elapsed = time.perf_counter() - window_start
            values = {
                "loss": float(np.mean([float(m["loss"]) for m in fetched])),
                "learning_rate": float(fetched[-1]["learning_rate"]),
                "grad_norm": float(fetched[-1]["grad_norm"]),
                "examples_per_second": window_steps * examples_per_step / elapsed,
            }
            last_loss = values["loss"]
            pending.clear()
            window_start, window_steps = time.perf_counter(), 0
            skipped, first = self.batches.skipped
            if skipped:
                values["skipped_records"] = skipped
                if skipped != reported_skips[0]:
                    logger.warning("%d bad records skipped so far on process %d (the first: %s)", skipped, jax.process_index(), first)
                    reported_skips[0] = skipped
            if log:
                log.write("train", step, step * self.accumulation / per_epoch, values)
            bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['learning_rate']:.2e}", ex_s=f"{values['examples_per_second']:.0f}")

        batches = self.batches.batches(start * self.accumulation)
        try:
            for micro in range(start * self.accumulation, self.total_micro_steps):
                in_epoch, loss_index, batch = next(batches)
                self.state, metrics = self.step_fns[loss_index](self.state, batch)
                if (micro + 1) % self.accumulation:
                    continue
                step = (micro + 1) // self.accumulation
                pending.append((step, metrics))
                window_steps += 1
                steps_done += 1
                bar.update(1)
                last = step == self.total_steps
                epoch_end = in_epoch == per_epoch - 1
                evaluate = self.evaluator is not None and (
                    epoch_end or last or (config.evaluation.every_steps and step % config.evaluation.every_steps == 0)
                )
                save = evaluate or last or (config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0)
                if step % config.log_every == 0 or evaluate or save:
                    flush(step)  # before a checkpoint: never save a diverged state
                metric = None
                if evaluate:
                    eval_result = self.evaluate(step, (micro + 1) / per_epoch)
                    primary = self.evaluator.primary_metric  # known once the evaluator has seen the model
                    metric = eval_result.get(primary)
                    if log:
                        log.write("eval", step, (micro + 1) / per_epoch, eval_result)
                        log.plot(primary)
                    if self.is_main:
                        tqdm.write(f"step {step}: {primary} {metric:.4f}")
                if save:
                    checkpoints.save(step, self.state, self._position(micro + 1, metric), data=self.batches.checkpoint_item)
                    last_good = step
                if evaluate or save:
                    window_start = time.perf_counter()  # throughput counts training steps only
        finally:
            batches.close()
            self.batches.close()
            bar.close()
        seconds = time.perf_counter() - started

        final_dir = self.output_dir / "final"
        final_epoch = self.total_micro_steps / per_epoch
        if not eval_result and self.evaluator is not None and resumed == self.total_steps:
            eval_result = self.evaluate(self.total_steps, final_epoch)  # a finished run rerun
            primary = self.evaluator.primary_metric
        self.encoder.model = params_to_model(self.graphdef, self.state)
        best_step = checkpoints.best_step() if self.evaluator else None
        best_dir = None
        records = log.records if log else []
        final_evaluations = self._evaluations(self.evaluator, eval_result, self.total_steps)
        if self.is_main:
            self._save_model(final_dir, self._card(final_evaluations, records, self.total_steps))
            if best_step is not None and best_step != self.total_steps:
                best_state, _ = checkpoints.restore(best_step, like=self.state)
                self.encoder.model = params_to_model(self.graphdef, best_state)
                best_dir = self.output_dir / "best"
                best_evaluations = self._evaluations(self.evaluator, evaluation_at(records, best_step), best_step)
                self._save_model(best_dir, self._card(best_evaluations, records, best_step))
                self.encoder.model = params_to_model(self.graphdef, self.state)
            elif best_step is not None:
                best_dir = final_dir
        checkpoints.close()
        test_result = {}
        if self.test_evaluator is not None:
            test_result = self.test_evaluator(
                self.encoder, output_path=str(self.output_dir / "eval") if self.is_main else None,
                epoch=int(final_epoch), steps=self.total_steps,
            )
            if self.is_main:  # final/ was saved before its test score was known: its card now carries it
                test = self._evaluations(self.test_evaluator, test_result, self.total_steps, "test")
                card = self._card(final_evaluations + test, records, self.total_steps)
                self.encoder.write_model_card(final_dir, card)
        summary = Summary(
            output_dir=str(self.output_dir),
            steps=self.total_steps,
            epochs=final_epoch,
            seconds=seconds,
            pairs_per_second=steps_done * examples_per_step / seconds if steps_done else 0.0,
            final_loss=last_loss,
            resumed_from=resumed,
            final_model=str(final_dir),
            eval=dict(eval_result),
            best_step=best_step,
            best_model=str(best_dir) if best_dir else None,
            primary_metric=primary,
            test=dict(test_result),
            test_primary_metric=self.test_evaluator.primary_metric if self.test_evaluator else None,
        )
        if log:
            if self.evaluator is None:
                log.plot(None)
            log.close()
            write_json(self.output_dir / "summary.json", dataclasses.asdict(summary))
        return summary


def train(config: TrainConfig, progress: bool = True) -> Summary:
    """Runs (or resumes) the training `config` describes."""
    return Run(config, progress).train()
