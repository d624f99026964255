"""DIVE: diarization by iterative speaker embedding (DESIGN.md §8)."""
from .model import DIVE, DIVEConfig, DIVEOutput, collar_mask, frames_to_segments

__all__ = ["DIVE", "DIVEConfig", "DIVEOutput", "collar_mask", "frames_to_segments"]
