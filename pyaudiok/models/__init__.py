"""The full systems, built from pyaudiok.nn modules."""
from .diffstride import resnet18_diffstride
from .leaf import LeafClassifier
from .perceiver_ar import PerceiverAR, PerceiverARConfig
from .soundstream.model import SoundStream, SoundStreamConfig

__all__ = ["PerceiverAR", "PerceiverARConfig", "SoundStream", "SoundStreamConfig", "resnet18_diffstride"]
__all__ += ["LeafClassifier"]
