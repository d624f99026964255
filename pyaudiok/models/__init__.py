"""The full systems, built from pyaudiok.nn modules."""
from .diffstride import resnet18_diffstride
from .perceiver_ar import PerceiverAR, PerceiverARConfig
from .permutation import PermutationPretext
from .soundstream.model import SoundStream, SoundStreamConfig

__all__ = ["PerceiverAR", "PerceiverARConfig", "PermutationPretext", "SoundStream", "SoundStreamConfig",
           "resnet18_diffstride"]
