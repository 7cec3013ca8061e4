"""Sequence models with TransformerLens-style hook points. ``MODELS`` maps a name to its config class."""

from .hooks import HookedModule, HookPoint
from .transformer import Transformer, TransformerConfig

MODELS: dict[str, type] = {"transformer": TransformerConfig}

__all__ = ["MODELS", "HookPoint", "HookedModule", "Transformer", "TransformerConfig"]
