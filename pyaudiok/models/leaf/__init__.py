"""LEAF: the learnable frontend with a conv classifier (DESIGN §4)."""
from .classifier import ConvNet, LeafClassifier, LogMel

__all__ = ["ConvNet", "LeafClassifier", "LogMel"]
