"""AdamW as sentence-transformers trains: no decay on biases and LayerNorms, torch's gradient
clipping, transformers' learning-rate schedules, optional gradient accumulation.

Every piece copies its PyTorch counterpart operation for operation, so a run here and a run with
ST's `fit()` / `SentenceTransformerTrainer` from the same weights and batches end with the same
parameters up to float32 rounding (tests/test_optim.py).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from flaxenc import fields

# ---------------------------------------------------------------------------------------------
# Learning-rate schedules
#
# transformers' schedulers are LambdaLR: at optimizer step k (0-based; scheduler.step() runs
# after optimizer.step()) the lr is base_lr * lr_lambda(k). optax calls a schedule with the
# number of updates already applied, which is the same k. Each factor below copies the lambda
# of transformers/optimization.py, operation for operation, so float64 results are identical.
# ---------------------------------------------------------------------------------------------


def _as_float(step: jax.Array) -> jax.Array:
    return step.astype(jnp.result_type(float))  # float32, or float64 under jax_enable_x64


def _warmup_then(step: jax.Array, warmup_steps: int, after_warmup: jax.Array) -> jax.Array:
    # Linear warmup from 0: float(current_step) / float(max(1, num_warmup_steps)).
    return jnp.where(step < warmup_steps, _as_float(step) / max(1, warmup_steps), after_warmup)


def _progress(step: jax.Array, warmup_steps: int, total_steps: int) -> jax.Array:
    # float(current_step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    return _as_float(step - warmup_steps) / max(1, total_steps - warmup_steps)


def _constant(step, warmup_steps, total_steps):
    # transformers.get_constant_schedule: warmup_steps is ignored, as in ST's _get_scheduler.
    return jnp.ones_like(_as_float(step))


def _warmup_constant(step, warmup_steps, total_steps):
    # transformers.get_constant_schedule_with_warmup
    return _warmup_then(step, warmup_steps, jnp.ones_like(_as_float(step)))


def _warmup_linear(step, warmup_steps, total_steps):
    # transformers.get_linear_schedule_with_warmup
    decay = _as_float(total_steps - step) / max(1, total_steps - warmup_steps)
    return _warmup_then(step, warmup_steps, jnp.maximum(0.0, decay))


def _warmup_cosine(step, warmup_steps, total_steps, num_cycles=0.5):
    # transformers.get_cosine_schedule_with_warmup, num_cycles=0.5 (its default; ST passes none):
    # half a cosine from 1 to 0. Past total_steps it rises again, exactly as transformers does.
    progress = _progress(step, warmup_steps, total_steps)
    cosine = 0.5 * (1.0 + jnp.cos(math.pi * num_cycles * 2.0 * progress))
    return _warmup_then(step, warmup_steps, jnp.maximum(0.0, cosine))


def _warmup_cosine_hard_restarts(step, warmup_steps, total_steps, num_cycles=1):
    # transformers.get_cosine_with_hard_restarts_schedule_with_warmup, num_cycles=1 (its default;
    # ST passes none), which is one half cosine from 1 to 0, then 0 from total_steps on.
    progress = _progress(step, warmup_steps, total_steps)
    cosine = 0.5 * (1.0 + jnp.cos(math.pi * jnp.mod(float(num_cycles) * progress, 1.0)))
    return _warmup_then(step, warmup_steps, jnp.where(progress >= 1.0, 0.0, jnp.maximum(0.0, cosine)))


# ST's scheduler names (sentence_transformers/sentence_transformer/fit_mixin.py, _get_scheduler).
SCHEDULES: dict[str, Callable[[jax.Array, int, int], jax.Array]] = {
    "constantlr": _constant,
    "warmupconstant": _warmup_constant,
    "warmuplinear": _warmup_linear,
    "warmupcosine": _warmup_cosine,
    "warmupcosinewithhardrestarts": _warmup_cosine_hard_restarts,
}


def learning_rate_schedule(name: str, learning_rate: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """The lr of ST's scheduler `name` (any case) as a function of the optimizer update count.

    total_steps counts optimizer updates (with accumulation: micro-batches / accumulation_steps).
    """
    factor = SCHEDULES.get(name.lower())
    if factor is None:
        raise ValueError(f"unknown scheduler {name!r}; use one of {sorted(SCHEDULES)} (any case)")

    def schedule(count: jax.Array) -> jax.Array:
        # LambdaLR: base_lr * lr_lambda(step).
        return learning_rate * factor(jnp.asarray(count), warmup_steps, total_steps)

    return schedule


# ---------------------------------------------------------------------------------------------
# Weight-decay mask
# ---------------------------------------------------------------------------------------------

# transformers' Trainer.get_decay_parameter_names: no decay where the lower-cased name matches one of
# these (besides every parameter of an nn.LayerNorm, which flaxenc's norm modules are all named after:
# `layer_norm`, `norm`, `attention_norm`, `final_norm`, ...).
_NO_DECAY_PATTERNS = tuple(re.compile(p) for p in (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"))


def _path_names(path: tuple) -> list[str]:
    names = [str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key)))) for key in path]
    # An nnx.Param flattens to its array under a trailing `.value` attribute.
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and names[-1] == "value":
        names = names[:-1]
    return names


def is_decayed(path: str | list[str]) -> bool:
    """Whether the parameter at a dotted path ("layers.0.attention.query.kernel") is decayed.

    No decay on any bias or any LayerNorm parameter, as transformers' Trainer
    (get_decay_parameter_names: every parameter of an nn.LayerNorm and every name with "bias" or a
    norm in it; MPNet's `relative_attention_bias` table too).
    ST's old fit() (fit_mixin.py) excluded "bias", "LayerNorm.bias", "LayerNorm.weight", which is
    the same set on BERT/RoBERTa but decays the weight of ST's LayerNorm head (`norm.weight`).
    """
    name = (path if isinstance(path, str) else ".".join(map(str, path))).lower()
    return not any(pattern.search(name) for pattern in _NO_DECAY_PATTERNS)


def decay_mask(params):
    """A pytree like `params` (nnx.State or nested dicts) with True where weight decay applies.

    Pass it (or this function) as `mask=` to `adamw` here, optax.adamw or optax.masked.
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: is_decayed(_path_names(path)), params)


# ---------------------------------------------------------------------------------------------
# Gradient clipping
# ---------------------------------------------------------------------------------------------


def clip_by_global_norm_like_torch(max_norm: float, mask=None) -> optax.GradientTransformation:
    """torch.nn.utils.clip_grad_norm_(params, max_norm): g *= min(max_norm / (norm + 1e-6), 1).

    optax.clip_by_global_norm scales by max_norm / norm instead (no 1e-6), so it differs
    slightly from what ST's training does whenever it clips.
    mask: None (every gradient), or a pytree of bools like the gradients (or a function of them
    giving one): only those marked True count toward the norm and are clipped, as torch clips only
    the parameters it is given (transformers' Trainer clips the model's, not a loss's classifier).
    """

    def update(updates, state, params=None):
        del params
        marked = jax.tree.map(lambda _: True, updates) if mask is None else (mask(updates) if callable(mask) else mask)
        # torch/nn/utils/clip_grad.py: the 2-norm of the per-tensor 2-norms.
        leaves = [g for g, keep in zip(jax.tree.leaves(updates), jax.tree.leaves(marked)) if keep]
        total_norm = jnp.linalg.norm(jnp.stack([jnp.linalg.norm(g.ravel()) for g in leaves]))
        clip_coef = jnp.minimum(max_norm / (total_norm + 1e-6), 1.0)  # torch.clamp(clip_coef, max=1.0)
        return jax.tree.map(lambda g, keep: (g * clip_coef).astype(g.dtype) if keep else g, updates, marked), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


# ---------------------------------------------------------------------------------------------
# AdamW
# ---------------------------------------------------------------------------------------------


class TorchAdamWState(NamedTuple):
    count: jax.Array  # updates applied so far
    mu: optax.Updates  # torch's exp_avg
    nu: optax.Updates  # torch's exp_avg_sq


def _bias_correction(decay: float, t: jax.Array) -> jax.Array:
    """1 - decay**t, accurate in float32 as torch's float64 (optax's rounds 0.999 to 0.99900001)."""
    if decay == 0.0:
        return jnp.ones_like(t)
    return -jnp.expm1(t * math.log(decay))


def _rounded(x: jax.Array) -> jax.Array:
    """x itself, but XLA can no longer fuse its product into an FMA with the next subtraction.

    torch's in-place param.mul_(1 - lr * wd) rounds p * f to float32; an FMA computing p * f - p
    in one step skips that rounding, and at lr 2e-5, wd 0.01 (a decay of ~2 ulps a step) the
    difference builds up to ~1e-5 relative in 500 steps. A select is not fused that way.
    """
    return jnp.where(jnp.isnan(x), jnp.nan, x)


def torch_adamw(
    learning_rate: float | optax.Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.01,
    mask=None,
) -> optax.GradientTransformation:
    """torch.optim.AdamW's step (torch/optim/adam.py, single-tensor path, decoupled decay).

        p <- p * (1 - lr * wd)                  (wd = 0 where mask is False)
        m <- m + (1 - b1) (g - m);  v <- b2 v + (1 - b2) g^2
        p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    optax.adamw is the same algebra but drifts from torch in float32 (README "Decisions"), for two
    reasons copied here: torch computes 1 - b2^t in float64 (optax in float32), and it decays by
    rounding p * float32(1 - lr * wd) to float32, where optax subtracts lr * wd * p (at small
    lr * wd that rounding is a whole ulp of p a step).
    mask: True where decay applies, a pytree (or prefix) like params, or a function of params.
    """

    def init(params):
        # Two trees of their own: a train step that donates its state must not see one buffer twice.
        return TorchAdamWState(
            count=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(jnp.zeros_like, params),
            nu=jax.tree.map(jnp.zeros_like, params),
        )

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("torch_adamw needs params for weight decay: call update(grads, state, params)")
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        t = (state.count + 1).astype(jnp.float32)
        step_size, bias_correction2_sqrt = lr / _bias_correction(b1, t), jnp.sqrt(_bias_correction(b2, t))
        mu = jax.tree.map(lambda m, g: m + (1 - b1) * (g - m), state.mu, grads)  # torch: exp_avg.lerp_
        nu = jax.tree.map(lambda v, g: v * b2 + (1 - b2) * g * g, state.nu, grads)
        mask_tree = mask(params) if callable(mask) else (True if mask is None else mask)
        # A prefix mask (one bool for a subtree) broadcast to every leaf of that subtree.
        broadcast = lambda decayed, subtree: jax.tree.map(lambda _: decayed, subtree)  # noqa: E731
        decayed_tree = jax.tree.map(broadcast, mask_tree, params)

        def leaf_update(p, m, v, decayed):
            decay_factor = 1 - lr * jnp.where(decayed, weight_decay, 0.0)  # float32, as torch's mul_
            adam_step = step_size * (m / (jnp.sqrt(v) / bias_correction2_sqrt + eps))
            # round(p * f) - p is exact (Sterbenz), so p + update rounds as torch's two in-place ops.
            return ((_rounded(p * decay_factor) - p) - adam_step).astype(p.dtype)

        updates = jax.tree.map(leaf_update, params, mu, nu, decayed_tree)
        return updates, TorchAdamWState(count=optax.safe_increment(state.count), mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def adamw(
    learning_rate: float | optax.Schedule,
    weight_decay: float = 0.01,
    max_grad_norm: float | None = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    accumulation_steps: int = 1,
    mask=decay_mask,
    clip_mask=None,
) -> optax.GradientTransformation:
    """Clip -> AdamW, the optimizer step of ST's training (clip_grad_norm_, then torch.optim.AdamW).

    Defaults are transformers' TrainingArguments (adam_beta1 0.9, adam_beta2 0.999,
    adam_epsilon 1e-8, max_grad_norm 1.0; its default optim with torch >= 2.8 is
    "adamw_torch_fused", which agrees with the single-tensor AdamW copied here to 1-2 ulp)
    and ST fit()'s weight_decay 0.01.
    max_grad_norm None or 0 disables clipping. mask: True where decay applies (decay_mask by
    default; None decays everything). clip_mask: which gradients are clipped and count toward the
    norm (clip_by_global_norm_like_torch; None: all).

    accumulation_steps > 1 wraps the chain in optax.MultiSteps: the update is applied every
    accumulation_steps calls, on the mean of their gradients (zero updates in between), and the
    schedule advances once per applied update. That is transformers' Trainer, which divides each
    micro-batch loss by the number of micro-steps and sums the gradients, then clips and steps
    once: the loss is averaged over the micro-steps.
    """
    if accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
    optimizer = torch_adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)
    if max_grad_norm:
        optimizer = optax.chain(clip_by_global_norm_like_torch(max_grad_norm, clip_mask), optimizer)
    if accumulation_steps > 1:
        optimizer = optax.MultiSteps(optimizer, every_k_schedule=accumulation_steps).gradient_transformation()
    return optimizer


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer of a run (flaxenc-train's `optimizer:` section); defaults are ST fit()'s with no warmup.

    Each field declares its allowed values (flaxenc.fields); a value outside them is a ValueError
    naming the field.
    """

    # Peak learning rate (ST fit's optimizer_params {"lr": 2e-5}).
    learning_rate: float = fields.field(2e-5, allowed=fields.POSITIVE)
    # Decoupled weight decay, not applied to biases and LayerNorms.
    weight_decay: float = fields.field(0.01, allowed=fields.NON_NEGATIVE)
    # Clip gradients to this global 2-norm as torch's clip_grad_norm_; 0 disables.
    max_grad_norm: float = fields.field(1.0, allowed=fields.NON_NEGATIVE)
    # One of SCHEDULES, any case: constantlr, warmupconstant, warmuplinear, warmupcosine,
    # warmupcosinewithhardrestarts.
    scheduler: str = fields.field("warmuplinear", allowed=tuple(SCHEDULES))
    # Optimizer updates of linear warmup from 0 to learning_rate; None: warmup_ratio of all updates.
    warmup_steps: int | None = fields.field(None, allowed=fields.NON_NEGATIVE)
    warmup_ratio: float = fields.field(0.0, allowed=fields.Range(0, 1))
    adam_beta1: float = fields.field(0.9, allowed=fields.BELOW_ONE)
    adam_beta2: float = fields.field(0.999, allowed=fields.BELOW_ONE)
    adam_epsilon: float = fields.field(1e-8, allowed=fields.POSITIVE)
    # Micro-batches whose mean gradient makes one update (gradient accumulation).
    accumulation_steps: int = fields.field(1, allowed=fields.AT_LEAST_ONE)

    def __post_init__(self):
        fields.check_fields(self)

    def warmup(self, total_steps: int) -> int:
        """Warmup updates: warmup_steps, else ceil(warmup_ratio * total) (transformers' get_warmup_steps)."""
        return self.warmup_steps if self.warmup_steps is not None else math.ceil(self.warmup_ratio * total_steps)

    def schedule(self, total_steps: int) -> optax.Schedule:
        """The lr schedule over `total_steps` optimizer updates."""
        return learning_rate_schedule(self.scheduler, self.learning_rate, self.warmup(total_steps), total_steps)

    def build(self, total_steps: int, clip_mask=None) -> optax.GradientTransformation:
        """The optimizer for a run of `total_steps` optimizer updates; clip_mask: see adamw."""
        return adamw(
            self.schedule(total_steps),
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
            b1=self.adam_beta1,
            b2=self.adam_beta2,
            eps=self.adam_epsilon,
            accumulation_steps=self.accumulation_steps,
            clip_mask=clip_mask,
        )
