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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from flaxenc import losses, sharding
from flaxenc.train_step import TrainStep, init_train_state, params_to_model
from flaxenc_train.card import evaluation_at, evaluation_result, training_card
from flaxenc_train.checkpoint import CheckpointError, Checkpoints, write_json
from flaxenc_train.config import (
    ConfigError,
    LossConfig,
    TrainConfig,
    resume_keys,
    to_dict,
    validate,
)
from flaxenc_train.evaluators import build_evaluator
from flaxenc_train.inputs import StreamInput, TableInput, datasets_of, is_streamed, loss_key
from flaxenc_train.logs import MetricWindow, RunLog
from flaxenc_train.loss_params import check_losses, clip_mask, make_loss, save_model
from flaxenc_train.model import build_encoder
from flaxenc_train.output import MARKER_NAME, RunLock, atomic_save, check_output_dir, remove_partial_saves

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


def build_loss(config: LossConfig, embedding_dimension: int | None = None) -> losses.Loss:
    try:
        return make_loss(config, embedding_dimension)
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

    def __init__(self, config: TrainConfig, progress: bool = True, evaluator=None):
        """evaluator: an evaluator object instead of config.evaluation's (the Python trainer's)."""
        self.config, self.progress = config, progress
        self.output_dir = Path(config.output_dir)
        self.is_main = jax.process_index() == 0
        self._validate()
        if self.is_main:
            check_output_dir(self.output_dir)  # a file, foreign files, not writable, or in use: refused now
        self.mesh = _mesh(config.devices)
        self.encoder = build_encoder(config.model, config.seed)
        self.loss = build_loss(config.loss, self.encoder.embedding_dimension)
        # One loss per distinct (dataset) loss config; each dataset trains with its own or the run's.
        self.streamed = is_streamed(config)
        keys = [loss_key(config, spec) for spec in datasets_of(config)]
        distinct = list(dict.fromkeys(keys))
        specs = {loss_key(config, spec): spec.loss or config.loss for spec in datasets_of(config)}
        self.losses = [
            self.loss if specs[key] == config.loss else build_loss(specs[key], self.encoder.embedding_dimension) for key in distinct
        ]
        check_losses(self.losses)
        self.loss_index = [distinct.index(key) for key in keys]
        self.evaluator = evaluator if evaluator is not None else build_evaluator(config.evaluation)
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
            if config.data.no_duplicates:
                # The in-memory table batches as ST's default sampler; only the streamed pipeline keeps texts unique.
                raise ConfigError(
                    "data.no_duplicates: true needs streamed input (data.streaming: true); an in-memory "
                    "table batches as ST's default sampler, where a text may occur twice in a batch"
                )
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
        self.warmup_steps = opt.warmup(self.total_steps)
        self.schedule = opt.schedule(self.total_steps)
        tx = opt.build(self.total_steps, clip_mask=clip_mask(self.loss))
        self.graphdef, state = init_train_state(self.encoder.model, tx, config.seed, loss=self.loss)
        # One compiled step per loss (each compiles per batch shape); they share the state.
        self.step_fns = [
            TrainStep(self.graphdef, loss, tx, self.mesh, self.schedule, self.accumulation, config.dropout, config.fsdp)
            for loss in self.losses
        ]
        self.step_fn = self.step_fns[0]
        self.state = self.step_fn.place_state(state)
        self._published_step = None  # the step whose parameters self.encoder holds (see _publish)

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

    def _position(self, step: int, metric: float | None) -> dict[str, Any]:
        epoch, in_epoch = divmod(step * self.accumulation, self.batches.steps_per_epoch)
        return {
            "step": step,  # optimizer steps, as TrainState.step, the logs and the checkpoint's name
            "epoch": epoch,
            "step_in_epoch": in_epoch,  # in micro-batches
            "steps_per_epoch": self.batches.steps_per_epoch,
            "accumulation_steps": self.accumulation,
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
        if "step" not in position:  # flaxenc before one step counter: its state counted micro-batches
            if self.accumulation > 1:
                raise CheckpointError(
                    f"{checkpoints.directory / str(step)}: written by an older flaxenc whose state counted micro-batches; "
                    "with accumulation_steps > 1 it cannot be resumed: use another output_dir"
                )
            position = {**position, "step": position.get("micro_step"), "accumulation_steps": 1}
        expected = self._position(int(self.state.step), None)
        keys = ("step", "steps_per_epoch", "accumulation_steps", "batch_size", "rows")
        changed = [key for key in keys if position.get(key) != expected[key]]
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
            rows=self.batches.rows if self.batches.rows is not None else self.total_steps * self.accumulation * self.config.batch_size,
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
        return [evaluation_result(evaluator, metrics, step, self._epoch(step), split)] if metrics else []

    # -- the loop -----------------------------------------------------------------------------

    def _epoch(self, step: int) -> float:
        """Epochs done after optimizer step `step`."""
        return step * self.accumulation / self.batches.steps_per_epoch

    def _publish(self) -> None:
        """Gives the encoder the current parameters: one transfer of them per step, however many users."""
        step = int(self.state.step)
        if self._published_step != step:
            self.encoder.model = params_to_model(self.graphdef, self.state)
            self._published_step = step

    def evaluate(self, step: int) -> dict[str, float]:
        self._publish()
        output_path = str(self.output_dir / "eval") if self.is_main else None
        return self.evaluator(self.encoder, output_path=output_path, epoch=int(self._epoch(step)), steps=step)

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

    def _save_model(self, folder: Path, card, state=None) -> None:
        """The ST folder (and a loss's classifier, of `state`, default the run's), written whole or not at
        all; its model card names the folder it ends in."""
        state = self.state if state is None else state
        needed = sum(getattr(leaf, "nbytes", 0) for leaf in jax.tree.leaves(self.state.params)) + (1 << 20)
        atomic_save(lambda path: save_model(self.encoder, self.loss, state, path), folder, needed)
        self.encoder.write_model_card(folder, card)

    def _train(self) -> Summary:
        """Steps from the newest checkpoint (or the start) to total_steps, then the saved models."""
        checkpoints = self._open_checkpoints()
        resumed = self._resume(checkpoints)
        start = resumed or 0
        self.last_good, self.last_loss, eval_result = resumed, None, {}
        log = RunLog(self.output_dir, start) if self.is_main else None
        window = MetricWindow(self.config.batch_size * self.accumulation)
        logger.info(
            "%s examples, %d steps a epoch, %d optimizer steps (warmup %d), %d devices",
            self.batches.rows or "streamed", self.batches.steps_per_epoch, self.total_steps, self.warmup_steps, self.mesh.size,
        )
        bar = tqdm(total=self.total_steps, initial=start, desc="Training", unit="step", disable=not self.progress or not self.is_main)
        batches = self.batches.batches(start * self.accumulation)
        try:
            for step in range(start + 1, self.total_steps + 1):
                in_epoch, metrics = self._optimizer_step(batches)
                window.add(step, metrics)
                bar.update(1)
                evaluate, save = self._due(step, in_epoch)
                if step % self.config.log_every == 0 or evaluate or save:
                    self._report(step, window, log, bar, checkpoints)  # before a checkpoint: never save a diverged state
                metric = None
                if evaluate:
                    eval_result = self._evaluate_and_log(step, log)
                    metric = eval_result.get(self.evaluator.primary_metric)
                if save:
                    checkpoints.save(step, self.state, self._position(step, metric), data=self.batches.checkpoint_item)
                    self.last_good = step
                if evaluate or save:
                    window.restart_clock()  # throughput counts training steps only
        finally:
            batches.close()
            self.batches.close()
            bar.close()
            window.close()
        return self._finish(checkpoints, log, eval_result, resumed, window)

    def _open_checkpoints(self) -> Checkpoints:
        """The run's checkpoints; process 0 first writes the token cache and config.yaml."""
        if self.is_main:
            if hasattr(self.batches, "write_cache"):
                self.batches.write_cache()
            (self.output_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.config), sort_keys=False), encoding="utf-8")
        return Checkpoints(self.output_dir / "checkpoints", self.config.checkpoint.keep)

    def _optimizer_step(self, batches: Iterator) -> tuple[int, dict]:
        """One optimizer step: `accumulation` micro-batches, each through its loss's compiled step.

        Returns the last micro-batch's step in its epoch and the step's metrics, left on device.
        """
        for _ in range(self.accumulation):
            in_epoch, loss_index, batch = next(batches)
            self.state, metrics = self.step_fns[loss_index](self.state, batch)
        return in_epoch, metrics

    def _due(self, step: int, in_epoch: int) -> tuple[bool, bool]:
        """(evaluate, save) after optimizer step `step`: at epoch ends, the last step and every N steps."""
        config, last = self.config, step == self.total_steps
        epoch_end = in_epoch == self.batches.steps_per_epoch - 1
        every = config.evaluation.every_steps
        evaluate = self.evaluator is not None and (epoch_end or last or bool(every and step % every == 0))
        every = config.checkpoint.every_steps
        return evaluate, evaluate or last or bool(every and step % every == 0)

    def _report(self, step: int, window: MetricWindow, log: RunLog | None, bar, checkpoints: Checkpoints) -> None:
        """Fetches the window's metrics, stops at the first non-finite loss, logs the window's mean."""
        fetched, examples_per_second = window.flush()
        for at, metrics in fetched:
            if not math.isfinite(metrics["loss"]):
                where = f"step {self.last_good} in {checkpoints.directory}" if self.last_good else "none was written"
                raise TrainingDiverged(
                    f"the training loss is {metrics['loss']} at optimizer step {at} (epoch {self._epoch(at):.2f}); "
                    f"stopping. The last good checkpoint: {where}. Lower the learning rate, or check the data and labels."
                )
        last = fetched[-1][1]
        values = {
            "loss": float(np.mean([metrics["loss"] for _, metrics in fetched])),
            "learning_rate": last["learning_rate"],
            "grad_norm": last["grad_norm"],
            "examples_per_second": examples_per_second,
        }
        self.last_loss = values["loss"]
        values.update(self._skipped_records())
        if log:
            log.write("train", step, self._epoch(step), values)
        bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['learning_rate']:.2e}", ex_s=f"{examples_per_second:.0f}")

    def _skipped_records(self) -> dict[str, int]:
        """{"skipped_records": n} once the input has skipped bad records (warned when the count grows)."""
        skipped, first = self.batches.skipped
        if not skipped:
            return {}
        if skipped != getattr(self, "_skips_reported", 0):
            logger.warning("%d bad records skipped so far on process %d (the first: %s)", skipped, jax.process_index(), first)
            self._skips_reported = skipped
        return {"skipped_records": skipped}

    def _evaluate_and_log(self, step: int, log: RunLog | None) -> dict[str, float]:
        result = self.evaluate(step)
        primary = self.evaluator.primary_metric  # known once the evaluator has seen the model
        if log:
            log.write("eval", step, self._epoch(step), result)
            log.plot(primary)
        if self.is_main:
            tqdm.write(f"step {step}: {primary} {result.get(primary, float('nan')):.4f}")
        return result

    # -- the end of a run: saved models, the test score, the summary ---------------------------

    def _finish(
        self, checkpoints: Checkpoints, log: RunLog | None, eval_result: dict, resumed: int | None, window: MetricWindow
    ) -> Summary:
        if not eval_result and self.evaluator is not None and resumed == self.total_steps:
            eval_result = self.evaluate(self.total_steps)  # a finished run rerun
        records = log.records if log else []
        final_dir = self.output_dir / "final"
        final_evaluations = self._evaluations(self.evaluator, eval_result, self.total_steps)
        self._publish()
        if self.is_main:
            self._save_model(final_dir, self._card(final_evaluations, records, self.total_steps))
        test_result = self._test(final_dir, final_evaluations, records)
        best_step = checkpoints.best_step() if self.evaluator else None
        best_dir = self._export_best(checkpoints, best_step, records) if best_step is not None else None
        checkpoints.close()
        summary = Summary(
            output_dir=str(self.output_dir),
            steps=self.total_steps,
            epochs=self._epoch(self.total_steps),
            seconds=window.run_seconds,
            pairs_per_second=window.examples_per_second_overall,
            final_loss=self.last_loss,
            resumed_from=resumed,
            final_model=str(final_dir),
            eval=dict(eval_result),
            best_step=best_step,
            best_model=str(best_dir) if best_dir else None,
            primary_metric=self.evaluator.primary_metric if self.evaluator else None,
            test=dict(test_result),
            test_primary_metric=self.test_evaluator.primary_metric if self.test_evaluator else None,
        )
        if log:
            if self.evaluator is None:
                log.plot(None)
            log.close()
            write_json(self.output_dir / "summary.json", dataclasses.asdict(summary))
        return summary

    def _test(self, final_dir: Path, final_evaluations: list, records: list) -> dict[str, float]:
        """The test table's scores of the final model; final/'s card, saved before they were known, then carries them."""
        if self.test_evaluator is None:
            return {}
        self._publish()
        result = self.test_evaluator(
            self.encoder, output_path=str(self.output_dir / "eval") if self.is_main else None,
            epoch=int(self._epoch(self.total_steps)), steps=self.total_steps,
        )
        if self.is_main:
            test = self._evaluations(self.test_evaluator, result, self.total_steps, "test")
            self.encoder.write_model_card(final_dir, self._card(final_evaluations + test, records, self.total_steps))
        return result

    def _export_best(self, checkpoints: Checkpoints, best_step: int, records: list) -> Path:
        """best/: the checkpoint with the best primary metric (final/ itself when that is the last step)."""
        if best_step == self.total_steps:
            return self.output_dir / "final"
        best_state, _ = checkpoints.restore(best_step, like=self.state)  # on every process: orbax syncs them
        self.encoder.model = params_to_model(self.graphdef, best_state)
        self._published_step = None
        best_dir = self.output_dir / "best"
        if self.is_main:
            evaluations = self._evaluations(self.evaluator, evaluation_at(records, best_step), best_step)
            self._save_model(best_dir, self._card(evaluations, records, best_step), best_state)
        return best_dir


def train(config: TrainConfig, progress: bool = True) -> Summary:
    """Runs (or resumes) the training `config` describes."""
    return Run(config, progress).train()
