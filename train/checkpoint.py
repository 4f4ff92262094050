"""Resumable checkpoints with orbax's CheckpointManager.

Each checkpoint holds the training state (step, parameters, optimizer state, RNG), for streamed
data the input pipeline's iterator state (grain's orbax handler: one JSON file per process,
`data/process_<i>-of-<n>.json`), and a JSON record of where the run stood: the data position (epoch, step in epoch), the optimizer step, the
evaluator's primary metric and the run's training-relevant config with its data fingerprint (under
"run"; a resumed run is compared with it). The newest `keep` checkpoints are kept, plus the best by that metric.
A checkpoint that cannot be read, or does not fit the run, is an error; it is never skipped.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from flaxenc.train_step import TrainState
from flaxenc_train.output import disk_full, held_stderr


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored into this run."""


class Checkpoints:
    def __init__(self, directory: str | Path, keep: int = 2, create: bool = True):
        self.directory = Path(directory).absolute()
        self.keep = max(1, keep)
        options = ocp.CheckpointManagerOptions(max_to_keep=None, create=create, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "position", "data"))

    @property
    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps
        return steps[-1] if steps else None

    def save(self, step: int, state: TrainState, position: dict[str, Any], data=None) -> None:
        """Saves at optimizer step `step`; position: epoch, step_in_epoch, metric (or None), ...;
        data: the input pipeline's iterator (a grain DatasetIterator), saved per process."""
        items = dict(state=ocp.args.StandardSave(state), position=ocp.args.JsonSave(position))
        if data is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data)
        args = ocp.args.Composite(**items)
        path = self.directory / str(step)
        try:
            with held_stderr():  # a failed write floods stderr from orbax's and tensorstore's threads
                self._manager.save(step, args=args, force=True)
                self._manager.wait_until_finished()
        except Exception as error:  # noqa: BLE001 (orbax, tensorstore, the filesystem): one line naming the checkpoint
            # Its unfinished writes are logged again when their tasks are collected: this error reports them.
            logging.getLogger("asyncio").setLevel(logging.CRITICAL)
            # and tensorstore's writes that never started are reported at exit ("coroutine ... was never awaited").
            warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
            needed = sum(getattr(leaf, "nbytes", 0) for leaf in jax.tree.leaves(state))
            full = disk_full(error, path, needed)
            if full is not None:
                raise full from None
            raise CheckpointError(
                f"{path}: writing the checkpoint failed ({type(error).__name__}: {str(error).strip()[:300]})"
            ) from None
        self._prune()

    def position(self, step: int) -> dict[str, Any]:
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(position=ocp.args.JsonRestore()))
        except Exception as error:
            raise CheckpointError(f"{self.directory / str(step)}: cannot read the checkpoint's position ({error})") from None
        return dict(restored["position"])

    def restore(self, step: int, like: TrainState, data=None) -> tuple[TrainState, dict[str, Any]]:
        """The state saved at `step`, laid out (shapes, dtypes, shardings) like `like`; with `data`
        (the input pipeline's iterator) also the pipeline's position, set on that iterator."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        path = self.directory / str(step)
        items = dict(state=ocp.args.StandardRestore(abstract), position=ocp.args.JsonRestore())
        if data is not None:
            self._check_process_count(step)
            items["data"] = grain.checkpoint.CheckpointRestore(data)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as error:
            raise CheckpointError(
                f"{path}: the checkpoint cannot be restored into this run ({type(error).__name__}: "
                f"{str(error)[:2000]}). It is corrupt or was written by a run with another model, loss or "
                "optimizer; use another output_dir, or delete the checkpoint to start over."
            ) from None
        state = restored["state"]
        mismatched = [
            f"{jax.tree_util.keystr(key)}: {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}"
            for (key, a), b in zip(jax.tree_util.tree_leaves_with_path(state), jax.tree.leaves(abstract))
            if a.shape != b.shape or a.dtype != b.dtype
        ]
        if mismatched:
            raise CheckpointError(f"{path}: the checkpoint does not fit this run: {'; '.join(mismatched[:10])}")
        return TrainState(*state), dict(restored["position"])

    def _check_process_count(self, step: int) -> None:
        """Each process resumes its own shard's position: the process count must be the one saved."""
        folder = self.directory / str(step) / "data"
        saved = sorted(folder.glob("process_*-of-*.json"))
        if not saved:
            raise CheckpointError(f"{folder}: no input pipeline state in the checkpoint (written by a run that read a table into memory?)")
        then = int(saved[0].stem.rsplit("-of-", 1)[1])
        now = jax.process_count()
        if then != now:
            raise CheckpointError(
                f"{self.directory / str(step)}: written by {then} process(es), resumed with {now}; each process resumes "
                f"the position of its own data shards, so rerun with {then} process(es) (or start afresh in another output_dir)"
            )

    def best_step(self) -> int | None:
        """The checkpoint with the highest metric (all primary metrics here are greater-is-better)."""
        scored = [(self.position(step).get("metric"), step) for step in self.steps]
        scored = [(metric, step) for metric, step in scored if metric is not None and math.isfinite(metric)]
        return max(scored)[1] if scored else None

    def _prune(self) -> None:
        steps = self.steps
        kept = set(steps[-self.keep :])
        best = self.best_step()
        if best is not None:
            kept.add(best)
        for step in steps:
            if step not in kept:
                self._manager.delete(step)

    def close(self) -> None:
        self._manager.close()


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
