"""ST's training/nli/training_nli_v2.py in flaxenc: MultipleNegativesRankingLoss with in-batch negatives.

ST's script trains on AllNLI (anchor, entailment, contradiction) triplets with batch 128, one epoch,
warmup over 10% of the steps, duplicate-free batches and STS-B dev as evaluator. Offline, the
positive pairs here are MRPC's paraphrases (label 1 rows of its train split) as (anchor, positive):
every other positive in the batch is a negative. The defaults are set as ST's Trainer has them (lr
5e-5, no weight decay, linear schedule). With --no-duplicates the batches are duplicate-free, as ST's
NO_DUPLICATES: the Trainer then streams the data (`batch_sampler="no_duplicates"`);
without, the in-memory data batches as ST's default sampler does (a text may occur twice in a batch).

    python -m examples.training_mnrl [--model M] [--batch-size 128] [--train-pairs 0] [--output DIR]
"""

from __future__ import annotations

import sys

import datasets

from bench.data import read_mrpc
from examples.common import load, parser
from examples.training_stsbenchmark import evaluator
from flaxenc import losses
from flaxenc_train import Trainer, TrainingArguments


def paraphrase_pairs(limit: int = 0) -> datasets.Dataset:
    """MRPC train's paraphrases as (anchor, positive)."""
    rows = [(first, second) for first, second, label in read_mrpc("train") if label == 1][: limit or None]
    anchors, positives = zip(*rows)
    return datasets.Dataset.from_dict({"anchor": anchors, "positive": positives})


def main(argv: list[str] | None = None) -> dict:
    args = _arguments().parse_args(argv)
    model = load(args.model)
    dev_evaluator, test_evaluator = evaluator("dev", args.dev_pairs), evaluator("test", args.test_pairs)
    print("before training:", dev_evaluator(model))

    data = paraphrase_pairs(args.train_pairs)
    arguments = TrainingArguments(
        output_dir=args.output, num_train_epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=5e-5, weight_decay=0.0, lr_scheduler_type="linear", warmup_ratio=0.1,
        eval_steps=args.eval_steps, save_steps=args.eval_steps, save_total_limit=2, logging_steps=args.eval_steps,
        seed=args.seed, dropout=not args.no_dropout,
        batch_sampler="no_duplicates" if args.no_duplicates else None,
    )
    loss = losses.MultipleNegativesRankingLoss()  # scale 20, cosine similarity: ST's defaults
    trainer = Trainer(model, arguments, data, loss, evaluator=dev_evaluator)
    summary = trainer.train()

    test = test_evaluator(model)
    print("after training:", test)
    return {"summary": summary, "test": test, "run": trainer.run}


def _arguments():
    result = parser(__doc__.split("\n\n")[0])
    result.add_argument("--epochs", type=int, default=1)
    result.add_argument("--batch-size", type=int, default=128)
    result.add_argument("--train-pairs", type=int, default=0, help="the first N MRPC paraphrase pairs (0: all 2753)")
    result.add_argument("--dev-pairs", type=int, default=0)
    result.add_argument("--test-pairs", type=int, default=0)
    result.add_argument("--eval-steps", type=int, default=10)
    result.add_argument("--seed", type=int, default=42)
    result.add_argument("--no-dropout", action="store_true")
    result.add_argument("--no-duplicates", action="store_true", help="duplicate-free batches (streamed), as ST's script")
    result.add_argument("--output", default="output/training_mnrl")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
