"""flaxenc-train's evaluators: evaluator name -> how its table's columns become the evaluator's arguments.

`evaluation.evaluator` names an entry of flaxenc.evaluation.EVALUATORS; `evaluation.data` is its table
(`text_columns` in the order below, `label_column` where labels are used); `evaluation.args` passes
further keyword arguments by ST's names (at_k, top_k, max_pairs, similarity_fn_names, ...). The
evaluator's name is the table's file name without its extension.

| evaluator             | text_columns                                      | labels                |
|-----------------------|---------------------------------------------------|-----------------------|
| embedding_similarity  | sentence1, sentence2                              | gold scores           |
| binary_classification | sentence1, sentence2                              | 0 / 1                 |
| triplet               | anchor, positive, negative                        | -                     |
| information_retrieval | query, relevant document[, more corpus docs ...]  | -                     |
| reranking             | query, positive, negative[, more negatives ...]   | -                     |
| paraphrase_mining     | sentence1, sentence2 (each row a gold duplicate)  | optional: 1 duplicate |
| translation           | source, target                                    | -                     |
| mse                   | source[, target] (args.teacher_model: ST folder)  | -                     |
| sequential            | none: args.evaluators, a list of evaluation sections ({evaluator, data, args})   |

information_retrieval: queries are the distinct texts of the first column, the corpus every distinct
text of the other columns, and a query's relevant documents the second-column texts of its rows.
reranking: rows are grouped by query; a query's positives are its second-column texts, its negatives
the texts of the further columns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flaxenc import evaluation
from flaxenc_train.config import ConfigError, DatasetConfig, EvaluationConfig, build, validate
from flaxenc_train.data import load_table


@dataclasses.dataclass(frozen=True)
class EvaluatorKind:
    # Text columns: the fewest and the most (None: no limit); what they hold, for error messages.
    min_columns: int
    max_columns: int | None
    layout: str
    # "required", "optional" (used when label_column is set) or "unused" (label_column is ignored).
    labels: str
    # (texts per column, labels or None, common keyword arguments, evaluation.args) -> evaluator
    build: Callable[..., Any]


def _information_retrieval(texts, labels, common, args):
    queries, corpus, relevant = {}, {}, {}
    for query, *documents in zip(*texts):
        qid = queries.setdefault(query, f"q{len(queries)}")
        for document in documents:
            corpus.setdefault(document, f"d{len(corpus)}")
        relevant.setdefault(qid, set()).add(corpus[documents[0]])
    return evaluation.InformationRetrievalEvaluator(
        {qid: text for text, qid in queries.items()}, {cid: text for text, cid in corpus.items()}, relevant,
        **common, **args,
    )  # fmt: skip


def _reranking(texts, labels, common, args):
    samples: dict[str, dict] = {}
    for query, positive, *negatives in zip(*texts):
        sample = samples.setdefault(query, {"query": query, "positive": [], "negative": []})
        if positive not in sample["positive"]:
            sample["positive"].append(positive)
        sample["negative"].extend(n for n in negatives if n not in sample["negative"])
    return evaluation.RerankingEvaluator(list(samples.values()), **common, **args)


def _paraphrase_mining(texts, labels, common, args):
    sentences = list(dict.fromkeys(text for column in texts for text in column))
    ids = {text: f"s{i}" for i, text in enumerate(sentences)}
    pairs = [(ids[a], ids[b]) for row, (a, b) in enumerate(zip(*texts)) if labels is None or labels[row] == 1]
    return evaluation.ParaphraseMiningEvaluator({ids[t]: t for t in sentences}, pairs, **common, **args)


def _mse(texts, labels, common, args):
    from flaxenc import SentenceEncoder
    from flaxenc_train.model import resolve_path

    args = dict(args)
    teacher = args.pop("teacher_model", None)
    if not isinstance(teacher, str) or not teacher:
        raise ConfigError("evaluation.args.teacher_model: mse needs the teacher's ST folder (a path or package:...)")
    teacher = SentenceEncoder.from_pretrained(resolve_path(teacher))
    return evaluation.MSEEvaluator(texts[0], texts[-1], teacher_model=teacher, **common, **args)


def _binary_classification(texts, labels, common, args):
    return evaluation.BinaryClassificationEvaluator(*texts, [int(label) for label in labels], **common, **args)


EVALUATOR_KINDS: dict[str, EvaluatorKind] = {
    "embedding_similarity": EvaluatorKind(
        2, 2, "sentence1, sentence2", "required",
        lambda texts, labels, common, args: evaluation.EmbeddingSimilarityEvaluator(*texts, labels, **common, **args),
    ),
    "binary_classification": EvaluatorKind(2, 2, "sentence1, sentence2", "required", _binary_classification),
    "triplet": EvaluatorKind(
        3, 3, "anchor, positive, negative", "unused",
        lambda texts, labels, common, args: evaluation.TripletEvaluator(*texts, **common, **args),
    ),
    "information_retrieval": EvaluatorKind(
        2, None, "query, relevant document[, more corpus documents]", "unused", _information_retrieval
    ),
    "reranking": EvaluatorKind(3, None, "query, positive, negative[, more negatives]", "unused", _reranking),
    "paraphrase_mining": EvaluatorKind(2, 2, "sentence1, sentence2 (duplicate pairs)", "optional", _paraphrase_mining),
    "translation": EvaluatorKind(
        2, 2, "source, target", "unused",
        lambda texts, labels, common, args: evaluation.TranslationEvaluator(*texts, **common, **args),
    ),
    "mse": EvaluatorKind(1, 2, "source[, target]", "unused", _mse),
}  # fmt: skip


def _check_columns(name: str, kind: EvaluatorKind, data: DatasetConfig) -> None:
    count = len(data.text_columns)
    if count < kind.min_columns or (kind.max_columns is not None and count > kind.max_columns):
        wanted = kind.min_columns if kind.min_columns == kind.max_columns else f"{kind.min_columns} or more"
        if kind.max_columns is not None and kind.min_columns != kind.max_columns:
            wanted = f"{kind.min_columns} to {kind.max_columns}"
        raise ConfigError(
            f"evaluation: {name} takes {wanted} text columns ({kind.layout}); {data.path} names {list(data.text_columns)}"
        )


def _sequential(config: EvaluationConfig, data: DatasetConfig | None):
    args = dict(config.args)
    sections = args.pop("evaluators", None)
    if not isinstance(sections, list) or not sections:
        raise ConfigError("evaluation.args.evaluators: sequential needs a list of evaluation sections ({evaluator, data, args})")
    parts = []
    for index, section in enumerate(sections):
        key = f"evaluation.args.evaluators[{index}]"
        if not isinstance(section, dict):
            raise ConfigError(f"{key}: expected a mapping with evaluator, data and args, got {section!r}")
        part = build(EvaluationConfig, {"batch_size": config.batch_size, **section}, key)
        validate(part, key)
        if part.evaluator in ("", "sequential"):
            raise ConfigError(f"{key}.evaluator: name one evaluator other than sequential, got {part.evaluator!r}")
        parts.append(build_evaluator(part))
    try:
        return evaluation.SequentialEvaluator(parts, **args)
    except TypeError as error:
        raise ConfigError(f"evaluation.args: {error}") from None


def build_evaluator(config: EvaluationConfig, data: DatasetConfig | None = None):
    """The evaluator named in the config, over `data` (default: its data table); None when none is named."""
    if not config.evaluator:
        return None
    if config.evaluator == "sequential":
        return _sequential(config, data)
    kind = EVALUATOR_KINDS.get(config.evaluator)
    if kind is None:
        known = ", ".join([*EVALUATOR_KINDS, "sequential"])
        raise ConfigError(f"evaluation.evaluator: unknown evaluator {config.evaluator!r} (from a config: {known})")
    data = data or config.data
    _check_columns(config.evaluator, kind, data)
    if kind.labels == "unused":
        data = dataclasses.replace(data, label_column=None)
    if kind.labels == "required" and data.label_column is None:
        raise ConfigError(f"evaluation: {config.evaluator} needs labels; set evaluation.data.label_column")
    table = load_table(data)
    texts = [table[column][:] for column in data.text_columns]
    labels = table["label"][:] if data.label_column is not None else None
    if config.evaluator in ("binary_classification", "paraphrase_mining") and labels is not None:
        bad = sorted({label for label in labels if label not in (0, 1)})
        if bad:
            raise ConfigError(f"{data.path}: {config.evaluator} needs 0/1 labels in {data.label_column!r}, found {bad[:5]}")
    common = dict(batch_size=config.batch_size, name=Path(data.path).stem.replace("/", "_"))
    try:
        return kind.build(texts, labels, common, dict(config.args))
    except TypeError as error:  # an unknown or duplicated keyword in evaluation.args
        raise ConfigError(f"evaluation.args: {config.evaluator}: {error}") from None


__all__ = ["EVALUATOR_KINDS", "EvaluatorKind", "build_evaluator"]
