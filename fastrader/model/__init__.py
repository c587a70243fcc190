"""The signal model: a small causal transformer with sparse attention."""

from .checkpoint import Checkpoint, load, save
from .transformer import CausalTransformer, ModelConfig

__all__ = ["CausalTransformer", "ModelConfig", "Checkpoint", "load", "save"]
