"""sentence-transformers' losses as pure JAX functions of embeddings and labels.

Each loss copies the math and defaults of ST 6.2 (sentence_transformers/sentence_transformer/losses/);
the comment above each function names the file. Two layers:

- one pure function per loss, `contrastive_loss(anchor, other, labels, ...) -> scalar`;
- one frozen (hashable, so a static argument of `jax.jit`) dataclass per loss, named as ST's class,
  holding the hyper-parameters with ST's defaults and called as `loss(embeddings, labels)`, with one
  [B, D] array per text column in column order (anchor, positive, negatives...) and the label column
  (None for losses without labels).

What a train step needs of a loss beyond that is the protocol `LossFunction` (base class `Loss`):
a per-step key, GradCache mini-batches (the Cached* losses; flaxenc/gradcache.py embeds the batch,
the loss chunks its score matrix), a frozen guide model (GIST) or the loss's own parameters
(SoftmaxLoss).

Everything is computed in float32. Under `jax.jit` with the batch sharded over a mesh, these functions
see the global batch (jit's global view), so in-batch negatives come from every device without a
`shard_map` or an all-gather: MultipleNegativesRankingLoss always behaves as ST's
`gather_across_devices=True`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

import jax
import jax.numpy as jnp

# ----------------------------------------------------------------------------- similarity helpers


def _as_float32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x, dtype=jnp.float32)


def _l2_norm(x: jax.Array, axis: int = -1, keepdims: bool = False) -> jax.Array:
    """||x||_2 whose gradient at x = 0 is 0 (as torch's), not NaN (as jnp.linalg.norm's)."""
    squared = jnp.sum(x * x, axis=axis, keepdims=keepdims)
    nonzero = squared > 0
    return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, squared, 1.0)), 0.0)


def _normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """torch.nn.functional.normalize(x, p=2, dim=-1): x / max(||x||, eps)."""
    return x / jnp.maximum(_l2_norm(x, keepdims=True), eps)


def _torch_cosine_similarity(x: jax.Array, y: jax.Array, eps: float = 1e-8) -> jax.Array:
    """torch.cosine_similarity(x, y): each side divided by its norm clamped at eps (1e-8), then summed."""
    return jnp.sum(_normalize(x, eps) * _normalize(y, eps), axis=-1)


def pairwise_cos_sim(x: jax.Array, y: jax.Array) -> jax.Array:
    """cos(x[i], y[i]) -> [B]; ST util/similarity.py pairwise_cos_sim (F.normalize, eps 1e-12)."""
    return jnp.sum(_normalize(x) * _normalize(y), axis=-1)


def cos_sim(x: jax.Array, y: jax.Array) -> jax.Array:
    """cos(x[i], y[j]) -> [Bx, By]; ST util/similarity.py cos_sim."""
    return _normalize(x) @ _normalize(y).T


def pairwise_angle_sim(x: jax.Array, y: jax.Array) -> jax.Array:
    """|cos(x, y) + sin(x, y)| pairing dims i and i + D/2 -> [B]; ST util/similarity.py pairwise_angle_sim."""
    if x.shape[-1] % 2:  # ST pads an odd dimension with one zero
        x, y = (jnp.pad(t, ((0, 0), (0, 1))) for t in (x, y))
    x, y = _normalize(x), _normalize(y)
    half = x.shape[-1] // 2
    sines = jnp.sum(x[:, half:] * y[:, :half] - x[:, :half] * y[:, half:], axis=-1)
    return jnp.abs(jnp.sum(x * y, axis=-1) + sines)


# ContrastiveLoss / OnlineContrastiveLoss distances; ST losses/contrastive.py SiameseDistanceMetric.
# F.pairwise_distance adds eps = 1e-6 to the difference before taking the norm.
SIAMESE_DISTANCES = {
    "euclidean": lambda x, y: _l2_norm(x - y + 1e-6),
    "manhattan": lambda x, y: jnp.sum(jnp.abs(x - y + 1e-6), axis=-1),
    "cosine_distance": lambda x, y: 1.0 - _torch_cosine_similarity(x, y),
}

# TripletLoss distances; ST losses/triplet.py TripletDistanceMetric (no eps here).
TRIPLET_DISTANCES = {
    "euclidean": lambda x, y: _l2_norm(x - y),
    "manhattan": lambda x, y: jnp.sum(jnp.abs(x - y), axis=-1),
    "cosine": lambda x, y: 1.0 - pairwise_cos_sim(x, y),
}


def _pick(table: Mapping[str, Any], name: str, what: str) -> Any:
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; expected one of {sorted(table)}")
    return table[name]


def _check_labels(labels: jax.Array | None, batch_size: int, loss_name: str) -> jax.Array:
    """Labels flattened to [B] float32; ST raises the same error when their count is not B."""
    if labels is None:
        raise ValueError(f"{loss_name} requires labels")
    labels = _as_float32(labels).reshape(-1)
    if labels.shape[0] != batch_size:
        raise ValueError(f"{loss_name} expects {batch_size} labels (one per example), got {labels.shape[0]}")
    return labels


# ----------------------------------------------------------------------------- pure loss functions


# CosineSimilarityLoss's loss_fct: nn.MSELoss() (ST's default) or nn.L1Loss(), both mean-reduced.
COSINE_SIMILARITY_LOSS_FCTS = {"mse": jnp.square, "l1": jnp.abs}


# ST losses/cosine_similarity.py: loss_fct(torch.cosine_similarity(u, v), labels); identity transformation.
def cosine_similarity_loss(anchor: jax.Array, other: jax.Array, labels: jax.Array, loss_fct: str = "mse") -> jax.Array:
    labels = _check_labels(labels, anchor.shape[0], "CosineSimilarityLoss")
    errors = _torch_cosine_similarity(_as_float32(anchor), _as_float32(other)) - labels
    return jnp.mean(_pick(COSINE_SIMILARITY_LOSS_FCTS, loss_fct, "loss_fct")(errors))


# ST losses/contrastive.py: 0.5 * (y d^2 + (1 - y) relu(margin - d)^2), mean or sum.
def contrastive_loss(
    anchor: jax.Array,
    other: jax.Array,
    labels: jax.Array,
    distance_metric: str = "cosine_distance",
    margin: float = 0.5,
    size_average: bool = True,
) -> jax.Array:
    labels = _check_labels(labels, anchor.shape[0], "ContrastiveLoss")
    distances = _pick(SIAMESE_DISTANCES, distance_metric, "distance_metric")(_as_float32(anchor), _as_float32(other))
    losses = 0.5 * (labels * distances**2 + (1 - labels) * jax.nn.relu(margin - distances) ** 2)
    return jnp.mean(losses) if size_average else jnp.sum(losses)


# ST losses/online_contrastive.py: only hard pairs count, i.e. negatives closer than the farthest
# positive and positives farther than the closest negative; labels other than 0 and 1 are ignored.
def online_contrastive_loss(
    anchor: jax.Array,
    other: jax.Array,
    labels: jax.Array,
    distance_metric: str = "cosine_distance",
    margin: float = 0.5,
) -> jax.Array:
    labels = _check_labels(labels, anchor.shape[0], "OnlineContrastiveLoss")
    distances = _pick(SIAMESE_DISTANCES, distance_metric, "distance_metric")(_as_float32(anchor), _as_float32(other))
    is_positive, is_negative = labels == 1, labels == 0
    # Boolean indexing in ST; here masks, so shapes stay static. The thresholds carry no gradient.
    thresholds = jax.lax.stop_gradient(distances)
    farthest_positive = jnp.max(jnp.where(is_positive, thresholds, -jnp.inf))
    closest_negative = jnp.min(jnp.where(is_negative, thresholds, jnp.inf))
    mean_positive = jnp.sum(jnp.where(is_positive, thresholds, 0.0)) / jnp.sum(is_positive)
    mean_negative = jnp.sum(jnp.where(is_negative, thresholds, 0.0)) / jnp.sum(is_negative)
    # Without positives ST compares negatives to their own mean, and positives likewise.
    negative_threshold = jnp.where(jnp.any(is_positive), farthest_positive, mean_negative)
    positive_threshold = jnp.where(jnp.any(is_negative), closest_negative, mean_positive)
    hard_negatives = is_negative & (distances < negative_threshold)
    hard_positives = is_positive & (distances > positive_threshold)
    positive_loss = jnp.sum(jnp.where(hard_positives, distances**2, 0.0))
    negative_loss = jnp.sum(jnp.where(hard_negatives, jax.nn.relu(margin - distances) ** 2, 0.0))
    return positive_loss + negative_loss


MNRL_DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
MNRL_HARDNESS_MODES = (None, "in_batch_negatives", "hard_negatives", "all_negatives")


def _check_mnrl_options(scale: float, directions: Sequence[str], partition_mode: str, hardness_mode, hardness_strength):
    """The argument checks of ST's MultipleNegativesRankingLoss.__init__."""
    if not scale > 0:
        raise ValueError("scale must be a positive value")
    if not directions or not set(directions) <= set(MNRL_DIRECTIONS):
        raise ValueError(f"invalid directions {tuple(directions)}; choose from {MNRL_DIRECTIONS}")
    if "query_to_doc" not in directions:
        raise ValueError("'query_to_doc' direction is required (contains the positive pair)")
    if partition_mode not in ("joint", "per_direction"):
        raise ValueError(f"partition_mode must be 'joint' or 'per_direction', got {partition_mode!r}")
    if partition_mode == "per_direction" and set(directions) & {"query_to_query", "doc_to_doc"}:
        raise ValueError("partition_mode='per_direction' cannot be used with 'query_to_query' or 'doc_to_doc'")
    if hardness_mode not in MNRL_HARDNESS_MODES:
        raise ValueError(f"hardness_mode must be one of {MNRL_HARDNESS_MODES}, got {hardness_mode!r}")
    if hardness_strength < 0:
        raise ValueError("hardness_strength must be non-negative")


# ST losses/multiple_negatives_ranking.py: cross-entropy of scale * cos(query_i, doc_j) over every
# positive and hard negative in the batch; row i's target is its own positive (column i).
# Under jit on a sharded batch this is the global batch, i.e. ST's gather_across_devices=True.
def multiple_negatives_ranking_loss(
    anchor: jax.Array,
    positive: jax.Array,
    *negatives: jax.Array,
    scale: float = 20.0,
    directions: Sequence[str] = ("query_to_doc",),
    partition_mode: str = "joint",
    hardness_mode: str | None = None,
    hardness_strength: float = 0.0,
) -> jax.Array:
    _check_mnrl_options(scale, directions, partition_mode, hardness_mode, hardness_strength)
    queries, positives = _as_float32(anchor), _as_float32(positive)
    docs = jnp.concatenate([positives, *(_as_float32(n) for n in negatives)])  # [B * (1 + N), D]
    rows = jnp.arange(queries.shape[0])
    options = (scale, tuple(directions), partition_mode, hardness_mode, hardness_strength)
    return jnp.mean(_mnrl_row_losses(queries, positives, docs, rows, *options))


def _mnrl_row_losses(
    queries, positives, docs, rows, scale, directions, partition_mode, hardness_mode, hardness_strength
):
    """MNRL's per-row losses [m] of the rows `rows` [m] of the score matrices (all rows: the plain loss)."""
    batch_size = queries.shape[0]
    columns = docs.shape[0] // batch_size
    own = rows[:, None] == jnp.arange(batch_size)[None, :]  # [m, B]: each row's own column
    own_docs = jnp.tile(own, (1, columns))  # [m, B * (1 + N)]
    local_queries, local_positives = queries[rows], positives[rows]

    similarities = {"query_to_doc": cos_sim(local_queries, docs)}
    if "query_to_query" in directions:
        similarities["query_to_query"] = jnp.where(own, -jnp.inf, cos_sim(local_queries, queries))
    if "doc_to_query" in directions:
        similarities["doc_to_query"] = cos_sim(queries, local_positives).T
    if "doc_to_doc" in directions:
        similarities["doc_to_doc"] = jnp.where(own_docs, -jnp.inf, cos_sim(docs, local_positives).T)

    logits = {key: value * scale for key, value in similarities.items()}
    if hardness_mode is not None and hardness_strength > 0:
        # Lan et al. 2025: add alpha * stop_grad(cos) to the chosen negatives' logits, unscaled.
        is_hard_negative = own_docs.at[:, :batch_size].set(False)
        is_in_batch_negative = ~own_docs
        penalized = {
            "hard_negatives": is_hard_negative,
            "in_batch_negatives": is_in_batch_negative,
            "all_negatives": is_hard_negative | is_in_batch_negative,
        }[hardness_mode]
        penalty = hardness_strength * jax.lax.stop_gradient(similarities["query_to_doc"])
        logits["query_to_doc"] = logits["query_to_doc"] + jnp.where(penalized, penalty, 0.0)

    positive_logits = jnp.sum(jnp.where(own, logits["query_to_doc"][:, :batch_size], 0.0), axis=1)
    if partition_mode == "joint":
        log_partition = jax.nn.logsumexp(jnp.concatenate(list(logits.values()), axis=1), axis=1)
    else:
        log_partition = sum(jax.nn.logsumexp(value, axis=1) for value in logits.values()) / len(logits)
    return log_partition - positive_logits


# ST losses/cached_multiple_negatives_ranking.py calculate_loss: the same loss, its score matrix
# computed mini_batch_size rows at a time. Each chunk runs under jax.checkpoint inside a scan, so
# the backward pass recomputes it too: memory O(mini_batch_size x B(1 + N)), not O(B x B(1 + N)).
def cached_multiple_negatives_ranking_loss(
    anchor: jax.Array,
    positive: jax.Array,
    *negatives: jax.Array,
    mini_batch_size: int = 32,
    scale: float = 20.0,
    directions: Sequence[str] = ("query_to_doc",),
    partition_mode: str = "joint",
    hardness_mode: str | None = None,
    hardness_strength: float = 0.0,
) -> jax.Array:
    _check_mnrl_options(scale, directions, partition_mode, hardness_mode, hardness_strength)
    queries, positives = _as_float32(anchor), _as_float32(positive)
    docs = jnp.concatenate([positives, *(_as_float32(n) for n in negatives)])
    options = (scale, tuple(directions), partition_mode, hardness_mode, hardness_strength)

    def chunk_loss(queries, positives, docs, rows, valid):
        return jnp.sum(jnp.where(valid, _mnrl_row_losses(queries, positives, docs, rows, *options), 0.0))

    total = _sum_over_row_chunks(
        jax.checkpoint(chunk_loss), queries.shape[0], mini_batch_size, queries, positives, docs
    )
    return total / queries.shape[0]


def _sum_over_row_chunks(chunk_fn, batch_size: int, mini_batch_size: int, *arrays: jax.Array) -> jax.Array:
    """sum over chunks of chunk_fn(*arrays, rows, valid), rows [m] the chunk's row indices, in a scan.

    Chunks are rows [k m, (k + 1) m), as ST's; the last one, if short, is shifted back to end at B
    and `valid` marks the rows not already counted.
    """
    if mini_batch_size < 1:
        raise ValueError(f"mini_batch_size must be positive, got {mini_batch_size}")
    size = min(mini_batch_size, batch_size)
    starts = jnp.arange(0, batch_size, size)

    def body(total, start):
        first = jnp.minimum(start, batch_size - size)
        rows = first + jnp.arange(size)
        return total + chunk_fn(*arrays, rows, rows >= start), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), starts)
    return total


def _cosent(scores: jax.Array, labels: jax.Array) -> jax.Array:
    """log(1 + sum over pairs with label_i < label_j of exp(s_i - s_j)); scores [B] already scaled."""
    # ST sorts by label and sums with a suffix logcumsumexp (O(B) memory); this [B, B] form is the same sum.
    differences = jnp.where(labels[:, None] < labels[None, :], scores[:, None] - scores[None, :], -jnp.inf)
    return jax.nn.logsumexp(jnp.concatenate([jnp.zeros(1), differences.ravel()]))


# ST losses/cosent.py: CoSENT on scale * pairwise cosine similarity.
def cosent_loss(anchor: jax.Array, other: jax.Array, labels: jax.Array, scale: float = 20.0) -> jax.Array:
    labels = _check_labels(labels, anchor.shape[0], "CoSENTLoss")
    return _cosent(scale * pairwise_cos_sim(_as_float32(anchor), _as_float32(other)), labels)


# ST losses/angle.py: CoSENT on scale * pairwise_angle_sim. With negative columns, every (anchor, column)
# pair becomes a row: positives keep their label (1 where labels is None), negatives get 1 - label.
def angle_loss(
    anchor: jax.Array, positive: jax.Array, *negatives: jax.Array, labels: jax.Array | None, scale: float = 20.0
) -> jax.Array:
    if not negatives and labels is None:
        raise ValueError("AnglELoss requires labels for datasets with pairs")
    labels = jnp.ones(anchor.shape[0]) if labels is None else _check_labels(labels, anchor.shape[0], "AnglELoss")
    anchors = jnp.tile(_as_float32(anchor), (1 + len(negatives), 1))
    candidates = jnp.concatenate([_as_float32(positive), *(_as_float32(n) for n in negatives)])
    pair_labels = jnp.concatenate([labels, jnp.tile(1 - labels, len(negatives))])
    return _cosent(scale * pairwise_angle_sim(anchors, candidates), pair_labels)


# ST losses/triplet.py: mean of relu(d(anchor, positive) - d(anchor, negative) + triplet_margin).
def triplet_loss(
    anchor: jax.Array,
    positive: jax.Array,
    negative: jax.Array,
    distance_metric: str = "euclidean",
    triplet_margin: float = 5.0,
) -> jax.Array:
    distance = _pick(TRIPLET_DISTANCES, distance_metric, "distance_metric")
    anchor, positive, negative = map(_as_float32, (anchor, positive, negative))
    return jnp.mean(jax.nn.relu(distance(anchor, positive) - distance(anchor, negative) + triplet_margin))


# ST losses/mse.py (EmbedDistillLoss, distance "mse"): mean over columns of the elementwise MSE to the
# teacher; teacher [B, D] is shared by every column, [B, C, D] gives column c its own teacher.
def mse_loss(*students: jax.Array, teacher: jax.Array) -> jax.Array:
    teacher = jax.lax.stop_gradient(_as_float32(teacher))
    if teacher.ndim == 2:
        teachers = [teacher] * len(students)
    elif teacher.ndim == 3 and teacher.shape[1] == len(students):
        teachers = [teacher[:, column] for column in range(len(students))]
    else:
        raise ValueError(
            f"teacher embeddings must be [batch, dim] or [batch, {len(students)} columns, dim]; "
            f"got shape {teacher.shape}"
        )
    return jnp.mean(jnp.stack([jnp.mean((_as_float32(s) - t) ** 2) for s, t in zip(students, teachers)]))


# ----------------------------------------------------------------------------- guided and distillation losses


def _torch_cos_sim_matrix(x: jax.Array, y: jax.Array) -> jax.Array:
    """nn.CosineSimilarity(dim=-1)(x[:, None], y[None]) -> [Bx, By]: each side over its norm clamped at 1e-8."""
    return _normalize(x, 1e-8) @ _normalize(y, 1e-8).T


GIST_MARGIN_STRATEGIES = ("absolute", "relative")


def _gist_row_losses(
    anchors,
    candidates,
    guide_anchors,
    guide_candidates,
    rows,
    temperature,
    margin_strategy,
    margin,
    contrast_anchors,
    contrast_positives,
):
    """GIST's per-row cross-entropies [m] of the rows `rows` [m]; ST losses/gist_embed.py and
    cached_gist_embed.py (candidates: positives then each negative column, [B, D] each)."""
    batch_size = anchors.shape[0]
    own = rows[:, None] == jnp.arange(batch_size)[None, :]  # [m, B]
    anchor_rows, guide_anchor_rows = anchors[rows], guide_anchors[rows]
    positives, guide_positives = candidates[0], guide_candidates[0]
    guided_positive = _torch_cos_sim_matrix(guide_anchor_rows, guide_positives)
    # the guide's anchor-positive similarity is each row's threshold
    threshold = jnp.sum(jnp.where(own, guided_positive, 0.0), axis=1, keepdims=True)  # [m, 1]
    if margin_strategy == "absolute":
        threshold = threshold - margin
    else:
        threshold = threshold - jnp.abs(threshold) * margin

    def suppress(guided, scores, protect=None):
        # a candidate the guide finds more similar than the positive (less the margin) is a false negative
        mask = guided > threshold
        if protect is not None:
            mask = mask & ~protect
        return jnp.where(mask, -jnp.inf, scores)

    scores = [suppress(guided_positive, _torch_cos_sim_matrix(anchor_rows, positives), own)]
    if contrast_anchors:
        anchor_scores = suppress(
            _torch_cos_sim_matrix(guide_anchor_rows, guide_anchors), _torch_cos_sim_matrix(anchor_rows, anchors)
        )
        scores.append(jnp.where(own, -jnp.inf, anchor_scores))  # no self-negative
    if contrast_positives:
        positive_scores = suppress(
            _torch_cos_sim_matrix(guide_positives[rows], guide_positives),
            _torch_cos_sim_matrix(positives[rows], positives),
        )
        scores.append(jnp.where(own, -jnp.inf, positive_scores))
    for negatives, guide_negatives in zip(candidates[1:], guide_candidates[1:]):
        scores.append(
            suppress(
                _torch_cos_sim_matrix(guide_anchor_rows, guide_negatives), _torch_cos_sim_matrix(anchor_rows, negatives)
            )
        )
    logits = jnp.concatenate(scores, axis=1) / temperature
    positive_logits = jnp.sum(jnp.where(own, logits[:, :batch_size], 0.0), axis=1)
    return jax.nn.logsumexp(logits, axis=1) - positive_logits


def _check_gist_options(temperature, margin_strategy):
    if margin_strategy not in GIST_MARGIN_STRATEGIES:
        raise ValueError("margin_strategy must be 'absolute' or 'relative'.")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


# ST losses/gist_embed.py (GISTEmbedLoss) and, with mini_batch_size, losses/cached_gist_embed.py
# (CachedGISTEmbedLoss): InfoNCE over anchor-positive, anchor-anchor, positive-positive and
# anchor-negative similarities / temperature, where every candidate that the frozen guide scores
# above the anchor's own positive (less the margin) is dropped as a false negative.
def gist_embed_loss(
    anchor: jax.Array,
    positive: jax.Array,
    *negatives: jax.Array,
    guide_embeddings: Sequence[jax.Array],
    temperature: float = 0.01,
    margin_strategy: str = "absolute",
    margin: float = 0.0,
    contrast_anchors: bool = True,
    contrast_positives: bool = True,
    mini_batch_size: int | None = None,
) -> jax.Array:
    _check_gist_options(temperature, margin_strategy)
    columns = [_as_float32(c) for c in (anchor, positive, *negatives)]
    guides = [jax.lax.stop_gradient(_as_float32(g)) for g in guide_embeddings]
    if len(guides) != len(columns):
        raise ValueError(f"GISTEmbedLoss: {len(columns)} embedding columns but {len(guides)} guide columns")
    options = (temperature, margin_strategy, margin, contrast_anchors, contrast_positives)
    batch_size = columns[0].shape[0]

    def chunk_loss(anchors, candidates, guide_anchors, guide_candidates, rows, valid):
        losses = _gist_row_losses(anchors, candidates, guide_anchors, guide_candidates, rows, *options)
        return jnp.sum(jnp.where(valid, losses, 0.0))

    arrays = (columns[0], columns[1:], guides[0], guides[1:])
    if mini_batch_size is None:
        rows = jnp.arange(batch_size)
        return chunk_loss(*arrays, rows, rows >= 0) / batch_size
    return _sum_over_row_chunks(jax.checkpoint(chunk_loss), batch_size, mini_batch_size, *arrays) / batch_size


# MarginMSELoss / DistillKLDivLoss's similarity_fct: ST util pairwise_dot_score (default) or pairwise_cos_sim.
PAIRWISE_SIMILARITIES = {"dot": lambda x, y: jnp.sum(x * y, axis=-1), "cosine": pairwise_cos_sim}


# ST losses/margin_mse.py: MSE between sim(q, pos) - sim(q, neg_k) and the teacher's margins. labels:
# [B] (one negative), [B, N] margins, or [B, N + 1] scores (positive first) whose differences are taken.
def margin_mse_loss(
    query: jax.Array, positive: jax.Array, *negatives: jax.Array, labels: jax.Array, similarity_fct: str = "dot"
) -> jax.Array:
    similarity = _pick(PAIRWISE_SIMILARITIES, similarity_fct, "similarity_fct")
    if not negatives:
        raise ValueError("MarginMSELoss expects (query, positive, negative_1, ...) columns, got 2")
    query, positive = _as_float32(query), _as_float32(positive)
    batch_size, count = query.shape[0], len(negatives)
    labels = jax.lax.stop_gradient(_as_float32(labels))
    if labels.shape == (batch_size, count + 1):
        labels = labels[:, :1] - labels[:, 1:]
    if labels.shape == (batch_size,):
        labels = labels[:, None]
    if labels.shape != (batch_size, count):
        raise ValueError(
            f"Labels shape {labels.shape} does not match expected shape {(batch_size, count)}: give the "
            "teacher's margins (num_negatives per row) or its positive and negative scores (num_negatives + 1)."
        )
    positive_scores = similarity(query, positive)
    margins = jnp.stack([positive_scores - similarity(query, _as_float32(n)) for n in negatives], axis=1)
    return jnp.mean((margins - labels) ** 2)


# ST losses/distill_kl_div.py: KL(teacher || student) over each row's candidates, batch mean,
# times student_temperature**2; student scores sim(q, candidate) / student_temperature, teacher
# scores (labels [B, N]) / teacher_temperature.
def distill_kl_div_loss(
    query: jax.Array,
    *candidates: jax.Array,
    labels: jax.Array,
    similarity_fct: str = "dot",
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
) -> jax.Array:
    similarity = _pick(PAIRWISE_SIMILARITIES, similarity_fct, "similarity_fct")
    if len(candidates) < 2:
        raise ValueError(
            f"DistillKLDivLoss expects at least 3 columns (query, positive, negative_1, ...), but got {1 + len(candidates)}"
        )
    query = _as_float32(query)
    batch_size = query.shape[0]
    if labels is None or tuple(labels.shape) != (batch_size, len(candidates)):
        shape = None if labels is None else tuple(labels.shape)
        raise ValueError(
            f"DistillKLDivLoss expects teacher scores of shape (batch_size, N) = ({batch_size}, {len(candidates)}), got {shape}"
        )
    student = jnp.stack([similarity(query, _as_float32(c)) for c in candidates], axis=1) / student_temperature
    student_log_probs = jax.nn.log_softmax(student, axis=1)
    teacher_probs = jax.nn.softmax(jax.lax.stop_gradient(_as_float32(labels)) / teacher_temperature, axis=1)
    # nn.KLDivLoss(reduction="batchmean"): sum of p (log p - log q) / B, with 0 log 0 = 0
    pointwise = jax.scipy.special.xlogy(teacher_probs, teacher_probs) - teacher_probs * student_log_probs
    return jnp.sum(pointwise) / batch_size * student_temperature**2


# ST losses/softmax.py: a linear classifier on (u, v, |u - v|, u * v as configured), cross-entropy
# on integer labels. params: {"weight": [num_labels, in] (torch's layout), "bias": [num_labels]}.
def softmax_loss(
    first: jax.Array,
    second: jax.Array,
    labels: jax.Array,
    params: Mapping[str, jax.Array],
    concatenation_sent_rep: bool = True,
    concatenation_sent_difference: bool = True,
    concatenation_sent_multiplication: bool = False,
) -> jax.Array:
    logits = softmax_logits(
        first, second, params, concatenation_sent_rep, concatenation_sent_difference, concatenation_sent_multiplication
    )
    labels = jnp.asarray(labels).reshape(-1).astype(jnp.int32)
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"SoftmaxLoss expects {logits.shape[0]} labels (one per example), got {labels.shape[0]}")
    log_probs = jax.nn.log_softmax(logits, axis=1)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))


def softmax_logits(first, second, params, rep=True, difference=True, multiplication=False) -> jax.Array:
    """SoftmaxLoss's classifier output [B, num_labels] (ST computes it for prediction, too)."""
    first, second = _as_float32(first), _as_float32(second)
    features = []
    if rep:
        features += [first, second]
    if difference:
        features.append(jnp.abs(first - second))
    if multiplication:
        features.append(first * second)
    return jnp.concatenate(features, axis=1) @ params["weight"].T + params["bias"]


# ----------------------------------------------------------------------------- loss objects


class LossFunction(Protocol):
    """What TrainStep relies on in a loss: any object with these members trains.

    - `takes_labels`: whether the label column is read (the data must then have one);
    - `needs_key`: whether the loss draws random numbers; TrainStep then passes a fresh PRNG key
      each step as `key=` (derived from the run's seed and the step, so a resumed run draws the same);
    - `mini_batch_size`: None, or the rows per device of each embedding pass: TrainStep then embeds
      the global batch by GradCache (flaxenc.gradcache), so its activations are those of one
      mini-batch and the loss still sees every embedding of the global batch;
    - `guide`: None, or a frozen SentenceModel (GISTEmbedLoss's guide); TrainStep embeds the same
      columns with it, without gradient, and passes them as `guide_embeddings=`;
    - `init_params(embedding_dimension, key)`: None, or the loss's own trainable parameters
      (SoftmaxLoss's classifier); TrainStep trains them beside the model's and passes them as `params=`;
    - `__call__(embeddings, labels, **options)`: one [B, D] array per text column and the labels (or
      None) -> a scalar; options are the `key=`, `guide_embeddings=` and `params=` above, each only
      for a loss that asks for it.

    `Loss` gives the defaults (no key, no mini-batches, no guide, no parameters); a plain function
    of (embeddings, labels) also trains, with the same defaults.
    """

    takes_labels: bool
    needs_key: bool
    mini_batch_size: int | None
    guide: Any

    def init_params(self, embedding_dimension: int, key: jax.Array) -> Any: ...

    def __call__(self, embeddings: Sequence[jax.Array], labels: jax.Array | None, **options: Any) -> jax.Array: ...


class Loss:
    """Base of the loss dataclasses: `name` is the key in LOSSES; see LossFunction for the rest."""

    name: ClassVar[str]
    takes_labels: ClassVar[bool] = True
    needs_key: ClassVar[bool] = False
    # The labels the loss is meant for: a (low, high) range, a set of allowed values, or None for any.
    label_range: ClassVar[tuple[float, float] | frozenset[float] | None] = None
    mini_batch_size: ClassVar[int | None] = None
    guide: ClassVar[Any] = None

    def init_params(self, embedding_dimension: int, key: jax.Array) -> Any:
        return None

    def __call__(self, embeddings: Sequence[jax.Array], labels: jax.Array | None) -> jax.Array:
        raise NotImplementedError


def _columns(embeddings: Sequence[jax.Array], expected: int | None, loss_name: str, at_least: int = 2) -> list:
    embeddings = list(embeddings)
    if (expected is not None and len(embeddings) != expected) or len(embeddings) < at_least:
        wanted = expected if expected is not None else f"at least {at_least}"
        raise ValueError(f"{loss_name} expects {wanted} embedding columns, got {len(embeddings)}")
    return embeddings


@dataclasses.dataclass(frozen=True)
class CosineSimilarityLoss(Loss):
    name: ClassVar[str] = "cosine_similarity"
    label_range: ClassVar[tuple[float, float]] = (-1.0, 1.0)  # compared with a cosine similarity
    # "mse" (ST's default nn.MSELoss) or "l1" (nn.L1Loss); cos_score_transformation is the identity
    loss_fct: str = "mse"

    def __post_init__(self):
        _pick(COSINE_SIMILARITY_LOSS_FCTS, self.loss_fct, "loss_fct")

    def __call__(self, embeddings, labels):
        return cosine_similarity_loss(*_columns(embeddings, 2, "CosineSimilarityLoss"), labels, self.loss_fct)


@dataclasses.dataclass(frozen=True)
class ContrastiveLoss(Loss):
    name: ClassVar[str] = "contrastive"
    label_range: ClassVar[frozenset[float]] = frozenset({0.0, 1.0})  # 1: similar pair, 0: dissimilar
    # ST's default is SiameseDistanceMetric.COSINE_DISTANCE; also "euclidean", "manhattan"
    distance_metric: str = "cosine_distance"
    margin: float = 0.5
    # mean over the batch if True, else sum
    size_average: bool = True

    def __post_init__(self):
        _pick(SIAMESE_DISTANCES, self.distance_metric, "distance_metric")

    def __call__(self, embeddings, labels):
        anchor, other = _columns(embeddings, 2, "ContrastiveLoss")
        return contrastive_loss(anchor, other, labels, self.distance_metric, self.margin, self.size_average)


@dataclasses.dataclass(frozen=True)
class OnlineContrastiveLoss(Loss):
    name: ClassVar[str] = "online_contrastive"
    label_range: ClassVar[frozenset[float]] = frozenset({0.0, 1.0})
    distance_metric: str = "cosine_distance"
    margin: float = 0.5

    def __post_init__(self):
        _pick(SIAMESE_DISTANCES, self.distance_metric, "distance_metric")

    def __call__(self, embeddings, labels):
        anchor, other = _columns(embeddings, 2, "OnlineContrastiveLoss")
        return online_contrastive_loss(anchor, other, labels, self.distance_metric, self.margin)


@dataclasses.dataclass(frozen=True)
class MultipleNegativesRankingLoss(Loss):
    name: ClassVar[str] = "multiple_negatives_ranking"
    takes_labels: ClassVar[bool] = False
    # logits are scale * cosine similarity (scale = 1 / temperature)
    scale: float = 20.0
    # subset of MNRL_DIRECTIONS; must contain "query_to_doc"
    directions: tuple[str, ...] = ("query_to_doc",)
    # "joint": one softmax over all directions; "per_direction": mean of one log-partition per direction
    partition_mode: str = "joint"
    # None, "in_batch_negatives", "hard_negatives" or "all_negatives"
    hardness_mode: str | None = None
    hardness_strength: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "directions", tuple(self.directions))
        _check_mnrl_options(
            self.scale, self.directions, self.partition_mode, self.hardness_mode, self.hardness_strength
        )

    def __call__(self, embeddings, labels=None):
        return multiple_negatives_ranking_loss(
            *_columns(embeddings, None, "MultipleNegativesRankingLoss"),
            scale=self.scale,
            directions=self.directions,
            partition_mode=self.partition_mode,
            hardness_mode=self.hardness_mode,
            hardness_strength=self.hardness_strength,
        )


@dataclasses.dataclass(frozen=True)
class CoSENTLoss(Loss):
    name: ClassVar[str] = "cosent"
    scale: float = 20.0

    def __call__(self, embeddings, labels):
        anchor, other = _columns(embeddings, 2, "CoSENTLoss")
        return cosent_loss(anchor, other, labels, self.scale)


@dataclasses.dataclass(frozen=True)
class AnglELoss(Loss):
    name: ClassVar[str] = "angle"
    scale: float = 20.0

    def __call__(self, embeddings, labels):
        return angle_loss(*_columns(embeddings, None, "AnglELoss"), labels=labels, scale=self.scale)


@dataclasses.dataclass(frozen=True)
class TripletLoss(Loss):
    name: ClassVar[str] = "triplet"
    takes_labels: ClassVar[bool] = False
    # "euclidean" (ST's default), "cosine" or "manhattan"
    distance_metric: str = "euclidean"
    triplet_margin: float = 5.0

    def __post_init__(self):
        _pick(TRIPLET_DISTANCES, self.distance_metric, "distance_metric")

    def __call__(self, embeddings, labels=None):
        return triplet_loss(*_columns(embeddings, 3, "TripletLoss"), self.distance_metric, self.triplet_margin)


@dataclasses.dataclass(frozen=True)
class MSELoss(Loss):
    """Labels are the teacher's embeddings: [B, D] for every column, or [B, C, D] one per column."""

    name: ClassVar[str] = "mse"

    def __call__(self, embeddings, labels):
        if labels is None:
            raise ValueError("MSELoss requires the teacher's embeddings as labels")
        return mse_loss(*_columns(embeddings, None, "MSELoss", at_least=1), teacher=labels)


@dataclasses.dataclass(frozen=True)
class MatryoshkaLoss(Loss):
    """Sum over dims of weight * loss(embeddings cut to dim and re-normalized); ST losses/matryoshka.py.

    ST's `shrink` slices AND L2-normalizes each column (F.normalize), so the wrapped loss sees unit
    vectors at every dim. Labels that look like embeddings ([B, D] or [B, C, D] with the model's
    full D) are sliced too (not normalized), so MSELoss can be wrapped. n_dims_per_step > 0 trains a
    random subset of that many dims per step and needs `key` in the call.
    """

    name: ClassVar[str] = "matryoshka"
    # the wrapped loss, any other flaxenc loss object
    loss: Loss
    # e.g. (768, 512, 256, 128, 64); kept sorted in descending order, as ST does
    matryoshka_dims: tuple[int, ...]
    # one weight per dim, default 1 each
    matryoshka_weights: tuple[float, ...] | None = None
    # -1: every dim each step
    n_dims_per_step: int = -1

    def __post_init__(self):
        if not isinstance(self.loss, Loss) or isinstance(self.loss, MatryoshkaLoss):
            raise ValueError(f"MatryoshkaLoss wraps one of the other flaxenc losses, got {self.loss!r}")
        if not self.matryoshka_dims:
            raise ValueError("You must provide at least one dimension in matryoshka_dims.")
        if any(dim <= 0 for dim in self.matryoshka_dims):
            raise ValueError("All dimensions passed to a matryoshka loss must be > 0.")
        weights = self.matryoshka_weights
        if weights is None:
            weights = [1] * len(self.matryoshka_dims)
        elif len(weights) != len(self.matryoshka_dims):
            raise ValueError("matryoshka_weights must be the same length as matryoshka_dims.")
        # ST sorts the dims (with their weights) in descending order
        dims, weights = zip(*sorted(zip(self.matryoshka_dims, weights), key=lambda pair: pair[0], reverse=True))
        object.__setattr__(self, "matryoshka_dims", tuple(int(d) for d in dims))
        object.__setattr__(self, "matryoshka_weights", tuple(weights))

    @property
    def takes_labels(self) -> bool:  # type: ignore[override]
        return self.loss.takes_labels

    @property
    def needs_key(self) -> bool:  # type: ignore[override]
        return 0 < self.n_dims_per_step < len(self.matryoshka_dims) or self.loss.needs_key

    @property
    def label_range(self):  # type: ignore[override]
        return self.loss.label_range

    def chosen_dims(self, key: jax.Array) -> jax.Array:
        """[len(matryoshka_dims)] bool: the dims trained this step with n_dims_per_step, drawn from `key`."""
        # ST's random.sample of n_dims_per_step dims; a mask keeps the shapes static
        chosen = jax.random.choice(key, len(self.matryoshka_dims), (self.n_dims_per_step,), replace=False)
        return jnp.zeros(len(self.matryoshka_dims), bool).at[chosen].set(True)

    def __call__(self, embeddings, labels, *, key: jax.Array | None = None):
        embeddings = [_as_float32(e) for e in embeddings]
        full_dim = embeddings[0].shape[-1]
        if max(self.matryoshka_dims) > full_dim:
            raise ValueError(f"matryoshka_dims {self.matryoshka_dims} exceed the embedding dimension {full_dim}")
        if self.needs_key and key is None:
            raise ValueError(f"MatryoshkaLoss with n_dims_per_step={self.n_dims_per_step} needs a random `key`")
        inner = self.loss
        if self.loss.needs_key:
            key, inner_key = jax.random.split(key)
            inner = functools.partial(self.loss, key=inner_key)
        selected = None  # every dim
        if 0 < self.n_dims_per_step < len(self.matryoshka_dims):
            selected = self.chosen_dims(key)
        labels_are_embeddings = labels is not None and jnp.ndim(labels) in (2, 3) and labels.shape[-1] == full_dim
        total = 0.0
        for index, (dim, weight) in enumerate(zip(self.matryoshka_dims, self.matryoshka_weights)):
            cut = [_normalize(e[..., :dim]) for e in embeddings]
            term = weight * inner(cut, labels[..., :dim] if labels_are_embeddings else labels)
            total = total + (term if selected is None else jnp.where(selected[index], term, 0.0))
        return total


# ----------------------------------------------------------------------------- losses for large batches, guided, distilled


@dataclasses.dataclass(frozen=True)
class CachedMultipleNegativesRankingLoss(MultipleNegativesRankingLoss):
    """MultipleNegativesRankingLoss by GradCache (ST's CachedMultipleNegativesRankingLoss).

    TrainStep embeds the batch mini_batch_size rows per device at a time (flaxenc.gradcache), and the
    loss computes its score matrix mini_batch_size rows at a time; values and gradients are MNRL's.
    """

    name: ClassVar[str] = "cached_multiple_negatives_ranking"
    # rows per device of each embedding pass, and rows of each chunk of the score matrix
    mini_batch_size: int = 32

    def __post_init__(self):
        super().__post_init__()
        if self.mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be positive, got {self.mini_batch_size}")

    def __call__(self, embeddings, labels=None):
        return cached_multiple_negatives_ranking_loss(
            *_columns(embeddings, None, "CachedMultipleNegativesRankingLoss"),
            mini_batch_size=self.mini_batch_size,
            scale=self.scale,
            directions=self.directions,
            partition_mode=self.partition_mode,
            hardness_mode=self.hardness_mode,
            hardness_strength=self.hardness_strength,
        )


_SYMMETRIC = {"directions": ("query_to_doc", "doc_to_query"), "partition_mode": "per_direction"}


@dataclasses.dataclass(frozen=True)
class MultipleNegativesSymmetricRankingLoss(Loss):
    """ST's (deprecated) symmetric MNRL: MNRL with directions query_to_doc and doc_to_query, per_direction."""

    name: ClassVar[str] = "multiple_negatives_symmetric_ranking"
    takes_labels: ClassVar[bool] = False
    scale: float = 20.0

    def __call__(self, embeddings, labels=None):
        columns = _columns(embeddings, None, "MultipleNegativesSymmetricRankingLoss")
        return multiple_negatives_ranking_loss(*columns, scale=self.scale, **_SYMMETRIC)


@dataclasses.dataclass(frozen=True)
class CachedMultipleNegativesSymmetricRankingLoss(Loss):
    """ST's CachedMultipleNegativesSymmetricRankingLoss: the symmetric MNRL by GradCache."""

    name: ClassVar[str] = "cached_multiple_negatives_symmetric_ranking"
    takes_labels: ClassVar[bool] = False
    scale: float = 20.0
    mini_batch_size: int = 32

    def __call__(self, embeddings, labels=None):
        columns = _columns(embeddings, None, "CachedMultipleNegativesSymmetricRankingLoss")
        return cached_multiple_negatives_ranking_loss(
            *columns, mini_batch_size=self.mini_batch_size, scale=self.scale, **_SYMMETRIC
        )


@dataclasses.dataclass(frozen=True, eq=False)
class GISTEmbedLoss(Loss):
    """ST's GISTEmbedLoss: MNRL-like InfoNCE whose false negatives a frozen guide model removes.

    guide: a SentenceModel (e.g. `SentenceEncoder.from_pretrained(...).model`) that shares the
    trained model's tokenizer (its vocabulary and a max_seq_length at least the model's): TrainStep
    embeds the batch's columns with it, without gradient, and passes them as `guide_embeddings`.
    (ST re-tokenizes for a guide with another tokenizer; flaxenc asks for one tokenizer.)
    Columns: (anchor, positive) or (anchor, positive, negative).
    """

    name: ClassVar[str] = "gist"
    takes_labels: ClassVar[bool] = False
    guide: Any = None
    temperature: float = 0.01
    margin_strategy: str = "absolute"
    margin: float = 0.0
    contrast_anchors: bool = True
    contrast_positives: bool = True

    def __post_init__(self):
        _check_gist_options(self.temperature, self.margin_strategy)

    def _options(self) -> dict:
        names = ("temperature", "margin_strategy", "margin", "contrast_anchors", "contrast_positives")
        return {name: getattr(self, name) for name in names}

    def __call__(self, embeddings, labels=None, *, guide_embeddings=None):
        columns = _columns(embeddings, None, type(self).__name__)
        if guide_embeddings is None:
            raise ValueError(f"{type(self).__name__} needs the guide's embeddings: give it a `guide` model")
        if len(columns) > 3 and self.mini_batch_size is None:
            raise ValueError(f"Expected 2 or 3 embeddings, got {len(columns)}")
        return gist_embed_loss(
            *columns, guide_embeddings=guide_embeddings, mini_batch_size=self.mini_batch_size, **self._options()
        )


@dataclasses.dataclass(frozen=True, eq=False)
class CachedGISTEmbedLoss(GISTEmbedLoss):
    """ST's CachedGISTEmbedLoss: GISTEmbedLoss by GradCache, any number of negative columns."""

    name: ClassVar[str] = "cached_gist"
    mini_batch_size: int = 32


@dataclasses.dataclass(frozen=True)
class MarginMSELoss(Loss):
    """ST's MarginMSELoss: labels are the teacher's margins [B, N] (or [B]) or scores [B, N + 1]."""

    name: ClassVar[str] = "margin_mse"
    # "dot" (ST's default pairwise_dot_score) or "cosine"
    similarity_fct: str = "dot"

    def __post_init__(self):
        _pick(PAIRWISE_SIMILARITIES, self.similarity_fct, "similarity_fct")

    def __call__(self, embeddings, labels):
        columns = _columns(embeddings, None, "MarginMSELoss", at_least=3)
        return margin_mse_loss(*columns, labels=labels, similarity_fct=self.similarity_fct)


@dataclasses.dataclass(frozen=True)
class DistillKLDivLoss(Loss):
    """ST's DistillKLDivLoss: labels are the teacher's scores [B, N] of the N candidate columns."""

    name: ClassVar[str] = "distill_kl_div"
    similarity_fct: str = "dot"
    temperature: float = 1.0
    # None: `temperature`
    student_temperature: float | None = None
    teacher_temperature: float | None = None

    def __post_init__(self):
        _pick(PAIRWISE_SIMILARITIES, self.similarity_fct, "similarity_fct")
        for label in ("temperature", "student_temperature", "teacher_temperature"):
            value = getattr(self, label)
            if value is not None and not 0 < value < float("inf"):
                raise ValueError(f"{label} must be a positive finite number, got {value}.")

    def __call__(self, embeddings, labels):
        student = self.temperature if self.student_temperature is None else self.student_temperature
        teacher = self.temperature if self.teacher_temperature is None else self.teacher_temperature
        columns = _columns(embeddings, None, "DistillKLDivLoss", at_least=1)
        return distill_kl_div_loss(
            *columns,
            labels=labels,
            similarity_fct=self.similarity_fct,
            student_temperature=student,
            teacher_temperature=teacher,
        )


@dataclasses.dataclass(frozen=True)
class SoftmaxLoss(Loss):
    """ST's SoftmaxLoss (SBERT's NLI recipe): a linear classifier on (u, v, |u - v|), trained with the model.

    Its parameters ({"weight": [num_labels, in], "bias": [num_labels]}, torch's nn.Linear layout and
    initialization) come from `init_params`; TrainStep trains them and passes them as `params=`.
    """

    name: ClassVar[str] = "softmax"
    embedding_dimension: int
    num_labels: int
    concatenation_sent_rep: bool = True
    concatenation_sent_difference: bool = True
    concatenation_sent_multiplication: bool = False

    def __post_init__(self):
        if not (
            self.concatenation_sent_rep or self.concatenation_sent_difference or self.concatenation_sent_multiplication
        ):
            raise ValueError(
                "At least one of concatenation_sent_rep, concatenation_sent_difference, "
                "or concatenation_sent_multiplication must be True."
            )

    @property
    def in_features(self) -> int:
        vectors = (
            2 * self.concatenation_sent_rep
            + self.concatenation_sent_difference
            + self.concatenation_sent_multiplication
        )
        return vectors * self.embedding_dimension

    @property
    def label_range(self) -> frozenset[float]:
        """Class indices 0 .. num_labels - 1 (torch's CrossEntropyLoss targets)."""
        return frozenset(float(label) for label in range(self.num_labels))

    def init_params(self, embedding_dimension: int | None = None, key: jax.Array | None = None) -> dict:
        """nn.Linear's initialization: weight and bias uniform in +-1 / sqrt(in_features)."""
        if embedding_dimension is not None and embedding_dimension != self.embedding_dimension:
            raise ValueError(
                f"SoftmaxLoss was built for embedding_dimension {self.embedding_dimension}, the model gives {embedding_dimension}"
            )
        key = jax.random.key(0) if key is None else key
        bound = 1.0 / self.in_features**0.5
        weight_key, bias_key = jax.random.split(key)
        return {
            "weight": jax.random.uniform(weight_key, (self.num_labels, self.in_features), jnp.float32, -bound, bound),
            "bias": jax.random.uniform(bias_key, (self.num_labels,), jnp.float32, -bound, bound),
        }

    def __call__(self, embeddings, labels, *, params):
        first, second = _columns(embeddings, 2, "SoftmaxLoss")
        return softmax_loss(
            first,
            second,
            labels,
            params,
            self.concatenation_sent_rep,
            self.concatenation_sent_difference,
            self.concatenation_sent_multiplication,
        )


LOSSES: dict[str, type] = {
    cls.name: cls
    for cls in (
        CosineSimilarityLoss,
        ContrastiveLoss,
        OnlineContrastiveLoss,
        MultipleNegativesRankingLoss,
        CoSENTLoss,
        AnglELoss,
        TripletLoss,
        MSELoss,
        MatryoshkaLoss,
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesSymmetricRankingLoss,
        CachedMultipleNegativesSymmetricRankingLoss,
        GISTEmbedLoss,
        CachedGISTEmbedLoss,
        MarginMSELoss,
        DistillKLDivLoss,
    )
}
# SoftmaxLoss is not in LOSSES: it needs the model's embedding dimension and its classifier is created
# with the train state (init_train_state(model, tx, seed, loss=loss)); flaxenc-train builds it by name
# `softmax` (train/loss_params.py).


def get_loss(name: str, **kwargs) -> Loss:
    """The loss called `name` in LOSSES, built with `kwargs` (ST's argument names).

    For "matryoshka", `loss` may be a loss object, a name, or a mapping {"name": ..., **its kwargs}.
    For "gist" and "cached_gist", `guide` may be a SentenceModel or a path or hub id to load one from.
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(LOSSES)}")
    cls = LOSSES[name]
    known = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown} for loss {name!r}; it takes {known or 'no arguments'}")
    inner = kwargs.get("loss")
    guide = kwargs.get("guide")
    if name in ("gist", "cached_gist") and isinstance(guide, (str, os.PathLike)):
        from flaxenc.encoder import SentenceEncoder  # the loader only where a guide is named by path

        kwargs["guide"] = SentenceEncoder.from_pretrained(guide).model
    if name == "matryoshka" and isinstance(inner, str):
        kwargs["loss"] = get_loss(inner)
    elif name == "matryoshka" and isinstance(inner, Mapping):
        inner = dict(inner)
        kwargs["loss"] = get_loss(inner.pop("name"), **inner)
    for tuple_field in ("directions", "matryoshka_dims", "matryoshka_weights"):
        if isinstance(kwargs.get(tuple_field), list):
            kwargs[tuple_field] = tuple(kwargs[tuple_field])
    return cls(**kwargs)
