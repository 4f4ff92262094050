"""End to end on STS-B: flaxenc's training program against PyTorch sentence-transformers' fit().

all-MiniLM-L6-v2 is fine-tuned with CosineSimilarityLoss for one epoch (batch 16, lr 2e-5,
WarmupLinear over ceil(10%) of the steps, AdamW weight decay 0.01, gradient clipping at 1) twice:

* by flaxenc's training program (flaxenc_train.loop.Run on configs/stsb_cosine.yaml), and
* by ST's own `SentenceTransformer.fit()` with the same hyperparameters and the same step count.

Both see the same batches in the same order: ST is given the rows in flaxenc's epoch_order(0) and
its trainer's batch sampler, which fit() builds as RandomSampler(generator seeded by args.seed)
(sentence_transformers/base/trainer.py, get_batch_sampler) and so reshuffles whatever DataLoader it
is given, is replaced for the duration of fit() by a sequential one. A wrapper around ST's loss
records every batch fit() feeds it, and each is checked token by token against the batch flaxenc
built for that step.

Then both final models are scored on STS-B test: flaxenc's by its training program's test evaluator,
ST's by ST's EmbeddingSimilarityEvaluator (cosine Spearman), and flaxenc's saved final folder is
loaded in PyTorch ST and scored by ST's evaluator too. Dropout is on in both trainings (as ST
trains), with different random streams, so the two models differ by more than float noise;
--no-dropout turns it off in both (flaxenc: dropout=false; ST: every nn.Dropout's p set to 0).

    python -m bench.stsb_e2e [--limit N] [--test-limit N] [--out DIR] [--no-dropout]

prints the figures and writes them to DIR/stsb_e2e.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from bench.data import data_folder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "stsb_cosine.yaml"
METRIC = "spearman_cosine"


def _stsb(split: str, folder: Path) -> str:
    return str(folder / "stsb" / f"sts-{split}.csv")


def flaxenc_config(output_dir: Path, limit: int, test_limit: int, dev_limit: int, dropout: bool, folder: Path):
    from flaxenc_train.config import load_config

    overrides = [
        f"output_dir={output_dir}",
        f"data.train.path={_stsb('train', folder)}",
        f"data.train.limit={limit}",
        f"evaluation.data.path={_stsb('dev', folder)}",
        f"evaluation.data.limit={dev_limit}",
        f"evaluation.test_data.path={_stsb('test', folder)}",
        f"evaluation.test_data.limit={test_limit}",
        "evaluation.every_steps=0",  # the dev set is scored once, at the end of the epoch
        "checkpoint.every_steps=0",  # one checkpoint, at the end
        "resume=false",
        f"dropout={str(dropout).lower()}",
    ]
    return load_config(CONFIG, overrides)


class RecordingLoss:
    """Built lazily (torch is imported only when ST runs): ST's loss, unchanged, plus a record of each batch."""

    def __new__(cls, loss):
        import torch

        class _Recording(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.loss = inner
                self.model = inner.model
                self.steps: list[tuple[list[list[list[int]]], np.ndarray]] = []

            def forward(self, features, labels):
                columns = []
                for f in features:
                    ids, mask = f["input_ids"].numpy(), f["attention_mask"].numpy().astype(bool)
                    columns.append([row[m].tolist() for row, m in zip(ids, mask)])
                self.steps.append((columns, labels.detach().numpy().astype(np.float32).copy()))
                return self.loss(features, labels)

        return _Recording(loss)


@contextlib.contextmanager
def sequential_batches():
    """Makes ST's trainer batch the training rows in the order given, instead of reshuffling them."""
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from torch.utils.data import SequentialSampler

    def get_batch_sampler(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
        return DefaultBatchSampler(
            SequentialSampler(dataset), batch_size=batch_size, drop_last=drop_last,
            valid_label_columns=valid_label_columns, generator=generator, seed=seed,
        )

    had = "get_batch_sampler" in SentenceTransformerTrainer.__dict__
    original = SentenceTransformerTrainer.__dict__.get("get_batch_sampler")
    SentenceTransformerTrainer.get_batch_sampler = get_batch_sampler
    try:
        yield
    finally:
        if had:
            SentenceTransformerTrainer.get_batch_sampler = original
        else:
            del SentenceTransformerTrainer.get_batch_sampler


def st_fit(
    model_folder: str, rows, *, batch_size, steps, warmup, lr, weight_decay, max_grad_norm, dropout, seed, work_dir
):
    """ST's fit() over `rows` [(text1, text2, label)] in that order; returns (model, recorded steps, seconds)."""
    import torch
    from sentence_transformers import InputExample, SentenceTransformer
    from sentence_transformers.sentence_transformer import losses
    from torch.utils.data import DataLoader

    torch.manual_seed(seed)
    model = SentenceTransformer(model_folder, device="cpu")
    if not dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0  # also BERT's attention dropout, which reads self.dropout.p
    recording = RecordingLoss(losses.CosineSimilarityLoss(model))
    examples = [InputExample(texts=[a, b], label=float(label)) for a, b, label in rows]
    loader = DataLoader(examples, batch_size=batch_size, shuffle=False)
    work_dir.mkdir(parents=True, exist_ok=True)
    here = os.getcwd()
    os.chdir(work_dir)  # fit() names its Trainer output_dir checkpoints/model relative to the working directory
    try:
        started = time.perf_counter()
        with sequential_batches():
            model.fit(
                train_objectives=[(loader, recording)],
                epochs=1,
                # fit()'s default t_total, len(rows) // batch, leaves a short last batch out of the schedule
                # (its Trainer still takes that step, at learning rate 0): give it flaxenc's step count.
                steps_per_epoch=steps,
                scheduler="WarmupLinear",
                warmup_steps=warmup,
                optimizer_params={"lr": lr},
                weight_decay=weight_decay,
                max_grad_norm=max_grad_norm,
                show_progress_bar=False,
            )
        seconds = time.perf_counter() - started
    finally:
        os.chdir(here)
    model.eval()
    return model, recording.steps, seconds


def check_same_batches(recorded, run) -> int:
    """Asserts ST's recorded batches are flaxenc's, token for token and label for label; returns the count."""
    batches, batch_size = run.batches.batch_iterator, run.config.batch_size  # the in-memory table's batches
    order = batches.epoch_order(0)
    if len(recorded) != run.total_steps:
        raise AssertionError(f"ST took {len(recorded)} steps, flaxenc {run.total_steps}")
    for step, (columns, labels) in enumerate(recorded):
        rows = order[step * batch_size : (step + 1) * batch_size]
        flax = batches.make_batch(rows)
        for column, (st_rows, flax_column) in enumerate(zip(columns, flax["columns"])):
            mask = flax_column["attention_mask"].astype(bool)
            flax_rows = [row[m].tolist() for row, m in zip(flax_column["input_ids"], mask)]
            if st_rows != flax_rows:
                raise AssertionError(f"step {step}, text column {column}: ST's batch is not flaxenc's")
        if not np.allclose(labels, flax["labels"], rtol=0, atol=1e-6):
            raise AssertionError(f"step {step}: ST's labels are not flaxenc's")
    return len(recorded)


def st_score(model, table, columns, name: str) -> float:
    """ST's EmbeddingSimilarityEvaluator (cosine Spearman) of a SentenceTransformer on a table."""
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    first, second = (table[c][:] for c in columns)
    evaluator = EmbeddingSimilarityEvaluator(
        first, second, table["label"][:], batch_size=64, name=name, write_csv=False
    )
    result = evaluator(model)
    return float(result[f"{name}_{METRIC}"])


def run(limit: int = 0, test_limit: int = 0, dev_limit: int = 64, out: str | os.PathLike = "output/stsb_e2e",
        dropout: bool = True, progress: bool = True) -> dict:
    """Trains both, scores both; returns the figures (also written to OUT/stsb_e2e.json)."""
    from sentence_transformers import SentenceTransformer

    from flaxenc_train.data import load_table
    from flaxenc_train.loop import Run
    from flaxenc_train.model import resolve_path

    folder = data_folder()
    out = Path(out).resolve()
    for earlier in (out / "flaxenc", out / "st_work", out / "st_final"):
        if (earlier / "config.yaml").is_file() or (earlier / "modules.json").is_file() or earlier.name == "st_work":
            shutil.rmtree(earlier, ignore_errors=True)  # this bench's own folders from an earlier run: start afresh
    config = flaxenc_config(out / "flaxenc", limit, test_limit, dev_limit, dropout, folder)
    opt = config.optimizer

    # flaxenc's training program.
    started = time.perf_counter()
    flax_run = Run(config, progress=progress)
    summary = flax_run.train()
    flax_total = time.perf_counter() - started
    test_name = Path(config.evaluation.test_data.path).stem
    flax_spearman = float(summary.test[f"{test_name}_{METRIC}"])
    print(f"flaxenc: {summary.steps} steps in {summary.seconds:.1f} s; test {METRIC} {flax_spearman:.5f}", flush=True)

    # ST's fit() on the same rows, in flaxenc's order, with the same schedule.
    spec = config.data.train
    table = load_table(spec)
    order = flax_run.batches.batch_iterator.epoch_order(0)
    texts = [table[c][:] for c in spec.text_columns]
    labels = table["label"][:]
    rows = [(texts[0][i], texts[1][i], labels[i]) for i in order]
    warmup = math.ceil(opt.warmup_ratio * flax_run.total_steps)
    assert warmup == flax_run.warmup_steps, (warmup, flax_run.warmup_steps)
    model_folder = resolve_path(config.model.name_or_path)
    st_model, recorded, st_seconds = st_fit(
        model_folder, rows, batch_size=config.batch_size, steps=flax_run.total_steps, warmup=warmup,
        lr=opt.learning_rate, weight_decay=opt.weight_decay, max_grad_norm=opt.max_grad_norm,
        dropout=dropout, seed=config.seed, work_dir=out / "st_work",
    )
    same_batches = check_same_batches(recorded, flax_run)
    st_model.save(str(out / "st_final"))

    test_spec = config.evaluation.test_data
    test_table = load_table(test_spec)
    st_spearman = st_score(st_model, test_table, test_spec.text_columns, test_name)
    print(f"ST: {len(recorded)} steps in {st_seconds:.1f} s; test {METRIC} {st_spearman:.5f}", flush=True)

    loaded = SentenceTransformer(summary.final_model, device="cpu")
    loaded_spearman = st_score(loaded, test_table, test_spec.text_columns, test_name)
    print(f"flaxenc's final folder loaded in ST: test {METRIC} {loaded_spearman:.5f}", flush=True)

    result = {
        "train_pairs": len(table),
        "test_pairs": len(test_table),
        "steps": flax_run.total_steps,
        "warmup_steps": warmup,
        "batch_size": config.batch_size,
        "learning_rate": opt.learning_rate,
        "dropout": dropout,
        "same_batches_checked": same_batches,
        "flaxenc_spearman": flax_spearman,
        "st_spearman": st_spearman,
        "difference": flax_spearman - st_spearman,
        "flaxenc_folder_in_st_spearman": loaded_spearman,
        "flaxenc_vs_its_folder_in_st": flax_spearman - loaded_spearman,
        "flaxenc_train_loop_seconds": summary.seconds,
        "flaxenc_total_seconds": flax_total,
        "st_fit_seconds": st_seconds,
        "flaxenc_final_loss": summary.final_loss,
        "flaxenc_dev": summary.eval,
        "flaxenc_final_model": summary.final_model,
        "st_final_model": str(out / "st_final"),
        "timing_note": "flaxenc_train_loop_seconds: Run.train's loop (jit compiles, steps, the end-of-epoch dev "
        "evaluation on dev_limit pairs and its checkpoint); flaxenc_total_seconds adds model loading, "
        "tokenizing, saving and the test evaluation; st_fit_seconds: SentenceTransformer.fit() alone.",
        "dev_limit": dev_limit,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "stsb_e2e.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stsb_e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=0, help="train on the first N STS-B train pairs (0: all 5749)")
    parser.add_argument("--test-limit", type=int, default=0, help="score on the first N STS-B test pairs (0: all 1379)")
    parser.add_argument("--dev-limit", type=int, default=64, help="flaxenc's end-of-epoch dev score, N pairs (0: all)")
    parser.add_argument("--out", default="output/stsb_e2e", help="output folder (default: output/stsb_e2e)")
    parser.add_argument("--no-dropout", action="store_true", help="train both without dropout")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.limit, args.test_limit, args.dev_limit, args.out, not args.no_dropout, not args.no_progress)
    print(json.dumps(result, indent=2))
    bound = 0.005
    verdict = "within" if abs(result["difference"]) <= bound else "OUTSIDE"
    print(f"|flaxenc - ST| = {abs(result['difference']):.5f}: {verdict} the {bound} bound")
    return 0


if __name__ == "__main__":
    sys.exit(main())
