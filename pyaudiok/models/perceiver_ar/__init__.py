"""Perceiver AR: autoregressive modelling of long contexts through causal latents (DESIGN.md §1)."""
from .model import KVBuffer, LatentCache, PerceiverAR, PerceiverARConfig
from .sampling import filter_logits, generate

__all__ = ["PerceiverAR", "PerceiverARConfig", "LatentCache", "KVBuffer", "generate", "filter_logits"]
