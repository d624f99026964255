"""Permutation pretext task on log-mel patches (DESIGN §5)."""
from .model import PermutationPretext, PretextOutput

__all__ = ["PermutationPretext", "PretextOutput"]
