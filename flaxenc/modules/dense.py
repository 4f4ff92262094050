"""ST's Dense module: a linear layer and an activation on the sentence embedding."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

# torch activation class (as ST saves it in 2_Dense/config.json) -> the same function in JAX.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "torch.nn.modules.activation.Tanh": jnp.tanh,
    "torch.nn.modules.activation.ReLU": jax.nn.relu,
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.GELU": lambda x: jax.nn.gelu(x, approximate=False),
    "torch.nn.modules.activation.Sigmoid": jax.nn.sigmoid,
    "torch.nn.modules.activation.SiLU": jax.nn.silu,
    "torch.nn.modules.activation.LeakyReLU": lambda x: jax.nn.leaky_relu(x, 0.01),
    "torch.nn.modules.activation.ELU": jax.nn.elu,
    "torch.nn.modules.activation.Softplus": jax.nn.softplus,
}
DEFAULT_ACTIVATION = "torch.nn.modules.activation.Tanh"  # ST's Dense default


def activation_name(name: str | None) -> str:
    """The canonical torch class path for an activation; accepts `torch.nn.Tanh` or `Tanh` too."""
    if name is None:
        return "torch.nn.modules.linear.Identity"
    short = name.rsplit(".", 1)[-1]
    for full in ACTIVATIONS:
        if name == full or (name in (short, f"torch.nn.{short}") and full.endswith("." + short)):
            return full
    raise ValueError(f"activation function {name!r} is not supported; flaxenc knows {sorted(ACTIVATIONS)}")


class Dense(nnx.Module):
    """act(x W + b), plus an optional residual, as sentence_transformers/base/modules/dense.py."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation_function: str | None = DEFAULT_ACTIVATION,
        use_residual: bool = False,
        *,
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.in_features = in_features
        self.out_features = out_features
        self.bias = bias
        self.activation_function = activation_name(activation_function)
        self.use_residual = use_residual
        self.linear = nnx.Linear(in_features, out_features, use_bias=bias, dtype=dtype, rngs=rngs)
        if use_residual and in_features != out_features:
            self.residual = nnx.Linear(in_features, out_features, use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, embedding: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
        out = ACTIVATIONS[self.activation_function](self.linear(embedding))
        if self.use_residual:
            out = out + (embedding if self.in_features == self.out_features else self.residual(embedding))
        return out
