"""GISTEmbedLoss (and its cached variant) with a frozen guide, MarginMSELoss, DistillKLDivLoss and
SoftmaxLoss against sentence-transformers.

GIST runs on two tiny random BERTs (the trained model and the guide, one tokenizer): one train step
of flaxenc (SGD, lr 1, so the parameter change is the gradient) against ST's loss and backward pass
on the same token batch: loss and every parameter gradient within 1e-5. The distillation losses and
SoftmaxLoss run on fixed embeddings as tests/test_losses.py does (1e-6), SoftmaxLoss's classifier
gradients included, and SoftmaxLoss also in the train step, its classifier trained beside the model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_st_model
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import losses as st_losses
from test_cached_losses import max_difference, random_batch, sgd_step, st_sgd_step
from test_losses import compare, pass_through_model, random_columns

import flaxenc
from flaxenc import losses

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def model_and_guide(tmp_path_factory, bert_tokenizer_path):
    root = tmp_path_factory.mktemp("gist")
    no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    folder, _ = build_st_model(root / "model", bert_tokenizer_path, **no_dropout)
    guide_folder, _ = build_st_model(root / "guide", bert_tokenizer_path, seed=1, hidden_size=16, **no_dropout)
    return folder, guide_folder


@pytest.mark.parametrize(
    "cached, columns, options",
    [
        (False, 2, dict()),
        (False, 3, dict(margin_strategy="relative", margin=0.05, temperature=0.05)),
        (False, 3, dict(margin=0.02, contrast_anchors=False)),
        (True, 4, dict(margin=0.01, contrast_positives=False)),
    ],
)
def test_gist_matches_st(model_and_guide, cached, columns, options):
    folder, guide_folder = model_and_guide
    guide = flaxenc.SentenceEncoder.from_pretrained(guide_folder).model
    batch = random_batch(12, columns, seed=columns)
    if cached:
        ours = losses.CachedGISTEmbedLoss(guide=guide, mini_batch_size=5, **options)
    else:
        ours = losses.GISTEmbedLoss(guide=guide, **options)
    value, grads = sgd_step(folder, ours, batch)

    st_guide = SentenceTransformer(str(guide_folder), device="cpu")
    if cached:
        make_reference = lambda model: st_losses.CachedGISTEmbedLoss(model, st_guide, mini_batch_size=5, **options)  # noqa: E731
    else:
        make_reference = lambda model: st_losses.GISTEmbedLoss(model, st_guide, **options)  # noqa: E731
    st_value, st_grads, reference = st_sgd_step(folder, make_reference, batch)
    assert not reference.must_retokenize  # one tokenizer, as flaxenc's guide needs
    grad_diff = max_difference(grads, st_grads)
    largest = max(float(np.abs(g).max()) for g in st_grads.values())
    print(f"GIST {options}: loss {value:.4f} vs ST {st_value:.4f}, grad diff {grad_diff:.2e} (largest {largest:.2f})")
    assert abs(value - st_value) <= TOLERANCE * max(1.0, abs(st_value))
    assert grad_diff <= TOLERANCE * max(1.0, largest)


def test_gist_without_guide_is_an_error():
    with pytest.raises(ValueError, match="guide"):
        losses.GISTEmbedLoss()(random_columns(2, 4, 8), None)
    with pytest.raises(ValueError, match="margin_strategy"):
        losses.GISTEmbedLoss(margin_strategy="percent")


# ----------------------------------------------------------------------------- distillation


@pytest.mark.parametrize(
    "columns, label_shape, similarity",
    [(3, "margins_1d", "dot"), (4, "margins", "dot"), (4, "scores", "cosine")],
)
def test_margin_mse_loss(columns, label_shape, similarity):
    from sentence_transformers.util import pairwise_cos_sim, pairwise_dot_score

    batch, negatives = 9, columns - 2
    st_similarity = {"dot": pairwise_dot_score, "cosine": pairwise_cos_sim}[similarity]
    reference = st_losses.MarginMSELoss(pass_through_model(16), similarity_fct=st_similarity)
    rng = np.random.default_rng(5)
    shape = {"margins_1d": (batch,), "margins": (batch, negatives), "scores": (batch, negatives + 1)}[label_shape]
    labels = rng.normal(size=shape).astype(np.float32)
    compare(losses.MarginMSELoss(similarity), reference, random_columns(columns, batch, 16), labels)


@pytest.mark.parametrize(
    "columns, similarity, temperatures",
    [
        (3, "dot", dict()),
        (5, "cosine", dict(temperature=0.5)),
        (4, "dot", dict(student_temperature=2.0, teacher_temperature=0.3)),
    ],
)
def test_distill_kl_div_loss(columns, similarity, temperatures):
    from sentence_transformers.util import pairwise_cos_sim, pairwise_dot_score

    batch = 7
    st_similarity = {"dot": pairwise_dot_score, "cosine": pairwise_cos_sim}[similarity]
    reference = st_losses.DistillKLDivLoss(pass_through_model(8), similarity_fct=st_similarity, **temperatures)
    labels = (3 * np.random.default_rng(6).normal(size=(batch, columns - 1))).astype(np.float32)
    compare(losses.DistillKLDivLoss(similarity, **temperatures), reference, random_columns(columns, batch, 8), labels)


# ----------------------------------------------------------------------------- SoftmaxLoss


def st_classifier(reference) -> dict:
    return {
        "weight": reference.classifier.weight.detach().numpy().copy(),
        "bias": reference.classifier.bias.detach().numpy().copy(),
    }


@pytest.mark.parametrize(
    "options", [dict(), dict(concatenation_sent_rep=False, concatenation_sent_multiplication=True)]
)
def test_softmax_loss_on_embeddings(options):
    """Loss, embedding gradients and classifier gradients against ST's SoftmaxLoss (1e-6)."""
    import jax
    import jax.numpy as jnp

    batch, dim, num_labels = 10, 12, 3
    torch.manual_seed(0)
    reference = st_losses.SoftmaxLoss(
        pass_through_model(dim), embedding_dimension=dim, num_labels=num_labels, **options
    )
    params = st_classifier(reference)
    ours = losses.SoftmaxLoss(embedding_dimension=dim, num_labels=num_labels, **options)
    assert {k: v.shape for k, v in ours.init_params(dim, jax.random.key(0)).items()} == {
        k: v.shape for k, v in params.items()
    }
    columns = random_columns(2, batch, dim)
    labels = np.random.default_rng(2).integers(0, num_labels, size=batch)

    def loss_of(embeddings, params):
        return ours(embeddings, jnp.asarray(labels), params=params)

    value, (embedding_grads, param_grads) = jax.value_and_grad(loss_of, argnums=(0, 1))(
        [jnp.asarray(c) for c in columns], jax.tree.map(jnp.asarray, params)
    )
    tensors = [torch.tensor(c, requires_grad=True) for c in columns]
    expected = reference([{"embedding": t} for t in tensors], torch.tensor(labels))
    expected.backward()
    assert abs(float(value) - expected.item()) <= 1e-6 * max(1.0, abs(expected.item()))
    assert max(float(np.abs(np.asarray(g) - t.grad.numpy()).max()) for g, t in zip(embedding_grads, tensors)) <= 1e-6
    assert float(np.abs(np.asarray(param_grads["weight"]) - reference.classifier.weight.grad.numpy()).max()) <= 1e-6
    assert float(np.abs(np.asarray(param_grads["bias"]) - reference.classifier.bias.grad.numpy()).max()) <= 1e-6


def test_softmax_loss_step_trains_the_classifier(model_and_guide):
    """In the train step the classifier is trained with the model: its gradients and the model's equal ST's."""
    folder, _ = model_and_guide
    batch = random_batch(10, 2, seed=3)
    labels = np.random.default_rng(3).integers(0, 3, size=10)
    batch["labels"] = labels
    torch.manual_seed(1)
    holder = {}

    def make_reference(model):
        holder["loss"] = st_losses.SoftmaxLoss(model, embedding_dimension=32, num_labels=3)
        return holder["loss"]

    st_value, st_grads, reference = st_sgd_step(folder, make_reference, batch, labels)
    # st_sgd_step moves only the model's parameters: the classifier still holds its starting values
    classifier = {key: value.copy() for key, value in st_classifier(reference).items()}
    ours = losses.SoftmaxLoss(embedding_dimension=32, num_labels=3)
    value, grads = sgd_step(folder, ours, batch, loss_params=classifier)
    st_grads["loss.weight"] = reference.classifier.weight.grad.numpy()
    st_grads["loss.bias"] = reference.classifier.bias.grad.numpy()
    grad_diff = max_difference(grads, st_grads)
    print(f"SoftmaxLoss step: loss diff {abs(value - st_value):.2e}, grad diff {grad_diff:.2e}")
    assert abs(value - st_value) <= TOLERANCE * max(1.0, abs(st_value))
    assert grad_diff <= TOLERANCE
