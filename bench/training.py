"""Training throughput: flaxenc's TrainStep against a plain torch loop doing what ST's fit() does per step.

ST side, per step (as the transformers Trainer under ST's fit()): ST's loss (which runs the model on
each column), backward, clip_grad_norm_(1.0), fused AdamW with no decay on biases and norms, then
the WarmupLinear scheduler; torch.autocast(bfloat16) for bf16. flaxenc side: the jitted TrainStep
with the same loss, optax AdamW and schedule. Both train with dropout, on the same token ids;
each side pads as its library does (flaxenc: to a sequence bucket, ST: to the longest row of a
column). Host-side padding is done before timing; moving a batch to the device is timed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

import flaxenc
from bench.environment import torch_device
from bench.timing import matmul_precision
from flaxenc import losses, optim
from flaxenc.encoder import sequence_buckets
from flaxenc.packing import pack_batch
from flaxenc.sentence_model import flat_params
from flaxenc.train_step import TrainStep, init_train_state, shard_batch

MAX_GRAD_NORM = 1.0


@dataclasses.dataclass(frozen=True)
class Objective:
    """A loss on both sides, and the optimizer settings of the recipe that uses it."""

    name: str
    flaxenc_loss: Callable  # a flaxenc.losses object
    st_loss: Callable  # SentenceTransformer -> ST's loss module
    learning_rate: float
    weight_decay: float


def _st_cosine(model):
    from sentence_transformers import losses as st_losses

    return st_losses.CosineSimilarityLoss(model)


def _st_contrastive(model):
    from sentence_transformers import losses as st_losses

    return st_losses.ContrastiveLoss(model, distance_metric=st_losses.SiameseDistanceMetric.EUCLIDEAN, margin=0.2)


# Recipe 1's loss and optimizer settings, and recipe 2's.
COSINE = Objective("CosineSimilarityLoss", losses.CosineSimilarityLoss(), _st_cosine, 2e-5, 0.01)
CONTRASTIVE = Objective(
    "ContrastiveLoss(euclidean, 0.2)",
    losses.ContrastiveLoss(distance_metric="euclidean", margin=0.2),
    _st_contrastive,
    1e-4,
    1e-4,
)


@dataclasses.dataclass(frozen=True)
class PairBatch:
    """A batch of text pairs as unpadded token ids per column, and a label per pair."""

    columns: tuple[list[list[int]], list[list[int]]]
    labels: np.ndarray  # [B] float32


def stsb_batches(tokenize, pairs: list[tuple[str, str, float]], batch_size: int, count: int) -> list[PairBatch]:
    """The first `count` batches of scored STS-B pairs."""
    batches = []
    for start in range(0, count * batch_size, batch_size):
        rows = pairs[start : start + batch_size]
        if len(rows) < batch_size:
            raise ValueError(f"STS-B train has too few pairs for {count} batches of {batch_size}")
        first, second, labels = zip(*rows)
        batches.append(PairBatch((tokenize(first), tokenize(second)), np.asarray(labels, np.float32)))
    return batches


def random_batches(length: int, batch_size: int, count: int, seed: int = 0) -> list[PairBatch]:
    """Pairs of random token ids, every row `length` tokens long (no padding), with binary labels.

    Ids come from 5..999, valid in every vocabulary here; their values do not change the speed.
    """
    rng = np.random.default_rng(seed)

    def column():
        return rng.integers(5, 1000, size=(batch_size, length)).tolist()

    return [PairBatch((column(), column()), rng.integers(0, 2, batch_size).astype(np.float32)) for _ in range(count)]


def _pad(rows: list[list[int]], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(rows), length), pad_id, np.int64)
    mask = np.zeros((len(rows), length), np.int64)
    for row, tokens in enumerate(rows):
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
    return ids, mask


def flaxenc_batch(batch: PairBatch, buckets: tuple[int, ...], pad_id: int, packing: bool = True) -> dict:
    """Both columns padded to the sequence bucket of the longest row and, as flaxenc-train does by
    default, packed into shared rows."""
    longest = max(len(tokens) for column in batch.columns for tokens in column)
    length = next(b for b in buckets if b >= longest)
    columns = []
    for rows in batch.columns:
        ids, mask = _pad(rows, length, pad_id)
        columns.append({"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32)})
    padded = {"columns": columns, "labels": batch.labels}
    return pack_batch(padded, buckets, pad_id=pad_id) if packing else padded


def st_batch(batch: PairBatch, pad_id: int) -> dict:
    """Each column padded to its longest row, as ST's tokenizer(padding=True) does."""
    import torch

    columns = []
    for rows in batch.columns:
        ids, mask = _pad(rows, max(len(tokens) for tokens in rows), pad_id)
        columns.append({"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)})
    return {"columns": columns, "labels": torch.from_numpy(batch.labels)}


def padded_tokens(batch: dict) -> int:
    """Token positions the model computes on in one step, padding included."""
    if "packed" in batch:
        return int(np.prod(batch["packed"]["input_ids"].shape))
    return sum(int(np.prod(column["input_ids"].shape)) for column in batch["columns"])


class FlaxencTrainer:
    """flaxenc's training state and jitted step; run() times a sequence of steps."""

    def __init__(self, folder: Path, objective: Objective, dtype: str, total_steps: int):
        encoder = flaxenc.SentenceEncoder.from_pretrained(folder, dtype=dtype)
        self.config = encoder.model.transformer.config
        self.matmul_parameters = matmul_parameters(encoder.model)  # before training donates the arrays
        self.buckets = sequence_buckets(encoder.max_seq_length)
        self.pad_id = encoder.tokenizer.pad_token_id or 0
        schedule = optim.learning_rate_schedule("warmuplinear", objective.learning_rate, total_steps // 10, total_steps)
        tx = optim.adamw(schedule, weight_decay=objective.weight_decay, max_grad_norm=MAX_GRAD_NORM)
        graphdef, state = init_train_state(encoder.model, tx)
        self.step = TrainStep(graphdef, objective.flaxenc_loss, tx, learning_rate_fn=schedule, dropout=True)
        self.state = self.step.place_state(state)

    def batch(self, batch: PairBatch) -> dict:
        return flaxenc_batch(batch, self.buckets, self.pad_id)

    def run(self, batches: list[dict]) -> float:
        """Seconds for the steps; waits for the device once, after the last step."""
        start = time.perf_counter()
        for batch in batches:
            self.state, _ = self.step(self.state, batch)
        jax.block_until_ready(self.state)
        return time.perf_counter() - start

    def xla_flops(self, batch: dict) -> float:
        """FLOPs of one step by XLA's cost analysis of the compiled program."""
        sharded = shard_batch(batch, self.step.mesh)
        cost = self.step._step.lower(self.state, sharded).compile().cost_analysis()  # TrainStep's jitted function
        return float((cost[0] if isinstance(cost, list) else cost)["flops"])


class STTrainer:
    """A torch training loop over ST's model and loss, step for step what ST's fit() does."""

    def __init__(self, folder: Path, objective: Objective, dtype: str, total_steps: int):
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        self.device = torch_device()
        self.model = SentenceTransformer(str(folder), device=str(self.device))
        self.model.train()
        self.loss = objective.st_loss(self.model)
        self.pad_id = self.model.tokenizer.pad_token_id or 0
        self.bf16 = dtype == "bfloat16"
        # transformers Trainer: no decay on biases and norms; fused AdamW (its default with torch >= 2.8).
        named = list(self.model.named_parameters())
        no_decay = [p for n, p in named if "bias" in n or "norm" in n.lower()]
        decay = [p for n, p in named if not ("bias" in n or "norm" in n.lower())]
        self.parameters = [p for _, p in named]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": objective.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=objective.learning_rate,
            fused=True,
        )
        self.scheduler = transformers.get_linear_schedule_with_warmup(self.optimizer, total_steps // 10, total_steps)

    def batch(self, batch: PairBatch) -> dict:
        return st_batch(batch, self.pad_id)

    def run(self, batches: list[dict]) -> float:
        """Seconds for the steps; waits for the device once, after the last step."""
        import torch

        start = time.perf_counter()
        loss = torch.zeros(())
        for batch in batches:
            features = [{key: value.to(self.device) for key, value in column.items()} for column in batch["columns"]]
            labels = batch["labels"].to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                loss = self.loss(features, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.parameters, MAX_GRAD_NORM)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        loss.item()  # waits for the last step
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start


def matmul_parameters(model) -> int:
    """Parameters of the encoder layers and heads: the ones in matmuls (embeddings are lookups)."""
    return sum(v.size for k, v in flat_params(model).items() if k.startswith(("transformer.layers.", "heads.")))


def analytic_flops(trainer: FlaxencTrainer, rows: int, length: int) -> float:
    """Training FLOPs of a step on `rows` sequences of `length` tokens: 6 * params * tokens + attention.

    Attention: QK^T and AV are 4 * T * H FLOPs per token and layer forward, x3 with the backward
    (the PaLM paper's accounting).
    """
    tokens = rows * length
    attention = 12 * trainer.config.num_hidden_layers * trainer.config.hidden_size * length
    return tokens * (6 * trainer.matmul_parameters + attention)


def _warmup_batches(trainer_batches: list[dict]) -> list[dict]:
    """The first batch of each distinct shape: warm-up compiles every program the timed steps use."""
    seen, warmup = set(), []
    for batch in trainer_batches:
        shape = tuple(np.shape(leaf) for leaf in jax.tree.leaves(batch))
        if shape not in seen:
            seen.add(shape)
            warmup.append(batch)
    return warmup


def measure_train(
    folder: Path,
    objective: Objective,
    dtype: str,
    batches: list[PairBatch],
    repeats: int,
    fixed_length: int | None = None,
    xla_flops: bool = False,
    peak_flops: float | None = None,
) -> dict:
    """Warm-up (a step per batch shape; the first step's time includes flaxenc's compile), then
    the best of `repeats` passes over `batches`, alternating the two sides.

    fixed_length: the batches' rows all have this many tokens; FLOPs, FLOP/s and MFU are then reported.
    """
    batch_size = len(batches[0].labels)
    total_steps = len(batches) * (repeats + 1)
    with matmul_precision(dtype):
        trainers = {
            "flaxenc": FlaxencTrainer(folder, objective, dtype, total_steps),
            "st": STTrainer(folder, objective, dtype, total_steps),
        }
        side_batches = {side: [trainer.batch(b) for b in batches] for side, trainer in trainers.items()}
        result = {"steps": len(batches), "batch_size": batch_size}
        for side, trainer in trainers.items():
            warmup = _warmup_batches(side_batches[side])
            first_step = trainer.run(warmup[:1])
            trainer.run(warmup[1:])
            result[side] = {
                "first_step_s": first_step,
                "warmup_steps": len(warmup),
                "padded_tokens_per_step": float(np.mean([padded_tokens(b) for b in side_batches[side]])),
                "passes_s": [],
            }
        for _ in range(repeats):
            for side, trainer in trainers.items():
                result[side]["passes_s"].append(trainer.run(side_batches[side]))

    for side in trainers:
        step_s = min(result[side]["passes_s"]) / len(batches)
        result[side].update(step_s=step_s, per_s=batch_size / step_s)
    result["flaxenc"]["compiles"] = trainers["flaxenc"].step.num_compiles
    result["ratio"] = result["flaxenc"]["per_s"] / result["st"]["per_s"]
    if fixed_length is not None:
        flops = analytic_flops(trainers["flaxenc"], 2 * batch_size, fixed_length)
        result["flops_per_step"] = flops
        result["flops_method"] = "analytic: 6 * matmul params * tokens + 12 * layers * hidden * length * tokens"
        if xla_flops:
            result["xla_flops_per_step"] = trainers["flaxenc"].xla_flops(side_batches["flaxenc"][0])
        for side in trainers:
            achieved = flops / result[side]["step_s"]
            result[side]["tflops_per_s"] = achieved / 1e12
            result[side]["mfu"] = achieved / peak_flops if peak_flops else None
    return result
