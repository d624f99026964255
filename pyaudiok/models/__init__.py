"""The full systems, built from pyaudiok.nn modules."""
from .cola import COLA, COLAConfig
from .diffstride import resnet18_diffstride
from .perceiver_ar import PerceiverAR, PerceiverARConfig
from .soundstream.model import SoundStream, SoundStreamConfig

__all__ = ["PerceiverAR", "PerceiverARConfig", "SoundStream", "SoundStreamConfig", "resnet18_diffstride",
           "COLA", "COLAConfig"]
