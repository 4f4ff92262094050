"""flaxenc.losses against sentence-transformers' PyTorch losses: same embeddings and labels in,
the same loss value and the same gradient w.r.t. every embedding column out (float32, 1e-6).

ST's losses are run on fixed embeddings in one of two ways:
- `compute_loss_from_embeddings(embeddings, labels)` where the loss has it; the `model` its
  constructor wants is a real tiny SentenceTransformer that this path never calls;
- `loss(sentence_features, labels)` for MatryoshkaLoss (no compute_loss_from_embeddings) and MSELoss
  (whose label reshaping lives in forward), with a real SentenceTransformer built from one custom
  module (ST's public `SentenceTransformer(modules=[...])`) that returns the embedding stored in
  the features: ST's real model and loss code then run on our fixed embeddings.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import build_st_model
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import losses as st_losses

from flaxenc import losses

# Loss values: |ours - ST| <= TOLERANCE * max(1, |ST|). Gradients: <= GRADIENT_TOLERANCE * max(1, largest |ST grad|).
# Gradients get 2e-6: at scale 20 CoSENT's (and AnglE's) float32 gradients from ST itself are up to 1e-6
# (relative) away from float64's, and ours as well, so the two differ by up to ~1.4e-6.
TOLERANCE = 1e-6
GRADIENT_TOLERANCE = 2e-6
FAST_COMPILE = {"xla_backend_optimization_level": 0}
# Cases spread their options over the shapes (batch, dim) in (4, 8), (16, 32), (33, 7) (7 is odd:
# AnglE pads it) instead of crossing them: each case costs one XLA compile.


@pytest.fixture(scope="module")
def st_model(tmp_path_factory, bert_tokenizer_path):
    return build_st_model(tmp_path_factory.mktemp("loss_model"), bert_tokenizer_path)[1]


class PassThrough(torch.nn.Module):
    """A custom ST module that returns the embedding it is handed as the sentence embedding."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, features):
        return {**features, "sentence_embedding": features["embedding"]}

    def get_embedding_dimension(self) -> int:
        return self.dim


def pass_through_model(dim: int) -> SentenceTransformer:
    """A real SentenceTransformer whose only module is PassThrough: ST's forward path sees fixed embeddings."""
    return SentenceTransformer(modules=[PassThrough(dim)], device="cpu")


def random_columns(columns: int, batch: int, dim: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(batch, dim)).astype(np.float32) for _ in range(columns)]


def binary_labels(batch: int, seed: int = 0) -> np.ndarray:
    """0/1 labels with both classes present."""
    labels = np.random.default_rng(seed).integers(0, 2, size=batch)
    labels[:2] = [0, 1]
    return labels


def score_labels(batch: int, seed: int = 0) -> np.ndarray:
    """Scores in [0, 1] on a 0.25 grid, so there are ties (CoSENT must not compare tied pairs)."""
    return (np.random.default_rng(seed).integers(0, 5, size=batch) / 4).astype(np.float32)


def compare(flax_loss, st_loss, columns, labels, via_forward: bool = False) -> tuple[float, float]:
    """Max |difference| of the loss value and of the gradients; asserts both are within tolerance.

    flax_loss(list of jax arrays, labels) -> scalar. st_loss is an ST loss object, run as
    st_loss.compute_loss_from_embeddings(list of torch tensors, labels), or with via_forward as
    st_loss(sentence_features, labels) with features {"embedding": tensor} (its model a pass_through_model).
    """
    arguments = ([jnp.asarray(column) for column in columns], None if labels is None else jnp.asarray(labels))
    # One compile per case (eager jax compiles every op); LLVM at -O0 compiles the same XLA graph ~3x faster.
    compiled = jax.jit(jax.value_and_grad(flax_loss)).lower(*arguments).compile(FAST_COMPILE)
    value, grads = compiled(*arguments)

    tensors = [torch.tensor(c, requires_grad=True) for c in columns]
    torch_labels = None if labels is None else torch.tensor(labels)
    inputs = [{"embedding": t} for t in tensors] if via_forward else tensors
    run_st_loss = st_loss if via_forward else st_loss.compute_loss_from_embeddings
    reference = run_st_loss(inputs, torch_labels)
    reference.backward()

    value_diff = abs(float(value) - reference.item())
    grad_diff = max(float(np.abs(np.asarray(g) - t.grad.numpy()).max()) for g, t in zip(grads, tensors))
    assert value_diff <= TOLERANCE * max(1.0, abs(reference.item())), (float(value), reference.item())
    grad_scale = max(float(np.abs(t.grad.numpy()).max()) for t in tensors)
    assert grad_diff <= GRADIENT_TOLERANCE * max(1.0, grad_scale), (grad_diff, grad_scale)
    assert np.isfinite(float(value))
    return value_diff, grad_diff


# ----------------------------------------------------------------------------- pair losses with labels


@pytest.mark.parametrize("batch, dim, loss_fct", [(16, 32, "mse"), (33, 7, "l1")])
def test_cosine_similarity_loss(st_model, batch, dim, loss_fct):
    torch_fct = {"mse": torch.nn.MSELoss(), "l1": torch.nn.L1Loss()}[loss_fct]
    reference = st_losses.CosineSimilarityLoss(st_model, loss_fct=torch_fct)
    labels = np.random.default_rng(1).uniform(-1, 1, size=batch).astype(np.float32)
    compare(losses.CosineSimilarityLoss(loss_fct), reference, random_columns(2, batch, dim), labels)


SIAMESE = {
    "euclidean": st_losses.SiameseDistanceMetric.EUCLIDEAN,
    "manhattan": st_losses.SiameseDistanceMetric.MANHATTAN,
    "cosine_distance": st_losses.SiameseDistanceMetric.COSINE_DISTANCE,
}


@pytest.mark.parametrize(
    "batch, dim, metric, size_average",
    [
        (16, 32, "euclidean", True),
        (33, 7, "manhattan", False),
        (4, 8, "cosine_distance", True),
        (16, 32, "cosine_distance", False),
    ],
)
def test_contrastive_loss(st_model, batch, dim, metric, size_average):
    # margins that put some negatives inside the margin for each metric's distance scale
    margin = {"euclidean": 0.6 * np.sqrt(2 * dim), "manhattan": 1.1 * dim, "cosine_distance": 1.0}[metric]
    reference = st_losses.ContrastiveLoss(st_model, SIAMESE[metric], margin=margin, size_average=size_average)
    ours = losses.ContrastiveLoss(metric, margin=margin, size_average=size_average)
    compare(ours, reference, random_columns(2, batch, dim), binary_labels(batch))


def test_contrastive_defaults_match_st(st_model):
    reference, ours = st_losses.ContrastiveLoss(st_model), losses.ContrastiveLoss()
    assert reference.distance_metric == SIAMESE[ours.distance_metric]  # cosine distance, not euclidean
    assert (reference.margin, reference.size_average) == (ours.margin, ours.size_average)
    # int labels and float labels give the same value
    anchor, other = random_columns(2, 8, 16)
    labels = binary_labels(8)
    as_ints = losses.contrastive_loss(anchor, other, labels)
    assert float(as_ints) == float(losses.contrastive_loss(anchor, other, labels.astype(np.float32)))


@pytest.mark.parametrize(
    "batch, dim, metric", [(16, 32, "euclidean"), (33, 7, "manhattan"), (16, 32, "cosine_distance")]
)
def test_online_contrastive_loss(st_model, batch, dim, metric):
    margin = {"euclidean": 1.3 * np.sqrt(2 * dim), "manhattan": 1.3 * dim, "cosine_distance": 0.5}[metric]
    reference = st_losses.OnlineContrastiveLoss(st_model, SIAMESE[metric], margin=margin)
    columns, labels = random_columns(2, batch, dim), binary_labels(batch)
    # random pairs overlap: some positives are farther than the closest negative and vice versa
    distances = SIAMESE[metric](*map(torch.tensor, columns)).numpy()
    assert distances[labels == 1].max() > distances[labels == 0].min()
    compare(losses.OnlineContrastiveLoss(metric, margin), reference, columns, labels)


@pytest.mark.parametrize("only", [0, 1])
def test_online_contrastive_loss_one_class(st_model, only):
    """With one class ST compares the pairs to their own mean distance."""
    reference = st_losses.OnlineContrastiveLoss(st_model)
    labels = np.full(12, only)
    compare(losses.OnlineContrastiveLoss(), reference, random_columns(2, 12, 16), labels)


@pytest.mark.parametrize("batch, dim, scale", [(16, 32, 20.0), (33, 7, 7.5)])
def test_cosent_loss(st_model, batch, dim, scale):
    reference = st_losses.CoSENTLoss(st_model, scale=scale)
    compare(losses.CoSENTLoss(scale), reference, random_columns(2, batch, dim), score_labels(batch))


@pytest.mark.parametrize("batch, dim", [(16, 32), (33, 7)])
def test_angle_loss_pairs(st_model, batch, dim):
    reference = st_losses.AnglELoss(st_model)
    compare(losses.AnglELoss(), reference, random_columns(2, batch, dim), score_labels(batch))


@pytest.mark.parametrize("columns, with_labels", [(3, False), (4, True)])
def test_angle_loss_with_negatives(st_model, columns, with_labels):
    reference = st_losses.AnglELoss(st_model)
    labels = score_labels(10) if with_labels else None
    compare(losses.AnglELoss(), reference, random_columns(columns, 10, 16), labels)


# ----------------------------------------------------------------------------- losses without labels


@pytest.mark.parametrize("negative_columns, batch, dim", [(0, 16, 32), (1, 33, 7), (2, 4, 8)])
def test_multiple_negatives_ranking_loss(st_model, batch, dim, negative_columns):
    reference = st_losses.MultipleNegativesRankingLoss(st_model)
    columns = random_columns(2 + negative_columns, batch, dim)
    compare(losses.MultipleNegativesRankingLoss(), reference, columns, None)


@pytest.mark.parametrize(
    "options",
    [
        dict(scale=5.0, directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"),
        dict(directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")),
        dict(hardness_mode="hard_negatives", hardness_strength=3.0),
        dict(hardness_mode="in_batch_negatives", hardness_strength=3.0, directions=("query_to_doc", "doc_to_query")),
        dict(hardness_mode="all_negatives", hardness_strength=3.0, directions=("query_to_doc", "doc_to_doc")),
    ],
)
def test_multiple_negatives_ranking_loss_options(st_model, options):
    reference = st_losses.MultipleNegativesRankingLoss(st_model, **options)
    ours = losses.MultipleNegativesRankingLoss(**options)
    compare(ours, reference, random_columns(4, 9, 16), None)


TRIPLET = {
    "euclidean": st_losses.TripletDistanceMetric.EUCLIDEAN,
    "manhattan": st_losses.TripletDistanceMetric.MANHATTAN,
    "cosine": st_losses.TripletDistanceMetric.COSINE,
}


@pytest.mark.parametrize("batch, dim, metric", [(16, 32, "euclidean"), (33, 7, "manhattan"), (4, 8, "cosine")])
def test_triplet_loss(st_model, batch, dim, metric):
    # a margin that leaves some triplets inactive (relu at 0) and some active
    margin = {"euclidean": 0.3, "manhattan": 0.3 * dim, "cosine": 0.2}[metric]
    reference = st_losses.TripletLoss(st_model, TRIPLET[metric], triplet_margin=margin)
    compare(losses.TripletLoss(metric, margin), reference, random_columns(3, batch, dim), None)


def test_triplet_defaults_and_identical_anchor(st_model):
    """Default metric and margin; anchor == positive gives a zero distance with a finite (torch's) gradient."""
    anchor, _, negative = random_columns(3, 6, 8)
    reference = st_losses.TripletLoss(st_model)
    assert reference.distance_metric == TRIPLET[losses.TripletLoss().distance_metric]
    assert reference.triplet_margin == losses.TripletLoss().triplet_margin
    compare(losses.TripletLoss(), reference, [anchor, anchor.copy(), negative], None)


# ----------------------------------------------------------------------------- distillation and wrappers


@pytest.mark.parametrize("columns, teacher_shape", [(1, "2d"), (3, "2d"), (2, "3d")])
def test_mse_loss(columns, teacher_shape):
    batch, dim = 8, 16
    reference = st_losses.MSELoss(pass_through_model(dim))
    rng = np.random.default_rng(3)
    shape = (batch, dim) if teacher_shape == "2d" else (batch, columns, dim)
    teacher = rng.normal(size=shape).astype(np.float32)
    compare(losses.MSELoss(), reference, random_columns(columns, batch, dim), teacher, via_forward=True)


def st_matryoshka(inner_class, dim, matryoshka_dims, weights=None, **inner_options):
    model = pass_through_model(dim)
    return st_losses.MatryoshkaLoss(model, inner_class(model, **inner_options), list(matryoshka_dims), weights)


def test_matryoshka_over_cosent():
    batch, dim = 17, 24
    dims = (dim, 16, 5)
    reference = st_matryoshka(st_losses.CoSENTLoss, dim, dims)
    ours = losses.MatryoshkaLoss(losses.CoSENTLoss(), dims)
    compare(ours, reference, random_columns(2, batch, dim), score_labels(batch), via_forward=True)


def test_matryoshka_over_mnrl_with_weights():
    dim, dims, weights = 32, (8, 32, 16), (0.5, 2.0, 1.0)  # unsorted on purpose: ST sorts them descending
    reference = st_matryoshka(st_losses.MultipleNegativesRankingLoss, dim, dims, list(weights), scale=10.0)
    ours = losses.MatryoshkaLoss(losses.MultipleNegativesRankingLoss(scale=10.0), dims, weights)
    assert ours.matryoshka_dims == reference.matryoshka_dims and ours.matryoshka_weights == reference.matryoshka_weights
    compare(ours, reference, random_columns(4, 12, dim), None, via_forward=True)


def test_matryoshka_over_mse_slices_the_teacher():
    dim, dims = 16, (16, 8, 4)
    reference = st_matryoshka(st_losses.MSELoss, dim, dims)
    teacher = np.random.default_rng(4).normal(size=(6, dim)).astype(np.float32)
    ours = losses.MatryoshkaLoss(losses.MSELoss(), dims)
    compare(ours, reference, random_columns(2, 6, dim), teacher, via_forward=True)


def test_matryoshka_n_dims_per_step():
    """A random subset of dims per step; it equals ST's loss over exactly those dims."""
    dim, dims, weights = 16, (16, 8, 4), (1.0, 2.0, 3.0)
    ours = losses.MatryoshkaLoss(losses.CoSENTLoss(), dims, weights, n_dims_per_step=2)
    columns, labels = random_columns(2, 10, dim), score_labels(10)
    with pytest.raises(ValueError, match="key"):
        ours(columns, labels)
    key = jax.random.key(0)
    chosen = sorted(np.asarray(jax.random.choice(key, 3, (2,), replace=False)).tolist())
    reference = st_matryoshka(st_losses.CoSENTLoss, dim, [dims[i] for i in chosen], [weights[i] for i in chosen])
    compare(lambda embeddings, labels: ours(embeddings, labels, key=key), reference, columns, labels, via_forward=True)


# ----------------------------------------------------------------------------- registry and jit


def test_get_loss_builds_every_loss():
    for name, cls in losses.LOSSES.items():
        kwargs = {"loss": "cosent", "matryoshka_dims": [8, 4]} if name == "matryoshka" else {}
        loss = losses.get_loss(name, **kwargs)
        assert type(loss) is cls and loss.name == name
        hash(loss)  # frozen dataclasses: usable as a static jit argument
    built = losses.get_loss("contrastive", margin=1.0, distance_metric="euclidean")
    assert built == losses.ContrastiveLoss("euclidean", 1.0)
    inner = {"name": "multiple_negatives_ranking", "scale": 30.0}
    nested = losses.get_loss("matryoshka", loss=inner, matryoshka_dims=[4, 8])
    assert nested.loss == losses.MultipleNegativesRankingLoss(scale=30.0) and nested.matryoshka_dims == (8, 4)


def test_get_loss_errors():
    with pytest.raises(ValueError, match="unknown loss 'softmax'.*cosine_similarity.*matryoshka"):
        losses.get_loss("softmax")
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['temperature'\].*scale"):
        losses.get_loss("multiple_negatives_ranking", temperature=0.05)
    with pytest.raises(ValueError, match="distance_metric 'cosine'"):
        losses.get_loss("contrastive", distance_metric="cosine")  # contrastive's is "cosine_distance"
    with pytest.raises(ValueError, match="query_to_doc"):
        losses.get_loss("multiple_negatives_ranking", directions=["doc_to_query"])
    with pytest.raises(ValueError, match="same length"):
        losses.MatryoshkaLoss(losses.CoSENTLoss(), (8, 4), (1.0,))
    with pytest.raises(ValueError, match="exceed"):
        losses.MatryoshkaLoss(losses.CoSENTLoss(), (64,))(random_columns(2, 4, 8), score_labels(4))
    with pytest.raises(ValueError, match="expects 4 labels"):
        losses.CoSENTLoss()(random_columns(2, 4, 8), np.zeros(5))
    with pytest.raises(ValueError, match="expects 3 embedding columns"):
        losses.TripletLoss()(random_columns(2, 4, 8), None)


def test_loss_objects_are_static_jit_arguments():
    """Equal loss objects hash equal, so a new but equal instance reuses the compiled step."""
    traces = []

    def step(loss, embeddings, labels):
        traces.append(loss)
        return loss(embeddings, labels)

    step = jax.jit(step, static_argnums=0)
    columns, labels = random_columns(2, 8, 16), score_labels(8)
    first = step(losses.CoSENTLoss(), columns, labels)
    second = step(losses.CoSENTLoss(scale=20.0), columns, labels)
    assert len(traces) == 1 and float(first) == float(second)
