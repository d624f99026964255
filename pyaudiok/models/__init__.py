"""The full systems, built from pyaudiok.nn modules."""
from .permutation import PermutationPretext
