"""Where a run reports: metrics.jsonl, TensorBoard event files and a PNG plot in the output folder,
and the window of steps whose metrics are still on the device.

On resume, records past the resumed step are dropped, so the files tell one consistent history.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import jax

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training.png"


class RunLog:
    def __init__(self, output_dir: Path, start_step: int):
        self.path = output_dir / METRICS_FILE
        self.plot_path = output_dir / PLOT_FILE
        self.records = self._read_until(start_step)
        with open(self.path, "w", encoding="utf-8") as f:  # rewritten without the steps to be redone
            f.writelines(json.dumps(record) + "\n" for record in self.records)
        from tensorboardX import SummaryWriter

        # purge_step hides events past the resumed step from TensorBoard's view of the old files.
        self._writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=start_step or None)

    def _read_until(self, step: int) -> list[dict[str, Any]]:
        if not self.path.is_file() or step == 0:
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a killed run
                continue
            if record.get("step", math.inf) <= step:
                records.append(record)
        return records

    def write(self, kind: str, step: int, epoch: float, values: dict[str, float]) -> None:
        """One record: kind "train" (loss, learning_rate, ...) or "eval" (the evaluator's metrics)."""
        record = {"kind": kind, "step": step, "epoch": round(epoch, 4), **values}
        self.records.append(record)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in values.items():
            if isinstance(value, (int, float)):
                self._writer.add_scalar(f"{kind}/{name}", value, step)
        self._writer.flush()

    def plot(self, eval_metric: str | None) -> None:
        """Training loss (and the evaluator's primary metric, on a second axis) over steps."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [r for r in self.records if r["kind"] == "train"]
        evals = [r for r in self.records if r["kind"] == "eval" and eval_metric in r]
        figure, loss_axis = plt.subplots(figsize=(8, 4.5))
        loss_axis.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", label="training loss")
        loss_axis.set_xlabel("optimizer step")
        loss_axis.set_ylabel("training loss", color="tab:blue")
        if evals:
            metric_axis = loss_axis.twinx()
            metric_axis.plot([r["step"] for r in evals], [r[eval_metric] for r in evals], "o-", color="tab:orange")
            metric_axis.set_ylabel(eval_metric, color="tab:orange")
        figure.tight_layout()
        figure.savefig(self.plot_path, dpi=100)
        plt.close(figure)

    def close(self) -> None:
        self._writer.close()


class MetricWindow:
    """The steps since the last report: their metrics stay on device until `flush` fetches them all at once.

    Steps are dispatched without waiting; a fetch every `log_every` steps is the loop's only
    device-to-host transfer of metrics. The clock times training steps only (`restart_clock` after
    an evaluation or a checkpoint).
    """

    def __init__(self, examples_per_step: int):
        self.examples_per_step = examples_per_step
        self.pending: list[tuple[int, Any]] = []
        self.steps_timed, self.started = 0, time.perf_counter()
        self.run_started, self.run_steps, self.run_seconds = self.started, 0, None

    def add(self, step: int, metrics: Any) -> None:
        self.pending.append((step, metrics))
        self.steps_timed += 1
        self.run_steps += 1

    def restart_clock(self) -> None:
        self.started = time.perf_counter()

    def flush(self) -> tuple[list[tuple[int, dict[str, float]]], float]:
        """(step, metrics as floats) of each pending step, and the examples/s since the last flush."""
        fetched = jax.device_get([metrics for _, metrics in self.pending])
        steps = [(step, {key: float(value) for key, value in metrics.items()}) for (step, _), metrics in zip(self.pending, fetched)]
        rate = self.steps_timed * self.examples_per_step / max(time.perf_counter() - self.started, 1e-9)
        self.pending.clear()
        self.steps_timed, self.started = 0, time.perf_counter()
        return steps, rate

    def close(self) -> None:
        """Ends the run's clock (wall time of the loop, evaluations and checkpoints included)."""
        self.run_seconds = time.perf_counter() - self.run_started

    @property
    def examples_per_second_overall(self) -> float:
        return self.run_steps * self.examples_per_step / self.run_seconds if self.run_steps else 0.0
