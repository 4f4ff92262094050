"""One jitted, data-parallel training step: state and a batch in, new state and metrics out.

The model is split once (`nnx.split`) into a static graphdef and a parameter state; the step is a
pure function of (state, batch) compiled by `jax.jit` over a one-axis `data` mesh: the batch is
sharded on it, parameters and optimizer state replicated (or FSDP-sharded with `fsdp=True`).
Under jit every function sees the global batch, so losses with in-batch negatives use the
negatives of all devices, and the gradient is the global-batch gradient. No pmap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flaxenc import compile_cache, sharding
from flaxenc.gradcache import cached_embed_columns
from flaxenc.losses import LossFunction
from flaxenc.sentence_model import SentenceModel

# A batch: one {"input_ids", "attention_mask"} dict of [B, T] int arrays per text column, and
# "labels" ([B] float scores or binary labels; absent for losses without labels); with packed
# sentences (flaxenc.packing.pack_batch) also "packed" rows and a "token_index" per column. A column
# may carry "prompt_length" [B]: the prompt's tokens at the start of each row (prompts at training time,
# ST's `prompts` argument), which pooling leaves out where the model's Pooling has include_prompt=False.
Batch = dict[str, Any]


class ModelAndLossParams(NamedTuple):
    """TrainState.params for a loss with its own parameters (SoftmaxLoss's classifier)."""

    model: nnx.State
    loss: Any


def split_params(params) -> tuple[nnx.State, Any]:
    """(the model's parameters, the loss's or None) of TrainState.params."""
    if isinstance(params, ModelAndLossParams):
        return params.model, params.loss
    return params, None


class TrainState(NamedTuple):
    step: jax.Array  # optimizer steps taken (the run's one step counter: logs and checkpoints use it)
    params: nnx.State  # or ModelAndLossParams for a loss with parameters
    opt_state: optax.OptState  # with accumulation, optax.MultiSteps' state: its mini_step counts micro-batches
    rng: jax.Array  # base key; micro-step k drops out with fold_in(rng, k)


def micro_step(state: TrainState, accumulation_steps: int = 1) -> jax.Array:
    """Micro-batches taken: optimizer steps x accumulation steps, plus those of the update in progress."""
    if accumulation_steps == 1:
        return state.step
    return state.step * accumulation_steps + state.opt_state.mini_step


def embed_columns(
    model: SentenceModel, columns: Sequence[dict], dropout_key: jax.Array | None = None, packed: dict | None = None
) -> list[jax.Array]:
    """Embeds each text column; columns share one forward pass of [columns x B] rows, as ST 6 merges them.

    packed: the batch's sentences packed into rows (flaxenc.packing.pack_batch), each column then
    carrying a "token_index"; the forward pass runs on the packed rows.
    """
    length = max(column["attention_mask"].shape[1] for column in columns)

    def merged(key):
        return jnp.concatenate([jnp.pad(c[key], ((0, 0), (0, length - c[key].shape[1]))) for c in columns])

    prompt_length = None
    if "prompt_length" in columns[0]:
        prompt_length = jnp.concatenate([jnp.asarray(c["prompt_length"]).reshape(-1) for c in columns])[:, None]
    if packed is None:
        embeddings = model(
            merged("input_ids"), merged("attention_mask"), prompt_length=prompt_length, dropout_key=dropout_key
        )
    else:
        embeddings = model.embed_packed(
            packed, merged("token_index"), merged("attention_mask"), dropout_key, prompt_length
        )
    return jnp.split(embeddings, len(columns))


def init_train_state(model: SentenceModel, tx: optax.GradientTransformation, seed: int = 0, loss: Any = None):
    """(graphdef, state): the static structure and the initial training state of `model`.

    A `loss` whose init_params gives parameters (SoftmaxLoss) has them trained too: state.params is
    then ModelAndLossParams(model, loss).
    """
    graphdef, params = nnx.split(model)
    init_params = getattr(loss, "init_params", None)
    loss_params = None
    if init_params is not None:
        loss_params = init_params(model.embedding_dimension, jax.random.fold_in(jax.random.key(seed), 2**20))
    if loss_params is not None:
        params = ModelAndLossParams(params, loss_params)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
    )
    return graphdef, state


def _fsdp_spec(shape: tuple[int, ...], devices: int, min_size: int = 2**14) -> PartitionSpec:
    """Shards the largest axis that splits evenly over the devices; small arrays stay whole."""
    if devices == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return PartitionSpec()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % devices == 0:
            return PartitionSpec(*([None] * axis + [sharding.DATA_AXIS]))
    return PartitionSpec()


def state_shardings(state: TrainState, mesh: Mesh, fsdp: bool = False):
    """Shardings for every leaf of `state`: replicated, or FSDP over the data axis."""

    def leaf_sharding(leaf):
        spec = _fsdp_spec(tuple(leaf.shape), mesh.size) if fsdp else PartitionSpec()
        return NamedSharding(mesh, spec)

    return jax.tree.map(leaf_sharding, state)


def shard_batch(batch: Batch, mesh: Mesh) -> Batch:
    """Places this process's rows of a batch on the mesh; the global batch is all processes' rows."""
    batch_sharding = sharding.batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(batch_sharding, np.asarray(x)), batch)


def step_keys(rng: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(dropout key, loss key) of micro-step `step`: functions of the run's seed and the step alone."""
    step_key = jax.random.fold_in(jax.random.wrap_key_data(rng), step)
    return step_key, jax.random.fold_in(step_key, 1)


def _train_step(
    graphdef,
    loss: LossFunction,
    tx,
    learning_rate_fn,
    accumulation_steps,
    dropout,
    state: TrainState,
    batch,
    mesh: Mesh | None = None,
    guide: tuple[nnx.GraphDef, nnx.State] | None = None,
):
    dropout_key, loss_key = step_keys(state.rng, micro_step(state, accumulation_steps))
    loss_options = {"key": loss_key} if getattr(loss, "needs_key", False) else {}  # plain functions need none
    mini_batch_size = getattr(loss, "mini_batch_size", None)

    def embed(model, key):
        if mini_batch_size is not None:  # GradCache: activations of one mini-batch at a time
            return cached_embed_columns(model, batch["columns"], mini_batch_size, key, mesh)
        return embed_columns(model, batch["columns"], key, batch.get("packed"))

    if guide is not None:  # a frozen guide model (GISTEmbedLoss): its embeddings of the same columns
        loss_options["guide_embeddings"] = [jax.lax.stop_gradient(e) for e in embed(nnx.merge(*guide), None)]

    def loss_of(params):
        model_params, loss_params = split_params(params)
        embeddings = embed(nnx.merge(graphdef, model_params), dropout_key if dropout else None)
        options = loss_options if loss_params is None else {**loss_options, "params": loss_params}
        return loss(embeddings, batch.get("labels"), **options)

    loss_value, grads = jax.value_and_grad(loss_of)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss_value, "grad_norm": optax.global_norm(grads)}
    if learning_rate_fn is not None:
        metrics["learning_rate"] = learning_rate_fn(state.step)
    # An optimizer step ends when MultiSteps applies its update (its mini_step wraps to 0).
    applied = 1 if accumulation_steps == 1 else (opt_state.mini_step == 0).astype(state.step.dtype)
    new_state = TrainState(step=state.step + applied, params=params, opt_state=opt_state, rng=state.rng)
    return new_state, metrics


class TrainStep:
    """The compiled step. `state, metrics = step(state, batch)`; `state` is donated.

    loss: a flaxenc.losses.LossFunction, e.g. flaxenc.losses.CosineSimilarityLoss(); a loss that
        `needs_key` gets a fresh key each step (`step_keys`); one with a `mini_batch_size` is
        trained by GradCache (flaxenc.gradcache); one with a `guide` model gets the guide's
        embeddings (its parameters are an argument of the compiled step, replicated, never updated);
        one with parameters (init_train_state(..., loss=loss)) gets them as `params=`.
    learning_rate_fn: the optimizer's schedule, reported as metrics["learning_rate"].
    dropout: False runs the model deterministically (for parity tests and evaluation).
    """

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        loss: LossFunction,
        tx: optax.GradientTransformation,
        mesh: Mesh | None = None,
        learning_rate_fn: optax.Schedule | None = None,
        accumulation_steps: int = 1,
        dropout: bool = True,
        fsdp: bool = False,
    ):
        compile_cache.enable()
        self.mesh = sharding.global_data_mesh() if mesh is None else mesh
        self.fsdp = fsdp
        self._extra_args = ()
        guide = getattr(loss, "guide", None)
        guide_graphdef = None
        if guide is not None:
            guide_graphdef, guide_params = nnx.split(guide)
            self._extra_args = (jax.device_put(guide_params, sharding.replicated(self.mesh)),)

        def step(state, batch, *guide_params):
            guide_model = (guide_graphdef, guide_params[0]) if guide_params else None
            return _train_step(
                graphdef, loss, tx, learning_rate_fn, accumulation_steps, dropout, state, batch, self.mesh, guide_model
            )

        self._step = jax.jit(step, donate_argnums=0)

    def place_state(self, state: TrainState) -> TrainState:
        """Puts the state on the mesh with this step's shardings (once, before the first step)."""
        return jax.device_put(state, state_shardings(state, self.mesh, self.fsdp))

    def __call__(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        if not isinstance(next(iter(jax.tree.leaves(batch))), jax.Array):
            batch = shard_batch(batch, self.mesh)
        return self._step(state, batch, *self._extra_args)

    def lower(self, state: TrainState, batch: Batch) -> jax.stages.Lowered:
        """The step lowered for these shapes (`.compile().memory_analysis()` gives its memory)."""
        return self._step.lower(state, batch, *self._extra_args)

    @property
    def num_compiles(self) -> int:
        """Programs compiled so far: one per distinct batch shape (bucket)."""
        return self._step._cache_size()


def params_to_model(graphdef: nnx.GraphDef, state: TrainState) -> SentenceModel:
    """The trained module stack, with parameters gathered to host-readable arrays."""
    model_params, _ = split_params(state.params)
    return nnx.merge(graphdef, jax.tree.map(jnp.asarray, jax.device_get(model_params)))
