"""GradCache losses (flaxenc.gradcache + the cached losses) against plain MNRL and ST's cached losses.

- On fixed embeddings: the cached loss functions equal the plain ones, and ST's cached losses
  (run through a pass-through SentenceTransformer, so ST's own mini-batching and backward hook run).
- In the train step on a tiny random BERT: the loss and the parameter gradients of one step with
  CachedMultipleNegativesRankingLoss equal plain MNRL's (1e-5), on 1 and on 8 fake devices, and the
  loss and gradients equal ST's CachedMultipleNegativesRankingLoss on the same model and batch.
  Gradients are read as the change of the parameters under SGD with learning rate 1.
- The compiled step of the cached loss needs less memory than the plain one at the same batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from conftest import build_st_model
from sentence_transformers.sentence_transformer import losses as st_losses
from test_losses import compare, pass_through_model, random_columns
from test_multidevice import _run_on_eight_devices

import flaxenc
from flaxenc import losses
from flaxenc.sentence_model import flat_params
from flaxenc.train_step import TrainStep, init_train_state

TOLERANCE = 1e-5


def test_cached_mnrl_function_equals_mnrl():
    """Row chunks of every size (a divisor of B, not a divisor, larger than B) give MNRL's value and gradients."""
    columns = [jnp.asarray(c) for c in random_columns(3, 13, 8)]
    options = dict(directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"), scale=7.0)
    plain = jax.value_and_grad(lambda c: losses.multiple_negatives_ranking_loss(*c, **options))(columns)
    for mini_batch_size in (1, 4, 13, 40):

        def loss(c, m=mini_batch_size):
            return losses.cached_multiple_negatives_ranking_loss(*c, mini_batch_size=m, **options)

        value, grads = jax.jit(jax.value_and_grad(loss))(columns)
        assert abs(float(value) - float(plain[0])) <= 1e-6
        assert max(float(jnp.abs(g - p).max()) for g, p in zip(grads, plain[1])) <= 1e-6


@pytest.mark.parametrize(
    "options, columns, mini_batch_size",
    [
        (dict(), 2, 4),
        (dict(scale=10.0, hardness_mode="all_negatives", hardness_strength=3.0), 4, 5),
        (dict(directions=("query_to_doc", "doc_to_doc"), partition_mode="joint"), 3, 3),
    ],
)
def test_cached_mnrl_matches_st_on_embeddings(options, columns, mini_batch_size):
    """ST's CachedMultipleNegativesRankingLoss on a pass-through model: its mini-batches, its hook."""
    dim = 16
    reference = st_losses.CachedMultipleNegativesRankingLoss(
        pass_through_model(dim), mini_batch_size=mini_batch_size, **options
    )
    ours = losses.CachedMultipleNegativesRankingLoss(mini_batch_size=mini_batch_size, **options)
    compare(ours, reference, random_columns(columns, 11, dim), None, via_forward=True)


def test_cached_symmetric_matches_st_on_embeddings():
    dim = 8
    with pytest.warns(DeprecationWarning):
        reference = st_losses.CachedMultipleNegativesSymmetricRankingLoss(pass_through_model(dim), mini_batch_size=3)
        plain_reference = st_losses.MultipleNegativesSymmetricRankingLoss(pass_through_model(dim))
    columns = random_columns(2, 10, dim)
    compare(
        losses.CachedMultipleNegativesSymmetricRankingLoss(mini_batch_size=3),
        reference,
        columns,
        None,
        via_forward=True,
    )
    compare(losses.MultipleNegativesSymmetricRankingLoss(), plain_reference, columns, None, via_forward=True)


# ----------------------------------------------------------------------------- in the train step


def random_batch(batch: int, columns: int, length: int = 16, seed: int = 0) -> dict:
    """Token columns of random ids and lengths (3 .. length), right-padded."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(columns):
        ids = rng.integers(1000, 2000, size=(batch, length)).astype(np.int32)
        ids[:, 0] = 101  # [CLS]
        mask = (np.arange(length)[None] < rng.integers(3, length + 1, size=batch)[:, None]).astype(np.int32)
        out.append({"input_ids": ids * mask, "attention_mask": mask})
    return {"columns": out}


def sgd_step(folder, loss, batch, mesh=None, loss_params=None):
    """(loss, gradient by dotted parameter path) of one TrainStep: SGD with lr 1 moves params by -grad.

    loss_params: for a loss with parameters (SoftmaxLoss), their starting values; the gradient then
    has them too, under "loss.<name>".
    """
    encoder = flaxenc.SentenceEncoder.from_pretrained(folder)
    before = flat_params(encoder.model)
    tx = optax.sgd(1.0)
    graphdef, state = init_train_state(encoder.model, tx, loss=loss)
    if loss_params is not None:
        state = state._replace(params=state.params._replace(loss=jax.tree.map(jnp.asarray, loss_params)))
    step = TrainStep(graphdef, loss, tx, mesh=mesh, dropout=False)
    state, metrics = step(step.place_state(state), batch)
    after = flat_params(flaxenc.train_step.params_to_model(graphdef, state))
    grads = {key: before[key] - after[key] for key in before}
    if loss_params is not None:
        trained = jax.device_get(state.params.loss)
        grads.update({f"loss.{key}": np.asarray(loss_params[key]) - np.asarray(trained[key]) for key in loss_params})
    return float(metrics["loss"]), grads


def max_difference(first: dict, second: dict) -> float:
    assert first.keys() == second.keys()
    return max(float(np.abs(first[k] - second[k]).max()) for k in first)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, bert_tokenizer_path):
    return build_st_model(
        tmp_path_factory.mktemp("cached"),
        bert_tokenizer_path,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def st_sgd_step(folder, make_loss, batch, labels=None):
    """ST's loss and gradients on the same token batch: a fresh copy of the model in `folder`, its
    loss `make_loss(model)`, one backward pass. Returns (loss, gradient by flaxenc's parameter path)."""
    from sentence_transformers import SentenceTransformer

    st_model = SentenceTransformer(str(folder), device="cpu")
    st_model.train()
    loss = make_loss(st_model)
    features = [
        {key: torch.tensor(column[key]).long() for key in ("input_ids", "attention_mask")}
        for column in batch["columns"]
    ]
    value = loss(features, None if labels is None else torch.tensor(labels))
    value.backward()
    before = flat_params(flaxenc.SentenceEncoder.from_pretrained(folder).model)
    with torch.no_grad():
        for parameter in st_model.parameters():
            if parameter.grad is not None:
                parameter -= parameter.grad
    st_model.save(str(folder.parent / "st_step"))
    after = flat_params(flaxenc.SentenceEncoder.from_pretrained(folder.parent / "st_step").model)
    return value.item(), {key: before[key] - after[key] for key in before}, loss


def test_cached_mnrl_step_equals_mnrl_and_st(tiny_model):
    """One step: CachedMNRL (mini-batches of 5 rows, the last padded) gives plain MNRL's loss and
    parameter gradients, and ST's CachedMultipleNegativesRankingLoss's on the same model and batch."""
    folder, _ = tiny_model
    batch = random_batch(24, 3)
    plain_loss, plain_grads = sgd_step(folder, losses.MultipleNegativesRankingLoss(), batch)
    cached_loss, cached_grads = sgd_step(folder, losses.CachedMultipleNegativesRankingLoss(mini_batch_size=5), batch)
    grad_diff = max_difference(plain_grads, cached_grads)
    largest = max(float(np.abs(g).max()) for g in plain_grads.values())
    print(
        f"cached vs plain MNRL: loss diff {abs(cached_loss - plain_loss):.2e}, grad diff {grad_diff:.2e} (largest {largest:.2f})"
    )
    assert abs(cached_loss - plain_loss) <= TOLERANCE * max(1.0, abs(plain_loss))
    assert grad_diff <= TOLERANCE * max(1.0, largest)

    make_reference = lambda model: st_losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=5)  # noqa: E731
    st_value, st_grads, _ = st_sgd_step(folder, make_reference, batch)
    st_diff = max_difference(st_grads, cached_grads)
    print(f"cached MNRL vs ST's: loss diff {abs(cached_loss - st_value):.2e}, grad diff {st_diff:.2e}")
    assert abs(cached_loss - st_value) <= TOLERANCE * max(1.0, abs(st_value))
    assert st_diff <= TOLERANCE * max(1.0, largest)


def test_cached_step_needs_less_memory(tiny_model):
    """The compiled step's temporaries: GradCache at mini-batches of 8 against plain MNRL, batch 64."""
    folder, _ = tiny_model
    batch = random_batch(64, 2, length=32)
    encoder = flaxenc.SentenceEncoder.from_pretrained(folder)
    tx = optax.sgd(1.0)
    temp = {}
    for name, loss in (
        ("plain", losses.MultipleNegativesRankingLoss()),
        ("cached", losses.CachedMultipleNegativesRankingLoss(mini_batch_size=8)),
    ):
        graphdef, state = init_train_state(encoder.model, tx)
        step = TrainStep(graphdef, loss, tx, dropout=False)
        state = step.place_state(state)
        batch_on_mesh = flaxenc.train_step.shard_batch(batch, step.mesh)
        temp[name] = step.lower(state, batch_on_mesh).compile().memory_analysis().temp_size_in_bytes
    print(f"temporaries: plain {temp['plain'] / 2**20:.1f} MiB, cached {temp['cached'] / 2**20:.1f} MiB")
    assert temp["cached"] < 0.5 * temp["plain"]


EIGHT_DEVICES = """
import json, sys
import jax
jax.config.update("jax_default_matmul_precision", "float32")
import numpy as np, optax
from jax.sharding import Mesh
sys.path.insert(0, sys.argv[1])
from test_cached_losses import random_batch, sgd_step, max_difference
from flaxenc import losses

folder, out = sys.argv[2], sys.argv[3]
batch = random_batch(32, 3)  # 4 rows per device: mini-batches of 3 leave one padded chunk
eight = Mesh(np.asarray(jax.devices()), ("data",))
one = Mesh(np.asarray(jax.devices()[:1]), ("data",))
cached = losses.CachedMultipleNegativesRankingLoss(mini_batch_size=3)
runs = {
    "plain_one": sgd_step(folder, losses.MultipleNegativesRankingLoss(), batch, one),
    "plain_eight": sgd_step(folder, losses.MultipleNegativesRankingLoss(), batch, eight),
    "cached_one": sgd_step(folder, cached, batch, one),
    "cached_eight": sgd_step(folder, cached, batch, eight),
}
largest = max(float(np.abs(g).max()) for g in runs["plain_one"][1].values())
result = {"devices": len(jax.devices()), "largest": largest}
for name, (loss, grads) in runs.items():
    result[name] = {"loss_diff": abs(loss - runs["plain_one"][0]), "grad_diff": max_difference(grads, runs["plain_one"][1])}
with open(out, "w") as f:
    json.dump(result, f)
"""


def test_cached_mnrl_on_eight_devices(tiny_model, tmp_path):
    """8 fake devices: cached and plain MNRL give one device's plain loss and gradients (1e-5)."""
    from pathlib import Path

    folder, _ = tiny_model
    result = _run_on_eight_devices(EIGHT_DEVICES, tmp_path, str(Path(__file__).parent), str(folder))
    print(result)
    assert result["devices"] == 8
    for name in ("plain_eight", "cached_one", "cached_eight"):
        assert result[name]["loss_diff"] <= TOLERANCE, name
        assert result[name]["grad_diff"] <= TOLERANCE * max(1.0, result["largest"]), name


def test_prompt_length_in_every_path(tmp_path, bert_tokenizer_path):
    """A column's prompt_length is left out of the pooling (include_prompt=False) alike in the padded,
    packed and GradCache paths: the same loss and gradients, and not those without it."""
    from flaxenc.encoder import sequence_buckets
    from flaxenc.packing import pack_batch

    folder, _ = build_st_model(
        tmp_path, bert_tokenizer_path, include_prompt=False, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    batch = random_batch(8, 2, seed=4)
    for column, prompt in zip(batch["columns"], (1, 2)):
        column["prompt_length"] = np.full(8, prompt, np.int32)
    packed = pack_batch(batch, sequence_buckets(32))
    without = {"columns": [{k: v for k, v in c.items() if k != "prompt_length"} for c in batch["columns"]]}
    padded_loss, padded_grads = sgd_step(folder, losses.MultipleNegativesRankingLoss(), batch)
    for name, loss, data in (
        ("packed", losses.MultipleNegativesRankingLoss(), packed),
        ("cached", losses.CachedMultipleNegativesRankingLoss(mini_batch_size=3), batch),
    ):
        value, grads = sgd_step(folder, loss, data)
        assert abs(value - padded_loss) <= TOLERANCE, name
        assert max_difference(grads, padded_grads) <= TOLERANCE, name
    assert abs(sgd_step(folder, losses.MultipleNegativesRankingLoss(), without)[0] - padded_loss) > 1e-3
