"""ST's training/sts/training_stsbenchmark.py in flaxenc: fine-tune on STS-B with CosineSimilarityLoss.

As ST's script: batch 16, 4 epochs, warmup over 10% of the steps, the STS-B dev set scored every 100
steps and STS-B test at the end, and ST's Trainer defaults, set here explicitly since flaxenc's
follow fit() (lr 5e-5, no weight decay, a linear schedule). ST's script starts from
distilbert-base-uncased; offline the default here is all-MiniLM-L6-v2.

    python -m examples.training_stsbenchmark [--model M] [--epochs 4] [--train-pairs 0] [--output DIR]
"""

from __future__ import annotations

import sys

import datasets

from bench.data import read_stsb
from examples.common import load, parser
from flaxenc import losses
from flaxenc.evaluation import EmbeddingSimilarityEvaluator
from flaxenc_train import Trainer, TrainingArguments


def stsb(split: str, limit: int = 0) -> datasets.Dataset:
    """An STS-B split as sentence1, sentence2, score (gold 0..5 divided by 5, as ST's stsb dataset)."""
    rows = read_stsb(split)[: limit or None]
    first, second, scores = zip(*rows)
    return datasets.Dataset.from_dict({"sentence1": first, "sentence2": second, "score": [s / 5 for s in scores]})


def evaluator(split: str, limit: int = 0) -> EmbeddingSimilarityEvaluator:
    data = stsb(split, limit)
    return EmbeddingSimilarityEvaluator(
        data["sentence1"], data["sentence2"], data["score"], main_similarity="cosine", name=f"sts-{split}"
    )


def main(argv: list[str] | None = None) -> dict:
    args = _arguments().parse_args(argv)
    model = load(args.model)
    dev_evaluator, test_evaluator = evaluator("dev", args.dev_pairs), evaluator("test", args.test_pairs)
    print("before training:", dev_evaluator(model))

    arguments = TrainingArguments(
        output_dir=args.output, num_train_epochs=args.epochs, batch_size=args.batch_size,
        learning_rate=5e-5, weight_decay=0.0, lr_scheduler_type="linear", warmup_ratio=0.1,
        eval_steps=100, save_steps=100, save_total_limit=2, logging_steps=100, seed=args.seed, dropout=not args.no_dropout,
    )
    trainer = Trainer(model, arguments, stsb("train", args.train_pairs), losses.CosineSimilarityLoss(), evaluator=dev_evaluator)
    summary = trainer.train()  # the trained model is in output/final (an ST folder) and in `model`

    test = test_evaluator(model)
    print("after training:", test)
    return {"summary": summary, "test": test, "run": trainer.run}


def _arguments():
    result = parser(__doc__.split("\n\n")[0])
    result.add_argument("--epochs", type=int, default=4)
    result.add_argument("--batch-size", type=int, default=16)
    result.add_argument("--train-pairs", type=int, default=0, help="the first N STS-B train pairs (0: all 5749)")
    result.add_argument("--dev-pairs", type=int, default=0, help="the first N dev pairs (0: all 1500)")
    result.add_argument("--test-pairs", type=int, default=0, help="the first N test pairs (0: all 1379)")
    result.add_argument("--seed", type=int, default=42)
    result.add_argument("--no-dropout", action="store_true", help="train without dropout (deterministic)")
    result.add_argument("--output", default="output/training_stsbenchmark")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
