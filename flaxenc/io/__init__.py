"""Reading and writing sentence-transformers folders and PyTorch weights."""

from flaxenc.io.model_card import EvaluationResult, ModelFacts, TrainingCard, render_model_card
from flaxenc.io.st_folder import STFolder, load_st_folder, resolve_folder, save_st_folder, write_model_card

__all__ = [
    "EvaluationResult",
    "ModelFacts",
    "STFolder",
    "TrainingCard",
    "load_st_folder",
    "render_model_card",
    "resolve_folder",
    "save_st_folder",
    "write_model_card",
]
