"""What sentence-transformers calls flaxenc's objects: module reprs and loss configs, as ST prints them.

`architecture_text(model)` is `str(SentenceTransformer(folder))` for the folder flaxenc saves of `model`
(ST 6's Module.__repr__: `Kind(get_config_dict())`); `st_loss_config(loss)` is ST's class name and
get_config_dict() for a flaxenc loss. Model cards show both.
"""

from __future__ import annotations

from typing import Any

from flaxenc import losses
from flaxenc.models import family_of
from flaxenc.modules import kind_of

# ST's text-only feature-extraction Transformer config (base/modules/transformer.py get_config_dict).
_TRANSFORMER_CONFIG = {
    "transformer_task": "feature-extraction",
    "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
    "module_output_name": "token_embeddings",
}


def module_repr(module) -> str:
    """ST's repr of one module after the transformer: `Kind({config})` (base/modules/module.py)."""
    return f"{kind_of(module).name}({module.st_repr_config()})"


def architecture_text(model) -> str:
    """What `str(SentenceTransformer(folder))` prints for the folder save_st_folder writes of `model`."""
    config = model.transformer.config
    # 'architecture' is the class AutoModel builds for the model_type (MPNetModel, ...).
    transformer = {**_TRANSFORMER_CONFIG, "architecture": family_of(config).auto_class(config.model_type)}
    pooling = model.pooling
    modes = pooling.modes[0] if len(pooling.modes) == 1 else tuple(pooling.modes)
    pooling_config = {
        "embedding_dimension": pooling.embedding_dimension,
        "pooling_mode": modes,
        "include_prompt": pooling.include_prompt,
    }
    modules = [f"Transformer({transformer})", f"Pooling({pooling_config})", *map(module_repr, model.heads)]
    lines = [f"  ({index}): {text}" for index, text in enumerate(modules)]
    return "SentenceTransformer(\n" + "\n".join(lines) + "\n)"


def st_loss_config(loss: losses.Loss) -> tuple[str, dict[str, Any]]:
    """The loss's ST class name and ST's get_config_dict() for it (sentence_transformer/losses/*.py)."""
    siamese = {"euclidean": "EUCLIDEAN", "manhattan": "MANHATTAN", "cosine_distance": "COSINE_DISTANCE"}
    triplet = {"euclidean": "EUCLIDEAN", "manhattan": "MANHATTAN", "cosine": "COSINE"}
    if isinstance(loss, losses.CosineSimilarityLoss):
        loss_fct = {"mse": "MSELoss", "l1": "L1Loss"}[loss.loss_fct]
        config = {
            "loss_fct": f"torch.nn.modules.loss.{loss_fct}",
            "cos_score_transformation": "torch.nn.modules.linear.Identity",
        }
    elif isinstance(loss, losses.ContrastiveLoss):
        metric = f"SiameseDistanceMetric.{siamese[loss.distance_metric]}"
        config = {"distance_metric": metric, "margin": loss.margin, "size_average": loss.size_average}
    elif isinstance(loss, losses.OnlineContrastiveLoss):
        config = {"distance_metric": f"SiameseDistanceMetric.{siamese[loss.distance_metric]}", "margin": loss.margin}
    elif isinstance(
        loss,
        (
            losses.MultipleNegativesRankingLoss,
            losses.MultipleNegativesSymmetricRankingLoss,
            losses.CachedMultipleNegativesSymmetricRankingLoss,
        ),
    ):
        symmetric = not isinstance(loss, losses.MultipleNegativesRankingLoss)
        config = {"scale": loss.scale, "similarity_fct": "cos_sim"}
        if loss.mini_batch_size is not None:  # the cached losses (cached_multiple_negatives_ranking.py)
            config.update({"mini_batch_size": loss.mini_batch_size, "mini_batch_num_tokens": None})
        config.update({
            "gather_across_devices": True,  # under jax.jit the loss sees the global batch
            "directions": ("query_to_doc", "doc_to_query") if symmetric else loss.directions,
            "partition_mode": "per_direction" if symmetric else loss.partition_mode,
            "hardness_mode": None if symmetric else loss.hardness_mode,
            "hardness_strength": 0.0 if symmetric else loss.hardness_strength,
        })  # fmt: skip
    elif isinstance(loss, losses.GISTEmbedLoss):  # gist_embed.py, cached_gist_embed.py
        config = {"guide": architecture_text(loss.guide), "temperature": loss.temperature}
        if loss.mini_batch_size is not None:
            config.update({"mini_batch_size": loss.mini_batch_size, "mini_batch_num_tokens": None})
        config.update({
            "margin_strategy": loss.margin_strategy,
            "margin": loss.margin,
            "contrast_anchors": loss.contrast_anchors,
            "contrast_positives": loss.contrast_positives,
            "gather_across_devices": True,
        })  # fmt: skip
    elif isinstance(loss, losses.MarginMSELoss):
        config = {"similarity_fct": {"dot": "pairwise_dot_score", "cosine": "pairwise_cos_sim"}[loss.similarity_fct]}
    elif isinstance(loss, losses.DistillKLDivLoss):
        config = {
            "similarity_fct": {"dot": "pairwise_dot_score", "cosine": "pairwise_cos_sim"}[loss.similarity_fct],
            "temperature": loss.temperature,
        }
        for name in ("student_temperature", "teacher_temperature"):
            if getattr(loss, name) not in (None, loss.temperature):
                config[name] = getattr(loss, name)
    elif isinstance(loss, losses.SoftmaxLoss):
        names = (
            "num_labels",
            "concatenation_sent_rep",
            "concatenation_sent_difference",
            "concatenation_sent_multiplication",
        )
        config = {name: getattr(loss, name) for name in names}
    elif isinstance(loss, (losses.CoSENTLoss, losses.AnglELoss)):
        similarity = "pairwise_angle_sim" if isinstance(loss, losses.AnglELoss) else "pairwise_cos_sim"
        config = {"scale": loss.scale, "similarity_fct": similarity}
    elif isinstance(loss, losses.TripletLoss):
        metric = f"TripletDistanceMetric.{triplet[loss.distance_metric]}"
        config = {"distance_metric": metric, "triplet_margin": loss.triplet_margin}
    elif isinstance(loss, losses.MSELoss):
        config = {"projection_dim": None}
    elif isinstance(loss, losses.MatryoshkaLoss):
        config = {
            "loss": type(loss.loss).__name__,
            "matryoshka_dims": loss.matryoshka_dims,
            "matryoshka_weights": loss.matryoshka_weights,
            "n_dims_per_step": loss.n_dims_per_step,
        }
    else:
        raise TypeError(f"no model card entry for loss {type(loss).__name__}")
    return type(loss).__name__, config
