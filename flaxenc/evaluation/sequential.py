"""SequentialEvaluator: several evaluators run one after the other, their metrics merged."""

from __future__ import annotations

from collections.abc import Callable, Iterable


class SequentialEvaluator:
    """Runs each evaluator in turn and merges their metrics; "sequential_score" is main_score_function of
    their primary metrics (the last one by default). ST's class."""

    # ST base/evaluation/sequential.py

    greater_is_better = True
    primary_metric = "sequential_score"

    def __init__(self, evaluators: Iterable, main_score_function: Callable = lambda scores: scores[-1], name: str = ""):
        self.evaluators = list(evaluators)
        self.main_score_function = main_score_function
        self.name = name  # ST's has none; flaxenc-train's model card names evaluators

    def __call__(self, encoder, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        evaluations, scores = [], []
        for index, evaluator in enumerate(self.evaluators):
            evaluation = evaluator(encoder, output_path, epoch, steps)
            if not isinstance(evaluation, dict):
                scores.append(evaluation)
                evaluation = {f"evaluator_{index}": evaluation}
            elif getattr(evaluator, "primary_metric", None) is not None:
                scores.append(evaluation[evaluator.primary_metric])
            else:
                scores.append(evaluation[next(iter(evaluation))])
            evaluations.append(evaluation)
        results = {key: value for evaluation in evaluations for key, value in evaluation.items()}
        results["sequential_score"] = self.main_score_function(scores) if scores else 0.0
        return results
