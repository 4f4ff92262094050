"""flaxenc.optim against PyTorch: transformers' schedules, clip_grad_norm_, torch.optim.AdamW,
transformers Trainer's no-decay set, gradient accumulation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import nnx

from flaxenc import optim
from flaxenc.models import BertModel, EncoderConfig
from flaxenc.models.bert import RULES as BERT_RULES
from flaxenc.modules import Dense, EmbeddingLayerNorm, Pooling
from flaxenc.modules.dense import RULES as DENSE_RULES
from flaxenc.modules.layer_norm import RULES as LAYER_NORM_RULES
from flaxenc.sentence_model import SentenceModel

# ST's scheduler name -> the transformers function ST's _get_scheduler calls, with its arguments
# (sentence_transformers/sentence_transformer/fit_mixin.py).
TORCH_SCHEDULERS = {
    "constantlr": lambda opt, warmup, total: transformers.get_constant_schedule(opt),
    "warmupconstant": lambda opt, warmup, total: transformers.get_constant_schedule_with_warmup(opt, warmup),
    "warmuplinear": lambda opt, warmup, total: transformers.get_linear_schedule_with_warmup(opt, warmup, total),
    "warmupcosine": lambda opt, warmup, total: transformers.get_cosine_schedule_with_warmup(opt, warmup, total),
    "warmupcosinewithhardrestarts": lambda opt, warmup, total: (
        transformers.get_cosine_with_hard_restarts_schedule_with_warmup(opt, warmup, total)
    ),
}


def torch_learning_rates(name: str, lr: float, warmup: int, total: int, steps: int) -> np.ndarray:
    """The lr torch's optimizer uses at each step 0..steps-1 (step(), then scheduler.step())."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = TORCH_SCHEDULERS[name](optimizer, warmup, total)
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return np.array(rates, dtype=np.float64)


@pytest.mark.parametrize("warmup, total", [(10, 100), (0, 100), (120, 100)])
@pytest.mark.parametrize("name", sorted(TORCH_SCHEDULERS))
def test_schedule_equals_transformers(name, warmup, total):
    steps = total + 30  # past the end too, where the schedules differ most
    expected = torch_learning_rates(name, 2e-5, warmup, total, steps)
    schedule = optim.learning_rate_schedule(name.upper(), 2e-5, warmup, total)
    with jax.enable_x64(True):
        got = np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(steps)), dtype=np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    # The float32 schedule the training step uses: 1 + cos(x) cancels near the end of the cosine
    # ones, so small rates there are off by up to ~2e-7 of the peak rate.
    got32 = np.asarray(jax.vmap(schedule)(jnp.arange(steps)))
    np.testing.assert_allclose(got32, expected, rtol=2e-7, atol=3e-7 * 2e-5)


def test_unknown_scheduler_names_the_valid_ones():
    with pytest.raises(ValueError, match="warmupcosinewithhardrestarts"):
        optim.learning_rate_schedule("cosine", 1e-3, 0, 10)
    with pytest.raises(ValueError, match="scheduler: 'linear' is not one of"):
        optim.OptimizerConfig(scheduler="linear")


def test_optimizer_uses_schedule_at_update_count():
    """With b1 = b2 = 0, unit gradients and no decay, update k is exactly -schedule(k)."""
    schedule = optim.learning_rate_schedule("WarmupLinear", 1e-3, 10, 40)
    tx = optim.adamw(schedule, weight_decay=0.0, max_grad_norm=None, b1=0.0, b2=0.0)
    params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
    grads = jax.tree.map(jnp.ones_like, params)
    state = tx.init(params)
    step = jax.jit(tx.update)
    for k in range(40):
        updates, state = step(grads, state, params)
        for leaf in jax.tree.leaves(updates):
            np.testing.assert_allclose(np.asarray(leaf), -float(schedule(k)), rtol=2e-7, atol=0)


def random_grads(rng: np.random.Generator, shapes: dict, scale: float) -> dict:
    return {name: (scale * rng.standard_normal(shape)).astype(np.float32) for name, shape in shapes.items()}


@pytest.mark.parametrize("scale, clips", [(3.0, True), (0.01, False)])
def test_clip_equals_torch_clip_grad_norm(scale, clips):
    rng = np.random.default_rng(0)
    grads = random_grads(rng, {"a": (7, 5), "b": (5,), "c": (3, 4, 2)}, scale)
    torch_grads = {name: torch.nn.Parameter(torch.zeros(g.shape)) for name, g in grads.items()}
    for name, p in torch_grads.items():
        p.grad = torch.tensor(grads[name])
    norm = float(torch.nn.utils.clip_grad_norm_(list(torch_grads.values()), max_norm=1.0))
    assert (norm > 1.0) == clips

    clipped, _ = optim.clip_by_global_norm_like_torch(1.0).update(grads, optax.EmptyState())
    for name, p in torch_grads.items():
        np.testing.assert_allclose(np.asarray(clipped[name]), p.grad.numpy(), rtol=1e-7, atol=0)
    if not clips:
        for name in grads:
            np.testing.assert_array_equal(np.asarray(clipped[name]), grads[name])


# Dotted path -> shape: decayed (kernel, embedding) and exempt (bias, LayerNorm scale) leaves.
ADAMW_SHAPES = {
    "embeddings.word_embeddings.embedding": (11, 6),
    "embeddings.layer_norm.scale": (6,),
    "embeddings.layer_norm.bias": (6,),
    "layers.0.attention.query.kernel": (6, 6),
    "layers.0.attention.query.bias": (6,),
    "heads.0.linear.kernel": (6, 4),
    "heads.1.norm.scale": (4,),
}


def nested(flat: dict) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for name, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{name}."))
        else:
            out[prefix + name] = value
    return out


@pytest.mark.parametrize("lr, weight_decay", [(1e-3, 0.1), (2e-5, 0.01)])  # large; ST's fit() defaults
def test_adamw_equals_torch_adamw(lr, weight_decay):
    """50 steps of clip + AdamW + warmup-linear equal torch's with ST fit()'s two param groups."""
    warmup, total = 5, 50
    rng = np.random.default_rng(1)
    initial = {path: rng.standard_normal(shape).astype(np.float32) for path, shape in ADAMW_SHAPES.items()}
    # Half the steps clip (norm ~ 10), half do not (norm ~ 0.05).
    grads = [random_grads(rng, ADAMW_SHAPES, 1.0 if k % 2 else 0.005) for k in range(total)]

    torch_params = {path: torch.nn.Parameter(torch.tensor(value)) for path, value in initial.items()}
    decayed = [p for path, p in torch_params.items() if optim.is_decayed(path)]
    exempt = [p for path, p in torch_params.items() if not optim.is_decayed(path)]
    assert len(decayed) == 3 and len(exempt) == 4
    optimizer = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}], lr=lr
    )
    scheduler = transformers.get_linear_schedule_with_warmup(optimizer, warmup, total)
    for step_grads in grads:
        for path, p in torch_params.items():
            p.grad = torch.tensor(step_grads[path])
        torch.nn.utils.clip_grad_norm_(list(torch_params.values()), 1.0)
        optimizer.step()
        scheduler.step()

    config = optim.OptimizerConfig(learning_rate=lr, weight_decay=weight_decay, warmup_steps=warmup)
    tx = config.build(total)
    params = nested({path: jnp.asarray(value) for path, value in initial.items()})
    state = tx.init(params)

    @jax.jit
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for step_grads in grads:
        params, state = step(params, state, nested(step_grads))

    for path, value in flat(params).items():
        expected = torch_params[path].detach().numpy()
        assert np.abs(expected - initial[path]).max() > lr, "the test should move every parameter"
        np.testing.assert_allclose(np.asarray(value), expected, rtol=1e-6, atol=0, err_msg=path)


def test_accumulation_averages_micro_steps():
    """Two half-batch micro-steps give the update of one step on the full-batch (mean) gradient."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((8, 5)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((8, 3)), jnp.float32)
    params = {"linear": {"kernel": jnp.asarray(rng.standard_normal((5, 3)), jnp.float32), "bias": jnp.zeros(3)}}

    def loss(params, x, y):
        return jnp.mean((x @ params["linear"]["kernel"] + params["linear"]["bias"] - y) ** 2)

    grad = jax.jit(jax.grad(loss))
    one_step = optim.adamw(1e-2, max_grad_norm=1.0)
    full_update, _ = jax.jit(one_step.update)(grad(params, x, y), one_step.init(params), params)

    two_steps = optim.adamw(1e-2, max_grad_norm=1.0, accumulation_steps=2)
    micro_step = jax.jit(two_steps.update)
    state = two_steps.init(params)
    first, state = micro_step(grad(params, x[:4], y[:4]), state, params)
    second, state = micro_step(grad(params, x[4:], y[4:]), state, params)
    for leaf in jax.tree.leaves(first):
        np.testing.assert_array_equal(np.asarray(leaf), 0.0)
    for got, expected in zip(jax.tree.leaves(second), jax.tree.leaves(full_update)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-6, atol=1e-9)


class _TorchTransformer(torch.nn.Module):
    """The parameter naming of ST's Transformer module: `auto_model.` + transformers' names."""

    def __init__(self, auto_model: torch.nn.Module):
        super().__init__()
        self.auto_model = auto_model


def _torch_name(flax_path: str) -> str:
    """flaxenc path -> the name in a torch ST model [Transformer, Pooling, Dense, LayerNorm]."""
    module, rest = flax_path.split(".", 1)
    if module == "transformer":
        prefix, rules = "0.auto_model.", BERT_RULES
    else:  # heads.0 is the Dense, heads.1 the LayerNorm; ST numbers them after Pooling
        index, rest = rest.split(".", 1)
        prefix, rules = f"{int(index) + 2}.", (DENSE_RULES, LAYER_NORM_RULES)[int(index)]
    return prefix + next(name for rule in rules if (name := rule.match_flax(rest)) is not None)


def test_decay_mask_equals_trainer_on_a_sentence_model():
    from sentence_transformers.sentence_transformer import modules as st_modules

    shape = dict(vocab_size=40, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=12)
    shape.update(max_position_embeddings=16)

    def build():
        rngs = nnx.Rngs(0)
        transformer = BertModel(EncoderConfig(**shape), with_pooler=True, rngs=rngs)
        return SentenceModel(transformer, Pooling(8), [Dense(8, 4, rngs=rngs), EmbeddingLayerNorm(4)])

    state = nnx.state(nnx.eval_shape(build), nnx.Param)
    mask = optim.decay_mask(state)
    decayed_by_path = {".".join(map(str, path)): bool(var.get_value()) for path, var in nnx.to_flat_state(mask)}
    assert len(decayed_by_path) == len(jax.tree.leaves(state)) == 43
    exempt = {_torch_name(path) for path, decayed in decayed_by_path.items() if not decayed}

    torch_model = torch.nn.Sequential(
        _TorchTransformer(transformers.BertModel(transformers.BertConfig(**shape))),
        torch.nn.Identity(),  # Pooling has no parameters
        st_modules.Dense(8, 4),
        st_modules.LayerNorm(4),
    )
    names = {name for name, _ in torch_model.named_parameters()}
    assert names == {_torch_name(path) for path in decayed_by_path}
    trainer_decayed = set(transformers.Trainer.get_decay_parameter_names(None, torch_model))
    assert exempt == names - trainer_decayed
    # ST's old fit() list decays the ST LayerNorm head's weight; everything else agrees.
    fit_exempt = {n for n in names if any(nd in n for nd in ["bias", "LayerNorm.bias", "LayerNorm.weight"])}
    assert exempt - fit_exempt == {"3.norm.weight"} and fit_exempt <= exempt

    # The mask plugs into optax over the nnx.State as is: with zero gradients only decay moves.
    tx = optim.adamw(1e-3)
    params = jax.tree.map(lambda leaf: np.ones(leaf.shape, np.float32), state)

    @jax.jit
    def zero_gradient_update(params):
        return tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)[0]

    for path, update in nnx.to_flat_state(zero_gradient_update(params)):
        assert bool(np.any(np.asarray(update.get_value()) != 0)) == decayed_by_path[".".join(map(str, path))]
