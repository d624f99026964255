"""CHARM: channel reordering for EEG, then a conv classifier (DESIGN §7)."""
from .model import CharmClassifier, CharmConfig, EEGConvNet

__all__ = ["CharmClassifier", "CharmConfig", "EEGConvNet"]
