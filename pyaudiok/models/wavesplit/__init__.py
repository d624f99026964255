"""Wavesplit: speaker-conditioned separation (DESIGN.md §9)."""
from .model import Wavesplit, WavesplitConfig, WavesplitOutput, speaker_loss

__all__ = ["Wavesplit", "WavesplitConfig", "WavesplitOutput", "speaker_loss"]
