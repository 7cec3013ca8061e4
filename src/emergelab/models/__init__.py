"""Sequence models behind one contract (``models.base``), with TransformerLens-style hook points.

``MODELS`` maps ``model.name`` to its config class; ``config.build(n_models, seeds)`` makes the model.
Adding a model is one file (its config and module) plus one line here; nothing outside ``models/``
names a concrete model class.
"""

from ..config import plugin_names, registered
from .base import Init, ModelConfig, SequenceModel, constant, normal, ones, zeros
from .hooks import HookedModule, HookPoint
from .transformer import Transformer, TransformerConfig

from .mixers import MIXER_CONFIGS

MODELS: dict[str, type] = {TransformerConfig.name: TransformerConfig}
MODELS.update({config_class.name: config_class for config_class in MIXER_CONFIGS})


PLUGIN_GROUP = "emergelab.models"


def register_model(config_class: type) -> type:
    """Add a model config class to ``MODELS`` under its ``name`` (for models defined outside the
    package, e.g. in a test or a user's script; this process only: for a model every process finds,
    declare it as an entry point, see docs/architecture.md); returns the class, so it works as a
    decorator."""
    MODELS[config_class.name] = config_class
    return config_class


def model_class(name: str) -> type | None:
    """The config class of ``model.name`` ``name``: a built-in, a registered one, or one an installed
    package declares under the entry-point group ``emergelab.models``; None when there is none."""
    return registered(MODELS, PLUGIN_GROUP, name, "model.name")


def model_names() -> list[str]:
    """Every model name: the built-in and registered ones, then the installed plugins'."""
    return plugin_names(MODELS, PLUGIN_GROUP)


__all__ = ["MODELS", "HookPoint", "HookedModule", "Init", "ModelConfig", "SequenceModel", "Transformer",
           "TransformerConfig", "constant", "model_class", "model_names", "normal", "ones", "register_model", "zeros"]
