"""ST's Dense module: a linear layer and an activation on the sentence embedding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from flaxenc.key_tables import Rule, linear

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

# ST's Dense weights (2_Dense/model.safetensors) -> Dense below.
RULES: tuple[Rule, ...] = (*linear("linear", "linear"), *linear("residual", "residual", bias=False))


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

    # config.json keys read (ST's config_keys, and the input/output names ST writes).
    ST_CONFIG_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"in_features", "out_features", "bias", "activation_function", "use_residual", "module_input_name", "module_output_name"}
    )

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

    @classmethod
    def from_st_config(cls, config: dict[str, Any], dim: int, dtype: jnp.dtype, rngs: nnx.Rngs) -> Dense:
        """The module of a 2_Dense/config.json on an input of `dim` features (ST's defaults for absent keys)."""
        missing = [key for key in ("in_features", "out_features") if key not in config]
        if missing:
            raise ValueError(f"missing key {missing[0]!r}")
        in_features = config["in_features"]
        if in_features != dim:
            raise ValueError(f"in_features {in_features} differs from the input dimension {dim}")
        return cls(
            in_features,
            config["out_features"],
            bias=config.get("bias", True),
            activation_function=config.get("activation_function", DEFAULT_ACTIVATION),
            use_residual=config.get("use_residual", False),
            dtype=dtype,
            rngs=rngs,
        )

    def st_config(self) -> dict[str, Any]:
        """config.json as ST writes it (use_residual only when set)."""
        config = {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias,
            "activation_function": self.activation_function,
        }
        return {**config, "use_residual": True} if self.use_residual else config

    def st_repr_config(self) -> dict[str, Any]:
        """ST's get_config_dict(), as its repr prints it (base/modules/dense.py, module.py)."""
        config = {**self.st_config(), "module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"}
        if self.use_residual:  # ST drops use_residual at its default, and prints it last
            config["use_residual"] = config.pop("use_residual")
        return config
