"""Sequence models behind one contract (``models.base``), with TransformerLens-style hook points.

``MODELS`` maps ``model.name`` to its config class; ``config.build(n_models, seeds)`` makes the model.
Adding a model is one file (its config and module) plus one line here; nothing outside ``models/``
names a concrete model class.
"""

from .base import Init, ModelConfig, SequenceModel, constant, normal, ones, zeros
from .hooks import HookedModule, HookPoint
from .transformer import Transformer, TransformerConfig

from .mixers import MIXER_CONFIGS

MODELS: dict[str, type] = {TransformerConfig.name: TransformerConfig}
MODELS.update({config_class.name: config_class for config_class in MIXER_CONFIGS})


def register_model(config_class: type) -> type:
    """Add a model config class to ``MODELS`` under its ``name`` (for models defined outside the
    package, e.g. in a test or a user's script); returns the class, so it works as a decorator."""
    MODELS[config_class.name] = config_class
    return config_class


__all__ = ["MODELS", "HookPoint", "HookedModule", "Init", "ModelConfig", "SequenceModel", "Transformer",
           "TransformerConfig", "constant", "normal", "ones", "register_model", "zeros"]
