"""Losses by name for flaxenc-train, SoftmaxLoss included, and the loss's own parameters on save.

SoftmaxLoss (`loss.name: softmax`) is not in flaxenc.losses.LOSSES: it needs the model's embedding
dimension and its classifier is created with the train state (init_train_state(..., loss=loss)),
trained beside the model (weight decay on its weight, not its bias, as ST's trainer groups it).
ST keeps that classifier in the loss object and never writes it with the model; flaxenc-train saves
it in each saved model folder (final/, best/) as `softmax_classifier.safetensors`, with the keys of
ST's SoftmaxLoss state dict (`classifier.weight` [num_labels, in], `classifier.bias`), which ST
ignores when it loads the folder. `read_classifier(folder)` reads it back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from flaxenc import losses
from flaxenc.train_step import ModelAndLossParams, split_params
from flaxenc_train.config import ConfigError, LossConfig
from flaxenc_train.model import resolve_path

CLASSIFIER_FILE = "softmax_classifier.safetensors"


def make_loss(config: LossConfig, embedding_dimension: int | None = None) -> losses.Loss:
    """The loss `config` names, with ST's argument names; `softmax` takes the model's embedding dimension
    unless args give `embedding_dimension` (which must then equal it)."""
    if config.name not in (*losses.LOSSES, "softmax"):
        raise ValueError(f"unknown loss {config.name!r}; known losses: {', '.join([*losses.LOSSES, 'softmax'])}")
    if config.name != "softmax":
        args = dict(config.args)
        if isinstance(args.get("guide"), str):  # gist, cached_gist: a folder, hub id or package:<package>/<folder>
            args["guide"] = resolve_path(args["guide"])
        return losses.get_loss(config.name, **args)
    args = dict(config.args)
    dimension = args.pop("embedding_dimension", embedding_dimension)
    if embedding_dimension is not None and dimension != embedding_dimension:
        raise ValueError(f"softmax: embedding_dimension {dimension} differs from the model's {embedding_dimension}")
    if "num_labels" not in args:
        raise ValueError("softmax needs num_labels (the classes of the label column: 0 .. num_labels - 1)")
    known = [name for name in losses.SoftmaxLoss.__dataclass_fields__ if name != "embedding_dimension"]
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown} for loss 'softmax'; it takes {['embedding_dimension', *known]}")
    return losses.SoftmaxLoss(embedding_dimension=dimension, **args)


def check_losses(run_losses: Sequence) -> None:
    """A loss with its own parameters must be the run's only loss (the state holds one loss's parameters)."""
    with_params = [loss for loss in run_losses if isinstance(loss, losses.SoftmaxLoss)]
    if with_params and len(run_losses) > 1:
        raise ConfigError("loss: softmax keeps its classifier in the train state, so it must be the run's only loss")


def clip_mask(loss):
    """None, or for SoftmaxLoss the gradients clipping applies to: the model's, not the classifier's.
    ST trains with transformers' Trainer, which clips `model.parameters()` only (trainer.py
    _clip_grad_norm); the loss's classifier is stepped with its gradient unclipped."""
    if not isinstance(loss, losses.SoftmaxLoss):
        return None
    return lambda grads: ModelAndLossParams(
        jax.tree.map(lambda _: True, grads.model), jax.tree.map(lambda _: False, grads.loss)
    )


def save_model(encoder, loss, state, folder: Path) -> None:
    """The ST folder of `encoder`, plus SoftmaxLoss's classifier (of `state`) beside its files."""
    encoder.save(folder)
    _, loss_params = split_params(state.params)
    if loss_params is None or not isinstance(loss, losses.SoftmaxLoss):
        return
    from safetensors.numpy import save_file

    params = jax.device_get(loss_params)
    tensors = {f"classifier.{key}": np.ascontiguousarray(np.asarray(value, np.float32)) for key, value in params.items()}
    save_file(tensors, str(Path(folder) / CLASSIFIER_FILE), metadata={"format": "pt"})


def read_classifier(folder: str | Path) -> dict[str, np.ndarray]:
    """{"weight", "bias"} of a saved SoftmaxLoss classifier (SoftmaxLoss's `params=`)."""
    from safetensors.numpy import load_file

    return {key.removeprefix("classifier."): value for key, value in load_file(str(Path(folder) / CLASSIFIER_FILE)).items()}
